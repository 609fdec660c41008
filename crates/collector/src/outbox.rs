//! The local durable outbox: one SQLite file holding every report that has
//! not yet reached the state the collector waits for.
//!
//! `state` is `queued` (not yet acknowledged by the server), `accepted`
//! (stored durably by the server, waiting for the processor's receipt) or
//! `failed` (refused with a permanent error; kept, never sent again). A
//! report is deleted once processed, or once accepted when that is all the
//! caller waits for. Inserts commit with `synchronous=FULL` before the
//! report is sent, so a crash right after sending loses nothing.

use crate::report::Stored;
use crate::Error;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    at TEXT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    created_at INTEGER NOT NULL,
    error TEXT
)";

/// How many reports the outbox holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub queued: u64,
    pub accepted: u64,
    pub failed: u64,
}

impl OutboxCounts {
    pub fn total(&self) -> u64 {
        self.queued + self.accepted + self.failed
    }
}

/// Handle to an outbox file.
#[derive(Clone)]
pub struct Outbox {
    pool: SqlitePool,
    path: PathBuf,
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `path`.
    pub async fn open(path: &Path) -> Result<Outbox, Error> {
        let err = |source| Error::Outbox {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(err)?;
        sqlx::query(SCHEMA).execute(&pool).await.map_err(err)?;
        Ok(Outbox {
            pool,
            path: path.to_owned(),
        })
    }

    fn err(&self, source: sqlx::Error) -> Error {
        Error::Outbox {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds reports in one transaction. A report whose id is already in the
    /// outbox is left as it is (the same report handed in again).
    pub(crate) async fn insert(&self, reports: &[Stored]) -> Result<u64, Error> {
        if reports.is_empty() {
            return Ok(0);
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let mut added = 0;
        for r in reports {
            added += sqlx::query(
                "INSERT OR IGNORE INTO outbox (id, kind, at, payload, state, created_at)
                 VALUES (?, ?, ?, ?, 'queued', ?)",
            )
            .bind(&r.id)
            .bind(&r.kind)
            .bind(&r.at)
            .bind(&r.payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?
            .rows_affected();
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(added)
    }

    /// Reports in the given states, oldest first.
    /// Reports waiting to be sent (`accepted` false), or accepted and
    /// waiting for their receipt (`accepted` true), oldest first.
    pub(crate) async fn load(&self, accepted: bool) -> Result<Vec<Stored>, Error> {
        let sql = if accepted {
            "SELECT id, kind, at, payload FROM outbox WHERE state = 'accepted' ORDER BY rowid"
        } else {
            "SELECT id, kind, at, payload FROM outbox WHERE state = 'queued' ORDER BY rowid"
        };
        let rows = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| {
                Ok(Stored {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    at: row.try_get("at")?,
                    payload: row.try_get("payload")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.err(e))
    }

    /// Ids of reports accepted and waiting for processing.
    pub(crate) async fn accepted_ids(&self) -> Result<Vec<String>, Error> {
        sqlx::query_scalar("SELECT id FROM outbox WHERE state = 'accepted' ORDER BY rowid")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// Marks queued reports accepted; returns the ids that changed.
    pub(crate) async fn mark_accepted(&self, ids: &[String]) -> Result<Vec<String>, Error> {
        self.transition(
            ids,
            "UPDATE outbox SET state = 'accepted' WHERE id = ? AND state = 'queued'",
        )
        .await
    }

    /// Deletes reports (processed, or accepted when that is enough) that
    /// are not marked failed; returns the ids that were there.
    pub(crate) async fn remove(&self, ids: &[String]) -> Result<Vec<String>, Error> {
        self.transition(
            ids,
            "DELETE FROM outbox WHERE id = ? AND state IN ('queued', 'accepted')",
        )
        .await
    }

    /// Deletes every accepted report (when a run waits only for acceptance).
    pub(crate) async fn remove_accepted(&self) -> Result<u64, Error> {
        sqlx::query("DELETE FROM outbox WHERE state = 'accepted'")
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| self.err(e))
    }

    /// Marks a report refused for good, keeping it for inspection.
    pub(crate) async fn mark_failed(&self, id: &str, error: &str) -> Result<bool, Error> {
        sqlx::query(
            "UPDATE outbox SET state = 'failed', error = ? WHERE id = ? AND state != 'failed'",
        )
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() > 0)
        .map_err(|e| self.err(e))
    }

    /// Whether the outbox holds a report with this id (in any state).
    pub(crate) async fn contains(&self, id: &str) -> Result<bool, Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    async fn transition(&self, ids: &[String], sql: &str) -> Result<Vec<String>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let mut changed = Vec::new();
        for id in ids {
            let n = sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?
                .rows_affected();
            if n > 0 {
                changed.push(id.clone());
            }
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(changed)
    }

    /// How many reports wait, by state.
    pub async fn counts(&self) -> Result<OutboxCounts, Error> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let mut c = OutboxCounts::default();
        for row in rows {
            let state: String = row.try_get("state").map_err(|e| self.err(e))?;
            let n: i64 = row.try_get("n").map_err(|e| self.err(e))?;
            let n = u64::try_from(n).unwrap_or(0);
            match state.as_str() {
                "queued" => c.queued = n,
                "accepted" => c.accepted = n,
                _ => c.failed += n,
            }
        }
        Ok(c)
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str) -> Stored {
        Stored {
            id: id.into(),
            kind: "k".into(),
            at: None,
            payload: "{}".into(),
        }
    }

    #[tokio::test]
    async fn lifecycle() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/outbox.sqlite");
        let ob = Outbox::open(&path).await.expect("open");
        assert_eq!(
            ob.insert(&[r("a"), r("b"), r("c")]).await.expect("insert"),
            3
        );
        assert_eq!(
            ob.insert(&[r("a")]).await.expect("insert"),
            0,
            "same id ignored"
        );
        let ids = |v: Vec<Stored>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(ob.load(false).await.expect("load")), ["a", "b", "c"]);
        assert_eq!(
            ob.mark_accepted(&["a".into(), "b".into(), "a".into()])
                .await
                .expect("accept"),
            ["a", "b"]
        );
        assert_eq!(ids(ob.load(false).await.expect("load")), ["c"]);
        assert_eq!(ids(ob.load(true).await.expect("load")), ["a", "b"]);
        assert_eq!(ob.accepted_ids().await.expect("ids"), ["a", "b"]);
        assert!(ob.mark_failed("c", "bad").await.expect("failed"));
        assert_eq!(
            ob.remove(&["a".into(), "c".into()]).await.expect("rm"),
            ["a"]
        );
        assert_eq!(
            ob.counts().await.expect("counts"),
            OutboxCounts {
                queued: 0,
                accepted: 1,
                failed: 1
            }
        );
        assert_eq!(ob.remove_accepted().await.expect("rm"), 1);
        assert!(ob.contains("c").await.expect("contains"));
        ob.close().await;
        // Reopening finds what was left.
        let ob = Outbox::open(&path).await.expect("reopen");
        assert_eq!(ob.counts().await.expect("counts").failed, 1);
    }
}
