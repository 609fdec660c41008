//! The routing path of a chat message to a local user, with `SESSIONS`
//! users bound (one session each, available), through public APIs only.
//!
//! - `router/channel_only`: the baseline every delivery pays: clone the
//!   message, `try_send` it on a session queue, the receiving side's
//!   `try_recv` and drop. No router.
//! - `router/session_lookup`: `Router::session(user, resource)`, the
//!   snapshot of one entry (iq to a full JID).
//! - `router/sessions_deliver`: `Router::sessions(user)` then
//!   `SessionEntry::deliver` to each (clone + `try_send`), drained.
//! - `router/message_deliver_{bare,full}`: `modules::message::deliver`,
//!   what a bound client's `<message type='chat'>` to a local user runs
//!   after the block-list checks: the RFC 6121 rules, the queue, carbons.
//!
//! Each iteration goes to the next user in a scattered order, so the
//! DashMap shards and entries are not all hot in cache.
//!
//! `cargo bench -p tributary-server --bench router -- --noplot`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jid::{BareJid, Jid};
use minidom::Element;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_proto::routing::MessageType;
use tributary_server::modules::message;
use tributary_server::router::{BindRequest, Outbound, Router};
use tributary_server::{tls, Config, Node};
use tributary_store::{SqliteStore, Store};

const SESSIONS: usize = 10_000;
const RESOURCE: &str = "desk";
/// Coprime with `SESSIONS`: visits every user once per `SESSIONS` steps.
const STRIDE: usize = 7_919;

struct Users {
    names: Vec<String>,
    bare: Vec<Jid>,
    full: Vec<Jid>,
    rxs: Vec<mpsc::Receiver<Outbound>>,
    next: usize,
}

impl Users {
    fn next(&mut self) -> usize {
        self.next = (self.next + STRIDE) % SESSIONS;
        self.next
    }

    /// Takes what the last delivery queued for user `i`, as its connection
    /// would; panics if nothing was delivered.
    fn drain(&mut self, i: usize) {
        match self.rxs[i].try_recv() {
            Ok(out) => drop(black_box(out)),
            Err(e) => panic!("nothing delivered to {}: {e}", self.names[i]),
        }
    }
}

/// Binds `SESSIONS` users, each with one available session.
fn bind_all(router: &Router, queue: usize) -> Users {
    let mut users = Users {
        names: Vec::with_capacity(SESSIONS),
        bare: Vec::with_capacity(SESSIONS),
        full: Vec::with_capacity(SESSIONS),
        rxs: Vec::with_capacity(SESSIONS),
        next: 0,
    };
    for i in 0..SESSIONS {
        let name = format!("user{i}");
        let bare: BareJid = format!("{name}@localhost").parse().expect("jid");
        let (tx, rx) = mpsc::channel(queue);
        let full = router
            .bind(
                BindRequest {
                    user: &bare,
                    requested: Some(RESOURCE),
                    tx,
                    kill: CancellationToken::new(),
                    max_resources: 10,
                },
                router.new_conn_id(),
            )
            .expect("bound");
        router
            .update(&name, RESOURCE, |s| s.available = true)
            .expect("session");
        users.names.push(name);
        users.bare.push(Jid::from(bare));
        users.full.push(Jid::from(full));
        users.rxs.push(rx);
    }
    users
}

fn chat() -> Element {
    "<message xmlns='jabber:client' from='bench1@localhost/tributary-5e1f0c9a2b7d4e83' \
     to='user1@localhost' type='chat' id='c-1'>\
     <body>1f 1764064800123456789 hello from bench1, how are you doing today?</body></message>"
        .parse()
        .expect("message")
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

fn router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("tributary.sqlite"))
                .await
                .expect("store"),
        );
        let (cert, key) = tls::ensure_self_signed(dir.path(), "localhost").expect("cert");
        let tls = tls::server_config(&cert, &key).expect("tls");
        Node::new(Config::default(), store, tls)
    });
    let queue = node.config.limits.session_queue;
    let mut users = bind_all(&node.router, queue);
    assert_eq!(node.router.online().len(), SESSIONS);
    let msg = chat();

    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));

    let (tx, mut rx) = mpsc::channel::<Outbound>(queue);
    g.bench_function("channel_only", |b| {
        b.iter(|| {
            tx.try_send(Outbound::Stanza(Box::new(msg.clone())))
                .expect("room in the queue");
            drop(black_box(rx.try_recv().expect("queued")));
        })
    });

    g.bench_function("session_lookup", |b| {
        b.iter(|| {
            let i = users.next();
            black_box(
                node.router
                    .session(&users.names[i], RESOURCE)
                    .expect("bound"),
            )
        })
    });

    g.bench_function("sessions_deliver", |b| {
        b.iter(|| {
            let i = users.next();
            for s in node.router.sessions(&users.names[i]) {
                assert!(s.deliver(msg.clone()));
            }
            users.drain(i);
        })
    });

    for (name, full) in [
        ("message_deliver_bare", false),
        ("message_deliver_full", true),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let i = users.next();
                        let to = if full { &users.full[i] } else { &users.bare[i] };
                        let routed = message::deliver(
                            &node,
                            &users.names[i],
                            to,
                            MessageType::Chat,
                            msg.clone(),
                        )
                        .await;
                        assert!(routed.reached_session);
                        users.drain(i);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    drop(node);
}

criterion_group! {
    name = benches;
    config = config();
    targets = router
}
criterion_main!(benches);
