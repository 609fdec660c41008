//! `tributary bench` against a real Tributary node started in-process on
//! free loopback ports: chat and login storms, and reports through the
//! reference processor (SQLite) attached as a component.

use std::sync::Arc;
use std::time::Duration;
use tributary_bench::stats::{LatencySummary, Outcome};
use tributary_bench::{BenchArgs, RunReport, Scenario};
use tributary_processor::sql::SqlProcessor;
use tributary_processor::{LinkConfig, LinkStats};
use tributary_proto::scram::Credentials;
use tributary_server::config::ComponentConfig;
use tributary_server::{Config, Running};

const COMPONENT: &str = "collect.localhost";
const SECRET: &str = "bench-secret";

struct Node {
    running: Running,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(with_component: bool, users: u32) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.listen.c2s = "127.0.0.1:0".into();
        config.listen.c2s_tls = String::new();
        config.listen.component = "127.0.0.1:0".into();
        if with_component {
            config.components = vec![ComponentConfig {
                domain: COMPONENT.into(),
                secret: SECRET.into(),
                observe_presence: false,
                quota: 1_000_000,
                window: 256,
            }];
        }
        let running = tributary_server::serve(config)
            .await
            .expect("server starts");
        let creds = Credentials::new("bench").expect("valid password");
        for i in 0..users {
            running
                .node
                .store
                .create_account(&format!("bench{i}"), &creds)
                .await
                .expect("account created");
        }
        Node { running, dir }
    }

    fn args(&self, scenario: Scenario, clients: u32, rate: f64, secs: f64) -> BenchArgs {
        let mut a = BenchArgs::new(
            scenario,
            self.running.c2s.expect("c2s listener").to_string(),
        );
        a.clients = clients;
        a.rate = rate;
        a.duration = secs;
        a.ca = Some(self.dir.path().join("data/tls/cert.pem"));
        a.label = Some("tributary-test".into());
        a
    }
}

/// Percentiles in order, positive, and well under the 5 s grace.
fn assert_sane(what: &str, l: &LatencySummary) {
    assert!(l.count > 0, "{what}: no latency recorded");
    assert!(l.p50_ms > 0.0, "{what}: {l:?}");
    assert!(
        l.p50_ms <= l.p90_ms
            && l.p90_ms <= l.p99_ms
            && l.p99_ms <= l.p999_ms
            && l.p999_ms <= l.max_ms,
        "{what}: percentiles out of order: {l:?}"
    );
    assert!(l.max_ms < 5_000.0, "{what}: {l:?}");
}

fn assert_complete(what: &str, o: &Outcome) {
    assert!(o.count > 0, "{what}: nothing completed: {o:?}");
    assert_eq!(o.lost(), 0, "{what}: lost some: {o:?}");
    assert_eq!(o.failed, 0, "{what}: failures: {o:?}");
    assert_eq!(o.count, o.scheduled, "{what}: {o:?}");
    assert_eq!(o.latency.count, o.count, "{what}: one latency per event");
    assert_sane(what, &o.latency);
}

fn show(r: &RunReport) {
    eprint!("{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_login_against_tributary() {
    let node = Node::start(false, 10).await;

    let chat = tributary_bench::run(&node.args(Scenario::Chat, 10, 200.0, 2.0))
        .await
        .expect("chat runs");
    show(&chat);
    assert_eq!(chat.scenario, "chat");
    assert_eq!(chat.main.scheduled, 400);
    assert_complete("chat", &chat.main);
    assert_eq!(chat.duplicates, 0);
    assert_eq!(chat.connection_errors, 0);
    assert!(chat.achieved_rate > 150.0, "{chat:?}");
    assert!(chat.resources.generator_cpu_s.is_some());
    let json = chat.to_json();
    assert_eq!(json["scenario"], "chat");
    assert_eq!(json["lost"], 0);

    let login = tributary_bench::run(&node.args(Scenario::Login, 4, 20.0, 2.0))
        .await
        .expect("login runs");
    show(&login);
    assert_eq!(login.main.scheduled, 40);
    assert_complete("login", &login.main);

    node.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_through_the_reference_processor() {
    let node = Node::start(true, 10).await;
    let db = SqlProcessor::connect(&format!(
        "sqlite://{}",
        node.dir.path().join("reports.db").display()
    ))
    .await
    .expect("processor database");
    let processor = tokio::spawn(tributary_processor::run(
        LinkConfig {
            server: node
                .running
                .component
                .expect("component listener")
                .to_string(),
            domain: COMPONENT.into(),
            secret: SECRET.into(),
            max_backoff: Duration::from_millis(500),
            commit_delay: tributary_processor::DEFAULT_COMMIT_DELAY,
        },
        db.clone(),
        Arc::new(LinkStats::default()),
    ));

    let mut args = node.args(Scenario::Report, 10, 200.0, 2.0);
    args.sm = true;
    args.to = COMPONENT.into();
    // Without --sm the run is refused: acceptance is what <a h/> says.
    let mut no_sm = args.clone();
    no_sm.sm = false;
    assert!(tributary_bench::run(&no_sm).await.is_err());

    let report = tributary_bench::run(&args).await.expect("report runs");
    show(&report);
    assert_eq!(report.main.scheduled, 400);
    assert_complete("processed", &report.main);
    let accepted = report.accepted.expect("accepted outcome");
    assert_complete("accepted", &accepted);
    assert!(
        accepted.latency.p50_ms <= report.main.latency.p50_ms,
        "accepted comes before processed: {report:?}"
    );
    assert_eq!(db.report_count().await.expect("count"), 400);

    processor.abort();
    node.running.shutdown().await;
}
