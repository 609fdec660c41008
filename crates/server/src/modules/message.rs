//! Message routing for local users (RFC 6121 section 8), and iq routing to
//! full JIDs. The rules themselves are pure functions in
//! `tributary_proto::routing`; this module applies them to the router.

use super::components;
use super::{blocking, carbons, offline, Session};
use crate::node::Node;
use jid::Jid;
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::routing::{self, Disposition, MessageType, ResourceView};
use tributary_proto::stanza;

/// A message sent by a bound client.
pub async fn from_client(node: &Node, s: &mut Session, msg: Element) {
    let to = match stanza::to_jid(&msg) {
        Ok(Some(to)) => to,
        // RFC 6121 8.1.1.1: no `to` means the sender's own bare JID.
        Ok(None) => Jid::from(s.bare.clone()),
        Err(_) => return,
    };
    let t = MessageType::parse(stanza::stanza_type(&msg));
    if node.blocks(&s.user, &to).await {
        s.replies.push(blocking::blocked_error(&msg));
        return;
    }
    if to.domain().as_str() != node.domain() {
        match components::submit(node, &to, &msg).await {
            Ok(commit) => s.committing = Some((commit, msg)),
            Err(cond) => s.replies.extend(components::error_for(&msg, cond)),
        }
        return;
    }
    let Some(user) = to.node().map(|n| n.to_string()) else {
        // Addressed to the domain itself: nothing here reads messages.
        if t != MessageType::Error {
            s.replies.push(stanza::error_reply(
                &msg,
                StanzaErrorCondition::ServiceUnavailable,
                None,
            ));
        }
        return;
    };
    if carbons::eligible(&msg) {
        carbons::copy_sent(node, s, &msg);
    }
    let sender = Jid::from(s.jid.clone());
    if node.blocks(&user, &sender).await {
        // XEP-0191 3.3: messages from a blocked entity are dropped silently.
        return;
    }
    if let Some(error) = deliver(node, &user, &to, t, msg).await.reply {
        s.replies.push(error);
    }
}

/// What became of a stanza routed on a sender's behalf.
#[derive(Debug, Default)]
pub struct Routed {
    /// The error reply for the sender, if any.
    pub reply: Option<Element>,
    /// Whether it went to at least one session (rather than to offline
    /// storage, an error, or nowhere).
    pub reached_session: bool,
}

impl Routed {
    /// Not delivered to a session; `reply` goes back to the sender.
    pub fn reply(reply: Option<Element>) -> Routed {
        Routed {
            reply,
            reached_session: false,
        }
    }

    pub fn reached_session() -> Routed {
        Routed {
            reply: None,
            reached_session: true,
        }
    }
}

/// Delivers a message to a local user; says whether it reached a session,
/// and gives the error reply for the sender when it cannot be delivered or
/// kept.
pub async fn deliver(node: &Node, user: &str, to: &Jid, t: MessageType, msg: Element) -> Routed {
    let sessions = node.router.sessions(user);
    let views: Vec<ResourceView<'_>> = sessions
        .iter()
        .map(|e| ResourceView {
            resource: &e.resource,
            available: e.available,
            priority: e.priority,
            hibernating: e.hibernating,
        })
        .collect();
    let disposition = match to.resource() {
        Some(r) => routing::to_full(t, r.as_str(), &views),
        None => routing::to_bare(t, &views),
    };
    match disposition {
        Disposition::Deliver(mut targets) => {
            // The last session is given the message itself unless a carbon
            // copy may still be made of it: one clone fewer per message,
            // usually the only one.
            let given = if sessions.iter().any(|e| e.carbons) {
                None
            } else {
                targets.pop()
            };
            let mut delivered = Vec::with_capacity(targets.len());
            for i in targets {
                let entry = &sessions[i];
                if entry.deliver(msg.clone()) {
                    delivered.push(entry.resource.clone());
                }
            }
            let msg = match given {
                Some(i) => match sessions[i].offer(msg) {
                    Ok(()) => return Routed::reached_session(),
                    Err(back) => back,
                },
                None => msg,
            };
            if delivered.is_empty() {
                return Routed::reply(keep_offline(node, user, t, msg).await);
            }
            if carbons::eligible(&msg) {
                carbons::copy_received(node, user, &to.to_bare(), &delivered, &msg);
            }
            Routed::reached_session()
        }
        Disposition::Offline => Routed::reply(keep_offline(node, user, t, msg).await),
        Disposition::Error(cond) => Routed::reply(Some(stanza::error_reply(&msg, cond, None))),
        Disposition::Drop => Routed::default(),
    }
}

async fn keep_offline(node: &Node, user: &str, t: MessageType, msg: Element) -> Option<Element> {
    let exists = match node.store.account_exists(user).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("account lookup failed: {e}");
            false
        }
    };
    let refused = if exists {
        offline::store(node, user, &msg).await == offline::Stored::Refused
    } else {
        // RFC 6121 8.5.2.2.1: no such account: <service-unavailable/>, the
        // same answer a full offline store gives, so the two look alike.
        true
    };
    (refused && t != MessageType::Error)
        .then(|| stanza::error_reply(&msg, StanzaErrorCondition::ServiceUnavailable, None))
}

/// An iq to a full JID (or another domain): routed to that session.
pub async fn route_iq(node: &Node, s: &mut Session, iq: Element) {
    let is_request = matches!(stanza::stanza_type(&iq), Some("get" | "set"));
    let reply_error = |s: &mut Session, iq: &Element, cond| {
        if is_request {
            s.replies.push(stanza::error_reply(iq, cond, None));
        }
    };
    let to = match stanza::to_jid(&iq) {
        Ok(Some(to)) => to,
        _ => return,
    };
    if to.domain().as_str() != node.domain() {
        match components::submit(node, &to, &iq).await {
            Ok(commit) => s.committing = Some((commit, iq)),
            Err(cond) => reply_error(s, &iq, cond),
        }
        return;
    }
    if node.blocks(&s.user, &to).await {
        if is_request {
            s.replies.push(blocking::blocked_error(&iq));
        }
        return;
    }
    let (Some(user), Some(resource)) = (to.node(), to.resource()) else {
        return reply_error(s, &iq, StanzaErrorCondition::ServiceUnavailable);
    };
    let sender = Jid::from(s.jid.clone());
    let blocked = node.blocks(user.as_str(), &sender).await;
    match node.router.session(user.as_str(), resource.as_str()) {
        Some(entry) if !blocked => {
            if let Err(iq) = entry.offer(iq) {
                reply_error(s, &iq, StanzaErrorCondition::ServiceUnavailable);
            }
        }
        _ => reply_error(s, &iq, StanzaErrorCondition::ServiceUnavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::router::{BindRequest, Outbound};
    use crate::tls;
    use std::sync::Arc;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;
    use tributary_proto::ns;
    use tributary_store::{Credentials, SqliteStore, Store};

    async fn node_with_bob(dir: &std::path::Path) -> Node {
        let store = SqliteStore::open(&dir.join("db.sqlite"))
            .await
            .expect("store");
        let creds = Credentials::derive("b", b"salt-salt".to_vec(), 1).expect("credentials");
        store.create_account("bob", &creds).await.expect("account");
        let (cert, key) = tls::ensure_self_signed(dir, "localhost").expect("certificate");
        let config = Config {
            domain: "localhost".into(),
            ..Config::default()
        };
        Node::new(
            config,
            Arc::new(store),
            tls::server_config(&cert, &key).expect("tls"),
        )
    }

    /// Binds bob/`resource` with a queue of `room` stanzas.
    fn bind(node: &Node, resource: &str, room: usize) -> mpsc::Receiver<Outbound> {
        let (tx, rx) = mpsc::channel(room);
        let bob: jid::BareJid = "bob@localhost".parse().expect("jid");
        let req = BindRequest {
            user: &bob,
            requested: Some(resource),
            tx,
            kill: CancellationToken::new(),
            max_resources: 5,
        };
        node.router
            .bind(req, node.router.new_conn_id())
            .expect("bound");
        rx
    }

    fn chat(id: &str) -> Element {
        format!(
            "<message xmlns='jabber:client' from='alice@localhost/x' to='bob@localhost/phone' \
             type='chat' id='{id}'><body>hi</body></message>"
        )
        .parse()
        .expect("message")
    }

    async fn to_phone(node: &Node, msg: Element) -> Routed {
        let to: Jid = "bob@localhost/phone".parse().expect("jid");
        deliver(node, "bob", &to, MessageType::Chat, msg).await
    }

    fn received(rx: &mut mpsc::Receiver<Outbound>) -> Option<Element> {
        match rx.try_recv() {
            Ok(Outbound::Stanza(el)) => Some(*el),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_one_session_gets_the_message_and_a_full_one_sends_it_offline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node_with_bob(dir.path()).await;
        let mut phone = bind(&node, "phone", 1);
        let routed = to_phone(&node, chat("m1")).await;
        assert!(routed.reached_session && routed.reply.is_none());
        // The queue holds one: the next message is kept for later whole.
        let routed = to_phone(&node, chat("m2")).await;
        assert!(!routed.reached_session && routed.reply.is_none());
        assert_eq!(received(&mut phone), Some(chat("m1")));
        assert_eq!(received(&mut phone), None);
        let stored = node.store.take_offline("bob").await.expect("offline");
        assert_eq!(stored.len(), 1);
        let stored: Element = stored[0].parse().expect("stored xml");
        assert_eq!(stored.attr("id"), Some("m2"));
        assert_eq!(
            stored.get_child("body", ns::CLIENT).map(|b| b.text()),
            Some("hi".into())
        );
    }

    #[tokio::test]
    async fn a_carbons_session_is_copied_after_the_delivery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node_with_bob(dir.path()).await;
        let mut phone = bind(&node, "phone", 4);
        let mut laptop = bind(&node, "laptop", 4);
        node.router
            .update("bob", "laptop", |e| e.carbons = true)
            .expect("laptop bound");
        let routed = to_phone(&node, chat("m1")).await;
        assert!(routed.reached_session);
        assert_eq!(received(&mut phone), Some(chat("m1")));
        let copy = received(&mut laptop).expect("a carbon copy");
        let original = copy
            .get_child("received", ns::CARBONS)
            .and_then(|r| r.get_child("forwarded", ns::FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT))
            .expect("the forwarded original");
        assert_eq!(original, &chat("m1"));
    }
}
