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
        Disposition::Deliver(targets) => {
            let mut delivered = Vec::with_capacity(targets.len());
            for i in targets {
                let entry = &sessions[i];
                if entry.deliver(msg.clone()) {
                    delivered.push(entry.resource.clone());
                }
            }
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
            if !entry.deliver(iq.clone()) {
                reply_error(s, &iq, StanzaErrorCondition::ServiceUnavailable);
            }
        }
        _ => reply_error(s, &iq, StanzaErrorCondition::ServiceUnavailable),
    }
}
