//! Routing between local users and external components (XEP-0114).
//! Everything addressed to a component domain goes through its durable
//! queue (`crate::queue`): committed before it counts as handled, kept
//! while no processor is connected. What components send is routed like
//! any stanza.

use super::message::{self, Routed};
use super::presence;
use crate::node::Node;
use crate::queue::{Commit, QueueError};
use jid::Jid;
use minidom::Element;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::ns;
use tributary_proto::routing::MessageType;
use tributary_proto::stanza::{self, StanzaKind};
use tributary_store::Enqueued;

/// Commits a stanza to the queue of the component serving `to`. `Err` is
/// the condition the sender must be told.
pub async fn to_component(node: &Node, to: &Jid, el: &Element) -> Result<(), StanzaErrorCondition> {
    let pending = submit(node, to, el).await?;
    pending.outcome().await
}

/// A client's stanza committing to a component's queue; the connection
/// counts it as handled once [`PendingCommit::outcome`] resolves.
#[derive(Debug)]
pub struct PendingCommit {
    domain: String,
    commit: Commit,
    /// Set once the commit finished.
    outcome: Option<Result<(), StanzaErrorCondition>>,
}

impl PendingCommit {
    /// Waits for the commit; `Err` is the condition the sender is told.
    pub async fn outcome(mut self) -> Result<(), StanzaErrorCondition> {
        self.wait().await;
        self.outcome
            .unwrap_or(Err(StanzaErrorCondition::InternalServerError))
    }

    /// Resolves once the commit finished (see [`Self::try_outcome`]).
    pub async fn wait(&mut self) {
        if self.outcome.is_none() {
            let result = (&mut self.commit).await.map_err(|_| QueueError::Stopped);
            self.outcome = Some(judge(&self.domain, result.and_then(|r| r)));
        }
    }

    /// The outcome if the commit has finished, without waiting.
    pub fn try_outcome(&mut self) -> Option<Result<(), StanzaErrorCondition>> {
        if self.outcome.is_none() {
            let result = match self.commit.try_recv() {
                Ok(r) => r,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return None,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Err(QueueError::Stopped),
            };
            self.outcome = Some(judge(&self.domain, result));
        }
        self.outcome
    }
}

/// Hands a stanza to the queue of the component serving `to` without
/// waiting for the commit.
pub async fn submit(
    node: &Node,
    to: &Jid,
    el: &Element,
) -> Result<PendingCommit, StanzaErrorCondition> {
    let domain = to.domain().as_str();
    if !node.config.is_component(domain) {
        return Err(StanzaErrorCondition::RemoteServerNotFound);
    }
    let sender = stanza::from(el).unwrap_or_default();
    match node
        .queues
        .submit(domain, sender, stanza::id(el), dedup_key(el), el)
        .await
    {
        Ok(commit) => Ok(PendingCommit {
            domain: domain.to_owned(),
            commit,
            outcome: None,
        }),
        Err(e) => Err(failed(domain, &e)),
    }
}

/// What the sender is told about a commit.
fn judge(domain: &str, result: Result<Enqueued, QueueError>) -> Result<(), StanzaErrorCondition> {
    match result {
        Ok(Enqueued::Accepted(_) | Enqueued::AlreadyQueued(_) | Enqueued::AlreadyAnswered) => {
            Ok(())
        }
        Ok(Enqueued::OverQuota) => {
            tracing::warn!(%domain, "queue quota reached; refusing a stanza");
            Err(StanzaErrorCondition::ResourceConstraint)
        }
        Err(e) => Err(failed(domain, &e)),
    }
}

fn failed(domain: &str, e: &QueueError) -> StanzaErrorCondition {
    tracing::error!(%domain, "cannot queue a stanza: {e}");
    StanzaErrorCondition::InternalServerError
}

/// Messages and iq requests are the same item when a sender sends them
/// again (same bare JID, same id) while the first copy is queued: a
/// collector that lost its link before the acknowledgement resends, and the
/// processor and the answer still happen once. Presence is never merged.
fn dedup_key(el: &Element) -> Option<String> {
    let requests = match el.name() {
        "message" => stanza::stanza_type(el) != Some("error"),
        "iq" => matches!(stanza::stanza_type(el), Some("get" | "set")),
        _ => false,
    };
    if !requests {
        return None;
    }
    answer_key(stanza::from(el)?, stanza::id(el)?)
}

/// The id of the stanza that `el` answers, if `el` is an answer a
/// processor sends: an XEP-0184 receipt, a message error (a report it
/// refused), or an iq result or error.
pub fn answered_id(el: &Element) -> Option<&str> {
    match el.name() {
        "message" if stanza::stanza_type(el) == Some("error") => stanza::id(el),
        "message" => el
            .get_child("received", ns::RECEIPTS)
            .and_then(|r| r.attr("id")),
        "iq" if matches!(stanza::stanza_type(el), Some("result" | "error")) => stanza::id(el),
        _ => None,
    }
}

/// A stanza on its way to a session that ended before it was acknowledged:
/// if it is a processor's answer, copies of the stanza it answers are new
/// items again (the sender may never see this answer).
pub fn undelivered(node: &Node, el: &Element) {
    let Some(from) = stanza::from(el).and_then(|f| Jid::new(f).ok()) else {
        return;
    };
    let domain = from.domain().as_str();
    if !node.config.is_component(domain) {
        return;
    }
    if let (Some(to), Some(id)) = (stanza::to(el), answered_id(el)) {
        if let Some(key) = answer_key(to, id) {
            node.queues.not_delivered(domain, [key.as_str()]);
        }
    }
}

/// The dedup key of the stanza with id `id` from `sender` (a JID).
pub fn answer_key(sender: &str, id: &str) -> Option<String> {
    let from = Jid::new(sender).ok()?;
    Some(format!("{}\n{id}", from.to_bare()))
}

/// Queues a local user's presence change for every component that
/// observes presence (the online-confirmation case).
pub async fn observe_presence(node: &Node, pres: &Element) {
    for c in node.config.components.iter().filter(|c| c.observe_presence) {
        let mut copy = pres.clone();
        stanza::set_attr(&mut copy, "to", c.domain.as_str());
        if let Ok(to) = Jid::new(&c.domain) {
            // Presence carries no error back; a refusal is logged.
            let _ = to_component(node, &to, &copy).await;
        }
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

/// A stanza a component sent (already in `jabber:client`): where it went,
/// and the error reply for the component, if any.
pub async fn from_component(node: &Node, el: Element) -> Routed {
    let Ok(Some(to)) = stanza::to_jid(&el) else {
        return Routed::default();
    };
    let Some(from) = stanza::from(&el).and_then(|f| Jid::new(f).ok()) else {
        return Routed::default();
    };
    if to.domain().as_str() != node.domain() {
        return Routed::reply(match to_component(node, &to, &el).await {
            Ok(()) => None,
            Err(cond) => error_for(&el, cond),
        });
    }
    let Some(kind) = StanzaKind::of(&el, ns::CLIENT) else {
        return Routed::default();
    };
    match kind {
        StanzaKind::Message => {
            let Some(user) = to.node().map(|n| n.to_string()) else {
                return Routed::reply(error_for(&el, StanzaErrorCondition::ServiceUnavailable));
            };
            if node.blocks(&user, &from).await {
                return Routed::default();
            }
            let t = MessageType::parse(stanza::stanza_type(&el));
            message::deliver(node, &user, &to, t, el).await
        }
        StanzaKind::Presence => {
            presence::deliver_directed(node, &from, &to, &el).await;
            Routed::default()
        }
        StanzaKind::Iq => {
            let is_ping = stanza::stanza_type(&el) == Some("get") && el.has_child("ping", ns::PING);
            match (to.node(), to.resource()) {
                (Some(user), Some(resource)) => {
                    let session = node.router.session(user.as_str(), resource.as_str());
                    let blocked = node.blocks(user.as_str(), &from).await;
                    let not_delivered = match session {
                        Some(s) if !blocked => match s.offer(el) {
                            Ok(()) => return Routed::reached_session(),
                            Err(back) => back,
                        },
                        _ => el,
                    };
                    Routed::reply(error_for(
                        &not_delivered,
                        StanzaErrorCondition::ServiceUnavailable,
                    ))
                }
                // Components ping the server to check their link.
                (None, None) if is_ping => Routed::reply(Some(stanza::iq_result(&el, None))),
                _ => Routed::reply(error_for(&el, StanzaErrorCondition::ServiceUnavailable)),
            }
        }
    }
}
