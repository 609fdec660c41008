//! The data collection pipeline end to end: collectors send reports, the
//! node queues them durably, the reference processor commits them to SQL
//! and confirms; processors and the node are killed with SIGKILL on the
//! way and nothing accepted is lost.

mod common;

use common::procs::*;
use common::raw::Raw;
use common::*;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
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
    // Bound here, on a port the system picks: a port chosen first and
    // bound later can be taken meanwhile (seen once in CI: the API's bind
    // failed and its requests were refused).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the API");
    let api = listener.local_addr().expect("API address").to_string();
    let (api_db, api_stats) = (db.clone(), stats.clone());
    tokio::spawn(async move {
        tributary_processor::http::serve_on(listener, api_db, api_stats)
            .await
            .expect("HTTP API");
    });
    tokio::spawn(tributary_processor::run(
        LinkConfig {
            server: server.component(),
            domain: "collect.localhost".into(),
            secret: "s".into(),
            max_backoff: Duration::from_millis(500),
            commit_delay: tributary_processor::DEFAULT_COMMIT_DELAY,
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

#[tokio::test]
async fn processor_and_node_killed_mid_stream_lose_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let mut node = Node::configure(dir.path(), false);
    let add = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "user",
            "add",
            "alice@localhost",
            "--password",
            "a",
            "--config",
            &node.config,
        ])
        .output()
        .expect("user add");
    assert!(add.status.success());
    node.start().await;
    let db_url = format!("sqlite://{}", dir.path().join("reports.db").display());
    let processor_args = processor_args(&node.comp, &db_url, None);
    let mut processor = Proc::spawn(&processor_args);
    let tls = tls_config(&dir.path().join("data/tls/cert.pem"));

    const N: u32 = 600;
    let mut alice = Raw::authenticate_with(&tls, &node.c2s, "alice", "a").await;
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
    node.start().await;

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
    // The node deletes an item once the processor's ack for it arrives,
    // just after the processor's commit.
    let mut out = String::new();
    for _ in 0..100 {
        let listed = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["queue", "list", "--config", &node.config])
            .output()
            .expect("queue list");
        out = String::from_utf8_lossy(&listed.stdout).into_owned();
        if out.contains("collect.localhost\tdepth 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let mut node = Node::start_with_collectors(dir.path(), false, COLLECTORS).await;
    let db_url = format!("sqlite://{}", dir.path().join("reports.db").display());
    let processor_args = processor_args(&node.comp, &db_url, None);
    let mut processor = Proc::spawn(&processor_args);

    let collectors = (0..COLLECTORS)
        .map(|n| spawn_collector(collector_config(dir.path(), &node.c2s, n), n, EACH))
        .collect();
    // Kill the processor three times while reports flow, then the node.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        processor.kill();
        processor = Proc::spawn(&processor_args);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    node.kill();
    node.start().await;

    all_processed_once(collectors, EACH).await;
    let db = SqlProcessor::connect(&db_url).await.expect("db");
    assert_eq!(
        db.report_count().await.expect("count"),
        i64::from(COLLECTORS * EACH)
    );
    drop(processor);
    drop(node);
}

/// Depth of the node's queue for collect.localhost, read by the CLI.
fn cli_queue_depth(config: &str) -> u64 {
    let listed = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["queue", "list", "--config", config])
        .output()
        .expect("queue list");
    let out = String::from_utf8_lossy(&listed.stdout);
    out.lines()
        .find_map(|l| l.strip_prefix("collect.localhost\tdepth "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// `tributary report` (the binary) sends while no processor exists for
/// 30 s: everything is accepted and waits in the node's queue, then a
/// processor connects and the same run ends with every report processed.
#[tokio::test]
async fn reports_sent_while_no_processor_exists_for_thirty_seconds_are_all_delivered() {
    const N: u32 = 1000;
    let dir = tempfile::tempdir().expect("dir");
    let node = Node::start_with_collectors(dir.path(), false, 1).await;
    let input = dir.path().join("reports.jsonl");
    let lines: Vec<String> = (0..N).map(|i| format!("{{\"i\":{i}}}")).collect();
    std::fs::write(&input, lines.join("\n")).expect("input");
    let started = std::time::Instant::now();
    let outbox = dir.path().join("outbox.sqlite");
    let cert = dir.path().join("data/tls/cert.pem");
    let report = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "report",
            "--jid",
            "c0@localhost",
            "--password",
            "pw",
            "--server",
            &node.c2s,
        ])
        .arg("--ca")
        .arg(&cert)
        .arg("--file")
        .arg(&input)
        .arg("--outbox")
        .arg(&outbox)
        .args(["--wait-timeout", "120", "--kind", "meter.reading"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tributary report");
    tokio::time::timeout(Duration::from_secs(60), async {
        while cli_queue_depth(&node.config) < u64::from(N) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("every report accepted and queued");
    if let Some(rest) = Duration::from_secs(30).checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert_eq!(
        cli_queue_depth(&node.config),
        u64::from(N),
        "nothing lost meanwhile"
    );

    let db_url = format!("sqlite://{}", dir.path().join("reports.db").display());
    let processor_args = processor_args(&node.comp, &db_url, None);
    let _processor = Proc::spawn(&processor_args);
    let out = tokio::task::spawn_blocking(move || report.wait_with_output())
        .await
        .expect("join")
        .expect("report output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tributary report failed: {stdout}");
    assert!(
        stdout.contains(&format!("processed {N}")) && !stdout.contains("duplicate"),
        "{stdout}"
    );
    let db = SqlProcessor::connect(&db_url).await.expect("db");
    assert_eq!(db.report_count().await.expect("count"), i64::from(N));
}

/// Two processor processes serve one domain; one is SIGKILLed mid-stream
/// and the other takes over what it had not acknowledged.
#[tokio::test]
async fn two_processors_share_the_load_and_killing_one_loses_nothing() {
    const COLLECTORS: u32 = 4;
    const EACH: u32 = 1500;
    let dir = tempfile::tempdir().expect("dir");
    let node = Node::start_with_collectors(dir.path(), false, COLLECTORS).await;
    let db_url = format!("sqlite://{}", dir.path().join("reports.db").display());
    let (api1, api2) = (free_addr(), free_addr());
    let spawn_processor = |api: &str| Proc::spawn(&processor_args(&node.comp, &db_url, Some(api)));
    let first = spawn_processor(&api1);
    let _second = spawn_processor(&api2);
    wait_listening(&api1).await;
    wait_listening(&api2).await;

    let collectors = (0..COLLECTORS)
        .map(|n| spawn_collector(collector_config(dir.path(), &node.c2s, n), n, EACH))
        .collect();
    // Both take a share before the first one dies.
    let processed = |v: serde_json::Value| v["processed"].as_u64().unwrap_or(0);
    tokio::time::timeout(Duration::from_secs(60), async {
        while processed(http_get(&api1, "/api/stats").await) < 500
            || processed(http_get(&api2, "/api/stats").await) < 500
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both processors take reports");
    first.kill();

    all_processed_once(collectors, EACH).await;
    let db = SqlProcessor::connect(&db_url).await.expect("db");
    let total = COLLECTORS * EACH;
    assert_eq!(db.report_count().await.expect("count"), i64::from(total));
    let by_second = processed(http_get(&api2, "/api/stats").await);
    assert!(
        by_second < u64::from(total),
        "the first processor's commits count: {by_second}"
    );
}

/// `tributary bench drain`, as bench/run.sh runs it: 10 clients queue
/// 2,000 reports with no processor anywhere, then the bench starts
/// `tributary process` and times the backlog's delivery. Every report is
/// confirmed once and stored once.
#[tokio::test]
async fn the_drain_bench_delivers_a_backlog_queued_without_a_processor() {
    let dir = tempfile::tempdir().expect("dir");
    let node = Node::start_with_collectors(dir.path(), false, 10).await;
    let db = dir.path().join("reports.db");
    let url = format!("sqlite://{}", db.display());
    let processor = std::iter::once(env!("CARGO_BIN_EXE_tributary").to_owned())
        .chain(processor_args(&node.comp, &url, None))
        .collect::<Vec<_>>()
        .join(" ");
    let json = dir.path().join("drain.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "bench",
            "drain",
            "--server",
            &node.c2s,
            "--user-prefix",
            "c",
            "--password",
            "pw",
            "--insecure",
            "--sm",
            "--to",
            "collect.localhost",
            "--clients",
            "10",
            "--rate",
            "1000",
            "--duration",
            "2",
            "--drain-timeout",
            "60",
            "--processor-cmd",
            &processor,
            "--json",
        ])
        .arg(&json)
        .stdout(Stdio::null())
        .status()
        .expect("bench runs");
    assert!(status.success());
    let line = std::fs::read_to_string(&json).expect("JSON line");
    let r: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!(r["scenario"], "drain");
    assert_eq!(r["accepted_count"], 2000, "{r}");
    assert_eq!(r["count"], 2000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    let (fill, drain) = (
        r["fill_s"].as_f64().expect("fill"),
        r["drain_s"].as_f64().expect("drain"),
    );
    assert!(fill >= 1.9 && drain > 0.0, "{r}");
    let rate = r["achieved_rate"].as_f64().expect("rate");
    // drain_s is rounded to the millisecond in the JSON.
    let exact = 2000.0 / drain;
    assert!((rate - exact).abs() < exact * 0.01, "{r}");
    let rows = SqlProcessor::connect(&url)
        .await
        .expect("db")
        .report_count()
        .await
        .expect("count");
    assert_eq!(rows, 2000);
}
