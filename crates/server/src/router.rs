//! The session registry: which resources of which local users are
//! connected, and the queue to each of them.
//!
//! Sharded (DashMap) by user, so routing to different users never takes
//! the same lock, and a lock is held only for the copy of a small entry.
//! Queues are bounded: a session that does not drain its queue is killed
//! rather than allowed to grow server memory.

use dashmap::DashMap;
use jid::{BareJid, FullJid, ResourcePart};
use minidom::Element;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_proto::error::StreamError;
use tributary_proto::negotiation::BindError;

/// What other tasks send to a connection. Payloads are boxed: each
/// session's bounded channel allocates slots for 32 of these up front,
/// which for an idle session should be pointers, not whole elements.
#[derive(Debug)]
pub enum Outbound {
    Stanza(Box<Element>),
    /// An item of a component's durable queue, to acknowledge by its id.
    /// Only ever sent to component connections.
    Queued {
        id: i64,
        stanza: Box<crate::queue::QueuedStanza>,
    },
    /// Close the stream with this error (resource conflict, account deleted).
    Close(Box<StreamError>),
}

/// A session's last available presence, kept serialised: as a minidom tree
/// even an empty presence holds two attribute maps (about 1 KB) for every
/// online session, and it is read back only to answer probes and to tell
/// a new resource of its siblings.
#[derive(Debug, Clone)]
pub struct StoredPresence(Arc<str>);

impl StoredPresence {
    pub fn new(pres: &Element) -> StoredPresence {
        StoredPresence(tributary_proto::stanza::to_string(pres).into())
    }

    /// The presence as it was broadcast.
    pub fn element(&self) -> Option<Element> {
        self.0.parse().ok()
    }
}

/// One bound resource as the rest of the node sees it.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub resource: String,
    /// Identifies the connection, so a replaced session's late unbind does
    /// not remove its successor.
    pub conn_id: u64,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the queue overflowed; the connection then closes.
    pub kill: CancellationToken,
    /// Sent initial presence and not since unavailable (RFC 6121 4.2).
    pub available: bool,
    pub priority: i8,
    /// Last available presence broadcast, answered to probes.
    pub presence: Option<StoredPresence>,
    /// XEP-0280 enabled.
    pub carbons: bool,
    /// Requested the roster: receives roster pushes (RFC 6121 2.1.6).
    pub interested: bool,
    /// The connection dropped and the session waits for XEP-0198
    /// resumption; its queue still accepts stanzas.
    pub hibernating: bool,
}

impl SessionEntry {
    /// Queues a stanza; false when the session is gone or stuck (and then
    /// killed), so the caller can fall back to offline storage.
    pub fn deliver(&self, el: Element) -> bool {
        self.offer(el).is_ok()
    }

    /// [`SessionEntry::deliver`] that gives the stanza back when it was not
    /// queued, so that a caller can pass its only copy and still store it.
    pub fn offer(&self, el: Element) -> Result<(), Element> {
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Outbound::Stanza(Box::new(el)));
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                tracing::warn!(resource = %self.resource, "session queue full; closing the session");
                self.kill.cancel();
                Err(el)
            }
            Err(mpsc::error::TrySendError::Closed(())) => Err(el),
        }
    }
}

/// One connection of an external component.
#[derive(Debug, Clone)]
pub struct ComponentEntry {
    pub conn_id: u64,
    pub tx: mpsc::Sender<Outbound>,
    pub kill: CancellationToken,
}

#[derive(Debug, Default)]
pub struct Router {
    users: DashMap<String, Vec<SessionEntry>>,
    /// Connected components by domain; several connections may serve one.
    components: DashMap<String, Vec<ComponentEntry>>,
    next_conn_id: AtomicU64,
}

/// What binding needs from the connection.
pub struct BindRequest<'a> {
    pub user: &'a BareJid,
    pub requested: Option<&'a str>,
    pub tx: mpsc::Sender<Outbound>,
    pub kill: CancellationToken,
    pub max_resources: usize,
}

impl Router {
    pub fn new() -> Self {
        Router::default()
    }

    pub fn new_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Binds a resource (RFC 6120 7). A requested resource already in use
    /// is taken over: the old session is closed with `<conflict/>`, as
    /// Prosody and ejabberd do by default, since the usual cause is a
    /// client reconnecting before its dead connection timed out.
    pub fn bind(&self, req: BindRequest<'_>, conn_id: u64) -> Result<FullJid, BindError> {
        let node = req.user.node().map(|n| n.to_string()).unwrap_or_default();
        let resource = match req.requested {
            Some(r) => ResourcePart::new(r)
                .map_err(|_| BindError::BadRequest)?
                .to_string(),
            None => generated_resource(),
        };
        let full = req
            .user
            .with_resource(&ResourcePart::new(&resource).map_err(|_| BindError::BadRequest)?);
        let mut sessions = self.users.entry(node).or_default();
        if let Some(pos) = sessions.iter().position(|s| s.resource == resource) {
            let old = sessions.remove(pos);
            let conflict = StreamError::with_text(
                tributary_proto::error::StreamErrorCondition::Conflict,
                "replaced by a new connection",
            );
            if old
                .tx
                .try_send(Outbound::Close(Box::new(conflict)))
                .is_err()
            {
                old.kill.cancel();
            }
        } else if sessions.len() >= req.max_resources {
            return Err(BindError::ResourceConstraint);
        }
        sessions.push(SessionEntry {
            resource,
            conn_id,
            tx: req.tx,
            kill: req.kill,
            available: false,
            priority: 0,
            presence: None,
            carbons: false,
            interested: false,
            hibernating: false,
        });
        Ok(full)
    }

    /// Removes a session if it is still the one bound by `conn_id`.
    pub fn unbind(&self, user: &str, resource: &str, conn_id: u64) {
        let mut empty = false;
        if let Some(mut sessions) = self.users.get_mut(user) {
            sessions.retain(|s| !(s.resource == resource && s.conn_id == conn_id));
            empty = sessions.is_empty();
        }
        if empty {
            self.users.remove_if(user, |_, v| v.is_empty());
        }
    }

    /// A snapshot of a user's sessions.
    pub fn sessions(&self, user: &str) -> Vec<SessionEntry> {
        self.users.get(user).map(|s| s.clone()).unwrap_or_default()
    }

    pub fn session(&self, user: &str, resource: &str) -> Option<SessionEntry> {
        self.users
            .get(user)?
            .iter()
            .find(|s| s.resource == resource)
            .cloned()
    }

    /// Changes one session's entry in place.
    pub fn update<R>(
        &self,
        user: &str,
        resource: &str,
        f: impl FnOnce(&mut SessionEntry) -> R,
    ) -> Option<R> {
        let mut sessions = self.users.get_mut(user)?;
        sessions.iter_mut().find(|s| s.resource == resource).map(f)
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|s| !s.is_empty())
    }

    /// Every bound session as (user, resource), sorted.
    pub fn online(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .users
            .iter()
            .flat_map(|e| {
                let user = e.key().clone();
                e.value()
                    .iter()
                    .map(move |s| (user.clone(), s.resource.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        all
    }

    /// Closes every session of a user (account deleted).
    pub fn close_user(&self, user: &str, err: StreamError) {
        for s in self.sessions(user) {
            if s.tx
                .try_send(Outbound::Close(Box::new(err.clone())))
                .is_err()
            {
                s.kill.cancel();
            }
        }
    }
}

impl Router {
    pub fn attach_component(&self, domain: &str, entry: ComponentEntry) {
        self.components
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .push(entry);
    }

    pub fn detach_component(&self, domain: &str, conn_id: u64) {
        let key = domain.to_ascii_lowercase();
        if let Some(mut conns) = self.components.get_mut(&key) {
            conns.retain(|c| c.conn_id != conn_id);
        }
        self.components.remove_if(&key, |_, v| v.is_empty());
    }

    /// Domains with at least one connection, sorted.
    pub fn connected_components(&self) -> Vec<String> {
        let mut all: Vec<String> = self.components.iter().map(|e| e.key().clone()).collect();
        all.sort();
        all
    }
}

fn generated_resource() -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("tributary-{n:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_presence_comes_back_as_it_was_broadcast() {
        let pres: Element =
            "<presence xmlns='jabber:client' from='alice@localhost/phone' xml:lang='en'>\
             <show>away</show><status>back &amp; soon</status><priority>5</priority>\
             <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/></presence>"
                .parse()
                .expect("presence");
        assert_eq!(StoredPresence::new(&pres).element(), Some(pres));
    }

    fn req<'a>(
        user: &'a BareJid,
        requested: Option<&'a str>,
    ) -> (BindRequest<'a>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(2);
        (
            BindRequest {
                user,
                requested,
                tx,
                kill: CancellationToken::new(),
                max_resources: 2,
            },
            rx,
        )
    }

    #[test]
    fn bind_generates_resource_and_takes_over_conflicts() {
        let r = Router::new();
        let alice: BareJid = "alice@localhost".parse().expect("jid");
        let (q, _rx1) = req(&alice, None);
        let generated = r.bind(q, 1).expect("bound");
        assert!(generated.resource().as_str().starts_with("tributary-"));
        let (q, mut rx2) = req(&alice, Some("phone"));
        r.bind(q, 2).expect("bound");
        let (q, _rx3) = req(&alice, Some("phone"));
        r.bind(q, 3).expect("takeover");
        assert!(
            matches!(rx2.try_recv(), Ok(Outbound::Close(e)) if e.condition == tributary_proto::error::StreamErrorCondition::Conflict)
        );
        // The old connection's late unbind must not remove the new session.
        r.unbind("alice", "phone", 2);
        assert!(r.session("alice", "phone").is_some());
        let (q, _rx4) = req(&alice, Some("laptop"));
        assert_eq!(r.bind(q, 4), Err(BindError::ResourceConstraint));
    }

    #[test]
    fn a_full_queue_kills_the_session_and_gives_the_stanza_back() {
        let r = Router::new();
        let alice: BareJid = "alice@localhost".parse().expect("jid");
        let (q, rx) = req(&alice, Some("a"));
        r.bind(q, 1).expect("bound");
        let s = r.session("alice", "a").expect("session");
        let msg: Element = "<message xmlns='jabber:client' id='m1'><body>kept</body></message>"
            .parse()
            .expect("message");
        assert!(s.deliver(msg.clone()));
        assert_eq!(s.offer(msg.clone()), Ok(()));
        assert!(!s.kill.is_cancelled());
        assert_eq!(s.offer(msg.clone()), Err(msg.clone()), "queue full");
        assert!(s.kill.is_cancelled());
        drop(rx);
        let other = r.session("alice", "a").expect("still bound");
        assert_eq!(other.offer(msg.clone()), Err(msg), "connection gone");
    }
}
