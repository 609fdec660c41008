//! Routing between local users and external components (XEP-0114):
//! processors receive what users address to their domain, and what they
//! send is routed like any stanza.

use super::{message, presence};
use crate::node::Node;
use jid::Jid;
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::routing::MessageType;
use tributary_proto::stanza::{self, StanzaKind};

/// Where a stanza for a non-local domain went.
pub enum Route {
    Delivered,
    /// A configured component with no connection: the stanza comes back.
    NotConnected(Element),
    /// Not a component domain either.
    Unknown(Element),
}

pub fn to_component(node: &Node, to: &Jid, el: Element) -> Route {
    let domain = to.domain().as_str();
    if !node.config.is_component(domain) {
        return Route::Unknown(el);
    }
    match node.router.to_component(domain, el) {
        Ok(()) => Route::Delivered,
        Err(el) => Route::NotConnected(el),
    }
}

/// Whether an undeliverable stanza deserves an error reply: never for
/// errors and iq results (RFC 6120 8.3.1), nor for presence.
fn wants_error(el: &Element) -> bool {
    match el.name() {
        "iq" => matches!(stanza::stanza_type(el), Some("get" | "set")),
        "message" => stanza::stanza_type(el) != Some("error"),
        _ => false,
    }
}

/// The error reply for `el`, if it deserves one.
pub fn error_for(el: &Element, cond: StanzaErrorCondition) -> Option<Element> {
    wants_error(el).then(|| stanza::error_reply(el, cond, None))
}

/// Sends an error for `el` back to its sender (a local session or a
/// component), when it deserves one.
pub fn bounce(node: &Node, el: &Element, cond: StanzaErrorCondition) {
    let Some(reply) = error_for(el, cond) else {
        return;
    };
    let Ok(Some(to)) = stanza::to_jid(&reply) else {
        return;
    };
    if to.domain().as_str() == node.domain() {
        if let (Some(user), Some(resource)) = (to.node(), to.resource()) {
            if let Some(session) = node.router.session(user.as_str(), resource.as_str()) {
                session.deliver(reply);
            }
        }
    } else if node.config.is_component(to.domain().as_str()) {
        let _ = node.router.to_component(to.domain().as_str(), reply);
    }
}

/// A stanza a component sent (already in `jabber:client`); returns the
/// error reply for the component, if any.
pub async fn from_component(node: &Node, el: Element) -> Option<Element> {
    let Ok(Some(to)) = stanza::to_jid(&el) else {
        return None;
    };
    let from = stanza::from(&el).and_then(|f| Jid::new(f).ok())?;
    if to.domain().as_str() != node.domain() {
        return match to_component(node, &to, el) {
            Route::Delivered => None,
            Route::NotConnected(el) => error_for(&el, StanzaErrorCondition::ServiceUnavailable),
            Route::Unknown(el) => error_for(&el, StanzaErrorCondition::RemoteServerNotFound),
        };
    }
    match StanzaKind::of(&el, ns::CLIENT)? {
        StanzaKind::Message => {
            let Some(user) = to.node().map(|n| n.to_string()) else {
                return error_for(&el, StanzaErrorCondition::ServiceUnavailable);
            };
            if node.blocks(&user, &from).await {
                return None;
            }
            let t = MessageType::parse(stanza::stanza_type(&el));
            message::deliver(node, &user, &to, t, el).await
        }
        StanzaKind::Presence => {
            presence::deliver_directed(node, &from, &to, &el).await;
            None
        }
        StanzaKind::Iq => {
            let is_ping = stanza::stanza_type(&el) == Some("get") && el.has_child("ping", ns::PING);
            match (to.node(), to.resource()) {
                (Some(user), Some(resource)) => {
                    let session = node.router.session(user.as_str(), resource.as_str());
                    let blocked = node.blocks(user.as_str(), &from).await;
                    match session {
                        Some(s) if !blocked => {
                            if s.deliver(el.clone()) {
                                None
                            } else {
                                error_for(&el, StanzaErrorCondition::ServiceUnavailable)
                            }
                        }
                        _ => error_for(&el, StanzaErrorCondition::ServiceUnavailable),
                    }
                }
                // Components ping the server to check their link.
                (None, None) if is_ping => Some(stanza::iq_result(&el, None)),
                _ => error_for(&el, StanzaErrorCondition::ServiceUnavailable),
            }
        }
    }
}
