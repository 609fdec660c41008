//! XEP-0160 offline messages: kept in the store while the user has no
//! available resource, delivered with a XEP-0203 delay stamp when the
//! user sends initial presence.

use super::Session;
use crate::node::Node;
use minidom::Element;
use tributary_proto::ns;
use tributary_proto::routing::MessageType;
use tributary_proto::stanza;
use tributary_store::OfflineStored;

pub const FEATURES: &[&str] = &[ns::OFFLINE];

/// Whether a message is worth keeping: chat and normal messages with a
/// body, or those that ask for it with a XEP-0334 `<store/>` hint. Chat
/// states and other transient payloads are not stored (XEP-0160 section 3).
pub fn worth_storing(msg: &Element) -> bool {
    let t = MessageType::parse(stanza::stanza_type(msg));
    if !matches!(t, MessageType::Chat | MessageType::Normal) {
        return false;
    }
    if msg.has_child("no-store", ns::HINTS) {
        return false;
    }
    msg.has_child("body", ns::CLIENT) || msg.has_child("store", ns::HINTS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// Not worth storing; dropped as XEP-0160 allows.
    NotKept,
    /// Over the per-user limit or the store failed: the sender must be told.
    Refused,
}

/// Stores a message for `user` with a delay stamp.
pub async fn store(node: &Node, user: &str, msg: &Element) -> Stored {
    if !worth_storing(msg) {
        return Stored::NotKept;
    }
    let mut copy = msg.clone();
    if !copy.has_child("delay", ns::DELAY) {
        copy.append_child(stanza::element(
            "delay",
            ns::DELAY,
            &[
                ("from", node.domain()),
                ("stamp", &super::time::now_stamp()),
            ],
        ));
    }
    let xml = stanza::to_string(&copy);
    match node
        .store
        .store_offline(user, &xml, node.config.limits.max_offline_messages)
        .await
    {
        Ok(OfflineStored::Stored) => Stored::Yes,
        Ok(OfflineStored::OverLimit) => {
            tracing::info!(%user, "offline storage full; refusing message");
            Stored::Refused
        }
        Err(e) => {
            tracing::error!(%user, "cannot store offline message: {e}");
            Stored::Refused
        }
    }
}

/// Hands stored messages to a session that just became available.
pub async fn deliver(node: &Node, s: &mut Session) {
    let stored = match node.store.take_offline(&s.user).await {
        Ok(v) => v,
        Err(e) => return tracing::error!("cannot read offline messages: {e}"),
    };
    for xml in stored {
        match xml.parse::<Element>() {
            Ok(mut el) => {
                stanza::set_attr(&mut el, "to", s.jid.to_string());
                s.replies.push(el);
            }
            Err(e) => tracing::error!("dropping unreadable offline message: {e}"),
        }
    }
}

/// A stanza that was queued for a session which then closed: messages go
/// to offline storage instead of being lost.
pub async fn requeue(node: &Node, s: &Session, el: Element) {
    if el.name() == "message"
        && worth_storing(&el)
        && !el.has_child("sent", ns::CARBONS)
        && !el.has_child("received", ns::CARBONS)
    {
        store(node, &s.user, &el).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(xml: &str) -> Element {
        xml.parse().expect("test XML")
    }

    #[test]
    fn only_messages_with_content_are_stored() {
        assert!(worth_storing(&msg(
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>"
        )));
        assert!(worth_storing(&msg(
            "<message xmlns='jabber:client'><body>hi</body></message>"
        )));
        assert!(!worth_storing(&msg(
            "<message xmlns='jabber:client' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(!worth_storing(&msg(
            "<message xmlns='jabber:client' type='headline'><body>x</body></message>"
        )));
        assert!(!worth_storing(&msg(
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
        assert!(worth_storing(&msg(
            "<message xmlns='jabber:client'><store xmlns='urn:xmpp:hints'/><x xmlns='urn:example'/></message>"
        )));
    }
}
