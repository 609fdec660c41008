//! The data collection pipeline end to end: collectors send reports, the
//! node queues them durably, the reference processor commits them to SQL
//! and confirms; processors and the node are killed with SIGKILL on the
//! way and nothing accepted is lost.

mod common;

use common::raw::Raw;
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary_processor::sql::SqlProcessor;
use tributary_processor::{LinkConfig, LinkStats};
use tributary_server::config::ComponentConfig;

const SM: &str = "urn:xmpp:sm:3";

fn report(n: u32) -> String {
    format!(
        "<message xmlns='jabber:client' to='collect.localhost' id='R-{n}'>\
         <report xmlns='urn:tributary:report:0' id='R-{n}' kind='meter.reading'>\
         <json xmlns='urn:xmpp:json:0'>{{\"n\":{n}}}</json></report>\
         <request xmlns='urn:xmpp:receipts'/></message>"
    )
}

/// Collects receipts until every id in `0..n` has one; returns how many
/// receipts each id got.
async fn receipts(raw: &mut Raw, n: u32, h: &mut u32, limit: Duration) -> HashMap<String, u32> {
    let mut got: HashMap<String, u32> = HashMap::new();
    tokio::time::timeout(limit, async {
        while (got.len() as u32) < n {
            let e = raw.stanza_answering_acks(h).await.expect("stanza");
            if let Some(id) = e
                .get_child("received", "urn:xmpp:receipts")
                .and_then(|r| r.attr("id"))
            {
                *got.entry(id.to_owned()).or_default() += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} receipts", got.len()));
    got
}

async fn http_get(addr: &str, path: &str) -> serde_json::Value {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.expect("response");
    let body = raw.split("\r\n\r\n").nth(1).expect("body");
    serde_json::from_str(body).expect("JSON body")
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

#[tokio::test]
async fn reports_are_committed_confirmed_and_visible_in_the_api() {
    let server = TestServer::start_with(|c| {
        c.components = vec![ComponentConfig {
            domain: "collect.localhost".into(),
            secret: "s".into(),
            observe_presence: true,
            quota: 100_000,
            window: 64,
        }]
    })
    .await;
    server.add_user("alice", "a").await;
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("reports.db").display());
    let db = SqlProcessor::connect(&url).await.expect("db");
    let stats = Arc::new(LinkStats::default());
    let api = free_addr();
    let (addr, api_db, api_stats) = (api.clone(), db.clone(), stats.clone());
    tokio::spawn(async move {
        let _ = tributary_processor::http::serve(&addr, api_db, api_stats).await;
    });
    tokio::spawn(tributary_processor::run(
        LinkConfig {
            server: server.component(),
            domain: "collect.localhost".into(),
            secret: "s".into(),
            max_backoff: Duration::from_millis(500),
        },
        db.clone(),
        stats.clone(),
    ));

    let mut alice = Raw::login(&server, "alice", "a").await;
    alice
        .send("<presence xmlns='jabber:client'><status>in the field</status></presence>")
        .await;
    for n in 0..20 {
        alice.send(&report(n)).await;
    }
    let mut h = 0;
    let got = receipts(&mut alice, 20, &mut h, Duration::from_secs(20)).await;
    assert!(got.values().all(|&c| c == 1), "one receipt each: {got:?}");
    assert_eq!(db.report_count().await.expect("count"), 20);

    // The synchronous form: the iq result comes after the commit.
    alice
        .send("<iq xmlns='jabber:client' type='set' id='sync-1' to='collect.localhost'>\
               <report xmlns='urn:tributary:report:0' id='R-sync' kind='form'><json xmlns='urn:xmpp:json:0'>{}</json></report></iq>")
        .await;
    let result = loop {
        let e = alice
            .stanza_answering_acks(&mut h)
            .await
            .expect("iq result");
        if e.attr("id") == Some("sync-1") {
            break e;
        }
    };
    assert_eq!(
        result.attr("type"),
        Some("result"),
        "{}",
        String::from(&result)
    );
    assert_eq!(db.report_count().await.expect("count"), 21);

    let stats = http_get(&api, "/api/stats").await;
    assert_eq!(stats["reports"], 21);
    assert_eq!(stats["connected"], true);
    let rows = http_get(
        &api,
        "/api/reports?sender=alice@localhost&kind=meter.reading&limit=5",
    )
    .await;
    assert_eq!(rows.as_array().map(|a| a.len()), Some(5));
    let online = http_get(&api, "/api/online").await;
    assert_eq!(online[0]["jid"], "alice@localhost");
    assert_eq!(online[0]["status"], "in the field");
}

struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("process starts");
        Proc { child }
    }

    /// SIGKILL.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path) -> (PathBuf, String, String) {
    let (c2s, tls, comp) = (free_addr(), free_addr(), free_addr());
    let path = dir.join("tributary.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n[listen]\nc2s = \"{c2s}\"\nc2s_tls = \"{tls}\"\ncomponent = \"{comp}\"\n\
             [[component]]\ndomain = \"collect.localhost\"\nsecret = \"s\"\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    (path, c2s, comp)
}

/// `tributary process` serving collect.localhost through `comp` into `db_url`.
fn processor_args(comp: &str, db_url: &str) -> Vec<String> {
    [
        "process",
        "--server",
        comp,
        "--domain",
        "collect.localhost",
        "--secret",
        "s",
        "--db",
        db_url,
    ]
    .map(String::from)
    .to_vec()
}

async fn wait_listening(addr: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("listening");
}

#[tokio::test]
async fn processor_and_node_killed_mid_stream_lose_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let (config, c2s, comp) = write_config(dir.path());
    let config = config.to_string_lossy().into_owned();
    let add = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "user",
            "add",
            "alice@localhost",
            "--password",
            "a",
            "--config",
            &config,
        ])
        .output()
        .expect("user add");
    assert!(add.status.success());
    let mut node = Proc::spawn(&["serve", "--config", &config]);
    wait_listening(&c2s).await;
    let db_url = format!("sqlite://{}", dir.path().join("reports.db").display());
    let processor_args = processor_args(&comp, &db_url);
    let processor_args: Vec<&str> = processor_args.iter().map(String::as_str).collect();
    let mut processor = Proc::spawn(&processor_args);
    let tls = tls_config(&dir.path().join("data/tls/cert.pem"));

    const N: u32 = 600;
    let mut alice = Raw::authenticate_with(&tls, &c2s, "alice", "a").await;
    alice.bind("phone").await;
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert!(alice.element().await.expect("enabled").is("enabled", SM));
    let mut h = 0;
    // Send in rounds; the processor dies twice and the node once.
    for round in 0..3u32 {
        for n in round * 200..(round + 1) * 200 {
            alice.send(&report(n)).await;
        }
        // Everything sent so far is accepted (the node's h covers it).
        alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
        loop {
            let e = alice.stanza_answering_acks(&mut h).await.expect("ack");
            if e.is("a", SM) && e.attr("h") == Some(((round + 1) * 200).to_string().as_str()) {
                break;
            }
        }
        match round {
            0 | 1 => {
                processor.kill();
                processor = Proc::spawn(&processor_args);
            }
            _ => {}
        }
    }
    // The node itself goes down hard, then comes back.
    node.kill();
    drop(alice);
    node = Proc::spawn(&["serve", "--config", &config]);
    wait_listening(&c2s).await;

    let db = SqlProcessor::connect(&db_url).await.expect("db");
    tokio::time::timeout(Duration::from_secs(60), async {
        while db.report_count().await.expect("count") < i64::from(N) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every accepted report processed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.report_count().await.expect("count"),
        i64::from(N),
        "each exactly once"
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["queue", "list", "--config", &config])
        .output()
        .expect("queue list");
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(
        out.contains("collect.localhost\tdepth 0"),
        "queue drained: {out}"
    );
    drop(processor);
    drop(node);
}

/// The scenario: 10 collectors send 20,000 reports while the
/// processor is SIGKILLed and restarted three times and the node once.
#[tokio::test]
async fn ten_collectors_twenty_thousand_reports_through_kills() {
    const COLLECTORS: u32 = 10;
    const EACH: u32 = 2000;
    let dir = tempfile::tempdir().expect("dir");
    let (config, c2s, comp) = write_config(dir.path());
    let config = config.to_string_lossy().into_owned();
    {
        let store = tributary_store::SqliteStore::open(&dir.path().join("data/tributary.sqlite"))
            .await
            .expect("store");
        for n in 0..COLLECTORS {
            let creds = tributary_proto::scram::Credentials::new("pw").expect("creds");
            tributary_store::Store::create_account(&store, &format!("c{n}"), &creds)
                .await
                .expect("account");
        }
    }
    let mut node = Proc::spawn(&["serve", "--config", &config]);
    wait_listening(&c2s).await;
    let db_url = format!("sqlite://{}", dir.path().join("reports.db").display());
    let processor_args = processor_args(&comp, &db_url);
    let processor_args: Vec<&str> = processor_args.iter().map(String::as_str).collect();
    let mut processor = Proc::spawn(&processor_args);
    let cert = dir.path().join("data/tls/cert.pem");

    let mut collectors = Vec::new();
    for n in 0..COLLECTORS {
        let mut cc = tributary_collector::CollectorConfig::new(format!("c{n}@localhost"), "pw");
        cc.server = c2s.clone();
        cc.outbox = dir.path().join(format!("outbox-{n}.sqlite"));
        cc.tls_ca = Some(cert.clone());
        cc.retry_for = Duration::from_secs(120);
        cc.wait_timeout = Duration::from_secs(60);
        let reports: Vec<serde_json::Value> = (0..EACH)
            .map(|i| serde_json::json!({"c": n, "i": i}))
            .collect();
        collectors.push(tokio::spawn(async move {
            tributary_collector::run(&cc, reports).await
        }));
    }
    // Kill the processor three times while reports flow, then the node.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        processor.kill();
        processor = Proc::spawn(&processor_args);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    node.kill();
    node = Proc::spawn(&["serve", "--config", &config]);
    wait_listening(&c2s).await;

    for (n, c) in collectors.into_iter().enumerate() {
        let summary = tokio::time::timeout(Duration::from_secs(240), c)
            .await
            .expect("collector finished in time")
            .expect("collector task")
            .unwrap_or_else(|e| panic!("collector {n}: {e}"));
        assert_eq!(
            summary.processed,
            u64::from(EACH),
            "collector {n}: {summary:?}"
        );
        assert_eq!(summary.remaining, 0, "collector {n}: {summary:?}");
    }
    let db = SqlProcessor::connect(&db_url).await.expect("db");
    assert_eq!(
        db.report_count().await.expect("count"),
        i64::from(COLLECTORS * EACH)
    );
    drop(processor);
    drop(node);
}
