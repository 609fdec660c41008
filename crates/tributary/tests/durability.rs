//! "Accepted" means durable: reports a client saw acknowledged survive a
//! SIGKILL of the server and reach a processor after the restart. Real
//! processes, the built binary, no graceful stop.

mod common;

use common::raw::Raw;
use common::tls_config;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SM: &str = "urn:xmpp:sm:3";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Node {
    config: PathBuf,
    data: PathBuf,
    c2s: String,
    component: String,
    child: Option<Child>,
}

impl Node {
    fn new(dir: &Path) -> Node {
        let data = dir.join("data");
        let (c2s, tls, component) = (free_port(), free_port(), free_port());
        let config = dir.join("tributary.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[listen]\nc2s = \"127.0.0.1:{c2s}\"\nc2s_tls = \"127.0.0.1:{tls}\"\ncomponent = \"127.0.0.1:{component}\"\n\
                 [[component]]\ndomain = \"collect.localhost\"\nsecret = \"s3cret\"\n",
                data.display()
            ),
        )
        .expect("config written");
        Node {
            config,
            data,
            c2s: format!("127.0.0.1:{c2s}"),
            component: format!("127.0.0.1:{component}"),
            child: None,
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("tributary runs")
    }

    async fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        self.child = Some(child);
        let addr = self.c2s.clone();
        tokio::time::timeout(Duration::from_secs(30), async {
            while tokio::net::TcpStream::connect(&addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("server listens");
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL sent");
            child.wait().expect("reaped");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn acknowledged_reports_survive_sigkill_and_reach_the_processor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Node::new(dir.path());
    assert!(node
        .cli(&["user", "add", "alice@localhost", "--password", "a"])
        .status
        .success());
    node.start().await;
    let tls = tls_config(&node.data.join("tls/cert.pem"));

    let mut alice = Raw::authenticate_with(&tls, &node.c2s, "alice", "a").await;
    alice.bind("phone").await;
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert!(alice.element().await.expect("enabled").is("enabled", SM));
    for n in 0..50 {
        alice
            .send(&format!(
                "<message xmlns='jabber:client' to='collect.localhost' id='R-{n}'><body>{n}</body></message>"
            ))
            .await;
    }
    // The server's h covers a stanza only once it is committed.
    alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let ack = loop {
        let e = alice.element().await.expect("ack");
        if e.is("a", SM) {
            break e;
        }
    };
    assert_eq!(ack.attr("h"), Some("50"));
    node.kill();
    drop(alice);

    let listed = node.cli(&["queue", "list"]);
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(out.contains("collect.localhost\tdepth 50"), "{out}");

    node.start().await;
    let mut processor = Raw::component(&node.component, "collect.localhost", "s3cret")
        .await
        .expect("handshake");
    let mut ids = Vec::new();
    while ids.len() < 50 {
        let e = processor.element().await.expect("report");
        ids.extend(e.attr("id").map(str::to_owned));
    }
    let expected: Vec<String> = (0..50).map(|n| format!("R-{n}")).collect();
    assert_eq!(ids, expected);
}
