//! XEP-0199 XMPP Ping, answered by the server for its own domain.
//!
//! Clients ping the server to check that the stream is alive (many do so
//! every few minutes on mobile networks), so the answer is as cheap as it
//! can be: an empty result. A ping to the user's own bare JID is answered
//! directly in [`super::account_iq`]; this module handles the domain.

use super::{IqRequest, IqResult, Session};
use crate::node::Node;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;

/// Disco features of this module.
pub const FEATURES: &[&str] = &[ns::PING];

pub async fn handle(_node: &Node, _s: &mut Session, req: &IqRequest<'_>) -> IqResult {
    answer(req)
}

/// The whole protocol: `<ping/>` in a get is answered with an empty result.
fn answer(req: &IqRequest<'_>) -> IqResult {
    // XEP-0199 only defines type "get" and the element `<ping/>`; anything
    // else in the namespace does not follow its schema (RFC 6120 8.3.3.1).
    if req.is_set() || req.payload.name() != "ping" {
        return Err(StanzaErrorCondition::BadRequest);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::Target;
    use minidom::Element;

    fn request<'a>(iq: &'a Element, kind: &'a str) -> IqRequest<'a> {
        IqRequest {
            iq,
            payload: iq.children().next().expect("test iq has a payload"),
            target: Target::Server,
            kind,
        }
    }

    fn iq(payload: &str) -> Element {
        format!("<iq xmlns='jabber:client' type='get' id='p1'>{payload}</iq>")
            .parse()
            .expect("test xml")
    }

    #[test]
    fn get_is_answered_with_an_empty_result() {
        let iq = iq("<ping xmlns='urn:xmpp:ping'/>");
        assert_eq!(answer(&request(&iq, "get")), Ok(None));
    }

    #[test]
    fn set_and_unknown_elements_are_bad_requests() {
        let ping = iq("<ping xmlns='urn:xmpp:ping'/>");
        assert_eq!(
            answer(&request(&ping, "set")),
            Err(StanzaErrorCondition::BadRequest)
        );
        let other = iq("<pong xmlns='urn:xmpp:ping'/>");
        assert_eq!(
            answer(&request(&other, "get")),
            Err(StanzaErrorCondition::BadRequest)
        );
    }
}
