//! XEP-0280 Message Carbons: a client opts in with `<enable/>`, and from
//! then on it receives a copy of every chat message its account sends or
//! receives on another resource, so a conversation can move between
//! devices without losing half of it.
//!
//! The opt-in is a flag on the session's router entry; the copying itself
//! is done by the message router, which calls [`copy_received`] after
//! delivering an inbound message and [`copy_sent`] after routing one a
//! client sent.

use super::{IqRequest, IqResult, Session};
use crate::node::Node;
use jid::BareJid;
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza;

pub const FEATURES: &[&str] = &[ns::CARBONS];

/// `<enable/>` and `<disable/>` (XEP-0280 sections 4 and 5).
pub async fn handle(node: &Node, s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    // Both requests are sets; a get has no meaning in this protocol.
    if !req.is_set() {
        return Err(StanzaErrorCondition::BadRequest);
    }
    let enable = match req.payload.name() {
        "enable" => true,
        "disable" => false,
        _ => return Err(StanzaErrorCondition::BadRequest),
    };
    // Repeated enables or disables are not errors (section 10.1): setting
    // the flag is idempotent.
    match node
        .router
        .update(&s.user, s.resource(), |e| e.carbons = enable)
    {
        Some(()) => Ok(None),
        None => {
            // The session handling this iq is bound, so its entry exists;
            // if it does not, the session is being torn down.
            tracing::warn!(user = %s.user, resource = %s.resource(), "carbons: session not in router");
            Err(StanzaErrorCondition::InternalServerError)
        }
    }
}

/// Whether a message is one of those "used for instant messaging" that
/// XEP-0280 section 6 suggests copying: type chat, or type normal with a
/// body; never groupchat, headline or error. A `<private/>` (section 9) or
/// XEP-0334 `<no-copy/>` hint opts a message out, and a message that is
/// itself a carbon is never copied again (that would loop between
/// resources).
pub fn eligible(msg: &Element) -> bool {
    let opted_out = msg.has_child("private", ns::CARBONS)
        || msg.has_child("no-copy", ns::HINTS)
        || msg.has_child("sent", ns::CARBONS)
        || msg.has_child("received", ns::CARBONS);
    if opted_out {
        return false;
    }
    // RFC 6121 5.2.2: a missing type means "normal".
    match stanza::stanza_type(msg).unwrap_or("normal") {
        "chat" => true,
        "normal" => msg.has_child("body", ns::CLIENT),
        _ => false,
    }
}

/// Eligibility of an inbound message. On top of [`eligible`], section 6
/// excludes messages sent by a MUC room, including private messages from
/// occupants: those go to the one joined client's full JID, and a copy on
/// a device that has not joined the room could not be answered. Rooms
/// mark such messages with a `muc#user` `<x/>`.
fn eligible_received(msg: &Element) -> bool {
    eligible(msg) && !msg.has_child("x", ns::MUC_USER)
}

/// The XEP-0297 forwarding wrapper both carbon kinds share:
/// `<message from to type><{kind} xmlns=carbons><forwarded><original/>`.
/// The wrapper keeps the original's type (sections 7 and 8 say SHOULD), so
/// clients that filter by type treat the copy like the original.
fn wrap(kind: &str, from: &str, to: &str, msg: &Element) -> Element {
    let mut forwarded = Element::bare("forwarded", ns::FORWARD);
    forwarded.append_child(msg.clone());
    let mut carbon = Element::bare(kind, ns::CARBONS);
    carbon.append_child(forwarded);
    let mut out = stanza::element("message", ns::CLIENT, &[("from", from), ("to", to)]);
    if let Some(t) = stanza::stanza_type(msg) {
        stanza::set_attr(&mut out, "type", t);
    }
    out.append_child(carbon);
    out
}

/// Copies an inbound message to the recipient's carbons-enabled sessions
/// that did not get the original (section 7). `delivered_to` lists the
/// resources the router delivered it to; they must not get it twice.
pub fn copy_received(
    node: &Node,
    recipient_user: &str,
    recipient_bare: &BareJid,
    delivered_to: &[String],
    msg: &Element,
) {
    if !eligible_received(msg) {
        return;
    }
    let from = recipient_bare.to_string();
    for entry in node.router.sessions(recipient_user) {
        if !entry.carbons || delivered_to.contains(&entry.resource) {
            continue;
        }
        let to = format!("{from}/{}", entry.resource);
        // A full or closed queue only loses this copy; the original was
        // delivered, so there is nothing to fall back to.
        entry.deliver(wrap("received", &from, &to, msg));
    }
}

/// Copies a message the client of `s` sent to the account's other
/// carbons-enabled sessions (section 8), whether or not the sending
/// session itself enabled carbons.
pub fn copy_sent(node: &Node, s: &Session, msg: &Element) {
    if !eligible(msg) {
        return;
    }
    // Other clients need to know which of their own resources sent it;
    // the connection normally stamped `from` already, but the copy must
    // not depend on that.
    let mut original = msg.clone();
    stanza::set_attr(&mut original, "from", s.jid.to_string());
    let from = s.bare.to_string();
    for entry in node.router.sessions(&s.user) {
        if !entry.carbons || entry.resource == s.resource() {
            continue;
        }
        let to = format!("{from}/{}", entry.resource);
        entry.deliver(wrap("sent", &from, &to, &original));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().expect("test XML parses")
    }

    #[test]
    fn chat_is_eligible_even_without_body() {
        // Chat states travel as bodiless chat messages and are copied on
        // purpose (section 10.2).
        assert!(eligible(&parse(
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>"
        )));
        assert!(eligible(&parse(
            "<message xmlns='jabber:client' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
    }

    #[test]
    fn normal_needs_a_body() {
        assert!(eligible(&parse(
            "<message xmlns='jabber:client'><body>hi</body></message>"
        )));
        assert!(eligible(&parse(
            "<message xmlns='jabber:client' type='normal'><body>hi</body></message>"
        )));
        assert!(!eligible(&parse(
            "<message xmlns='jabber:client' type='normal'/>"
        )));
        assert!(!eligible(&parse("<message xmlns='jabber:client'/>")));
    }

    #[test]
    fn other_types_are_not_eligible() {
        for t in ["groupchat", "headline", "error", "bogus"] {
            let m = parse(&format!(
                "<message xmlns='jabber:client' type='{t}'><body>x</body></message>"
            ));
            assert!(!eligible(&m), "type {t}");
        }
    }

    #[test]
    fn private_no_copy_and_carbons_are_excluded() {
        let private = "<message xmlns='jabber:client' type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>";
        let no_copy = "<message xmlns='jabber:client' type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>";
        let sent = "<message xmlns='jabber:client' type='chat'><sent xmlns='urn:xmpp:carbons:2'/></message>";
        let received = "<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>";
        for m in [private, no_copy, sent, received] {
            assert!(!eligible(&parse(m)), "{m}");
        }
        // The same names in other namespaces do not count.
        assert!(eligible(&parse(
            "<message xmlns='jabber:client' type='chat'><body>x</body><private xmlns='urn:example'/></message>"
        )));
    }

    #[test]
    fn muc_private_messages_are_not_copied_on_receipt() {
        let pm = parse(
            "<message xmlns='jabber:client' type='chat' from='room@muc.example/nick'>\
             <body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>",
        );
        assert!(eligible(&pm));
        assert!(!eligible_received(&pm));
        assert!(eligible_received(&parse(
            "<message xmlns='jabber:client' type='chat'><body>x</body></message>"
        )));
    }

    #[test]
    fn wrapper_shape() {
        let original = parse(
            "<message xmlns='jabber:client' from='juliet@example.com/balcony' \
             to='romeo@localhost/garden' type='chat'><body>hi</body></message>",
        );
        let w = wrap(
            "received",
            "romeo@localhost",
            "romeo@localhost/home",
            &original,
        );
        assert!(w.is("message", ns::CLIENT));
        assert_eq!(w.attr("from"), Some("romeo@localhost"));
        assert_eq!(w.attr("to"), Some("romeo@localhost/home"));
        assert_eq!(w.attr("type"), Some("chat"));
        let inner = w
            .get_child("received", ns::CARBONS)
            .and_then(|r| r.get_child("forwarded", ns::FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT))
            .expect("received/forwarded/message");
        assert_eq!(inner, &original);

        // A typeless original gives a typeless wrapper, and survives a
        // round trip through the serialiser with its namespaces intact.
        let plain = parse("<message xmlns='jabber:client'><body>x</body></message>");
        let w = wrap("sent", "a@localhost", "a@localhost/b", &plain);
        assert_eq!(w.attr("type"), None);
        let reparsed = parse(&stanza::to_string(&w));
        assert_eq!(reparsed, w);
        assert!(reparsed
            .get_child("sent", ns::CARBONS)
            .and_then(|r| r.get_child("forwarded", ns::FORWARD))
            .is_some_and(|f| f.has_child("message", ns::CLIENT)));
    }
}
