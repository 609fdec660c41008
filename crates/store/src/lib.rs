//! Persistent state of a node behind one trait, [`Store`], so that the
//! protocol code never sees SQL. [`SqliteStore`] is the embedded default;
//! a PostgreSQL implementation can follow behind the same trait.
//!
//! Users are identified by the local part of their JID: a node serves one
//! domain, and the server has normalised the local part (nodeprep) before
//! it reaches the store.

mod sqlite;

pub use sqlite::SqliteStore;
pub use tributary_proto::scram::Credentials;
pub use tributary_proto::subscription::Subscription;

use async_trait::async_trait;

/// Now, in Unix milliseconds: how `QueueItem::enqueued_at` counts.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account already exists")]
    AccountExists,
    #[error("no such account")]
    NoAccount,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One contact of a user, with the subscription bookkeeping RFC 6121
/// needs. Items that only record an inbound request from a stranger are
/// kept with `in_roster == false` and never shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// Bare JID of the contact.
    pub jid: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub subscription: Subscription,
    /// Pending Out: the user asked for the contact's presence.
    pub ask: bool,
    /// Pending In: the contact asked and the user has not answered; the
    /// request stanza is re-sent to the user at each login until then.
    pub pending_in: bool,
    /// Pre-approved: a future subscribe from the contact is accepted at once.
    pub approved: bool,
    /// Whether the item is part of the visible roster.
    pub in_roster: bool,
}

impl RosterItem {
    pub fn new(jid: impl Into<String>) -> RosterItem {
        RosterItem {
            jid: jid.into(),
            name: None,
            groups: Vec::new(),
            subscription: Subscription::None,
            ask: false,
            pending_in: false,
            approved: false,
            in_roster: true,
        }
    }
}

/// Outcome of queueing an offline message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineStored {
    Stored,
    /// The user's offline store already holds the configured maximum.
    OverLimit,
}

/// A stanza to put on a component's durable queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewQueueItem {
    pub queue: String,
    pub sender: String,
    pub stanza_id: Option<String>,
    /// The stanza as the component is sent it (`jabber:component:accept`).
    pub stanza: String,
    /// Whether the processor answers it (receipt request, iq get/set), so
    /// the item is settled by that answer.
    pub answerable: bool,
    /// Makes a second copy a no-op while the first one is queued (sender
    /// bare JID and stanza id); `None` queues every copy.
    pub dedup: Option<String>,
    /// Most items the queue may hold; this one is refused beyond it.
    pub quota: u64,
}

/// How a queue item's stanza is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedForm {
    /// As the component is sent it; `answerable` as given at enqueue.
    Accept { answerable: bool },
    /// In `jabber:client`, as items were stored before migration 0004:
    /// parsed and rewritten when handed out.
    Client,
}

/// A stored queue item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    pub id: i64,
    pub queue: String,
    pub sender: String,
    pub stanza_id: Option<String>,
    pub stanza: String,
    /// How `stanza` is stored, and so how it is handed out.
    pub form: QueuedForm,
    /// Unix time in milliseconds.
    pub enqueued_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Committed, with its item id.
    Accepted(i64),
    /// The same stanza (same `dedup` key) is queued already, with this id.
    AlreadyQueued(i64),
    /// The same stanza was processed and answered moments ago (decided by
    /// the server's queue layer; the store never returns it).
    AlreadyAnswered,
    /// The queue holds its quota already; nothing was stored.
    OverQuota,
}

/// How much waits in one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub queue: String,
    pub depth: u64,
    /// Unix time in milliseconds of the oldest item.
    pub oldest_at: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Accounts.
    async fn create_account(&self, user: &str, creds: &Credentials) -> Result<()>;
    /// Replaces the credentials; `NoAccount` if the user does not exist.
    async fn set_credentials(&self, user: &str, creds: &Credentials) -> Result<()>;
    /// Removes the account and everything stored for it; `NoAccount` if absent.
    async fn delete_account(&self, user: &str) -> Result<()>;
    async fn credentials(&self, user: &str) -> Result<Option<Credentials>>;
    async fn account_exists(&self, user: &str) -> Result<bool>;
    /// All local parts, sorted.
    async fn list_accounts(&self) -> Result<Vec<String>>;

    // Roster (RFC 6121 section 2), versioned per user.
    /// Every item (including hidden ones) and the current roster version.
    async fn roster(&self, user: &str) -> Result<(u64, Vec<RosterItem>)>;
    async fn roster_item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>>;
    /// Inserts or replaces an item; returns the new roster version.
    async fn put_roster_item(&self, user: &str, item: &RosterItem) -> Result<u64>;
    /// Deletes an item; returns the new roster version, `None` if absent.
    async fn remove_roster_item(&self, user: &str, contact: &str) -> Result<Option<u64>>;

    // Offline messages (XEP-0160), oldest first.
    async fn store_offline(&self, user: &str, stanza: &str, limit: usize) -> Result<OfflineStored>;
    /// Returns and deletes all stored messages.
    async fn take_offline(&self, user: &str) -> Result<Vec<String>>;
    async fn offline_count(&self, user: &str) -> Result<usize>;

    // vcard-temp (XEP-0054) and private XML storage (XEP-0049), as XML text.
    async fn vcard(&self, user: &str) -> Result<Option<String>>;
    async fn set_vcard(&self, user: &str, xml: &str) -> Result<()>;
    async fn private_data(&self, user: &str, namespace: &str) -> Result<Option<String>>;
    async fn set_private_data(&self, user: &str, namespace: &str, xml: &str) -> Result<()>;

    // Blocking (XEP-0191): JIDs as given by the client, sorted.
    async fn blocklist(&self, user: &str) -> Result<Vec<String>>;
    async fn block(&self, user: &str, jids: &[String]) -> Result<()>;
    /// Unblocks the given JIDs, or all when `jids` is empty.
    async fn unblock(&self, user: &str, jids: &[String]) -> Result<()>;

    // Durable component queues.
    /// Stores items in one transaction (group commit): when it returns, the
    /// accepted ones are on disk. Results are in the order of `items`.
    async fn enqueue(&self, items: &[NewQueueItem]) -> Result<Vec<Enqueued>>;
    /// Items of a queue with an id above `after`, oldest first.
    async fn queue_items(&self, queue: &str, after: i64, limit: usize) -> Result<Vec<QueueItem>>;
    /// Deletes acknowledged items.
    async fn queue_remove(&self, ids: &[i64]) -> Result<()>;
    /// Enqueues `add` and deletes `remove` in one transaction (one fsync
    /// for a group commit of both); a copy in `add` of an item in `remove`
    /// is `AlreadyQueued`.
    async fn queue_commit(&self, add: &[NewQueueItem], remove: &[i64]) -> Result<Vec<Enqueued>>;
    /// Every non-empty queue, sorted by name.
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>>;
}
