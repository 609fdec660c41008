//! XEP-0092 Software Version of the server itself.
//!
//! The optional `<os/>` element is deliberately left out: XEP-0092's
//! security considerations note that revealing the operating system (and
//! its version) helps an attacker pick exploits, and nothing in XMPP needs
//! it. The server name and version are kept, because client developers and
//! operators use them to tell which server behaviour they are looking at.

use super::{IqRequest, IqResult, Session};
use crate::node::Node;
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::stanza::text_element;

/// Disco features of this module.
pub const FEATURES: &[&str] = &[ns::VERSION];

/// The software name reported to peers.
pub const NAME: &str = "Tributary";

pub async fn handle(_node: &Node, _s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    answer(req)
}

fn answer(req: &IqRequest<'_>) -> IqResult {
    // Only a `get` of `<query/>` is defined; there is nothing to set.
    if req.is_set() || req.payload.name() != "query" {
        return Err(StanzaErrorCondition::BadRequest);
    }
    Ok(Some(query()))
}

/// `<query xmlns='jabber:iq:version'>` with name and version, no `<os/>`.
fn query() -> Element {
    let mut q = Element::bare("query", ns::VERSION);
    q.append_child(text_element("name", ns::VERSION, NAME));
    q.append_child(text_element(
        "version",
        ns::VERSION,
        env!("CARGO_PKG_VERSION"),
    ));
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::Target;

    fn request<'a>(iq: &'a Element, kind: &'a str) -> IqRequest<'a> {
        IqRequest {
            iq,
            payload: iq.children().next().expect("test iq has a payload"),
            target: Target::Server,
            kind,
        }
    }

    #[test]
    fn answers_name_and_version_but_not_the_os() {
        let iq: Element =
            "<iq xmlns='jabber:client' type='get' id='v'><query xmlns='jabber:iq:version'/></iq>"
                .parse()
                .expect("test xml");
        let q = answer(&request(&iq, "get"))
            .expect("answered")
            .expect("payload");
        assert!(q.is("query", ns::VERSION));
        assert_eq!(
            q.get_child("name", ns::VERSION).map(Element::text),
            Some(NAME.to_owned())
        );
        assert_eq!(
            q.get_child("version", ns::VERSION).map(Element::text),
            Some(env!("CARGO_PKG_VERSION").to_owned())
        );
        assert!(q.get_child("os", ns::VERSION).is_none());
    }

    #[test]
    fn set_is_a_bad_request() {
        let iq: Element =
            "<iq xmlns='jabber:client' type='set' id='v'><query xmlns='jabber:iq:version'/></iq>"
                .parse()
                .expect("test xml");
        assert_eq!(
            answer(&request(&iq, "set")),
            Err(StanzaErrorCondition::BadRequest)
        );
    }
}
