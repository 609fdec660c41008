//! The `tributary` binary driven as a user drives it: real processes,
//! real files in a fresh temporary directory, and only what a user sees
//! (exit status, standard output, standard error, files, the network).
//! Every wait is bounded so that a hang fails the test instead of
//! blocking the run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tributary_proto::scram::Credentials;
use tributary_store::{SqliteStore, Store};

/// Upper bound for a one-shot CLI command (a loaded 2-core machine can
/// be slow, but never this slow).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for the server to start accepting connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for the server to answer a stream header.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for the server to exit after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a finished command left behind.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Kills the child if the test fails before the child exited, so a
/// failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The binary under test, run in `dir` with a predictable environment.
fn tributary(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tributary"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE");
    cmd
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `args` to completion (bounded by `COMMAND_TIMEOUT`), feeding it
/// `stdin`, and returns what it printed.
fn run(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = KillOnDrop(
        tributary(dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tributary binary starts"),
    );
    let mut input = child.0.stdin.take().expect("stdin piped");
    let stdout = read_all(child.0.stdout.take().expect("stdout piped"));
    let stderr = read_all(child.0.stderr.take().expect("stderr piped"));
    if let Some(bytes) = stdin {
        // The command may exit without reading; that is not our failure.
        let _ = input.write_all(bytes);
    }
    drop(input);
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.0.try_wait().expect("wait for tributary") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.0.kill();
                let _ = child.0.wait();
                panic!(
                    "`tributary {}` did not finish within {COMMAND_TIMEOUT:?}; stderr:\n{}",
                    args.join(" "),
                    stderr.join().unwrap_or_default()
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} should succeed:\n{out:?}");
    assert!(
        !out.stderr.contains("panicked"),
        "{what} should not panic:\n{out:?}"
    );
}

/// A failed command: non-zero exit, and stderr is exactly one line that
/// starts with `error:`, mentions every one of `needles`, and is no panic.
fn assert_one_line_error(out: &Output, what: &str, needles: &[&str]) {
    assert!(!out.status.success(), "{what} should fail:\n{out:?}");
    assert!(
        out.status.code().is_some(),
        "{what} should exit, not die from a signal:\n{out:?}"
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{what} should not panic:\n{out:?}"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what} should print exactly one line on stderr:\n{out:?}"
    );
    assert!(
        lines[0].starts_with("error:"),
        "{what}: the error line should start with `error:`:\n{out:?}"
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{what}: the error should name {needle:?}:\n{out:?}"
        );
    }
}

fn toml_string(path: &Path) -> String {
    let s = path.to_str().expect("temp paths are UTF-8");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn write_file(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write test file");
    path.to_owned()
}

/// A config for `domain = "localhost"` whose data lives in `dir/data`.
fn write_config(dir: &Path, listen: Option<(SocketAddr, SocketAddr)>) -> (PathBuf, PathBuf) {
    let data_dir = dir.join("data");
    let mut text = format!(
        "domain = \"localhost\"\ndata_dir = {}\n",
        toml_string(&data_dir)
    );
    if let Some((c2s, c2s_tls)) = listen {
        text.push_str(&format!(
            "\n[listen]\nc2s = \"{c2s}\"\nc2s_tls = \"{c2s_tls}\"\n"
        ));
    }
    let config = write_file(&dir.join("tributary.toml"), &text);
    (config, data_dir)
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

// 1. The example configuration is a valid configuration.

#[test]
fn config_example_passes_config_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let example = run(dir.path(), &["config", "example"], None);
    assert_success(&example, "`config example`");
    assert!(
        !example.stdout.trim().is_empty(),
        "`config example` prints a configuration"
    );
    let file = write_file(&dir.path().join("example.toml"), &example.stdout);
    let check = run(
        dir.path(),
        &["config", "check", "--config", path_arg(&file)],
        None,
    );
    assert_success(&check, "`config check` on the example");
}

// 2. An unknown key is a one-line error naming the key.

#[test]
fn config_unknown_key_is_named_in_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(&dir.path().join("bad.toml"), "[limits]\nmax_stanzas = 3\n");
    let out = run(
        dir.path(),
        &["config", "check", "--config", path_arg(&file)],
        None,
    );
    assert_one_line_error(&out, "an unknown key", &["max_stanzas"]);
}

// 3. Bad values, wrong types and a missing file.

#[test]
fn config_bad_address_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(
        &dir.path().join("bad.toml"),
        "[listen]\nc2s = \"nowhere\"\n",
    );
    let out = run(
        dir.path(),
        &["config", "check", "--config", path_arg(&file)],
        None,
    );
    assert_one_line_error(&out, "a bad listen address", &["listen.c2s"]);
}

#[test]
fn config_wrong_type_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(
        &dir.path().join("bad.toml"),
        "[limits]\nmax_stanza_bytes = \"big\"\n",
    );
    let out = run(
        dir.path(),
        &["config", "check", "--config", path_arg(&file)],
        None,
    );
    assert_one_line_error(&out, "a wrongly typed value", &["max_stanza_bytes"]);
}

#[test]
fn config_missing_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-config.toml");
    let out = run(
        dir.path(),
        &["config", "check", "--config", path_arg(&missing)],
        None,
    );
    assert_one_line_error(&out, "a missing config file", &[path_arg(&missing)]);
}

// 4. Account management.

#[test]
fn user_management_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let (config, _data_dir) = write_config(d, None);
    let config = path_arg(&config);

    let out = run(
        d,
        &[
            "user",
            "add",
            "alice@localhost",
            "--password",
            "p1",
            "--config",
            config,
        ],
        None,
    );
    assert_success(&out, "adding alice");

    let out = run(
        d,
        &[
            "user",
            "add",
            "alice@localhost",
            "--password",
            "p1",
            "--config",
            config,
        ],
        None,
    );
    assert_one_line_error(&out, "adding alice twice", &["alice@localhost", "exists"]);

    let out = run(
        d,
        &[
            "user",
            "add",
            "bob@localhost",
            "--password-stdin",
            "--config",
            config,
        ],
        Some(b"p2\n"),
    );
    assert_success(&out, "adding bob with --password-stdin");

    let out = run(d, &["user", "list", "--config", config], None);
    assert_success(&out, "listing users");
    assert_eq!(out.stdout, "alice@localhost\nbob@localhost\n", "{out:?}");

    let out = run(
        d,
        &[
            "user",
            "passwd",
            "alice@localhost",
            "--password",
            "p3",
            "--config",
            config,
        ],
        None,
    );
    assert_success(&out, "changing alice's password");

    let out = run(
        d,
        &["user", "remove", "bob@localhost", "--config", config],
        None,
    );
    assert_success(&out, "removing bob");

    let out = run(
        d,
        &["user", "remove", "bob@localhost", "--config", config],
        None,
    );
    assert_one_line_error(&out, "removing bob twice", &["bob@localhost"]);

    let out = run(d, &["user", "list", "--config", config], None);
    assert_success(&out, "listing users after the removal");
    assert_eq!(out.stdout, "alice@localhost\n", "{out:?}");

    let out = run(
        d,
        &[
            "user",
            "add",
            "carol@example.org",
            "--password",
            "x",
            "--config",
            config,
        ],
        None,
    );
    assert_one_line_error(&out, "adding a user on another domain", &["example.org"]);

    let out = run(
        d,
        &[
            "user",
            "add",
            "nodomain",
            "--password",
            "x",
            "--config",
            config,
        ],
        None,
    );
    assert_one_line_error(&out, "adding a JID without a user part", &["nodomain"]);

    // Neither failed add created anything.
    let out = run(d, &["user", "list", "--config", config], None);
    assert_success(&out, "listing users at the end");
    assert_eq!(out.stdout, "alice@localhost\n", "{out:?}");
}

// 5. `user passwd` really replaces the stored credentials.

#[tokio::test]
async fn user_passwd_changes_the_stored_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let (config, data_dir) = write_config(d, None);
    let config = path_arg(&config);

    let out = run(
        d,
        &[
            "user",
            "add",
            "alice@localhost",
            "--password",
            "p1",
            "--config",
            config,
        ],
        None,
    );
    assert_success(&out, "adding alice");
    let out = run(
        d,
        &[
            "user",
            "passwd",
            "alice@localhost",
            "--password",
            "p3",
            "--config",
            config,
        ],
        None,
    );
    assert_success(&out, "changing alice's password");

    let store = tokio::time::timeout(
        COMMAND_TIMEOUT,
        SqliteStore::open(&data_dir.join("tributary.sqlite")),
    )
    .await
    .expect("the store opens in time")
    .expect("the store opens");
    let creds: Credentials = tokio::time::timeout(COMMAND_TIMEOUT, store.credentials("alice"))
        .await
        .expect("credentials read in time")
        .expect("credentials read")
        .expect("alice has credentials");
    assert!(
        creds.verify_prepped_password(b"p3"),
        "the new password is accepted"
    );
    assert!(
        !creds.verify_prepped_password(b"p1"),
        "the old password is rejected"
    );
}

// 6. Serving: a real node on free ports, stopped by SIGTERM.

/// Two distinct loopback ports that were free a moment ago.
fn free_ports() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    (
        a.local_addr().expect("local addr"),
        b.local_addr().expect("local addr"),
    )
}

/// Reads stderr line by line in the background.
fn stderr_lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    rx
}

fn collected(rx: &mpsc::Receiver<String>, into: &mut Vec<String>) -> String {
    into.extend(rx.try_iter());
    into.join("\n")
}

#[test]
fn serve_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let (c2s, c2s_tls) = free_ports();
    let (config, data_dir) = write_config(d, Some((c2s, c2s_tls)));

    let mut child = KillOnDrop(
        tributary(d)
            .args([
                "serve",
                "--log-format",
                "json",
                "--config",
                path_arg(&config),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tributary binary starts"),
    );
    let rx = stderr_lines(child.0.stderr.take().expect("stderr piped"));
    let mut log = Vec::new();

    // Wait until the STARTTLS port accepts a connection.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut stream = loop {
        if let Some(status) = child.0.try_wait().expect("wait for tributary") {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "`tributary serve` exited early with {status}; stderr:\n{}",
                collected(&rx, &mut log)
            );
        }
        match TcpStream::connect_timeout(&c2s, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!(
                "c2s port {c2s} not accepting after {STARTUP_TIMEOUT:?}: {e}; stderr:\n{}",
                collected(&rx, &mut log)
            ),
        }
    };

    // An XMPP stream header is answered with features offering STARTTLS.
    stream
        .write_all(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
        )
        .expect("send the stream header");
    let answer_deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("<starttls") {
        let left = answer_deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no <starttls in the answer within {ANSWER_TIMEOUT:?}; got {:?}",
            String::from_utf8_lossy(&answer)
        );
        stream
            .set_read_timeout(Some(left))
            .expect("set read timeout");
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "the server closed the stream before offering STARTTLS; got {:?}",
                String::from_utf8_lossy(&answer)
            ),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "reading the answer failed ({e}); got {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    drop(stream);

    // The self-signed certificate was generated under data_dir.
    let cert = data_dir.join("tls").join("cert.pem");
    let pem = std::fs::read_to_string(&cert)
        .unwrap_or_else(|e| panic!("{} should exist: {e}", cert.display()));
    assert!(
        pem.contains("-----BEGIN CERTIFICATE-----"),
        "{} holds a PEM certificate",
        cert.display()
    );

    // SIGTERM stops the server with status 0.
    let pid = child.0.id().to_string();
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(&pid)
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed: {kill}");
    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    let status = loop {
        match child.0.try_wait().expect("wait for tributary") {
            Some(status) => break status,
            None if Instant::now() >= deadline => panic!(
                "`tributary serve` still running {SHUTDOWN_TIMEOUT:?} after SIGTERM; stderr:\n{}",
                collected(&rx, &mut log)
            ),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };

    // The process has exited, so the reader thread reaches end of file soon.
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => break,
        }
    }
    let all = log.join("\n");
    assert_eq!(
        status.code(),
        Some(0),
        "`tributary serve` should exit with status 0 after SIGTERM, got {status}; stderr:\n{all}"
    );
    assert!(!all.contains("panicked"), "the server panicked:\n{all}");

    // --log-format json: every log line is a JSON object.
    let lines: Vec<&str> = log
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let first = lines
        .first()
        .unwrap_or_else(|| panic!("the server logged nothing on stderr"));
    assert!(
        first.starts_with('{') && first.contains("\"level\""),
        "the first log line should be a JSON object with a level: {first}"
    );
    for line in &lines {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "every log line should be a JSON object, got: {line}\nstderr:\n{all}"
        );
    }
}
