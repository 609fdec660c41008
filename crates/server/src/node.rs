//! The node: everything a connection needs, shared behind one `Arc`.

use crate::config::Config;
use crate::limits::AuthFailures;
use crate::router::Router;
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tributary_store::Store;

pub struct Node {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub router: Router,
    pub auth_failures: AuthFailures,
    pub tls: Arc<rustls::ServerConfig>,
    pub started: Instant,
    /// XEP-0191 block lists of users with a session, loaded at login so the
    /// routing path checks them without a database read.
    pub blocklists: DashMap<String, Arc<HashSet<String>>>,
    /// Durable queues of the component domains.
    pub queues: crate::queue::Queues,
    /// XEP-0198 sessions that can be resumed, by resumption id.
    pub resumable: DashMap<String, crate::connection::ResumeHandle>,
    /// Resumption ids of sessions that ended, with their last handled
    /// count, so a late `<resume/>` gets `<failed h=.../>`.
    pub expired_sessions: DashMap<String, (String, u32, Instant)>,
}

impl Node {
    pub fn new(config: Config, store: Arc<dyn Store>, tls: Arc<rustls::ServerConfig>) -> Node {
        let auth_failures = AuthFailures::new(
            Duration::from_millis(config.limits.auth_failure_delay_ms),
            Duration::from_millis(config.limits.auth_failure_delay_max_ms),
        );
        let components: Vec<(String, u64)> = config
            .components
            .iter()
            .map(|c| (c.domain.clone(), c.quota))
            .collect();
        let queues = crate::queue::Queues::start(
            store.clone(),
            &components,
            Duration::from_millis(config.queue.commit_delay_ms),
        );
        Node {
            queues,
            config,
            store,
            router: Router::new(),
            auth_failures,
            tls,
            started: Instant::now(),
            blocklists: DashMap::new(),
            resumable: DashMap::new(),
            expired_sessions: DashMap::new(),
        }
    }

    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    /// Whether `user` (a local part) blocks the full JID, bare JID or
    /// domain of `peer`. Users with a session have their list cached; for
    /// others it is read from the store (their messages go to disk anyway).
    pub async fn blocks(&self, user: &str, peer: &jid::Jid) -> bool {
        let cached = self.blocklists.get(user).map(|l| Arc::clone(&l));
        let list = match cached {
            Some(list) => list,
            None => match self.store.blocklist(user).await {
                Ok(l) if l.is_empty() => return false,
                Ok(l) => Arc::new(l.into_iter().collect()),
                Err(e) => {
                    tracing::warn!(%user, "cannot read block list: {e}");
                    return false;
                }
            },
        };
        list.contains(peer.as_str())
            || list.contains(peer.to_bare().as_str())
            || list.contains(peer.domain().as_str())
    }
}
