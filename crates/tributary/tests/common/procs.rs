//! Real processes for end-to-end tests: the built `tributary` binary as node
//! and processor (SIGKILLed when dropped), its configuration and command
//! lines, collector accounts and collectors, free ports and the processor's
//! HTTP API.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `tributary` process, SIGKILLed when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Proc {
        let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("process starts");
        Proc { child }
    }

    /// SIGKILL.
    pub fn kill(mut self) {
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

/// A port that is free now, below Linux's ephemeral range (32768-60999):
/// the node binds it only later, and a port the kernel hands out (as
/// `bind(0)` does) can meanwhile become the local port of one of the many
/// client connections the tests open.
pub fn free_port() -> u16 {
    loop {
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), 20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A node run as a `tributary serve` process, its configuration in a
/// directory; SIGKILLed when dropped.
pub struct Node {
    /// The configuration file.
    pub config: String,
    /// Client (STARTTLS) listener.
    pub c2s: String,
    /// Component listener.
    pub comp: String,
    proc: Option<Proc>,
}

impl Node {
    /// Writes a configuration into `dir` (data directory `dir/data`) on
    /// free ports, with the component collect.localhost (secret `s`) that
    /// observes presence if `observe_presence`. Does not start the node.
    pub fn configure(dir: &Path, observe_presence: bool) -> Node {
        let (c2s, tls, comp) = (free_addr(), free_addr(), free_addr());
        let path = dir.join("tributary.toml");
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{}\"\n[listen]\nc2s = \"{c2s}\"\nc2s_tls = \"{tls}\"\ncomponent = \"{comp}\"\n\
                 [[component]]\ndomain = \"collect.localhost\"\nsecret = \"s\"\nobserve_presence = {observe_presence}\n",
                dir.join("data").display()
            ),
        )
        .expect("config");
        Node {
            config: path.to_string_lossy().into_owned(),
            c2s,
            comp,
            proc: None,
        }
    }

    /// [`Node::configure`], the accounts of [`create_collectors`], then
    /// [`Node::start`].
    pub async fn start_with_collectors(
        dir: &Path,
        observe_presence: bool,
        collectors: u32,
    ) -> Node {
        let mut node = Node::configure(dir, observe_presence);
        create_collectors(dir, collectors).await;
        node.start().await;
        node
    }

    /// Starts the process and waits until its c2s listener accepts.
    pub async fn start(&mut self) {
        self.proc = Some(Proc::spawn(&["serve", "--config", &self.config]));
        wait_listening(&self.c2s).await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.kill();
        }
    }
}

/// `tributary process` serving collect.localhost through `comp` into
/// `db_url`, with its HTTP API on `http` if given.
pub fn processor_args(comp: &str, db_url: &str, http: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
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
    .to_vec();
    if let Some(http) = http {
        args.extend(["--http".to_owned(), http.to_owned()]);
    }
    args
}

/// Waits up to 30 s until something accepts connections on `addr`.
pub async fn wait_listening(addr: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("listening");
}

/// GET `path` from the processor's HTTP API on `addr`: a 200 answer's JSON
/// body.
pub async fn http_get(addr: &str, path: &str) -> serde_json::Value {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("body");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {raw}");
    serde_json::from_str(body).expect("JSON body")
}

/// Accounts `c0`..`c{n-1}` (password `pw`), created in the store of the
/// node whose data directory is `dir/data`, before the node starts.
pub async fn create_collectors(dir: &Path, n: u32) {
    let store = tributary_store::SqliteStore::open(&dir.join("data/tributary.sqlite"))
        .await
        .expect("store");
    for n in 0..n {
        let creds = tributary_proto::scram::Credentials::new("pw").expect("creds");
        tributary_store::Store::create_account(&store, &format!("c{n}"), &creds)
            .await
            .expect("account");
    }
}

/// Collector `c{n}` (see [`create_collectors`]) of the node configured in
/// `dir`, reached on `c2s`, with its outbox in `dir`.
pub fn collector_config(dir: &Path, c2s: &str, n: u32) -> tributary_collector::CollectorConfig {
    let mut cc = tributary_collector::CollectorConfig::new(format!("c{n}@localhost"), "pw");
    cc.server = c2s.to_owned();
    cc.outbox = dir.join(format!("outbox-{n}.sqlite"));
    cc.tls_ca = Some(dir.join("data/tls/cert.pem"));
    cc.retry_for = Duration::from_secs(120);
    cc.wait_timeout = Duration::from_secs(60);
    cc
}

pub type CollectorTask =
    tokio::task::JoinHandle<Result<tributary_collector::Summary, tributary_collector::Error>>;

/// A collector run with `cc` that sends `each` reports `{"c": n, "i": i}`
/// and waits until they are processed.
pub fn spawn_collector(
    cc: tributary_collector::CollectorConfig,
    n: u32,
    each: u32,
) -> CollectorTask {
    let reports: Vec<serde_json::Value> = (0..each)
        .map(|i| serde_json::json!({"c": n, "i": i}))
        .collect();
    tokio::spawn(async move { tributary_collector::run(&cc, reports).await })
}

/// Every collector got every one of its `each` reports processed, each
/// receipt once, within 240 s.
pub async fn all_processed_once(collectors: Vec<CollectorTask>, each: u32) {
    for (n, c) in collectors.into_iter().enumerate() {
        let summary = tokio::time::timeout(Duration::from_secs(240), c)
            .await
            .expect("collector finished in time")
            .expect("collector task")
            .unwrap_or_else(|e| panic!("collector {n}: {e}"));
        assert_eq!(
            summary.processed,
            u64::from(each),
            "collector {n}: {summary:?}"
        );
        assert_eq!(summary.remaining, 0, "collector {n}: {summary:?}");
        assert_eq!(
            summary.duplicate_receipts, 0,
            "collector {n} got a receipt twice: {summary:?}"
        );
    }
}
