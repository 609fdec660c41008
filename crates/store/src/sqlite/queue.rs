//! The durable component queues on SQLite: one transaction per group
//! commit, with as few statements as possible, because each statement is a
//! round trip to sqlx's SQLite worker thread and the writer's batches hold
//! up to a thousand stanzas.

use std::collections::{HashMap, HashSet};

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

impl SqliteStore {
    /// See [`crate::Store::queue_commit`]. Queue depths (for quotas) are
    /// counted once per queue and then kept in memory: this process is the
    /// only writer of the queue tables.
    pub(super) async fn commit_queue(
        &self,
        items: &[NewQueueItem],
        remove: &[i64],
    ) -> Result<Vec<Enqueued>> {
        if items.is_empty() && remove.is_empty() {
            return Ok(Vec::new());
        }
        // Held for the whole commit: the cached depths must move with the
        // committed rows, not with a concurrent batch.
        let mut cached = self.queue_depths.lock().await;
        let mut tx = self.write_tx().await?;

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
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// Ids of queued items having the dedup keys of `items`, by (queue, key).
async fn existing_keys<'i>(
    tx: &mut Tx,
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

async fn count(tx: &mut Tx, queue: &str) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_items WHERE queue = ?")
        .bind(queue)
        .fetch_one(&mut **tx)
        .await?;
    Ok(count_from("queue items", n)? as u64)
}

/// Inserts `rows` and returns their ids in the same order.
async fn insert_rows(tx: &mut Tx, rows: &[&NewQueueItem]) -> Result<Vec<i64>> {
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
async fn delete_rows(tx: &mut Tx, ids: &[i64]) -> Result<HashMap<String, u64>> {
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
