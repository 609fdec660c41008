//! The processor's link follows an RFC 6120 `<see-other-host/>` redirect
//! (section 4.9.3.19) from the node it was configured with to the node it
//! is sent to, and reconnects by itself, with back-off, when the node goes
//! away and comes back.
//!
//! The node it ends up on is a real Tributary node started in-process; the
//! "old node" doing the redirecting is a few lines of TCP in this file.

use minidom::Element;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tributary_processor::sql::SqlProcessor;
use tributary_processor::{run, LinkConfig, LinkStats};
use tributary_proto::component::handshake_digest;
use tributary_server::config::ComponentConfig;
use tributary_server::{Config, Running};

const DOMAIN: &str = "collect.localhost";
const SECRET: &str = "s3cret";
const WAIT: Duration = Duration::from_secs(10);

/// A real node with one component domain, listening for components on
/// `component` and nothing else.
async fn start_node(component: &str, data_dir: &Path) -> Running {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.c2s = String::new();
    config.listen.c2s_tls = String::new();
    config.listen.component = component.into();
    config.components = vec![ComponentConfig {
        domain: DOMAIN.into(),
        secret: SECRET.into(),
        observe_presence: false,
        quota: 1000,
        window: 16,
    }];
    tributary_server::serve(config).await.expect("node starts")
}

fn node_component(node: &Running) -> SocketAddr {
    node.component.expect("component listener")
}

/// Starts the processor's link (the library behind `tributary process`)
/// against `server`, committing into a SQLite file in `dir`.
async fn start_processor(
    server: &str,
    dir: &Path,
    max_backoff: Duration,
) -> (SqlProcessor, Arc<LinkStats>, JoinHandle<()>) {
    let url = format!("sqlite://{}", dir.join("reports.db").display());
    let db = SqlProcessor::connect(&url).await.expect("database");
    let stats = Arc::new(LinkStats::default());
    let link = tokio::spawn(run(
        LinkConfig {
            server: server.to_owned(),
            domain: DOMAIN.into(),
            secret: SECRET.into(),
            max_backoff,
            commit_delay: tributary_processor::DEFAULT_COMMIT_DELAY,
        },
        db.clone(),
        stats.clone(),
    ));
    (db, stats, link)
}

/// Polls `cond` until it holds; panics with `what` after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn component_attached(node: &Running) {
    eventually("the node shows the component connected", || async {
        node.node.router.connected_components() == [DOMAIN]
    })
    .await;
}

/// Hands a report from alice to the node's component routing (the path a
/// user's stanza to the component domain takes, into the durable queue)
/// and waits until the processor committed it to the `reports` table.
async fn report_is_committed(node: &Running, db: &SqlProcessor, id: &str) {
    let from = "alice@localhost/phone";
    let el: Element = format!(
        "<message xmlns='jabber:client' from='{from}' to='{DOMAIN}' id='{id}'>\
         <report xmlns='urn:tributary:report:0' id='{id}' kind='test'>\
         <json xmlns='urn:xmpp:json:0'>{{\"ok\":true}}</json></report></message>"
    )
    .parse()
    .expect("report XML");
    let to = jid::Jid::new(DOMAIN).expect("component JID");
    tributary_server::modules::components::to_component(&node.node, &to, &el)
        .await
        .expect("report queued");
    eventually(&format!("report {id} is in the reports table"), || async {
        db.reports(Some("alice@localhost"), None, 100)
            .await
            .expect("query")
            .iter()
            .any(|r| r.id == id)
    })
    .await;
}

/// When the old node sends `<see-other-host/>`.
#[derive(Clone, Copy, Debug)]
enum When {
    /// Right after its stream header, instead of answering the handshake.
    BeforeHandshake,
    /// After accepting the handshake and `<enable/>`: a node that is being
    /// drained moves its established components away.
    AfterHandshake,
}

/// A node that redirects every component connection elsewhere.
struct OldNode {
    addr: SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// What each connection sent before it was redirected.
    received: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl OldNode {
    /// Listens on `bind`; `target` gets the bound address (for a node that
    /// sends processors back to itself).
    async fn start(bind: &str, target: impl FnOnce(SocketAddr) -> String, when: When) -> OldNode {
        let listener = TcpListener::bind(bind).await.expect("old node binds");
        let addr = listener.local_addr().expect("old node address");
        let target = target(addr);
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (connections.clone(), received.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (target, log) = (target.clone(), log.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let _ = redirect(tcp, &target, when, &mut got).await;
                    log.lock()
                        .expect("log")
                        .push(String::from_utf8_lossy(&got).into_owned());
                });
            }
        });
        OldNode {
            addr,
            connections,
            received,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for OldNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads into `got` until `done` holds for what was read so far.
async fn read_until(
    tcp: &mut TcpStream,
    got: &mut Vec<u8>,
    done: impl Fn(&str) -> bool,
) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while !done(&String::from_utf8_lossy(got)) {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

fn has_stream_header(s: &str) -> bool {
    s.find("<stream:stream")
        .is_some_and(|at| s[at..].contains('>'))
}

async fn redirect(
    mut tcp: TcpStream,
    target: &str,
    when: When,
    got: &mut Vec<u8>,
) -> std::io::Result<()> {
    const STREAM_ID: &str = "old-node-stream";
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{DOMAIN}' id='{STREAM_ID}'>"
    );
    let error = format!(
        "<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{target}\
         </see-other-host></stream:error></stream:stream>"
    );
    read_until(&mut tcp, got, has_stream_header).await?;
    match when {
        When::BeforeHandshake => {
            tcp.write_all(format!("{header}{error}").as_bytes()).await?;
        }
        When::AfterHandshake => {
            tcp.write_all(header.as_bytes()).await?;
            read_until(&mut tcp, got, |s| s.contains("</handshake>")).await?;
            let expected = handshake_digest(STREAM_ID, SECRET);
            if !String::from_utf8_lossy(got).contains(&format!("<handshake>{expected}</handshake>"))
            {
                tcp.write_all(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>").await?;
                return Ok(());
            }
            tcp.write_all(b"<handshake/>").await?;
            read_until(&mut tcp, got, |s| s.contains("<enable")).await?;
            tcp.write_all(error.as_bytes()).await?;
        }
    }
    // The processor hangs up first: closing with its bytes unread could
    // reset the connection before it read the error.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
    got.extend_from_slice(&rest);
    Ok(())
}

/// The whole redirect scenario: a real node listening on `node_listen`,
/// an old node on `old_listen(real node's address)` sending processors to
/// `target(real node's address)`, a processor configured with the old node.
async fn redirected_to_the_node(
    node_listen: &str,
    old_listen: impl FnOnce(SocketAddr) -> String,
    target: impl FnOnce(SocketAddr) -> String,
    when: When,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_node(node_listen, &dir.path().join("data")).await;
    let real = node_component(&node);
    let target = target(real);
    let old = OldNode::start(&old_listen(real), |_| target.clone(), when).await;
    let (db, stats, link) =
        start_processor(&old.addr.to_string(), dir.path(), Duration::from_secs(5)).await;

    component_attached(&node).await;
    report_is_committed(&node, &db, "R-1").await;
    assert!(stats.connected.load(Ordering::Relaxed));
    let expected_sessions = match when {
        When::BeforeHandshake => 1,
        When::AfterHandshake => 2,
    };
    assert_eq!(
        stats.connections.load(Ordering::Relaxed),
        expected_sessions,
        "sessions established (redirected {when:?}, to {target})"
    );

    // It stays on the new node: the old one saw one connection, ever.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(old.connections(), 1, "connections to the old node");
    let received = old.received.lock().expect("log").clone();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0].contains(&format!("to='{DOMAIN}'")),
        "the stream header names the component domain: {}",
        received[0]
    );
    assert_eq!(node.node.router.connected_components(), [DOMAIN]);

    link.abort();
    node.shutdown().await;
}

#[tokio::test]
async fn follows_see_other_host_sent_instead_of_the_handshake() {
    redirected_to_the_node(
        "127.0.0.1:0",
        |_| "127.0.0.1:0".into(),
        |real| real.to_string(),
        When::BeforeHandshake,
    )
    .await;
}

#[tokio::test]
async fn follows_see_other_host_sent_on_an_established_stream() {
    redirected_to_the_node(
        "127.0.0.1:0",
        |_| "127.0.0.1:0".into(),
        |real| real.to_string(),
        When::AfterHandshake,
    )
    .await;
}

/// Whether this host has IPv6 loopback; the IPv6 tests are skipped
/// (loudly) where it has not.
fn ipv6_loopback() -> bool {
    let ok = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !ok {
        eprintln!("no IPv6 loopback here: test skipped");
    }
    ok
}

#[tokio::test]
async fn follows_see_other_host_to_an_ipv6_literal_with_a_port() {
    if !ipv6_loopback() {
        return;
    }
    redirected_to_the_node(
        "[::1]:0",
        |_| "127.0.0.1:0".into(),
        |real| format!("[::1]:{}", real.port()),
        When::BeforeHandshake,
    )
    .await;
}

/// RFC 6120 lets the target be a bare domainpart (FQDN or IP address, an
/// IPv6 one in brackets) without a port; the processor then stays on the
/// port it was using. Here the old node and the new one share the port
/// number on different addresses.
#[tokio::test]
async fn see_other_host_without_a_port_keeps_the_port() {
    // 127.0.0.2 is loopback on Linux; skip where it is not.
    if std::net::TcpListener::bind("127.0.0.2:0").is_err() {
        eprintln!("127.0.0.2 is not loopback here: test skipped");
        return;
    }
    for target in ["127.0.0.1", "localhost"] {
        redirected_to_the_node(
            "127.0.0.1:0",
            |real| format!("127.0.0.2:{}", real.port()),
            |_| target.into(),
            When::BeforeHandshake,
        )
        .await;
    }
}

#[tokio::test]
async fn see_other_host_to_a_bracketed_ipv6_literal_without_a_port() {
    if !ipv6_loopback() {
        return;
    }
    redirected_to_the_node(
        "[::1]:0",
        |real| format!("127.0.0.1:{}", real.port()),
        |_| "[::1]".into(),
        When::AfterHandshake,
    )
    .await;
}

/// A node that sends processors back to itself (a misconfigured cluster)
/// must not get a tight loop of connections: the first redirect is
/// followed at once, further ones without a session in between wait like
/// any reconnection.
#[tokio::test]
async fn a_redirect_loop_is_followed_with_back_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old = OldNode::start("127.0.0.1:0", |me| me.to_string(), When::BeforeHandshake).await;
    let (_db, stats, link) = start_processor(
        &old.addr.to_string(),
        dir.path(),
        Duration::from_millis(400),
    )
    .await;
    eventually("the processor reached the old node", || async {
        old.connections() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let n = old.connections();
    // Back-off from 100 ms, doubled up to 400 ms, jittered by 0.5..1.5:
    // at most about nine connections in 1.2 s, and at least three.
    assert!((3..=12).contains(&n), "{n} connections in 1.2 s");
    assert!(!stats.connected.load(Ordering::Relaxed));
    assert_eq!(stats.connections.load(Ordering::Relaxed), 0);
    link.abort();
}

/// The node's component listener goes away (the node is stopped) and
/// comes back on the same address (the node restarts): the processor
/// reconnects by itself and goes on committing reports.
#[tokio::test]
async fn reconnects_after_the_node_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let node = start_node("127.0.0.1:0", &data).await;
    let addr = node_component(&node);
    let (db, stats, link) =
        start_processor(&addr.to_string(), dir.path(), Duration::from_millis(200)).await;
    component_attached(&node).await;
    report_is_committed(&node, &db, "R-before").await;
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1);

    node.shutdown().await;
    eventually("the processor notices the node is gone", || async {
        !stats.connected.load(Ordering::Relaxed)
    })
    .await;
    // Down long enough for several refused attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1);

    let node = start_node(&addr.to_string(), &data).await;
    assert_eq!(node_component(&node), addr);
    component_attached(&node).await;
    eventually("the processor is connected again", || async {
        stats.connected.load(Ordering::Relaxed)
    })
    .await;
    assert_eq!(stats.connections.load(Ordering::Relaxed), 2);
    report_is_committed(&node, &db, "R-after").await;
    assert_eq!(db.report_count().await.expect("count"), 2);

    link.abort();
    node.shutdown().await;
}
