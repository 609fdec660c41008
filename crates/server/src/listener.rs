//! Accept loops: a connection cap, back-off on accept errors, and graceful
//! shutdown (CancellationToken + TaskTracker, as in mini-redis).

use crate::config::Config;
use crate::connection::{self, Transport};
use crate::node::Node;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tributary_store::{SqliteStore, Store};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot open the database: {0}")]
    Store(#[from] tributary_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A started node: its bound addresses and the handle to stop it.
pub struct Running {
    pub node: Arc<Node>,
    pub c2s: Option<SocketAddr>,
    pub c2s_tls: Option<SocketAddr>,
    pub component: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops accepting, closes every stream with `<system-shutdown/>`, and
    /// waits for the connection tasks to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Resolves when shutdown has been requested.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Opens the store, prepares TLS, binds the listeners and starts serving.
pub async fn serve(config: Config) -> Result<Running, ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| {
        ServeError::Tls(crate::tls::TlsError::Write {
            path: config.data_dir.clone(),
            source,
        })
    })?;
    let (cert, key) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => crate::tls::ensure_self_signed(&config.data_dir, &config.domain)?,
    };
    let tls = crate::tls::server_config(&cert, &key)?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.database_path()).await?);
    let node = Arc::new(Node::new(config, store, tls));

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(node.config.limits.max_connections));
    let mut running = Running {
        node: node.clone(),
        c2s: None,
        c2s_tls: None,
        component: None,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    };
    for (addr, kind) in [
        (
            node.config.listen.c2s.clone(),
            Kind::C2s(Transport::StartTls),
        ),
        (
            node.config.listen.c2s_tls.clone(),
            Kind::C2s(Transport::DirectTls),
        ),
        (node.config.listen.component.clone(), Kind::Component),
    ] {
        // No component port is opened while no component is declared.
        let unused = matches!(kind, Kind::Component) && node.config.components.is_empty();
        if addr.is_empty() || unused {
            continue;
        }
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        match kind {
            Kind::C2s(Transport::StartTls) => running.c2s = Some(local),
            Kind::C2s(Transport::DirectTls) => running.c2s_tls = Some(local),
            Kind::Component => running.component = Some(local),
        }
        tracing::info!(%local, ?kind, "listening");
        tracker.spawn(accept_loop(
            listener,
            kind,
            node.clone(),
            permits.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    tracker.spawn(housekeeping(node, shutdown));
    Ok(running)
}

/// What a listener accepts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    C2s(Transport),
    /// XEP-0114 external components.
    Component,
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    node: Arc<Node>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // Usually EMFILE: wait for connections to close rather than spin.
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let node = node.clone();
        let shutdown = shutdown.clone();
        // One task type per kind: a task is as large as the largest future
        // it may run, and a component connection's is the larger, while
        // idle client sessions are the many.
        match kind {
            Kind::C2s(transport) => tracker.spawn(async move {
                connection::run(node, tcp, peer, transport, shutdown).await;
                drop(permit);
            }),
            Kind::Component => tracker.spawn(async move {
                crate::component::run(node, tcp, peer, shutdown).await;
                drop(permit);
            }),
        };
    }
}

/// Periodic upkeep that keeps in-memory tables small.
async fn housekeeping(node: Arc<Node>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                node.auth_failures.sweep(Instant::now());
                log_queue_depths(&node).await;
            }
        }
    }
}

/// Queue depth and oldest age, visible in the log while anything waits.
async fn log_queue_depths(node: &Node) {
    match node.store.queue_depths().await {
        Ok(depths) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            for d in depths {
                let oldest_secs = (now_ms - d.oldest_at).max(0) / 1000;
                tracing::info!(queue = %d.queue, depth = d.depth, oldest_secs, "queued for processors");
            }
        }
        Err(e) => tracing::warn!("cannot read queue depths: {e}"),
    }
}
