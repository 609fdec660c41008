//! The reference processor: reports and presence into SQL (SQLite by
//! default, PostgreSQL in production), idempotently: a report that comes
//! again after a reconnect or a crash is a no-op.

use crate::report::{Item, Outcome};
use crate::Processor;
use anyhow::Context;
use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Row};
use std::sync::Arc;
use tokio::sync::Mutex;

/// The schema of the contract; the same SQL runs on both engines.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS reports (sender TEXT NOT NULL, id TEXT NOT NULL, kind TEXT, at TEXT, \
     payload TEXT, received_at TEXT, PRIMARY KEY (sender, id))",
    "CREATE TABLE IF NOT EXISTS presence (jid TEXT PRIMARY KEY, resource TEXT, available INTEGER, \
     show TEXT, status TEXT, updated_at TEXT)",
];

/// Any fixed number, the same in every process: the advisory lock that
/// serialises schema creation on PostgreSQL.
const SCHEMA_LOCK: i64 = 0x7472_6962_7574;

/// Creates the tables if missing. On PostgreSQL, `CREATE TABLE IF NOT
/// EXISTS` is not safe against a concurrent creator (the loser fails on a
/// catalog unique index), so processes starting together on a fresh
/// database (a restarted processor and an API reader, say) take an
/// advisory lock and create in one transaction.
async fn create_schema(pool: &AnyPool, postgres: bool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    if postgres {
        // `pg_advisory_xact_lock` returns `void`, which the Any driver cannot
        // decode; selecting a constant from it returns an integer instead.
        sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await?;
    }
    for stmt in SCHEMA {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Clone)]
pub struct SqlProcessor {
    pool: AnyPool,
    /// The connection batches commit on, kept rather than taken from the
    /// pool for each batch: on SQLite each of the pool's connections has a
    /// page cache of its own, which a commit on another one makes stale
    /// (the next batch on it read the pages it needed from the file
    /// again), and giving a connection back is done by a spawned task.
    /// Shared by clones (the HTTP API's only read, through the pool);
    /// closed after an error, so that the next batch starts on a fresh one.
    writer: Arc<Mutex<Option<PoolConnection<Any>>>>,
    /// Which placeholders multi-row statements use (see [`value_rows`]).
    placeholders: Placeholders,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Placeholders {
    /// `$1, $2, ..`: PostgreSQL's only form.
    Numbered,
    /// `?, ?, ..`: SQLite maps a numbered parameter to its argument by
    /// looking its name up in a list, once per parameter, which makes a
    /// 3,000-parameter INSERT quadratic (a third of the processor's time
    /// in a drain); anonymous ones bind by position.
    Anonymous,
}

impl SqlProcessor {
    /// Opens `sqlite://path` (created if missing) or `postgres://...`.
    pub async fn connect(url: &str) -> anyhow::Result<SqlProcessor> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Per connection: commits must be on disk before
                        // reports are acknowledged (FULL), and the index
                        // of (sender, id), written at random places, is
                        // read from memory rather than from the file
                        // again for every batch (64 MiB of page cache;
                        // SQLite's default is 2 MiB). An INSERT inside a
                        // transaction (a batch with presence changes, or of
                        // more than one statement) keeps a statement
                        // journal, which past 64 KiB spills to a temporary
                        // file: in memory it costs no writes (5.5 % of the
                        // processor's time in a drain of such batches).
                        // Checkpoints every 3,000 WAL pages (~12 MiB)
                        // rather than SQLite's 1,000: a leaf of that index
                        // is rewritten by many commits, and a checkpoint
                        // copies it to the file once however often it was.
                        // Each checkpoint holds up the commit that makes
                        // it, and those holds are the p99 of a heavy load,
                        // so not more: on a database of 1.3 million
                        // reports, at 10,000/s p99 processed was 39-41 ms
                        // against 46-56 at 10,000 pages (and 35-39 at
                        // 1,000), for 7 % more CPU and 2.9 GB written
                        // against 1.9 (4.3 at 1,000); at 5,000/s 23-24
                        // against 20 ms. Made on a connection of their own
                        // they never catch up with a steady load and the
                        // log grows without bound (bench/README.md).
                        for pragma in [
                            "PRAGMA journal_mode=WAL",
                            "PRAGMA synchronous=FULL",
                            "PRAGMA cache_size=-65536",
                            "PRAGMA temp_store=MEMORY",
                            "PRAGMA wal_autocheckpoint=3000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("cannot open the database {url}"))?;
        create_schema(&pool, url.starts_with("postgres"))
            .await
            .context("cannot create the schema")?;
        let placeholders = if sqlite {
            Placeholders::Anonymous
        } else {
            Placeholders::Numbered
        };
        Ok(SqlProcessor {
            pool,
            writer: Arc::default(),
            placeholders,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Reports, newest first, optionally filtered.
    pub async fn reports(
        &self,
        sender: Option<&str>,
        kind: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<ReportRow>> {
        let rows = sqlx::query(
            "SELECT sender, id, kind, at, payload, received_at FROM reports \
             WHERE ($1 IS NULL OR sender = $1) AND ($2 IS NULL OR kind = $2) \
             ORDER BY received_at DESC, id DESC LIMIT $3",
        )
        .bind(sender)
        .bind(kind)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReportRow {
                    sender: r.try_get(0)?,
                    id: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    at: r.try_get(3)?,
                    payload: r.try_get(4)?,
                    received_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Users whose last presence was available.
    pub async fn online(&self) -> anyhow::Result<Vec<PresenceRow>> {
        let rows = sqlx::query(
            "SELECT jid, resource, show, status, updated_at FROM presence WHERE available = 1 ORDER BY jid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PresenceRow {
                    jid: r.try_get(0)?,
                    resource: r.try_get(1)?,
                    show: r.try_get(2)?,
                    status: r.try_get(3)?,
                    updated_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn report_count(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM reports")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReportRow {
    pub sender: String,
    pub id: String,
    pub kind: Option<String>,
    pub at: Option<String>,
    pub payload: Option<String>,
    pub received_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PresenceRow {
    pub jid: String,
    pub resource: Option<String>,
    pub show: Option<String>,
    pub status: Option<String>,
    pub updated_at: Option<String>,
}

/// Rows per multi-row INSERT: 6 parameters each stays below SQLite's
/// 32,766 and PostgreSQL's 65,535 bound parameters. The link's batches
/// are at most this long, so a batch of reports is one statement.
pub(crate) const REPORT_ROWS_PER_STATEMENT: usize = 1_000;

/// `($1, $2, ..), ($n+1, ..), ..` (or the same with `?`) for `rows` rows
/// of `columns` parameters.
fn value_rows(rows: usize, columns: usize, placeholders: Placeholders) -> String {
    (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=columns)
                .map(|c| match placeholders {
                    Placeholders::Numbered => format!("${}", r * columns + c),
                    Placeholders::Anonymous => "?".to_owned(),
                })
                .collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Processor for SqlProcessor {
    async fn process(&mut self, batch: &[Item]) -> anyhow::Result<Vec<Outcome>> {
        let mut writer = self.writer.lock().await;
        let conn = match &mut *writer {
            Some(c) => c,
            None => writer.insert(self.pool.acquire().await?),
        };
        let result = commit(conn, self.placeholders, batch).await;
        if result.is_err() {
            if let Some(mut conn) = writer.take() {
                conn.close_on_drop();
            }
        }
        result
    }
}

/// Commits one batch on `conn`: in one transaction, or, for a batch of
/// reports that fits one statement, as that statement alone.
async fn commit(
    conn: &mut AnyConnection,
    placeholders: Placeholders,
    batch: &[Item],
) -> anyhow::Result<Vec<Outcome>> {
    let received_at = now();
    let reports: Vec<&crate::report::Report> = batch
        .iter()
        .filter_map(|item| match item {
            Item::Report(r) => Some(r),
            _ => None,
        })
        .collect();
    let presence = batch.iter().any(|item| matches!(item, Item::Presence(_)));
    if !presence && reports.len() <= REPORT_ROWS_PER_STATEMENT {
        // One statement is atomic and, with synchronous=FULL, on disk when
        // it returns: BEGIN and COMMIT would add two round trips to the
        // database (to sqlx's worker thread, for SQLite) per batch.
        insert_reports(&mut *conn, placeholders, &reports, &received_at).await?;
        return Ok(vec![Outcome::Done; batch.len()]);
    }
    let mut tx = conn.begin().await?;
    for chunk in reports.chunks(REPORT_ROWS_PER_STATEMENT) {
        insert_reports(&mut tx, placeholders, chunk, &received_at).await?;
    }
    // Presence row by row, in order: later changes of one JID win.
    for item in batch {
        if let Item::Presence(p) = item {
            sqlx::query(
                "INSERT INTO presence (jid, resource, available, show, status, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (jid) DO UPDATE SET \
                 resource = excluded.resource, available = excluded.available, show = excluded.show, \
                 status = excluded.status, updated_at = excluded.updated_at",
            )
            .bind(&p.jid)
            .bind(&p.resource)
            .bind(i32::from(p.available))
            .bind(&p.show)
            .bind(&p.status)
            .bind(&received_at)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(vec![Outcome::Done; batch.len()])
}

/// Inserts `reports` (at most [`REPORT_ROWS_PER_STATEMENT`]) in one
/// multi-row statement; copies of stored ones are no-ops.
async fn insert_reports(
    conn: &mut AnyConnection,
    placeholders: Placeholders,
    reports: &[&crate::report::Report],
    received_at: &str,
) -> anyhow::Result<()> {
    if reports.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO reports (sender, id, kind, at, payload, received_at) VALUES {} \
         ON CONFLICT (sender, id) DO NOTHING",
        value_rows(reports.len(), 6, placeholders)
    );
    let mut q = sqlx::query(&sql);
    for r in reports {
        q = q
            .bind(&r.sender)
            .bind(&r.id)
            .bind(&r.kind)
            .bind(&r.at)
            .bind(&r.payload)
            .bind(received_at);
    }
    q.execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{value_rows, Placeholders, SqlProcessor};
    use crate::report::{Item, Outcome, Report};
    use crate::Processor;

    fn report(id: &str) -> Item {
        report_with(id, "{}")
    }

    fn report_with(id: &str, payload: &str) -> Item {
        Item::Report(Report {
            sender: "alice@localhost".into(),
            sender_full: "alice@localhost/phone".into(),
            id: id.into(),
            kind: "meter.reading".into(),
            at: None,
            payload: payload.into(),
            wants_receipt: true,
            iq_id: None,
        })
    }

    #[tokio::test]
    async fn a_failed_batch_commits_nothing_and_the_next_one_works() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("reports.db").display());
        let mut db = SqlProcessor::connect(&url).await.expect("database");
        sqlx::query(
            "CREATE TRIGGER boom BEFORE INSERT ON reports WHEN NEW.id = 'R-2' \
             BEGIN SELECT RAISE(ABORT, 'boom'); END",
        )
        .execute(db.pool())
        .await
        .expect("trigger");
        let failed = db.process(&[report("R-1"), report("R-2")]).await;
        assert!(failed.is_err(), "{failed:?}");
        // The batch's statement failed as a whole, and the connection it
        // ran on holds no lock: another one writes at once.
        assert_eq!(db.report_count().await.expect("count"), 0);
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            sqlx::query("DROP TRIGGER boom").execute(db.pool()),
        )
        .await
        .expect("the write lock is free")
        .expect("drop trigger");
        let done = db
            .process(&[report("R-1"), report("R-2")])
            .await
            .expect("the next batch commits");
        assert_eq!(done, [Outcome::Done, Outcome::Done]);
        assert_eq!(db.report_count().await.expect("count"), 2);
    }

    #[tokio::test]
    async fn batches_of_every_shape_commit_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("reports.db").display());
        let mut db = SqlProcessor::connect(&url).await.expect("database");
        // One statement's worth, then more than one statement takes, with
        // a presence change among them (one transaction for all).
        let small: Vec<Item> = (0..3).map(|n| report(&format!("R-{n}"))).collect();
        let mut large: Vec<Item> = (0..1_200).map(|n| report(&format!("R-{n}"))).collect();
        large.push(Item::Presence(crate::report::PresenceUpdate {
            jid: "alice@localhost".into(),
            resource: "phone".into(),
            available: true,
            show: None,
            status: None,
        }));
        for batch in [&small, &large, &small, &large] {
            let done = db.process(batch).await.expect("committed");
            assert_eq!(done.len(), batch.len());
            assert!(done.iter().all(|o| *o == Outcome::Done), "{done:?}");
        }
        // Copies were no-ops.
        assert_eq!(db.report_count().await.expect("count"), 1_200);
        let online = db.online().await.expect("online");
        assert_eq!(online.len(), 1);
        assert_eq!(online[0].jid, "alice@localhost");
        // The large batches' statement journals stayed in memory (2):
        // with SQLite's default they spill to a temporary file.
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(db.pool())
            .await
            .expect("temp_store");
        assert_eq!(temp_store, 2);
    }

    #[tokio::test]
    async fn the_log_is_checkpointed_only_past_ten_thousand_pages() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("reports.db");
        let mut db = SqlProcessor::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("database");
        // ~8 MiB of reports: past SQLite's default checkpoint at 1,000
        // pages (which would then restart the log from its beginning, so
        // it stays near 4 MiB), short of 10,000.
        let payload = "x".repeat(2_000);
        for b in 0..4 {
            let batch: Vec<Item> = (0..1_000)
                .map(|n| report_with(&format!("R-{b}-{n}"), &payload))
                .collect();
            db.process(&batch).await.expect("committed");
        }
        let wal = std::fs::metadata(dir.path().join("reports.db-wal")).expect("the log");
        assert!(wal.len() > 1_500 * 4_096, "log of {} bytes", wal.len());
    }

    #[test]
    fn numbered_rows_count_on_across_rows() {
        assert_eq!(
            value_rows(2, 3, Placeholders::Numbered),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(
            value_rows(2, 3, Placeholders::Anonymous),
            "(?, ?, ?), (?, ?, ?)"
        );
    }
}
