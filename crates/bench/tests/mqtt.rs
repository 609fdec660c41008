//! `tributary bench mqtt` against a real Mosquitto broker of its own: a
//! temporary directory with an rcgen certificate for 127.0.0.1, a password
//! file made by `mosquitto_passwd -b`, a TLS listener on a free loopback
//! port.
//!
//! Needs `mosquitto` and `mosquitto_passwd` (Debian package `mosquitto`;
//! scripts/test.sh installs it). `TRIBUTARY_MOSQUITTO` names another
//! broker binary. Without a broker the test fails: it never skips.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tributary_bench::client::ClientError;
use tributary_bench::stats::LatencySummary;
use tributary_bench::{BenchArgs, BenchError, Scenario};

const PASSWORD: &str = "bench";

fn mosquitto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIBUTARY_MOSQUITTO") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/sbin/mosquitto");
    if debian.is_file() {
        return debian.to_owned();
    }
    PathBuf::from("mosquitto")
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A broker of its own, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    fn start(users: u32) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let tls =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
        std::fs::write(d.join("cert.pem"), tls.cert.pem()).expect("write cert");
        std::fs::write(d.join("key.pem"), tls.signing_key.serialize_pem()).expect("write key");
        let passwd = d.join("passwd");
        for i in 0..users {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let out = cmd
                .arg("-b")
                .arg(&passwd)
                .arg(format!("bench{i}"))
                .arg(PASSWORD)
                .output()
                .expect(
                    "run mosquitto_passwd (Debian package `mosquitto`; scripts/test.sh installs it)",
                );
            assert!(
                out.status.success(),
                "mosquitto_passwd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = free_port();
        let log = d.join("mosquitto.log");
        // `user root`: run as root, Mosquitto would otherwise drop to the
        // `mosquitto` user, which cannot read this directory. Without root
        // the option is ignored.
        let conf = format!(
            "user root\n\
             persistence false\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             allow_anonymous false\n\
             password_file {passwd}\n\
             listener {port} 127.0.0.1\n\
             certfile {cert}\n\
             keyfile {key}\n",
            log = log.display(),
            passwd = passwd.display(),
            cert = d.join("cert.pem").display(),
            key = d.join("key.pem").display(),
        );
        std::fs::write(d.join("mosquitto.conf"), conf).expect("write config");
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(d.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (Debian package `mosquitto`; scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mosquitto did not listen on {port} ({exited:?}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port, dir }
    }

    fn args(&self, clients: u32, rate: f64, secs: f64) -> BenchArgs {
        let mut a = BenchArgs::new(Scenario::Mqtt, format!("127.0.0.1:{}", self.port));
        a.clients = clients;
        a.rate = rate;
        a.duration = secs;
        a.warmup = 0.5;
        a.ca = Some(self.dir.path().join("cert.pem"));
        a.server_pid = Some(self.child.id());
        a.label = Some("mosquitto-test".into());
        a
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_sane(what: &str, l: &LatencySummary) {
    assert!(l.count > 0, "{what}: no latency recorded");
    assert!(l.p50_ms > 0.0, "{what}: {l:?}");
    assert!(
        l.p50_ms <= l.p99_ms && l.p99_ms <= l.p999_ms && l.p999_ms <= l.max_ms,
        "{what}: percentiles out of order: {l:?}"
    );
    assert!(l.max_ms < 5000.0, "{what}: slower than the grace: {l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publishes_are_acknowledged_and_delivered() {
    let broker = Broker::start(4);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = broker.args(4, 200.0, 3.0);
    args.json = Some(dir.path().join("mqtt.jsonl"));
    let r = tributary_bench::main_with(args).await.expect("run");

    assert_eq!(r.scenario, "mqtt");
    assert_eq!(r.main.scheduled, 600, "200/s for 3 s measured");
    assert!(r.main.count > 0);
    assert_eq!(r.main.lost(), 0, "{}", r.table());
    assert_eq!(r.main.failed, 0, "{}", r.table());
    assert_eq!(r.connection_errors, 0, "{}", r.table());
    assert_sane("delivered", &r.main.latency);
    let acc = r.accepted.expect("PUBACK outcome");
    assert_eq!(acc.count, acc.scheduled, "{}", r.table());
    assert_sane("PUBACK", &acc.latency);
    assert!(
        r.resources.server_cpu_s.is_some(),
        "the broker's CPU is sampled"
    );
    let table = r.table();
    assert!(table.contains("mqtt:accepted"), "{table}");

    let text = std::fs::read_to_string(dir.path().join("mqtt.jsonl")).expect("JSON line");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("valid JSON");
    assert_eq!(v["scenario"], "mqtt");
    assert_eq!(v["lost"], 0);
    assert!(v["accepted_p99_ms"].as_f64().is_some(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_login_failure() {
    let broker = Broker::start(2);
    let mut args = broker.args(2, 10.0, 1.0);
    args.password = "not-the-password".into();
    match tributary_bench::run(&args).await {
        Err(BenchError::Login {
            source: ClientError::Auth(_),
            ..
        }) => {}
        other => panic!("expected an authentication failure, got {other:?}"),
    }
}
