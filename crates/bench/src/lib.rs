//! `tributary bench`: an XMPP load generator that drives any server
//! (Tributary, ejabberd, Prosody) the same way, for side-by-side numbers.
//!
//! The offered load is an open-loop schedule fixed in advance
//! ([`schedule`]): each stanza carries its *scheduled* send time and its
//! latency is measured from there, so a slow server cannot slow the
//! generator down and hide its own latency (no coordinated omission).
//! Clients are plain XMPP clients ([`client`]): STARTTLS, SASL, bind,
//! optionally XEP-0198. Results go to a table and JSON Lines ([`stats`]).
//! The `mqtt` scenario drives an MQTT broker (Mosquitto) on the same
//! schedule, with rumqttc over the same rustls configuration.

pub mod cli;
pub mod client;
pub mod plot;
mod scenarios;
pub mod schedule;
pub mod stats;

pub use cli::{BenchArgs, Scenario};
pub use stats::RunReport;

use client::{ClientConfig, ClientError, SaltCache, Trust};
use schedule::{Schedule, ScheduleError};
use std::sync::Arc;
use std::time::Duration;

/// Grace after the end of the schedule for answers still on their way;
/// what has not arrived by then is lost.
pub const GRACE: Duration = Duration::from_secs(5);

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{user}: {source}")]
    Login { user: String, source: ClientError },
    #[error("cannot write {path}: {source}")]
    Output {
        path: String,
        source: std::io::Error,
    },
    #[error("a client task failed: {0}")]
    Task(String),
}

/// What every scenario needs.
pub(crate) struct Ctx {
    pub args: BenchArgs,
    pub client: ClientConfig,
    pub schedule: Schedule,
    /// Tags this run's stanzas, so that leftovers of an earlier run (from
    /// offline storage, say) are not taken for ours.
    pub run_id: u64,
}

impl Ctx {
    /// Local part of client `i`'s account.
    pub fn user(&self, i: u64) -> String {
        format!("{}{i}", self.args.user_prefix)
    }

    /// Bare JID of client `i`.
    pub fn bare(&self, i: u64) -> String {
        format!("{}{i}@{}", self.args.user_prefix, self.args.domain)
    }

    /// Elapsed time of an instant since `start`, in nanoseconds.
    pub fn ns_since(start: tokio::time::Instant, t: tokio::time::Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The report skeleton for this run.
    pub fn report(&self) -> RunReport {
        let a = &self.args;
        RunReport {
            timestamp: stats::timestamp(),
            label: a.label.clone().unwrap_or_default(),
            scenario: a.scenario.name().into(),
            server: a.server.clone(),
            domain: a.domain.clone(),
            mechanism: a.mechanism.name().into(),
            sm: a.sm,
            clients: a.clients,
            offered_rate: a.rate,
            duration_s: a.duration,
            warmup_s: a.warmup,
            achieved_rate: 0.0,
            main: stats::Outcome::default(),
            accepted: None,
            duplicates: 0,
            connection_errors: 0,
            server_pid: a.server_pid,
            resources: stats::Resources::default(),
            rss_per_session_kb: None,
            fill_s: None,
            drain_s: None,
        }
    }
}

/// Runs one scenario and returns what it measured (nothing is printed).
pub async fn run(args: &BenchArgs) -> Result<RunReport, BenchError> {
    let schedule = Schedule::from_secs(args.clients, args.rate, args.warmup, args.duration)?;
    if args.server.is_empty() {
        return Err(BenchError::Usage("--server HOST:PORT is required".into()));
    }
    let trust = match (&args.ca, args.insecure) {
        (Some(path), _) => Trust::Ca(path),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::System,
    };
    let client = ClientConfig {
        server: args.server.clone(),
        domain: args.domain.to_ascii_lowercase(),
        password: args.password.clone(),
        mechanism: args.mechanism,
        tls: client::tls_config(trust)?,
        sm: args.sm,
        salts: SaltCache::default(),
    };
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        client,
        schedule,
        run_id: rand::random(),
    });
    match args.scenario {
        Scenario::Chat => scenarios::chat::run(ctx).await,
        Scenario::Report => scenarios::report::run(ctx).await,
        Scenario::Login => scenarios::login::run(ctx).await,
        Scenario::Idle => scenarios::idle::run(ctx).await,
        Scenario::Mqtt => scenarios::mqtt::run(ctx).await,
        Scenario::Drain => scenarios::report::run(ctx).await,
    }
}

/// `tributary bench`: runs, prints the table, appends the JSON line.
pub async fn main_with(args: BenchArgs) -> Result<RunReport, BenchError> {
    let report = run(&args).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report
            .append_json(path)
            .map_err(|source| BenchError::Output {
                path: path.display().to_string(),
                source,
            })?;
    }
    Ok(report)
}
