//! The collector against a real node (in-process, free loopback ports) and
//! a minimal processor written with the component protocol (XEP-0114).

use minidom::Element;
use serde_json::json;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tributary_collector::{
    run, send_presence, CollectorConfig, Error, Outbox, Report, Show, Summary, Wait, JSON_NS,
    RECEIPTS_NS, REPORT_NS,
};
use tributary_proto::scram::Credentials;
use tributary_proto::xml::{Frame, Framer};
use tributary_server::config::ComponentConfig;
use tributary_server::{Config, Running};

const DOMAIN: &str = "collect.localhost";
const SECRET: &str = "s";
/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(60);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

struct Node {
    running: Running,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(observe_presence: bool) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let running = serve(dir.path(), "127.0.0.1:0", "127.0.0.1:0", observe_presence).await;
        let node = Node { running, dir };
        node.add_user("alice", "secret").await;
        node
    }

    async fn add_user(&self, user: &str, password: &str) {
        let creds = Credentials::new(password).expect("valid password");
        self.running
            .node
            .store
            .create_account(user, &creds)
            .await
            .expect("account created");
    }

    fn c2s(&self) -> SocketAddr {
        self.running.c2s.expect("c2s listener")
    }

    fn component(&self) -> SocketAddr {
        self.running.component.expect("component listener")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("data/tls/cert.pem")
    }

    fn outbox(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn collector(&self, outbox: &str) -> CollectorConfig {
        collector_config(&self.c2s().to_string(), &self.cert(), &self.outbox(outbox))
    }

    async fn queue_depth(&self) -> u64 {
        self.running
            .node
            .store
            .queue_depths()
            .await
            .expect("queue depths")
            .iter()
            .filter(|q| q.queue == DOMAIN)
            .map(|q| q.depth)
            .sum()
    }
}

async fn serve(data: &Path, c2s: &str, component: &str, observe_presence: bool) -> Running {
    serve_with(data, c2s, component, observe_presence, 1_000_000).await
}

async fn serve_with(
    data: &Path,
    c2s: &str,
    component: &str,
    observe_presence: bool,
    quota: u64,
) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = Config {
        data_dir: data.join("data"),
        ..Config::default()
    };
    config.listen.c2s = c2s.into();
    config.listen.c2s_tls = String::new();
    config.listen.component = component.into();
    config.components = vec![ComponentConfig {
        domain: DOMAIN.into(),
        secret: SECRET.into(),
        observe_presence,
        quota,
        window: 256,
    }];
    tributary_server::serve(config)
        .await
        .expect("server starts")
}

fn collector_config(server: &str, cert: &Path, outbox: &Path) -> CollectorConfig {
    let mut c = CollectorConfig::new("alice@localhost", "secret");
    c.server = server.into();
    c.tls_ca = Some(cert.to_owned());
    c.outbox = outbox.to_owned();
    c.retry_for = Duration::from_secs(20);
    c.wait_timeout = Duration::from_secs(20);
    c
}

fn reports(n: usize) -> Vec<Report> {
    (0..n)
        .map(|i| Report {
            kind: Some("meter.reading".into()),
            ..Report::new(json!({"meter": format!("A-{i}"), "kwh": i as f64 + 0.5}))
        })
        .collect()
}

async fn outbox_total(path: &Path) -> u64 {
    let ob = Outbox::open(path).await.expect("outbox opens");
    let n = ob.counts().await.expect("counts").total();
    ob.close().await;
    n
}

/// A processor: a XEP-0114 component that answers every report with a
/// receipt to its sender, and passes everything it receives to the test.
struct Processor {
    received: mpsc::UnboundedReceiver<Element>,
    task: JoinHandle<()>,
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Processor {
    async fn connect(addr: SocketAddr) -> Processor {
        Processor::connect_holding(addr, usize::MAX).await.0
    }

    /// A processor that stops answering after `answered` reports until
    /// the returned sender says `true`.
    async fn connect_holding(
        addr: SocketAddr,
        answered: usize,
    ) -> (Processor, tokio::sync::watch::Sender<bool>) {
        let mut tcp = within(TcpStream::connect(addr)).await.expect("connect");
        tcp.write_all(
            format!(
                "<stream:stream xmlns='jabber:component:accept' \
                 xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}'>"
            )
            .as_bytes(),
        )
        .await
        .expect("header");
        let mut framer = Framer::new(1 << 20);
        let mut pending = Vec::new();
        let id = match within(next_frame(&mut tcp, &mut framer, &mut pending)).await {
            Some(Frame::StreamOpen(h)) => h.id.expect("stream id"),
            other => panic!("expected a stream header, got {other:?}"),
        };
        let digest = tributary_proto::component::handshake_digest(&id, SECRET);
        tcp.write_all(format!("<handshake>{digest}</handshake>").as_bytes())
            .await
            .expect("handshake");
        match within(next_frame(&mut tcp, &mut framer, &mut pending)).await {
            Some(Frame::Element(e)) if e.name() == "handshake" => {}
            other => panic!("handshake refused: {other:?}"),
        }
        let (tx, received) = mpsc::unbounded_channel();
        let (release, mut released) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut answers = 0usize;
            while let Some(frame) = next_frame(&mut tcp, &mut framer, &mut pending).await {
                let Frame::Element(el) = frame else { continue };
                let receipt = match (el.attr("from"), el.attr("id")) {
                    (Some(from), Some(id))
                        if el.name() == "message"
                            && el.get_child("request", RECEIPTS_NS).is_some() =>
                    {
                        Some(format!(
                            "<message xmlns='jabber:component:accept' from='{DOMAIN}' to='{from}'>\
                             <received xmlns='{RECEIPTS_NS}' id='{id}'/></message>"
                        ))
                    }
                    _ => None,
                };
                // The test sees the report before its sender can learn
                // that it was processed.
                if tx.send(el).is_err() {
                    return;
                }
                if let Some(receipt) = receipt {
                    answers += 1;
                    if answers > answered && released.wait_for(|r| *r).await.is_err() {
                        return;
                    }
                    if tcp.write_all(receipt.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        });
        (Processor { received, task }, release)
    }

    async fn next(&mut self) -> Element {
        within(self.received.recv()).await.expect("processor runs")
    }
}

async fn next_frame(
    tcp: &mut TcpStream,
    framer: &mut Framer,
    pending: &mut Vec<u8>,
) -> Option<Frame> {
    loop {
        let mut slice: &[u8] = pending;
        let before = slice.len();
        let r = framer.next_frame(&mut slice).expect("well-formed");
        let used = before - slice.len();
        pending.drain(..used);
        if let Some(f) = r {
            return Some(f);
        }
        let mut buf = [0u8; 8192];
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn report_id(el: &Element) -> String {
    el.get_child("report", REPORT_NS)
        .and_then(|r| r.attr("id"))
        .expect("a report")
        .to_owned()
}

#[tokio::test]
async fn reports_end_processed_and_leave_the_outbox() {
    let node = Node::start(false).await;
    let mut processor = Processor::connect(node.component()).await;
    let config = node.collector("outbox.sqlite");

    let summary = within(run(&config, reports(100))).await.expect("run");
    assert_eq!(
        summary,
        Summary {
            sent: 100,
            accepted: 100,
            processed: 100,
            failed: 0,
            duplicate_receipts: 0,
            remaining: 0
        }
    );
    assert!(summary.is_complete());
    assert_eq!(outbox_total(&config.outbox).await, 0);

    // The processor got each report once, in order, in the wire format.
    let mut ids = Vec::new();
    while ids.len() < 100 {
        let el = processor.next().await;
        if el.name() != "message" {
            continue;
        }
        if ids.is_empty() {
            assert_eq!(el.attr("to"), Some(DOMAIN));
            assert!(el
                .attr("from")
                .is_some_and(|f| f.starts_with("alice@localhost/")));
            let report = el.get_child("report", REPORT_NS).expect("report");
            assert_eq!(report.attr("kind"), Some("meter.reading"));
            assert!(report.attr("at").is_some());
            assert_eq!(el.attr("id"), report.attr("id"));
            let json = report.get_child("json", JSON_NS).expect("json").text();
            let payload: serde_json::Value = serde_json::from_str(&json).expect("json payload");
            assert_eq!(payload["meter"], "A-0");
        }
        ids.push(report_id(&el));
    }
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 100);
    // Nothing is left for the processor.
    within(async {
        while node.queue_depth().await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A second run with nothing new does not even connect.
    let summary = within(run(&config, Vec::<Report>::new()))
        .await
        .expect("run");
    assert_eq!(summary, Summary::default());
}

#[tokio::test]
async fn accepted_reports_wait_in_the_server_queue_without_a_processor() {
    let node = Node::start(false).await;
    let mut config = node.collector("outbox.sqlite");
    config.wait = Wait::Accepted;

    let summary = within(run(&config, reports(100))).await.expect("run");
    assert_eq!(summary.sent, 100);
    assert_eq!(summary.accepted, 100);
    assert_eq!(summary.processed, 0);
    assert_eq!(summary.failed, 0);
    assert_eq!(summary.remaining, 0);
    assert_eq!(outbox_total(&config.outbox).await, 0);
    assert_eq!(
        node.queue_depth().await,
        100,
        "the server's queue holds them"
    );

    // A processor that comes later gets them all.
    let mut processor = Processor::connect(node.component()).await;
    let mut ids = HashSet::new();
    while ids.len() < 100 {
        let el = processor.next().await;
        if el.name() == "message" {
            ids.insert(report_id(&el));
        }
    }
}

#[tokio::test]
async fn the_outbox_survives_an_unreachable_server_and_is_flushed_later() {
    let node = Node::start(false).await;
    // A port nobody listens on, held for the test: bound without listening
    // (connections to it are refused) and without SO_REUSEADDR, so a server
    // another test starts meanwhile cannot take it, as it could a port
    // merely seen free once.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let closed = reserved.local_addr().expect("addr");
    let outbox = node.outbox("outbox.sqlite");
    let mut offline = collector_config(&closed.to_string(), &node.cert(), &outbox);
    offline.retry_for = Duration::from_secs(1);

    let started = std::time::Instant::now();
    let err = within(run(&offline, reports(20)))
        .await
        .expect_err("gives up");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up in time"
    );
    match err {
        Error::GaveUp { summary, .. } => {
            assert_eq!(summary.sent, 0);
            assert_eq!(summary.remaining, 20);
        }
        other => panic!("expected GaveUp, got {other}"),
    }
    assert_eq!(outbox_total(&outbox).await, 20);

    // Later, with a server and a processor: no new input, the outbox is
    // flushed.
    let mut processor = Processor::connect(node.component()).await;
    let online = collector_config(&node.c2s().to_string(), &node.cert(), &outbox);
    let summary = within(run(&online, Vec::<Report>::new()))
        .await
        .expect("run");
    assert_eq!(
        summary,
        Summary {
            sent: 20,
            accepted: 20,
            processed: 20,
            failed: 0,
            duplicate_receipts: 0,
            remaining: 0
        }
    );
    assert_eq!(outbox_total(&outbox).await, 0);
    let mut ids = HashSet::new();
    while ids.len() < 20 {
        let el = processor.next().await;
        if el.name() == "message" {
            ids.insert(report_id(&el));
        }
    }
}

#[tokio::test]
async fn presence_reaches_an_observing_processor() {
    let node = Node::start(true).await;
    let mut processor = Processor::connect(node.component()).await;
    let config = node.collector("outbox.sqlite");

    within(send_presence(
        &config,
        Some(Show::Away),
        Some("in the field"),
        None,
    ))
    .await
    .expect("presence sent");

    let available = loop {
        let el = processor.next().await;
        if el.name() == "presence" {
            break el;
        }
    };
    assert!(available
        .attr("from")
        .is_some_and(|f| f.starts_with("alice@localhost/")));
    assert_eq!(available.attr("type"), None);
    let child_text = |name: &str| {
        available
            .children()
            .find(|c| c.name() == name)
            .map(|c| c.text())
    };
    assert_eq!(child_text("show").as_deref(), Some("away"));
    assert_eq!(child_text("status").as_deref(), Some("in the field"));
    // Then the clean logout.
    let gone = loop {
        let el = processor.next().await;
        if el.name() == "presence" {
            break el;
        }
    };
    assert_eq!(gone.attr("type"), Some("unavailable"));
}

#[tokio::test]
async fn wrong_password_is_an_error_at_once() {
    let node = Node::start(false).await;
    let mut config = node.collector("outbox.sqlite");
    config.password = "wrong".into();
    let err = within(run(&config, reports(3))).await.expect_err("refused");
    assert!(matches!(err, Error::Auth(_)), "{err}");
    assert_eq!(outbox_total(&config.outbox).await, 3, "reports are kept");
}

#[tokio::test]
async fn untrusted_certificate_is_an_error_at_once() {
    let node = Node::start(false).await;
    let mut config = node.collector("outbox.sqlite");
    // A CA file holding some other certificate.
    let other = tempfile::tempdir().expect("dir");
    let other_node = serve(other.path(), "127.0.0.1:0", "", false).await;
    config.tls_ca = Some(other.path().join("data/tls/cert.pem"));
    let err = within(run(&config, reports(1))).await.expect_err("refused");
    assert!(matches!(err, Error::Tls(_)), "{err}");
    other_node.shutdown().await;

    // With verification off, it goes through.
    config.tls_ca = None;
    config.insecure_accept_any = true;
    config.wait = Wait::Accepted;
    let summary = within(run(&config, Vec::<Report>::new()))
        .await
        .expect("run");
    assert_eq!(summary.accepted, 1);
}

/// A TCP relay whose connections can be cut at once.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = links.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                held.lock().expect("lock").push(link);
            }
        });
        Proxy { addr, links, task }
    }

    /// Drops every relayed connection (both sides see it close).
    fn cut(&self) {
        for link in self.links.lock().expect("lock").drain(..) {
            link.abort();
        }
    }
}

#[tokio::test]
async fn a_cut_link_is_resumed_without_duplicates() {
    let node = Node::start(false).await;
    // Receipts stop after 50 reports until the link was cut, so the cut
    // falls in the middle of the run.
    let (mut processor, release) = Processor::connect_holding(node.component(), 50).await;
    let proxy = Proxy::start(node.c2s()).await;
    let mut config = collector_config(
        &proxy.addr.to_string(),
        &node.cert(),
        &node.outbox("o.sqlite"),
    );
    config.window = 10;

    let collector = tokio::spawn(async move { run(&config, reports(300)).await });
    let mut ids = Vec::new();
    while ids.len() < 50 {
        let el = processor.next().await;
        if el.name() == "message" {
            ids.push(report_id(&el));
        }
    }
    proxy.cut();
    release.send(true).expect("processor runs");
    let summary = within(collector).await.expect("joins").expect("run");
    assert_eq!(
        summary,
        Summary {
            sent: 300,
            accepted: 300,
            processed: 300,
            failed: 0,
            duplicate_receipts: 0,
            remaining: 0
        }
    );
    while let Ok(el) = processor.received.try_recv() {
        if el.name() == "message" {
            ids.push(report_id(&el));
        }
    }
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 300);
    assert_eq!(ids.len(), 300, "resumption sends nothing twice");
}

#[tokio::test]
async fn a_server_restart_loses_nothing_and_counts_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = serve(dir.path(), "127.0.0.1:0", "127.0.0.1:0", false).await;
    let creds = Credentials::new("secret").expect("password");
    running
        .node
        .store
        .create_account("alice", &creds)
        .await
        .expect("account");
    let c2s = running.c2s.expect("c2s").to_string();
    let component = running.component.expect("component").to_string();
    let cert = dir.path().join("data/tls/cert.pem");
    let mut config = collector_config(&c2s, &cert, &dir.path().join("outbox.sqlite"));
    config.window = 10;
    config.retry_for = Duration::from_secs(30);
    config.wait_timeout = Duration::from_secs(30);

    // No processor yet: reports pile up in the server's durable queue.
    let collector = tokio::spawn(async move { run(&config, reports(200)).await });
    let store = running.node.store.clone();
    within(async {
        loop {
            let depth: u64 = store
                .queue_depths()
                .await
                .expect("depths")
                .iter()
                .map(|q| q.depth)
                .sum();
            if depth >= 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(store);
    within(running.shutdown()).await;

    // Same data, same ports; now with a processor.
    let running = serve(dir.path(), &c2s, &component, false).await;
    let mut processor = Processor::connect(running.component.expect("component")).await;
    let summary = within(collector).await.expect("joins").expect("run");
    assert_eq!(summary.sent, 200);
    assert_eq!(summary.accepted, 200);
    assert_eq!(summary.processed, 200, "each report counted once");
    assert_eq!(summary.failed, 0);
    assert_eq!(summary.remaining, 0);
    let mut ids = HashSet::new();
    while let Ok(el) = processor.received.try_recv() {
        if el.name() == "message" {
            ids.insert(report_id(&el));
        }
    }
    assert_eq!(ids.len(), 200, "every report reached the processor");
    running.shutdown().await;
}

#[tokio::test]
async fn unconfirmed_reports_stay_accepted_and_are_confirmed_by_a_later_run() {
    let node = Node::start(false).await;
    let mut config = node.collector("outbox.sqlite");
    config.wait_timeout = Duration::from_millis(300);

    // No processor: accepted, then the wait for receipts times out.
    let summary = within(run(&config, reports(10))).await.expect("run");
    assert_eq!(
        (summary.sent, summary.accepted, summary.processed),
        (10, 10, 0)
    );
    assert_eq!(summary.remaining, 10);
    assert!(!summary.is_complete());
    let ob = Outbox::open(&config.outbox).await.expect("outbox");
    assert_eq!(ob.counts().await.expect("counts").accepted, 10);
    ob.close().await;

    // With a processor, the next run (no new input) gets them confirmed:
    // the server hands the queued reports over, and receipts that went to
    // the first run's session are asked for again once nothing comes.
    let _processor = Processor::connect(node.component()).await;
    config.wait_timeout = Duration::from_secs(20);
    config.reconfirm_after = Duration::from_millis(500);
    let summary = within(run(&config, Vec::<Report>::new()))
        .await
        .expect("run");
    assert_eq!(summary.processed, 10);
    assert_eq!(summary.remaining, 0);
}

#[tokio::test]
async fn refused_reports_are_counted_and_kept() {
    let node = Node::start(false).await;
    let mut config = node.collector("outbox.sqlite");
    config.to = "nowhere.localhost".into();
    let summary = within(run(&config, reports(3))).await.expect("run");
    assert_eq!(summary.sent, 3);
    assert_eq!(summary.accepted, 0);
    assert_eq!(summary.failed, 3);
    assert_eq!(summary.processed, 0);
    assert_eq!(summary.remaining, 3);
    let ob = Outbox::open(&config.outbox).await.expect("outbox");
    assert_eq!(ob.counts().await.expect("counts").failed, 3);
    ob.close().await;
    // Failed reports are not sent again.
    let summary = within(run(&config, Vec::<Report>::new()))
        .await
        .expect("run");
    assert_eq!(summary.sent, 0);
}

#[tokio::test]
async fn reports_over_the_queue_quota_wait_for_a_later_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = serve_with(dir.path(), "127.0.0.1:0", "127.0.0.1:0", false, 5).await;
    let creds = Credentials::new("secret").expect("password");
    running
        .node
        .store
        .create_account("alice", &creds)
        .await
        .expect("account");
    let cert = dir.path().join("data/tls/cert.pem");
    let outbox = dir.path().join("outbox.sqlite");
    let mut config = collector_config(&running.c2s.expect("c2s").to_string(), &cert, &outbox);
    config.wait = Wait::Accepted;
    let summary = within(run(&config, reports(8))).await.expect("run");
    assert_eq!(summary.sent, 8);
    assert_eq!(summary.accepted, 5);
    assert_eq!(summary.failed, 3, "refused with resource-constraint");
    assert_eq!(summary.remaining, 3);
    let ob = Outbox::open(&outbox).await.expect("outbox");
    assert_eq!(ob.counts().await.expect("counts").queued, 3, "kept queued");
    ob.close().await;

    // Once a processor drained the queue, the next run sends the rest.
    let mut processor = Processor::connect(running.component.expect("component")).await;
    let mut seen = HashSet::new();
    while seen.len() < 5 {
        let el = processor.next().await;
        if el.name() == "message" {
            seen.insert(report_id(&el));
        }
    }
    within(async {
        loop {
            let depth: u64 = running
                .node
                .store
                .queue_depths()
                .await
                .expect("depths")
                .iter()
                .map(|q| q.depth)
                .sum();
            if depth == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let summary = within(run(&config, Vec::<Report>::new()))
        .await
        .expect("run");
    assert_eq!(
        (summary.sent, summary.accepted, summary.remaining),
        (3, 3, 0)
    );
    running.shutdown().await;
}

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(clap::Subcommand)]
enum Top {
    Report(tributary_collector::ReportArgs),
}

fn cli(args: &[&str]) -> tributary_collector::ReportArgs {
    use clap::Parser;
    let Top::Report(r) = Cli::try_parse_from(args).expect("arguments parse").command;
    r
}

#[tokio::test]
async fn the_command_line_entry_point_sends_reports_and_presence() {
    let node = Node::start(true).await;
    let mut processor = Processor::connect(node.component()).await;
    let server = node.c2s().to_string();
    let cert = node.cert();
    let outbox = node.outbox("cli.sqlite");
    let common = [
        "--jid",
        "alice@localhost",
        "--password",
        "secret",
        "--server",
        &server,
        "--ca",
        cert.to_str().expect("utf-8 path"),
    ];
    let mut args = vec!["tributary", "report"];
    args.extend(common);
    args.extend([
        "--outbox",
        outbox.to_str().expect("utf-8 path"),
        "--kind",
        "meter.reading",
        "--data",
        r#"{"meter":"A-17","kwh":1234.5}"#,
        "--data",
        r#"{"meter":"A-18","kwh":2.0}"#,
    ]);
    let summary = within(tributary_collector::main_with(cli(&args)))
        .await
        .expect("report runs");
    assert_eq!(
        (summary.sent, summary.processed, summary.remaining),
        (2, 2, 0)
    );

    let mut args = vec!["tributary", "report", "presence"];
    args.extend(common);
    args.extend(["--show", "dnd", "--status", "busy"]);
    within(tributary_collector::main_with(cli(&args)))
        .await
        .expect("presence runs");

    let mut kinds = Vec::new();
    let mut show = None;
    while show.is_none() {
        let el = processor.next().await;
        match el.name() {
            "message" => kinds.push(
                el.get_child("report", REPORT_NS)
                    .and_then(|r| r.attr("kind"))
                    .map(str::to_owned),
            ),
            "presence" if el.attr("type").is_none() => {
                show = el.children().find(|c| c.name() == "show").map(|c| c.text())
            }
            _ => {}
        }
    }
    assert_eq!(kinds, vec![Some("meter.reading".to_owned()); 2]);
    assert_eq!(show.as_deref(), Some("dnd"));
}

#[tokio::test]
async fn progress_is_published_while_reports_go_through() {
    let node = Node::start(false).await;
    let _processor = Processor::connect(node.component()).await;
    let config = node.collector("outbox.sqlite");
    let (watch, mut changes) = tokio::sync::watch::channel(Summary::default());
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while changes.changed().await.is_ok() {
            seen.push(*changes.borrow_and_update());
        }
        seen
    });
    let summary = within(tributary_collector::run_watched(
        &config,
        reports(300),
        watch,
    ))
    .await
    .expect("run");
    assert_eq!(summary.processed, 300);
    let seen = seen.await.expect("watcher");
    assert!(
        seen.len() >= 2,
        "progress published more than once: {seen:?}"
    );
    // Counts only grow, and what is left shrinks to nothing.
    for pair in seen.windows(2) {
        assert!(pair[1].processed >= pair[0].processed, "{pair:?}");
        assert!(pair[1].accepted >= pair[0].accepted, "{pair:?}");
    }
    assert_eq!(seen[0].processed + seen[0].remaining, 300, "{:?}", seen[0]);
    let last = seen.last().expect("last");
    assert_eq!((last.processed, last.remaining), (300, 0), "{last:?}");
}
