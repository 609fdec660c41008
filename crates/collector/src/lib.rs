//! The collector: the library behind `tributary report`.
//!
//! A collector is an ordinary XMPP client that sends *reports* to a
//! processor's component domain and keeps a local durable *outbox* so a
//! device that is offline or crashes loses nothing:
//!
//! 1. every report is committed to the outbox (SQLite) before it is sent;
//! 2. it is sent over a stream-managed (XEP-0198) session; the server's
//!    `<a h/>` covers a stanza only once it sits in the durable queue, so
//!    the covered reports are marked *accepted*;
//! 3. the processor's XEP-0184 receipt marks a report *processed*.
//!
//! A report leaves the outbox when it reaches the state the caller waits
//! for ([`Wait`]). A lost link is resumed (XEP-0198) or replaced by a fresh
//! session, which sends again whatever the outbox still holds; the
//! processor is idempotent on (sender, id), and [`Summary`] counts every
//! report once however often it went out.
//!
//! Wire format of one report:
//!
//! ```xml
//! <message to='collect.localhost' id='R-0001'>
//!   <report xmlns='urn:tributary:report:0' id='R-0001' kind='meter.reading' at='2026-11-25T10:00:00Z'>
//!     <json xmlns='urn:xmpp:json:0'>{"meter":"A-17","kwh":1234.5}</json>
//!   </report>
//!   <request xmlns='urn:xmpp:receipts'/>
//! </message>
//! ```

mod cli;
mod engine;
pub mod nego;
mod outbox;
mod report;
pub mod tls;
mod xmpp;

pub use cli::{main_with, PresenceArgs, ReportArgs, ReportCommand, ShowArg, WaitArg};
pub use outbox::{Outbox, OutboxCounts};
pub use report::{Report, JSON_NS, RECEIPTS_NS, REPORT_NS};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Until when a report stays in the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wait {
    /// Until the processor confirmed it (XEP-0184 receipt).
    #[default]
    Processed,
    /// Until the server stored it durably (XEP-0198 ack).
    Accepted,
}

/// Everything a collector run needs.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Bare JID to log in as, e.g. `alice@localhost`.
    pub jid: String,
    pub password: String,
    /// `host:port` of the server's STARTTLS listener.
    pub server: String,
    /// The processor's component domain.
    pub to: String,
    /// Kind given to reports that do not carry their own.
    pub kind: String,
    /// The outbox database file (created if missing).
    pub outbox: PathBuf,
    pub wait: Wait,
    /// How long to keep trying to (re)connect before giving up.
    pub retry_for: Duration,
    /// With [`Wait::Processed`]: how long to wait without any new receipt,
    /// once everything was accepted, before returning with reports still
    /// waiting in the outbox.
    pub wait_timeout: Duration,
    /// With [`Wait::Processed`]: how long to wait without any new receipt
    /// before sending the accepted reports still waiting for one again
    /// (once per session), in case their receipts were lost with a
    /// crashed server. Copies are harmless: see docs/protocol.md.
    pub reconfirm_after: Duration,
    /// PEM file with the certificates to trust (for a self-signed server
    /// certificate: `<data_dir>/tls/cert.pem`). Without it, the system's
    /// roots are used.
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate. For tests and first steps only: the
    /// password then goes to whoever answers.
    pub insecure_accept_any: bool,
    /// Resource to bind; a random `collector-…` one by default.
    pub resource: Option<String>,
    /// Most reports sent and not yet acknowledged by the server.
    pub window: usize,
}

impl CollectorConfig {
    /// A configuration with the defaults: server `<domain of jid>:5222`,
    /// to `collect.localhost`, kind `report`, outbox
    /// `tributary-outbox.sqlite`, wait for processing, retry for 2 minutes.
    pub fn new(jid: impl Into<String>, password: impl Into<String>) -> CollectorConfig {
        let jid = jid.into();
        let server = match jid.split_once('@') {
            Some((_, rest)) => format!("{}:5222", rest.split('/').next().unwrap_or(rest)),
            None => format!("{}:5222", jid.split('/').next().unwrap_or(&jid)),
        };
        CollectorConfig {
            jid,
            password: password.into(),
            server,
            to: "collect.localhost".into(),
            kind: "report".into(),
            outbox: PathBuf::from("tributary-outbox.sqlite"),
            wait: Wait::Processed,
            retry_for: Duration::from_secs(120),
            wait_timeout: Duration::from_secs(30),
            reconfirm_after: Duration::from_secs(10),
            tls_ca: None,
            insecure_accept_any: false,
            resource: None,
            window: 100,
        }
    }
}

/// What one run did. Each report is counted once, however often it was
/// sent (after a reconnection) or confirmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Reports written to the server in this run.
    pub sent: u64,
    /// Reports the server acknowledged as durably stored in this run.
    pub accepted: u64,
    /// Reports the processor confirmed in this run.
    pub processed: u64,
    /// Reports refused with an error (by the server or the processor) in
    /// this run. Refusals of type `wait` stay queued for the next run;
    /// others stay in the outbox marked `failed` and are not sent again.
    pub failed: u64,
    /// Receipts that came again for a report already confirmed in this
    /// run (ignored; the server and processor are built to send none).
    pub duplicate_receipts: u64,
    /// Reports the outbox still holds at the end (queued, accepted but not
    /// yet processed, or failed).
    pub remaining: u64,
}

impl Summary {
    /// Whether the outbox was emptied.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {}, accepted {}, processed {}, failed {}, left in outbox {}",
            self.sent, self.accepted, self.processed, self.failed, self.remaining
        )?;
        if self.duplicate_receipts > 0 {
            write!(f, ", duplicate receipts {}", self.duplicate_receipts)?;
        }
        Ok(())
    }
}

/// Presence `<show/>` values (RFC 6121 4.7.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Chat,
    Away,
    Xa,
    Dnd,
}

impl Show {
    pub fn as_str(self) -> &'static str {
        match self {
            Show::Chat => "chat",
            Show::Away => "away",
            Show::Xa => "xa",
            Show::Dnd => "dnd",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid report: {0}")]
    InvalidReport(String),
    #[error("outbox {path}: {source}")]
    Outbox {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server cannot serve this collector: {0}")]
    Unsupported(String),
    /// No usable connection for `retry_for`; what was not accepted is
    /// still in the outbox.
    #[error("gave up after {secs} s without a connection ({last}); {summary}")]
    GaveUp {
        secs: u64,
        last: String,
        summary: Summary,
    },
}

/// Sends the given reports (after committing them to the outbox) and
/// whatever the outbox still held from earlier runs; returns once the
/// outbox is empty or, with [`Wait::Processed`], once no receipt came for
/// `wait_timeout`.
pub async fn run<I>(config: &CollectorConfig, reports: I) -> Result<Summary, Error>
where
    I: IntoIterator,
    I::Item: Into<Report>,
{
    let reports: Vec<Report> = reports.into_iter().map(Into::into).collect();
    engine::run(config, reports, None).await
}

/// [`run`], publishing the counts to `watch` as they change (`remaining`
/// then counts what is still to be accepted or confirmed).
pub async fn run_watched<I>(
    config: &CollectorConfig,
    reports: I,
    watch: tokio::sync::watch::Sender<Summary>,
) -> Result<Summary, Error>
where
    I: IntoIterator,
    I::Item: Into<Report>,
{
    let reports: Vec<Report> = reports.into_iter().map(Into::into).collect();
    engine::run(config, reports, Some(watch)).await
}

/// Logs in, sends `<presence><show/><status/></presence>`, waits until the
/// server has handled it, and closes the stream.
pub async fn send_presence(
    config: &CollectorConfig,
    show: Option<Show>,
    status: Option<&str>,
    priority: Option<i8>,
) -> Result<(), Error> {
    engine::send_presence(config, show, status, priority).await
}
