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
//! A dispatcher that has read everything the store held takes what the
//! writer commits next straight from the writer, rather than reading it
//! back: the writer is the only one adding items and sends each commit's
//! items in id order. While it is behind (a backlog, more than `LOAD`
//! waiting) it drops those and reads from the store, after the last id it
//! has.
//!
//! A sender that resends a stanza it is unsure about (same bare JID, same
//! id) gets it merged: with the queued copy while there is one, and for
//! `RECENTLY_ANSWERED` after the processor's answer to it was routed, so
//! the processor does not answer it twice. Later copies are new items: the
//! answer may have been lost (a node crash loses what was in flight to
//! the sender), and the processor's idempotent commit makes them harmless.
//!
//! Why no copy slips between the two: an answer's key is marked *before*
//! its item's deletion is handed to the writer, and the writer, which
//! commits deletions and enqueues in one order, looks keys up when it
//! builds a batch. A copy in an earlier batch finds the item, one in the
//! deleting batch is merged by the store, one in a later batch finds the
//! mark.

use crate::router::Outbound;
use minidom::Element;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tributary_proto::pacing::CommitPacer;
use tributary_proto::{ns, stanza};
use tributary_store::{unix_millis, Enqueued, NewQueueItem, QueueItem, QueuedForm, Store};

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

    fn remove(&mut self, key: &str) {
        let h = self.hasher.hash_one(key);
        self.current.remove(&h);
        self.previous.remove(&h);
    }
}

/// Recent answers per component domain (lower case).
type Answered = Arc<HashMap<String, Mutex<RecentAnswers>>>;

fn with_recent<R>(
    answered: &Answered,
    domain: &str,
    f: impl FnOnce(&mut RecentAnswers) -> R,
) -> Option<R> {
    let recent = answered.get(domain)?;
    let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
    Some(f(&mut recent))
}

/// A queue item as a component connection writes it. Items are stored in
/// this form, so handing one out parses no XML.
#[derive(Debug)]
pub struct QueuedStanza {
    /// Serialised in `jabber:component:accept`, written as is.
    pub text: String,
    /// The sender's full JID and the stanza's id when the processor
    /// answers it (see [`answerable`]): that answer settles the item.
    pub answer_to: Option<(String, String)>,
}

impl QueuedStanza {
    fn from_item(item: QueueItem) -> Result<QueuedStanza, minidom::Error> {
        match item.form {
            QueuedForm::Accept { answerable } => Ok(QueuedStanza {
                text: item.stanza,
                answer_to: match (answerable, item.stanza_id) {
                    (true, Some(id)) => Some((item.sender, id)),
                    _ => None,
                },
            }),
            QueuedForm::Client => {
                let el: Element = item.stanza.parse()?;
                let answer_to = match (answerable(&el), stanza::from(&el), stanza::id(&el)) {
                    (true, Some(from), Some(id)) => Some((from.to_owned(), id.to_owned())),
                    _ => None,
                };
                Ok(QueuedStanza {
                    text: stanza::to_string(&to_accept_ns(el)),
                    answer_to,
                })
            }
        }
    }
}

/// Whether a processor answers this stanza (an XEP-0184 receipt request,
/// an iq get or set); the answer then acknowledges it.
pub fn answerable(el: &Element) -> bool {
    match el.name() {
        "message" => el.has_child("request", ns::RECEIPTS),
        "iq" => matches!(stanza::stanza_type(el), Some("get" | "set")),
        _ => false,
    }
}

fn to_accept_ns(el: Element) -> Element {
    stanza::translate(el, ns::CLIENT, ns::COMPONENT_ACCEPT)
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

/// A stanza on its way to disk: resolves once committed (or refused).
pub type Commit = oneshot::Receiver<Result<Enqueued, QueueError>>;

enum WriteRequest {
    Enqueue(EnqueueRequest),
    /// Acknowledged items to delete; `removed` is told after the commit.
    Remove {
        ids: Vec<i64>,
        removed: Option<oneshot::Sender<()>>,
    },
}

struct EnqueueRequest {
    item: NewQueueItem,
    reply: oneshot::Sender<Result<Enqueued, QueueError>>,
}

enum Event {
    /// These items were committed, in id order.
    Committed(Vec<QueueItem>),
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
    writer: mpsc::Sender<WriteRequest>,
    dispatchers: HashMap<String, mpsc::UnboundedSender<Event>>,
    quotas: HashMap<String, u64>,
    answered: Answered,
}

impl Queues {
    /// Starts the writer and one dispatcher per component domain, given
    /// as (domain, quota). The tasks end when this handle is dropped.
    pub fn start(
        store: Arc<dyn Store>,
        components: &[(String, u64)],
        commit_delay: Duration,
    ) -> Queues {
        let (writer, write_rx) = mpsc::channel(MAX_BATCH * 4);
        let mut dispatchers = HashMap::new();
        let mut quotas = HashMap::new();
        let mut answered = HashMap::new();
        for (domain, quota) in components {
            let domain = domain.to_ascii_lowercase();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(dispatch(domain.clone(), store.clone(), writer.clone(), rx));
            dispatchers.insert(domain.clone(), tx);
            answered.insert(
                domain.clone(),
                Mutex::new(RecentAnswers::new(Instant::now())),
            );
            quotas.insert(domain, *quota);
        }
        let answered: Answered = Arc::new(answered);
        tokio::spawn(write(
            store,
            write_rx,
            dispatchers.clone(),
            answered.clone(),
            commit_delay,
        ));
        Queues {
            writer,
            dispatchers,
            quotas,
            answered,
        }
    }

    /// The processor answered these stanzas (by dedup key): copies are
    /// no-ops from now on. Called before their deletion is requested.
    pub fn answering<'k>(&self, domain: &str, keys: impl IntoIterator<Item = &'k str>) {
        let now = Instant::now();
        with_recent(&self.answered, &domain.to_ascii_lowercase(), |recent| {
            for key in keys {
                recent.insert(key, now);
            }
        });
    }

    /// These answers did not reach a session: a copy from a sender
    /// that started afresh must be processed (and answered) again.
    pub fn not_delivered<'k>(&self, domain: &str, keys: impl IntoIterator<Item = &'k str>) {
        with_recent(&self.answered, &domain.to_ascii_lowercase(), |recent| {
            for key in keys {
                recent.remove(key);
            }
        });
    }

    /// Hands a stanza to the group-commit writer and returns at once; the
    /// returned [`Commit`] resolves when it is on disk (or refused over
    /// quota; a copy of a queued item is `Enqueued::AlreadyQueued`, of a
    /// recently answered one `Enqueued::AlreadyAnswered`). A connection can
    /// so have many stanzas committing together (one fsync for all) while
    /// it acknowledges them in order.
    pub async fn submit(
        &self,
        domain: &str,
        sender: &str,
        stanza_id: Option<&str>,
        dedup: Option<String>,
        stanza: &Element,
    ) -> Result<Commit, QueueError> {
        let queue = domain.to_ascii_lowercase();
        let quota = *self.quotas.get(&queue).ok_or(QueueError::NoSuchQueue)?;
        let (reply, answer) = oneshot::channel();
        let item = NewQueueItem {
            queue,
            sender: sender.to_owned(),
            stanza_id: stanza_id.map(str::to_owned),
            stanza: stanza::to_string(&stanza::translated(
                stanza,
                ns::CLIENT,
                ns::COMPONENT_ACCEPT,
            )),
            answerable: answerable(stanza) && stanza::from(stanza).is_some() && stanza_id.is_some(),
            dedup,
            quota,
        };
        self.writer
            .send(WriteRequest::Enqueue(EnqueueRequest { item, reply }))
            .await
            .map_err(|_| QueueError::Stopped)?;
        Ok(answer)
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

/// The group-commit writer: enqueues and deletions of acknowledged items
/// from every connection and dispatcher, one transaction per batch. While
/// busy, a batch takes what arrives within `commit_delay` of its first
/// request (see [`tributary_proto::pacing`]).
async fn write(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<WriteRequest>,
    dispatchers: HashMap<String, mpsc::UnboundedSender<Event>>,
    answered: Answered,
    commit_delay: Duration,
) {
    let mut pacer = CommitPacer::new(commit_delay);
    while let Some(first) = rx.recv().await {
        let gather_until = pacer.gather_until(Instant::now());
        // Items and their replies apart: the items go to the store as a
        // slice, without a copy.
        let mut items = Vec::new();
        let mut replies = Vec::new();
        let mut remove = Vec::new();
        let mut removed = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(request) = next.take() {
            match request {
                WriteRequest::Enqueue(r) if recently_answered(&answered, &r.item) => {
                    let _ = r.reply.send(Ok(Enqueued::AlreadyAnswered));
                }
                WriteRequest::Enqueue(r) => {
                    items.push(r.item);
                    replies.push(r.reply);
                }
                WriteRequest::Remove { ids, removed: tell } => {
                    remove.extend(ids);
                    removed.extend(tell);
                }
            }
            taken += 1;
            if taken < MAX_BATCH {
                next = match (rx.try_recv(), gather_until) {
                    (Ok(request), _) => Some(request),
                    (Err(_), Some(until)) => tokio::time::timeout_at(until.into(), rx.recv())
                        .await
                        .ok()
                        .flatten(),
                    (Err(_), None) => None,
                };
            }
        }
        pacer.committed(Instant::now());
        match store.queue_commit(&items, &remove).await {
            Ok(results) => {
                let mut committed: HashMap<String, Vec<QueueItem>> = HashMap::new();
                let enqueued_at = unix_millis();
                for ((item, reply), result) in items.into_iter().zip(replies).zip(results) {
                    let _ = reply.send(Ok(result));
                    if let Enqueued::Accepted(id) = result {
                        committed
                            .entry(item.queue.clone())
                            .or_default()
                            .push(QueueItem {
                                id,
                                queue: item.queue,
                                sender: item.sender,
                                stanza_id: item.stanza_id,
                                stanza: item.stanza,
                                form: QueuedForm::Accept {
                                    answerable: item.answerable,
                                },
                                enqueued_at,
                            });
                    }
                }
                for (queue, items) in committed {
                    if let Some(d) = dispatchers.get(&queue) {
                        let _ = d.send(Event::Committed(items));
                    }
                }
            }
            Err(e) => {
                // Undeleted items are delivered again after a restart: at
                // least once, never lost.
                tracing::error!(
                    "cannot commit {} queued and {} acknowledged stanzas: {e}",
                    items.len(),
                    remove.len()
                );
                let text = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(QueueError::Store(text.clone())));
                }
            }
        }
        for tell in removed {
            let _ = tell.send(());
        }
    }
}

fn recently_answered(answered: &Answered, item: &NewQueueItem) -> bool {
    let Some(key) = &item.dedup else { return false };
    with_recent(answered, &item.queue, |recent| {
        recent.contains(key, Instant::now())
    })
    .unwrap_or(false)
}

struct Slot {
    conn_id: u64,
    tx: mpsc::Sender<Outbound>,
    window: usize,
    in_flight: usize,
}

/// A dispatcher's items not handed out yet, and where the next come from.
struct Backlog {
    ready: VecDeque<QueueItem>,
    /// The highest id read from the store or taken from the writer.
    loaded_upto: i64,
    /// The store may hold items after `loaded_upto` that are not in
    /// `ready`: the next ones are read from it, not taken from the writer.
    more_in_store: bool,
}

impl Backlog {
    /// Items committed before the dispatcher started are in the store.
    fn new() -> Backlog {
        Backlog {
            ready: VecDeque::new(),
            loaded_upto: 0,
            more_in_store: true,
        }
    }

    fn wants_load(&self) -> bool {
        self.more_in_store && self.ready.len() < LOAD
    }

    /// Items read from the store after `loaded_upto`, at most `LOAD`.
    fn loaded(&mut self, items: Vec<QueueItem>) {
        self.more_in_store = items.len() == LOAD;
        if let Some(last) = items.last() {
            self.loaded_upto = last.id;
        }
        self.ready.extend(items);
    }

    /// Items the writer just committed, in id order.
    fn committed(&mut self, items: Vec<QueueItem>) {
        if self.more_in_store || self.ready.len() >= LOAD {
            // Read from the store in their turn, after what comes first.
            self.more_in_store = true;
            return;
        }
        // A load that ran after this commit has its items already.
        let after = self.loaded_upto;
        for item in items.into_iter().filter(|i| i.id > after) {
            self.loaded_upto = item.id;
            self.ready.push_back(item);
        }
    }
}

/// Hands a domain's queued items to its connections.
async fn dispatch(
    domain: String,
    store: Arc<dyn Store>,
    writer: mpsc::Sender<WriteRequest>,
    mut rx: mpsc::UnboundedReceiver<Event>,
) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut backlog = Backlog::new();
    let mut assigned: HashMap<i64, (u64, QueueItem)> = HashMap::new();
    let mut next_slot = 0usize;
    loop {
        if backlog.wants_load() && !slots.is_empty() {
            match store.queue_items(&domain, backlog.loaded_upto, LOAD).await {
                Ok(items) => backlog.loaded(items),
                Err(e) => {
                    tracing::error!(%domain, "cannot read the queue: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        hand_out(
            &domain,
            &mut slots,
            &mut backlog.ready,
            &mut assigned,
            &mut next_slot,
            &store,
        )
        .await;
        let Some(event) = rx.recv().await else { return };
        match event {
            Event::Committed(items) => backlog.committed(items),
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
                    backlog.ready.push_front(item);
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
                let request = WriteRequest::Remove { ids: done, removed };
                if let Err(mpsc::error::SendError(WriteRequest::Remove {
                    removed: Some(tell),
                    ..
                })) = writer.send(request).await
                {
                    let _ = tell.send(());
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
        let id = item.id;
        let queued = match QueuedStanza::from_item(item.clone()) {
            Ok(queued) => queued,
            Err(e) => {
                tracing::error!(%domain, id, "dropping an unreadable queued stanza: {e}");
                let _ = store.queue_remove(&[id]).await;
                continue;
            }
        };
        match slot.tx.try_send(Outbound::Queued {
            id,
            stanza: Box::new(queued),
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

    const KEY: &str = "alice@localhost\nR-1";

    /// Queues on a fresh SQLite file, for `reports.localhost`.
    async fn on_disk(quota: u64, commit_delay: Duration) -> (tempfile::TempDir, Queues) {
        let dir = tempfile::tempdir().expect("dir");
        let store = tributary_store::SqliteStore::open(&dir.path().join("q.sqlite"))
            .await
            .expect("store");
        let queues = Queues::start(
            Arc::new(store),
            &[("reports.localhost".into(), quota)],
            commit_delay,
        );
        (dir, queues)
    }

    fn report() -> Element {
        "<message xmlns='jabber:client' from='alice@localhost/phone' to='reports.localhost' id='R-1'><request xmlns='urn:xmpp:receipts'/></message>"
            .parse()
            .expect("stanza")
    }

    async fn copy(queues: &Queues) -> Enqueued {
        let commit = queues
            .submit(
                "reports.localhost",
                "alice@localhost/phone",
                Some("R-1"),
                Some(KEY.into()),
                &report(),
            )
            .await
            .expect("submitted");
        commit.await.expect("answered").expect("committed")
    }

    /// A copy of a report arriving at any moment around its answer is
    /// never a new item while the answer counts as delivered, and is one
    /// once the answer is known not to have reached the sender.
    #[tokio::test]
    async fn copies_around_an_answer_are_never_new_items() {
        let (_dir, queues) = on_disk(1000, Duration::ZERO).await;
        let Enqueued::Accepted(first) = copy(&queues).await else {
            panic!("the first copy is a new item")
        };
        let (tx, mut rx) = mpsc::channel(8);
        queues.attach("reports.localhost", 1, tx, 8);
        let Some(Outbound::Queued { id, .. }) = rx.recv().await else {
            panic!("the item is handed out")
        };
        assert_eq!(id, first);
        assert!(matches!(copy(&queues).await, Enqueued::AlreadyQueued(i) if i == first));

        // The connection marks the answer, then asks for the deletion,
        // while copies keep arriving: each is merged or already answered.
        queues.answering("reports.localhost", [KEY]);
        let (removed, deleted) = oneshot::channel();
        let racing = async {
            let mut outcomes = Vec::new();
            for _ in 0..20 {
                outcomes.push(copy(&queues).await);
            }
            outcomes
        };
        queues.acked("reports.localhost", 1, vec![id], Some(removed));
        let (outcomes, deleted) = tokio::join!(racing, deleted);
        deleted.expect("deleted");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Enqueued::AlreadyQueued(_) | Enqueued::AlreadyAnswered)),
            "{outcomes:?}"
        );
        assert_eq!(copy(&queues).await, Enqueued::AlreadyAnswered);

        queues.not_delivered("reports.localhost", [KEY]);
        assert!(matches!(copy(&queues).await, Enqueued::Accepted(i) if i > first));
    }

    async fn submit_numbered(queues: &Queues, n: usize) -> Commit {
        let el: Element = format!(
            "<message xmlns='jabber:client' from='alice@localhost/phone' to='reports.localhost' id='N-{n}'><body>{n}</body></message>"
        )
        .parse()
        .expect("stanza");
        queues
            .submit(
                "reports.localhost",
                "alice@localhost/phone",
                Some(&format!("N-{n}")),
                None,
                &el,
            )
            .await
            .expect("submitted")
    }

    /// An idle writer commits at once; right after a commit, the next
    /// waits up to the commit delay for more requests and takes them along.
    #[tokio::test]
    async fn a_busy_writer_gathers_what_arrives_within_the_commit_delay() {
        let delay = Duration::from_secs(1);
        let (_dir, queues) = on_disk(1000, delay).await;
        let started = Instant::now();
        commit_all(vec![submit_numbered(&queues, 0).await]).await;
        assert!(started.elapsed() < delay, "an idle writer does not wait");

        let mut second = submit_numbered(&queues, 1).await;
        tokio::time::sleep(delay / 5).await;
        assert_eq!(
            second.try_recv().err(),
            Some(oneshot::error::TryRecvError::Empty),
            "a busy writer waits for more"
        );
        let third = submit_numbered(&queues, 2).await;
        let ids = commit_all(vec![second, third]).await;
        assert_eq!(ids.len(), 2);
        assert!(started.elapsed() < delay * 2, "one wait for both");
    }

    async fn commit_all(commits: Vec<Commit>) -> Vec<i64> {
        let mut ids = Vec::new();
        for commit in commits {
            match commit.await.expect("answered").expect("committed") {
                Enqueued::Accepted(id) => ids.push(id),
                other => panic!("not a new item: {other:?}"),
            }
        }
        ids
    }

    /// Items come to the dispatcher from the writer while it is caught up
    /// and from the store while it is behind (a backlog larger than it
    /// holds, a connection too busy to take more): across both, every
    /// committed item is handed out once, in id order.
    #[tokio::test]
    async fn committed_items_are_handed_out_once_in_order_from_writer_or_store() {
        let (_dir, queues) = on_disk(100_000, Duration::ZERO).await;
        let mut accepted = Vec::new();
        // A backlog beyond what the dispatcher holds, with no connection.
        let mut commits = Vec::new();
        for n in 0..LOAD + 300 {
            commits.push(submit_numbered(&queues, n).await);
        }
        accepted.extend(commit_all(commits).await);

        // A connection with a short channel, while more items commit.
        let (tx, mut rx) = mpsc::channel(16);
        queues.attach("reports.localhost", 1, tx, 100_000);
        let mut handed = Vec::new();
        let mut next = LOAD + 300;
        while next < 3 * LOAD || handed.len() < accepted.len() {
            if next < 3 * LOAD {
                let mut commits = Vec::new();
                for n in next..next + 50 {
                    commits.push(submit_numbered(&queues, n).await);
                }
                next += 50;
                accepted.extend(commit_all(commits).await);
            }
            let Some(Outbound::Queued { id, .. }) = rx.recv().await else {
                panic!("an item is handed out")
            };
            handed.push(id);
            // Acknowledgements let the dispatcher hand out more.
            queues.acked("reports.localhost", 1, vec![id], None);
        }
        assert_eq!(handed.len(), next);
        assert!(handed == accepted, "handed out in commit order");
        assert!(handed.windows(2).all(|w| w[0] < w[1]));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "nothing is handed out twice"
        );
    }

    fn numbered(ids: std::ops::RangeInclusive<i64>) -> Vec<QueueItem> {
        ids.map(|id| QueueItem {
            id,
            ..stored("<message/>", QueuedForm::Accept { answerable: false })
        })
        .collect()
    }

    fn ready_ids(backlog: &Backlog) -> Vec<i64> {
        backlog.ready.iter().map(|i| i.id).collect()
    }

    #[test]
    fn a_backlog_takes_each_committed_item_once_from_the_store_or_the_writer() {
        let mut backlog = Backlog::new();
        // Items from before the start are in the store: commits wait.
        backlog.committed(numbered(1..=2));
        assert!(backlog.wants_load() && backlog.ready.is_empty());
        // The load saw those and a commit whose items are still on their
        // way from the writer: they are not taken twice.
        backlog.loaded(numbered(1..=5));
        backlog.committed(numbered(3..=5));
        backlog.committed(numbered(6..=7));
        assert_eq!(ready_ids(&backlog), vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(!backlog.wants_load());

        // Full: the next commits stay in the store until it is read again.
        let load = LOAD as i64;
        let mut full = Backlog::new();
        full.loaded(numbered(1..=10));
        full.committed(numbered(11..=load));
        full.committed(numbered(load + 1..=load + 3));
        assert_eq!(full.ready.len(), LOAD);
        assert_eq!(full.loaded_upto, load);
        full.ready.clear();
        full.committed(numbered(load + 4..=load + 5));
        assert!(full.ready.is_empty() && full.wants_load());
    }

    fn stored(stanza: &str, form: QueuedForm) -> QueueItem {
        QueueItem {
            id: 7,
            queue: "reports.localhost".into(),
            sender: "alice@localhost/phone".into(),
            stanza_id: Some("R-1".into()),
            stanza: stanza.into(),
            form,
            enqueued_at: 0,
        }
    }

    #[test]
    fn items_are_handed_out_in_the_component_namespace_in_either_stored_form() {
        let alice = Some(("alice@localhost/phone".to_owned(), "R-1".to_owned()));
        // As stored before migration 0004: parsed and rewritten.
        let old = stored(&stanza::to_string(&report()), QueuedForm::Client);
        let old = QueuedStanza::from_item(old).expect("readable");
        let el: Element = old.text.parse().expect("xml");
        assert!(el.has_ns(ns::COMPONENT_ACCEPT));
        assert!(el.has_child("request", ns::RECEIPTS));
        assert_eq!(old.answer_to, alice);
        // As stored now: the text as is.
        let text = stanza::to_string(&to_accept_ns(report()));
        let new = stored(&text, QueuedForm::Accept { answerable: true });
        let new = QueuedStanza::from_item(new).expect("readable");
        assert_eq!((new.text, new.answer_to), (text.clone(), alice));
        let unanswered = stored(&text, QueuedForm::Accept { answerable: false });
        assert_eq!(
            QueuedStanza::from_item(unanswered)
                .expect("readable")
                .answer_to,
            None
        );
        let broken = stored("<message", QueuedForm::Client);
        assert!(QueuedStanza::from_item(broken).is_err());
    }

    #[test]
    fn answered_stanzas_are_receipt_requests_and_iq_requests() {
        let parse = |s: &str| s.parse::<Element>().expect("xml");
        assert!(answerable(&report()));
        assert!(!answerable(&parse(
            "<message xmlns='jabber:client' id='1'/>"
        )));
        assert!(answerable(&parse(
            "<iq xmlns='jabber:client' type='get' id='1'/>"
        )));
        assert!(!answerable(&parse(
            "<iq xmlns='jabber:client' type='result' id='1'/>"
        )));
        assert!(!answerable(&parse("<presence xmlns='jabber:client'/>")));
    }

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
