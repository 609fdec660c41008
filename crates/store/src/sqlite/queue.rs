//! The durable component queues on SQLite: one transaction per group
//! commit, with as few statements as possible, because each statement is a
//! round trip to sqlx's SQLite worker thread and the writer's batches hold
//! up to a thousand stanzas. A batch that only adds or only deletes and
//! fits one statement runs as that statement alone, without BEGIN and
//! COMMIT; one that does both sends BEGIN with its insert and COMMIT with
//! its delete. Copies of queued stanzas are found by their inserts'
//! conflicts rather than looked up beforehand.

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, SqliteConnection};

use super::{count_from, KeptConnection, SqliteStore};
use crate::{unix_millis, Enqueued, NewQueueItem, Result};

/// Rows per multi-row statement: six parameters each stays far below
/// SQLite's limit of 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// What a batch does with one enqueue request.
enum Plan {
    Done(Enqueued),
    /// Row `n` of the batch's inserts: a new item, or, if its key is
    /// queued already, that item.
    Insert(usize),
}

/// What the queue commits keep between them; one commit at a time holds it.
#[derive(Debug, Default)]
pub(super) struct QueueWriter {
    /// The commits' own connection (in a 20 s `bench report` at 2,000/s:
    /// ~60,000 page reads with the pool's, ~1,200 with this).
    conn: KeptConnection,
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
        let result = commit_on(conn.get(&self.pool).await?, depths, items, remove).await;
        let result = writer.conn.checked(result);
        if result.is_err() {
            // A failure after an insert committed on its own (looking up
            // the keys it conflicted with) leaves the depths behind: they
            // are counted again on their next use.
            writer.depths.clear();
        }
        result
    }
}

async fn commit_on(
    conn: &mut SqliteConnection,
    depths: &mut HashMap<String, u64>,
    items: &[NewQueueItem],
    remove: &[i64],
) -> Result<Vec<Enqueued>> {
    for item in items {
        if !depths.contains_key(&item.queue) {
            let depth = count(conn, &item.queue).await?;
            depths.insert(item.queue.clone(), depth);
        }
    }
    // A copy of a queued stanza is found by its insert, which its key makes
    // a no-op, without looking the keys up first. Unless the quota turns a
    // request away: whether the copies merge decides what fits, so then the
    // keys are looked up before planning.
    let mut batch = Batch::plan(items, &HashMap::new(), depths);
    let look_up_first = batch.refuses_some && items.iter().any(|i| i.dedup.is_some());
    let fits = |n: usize| n <= ROWS_PER_STATEMENT;
    let (inserted, removed) = if look_up_first || !fits(batch.inserts.len()) || !fits(remove.len())
    {
        // See the module documentation of `sqlite.rs` for IMMEDIATE.
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        if look_up_first {
            let existing = existing_keys(&mut tx, items.iter()).await?;
            batch = Batch::plan(items, &existing, depths);
        }
        let inserted = insert_rows(&mut tx, &batch.inserts, "").await?;
        // Deleted after the inserts: a copy of an item acknowledged in this
        // very batch is merged with it (its answer is about to go out).
        let removed = delete_rows(&mut tx, remove, "").await?;
        tx.commit().await?;
        (inserted, removed)
    } else if batch.inserts.is_empty() || remove.is_empty() {
        // One statement is atomic and, with synchronous=FULL, on disk when
        // it returns: BEGIN and COMMIT would be two more round trips to
        // sqlx's worker thread. The rows a conflict points at cannot go
        // before they are looked up: every change to the queue tables is
        // made under the writer's lock, held by this commit.
        let inserted = insert_rows(conn, &batch.inserts, "").await?;
        (inserted, delete_rows(conn, remove, "").await?)
    } else {
        // Both, each in one statement: BEGIN rides on the insert and
        // COMMIT on the delete, two round trips rather than four. After an
        // error the connection is closed (`KeptConnection::checked`),
        // which rolls back whatever the transaction did.
        let inserted = insert_rows(conn, &batch.inserts, "BEGIN IMMEDIATE; ").await?;
        (inserted, delete_rows(conn, remove, "; COMMIT").await?)
    };

    // Every queue of the batch was counted above.
    for (item, row) in batch.inserts.iter().zip(&inserted) {
        if let (Row::Inserted(_), Some(depth)) = (row, depths.get_mut(&item.queue)) {
            *depth += 1;
        }
    }
    for (queue, n) in removed {
        if let Some(depth) = depths.get_mut(&queue) {
            *depth = depth.saturating_sub(n);
        }
    }
    let mut created: HashSet<usize> = HashSet::new();
    Ok(batch
        .plans
        .into_iter()
        .map(|plan| match plan {
            Plan::Done(result) => result,
            Plan::Insert(n) => match inserted[n] {
                // The first request for a row created it; later ones merge.
                Row::Inserted(id) if created.insert(n) => Enqueued::Accepted(id),
                Row::Inserted(id) | Row::Queued(id) => Enqueued::AlreadyQueued(id),
            },
        })
        .collect())
}

/// What a batch does with each enqueue request, and the rows it inserts.
struct Batch<'i> {
    plans: Vec<Plan>,
    inserts: Vec<&'i NewQueueItem>,
    /// Some request is over its queue's quota.
    refuses_some: bool,
}

impl<'i> Batch<'i> {
    /// Decides every request in order: copies of queued items (`existing`)
    /// or of an earlier request of the batch merge, the rest fit the quota
    /// (from `depths`, which holds every queue of `items`) or not.
    fn plan(
        items: &'i [NewQueueItem],
        existing: &HashMap<(&str, &str), i64>,
        depths: &HashMap<String, u64>,
    ) -> Batch<'i> {
        let mut depths: HashMap<&str, u64> = depths.iter().map(|(q, d)| (q.as_str(), *d)).collect();
        let mut batch = Batch {
            plans: Vec::with_capacity(items.len()),
            inserts: Vec::new(),
            refuses_some: false,
        };
        let mut batch_keys: HashMap<(&str, &str), usize> = HashMap::new();
        for item in items {
            let key = item.dedup.as_deref().map(|k| (item.queue.as_str(), k));
            if let Some(id) = key.and_then(|k| existing.get(&k)) {
                batch.plans.push(Plan::Done(Enqueued::AlreadyQueued(*id)));
                continue;
            }
            if let Some(n) = key.and_then(|k| batch_keys.get(&k)) {
                batch.plans.push(Plan::Insert(*n));
                continue;
            }
            let depth = depths.entry(&item.queue).or_default();
            if *depth >= item.quota {
                batch.plans.push(Plan::Done(Enqueued::OverQuota));
                batch.refuses_some = true;
                continue;
            }
            *depth += 1;
            if let Some(k) = key {
                batch_keys.insert(k, batch.inserts.len());
            }
            batch.plans.push(Plan::Insert(batch.inserts.len()));
            batch.inserts.push(item);
        }
        batch
    }
}

/// What became of one row of a batch's inserts.
#[derive(Debug, Clone, Copy)]
enum Row {
    Inserted(i64),
    /// Not inserted: an item with its key was queued already, this one.
    Queued(i64),
}

/// Ids of queued items having the dedup keys of `items`, by (queue, key).
async fn existing_keys<'i>(
    conn: &mut SqliteConnection,
    items: impl Iterator<Item = &'i NewQueueItem>,
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
            for (key, id) in q.fetch_all(&mut *conn).await? {
                if let Some(k) = batch_keys.get(key.as_str()) {
                    found.insert((queue, *k), id);
                }
            }
        }
    }
    Ok(found)
}

async fn count(conn: &mut SqliteConnection, queue: &str) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_items WHERE queue = ?")
        .bind(queue)
        .fetch_one(conn)
        .await?;
    Ok(count_from("queue items", n)? as u64)
}

/// Inserts `rows` (no two with the same queue and key) and tells for each,
/// in order, its new id, or the id of the queued item with its key.
///
/// `before` is SQL run in the same round trip before the first insert
/// (`BEGIN IMMEDIATE; `, or nothing).
async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &[&NewQueueItem],
    mut before: &str,
) -> Result<Vec<Row>> {
    let now = unix_millis();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values = vec!["(?, ?, ?, ?, ?, ?, 1, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "{before}INSERT INTO queue_items \
             (queue, sender, stanza_id, stanza, dedup, enqueued_at, form, answerable) \
             VALUES {values} ON CONFLICT DO NOTHING RETURNING id, queue, dedup"
        );
        before = "";
        let mut q = sqlx::query_as::<_, (i64, String, Option<String>)>(&sql);
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
        let mut returned = q.fetch_all(&mut *conn).await?;
        // SQLite gives the rows of one statement increasing ids in VALUES
        // order but does not promise the order of RETURNING.
        returned.sort_unstable_by_key(|(id, _, _)| *id);
        let mut keyed: HashMap<(&str, &str), i64> = HashMap::new();
        let mut unkeyed = Vec::new();
        for (id, queue, key) in &returned {
            match key {
                Some(k) => {
                    keyed.insert((queue.as_str(), k.as_str()), *id);
                }
                None => unkeyed.push(*id),
            }
        }
        let mut unkeyed = unkeyed.into_iter();
        let ids: Vec<Option<i64>> = chunk
            .iter()
            .map(|item| match &item.dedup {
                Some(k) => keyed.get(&(item.queue.as_str(), k.as_str())).copied(),
                None => unkeyed.next(),
            })
            .collect();
        // A row left out has the key of a queued item: that one's id.
        let left_out = chunk.iter().zip(&ids).filter(|(_, id)| id.is_none());
        let existing = existing_keys(conn, left_out.map(|(item, _)| *item)).await?;
        for (item, id) in chunk.iter().zip(ids) {
            out.push(match id {
                Some(id) => Row::Inserted(id),
                None => {
                    let key = (
                        item.queue.as_str(),
                        item.dedup.as_deref().unwrap_or_default(),
                    );
                    Row::Queued(*existing.get(&key).ok_or_else(|| {
                        super::corrupt(format!("queue item {key:?} neither inserted nor queued"))
                    })?)
                }
            });
        }
    }
    Ok(out)
}

/// Deletes the items `ids`; returns how many went from each queue.
/// `after` is SQL run in the same round trip after the last delete
/// (`; COMMIT`, or nothing).
async fn delete_rows(
    conn: &mut SqliteConnection,
    ids: &[i64],
    after: &str,
) -> Result<HashMap<String, u64>> {
    let mut removed: HashMap<String, u64> = HashMap::new();
    let chunks = ids.chunks(ROWS_PER_STATEMENT);
    let last = chunks.len().saturating_sub(1);
    for (n, chunk) in chunks.enumerate() {
        let sql = format!(
            "DELETE FROM queue_items WHERE id IN ({}) RETURNING queue{}",
            placeholders(chunk.len()),
            if n == last { after } else { "" }
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for queue in q.fetch_all(&mut *conn).await? {
            *removed.entry(queue).or_default() += 1;
        }
    }
    Ok(removed)
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}
