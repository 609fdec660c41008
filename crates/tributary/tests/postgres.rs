//! The report pipeline with PostgreSQL as the processor's database, with
//! real processes: a PostgreSQL server of its own in a temporary directory,
//! the built `tributary` binary as node and processor, collectors sending
//! reports while the processor and the node are SIGKILLed and restarted.
//!
//! Needs the PostgreSQL server binaries (`/usr/lib/postgresql/*/bin`, or
//! the directory in `TRIBUTARY_PG_BIN`); `scripts/test.sh` installs them on
//! Debian. Without them the test fails: it never skips.

mod common;

use common::procs::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tributary_processor::sql::SqlProcessor;

/// A PostgreSQL server of its own: a cluster in a temporary directory,
/// listening on a free loopback port (and a socket in that directory),
/// trusting every local connection. Stopped when dropped.
struct Postgres {
    child: Child,
    bin: PathBuf,
    port: u16,
    log: PathBuf,
    /// Kept until the server is stopped.
    _dir: tempfile::TempDir,
}

/// The uid and gid of the `postgres` system user when this process runs as
/// root (PostgreSQL refuses to run as root); `None` otherwise.
fn postgres_user() -> Option<(u32, u32)> {
    if id(&["-u"]) != 0 {
        return None;
    }
    let lookup = |flag: &str| {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run `id`");
        assert!(
            out.status.success(),
            "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` \
             system user to run it as (the Debian package `postgresql` creates it; \
             scripts/test.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        parse_id(&out)
    };
    Some((lookup("-u"), lookup("-g")))
}

fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("run `id`");
    assert!(out.status.success(), "id {args:?} failed");
    parse_id(&out)
}

fn parse_id(out: &Output) -> u32 {
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

/// The directory holding `initdb`, `postgres`, `pg_isready` and `psql`:
/// `TRIBUTARY_PG_BIN` if set, else the newest `/usr/lib/postgresql/*/bin`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIBUTARY_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").is_file() && dir.join("postgres").is_file(),
            "TRIBUTARY_PG_BIN={} holds no initdb and postgres",
            dir.display()
        );
        return dir;
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let bin = e.path().join("bin");
            let ready = ["initdb", "postgres", "pg_isready", "psql"]
                .iter()
                .all(|b| bin.join(b).is_file());
            let version = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse().unwrap_or(0))
                .collect();
            ready.then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb (with postgres, \
             pg_isready and psql). This test needs it and does not skip: install it with \
             `apt-get install postgresql` (./scripts/test.sh does so on Debian), or point \
             TRIBUTARY_PG_BIN at the directory holding initdb and postgres."
        ),
    }
}

/// A command of the PostgreSQL installation, run as the `postgres` user
/// when we are root. Setting the uid directly (rather than going through
/// `runuser`) makes the child the server itself, so that `Drop` signals
/// the postmaster and not a wrapper that would outlive it.
fn pg_command(bin: &Path, name: &str, user: Option<(u32, u32)>, dir: &Path) -> Command {
    let mut cmd = Command::new(bin.join(name));
    cmd.current_dir(dir).env("LC_ALL", "C").env_remove("PGDATA");
    if let Some((uid, gid)) = user {
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", dir)
            .env("USER", "postgres");
    }
    cmd
}

impl Postgres {
    async fn start() -> Postgres {
        let bin = pg_bin();
        let user = postgres_user();
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("give the temporary directory to the postgres user");
        }
        let data = dir.path().join("data");
        let init = pg_command(&bin, "initdb", user, dir.path())
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed:\n{}\n{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let log = dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = pg_command(&bin, "postgres", user, dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
            .arg("-k")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start postgres");
        let mut pg = Postgres {
            child,
            bin,
            port,
            log,
            _dir: dir,
        };
        pg.wait_ready().await;
        pg
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited with {status}:\n{}", self.log_text());
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .expect("run pg_isready");
            if ready.success() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "postgres not ready after 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// One value from `psql`: a check that goes around `SqlProcessor`.
    fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the processor committed at least `n` reports.
async fn wait_count(db: &SqlProcessor, n: i64, total: i64) -> i64 {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let count = db.report_count().await.expect("count");
            if count >= n {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} of {total} reports committed in 120 s"))
}

/// The 20,000-report scenario of pipeline.rs, smaller, into PostgreSQL:
/// 4 collectors send 1,000 reports each while the processor is SIGKILLed
/// and restarted twice and the node once; every report ends up in
/// `reports` exactly once and every collector hears it was processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_collectors_into_postgres_through_kills() {
    const COLLECTORS: u32 = 4;
    const EACH: u32 = 1000;
    const TOTAL: i64 = (COLLECTORS * EACH) as i64;
    let started = Instant::now();
    let pg = Postgres::start().await;
    eprintln!(
        "postgres ready on port {} after {:?}",
        pg.port,
        started.elapsed()
    );
    let db_url = pg.url();

    let dir = tempfile::tempdir().expect("dir");
    let mut node = Node::start_with_collectors(dir.path(), true, COLLECTORS).await;
    let mut processor = Proc::spawn(&processor_args(&node.comp, &db_url, None));

    // The processor process creates the schema on PostgreSQL by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.query(
        "SELECT to_regclass('public.reports') IS NOT NULL AND to_regclass('public.presence') IS NOT NULL",
    ) != "t"
    {
        assert!(
            Instant::now() < deadline,
            "the processor created no schema in 30 s:\n{}",
            pg.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = SqlProcessor::connect(&db_url).await.expect("db");

    let collector_config = |n: u32| {
        let mut cc = collector_config(dir.path(), &node.c2s, n);
        cc.kind = "meter.reading".into();
        cc
    };
    // A presence, for the processor's presence table.
    tributary_collector::send_presence(&collector_config(0), None, Some("in the field"), None)
        .await
        .expect("presence");

    let collectors: Vec<CollectorTask> = (0..COLLECTORS)
        .map(|n| spawn_collector(collector_config(n), n, EACH))
        .collect();
    let flowing = Instant::now();
    // While reports flow: the processor dies twice, then the node once.
    // The last processor also serves the HTTP API.
    let api = free_addr();
    let mut at_kill = Vec::new();
    for (i, fifth) in [1, 2].into_iter().enumerate() {
        let count = wait_count(&db, TOTAL * fifth / 5, TOTAL).await;
        processor.kill();
        at_kill.push(("processor", count));
        let http = (i == 1).then_some(api.as_str());
        processor = Proc::spawn(&processor_args(&node.comp, &db_url, http));
    }
    let count = wait_count(&db, TOTAL * 3 / 5, TOTAL).await;
    node.kill();
    at_kill.push(("node", count));
    node.start().await;
    eprintln!("SIGKILLed at these report counts: {at_kill:?}");
    assert!(
        at_kill.iter().all(|&(_, c)| c < TOTAL),
        "every kill must come while reports still flow: {at_kill:?}"
    );

    all_processed_once(collectors, EACH).await;
    eprintln!(
        "{TOTAL} reports processed {:?} after the collectors started",
        flowing.elapsed()
    );

    // Exactly once, seen through SqlProcessor and through psql.
    assert_eq!(db.report_count().await.expect("count"), TOTAL);
    assert_eq!(pg.query("SELECT count(*) FROM reports"), TOTAL.to_string());
    for n in 0..COLLECTORS {
        assert_eq!(
            pg.query(&format!(
                "SELECT count(DISTINCT payload) FROM reports WHERE sender = 'c{n}@localhost'"
            )),
            EACH.to_string(),
            "collector {n}: every report, each with its own payload"
        );
    }
    assert_eq!(
        pg.query(
            "SELECT count(*) FROM reports WHERE kind <> 'meter.reading' OR received_at IS NULL"
        ),
        "0"
    );
    assert_eq!(
        pg.query("SELECT to_regclass('public.presence') IS NOT NULL"),
        "t",
        "the presence table exists"
    );
    assert_eq!(
        pg.query("SELECT count(*) FROM presence WHERE jid = 'c0@localhost'"),
        "1",
        "c0's presence was recorded"
    );

    // The processor's API reads PostgreSQL too.
    wait_listening(&api).await;
    let stats = http_get(&api, "/api/stats").await;
    assert_eq!(stats["reports"], TOTAL, "{stats}");
    let rows = http_get(
        &api,
        "/api/reports?sender=c1@localhost&kind=meter.reading&limit=5",
    )
    .await;
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter().all(|r| r["sender"] == "c1@localhost"),
        "{rows:?}"
    );
    let rows = http_get(&api, "/api/reports?limit=7").await;
    assert_eq!(rows.as_array().map(Vec::len), Some(7));
    let rows = http_get(&api, "/api/reports?kind=nothing").await;
    assert_eq!(rows.as_array().map(Vec::len), Some(0));
    http_get(&api, "/api/online").await;

    drop(db);
    drop(processor);
    drop(node);
    drop(pg);
    eprintln!("whole test took {:?}", started.elapsed());
}

/// `SqlProcessor` on PostgreSQL directly: processes starting together on a
/// fresh database all get the schema; a report that comes again is a
/// no-op; presence is upserted; the API's reads work with and without
/// filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_processor_on_postgres() {
    use tributary_processor::{Item, Outcome, PresenceUpdate, Processor, Report};
    let pg = Postgres::start().await;
    let connects: Vec<_> = (0..8)
        .map(|_| {
            let url = pg.url();
            tokio::spawn(async move { SqlProcessor::connect(&url).await })
        })
        .collect();
    for c in connects {
        c.await
            .expect("task")
            .expect("concurrent connects on a fresh database");
    }
    let mut db = SqlProcessor::connect(&pg.url()).await.expect("db");
    let report = |id: &str, kind: &str| {
        Item::Report(Report {
            sender: "alice@localhost".into(),
            sender_full: "alice@localhost/phone".into(),
            id: id.into(),
            kind: kind.into(),
            at: Some("2024-05-01T10:00:00Z".into()),
            payload: format!("{{\"id\":\"{id}\"}}"),
            wants_receipt: true,
            iq_id: None,
        })
    };
    let presence = |available: bool| {
        Item::Presence(PresenceUpdate {
            jid: "alice@localhost".into(),
            resource: "phone".into(),
            available,
            show: available.then(|| "away".into()),
            status: available.then(|| "in the field".into()),
        })
    };
    let outcomes = db
        .process(&[
            report("a", "meter.reading"),
            report("b", "form"),
            report("a", "meter.reading"),
            presence(true),
            Item::Other,
        ])
        .await
        .expect("process");
    assert_eq!(outcomes, vec![Outcome::Done; 5]);
    let again = db
        .process(&[report("b", "form")])
        .await
        .expect("process again");
    assert_eq!(again, vec![Outcome::Done]);
    assert_eq!(db.report_count().await.expect("count"), 2);

    let all = db.reports(None, None, 10).await.expect("reports");
    assert_eq!(all.len(), 2);
    let mine = db
        .reports(Some("alice@localhost"), Some("form"), 10)
        .await
        .expect("reports");
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, "b");
    assert_eq!(mine[0].payload.as_deref(), Some("{\"id\":\"b\"}"));
    assert!(mine[0].received_at.is_some());
    assert!(db
        .reports(Some("bob@localhost"), None, 10)
        .await
        .expect("reports")
        .is_empty());
    assert_eq!(db.reports(None, None, 1).await.expect("reports").len(), 1);

    let online = db.online().await.expect("online");
    assert_eq!(online.len(), 1);
    assert_eq!(online[0].jid, "alice@localhost");
    assert_eq!(online[0].status.as_deref(), Some("in the field"));
    db.process(&[presence(false)]).await.expect("offline");
    assert!(db.online().await.expect("online").is_empty());
    assert_eq!(pg.query("SELECT count(*) FROM presence"), "1");
    drop(db);
    drop(pg);
}
