//! [`Store`] on an embedded SQLite database.
//!
//! The database file is shared with other processes (the `tributary user`
//! CLI writes accounts while the server runs), so it is opened in WAL mode,
//! where readers never block the writer, with a busy timeout so that two
//! writers wait for each other instead of failing.
//!
//! Every read-modify-write sequence runs in a `BEGIN IMMEDIATE` transaction:
//! it takes the write lock up front, which makes the sequence atomic across
//! connections and processes. A deferred transaction would only ask for the
//! lock at its first write, and SQLite answers an upgrade that conflicts with
//! another writer with `SQLITE_BUSY` at once, without honouring the busy
//! timeout.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use tributary_proto::scram::ScramKeys;

mod queue;

use crate::{
    Credentials, Enqueued, NewQueueItem, OfflineStored, QueueDepth, QueueItem, QueuedForm, Result,
    RosterItem, Store, StoreError, Subscription,
};

/// id, sender, stanza_id, stanza, enqueued_at, form, answerable.
type QueueRow = (i64, String, Option<String>, String, i64, i64, bool);

/// SQLite serialises writers anyway; a few connections let reads proceed
/// next to a write without holding many file handles open.
const MAX_CONNECTIONS: u32 = 4;

/// Rows sqlx's SQLite worker thread hands over before it waits for them
/// to be taken: more than a queue load (`LOAD` in the server's queue, 512)
/// or a multi-row statement's RETURNING (500). With sqlx's default of 50,
/// on one core, the worker and the runtime thread switched about once per
/// row once the buffer was full (`bench drain`, 100,000 reports: the
/// runtime thread was preempted ~160,000 times during the drain, ~4,000
/// with this).
const ROW_BUFFER: usize = 1024;

/// How long a statement waits for another connection's (or process's)
/// write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded [`Store`]. Cloning is cheap and shares the connection pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The component queues' writer state (see `queue.rs`).
    queue_writer: Arc<tokio::sync::Mutex<queue::QueueWriter>>,
    /// A connection kept for the reads every login makes (credentials,
    /// block list; see [`KeptConnection`]). One at a time: each read takes
    /// tens of microseconds, so this serialises nothing a login storm
    /// notices.
    login_reader: Arc<tokio::sync::Mutex<KeptConnection>>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its parent directory)
    /// if missing, and brings the schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Blocking, but this runs once at startup before any traffic.
            std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk when it returns, even across a power
            // loss. Queued reports are acknowledged to their senders only
            // after their commit, and enqueues are batched so this costs one
            // fsync per batch, not per report.
            .synchronous(SqliteSynchronous::Full)
            // Off by default in SQLite; the schema relies on ON DELETE CASCADE.
            .foreign_keys(true)
            // A multi-row INSERT inside a transaction keeps a statement
            // journal, which past 64 KiB spills to a temporary file on
            // disk: written, never synced, and only read to roll that one
            // statement back. Memory serves it as well without the writes.
            .pragma("temp_store", "memory")
            .busy_timeout(BUSY_TIMEOUT)
            .row_buffer_size(ROW_BUFFER);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // A connection to a local file does not go stale the way a
            // network one does; the ping on every acquire would be one
            // more round trip to the worker thread per transaction.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(SqliteStore {
            pool,
            queue_writer: Default::default(),
            login_reader: Default::default(),
        })
    }

    /// Starts a transaction that already holds the write lock; see the
    /// module documentation for why it must not be deferred.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// Per-user rows reference `accounts`, so writing data for a user without
/// an account fails the foreign key check; report that as `NoAccount`
/// rather than as an opaque database error.
fn no_account_on_fk(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.kind() == ErrorKind::ForeignKeyViolation => {
            StoreError::NoAccount
        }
        _ => StoreError::Database(e),
    }
}

/// A connection taken from the pool and kept across uses rather than given
/// back: sqlx pings every connection given back to its pool (a second round
/// trip to the connection's worker thread per query), from a spawned task
/// the next user may wait for, and each connection has a page cache of its
/// own. Closed after an error, so that the next use starts on a fresh one.
#[derive(Debug, Default)]
struct KeptConnection(Option<PoolConnection<Sqlite>>);

impl KeptConnection {
    async fn get(&mut self, pool: &SqlitePool) -> Result<&mut SqliteConnection> {
        let conn = match self.0.take() {
            Some(c) => c,
            None => pool.acquire().await?,
        };
        Ok(self.0.insert(conn))
    }

    /// Passes `result` on, closing the connection if it is an error.
    fn checked<T, E>(&mut self, result: std::result::Result<T, E>) -> std::result::Result<T, E> {
        if result.is_err() {
            if let Some(mut conn) = self.0.take() {
                conn.close_on_drop();
            }
        }
        result
    }
}

/// Columns of `accounts` after `user`, in the order the queries select them.
type CredentialsRow = (Vec<u8>, i64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

fn credentials_from_row(user: &str, row: CredentialsRow) -> Result<Credentials> {
    let (salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server) = row;
    // SCRAM needs at least one iteration; anything outside 1..=u32::MAX was
    // not written by this code.
    let iterations = u32::try_from(iterations)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| corrupt(format!("account {user}: iteration count {iterations}")))?;
    Ok(Credentials {
        salt,
        iterations,
        sha1: ScramKeys {
            stored_key: sha1_stored,
            server_key: sha1_server,
        },
        sha256: ScramKeys {
            stored_key: sha256_stored,
            server_key: sha256_server,
        },
    })
}

/// Columns of `roster_items` after `user`, in the order the queries select them.
type RosterRow = (String, Option<String>, String, bool, bool, bool, bool);

const ROSTER_COLUMNS: &str = "contact, name, subscription, ask, pending_in, approved, in_roster";

/// Builds an item without its groups, which live in `roster_groups`.
fn roster_item_from_row(user: &str, row: RosterRow) -> Result<RosterItem> {
    let (jid, name, subscription, ask, pending_in, approved, in_roster) = row;
    let subscription = Subscription::parse(&subscription).ok_or_else(|| {
        corrupt(format!(
            "roster of {user}: item {jid} has subscription {subscription:?}"
        ))
    })?;
    Ok(RosterItem {
        jid,
        name,
        groups: Vec::new(),
        subscription,
        ask,
        pending_in,
        approved,
        in_roster,
    })
}

fn roster_version_from(user: &str, version: i64) -> Result<u64> {
    u64::try_from(version).map_err(|_| corrupt(format!("roster of {user}: version {version}")))
}

fn count_from(what: &str, count: i64) -> Result<usize> {
    usize::try_from(count).map_err(|_| corrupt(format!("{what}: count {count}")))
}

/// Increments the user's roster version inside `tx` and returns the new one.
/// A user without a row is at version 0, so the first change yields 1.
async fn bump_roster_version(tx: &mut Transaction<'static, Sqlite>, user: &str) -> Result<u64> {
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO roster_versions (user, version) VALUES (?, 1) \
         ON CONFLICT (user) DO UPDATE SET version = version + 1 \
         RETURNING version",
    )
    .bind(user)
    .fetch_one(&mut **tx)
    .await
    .map_err(no_account_on_fk)?;
    roster_version_from(user, version)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, user: &str, creds: &Credentials) -> Result<()> {
        // The primary key makes the check and the insert one atomic step,
        // also against a concurrent CLI process.
        sqlx::query(
            "INSERT INTO accounts \
             (user, salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(user)
        .bind(&creds.salt)
        .bind(i64::from(creds.iterations))
        .bind(&creds.sha1.stored_key)
        .bind(&creds.sha1.server_key)
        .bind(&creds.sha256.stored_key)
        .bind(&creds.sha256.server_key)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AccountExists,
            _ => StoreError::Database(e),
        })?;
        Ok(())
    }

    async fn set_credentials(&self, user: &str, creds: &Credentials) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE accounts SET salt = ?, iterations = ?, sha1_stored = ?, sha1_server = ?, \
             sha256_stored = ?, sha256_server = ? WHERE user = ?",
        )
        .bind(&creds.salt)
        .bind(i64::from(creds.iterations))
        .bind(&creds.sha1.stored_key)
        .bind(&creds.sha1.server_key)
        .bind(&creds.sha256.stored_key)
        .bind(&creds.sha256.server_key)
        .bind(user)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NoAccount);
        }
        Ok(())
    }

    async fn delete_account(&self, user: &str) -> Result<()> {
        // Every other table cascades from accounts (roster groups through
        // roster items), so this one statement removes all of the user's data,
        // the roster version included.
        let deleted = sqlx::query("DELETE FROM accounts WHERE user = ?")
            .bind(user)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NoAccount);
        }
        Ok(())
    }

    async fn credentials(&self, user: &str) -> Result<Option<Credentials>> {
        let mut reader = self.login_reader.lock().await;
        let row = sqlx::query_as(
            "SELECT salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server \
             FROM accounts WHERE user = ?",
        )
        .bind(user)
        .fetch_optional(reader.get(&self.pool).await?)
        .await;
        let row: Option<CredentialsRow> = reader.checked(row)?;
        row.map(|row| credentials_from_row(user, row)).transpose()
    }

    async fn account_exists(&self, user: &str) -> Result<bool> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE user = ?)")
                .bind(user)
                .fetch_one(&self.pool)
                .await?;
        Ok(exists)
    }

    async fn list_accounts(&self) -> Result<Vec<String>> {
        // SQLite's default BINARY collation orders like Rust's `str`.
        let users = sqlx::query_scalar("SELECT user FROM accounts ORDER BY user")
            .fetch_all(&self.pool)
            .await?;
        Ok(users)
    }

    async fn roster(&self, user: &str) -> Result<(u64, Vec<RosterItem>)> {
        // A (deferred) read transaction gives the three queries one snapshot,
        // so the version always matches the items returned with it.
        let mut tx = self.pool.begin().await?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM roster_versions WHERE user = ?")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        let rows: Vec<RosterRow> = sqlx::query_as(&format!(
            "SELECT {ROSTER_COLUMNS} FROM roster_items WHERE user = ? ORDER BY contact"
        ))
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        let group_rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT contact, name FROM roster_groups WHERE user = ? ORDER BY contact, position",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for (contact, group) in group_rows {
            groups.entry(contact).or_default().push(group);
        }
        let items = rows
            .into_iter()
            .map(|row| {
                let mut item = roster_item_from_row(user, row)?;
                item.groups = groups.remove(&item.jid).unwrap_or_default();
                Ok(item)
            })
            .collect::<Result<Vec<_>>>()?;
        let version = version.map_or(Ok(0), |v| roster_version_from(user, v))?;
        Ok((version, items))
    }

    async fn roster_item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>> {
        // Item and groups from one snapshot, as in `roster`.
        let mut tx = self.pool.begin().await?;
        let row: Option<RosterRow> = sqlx::query_as(&format!(
            "SELECT {ROSTER_COLUMNS} FROM roster_items WHERE user = ? AND contact = ?"
        ))
        .bind(user)
        .bind(contact)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let groups: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM roster_groups WHERE user = ? AND contact = ? ORDER BY position",
        )
        .bind(user)
        .bind(contact)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut item = roster_item_from_row(user, row)?;
        item.groups = groups;
        Ok(Some(item))
    }

    async fn put_roster_item(&self, user: &str, item: &RosterItem) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        // An upsert updates an existing row in place; INSERT OR REPLACE
        // would delete and re-insert it, firing the foreign key actions.
        sqlx::query(
            "INSERT INTO roster_items \
             (user, contact, name, subscription, ask, pending_in, approved, in_roster) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (user, contact) DO UPDATE SET \
             name = excluded.name, subscription = excluded.subscription, ask = excluded.ask, \
             pending_in = excluded.pending_in, approved = excluded.approved, \
             in_roster = excluded.in_roster",
        )
        .bind(user)
        .bind(&item.jid)
        .bind(&item.name)
        .bind(item.subscription.as_str())
        .bind(item.ask)
        .bind(item.pending_in)
        .bind(item.approved)
        .bind(item.in_roster)
        .execute(&mut *tx)
        .await
        .map_err(no_account_on_fk)?;
        sqlx::query("DELETE FROM roster_groups WHERE user = ? AND contact = ?")
            .bind(user)
            .bind(&item.jid)
            .execute(&mut *tx)
            .await?;
        for (position, group) in (0_i64..).zip(&item.groups) {
            sqlx::query(
                "INSERT INTO roster_groups (user, contact, position, name) VALUES (?, ?, ?, ?)",
            )
            .bind(user)
            .bind(&item.jid)
            .bind(position)
            .bind(group)
            .execute(&mut *tx)
            .await?;
        }
        let version = bump_roster_version(&mut tx, user).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn remove_roster_item(&self, user: &str, contact: &str) -> Result<Option<u64>> {
        let mut tx = self.write_tx().await?;
        // The item's groups go with it through the foreign key cascade.
        let deleted = sqlx::query("DELETE FROM roster_items WHERE user = ? AND contact = ?")
            .bind(user)
            .bind(contact)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            // Nothing changed, so the version must not move; dropping the
            // transaction rolls it back.
            return Ok(None);
        }
        let version = bump_roster_version(&mut tx, user).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn store_offline(&self, user: &str, stanza: &str, limit: usize) -> Result<OfflineStored> {
        // Count and insert under the write lock, or two concurrent
        // deliveries could both see room for one more.
        let mut tx = self.write_tx().await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM offline WHERE user = ?")
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
        if count_from("offline messages", count)? >= limit {
            return Ok(OfflineStored::OverLimit);
        }
        sqlx::query("INSERT INTO offline (user, stanza) VALUES (?, ?)")
            .bind(user)
            .bind(stanza)
            .execute(&mut *tx)
            .await
            .map_err(no_account_on_fk)?;
        tx.commit().await?;
        Ok(OfflineStored::Stored)
    }

    async fn take_offline(&self, user: &str) -> Result<Vec<String>> {
        // Under the write lock no message can arrive between the read and
        // the delete, so none is lost or delivered twice.
        let mut tx = self.write_tx().await?;
        let stanzas: Vec<String> =
            sqlx::query_scalar("SELECT stanza FROM offline WHERE user = ? ORDER BY id")
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
        if !stanzas.is_empty() {
            sqlx::query("DELETE FROM offline WHERE user = ?")
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stanzas)
    }

    async fn offline_count(&self, user: &str) -> Result<usize> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM offline WHERE user = ?")
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        count_from("offline messages", count)
    }

    async fn vcard(&self, user: &str) -> Result<Option<String>> {
        let xml = sqlx::query_scalar("SELECT xml FROM vcards WHERE user = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(xml)
    }

    async fn set_vcard(&self, user: &str, xml: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO vcards (user, xml) VALUES (?, ?) \
             ON CONFLICT (user) DO UPDATE SET xml = excluded.xml",
        )
        .bind(user)
        .bind(xml)
        .execute(&self.pool)
        .await
        .map_err(no_account_on_fk)?;
        Ok(())
    }

    async fn private_data(&self, user: &str, namespace: &str) -> Result<Option<String>> {
        let xml =
            sqlx::query_scalar("SELECT xml FROM private_data WHERE user = ? AND namespace = ?")
                .bind(user)
                .bind(namespace)
                .fetch_optional(&self.pool)
                .await?;
        Ok(xml)
    }

    async fn set_private_data(&self, user: &str, namespace: &str, xml: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO private_data (user, namespace, xml) VALUES (?, ?, ?) \
             ON CONFLICT (user, namespace) DO UPDATE SET xml = excluded.xml",
        )
        .bind(user)
        .bind(namespace)
        .bind(xml)
        .execute(&self.pool)
        .await
        .map_err(no_account_on_fk)?;
        Ok(())
    }

    async fn blocklist(&self, user: &str) -> Result<Vec<String>> {
        let mut reader = self.login_reader.lock().await;
        let jids = sqlx::query_scalar("SELECT jid FROM blocklist WHERE user = ? ORDER BY jid")
            .bind(user)
            .fetch_all(reader.get(&self.pool).await?)
            .await;
        Ok(reader.checked(jids)?)
    }

    async fn block(&self, user: &str, jids: &[String]) -> Result<()> {
        // One transaction so that a block request applies entirely or not at all.
        let mut tx = self.write_tx().await?;
        for jid in jids {
            // DO NOTHING covers only the duplicate; a missing account still
            // fails the foreign key check.
            sqlx::query("INSERT INTO blocklist (user, jid) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(user)
                .bind(jid)
                .execute(&mut *tx)
                .await
                .map_err(no_account_on_fk)?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue(&self, items: &[NewQueueItem]) -> Result<Vec<Enqueued>> {
        self.queue_commit(items, &[]).await
    }

    async fn queue_commit(&self, items: &[NewQueueItem], remove: &[i64]) -> Result<Vec<Enqueued>> {
        self.commit_queue(items, remove).await
    }

    async fn queue_items(&self, queue: &str, after: i64, limit: usize) -> Result<Vec<QueueItem>> {
        let rows: Vec<QueueRow> = sqlx::query_as(
            "SELECT id, sender, stanza_id, stanza, enqueued_at, form, answerable FROM queue_items \
             WHERE queue = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(queue)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, sender, stanza_id, stanza, enqueued_at, form, answerable)| QueueItem {
                    id,
                    queue: queue.to_owned(),
                    sender,
                    stanza_id,
                    stanza,
                    form: match form {
                        0 => QueuedForm::Client,
                        _ => QueuedForm::Accept { answerable },
                    },
                    enqueued_at,
                },
            )
            .collect())
    }

    async fn queue_remove(&self, ids: &[i64]) -> Result<()> {
        self.queue_commit(&[], ids).await.map(|_| ())
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT queue, COUNT(*), MIN(enqueued_at) FROM queue_items GROUP BY queue ORDER BY queue",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(queue, depth, oldest_at)| {
                Ok(QueueDepth {
                    queue,
                    depth: count_from("queue items", depth)? as u64,
                    oldest_at,
                })
            })
            .collect()
    }

    async fn unblock(&self, user: &str, jids: &[String]) -> Result<()> {
        if jids.is_empty() {
            sqlx::query("DELETE FROM blocklist WHERE user = ?")
                .bind(user)
                .execute(&self.pool)
                .await?;
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for jid in jids {
            sqlx::query("DELETE FROM blocklist WHERE user = ? AND jid = ?")
                .bind(user)
                .bind(jid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a fresh file; the directory must outlive the store.
    async fn new_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("tributary.db"))
            .await
            .expect("open store");
        (dir, store)
    }

    fn creds(password: &str) -> Credentials {
        Credentials::new(password).expect("valid password")
    }

    async fn with_account(store: &SqliteStore, user: &str) {
        store
            .create_account(user, &creds("secret"))
            .await
            .expect("create account");
    }

    fn item(jid: &str, groups: &[&str]) -> RosterItem {
        let mut item = RosterItem::new(jid);
        item.groups = groups.iter().map(|g| g.to_string()).collect();
        item
    }

    fn jids(list: &[&str]) -> Vec<String> {
        list.iter().map(|j| j.to_string()).collect()
    }

    async fn rows(store: &SqliteStore, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&store.pool)
            .await
            .expect("count rows")
    }

    #[tokio::test]
    async fn open_creates_parent_dirs_and_reopens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a").join("b").join("tributary.db");
        let store = SqliteStore::open(&path).await.expect("open new");
        assert!(path.exists());
        with_account(&store, "alice").await;
        store.pool.close().await;

        // Reopening runs the migrations again, which must be a no-op.
        let store = SqliteStore::open(&path).await.expect("reopen");
        assert!(store.account_exists("alice").await.expect("exists"));
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .expect("journal mode");
        assert_eq!(mode, "wal");
        let fk: bool = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&store.pool)
            .await
            .expect("foreign keys");
        assert!(fk);
        // Statement journals in memory (2), not in temporary files.
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
            .fetch_one(&store.pool)
            .await
            .expect("temp_store");
        assert_eq!(temp_store, 2);
    }

    #[tokio::test]
    async fn create_account_and_duplicate() {
        let (_dir, store) = new_store().await;
        assert!(!store.account_exists("alice").await.expect("exists"));
        with_account(&store, "alice").await;
        assert!(store.account_exists("alice").await.expect("exists"));
        let err = store.create_account("alice", &creds("other")).await;
        assert!(matches!(err, Err(StoreError::AccountExists)), "{err:?}");
        // The failed attempt must not have touched the original credentials.
        let stored = store
            .credentials("alice")
            .await
            .expect("read")
            .expect("present");
        assert!(stored.verify_prepped_password(b"secret"));
    }

    #[tokio::test]
    async fn credentials_round_trip() {
        let (_dir, store) = new_store().await;
        assert_eq!(store.credentials("alice").await.expect("read"), None);
        let original = creds("pencil");
        store
            .create_account("alice", &original)
            .await
            .expect("create");
        let stored = store.credentials("alice").await.expect("read");
        assert_eq!(stored, Some(original));

        // The full u32 range survives the INTEGER column.
        let mut extreme = creds("pencil");
        extreme.iterations = u32::MAX;
        store.create_account("bob", &extreme).await.expect("create");
        assert_eq!(store.credentials("bob").await.expect("read"), Some(extreme));
    }

    #[tokio::test]
    async fn set_credentials_replaces() {
        let (_dir, store) = new_store().await;
        let err = store.set_credentials("alice", &creds("x")).await;
        assert!(matches!(err, Err(StoreError::NoAccount)), "{err:?}");
        with_account(&store, "alice").await;
        let new = creds("new password");
        store.set_credentials("alice", &new).await.expect("set");
        let stored = store
            .credentials("alice")
            .await
            .expect("read")
            .expect("present");
        assert_eq!(stored, new);
        assert!(stored.verify_prepped_password(b"new password"));
        assert!(!stored.verify_prepped_password(b"secret"));
    }

    /// The kept login reader sees what another process (the `tributary
    /// user` CLI) commits after it first read: a changed password, a
    /// removed account, a blocked JID.
    #[tokio::test]
    async fn the_login_reader_sees_changes_made_by_another_process() {
        let (dir, server) = new_store().await;
        with_account(&server, "alice").await;
        with_account(&server, "bob").await;
        assert!(server.credentials("alice").await.expect("read").is_some());
        assert!(server.blocklist("alice").await.expect("read").is_empty());

        let cli = SqliteStore::open(&dir.path().join("tributary.db"))
            .await
            .expect("open a second time");
        let new = creds("changed elsewhere");
        cli.set_credentials("alice", &new).await.expect("set");
        cli.delete_account("bob").await.expect("delete");
        cli.block("alice", &["eve@example.org".to_owned()])
            .await
            .expect("block");

        assert_eq!(server.credentials("alice").await.expect("read"), Some(new));
        assert_eq!(server.credentials("bob").await.expect("read"), None);
        assert_eq!(
            server.blocklist("alice").await.expect("read"),
            vec!["eve@example.org".to_owned()]
        );
    }

    #[tokio::test]
    async fn list_accounts_sorted() {
        let (_dir, store) = new_store().await;
        assert!(store.list_accounts().await.expect("list").is_empty());
        for user in ["zoe", "alice", "mallory", "bob"] {
            with_account(&store, user).await;
        }
        assert_eq!(
            store.list_accounts().await.expect("list"),
            jids(&["alice", "bob", "mallory", "zoe"])
        );
    }

    #[tokio::test]
    async fn delete_account_cascades() {
        let (_dir, store) = new_store().await;
        let err = store.delete_account("alice").await;
        assert!(matches!(err, Err(StoreError::NoAccount)), "{err:?}");

        with_account(&store, "alice").await;
        with_account(&store, "bob").await;
        for user in ["alice", "bob"] {
            store
                .put_roster_item(user, &item("carol@example.org", &["Friends", "Work"]))
                .await
                .expect("put");
            store
                .put_roster_item(user, &item("dave@example.org", &[]))
                .await
                .expect("put");
            store
                .store_offline(user, "<message/>", 10)
                .await
                .expect("offline");
            store.set_vcard(user, "<vCard/>").await.expect("vcard");
            store
                .set_private_data(user, "ns:a", "<a/>")
                .await
                .expect("private");
            store
                .block(user, &jids(&["eve@example.org"]))
                .await
                .expect("block");
        }

        store.delete_account("alice").await.expect("delete");
        assert!(!store.account_exists("alice").await.expect("exists"));
        assert_eq!(store.credentials("alice").await.expect("read"), None);
        assert_eq!(
            store.roster("alice").await.expect("roster"),
            (0, Vec::new())
        );
        assert_eq!(store.offline_count("alice").await.expect("count"), 0);
        assert_eq!(store.vcard("alice").await.expect("vcard"), None);
        assert_eq!(
            store.private_data("alice", "ns:a").await.expect("private"),
            None
        );
        assert!(store
            .blocklist("alice")
            .await
            .expect("blocklist")
            .is_empty());
        let err = store.delete_account("alice").await;
        assert!(matches!(err, Err(StoreError::NoAccount)), "{err:?}");

        // Only bob's rows are left in every table, groups included.
        for (table, expected) in [
            ("accounts", 1),
            ("roster_items", 2),
            ("roster_groups", 2),
            ("roster_versions", 1),
            ("offline", 1),
            ("vcards", 1),
            ("private_data", 1),
            ("blocklist", 1),
        ] {
            assert_eq!(rows(&store, table).await, expected, "{table}");
        }
        assert_eq!(store.roster("bob").await.expect("roster").0, 2);

        // A new account under the same name starts from scratch.
        with_account(&store, "alice").await;
        assert_eq!(
            store.roster("alice").await.expect("roster"),
            (0, Vec::new())
        );
        assert_eq!(
            store
                .put_roster_item("alice", &item("carol@example.org", &[]))
                .await
                .expect("put"),
            1
        );
    }

    #[tokio::test]
    async fn roster_put_get_replace_remove() {
        let (_dir, store) = new_store().await;
        with_account(&store, "alice").await;
        assert_eq!(
            store.roster("alice").await.expect("roster"),
            (0, Vec::new())
        );
        assert_eq!(
            store
                .roster_item("alice", "bob@example.org")
                .await
                .expect("get"),
            None
        );

        // Groups keep the client's order, not alphabetical order.
        let mut bob = item("bob@example.org", &["Work", "Friends", "Chess"]);
        bob.name = Some("Bob".to_string());
        bob.subscription = Subscription::Both;
        assert_eq!(store.put_roster_item("alice", &bob).await.expect("put"), 1);
        assert_eq!(
            store
                .roster_item("alice", "bob@example.org")
                .await
                .expect("get"),
            Some(bob.clone())
        );

        let mut carol = item("carol@example.org", &[]);
        carol.subscription = Subscription::To;
        carol.ask = true;
        carol.approved = true;
        assert_eq!(
            store.put_roster_item("alice", &carol).await.expect("put"),
            2
        );

        // Replacing changes every field, and the group list as a whole.
        let mut bob2 = item("bob@example.org", &["Chess"]);
        bob2.subscription = Subscription::From;
        bob2.pending_in = true;
        assert_eq!(store.put_roster_item("alice", &bob2).await.expect("put"), 3);
        assert_eq!(
            store
                .roster_item("alice", "bob@example.org")
                .await
                .expect("get"),
            Some(bob2.clone())
        );
        assert_eq!(
            store.roster("alice").await.expect("roster"),
            (3, vec![bob2, carol.clone()])
        );

        assert_eq!(
            store
                .remove_roster_item("alice", "bob@example.org")
                .await
                .expect("remove"),
            Some(4)
        );
        assert_eq!(
            store
                .roster_item("alice", "bob@example.org")
                .await
                .expect("get"),
            None
        );
        // Removing what is not there changes nothing, the version included.
        assert_eq!(
            store
                .remove_roster_item("alice", "bob@example.org")
                .await
                .expect("remove"),
            None
        );
        assert_eq!(
            store
                .remove_roster_item("alice", "nobody@example.org")
                .await
                .expect("remove"),
            None
        );
        assert_eq!(
            store.roster("alice").await.expect("roster"),
            (4, vec![carol])
        );
        assert_eq!(rows(&store, "roster_groups").await, 0);

        // Re-adding a removed contact must not resurrect its old groups.
        assert_eq!(
            store
                .put_roster_item("alice", &item("bob@example.org", &[]))
                .await
                .expect("put"),
            5
        );
        assert_eq!(
            store
                .roster_item("alice", "bob@example.org")
                .await
                .expect("get"),
            Some(item("bob@example.org", &[]))
        );
    }

    #[tokio::test]
    async fn roster_includes_hidden_items_in_contact_order() {
        let (_dir, store) = new_store().await;
        with_account(&store, "alice").await;
        let mut stranger = item("mallory@example.org", &[]);
        stranger.in_roster = false;
        stranger.pending_in = true;
        store
            .put_roster_item("alice", &item("zed@example.org", &["Z"]))
            .await
            .expect("put");
        store
            .put_roster_item("alice", &stranger)
            .await
            .expect("put");
        store
            .put_roster_item("alice", &item("bob@example.org", &["B"]))
            .await
            .expect("put");
        let (version, items) = store.roster("alice").await.expect("roster");
        assert_eq!(version, 3);
        assert_eq!(
            items,
            vec![
                item("bob@example.org", &["B"]),
                stranger.clone(),
                item("zed@example.org", &["Z"]),
            ]
        );
        assert_eq!(
            store
                .roster_item("alice", "mallory@example.org")
                .await
                .expect("get"),
            Some(stranger)
        );
    }

    #[tokio::test]
    async fn roster_versions_are_per_user() {
        let (_dir, store) = new_store().await;
        with_account(&store, "alice").await;
        with_account(&store, "bob").await;
        assert_eq!(
            store
                .put_roster_item("alice", &item("x@example.org", &[]))
                .await
                .expect("put"),
            1
        );
        assert_eq!(
            store
                .put_roster_item("alice", &item("y@example.org", &[]))
                .await
                .expect("put"),
            2
        );
        assert_eq!(
            store
                .put_roster_item("bob", &item("x@example.org", &[]))
                .await
                .expect("put"),
            1
        );
        assert_eq!(store.roster("alice").await.expect("roster").1.len(), 2);
        assert_eq!(store.roster("bob").await.expect("roster").1.len(), 1);
    }

    #[tokio::test]
    async fn roster_concurrent_puts_get_distinct_versions() {
        let (dir, store) = new_store().await;
        let other = SqliteStore::open(&dir.path().join("tributary.db"))
            .await
            .expect("open second");
        with_account(&store, "alice").await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            tasks.push(tokio::spawn(async move {
                s.put_roster_item("alice", &item(&format!("c{i:02}@example.org"), &["G"]))
                    .await
            }));
        }
        let mut versions = Vec::new();
        for task in tasks {
            versions.push(task.await.expect("join").expect("put"));
        }
        versions.sort_unstable();
        assert_eq!(versions, (1..=20).collect::<Vec<u64>>());
        let (version, items) = store.roster("alice").await.expect("roster");
        assert_eq!(version, 20);
        assert_eq!(items.len(), 20);
    }

    #[tokio::test]
    async fn writes_for_missing_account_fail() {
        let (_dir, store) = new_store().await;
        let err = store
            .put_roster_item("ghost", &item("a@example.org", &["G"]))
            .await;
        assert!(matches!(err, Err(StoreError::NoAccount)), "{err:?}");
        let err = store.store_offline("ghost", "<message/>", 10).await;
        assert!(matches!(err, Err(StoreError::NoAccount)), "{err:?}");
        let err = store.set_vcard("ghost", "<vCard/>").await;
        assert!(matches!(err, Err(StoreError::NoAccount)), "{err:?}");
        let err = store.set_private_data("ghost", "ns:a", "<a/>").await;
        assert!(matches!(err, Err(StoreError::NoAccount)), "{err:?}");
        let err = store.block("ghost", &jids(&["eve@example.org"])).await;
        assert!(matches!(err, Err(StoreError::NoAccount)), "{err:?}");
        // Nothing was left behind by the failed transactions.
        for table in [
            "roster_items",
            "roster_groups",
            "roster_versions",
            "offline",
            "blocklist",
        ] {
            assert_eq!(rows(&store, table).await, 0, "{table}");
        }
        // Reads of an unknown user are simply empty.
        assert_eq!(
            store.roster("ghost").await.expect("roster"),
            (0, Vec::new())
        );
        assert!(store.take_offline("ghost").await.expect("take").is_empty());
        assert_eq!(
            store
                .remove_roster_item("ghost", "a@example.org")
                .await
                .expect("remove"),
            None
        );
    }

    #[tokio::test]
    async fn offline_limit_order_and_take() {
        let (_dir, store) = new_store().await;
        with_account(&store, "alice").await;
        with_account(&store, "bob").await;
        assert!(store.take_offline("alice").await.expect("take").is_empty());
        let limit = 3;
        for i in 0..limit {
            let stored = store
                .store_offline("alice", &format!("<message id='{i}'/>"), limit)
                .await
                .expect("store");
            assert_eq!(stored, OfflineStored::Stored);
        }
        assert_eq!(store.offline_count("alice").await.expect("count"), limit);
        // Exactly at the limit the next one is refused and not stored.
        assert_eq!(
            store
                .store_offline("alice", "<message id='x'/>", limit)
                .await
                .expect("store"),
            OfflineStored::OverLimit
        );
        assert_eq!(store.offline_count("alice").await.expect("count"), limit);
        // A limit of zero refuses everything.
        assert_eq!(
            store
                .store_offline("bob", "<message/>", 0)
                .await
                .expect("store"),
            OfflineStored::OverLimit
        );
        // Other users have their own quota.
        assert_eq!(
            store
                .store_offline("bob", "<message id='b'/>", limit)
                .await
                .expect("store"),
            OfflineStored::Stored
        );

        assert_eq!(
            store.take_offline("alice").await.expect("take"),
            vec![
                "<message id='0'/>".to_string(),
                "<message id='1'/>".to_string(),
                "<message id='2'/>".to_string(),
            ]
        );
        assert_eq!(store.offline_count("alice").await.expect("count"), 0);
        assert!(store.take_offline("alice").await.expect("take").is_empty());
        assert_eq!(store.offline_count("bob").await.expect("count"), 1);

        // Room again after taking, and order still follows arrival.
        for i in 3..5 {
            store
                .store_offline("alice", &format!("<message id='{i}'/>"), limit)
                .await
                .expect("store");
        }
        assert_eq!(
            store.take_offline("alice").await.expect("take"),
            vec![
                "<message id='3'/>".to_string(),
                "<message id='4'/>".to_string()
            ]
        );
    }

    #[tokio::test]
    async fn vcard_upsert() {
        let (_dir, store) = new_store().await;
        with_account(&store, "alice").await;
        with_account(&store, "bob").await;
        assert_eq!(store.vcard("alice").await.expect("vcard"), None);
        store
            .set_vcard("alice", "<vCard><FN>A</FN></vCard>")
            .await
            .expect("set");
        store
            .set_vcard("alice", "<vCard><FN>Alice</FN></vCard>")
            .await
            .expect("set");
        assert_eq!(
            store.vcard("alice").await.expect("vcard").as_deref(),
            Some("<vCard><FN>Alice</FN></vCard>")
        );
        assert_eq!(store.vcard("bob").await.expect("vcard"), None);
    }

    #[tokio::test]
    async fn private_data_upsert_per_namespace() {
        let (_dir, store) = new_store().await;
        with_account(&store, "alice").await;
        assert_eq!(
            store.private_data("alice", "ns:a").await.expect("get"),
            None
        );
        store
            .set_private_data("alice", "ns:a", "<a>1</a>")
            .await
            .expect("set");
        store
            .set_private_data("alice", "ns:b", "<b/>")
            .await
            .expect("set");
        store
            .set_private_data("alice", "ns:a", "<a>2</a>")
            .await
            .expect("set");
        assert_eq!(
            store
                .private_data("alice", "ns:a")
                .await
                .expect("get")
                .as_deref(),
            Some("<a>2</a>")
        );
        assert_eq!(
            store
                .private_data("alice", "ns:b")
                .await
                .expect("get")
                .as_deref(),
            Some("<b/>")
        );
        assert_eq!(
            store.private_data("alice", "ns:c").await.expect("get"),
            None
        );
    }

    #[tokio::test]
    async fn blocklist_block_unblock() {
        let (_dir, store) = new_store().await;
        with_account(&store, "alice").await;
        with_account(&store, "bob").await;
        assert!(store.blocklist("alice").await.expect("list").is_empty());
        store
            .block(
                "alice",
                &jids(&["eve@example.org", "example.net", "mallory@example.org/res"]),
            )
            .await
            .expect("block");
        // Blocking again, and a duplicate inside one request, are harmless.
        store
            .block(
                "alice",
                &jids(&["eve@example.org", "trudy@example.org", "trudy@example.org"]),
            )
            .await
            .expect("block");
        store.block("alice", &[]).await.expect("block nothing");
        store
            .block("bob", &jids(&["eve@example.org"]))
            .await
            .expect("block");
        assert_eq!(
            store.blocklist("alice").await.expect("list"),
            jids(&[
                "eve@example.org",
                "example.net",
                "mallory@example.org/res",
                "trudy@example.org",
            ])
        );

        // Unblocking something not blocked is ignored.
        store
            .unblock("alice", &jids(&["eve@example.org", "nobody@example.org"]))
            .await
            .expect("unblock");
        assert_eq!(
            store.blocklist("alice").await.expect("list"),
            jids(&[
                "example.net",
                "mallory@example.org/res",
                "trudy@example.org"
            ])
        );

        // An empty list unblocks everything, for this user only.
        store.unblock("alice", &[]).await.expect("unblock all");
        assert!(store.blocklist("alice").await.expect("list").is_empty());
        assert_eq!(
            store.blocklist("bob").await.expect("list"),
            jids(&["eve@example.org"])
        );
    }

    #[tokio::test]
    async fn two_stores_on_one_file_see_each_other() {
        // Stands in for the server and the `tributary user` CLI.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tributary.db");
        let server = SqliteStore::open(&path).await.expect("open server");
        let cli = SqliteStore::open(&path).await.expect("open cli");

        // Read through the server first so it holds pooled connections that
        // predate the CLI's write.
        assert!(!server.account_exists("alice").await.expect("exists"));
        cli.create_account("alice", &creds("secret"))
            .await
            .expect("create");
        assert!(server.account_exists("alice").await.expect("exists"));
        let err = server.create_account("alice", &creds("other")).await;
        assert!(matches!(err, Err(StoreError::AccountExists)), "{err:?}");
        assert_eq!(
            server.list_accounts().await.expect("list"),
            jids(&["alice"])
        );

        cli.set_credentials("alice", &creds("changed"))
            .await
            .expect("set");
        let stored = server
            .credentials("alice")
            .await
            .expect("read")
            .expect("present");
        assert!(stored.verify_prepped_password(b"changed"));

        assert_eq!(
            server
                .put_roster_item("alice", &item("bob@example.org", &[]))
                .await
                .expect("put"),
            1
        );
        assert_eq!(
            cli.put_roster_item("alice", &item("carol@example.org", &[]))
                .await
                .expect("put"),
            2
        );
        assert_eq!(server.roster("alice").await.expect("roster").0, 2);

        server
            .store_offline("alice", "<message/>", 5)
            .await
            .expect("store");
        assert_eq!(cli.offline_count("alice").await.expect("count"), 1);

        cli.delete_account("alice").await.expect("delete");
        assert!(!server.account_exists("alice").await.expect("exists"));
        assert_eq!(
            server.roster("alice").await.expect("roster"),
            (0, Vec::new())
        );
        assert_eq!(server.offline_count("alice").await.expect("count"), 0);
    }

    #[tokio::test]
    async fn bad_stored_data_is_corrupt() {
        let (_dir, store) = new_store().await;
        with_account(&store, "alice").await;
        with_account(&store, "bob").await;
        sqlx::query("UPDATE accounts SET iterations = -1 WHERE user = 'alice'")
            .execute(&store.pool)
            .await
            .expect("tamper");
        let err = store.credentials("alice").await;
        assert!(matches!(err, Err(StoreError::Corrupt(_))), "{err:?}");

        store
            .put_roster_item("bob", &item("x@example.org", &[]))
            .await
            .expect("put");
        sqlx::query("UPDATE roster_versions SET version = -5 WHERE user = 'bob'")
            .execute(&store.pool)
            .await
            .expect("tamper");
        let err = store.roster("bob").await;
        assert!(matches!(err, Err(StoreError::Corrupt(_))), "{err:?}");
        let err = store
            .put_roster_item("bob", &item("y@example.org", &[]))
            .await;
        assert!(matches!(err, Err(StoreError::Corrupt(_))), "{err:?}");
    }

    fn queued(queue: &str, n: u32, quota: u64) -> NewQueueItem {
        NewQueueItem {
            queue: queue.into(),
            sender: "alice@localhost/phone".into(),
            stanza_id: Some(format!("R-{n}")),
            stanza: format!("<message id='R-{n}'/>"),
            answerable: false,
            dedup: None,
            quota,
        }
    }

    #[tokio::test]
    async fn a_copy_of_a_queued_stanza_is_the_same_item() {
        let (_dir, store) = new_store().await;
        let mut first = queued("collect.localhost", 1, 10);
        first.dedup = Some("alice@localhost\nR-1".into());
        let mut again = first.clone();
        again.sender = "alice@localhost/other".into();
        // Twice in one batch, then once more in a later one.
        let results = store
            .enqueue(&[first.clone(), again.clone()])
            .await
            .expect("enqueued");
        let Enqueued::Accepted(id) = results[0] else {
            panic!("{results:?}")
        };
        assert_eq!(results[1], Enqueued::AlreadyQueued(id));
        assert_eq!(
            store.enqueue(&[again.clone()]).await.expect("ok"),
            [Enqueued::AlreadyQueued(id)]
        );
        // The same key in another queue is another item.
        let mut elsewhere = first.clone();
        elsewhere.queue = "other.localhost".into();
        assert!(matches!(
            store.enqueue(&[elsewhere]).await.expect("ok")[..],
            [Enqueued::Accepted(_)]
        ));
        // A copy arriving in the batch that deletes the item is that item.
        let results = store
            .queue_commit(&[again.clone()], &[id])
            .await
            .expect("ok");
        assert_eq!(results, [Enqueued::AlreadyQueued(id)]);
        let results = store.enqueue(&[again.clone()]).await.expect("ok");
        let [Enqueued::Accepted(id)] = results[..] else {
            panic!("{results:?}")
        };
        // Once processed and removed, a new copy is queued again.
        store.queue_remove(&[id]).await.expect("removed");
        let results = store.enqueue(&[again]).await.expect("ok");
        assert!(
            matches!(results[..], [Enqueued::Accepted(n)] if n != id),
            "{results:?}"
        );
        assert_eq!(
            store
                .queue_items("collect.localhost", 0, 10)
                .await
                .expect("items")
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn each_request_of_a_batch_gets_its_own_rows_id() {
        let (_dir, store) = new_store().await;
        let keyed = |n: u32| {
            let mut item = queued("collect.localhost", n, 100);
            item.dedup = Some(format!("alice@localhost\nR-{n}"));
            item
        };
        let results = store.enqueue(&[keyed(1)]).await.expect("enqueued");
        let [Enqueued::Accepted(one)] = results[..] else {
            panic!("{results:?}")
        };
        // All new: ids in request order. Then new ones around a copy of a
        // queued item, keyed and not, in one statement.
        let all_new = [queued("collect.localhost", 2, 100), keyed(3), keyed(4)];
        let mixed = [
            queued("collect.localhost", 5, 100),
            keyed(1),
            keyed(6),
            queued("collect.localhost", 7, 100),
        ];
        let mut sent = vec![keyed(1)];
        let mut ids = vec![one];
        for batch in [&all_new[..], &mixed[..]] {
            for (item, result) in batch.iter().zip(store.enqueue(batch).await.expect("ok")) {
                match result {
                    Enqueued::Accepted(id) => {
                        sent.push(item.clone());
                        ids.push(id);
                    }
                    other => assert_eq!(
                        (item.stanza_id.as_deref(), other),
                        (Some("R-1"), Enqueued::AlreadyQueued(one))
                    ),
                }
            }
        }
        let stored = store
            .queue_items("collect.localhost", 0, 100)
            .await
            .expect("items");
        let stored: Vec<(i64, &str)> = stored.iter().map(|i| (i.id, i.stanza.as_str())).collect();
        let expected: Vec<(i64, &str)> = ids
            .iter()
            .zip(&sent)
            .map(|(id, i)| (*id, i.stanza.as_str()))
            .collect();
        assert_eq!(stored, expected);
        let depths = store.queue_depths().await.expect("depths");
        assert_eq!(depths[0].depth, 7);
        // Deletions are counted per queue, unknown ids not at all.
        store
            .queue_remove(&[ids[1], ids[4], i64::MAX])
            .await
            .expect("removed");
        let depths = store.queue_depths().await.expect("depths");
        assert_eq!(depths[0].depth, 5);
        // The quota goes by the depth the commits keep.
        let results = store
            .enqueue(&[8, 9, 10].map(|n| queued("collect.localhost", n, 7)))
            .await
            .expect("ok");
        assert_eq!(results.get(2), Some(&Enqueued::OverQuota), "{results:?}");
        assert!(
            results[..2]
                .iter()
                .all(|r| matches!(r, Enqueued::Accepted(_))),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn a_copy_merges_with_its_queued_item_even_at_the_quota() {
        let (_dir, store) = new_store().await;
        let mut first = queued("collect.localhost", 1, 2);
        first.dedup = Some("alice@localhost\nR-1".into());
        let results = store.enqueue(&[first.clone()]).await.expect("enqueued");
        let [Enqueued::Accepted(id)] = results[..] else {
            panic!("{results:?}")
        };
        // Counted as new, the copy would take the last place and leave
        // none for the stanza after it.
        let results = store
            .enqueue(&[first.clone(), queued("collect.localhost", 2, 2)])
            .await
            .expect("enqueued");
        assert!(
            matches!(results[..], [Enqueued::AlreadyQueued(i), Enqueued::Accepted(_)] if i == id),
            "{results:?}"
        );
        // Full now: a copy still merges, a new stanza is refused.
        let results = store
            .enqueue(&[first, queued("collect.localhost", 3, 2)])
            .await
            .expect("enqueued");
        assert!(
            matches!(results[..], [Enqueued::AlreadyQueued(i), Enqueued::OverQuota] if i == id),
            "{results:?}"
        );
        let depths = store.queue_depths().await.expect("depths");
        assert_eq!(depths[0].depth, 2);
    }

    #[tokio::test]
    async fn a_failed_queue_commit_changes_nothing_and_the_next_one_works() {
        let (_dir, store) = new_store().await;
        let first = store
            .enqueue(&[queued("collect.localhost", 0, 3)])
            .await
            .expect("enqueued");
        let Enqueued::Accepted(first) = first[0] else {
            panic!("not accepted: {first:?}");
        };
        // The second insert of the next commit fails half-way through it.
        sqlx::query(
            "CREATE TRIGGER boom BEFORE INSERT ON queue_items WHEN NEW.stanza_id = 'R-2' \
             BEGIN SELECT RAISE(ABORT, 'boom'); END",
        )
        .execute(&store.pool)
        .await
        .expect("trigger");
        let failed = store
            .queue_commit(
                &[
                    queued("collect.localhost", 1, 3),
                    queued("collect.localhost", 2, 3),
                ],
                &[first],
            )
            .await;
        assert!(failed.is_err(), "{failed:?}");
        // Nothing of it stayed, and it holds no lock: another connection
        // writes at once.
        let ids = |items: Vec<QueueItem>| -> Vec<String> {
            items
                .into_iter()
                .map(|i| i.stanza_id.unwrap_or_default())
                .collect()
        };
        let items = store
            .queue_items("collect.localhost", 0, 10)
            .await
            .expect("items");
        assert_eq!(ids(items), ["R-0"]);
        tokio::time::timeout(Duration::from_secs(1), with_account(&store, "bob"))
            .await
            .expect("the write lock is free");
        // The depth it counted went with it: two more fit the quota of 3.
        let results = store
            .enqueue(&[
                queued("collect.localhost", 3, 3),
                queued("collect.localhost", 4, 3),
                queued("collect.localhost", 5, 3),
            ])
            .await
            .expect("the next commit works");
        assert!(
            matches!(
                results[..],
                [
                    Enqueued::Accepted(_),
                    Enqueued::Accepted(_),
                    Enqueued::OverQuota
                ]
            ),
            "{results:?}"
        );
        let items = store
            .queue_items("collect.localhost", 0, 10)
            .await
            .expect("items");
        assert_eq!(ids(items), ["R-0", "R-3", "R-4"]);
    }

    #[tokio::test]
    async fn a_commit_whose_deletion_fails_keeps_none_of_its_inserts() {
        let (_dir, store) = new_store().await;
        let results = store
            .enqueue(&[queued("collect.localhost", 0, 10)])
            .await
            .expect("enqueued");
        let [Enqueued::Accepted(first)] = results[..] else {
            panic!("{results:?}")
        };
        // The insert goes in the first round trip, the failing delete and
        // the COMMIT in the second.
        sqlx::query(
            "CREATE TRIGGER boom BEFORE DELETE ON queue_items \
             BEGIN SELECT RAISE(ABORT, 'boom'); END",
        )
        .execute(&store.pool)
        .await
        .expect("trigger");
        let failed = store
            .queue_commit(&[queued("collect.localhost", 1, 10)], &[first])
            .await;
        assert!(failed.is_err(), "{failed:?}");
        tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query("DROP TRIGGER boom").execute(&store.pool),
        )
        .await
        .expect("the write lock is free")
        .expect("drop trigger");
        let items = store
            .queue_items("collect.localhost", 0, 10)
            .await
            .expect("items");
        let ids: Vec<_> = items.iter().map(|i| i.stanza_id.as_deref()).collect();
        assert_eq!(ids, [Some("R-0")]);
        // And the next mixed commit goes through whole.
        let results = store
            .queue_commit(&[queued("collect.localhost", 2, 10)], &[first])
            .await
            .expect("committed");
        assert!(
            matches!(results[..], [Enqueued::Accepted(_)]),
            "{results:?}"
        );
        let items = store
            .queue_items("collect.localhost", 0, 10)
            .await
            .expect("items");
        let ids: Vec<_> = items.iter().map(|i| i.stanza_id.as_deref()).collect();
        assert_eq!(ids, [Some("R-2")]);
    }

    #[tokio::test]
    async fn queued_items_come_back_in_the_form_they_were_stored() {
        let (_dir, store) = new_store().await;
        let mut answered = queued("collect.localhost", 1, 10);
        answered.answerable = true;
        store
            .enqueue(&[answered, queued("collect.localhost", 2, 10)])
            .await
            .expect("enqueued");
        // A row written before migration 0004 holds jabber:client text.
        sqlx::query(
            "INSERT INTO queue_items (queue, sender, stanza_id, stanza, enqueued_at) \
             VALUES ('collect.localhost', 'alice@localhost/phone', 'R-3', '<message/>', 0)",
        )
        .execute(&store.pool)
        .await
        .expect("old row");
        let forms: Vec<QueuedForm> = store
            .queue_items("collect.localhost", 0, 10)
            .await
            .expect("items")
            .iter()
            .map(|i| i.form)
            .collect();
        assert_eq!(
            forms,
            [
                QueuedForm::Accept { answerable: true },
                QueuedForm::Accept { answerable: false },
                QueuedForm::Client
            ]
        );
    }

    #[tokio::test]
    async fn queue_batches_keep_order_and_quota() {
        let (_dir, store) = new_store().await;
        let batch: Vec<NewQueueItem> = (0..4).map(|n| queued("collect.localhost", n, 3)).collect();
        let results = store.enqueue(&batch).await.expect("enqueued");
        assert!(matches!(
            results[..3],
            [
                Enqueued::Accepted(_),
                Enqueued::Accepted(_),
                Enqueued::Accepted(_)
            ]
        ));
        assert_eq!(results[3], Enqueued::OverQuota);
        // Another queue has its own quota.
        assert!(matches!(
            store
                .enqueue(&[queued("other.localhost", 9, 3)])
                .await
                .expect("ok")[..],
            [Enqueued::Accepted(_)]
        ));
        let items = store
            .queue_items("collect.localhost", 0, 10)
            .await
            .expect("items");
        assert_eq!(
            items
                .iter()
                .map(|i| i.stanza_id.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
            ["R-0", "R-1", "R-2"]
        );
        let later = store
            .queue_items("collect.localhost", items[0].id, 10)
            .await
            .expect("items");
        assert_eq!(later.len(), 2);
        let depths = store.queue_depths().await.expect("depths");
        assert_eq!(
            depths
                .iter()
                .map(|d| (d.queue.as_str(), d.depth))
                .collect::<Vec<_>>(),
            [("collect.localhost", 3), ("other.localhost", 1)]
        );
        store
            .queue_remove(&[items[0].id, items[2].id])
            .await
            .expect("removed");
        let left = store
            .queue_items("collect.localhost", 0, 10)
            .await
            .expect("items");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].stanza_id.as_deref(), Some("R-1"));
        // Room again below the quota.
        assert!(matches!(
            store
                .enqueue(&[queued("collect.localhost", 5, 3)])
                .await
                .expect("ok")[..],
            [Enqueued::Accepted(_)]
        ));
    }

    #[tokio::test]
    async fn a_large_batch_gets_ids_in_order_and_depths_stay_exact() {
        let (_dir, store) = new_store().await;
        // More rows than one statement takes.
        let batch: Vec<NewQueueItem> = (0..1_200)
            .map(|n| {
                let mut item = queued("collect.localhost", n, 1_201);
                item.dedup = Some(format!("alice@localhost\nR-{n}"));
                item
            })
            .collect();
        let results = store.enqueue(&batch).await.expect("enqueued");
        let ids: Vec<i64> = results
            .iter()
            .map(|r| match r {
                Enqueued::Accepted(id) => *id,
                other => panic!("{other:?}"),
            })
            .collect();
        let stored = store
            .queue_items("collect.localhost", 0, 2_000)
            .await
            .expect("items");
        let by_id: Vec<(i64, String)> = stored
            .iter()
            .map(|i| (i.id, i.stanza_id.clone().unwrap_or_default()))
            .collect();
        let expected: Vec<(i64, String)> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (*id, format!("R-{n}")))
            .collect();
        assert_eq!(by_id, expected);
        // The quota sees the depth before the batch's deletions (they run
        // after its inserts), and the remembered depth follows both.
        let results = store
            .queue_commit(&[queued("collect.localhost", 2_000, 1_201)], &ids[..2])
            .await
            .expect("committed");
        assert!(
            matches!(results[..], [Enqueued::Accepted(_)]),
            "{results:?}"
        );
        let more: Vec<NewQueueItem> = (2_001..2_004)
            .map(|n| queued("collect.localhost", n, 1_201))
            .collect();
        let results = store.enqueue(&more).await.expect("enqueued");
        assert!(
            matches!(
                results[..],
                [
                    Enqueued::Accepted(_),
                    Enqueued::Accepted(_),
                    Enqueued::OverQuota
                ]
            ),
            "{results:?}"
        );
        let depths = store.queue_depths().await.expect("depths");
        assert_eq!(depths[0].depth, 1_201);
    }

    #[tokio::test]
    async fn queue_survives_reopening() {
        let (dir, store) = new_store().await;
        store
            .enqueue(&[queued("collect.localhost", 1, 10)])
            .await
            .expect("enqueued");
        drop(store);
        let reopened = SqliteStore::open(&dir.path().join("tributary.db"))
            .await
            .expect("reopened");
        assert_eq!(
            reopened
                .queue_items("collect.localhost", 0, 10)
                .await
                .expect("items")
                .len(),
            1
        );
    }
}
