//! Processors: services that receive reports and presence from a Tributary
//! node over a long-lived XEP-0114 component connection, commit them, and
//! confirm back to the reporter.
//!
//! Implement [`Processor`] and hand it to [`run`]: the connection,
//! reconnection with back-off, stream-management acks and receipts are
//! handled here. A stanza is acknowledged to the node only after the
//! processor committed it, so a crash loses nothing: the node redelivers
//! whatever was not acknowledged. [`sql::SqlProcessor`] is the reference
//! implementation behind `tributary process`.

pub mod http;
mod link;
pub mod report;
pub mod sql;

pub use link::{run, LinkConfig, LinkStats, DEFAULT_COMMIT_DELAY};
pub use report::{Item, Outcome, PresenceUpdate, Report};

/// What a processor does with each batch of items.
#[async_trait::async_trait]
pub trait Processor: Send + 'static {
    /// Commits a batch (one transaction is the point of batching). Must be
    /// idempotent: the same report (sender, id) may come again after a
    /// reconnect or a crash. Returns one outcome per item, in order;
    /// `Err` means nothing was committed and the batch will come again.
    async fn process(&mut self, batch: &[Item]) -> anyhow::Result<Vec<Outcome>>;
}
