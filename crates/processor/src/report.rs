//! What processors receive, parsed from stanzas (the wire format is
//! documented in docs/protocol.md).

use minidom::Element;
use tributary_proto::ns;
use tributary_proto::stanza;

pub const NS_REPORT: &str = "urn:tributary:report:0";
pub const NS_JSON: &str = "urn:xmpp:json:0";
pub const NS_RECEIPTS: &str = "urn:xmpp:receipts";

/// One report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Bare JID of the reporter: with `id`, the report's identity.
    pub sender: String,
    /// Full JID, where confirmations go.
    pub sender_full: String,
    pub id: String,
    pub kind: String,
    pub at: Option<String>,
    /// The JSON text, or the XML of the payload element.
    pub payload: String,
    /// XEP-0184 receipt requested (message form).
    pub wants_receipt: bool,
    /// The iq id of the synchronous form, answered after the commit.
    pub iq_id: Option<String>,
}

/// A user's presence change (for processors that observe presence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    pub jid: String,
    pub resource: String,
    pub available: bool,
    pub show: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Report(Report),
    Presence(PresenceUpdate),
    /// A stanza that is neither: acknowledged, answered with an error if it
    /// is an iq request.
    Other,
}

/// What became of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Refused by the processor; an iq gets this as its error text.
    Failed(String),
}

/// Parses a stanza into an item. `stanza_ns` is the stream's namespace
/// (`jabber:component:accept` on a component link, `jabber:client` for a
/// stanza taken from a client stream): the stanza is read as it came,
/// without a translated copy of its tree.
pub fn parse(el: &Element, stanza_ns: &str) -> Item {
    let from = stanza::from(el).unwrap_or_default();
    let Ok(from_jid) = jid::Jid::new(from) else {
        return Item::Other;
    };
    match el.name() {
        "presence" => {
            let available = !matches!(stanza::stanza_type(el), Some("unavailable"));
            if !matches!(stanza::stanza_type(el), None | Some("unavailable")) {
                return Item::Other;
            }
            Item::Presence(PresenceUpdate {
                jid: from_jid.to_bare().to_string(),
                resource: from_jid
                    .resource()
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                available,
                show: el.get_child("show", stanza_ns).map(|s| s.text()),
                status: el.get_child("status", stanza_ns).map(|s| s.text()),
            })
        }
        "message" | "iq" => {
            let Some(r) = el.get_child("report", NS_REPORT) else {
                return Item::Other;
            };
            let is_iq = el.name() == "iq";
            if is_iq && stanza::stanza_type(el) != Some("set") {
                return Item::Other;
            }
            let Some(id) = r.attr("id").or(stanza::id(el)).filter(|i| !i.is_empty()) else {
                return Item::Other;
            };
            // An XML payload is stored as a client wrote it: in
            // `jabber:client` where it used the stream's namespace.
            let payload = match r.get_child("json", NS_JSON) {
                Some(j) => j.text(),
                None => r
                    .children()
                    .next()
                    .map(|p| stanza::to_string_translated(p, stanza_ns, ns::CLIENT))
                    .unwrap_or_default(),
            };
            Item::Report(Report {
                sender: from_jid.to_bare().to_string(),
                sender_full: from.to_owned(),
                id: id.to_owned(),
                kind: r.attr("kind").unwrap_or_default().to_owned(),
                at: r.attr("at").map(str::to_owned),
                payload,
                wants_receipt: !is_iq && el.has_child("request", NS_RECEIPTS),
                iq_id: if is_iq {
                    stanza::id(el).map(str::to_owned)
                } else {
                    None
                },
            })
        }
        _ => Item::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_report_with_json_and_receipt_request() {
        let el: Element = "<message xmlns='jabber:component:accept' from='alice@localhost/phone' to='collect.localhost' id='R-1'>\
            <report xmlns='urn:tributary:report:0' id='R-1' kind='meter.reading' at='2026-11-25T10:00:00Z'>\
            <json xmlns='urn:xmpp:json:0'>{\"kwh\":1.5}</json></report><request xmlns='urn:xmpp:receipts'/></message>"
            .parse()
            .expect("xml");
        let Item::Report(r) = parse(&el, ns::COMPONENT_ACCEPT) else {
            panic!("a report")
        };
        assert_eq!(r.sender, "alice@localhost");
        assert_eq!(r.sender_full, "alice@localhost/phone");
        assert_eq!(r.id, "R-1");
        assert_eq!(r.kind, "meter.reading");
        assert_eq!(r.at.as_deref(), Some("2026-11-25T10:00:00Z"));
        assert_eq!(r.payload, "{\"kwh\":1.5}");
        assert!(r.wants_receipt);
        assert_eq!(r.iq_id, None);
    }

    #[test]
    fn iq_form_and_xml_payload() {
        let el: Element = "<iq xmlns='jabber:client' type='set' from='bob@localhost/x' to='collect.localhost' id='q1'>\
            <report xmlns='urn:tributary:report:0' id='R-9' kind='form'><f xmlns='urn:example'>ok</f></report></iq>"
            .parse()
            .expect("xml");
        let Item::Report(r) = parse(&el, ns::CLIENT) else {
            panic!("a report")
        };
        assert_eq!(r.iq_id.as_deref(), Some("q1"));
        assert_eq!(r.payload, "<f xmlns='urn:example'>ok</f>");
        assert!(!r.wants_receipt);
    }

    #[test]
    fn an_xml_payload_in_the_stream_namespace_is_stored_in_jabber_client() {
        let el: Element = "<iq xmlns='jabber:component:accept' type='set' from='bob@localhost/x' to='collect.localhost' id='q2'>\
            <report xmlns='urn:tributary:report:0' id='R-10'><body xmlns='jabber:component:accept'>hi</body></report></iq>"
            .parse()
            .expect("xml");
        let Item::Report(r) = parse(&el, ns::COMPONENT_ACCEPT) else {
            panic!("a report")
        };
        assert_eq!(r.payload, "<body xmlns='jabber:client'>hi</body>");
    }

    #[test]
    fn presence_updates() {
        let el: Element =
            "<presence xmlns='jabber:client' from='alice@localhost/phone' type='unavailable'/>"
                .parse()
                .expect("xml");
        let Item::Presence(p) = parse(&el, ns::CLIENT) else {
            panic!("presence")
        };
        assert!(!p.available);
        assert_eq!(p.resource, "phone");
        // On a component link the children are in the link's namespace.
        let el: Element = "<presence xmlns='jabber:component:accept' from='alice@localhost/phone'>\
            <show>away</show><status>on a walk</status></presence>"
            .parse()
            .expect("xml");
        let Item::Presence(p) = parse(&el, ns::COMPONENT_ACCEPT) else {
            panic!("presence")
        };
        assert!(p.available);
        assert_eq!(p.show.as_deref(), Some("away"));
        assert_eq!(p.status.as_deref(), Some("on a walk"));
    }
}
