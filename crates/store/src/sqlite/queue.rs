//! The durable component queues on SQLite: one transaction per group
//! commit, with as few statements as possible, because each statement is a
//! round trip to sqlx's SQLite worker thread and the writer's batches hold
//! up to a thousand stanzas.

use std::collections::{HashMap, HashSet};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Sqlite, SqliteConnection};

use super::{count_from, SqliteStore};
use crate::{unix_millis, Enqueued, NewQueueItem, Result};

/// Rows per multi-row statement: six parameters each stays far below
/// SQLite's limit of 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// What a batch does with one enqueue request.
enum Plan {
    Done(Enqueued),
    /// Inserted as row `n` of the batch's inserts.
    Insert(usize),
}

/// What the queue commits keep between them; one commit at a time holds it.
#[derive(Debug, Default)]
pub(super) struct QueueWriter {
    /// The commits' own connection, kept rather than taken from the pool
    /// each time: a connection given back to the pool is released by a
    /// spawned task the next commit may wait for, and each of the pool's
    /// connections has a page cache of its own (in a 20 s `bench report`
    /// at 2,000/s: ~60,000 page reads with the pool, ~1,200 with this).
    /// Closed after an error, so that the next commit starts on a fresh
    /// one.
    conn: Option<PoolConnection<Sqlite>>,
    /// Items per queue, once counted: this process is the only writer of
    /// the queue tables. They move with the committed rows, never with a
    /// concurrent batch, since the commits hold this struct.
    depths: HashMap<String, u64>,
}

impl SqliteStore {
    /// See [`crate::Store::queue_commit`].
    pub(super) async fn commit_queue(
        &self,
        items: &[NewQueueItem],
        remove: &[i64],
    ) -> Result<Vec<Enqueued>> {
        if items.is_empty() && remove.is_empty() {
            return Ok(Vec::new());
        }
        let mut writer = self.queue_writer.lock().await;
        let QueueWriter { conn, depths } = &mut *writer;
        let conn = match conn {
            Some(c) => c,
            None => conn.insert(self.pool.acquire().await?),
        };
        let result = commit_on(conn, depths, items, remove).await;
        if result.is_err() {
            if let Some(mut conn) = writer.conn.take() {
                conn.close_on_drop();
            }
        }
        result
    }
}

async fn commit_on(
    conn: &mut SqliteConnection,
    cached: &mut HashMap<String, u64>,
    items: &[NewQueueItem],
    remove: &[i64],
) -> Result<Vec<Enqueued>> {
    // See the module documentation of `sqlite.rs` for IMMEDIATE.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;

    let existing = existing_keys(&mut tx, items).await?;
    let mut depths: HashMap<&str, u64> = HashMap::new();
    for item in items {
        if !depths.contains_key(item.queue.as_str()) {
            let depth = match cached.get(&item.queue) {
                Some(d) => *d,
                None => count(&mut tx, &item.queue).await?,
            };
            depths.insert(&item.queue, depth);
        }
    }

    // Decide every request in order: copies of queued items (or of an
    // earlier request of this batch) merge, the rest fit the quota or not.
    let mut plans = Vec::with_capacity(items.len());
    let mut inserts: Vec<&NewQueueItem> = Vec::new();
    let mut batch_keys: HashMap<(&str, &str), usize> = HashMap::new();
    for item in items {
        let key = item.dedup.as_deref().map(|k| (item.queue.as_str(), k));
        if let Some(id) = key.and_then(|k| existing.get(&k)) {
            plans.push(Plan::Done(Enqueued::AlreadyQueued(*id)));
            continue;
        }
        if let Some(n) = key.and_then(|k| batch_keys.get(&k)) {
            plans.push(Plan::Insert(*n));
            continue;
        }
        let depth = depths.entry(&item.queue).or_default();
        if *depth >= item.quota {
            plans.push(Plan::Done(Enqueued::OverQuota));
            continue;
        }
        *depth += 1;
        if let Some(k) = key {
            batch_keys.insert(k, inserts.len());
        }
        plans.push(Plan::Insert(inserts.len()));
        inserts.push(item);
    }

    let ids = insert_rows(&mut tx, &inserts).await?;
    let mut created: HashSet<usize> = HashSet::new();
    let out = plans
        .into_iter()
        .map(|plan| match plan {
            Plan::Done(result) => result,
            // The first request for a row created it; later ones merge.
            Plan::Insert(n) if created.insert(n) => Enqueued::Accepted(ids[n]),
            Plan::Insert(n) => Enqueued::AlreadyQueued(ids[n]),
        })
        .collect();

    // Deleted after the inserts: a copy of an item acknowledged in this
    // very batch is merged with it (its answer is about to go out).
    let removed = delete_rows(&mut tx, remove).await?;
    tx.commit().await?;

    for (queue, depth) in depths {
        cached.insert(queue.to_owned(), depth);
    }
    for (queue, n) in removed {
        // Queues this batch did not count are counted on their next use.
        if let Some(depth) = cached.get_mut(&queue) {
            *depth = depth.saturating_sub(n);
        }
    }
    Ok(out)
}

type Tx<'c> = sqlx::Transaction<'c, Sqlite>;

/// Ids of queued items having the dedup keys of `items`, by (queue, key).
async fn existing_keys<'i>(
    tx: &mut Tx<'_>,
    items: &'i [NewQueueItem],
) -> Result<HashMap<(&'i str, &'i str), i64>> {
    let mut by_queue: HashMap<&str, Vec<&str>> = HashMap::new();
    for item in items {
        if let Some(key) = &item.dedup {
            by_queue.entry(&item.queue).or_default().push(key);
        }
    }
    let mut found = HashMap::new();
    for (queue, keys) in by_queue {
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT dedup, id FROM queue_items WHERE queue = ? AND dedup IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql).bind(queue);
            for key in chunk {
                q = q.bind(*key);
            }
            // Borrow each key from the batch rather than the row.
            let batch_keys: HashSet<&'i str> = chunk.iter().copied().collect();
            for (key, id) in q.fetch_all(&mut **tx).await? {
                if let Some(k) = batch_keys.get(key.as_str()) {
                    found.insert((queue, *k), id);
                }
            }
        }
    }
    Ok(found)
}

async fn count(tx: &mut Tx<'_>, queue: &str) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_items WHERE queue = ?")
        .bind(queue)
        .fetch_one(&mut **tx)
        .await?;
    Ok(count_from("queue items", n)? as u64)
}

/// Inserts `rows` and returns their ids in the same order.
async fn insert_rows(tx: &mut Tx<'_>, rows: &[&NewQueueItem]) -> Result<Vec<i64>> {
    let now = unix_millis();
    let mut ids = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values = vec!["(?, ?, ?, ?, ?, ?, 1, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO queue_items \
             (queue, sender, stanza_id, stanza, dedup, enqueued_at, form, answerable) \
             VALUES {values} RETURNING id"
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql);
        for item in chunk {
            q = q
                .bind(&item.queue)
                .bind(&item.sender)
                .bind(&item.stanza_id)
                .bind(&item.stanza)
                .bind(&item.dedup)
                .bind(now)
                .bind(item.answerable);
        }
        let mut chunk_ids = q.fetch_all(&mut **tx).await?;
        // SQLite gives the rows of one statement increasing ids in VALUES
        // order but does not promise the order of RETURNING.
        chunk_ids.sort_unstable();
        ids.extend(chunk_ids);
    }
    Ok(ids)
}

/// Deletes the items `ids`; returns how many went from each queue.
async fn delete_rows(tx: &mut Tx<'_>, ids: &[i64]) -> Result<HashMap<String, u64>> {
    let mut removed: HashMap<String, u64> = HashMap::new();
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "DELETE FROM queue_items WHERE id IN ({}) RETURNING queue",
            placeholders(chunk.len())
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for queue in q.fetch_all(&mut **tx).await? {
            *removed.entry(queue).or_default() += 1;
        }
    }
    Ok(removed)
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}
