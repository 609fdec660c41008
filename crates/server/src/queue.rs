//! Durable queues for external components: every stanza addressed to a
//! component domain is committed to the store before it counts as
//! accepted, and stays there until a processor acknowledges it.
//!
//! Two kinds of task:
//! - one *writer* batches enqueue requests from all connections into one
//!   transaction (group commit), so durability costs one fsync per batch;
//! - one *dispatcher* per component domain loads items in id order and
//!   hands each to exactly one connection of the domain, at most `window`
//!   in flight per connection. Acknowledged items are deleted; items held
//!   by a connection that goes away are handed out again.
//!
//! A sender that resends a stanza it is unsure about (same bare JID, same
//! id) gets it merged: with the queued copy while there is one, and for
//! `RECENTLY_ANSWERED` after the processor's answer to it was routed, so
//! the processor does not answer it twice. Later copies are new items: the
//! answer may have been lost (a node crash loses what was in flight to
//! the sender), and the processor's idempotent commit makes them harmless.

use crate::router::Outbound;
use minidom::Element;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tributary_store::{Enqueued, NewQueueItem, QueueItem, Store};

/// Most enqueue requests committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Items a dispatcher loads from the store at a time.
const LOAD: usize = 512;
/// How long a routed answer makes a resent copy of its stanza a no-op:
/// longer than a resend takes to follow a lost answer's stanza, short
/// enough that the set stays small at full rate.
const RECENTLY_ANSWERED: Duration = Duration::from_secs(60);

/// Dedup keys whose answer went out lately, as hashes in two generations
/// of `RECENTLY_ANSWERED / 2` each (a key lives between one half and a
/// whole of it).
struct RecentAnswers {
    hasher: std::collections::hash_map::RandomState,
    current: HashSet<u64>,
    previous: HashSet<u64>,
    rotated: Instant,
}

impl RecentAnswers {
    fn new(now: Instant) -> Self {
        RecentAnswers {
            hasher: Default::default(),
            current: HashSet::new(),
            previous: HashSet::new(),
            rotated: now,
        }
    }

    fn rotate(&mut self, now: Instant) {
        let half = RECENTLY_ANSWERED / 2;
        if now.duration_since(self.rotated) >= half {
            self.previous = std::mem::take(&mut self.current);
            if now.duration_since(self.rotated) >= RECENTLY_ANSWERED {
                self.previous.clear();
            }
            self.rotated = now;
        }
    }

    fn insert(&mut self, key: &str, now: Instant) {
        self.rotate(now);
        let h = self.hasher.hash_one(key);
        self.current.insert(h);
    }

    fn contains(&mut self, key: &str, now: Instant) -> bool {
        self.rotate(now);
        let h = self.hasher.hash_one(key);
        self.current.contains(&h) || self.previous.contains(&h)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("not a component domain")]
    NoSuchQueue,
    #[error("the queue writer has stopped")]
    Stopped,
    #[error("cannot commit to the store: {0}")]
    Store(String),
}

struct EnqueueRequest {
    item: NewQueueItem,
    reply: oneshot::Sender<Result<Enqueued, QueueError>>,
}

enum Event {
    /// New items were committed.
    Wake,
    Attach {
        conn_id: u64,
        tx: mpsc::Sender<Outbound>,
        window: usize,
    },
    /// The connection ended: what it held goes out again.
    Detach { conn_id: u64 },
    Acked {
        conn_id: u64,
        ids: Vec<i64>,
        /// Told once the acknowledged items are deleted from the store.
        removed: Option<oneshot::Sender<()>>,
    },
}

/// Handle to the queue tasks, shared by every connection.
pub struct Queues {
    writer: mpsc::Sender<EnqueueRequest>,
    dispatchers: HashMap<String, mpsc::UnboundedSender<Event>>,
    quotas: HashMap<String, u64>,
    answered: HashMap<String, Mutex<RecentAnswers>>,
}

impl Queues {
    /// Starts the writer and one dispatcher per component domain, given
    /// as (domain, quota). The tasks end when this handle is dropped.
    pub fn start(store: Arc<dyn Store>, components: &[(String, u64)]) -> Queues {
        let mut dispatchers = HashMap::new();
        let mut quotas = HashMap::new();
        let mut answered = HashMap::new();
        for (domain, quota) in components {
            let domain = domain.to_ascii_lowercase();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(dispatch(domain.clone(), store.clone(), rx));
            dispatchers.insert(domain.clone(), tx);
            answered.insert(
                domain.clone(),
                Mutex::new(RecentAnswers::new(Instant::now())),
            );
            quotas.insert(domain, *quota);
        }
        let (writer, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write(store, rx, dispatchers.clone()));
        Queues {
            writer,
            dispatchers,
            quotas,
            answered,
        }
    }

    /// The processor's answers to these stanzas (by dedup key) were routed.
    pub fn answered<'k>(&self, domain: &str, keys: impl IntoIterator<Item = &'k str>) {
        if let Some(recent) = self.answered.get(&domain.to_ascii_lowercase()) {
            let now = Instant::now();
            let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
            for key in keys {
                recent.insert(key, now);
            }
        }
    }

    /// Commits a stanza to a component's queue; returns once it is on disk
    /// (or refused over quota). A stanza with the same `dedup` key as one
    /// still queued is that item (`Enqueued::AlreadyQueued`).
    pub async fn enqueue(
        &self,
        domain: &str,
        sender: &str,
        stanza_id: Option<&str>,
        dedup: Option<String>,
        stanza: &Element,
    ) -> Result<Enqueued, QueueError> {
        let queue = domain.to_ascii_lowercase();
        let quota = *self.quotas.get(&queue).ok_or(QueueError::NoSuchQueue)?;
        if let (Some(key), Some(recent)) = (&dedup, self.answered.get(&queue)) {
            let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.contains(key, Instant::now()) {
                return Ok(Enqueued::AlreadyAnswered);
            }
        }
        let (reply, answer) = oneshot::channel();
        let item = NewQueueItem {
            queue,
            sender: sender.to_owned(),
            stanza_id: stanza_id.map(str::to_owned),
            stanza: tributary_proto::stanza::to_string(stanza),
            dedup,
            quota,
        };
        self.writer
            .send(EnqueueRequest { item, reply })
            .await
            .map_err(|_| QueueError::Stopped)?;
        answer.await.map_err(|_| QueueError::Stopped)?
    }

    fn event(&self, domain: &str, event: Event) {
        if let Some(d) = self.dispatchers.get(&domain.to_ascii_lowercase()) {
            let _ = d.send(event);
        }
    }

    /// A connection of `domain` is ready to take stanzas.
    pub fn attach(&self, domain: &str, conn_id: u64, tx: mpsc::Sender<Outbound>, window: usize) {
        self.event(
            domain,
            Event::Attach {
                conn_id,
                tx,
                window,
            },
        );
    }

    pub fn detach(&self, domain: &str, conn_id: u64) {
        self.event(domain, Event::Detach { conn_id });
    }

    /// The processor acknowledged these items. `removed`, if given, is
    /// told once they are deleted from the store.
    pub fn acked(
        &self,
        domain: &str,
        conn_id: u64,
        ids: Vec<i64>,
        removed: Option<oneshot::Sender<()>>,
    ) {
        if !ids.is_empty() {
            self.event(
                domain,
                Event::Acked {
                    conn_id,
                    ids,
                    removed,
                },
            );
        }
    }
}

/// The group-commit writer.
async fn write(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<EnqueueRequest>,
    dispatchers: HashMap<String, mpsc::UnboundedSender<Event>>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let items: Vec<NewQueueItem> = batch.iter().map(|r| r.item.clone()).collect();
        match store.enqueue(&items).await {
            Ok(results) => {
                let mut woken = std::collections::HashSet::new();
                for (req, result) in batch.into_iter().zip(results) {
                    if matches!(result, Enqueued::Accepted(_))
                        && woken.insert(req.item.queue.clone())
                    {
                        if let Some(d) = dispatchers.get(&req.item.queue) {
                            let _ = d.send(Event::Wake);
                        }
                    }
                    let _ = req.reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!("cannot commit {} queued stanzas: {e}", batch.len());
                let text = e.to_string();
                for req in batch {
                    let _ = req.reply.send(Err(QueueError::Store(text.clone())));
                }
            }
        }
    }
}

struct Slot {
    conn_id: u64,
    tx: mpsc::Sender<Outbound>,
    window: usize,
    in_flight: usize,
}

/// Hands a domain's queued items to its connections.
async fn dispatch(domain: String, store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut ready: VecDeque<QueueItem> = VecDeque::new();
    let mut assigned: HashMap<i64, (u64, QueueItem)> = HashMap::new();
    let mut loaded_upto: i64 = 0;
    let mut more_in_store = true;
    let mut next_slot = 0usize;
    loop {
        if more_in_store && ready.len() < LOAD && !slots.is_empty() {
            match store.queue_items(&domain, loaded_upto, LOAD).await {
                Ok(items) => {
                    more_in_store = items.len() == LOAD;
                    if let Some(last) = items.last() {
                        loaded_upto = last.id;
                    }
                    ready.extend(items);
                }
                Err(e) => {
                    tracing::error!(%domain, "cannot read the queue: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        hand_out(
            &domain,
            &mut slots,
            &mut ready,
            &mut assigned,
            &mut next_slot,
            &store,
        )
        .await;
        let Some(event) = rx.recv().await else { return };
        match event {
            Event::Wake => more_in_store = true,
            Event::Attach {
                conn_id,
                tx,
                window,
            } => slots.push(Slot {
                conn_id,
                tx,
                window,
                in_flight: 0,
            }),
            Event::Detach { conn_id } => {
                slots.retain(|s| s.conn_id != conn_id);
                let mut back: Vec<QueueItem> = Vec::new();
                assigned.retain(|_, (c, item)| {
                    if *c == conn_id {
                        back.push(item.clone());
                        false
                    } else {
                        true
                    }
                });
                if !back.is_empty() {
                    tracing::info!(%domain, count = back.len(), "redelivering what a closed connection had not acknowledged");
                }
                // Back in front, in id order: per-sender order is kept.
                back.sort_by_key(|i| i.id);
                for item in back.into_iter().rev() {
                    ready.push_front(item);
                }
            }
            Event::Acked {
                conn_id,
                ids,
                removed,
            } => {
                let mut done = Vec::with_capacity(ids.len());
                for id in ids {
                    if assigned.remove(&id).is_some() {
                        done.push(id);
                    }
                }
                if let Some(slot) = slots.iter_mut().find(|s| s.conn_id == conn_id) {
                    slot.in_flight = slot.in_flight.saturating_sub(done.len());
                }
                if let Err(e) = store.queue_remove(&done).await {
                    // They stay stored and are delivered again after a
                    // restart: at least once, never lost.
                    tracing::error!(%domain, "cannot delete acknowledged items: {e}");
                }
                if let Some(removed) = removed {
                    let _ = removed.send(());
                }
            }
        }
    }
}

/// Gives ready items to connections with room, round robin.
async fn hand_out(
    domain: &str,
    slots: &mut [Slot],
    ready: &mut VecDeque<QueueItem>,
    assigned: &mut HashMap<i64, (u64, QueueItem)>,
    next_slot: &mut usize,
    store: &Arc<dyn Store>,
) {
    let mut full = vec![false; slots.len()];
    while !ready.is_empty() && full.iter().any(|f| !f) {
        let i = *next_slot % slots.len();
        *next_slot = next_slot.wrapping_add(1);
        let slot = &mut slots[i];
        if full[i] || slot.in_flight >= slot.window {
            full[i] = true;
            continue;
        }
        let Some(item) = ready.pop_front() else { break };
        let el: Element = match item.stanza.parse() {
            Ok(el) => el,
            Err(e) => {
                tracing::error!(%domain, id = item.id, "dropping an unreadable queued stanza: {e}");
                let _ = store.queue_remove(&[item.id]).await;
                continue;
            }
        };
        match slot.tx.try_send(Outbound::Queued {
            id: item.id,
            stanza: el,
        }) {
            Ok(()) => {
                slot.in_flight += 1;
                assigned.insert(item.id, (slot.conn_id, item));
            }
            Err(_) => {
                full[i] = true;
                ready.push_front(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_answers_are_forgotten_after_their_time() {
        let t0 = Instant::now();
        let mut recent = RecentAnswers::new(t0);
        recent.insert("alice@localhost\nR-1", t0);
        assert!(recent.contains("alice@localhost\nR-1", t0));
        assert!(!recent.contains("alice@localhost\nR-2", t0));
        let half = RECENTLY_ANSWERED / 2;
        // Still known through the next rotation...
        assert!(recent.contains("alice@localhost\nR-1", t0 + half));
        recent.insert("bob@localhost\nR-1", t0 + half);
        // ...and gone after the one after it; the later key stays.
        let later = t0 + RECENTLY_ANSWERED + Duration::from_secs(1);
        assert!(!recent.contains("alice@localhost\nR-1", later));
        assert!(recent.contains("bob@localhost\nR-1", later));
        // A long silence forgets everything.
        assert!(!recent.contains("bob@localhost\nR-1", later + RECENTLY_ANSWERED));
    }
}
