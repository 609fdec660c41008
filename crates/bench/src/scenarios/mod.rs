//! The scenarios, and what they share: waiting for the common start,
//! stanza ids that carry the event number, duplicate detection, and the
//! first errors worth showing.

pub mod chat;
pub mod idle;
pub mod login;
pub mod mqtt;
pub mod report;

use crate::client::{ClientError, Duplex, Incoming, Wake};
use crate::BenchError;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tributary_proto::error::escape;

/// Logins in flight at once while the clients of a run connect.
pub(crate) const LOGIN_CONCURRENCY: usize = 64;
/// Most stanzas written in one batch before reading again.
pub(crate) const MAX_BATCH: usize = 512;
/// Time between the last client being ready and the common start.
pub(crate) const START_DELAY: Duration = Duration::from_millis(200);
/// How long a client waits for its streams to close at the end.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The id of event `n` of run `run_id`.
pub(crate) fn stanza_id(run_id: u64, n: u64) -> String {
    format!("{run_id:x}-{n}")
}

/// The event number in an id made by [`stanza_id`] for this run.
pub(crate) fn parse_id(run_id: u64, id: &str) -> Option<u64> {
    let (run, n) = id.split_once('-')?;
    if u64::from_str_radix(run, 16).ok()? != run_id {
        return None;
    }
    n.parse().ok()
}

/// One bit per event: which have completed already.
pub(crate) struct Seen(Vec<AtomicU64>);

impl Seen {
    pub fn new(events: u64) -> Seen {
        let words = events.div_ceil(64) as usize;
        Seen((0..words).map(|_| AtomicU64::new(0)).collect())
    }

    /// Marks `n`; true the first time.
    pub fn mark(&self, n: u64) -> bool {
        let Some(word) = self.0.get((n / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (n % 64);
        word.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

/// The first few distinct errors of a run, to show the operator.
#[derive(Default)]
pub(crate) struct Errors(Mutex<Vec<String>>);

impl Errors {
    pub fn add(&self, e: impl std::fmt::Display) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let text = e.to_string();
        if v.len() < 5 && !v.contains(&text) {
            v.push(text);
        }
    }

    pub fn log(&self) {
        for e in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            tracing::warn!("bench: {e}");
        }
    }
}

/// Reads and discards what the server sends (answering pings and ack
/// requests) until the common start is announced. `None`: the run was
/// abandoned.
pub(crate) async fn until_start(
    d: &mut Duplex,
    start: &mut watch::Receiver<Option<Instant>>,
) -> Result<Option<Instant>, ClientError> {
    loop {
        if let Some(s) = *start.borrow_and_update() {
            return Ok(Some(s));
        }
        tokio::select! {
            changed = start.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
            }
            w = d.wait(None) => {
                if w? == Wake::Read {
                    while d.incoming()?.is_some() {}
                }
            }
        }
    }
}

/// Sends initial presence and waits (up to `limit`) until the server has
/// handled it: servers route chat messages to a bare JID only to available
/// resources. A ping to the server follows the presence; servers handle a
/// stream's stanzas in order, so its answer (result or error) means the
/// presence is done.
pub(crate) async fn go_online(
    d: &mut Duplex,
    domain: &str,
    limit: Duration,
) -> Result<(), ClientError> {
    d.send_stanza("<presence/>");
    d.send_stanza(&format!(
        "<iq type='get' id='bench-online' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
        escape(domain)
    ));
    let deadline = Instant::now() + limit;
    loop {
        if d.wait(Some(deadline)).await? == Wake::Timer {
            return Err(ClientError::Timeout("presence"));
        }
        while let Some(incoming) = d.incoming()? {
            if let Incoming::Stanza(el) = incoming {
                if el.name() == "iq" && el.attr("id") == Some("bench-online") {
                    return Ok(());
                }
            }
        }
    }
}

/// What a client task of a run is given: its number, and its lines to the
/// run's coordinator ([`Fleet`]).
pub(crate) struct Lines {
    pub k: u64,
    /// Bounds the logins in flight ([`LOGIN_CONCURRENCY`]).
    pub logins: Arc<Semaphore>,
    /// Logged in and ready (once), or why not.
    pub ready: mpsc::UnboundedSender<Result<(), BenchError>>,
    /// Done sending (once).
    pub done: mpsc::UnboundedSender<()>,
    /// The common start; closed when the run is abandoned.
    pub start: watch::Receiver<Option<Instant>>,
    /// Set when the run ends: stop reading and close.
    pub stop: watch::Receiver<bool>,
}

impl Lines {
    /// This client could not log in: that abandons the run.
    pub fn login_failed(&self, user: String, source: ClientError) {
        let _ = self.ready.send(Err(BenchError::Login { user, source }));
        let _ = self.done.send(());
    }
}

/// The coordinator's side of a run's clients: spawns them, waits for
/// their logins, announces the common start, and stops them.
pub(crate) struct Fleet {
    clients: u64,
    tasks: Vec<JoinHandle<()>>,
    ready: mpsc::UnboundedReceiver<Result<(), BenchError>>,
    done: mpsc::UnboundedReceiver<()>,
    start: watch::Sender<Option<Instant>>,
    stop: watch::Sender<bool>,
}

impl Fleet {
    /// Spawns `client` for each of `clients`.
    pub fn spawn<F, Fut>(clients: u64, client: F) -> Fleet
    where
        F: Fn(Lines) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (start, start_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready) = mpsc::unbounded_channel();
        let (done_tx, done) = mpsc::unbounded_channel();
        let logins = Arc::new(Semaphore::new(LOGIN_CONCURRENCY));
        let tasks = (0..clients)
            .map(|k| {
                tokio::spawn(client(Lines {
                    k,
                    logins: logins.clone(),
                    ready: ready_tx.clone(),
                    done: done_tx.clone(),
                    start: start_rx.clone(),
                    stop: stop_rx.clone(),
                }))
            })
            .collect();
        Fleet {
            clients,
            tasks,
            ready,
            done,
            start,
            stop,
        }
    }

    /// Waits until every client has logged in. The first failure (or a
    /// client gone without a word) abandons the run: every client is
    /// stopped and waited for, and the failure returned.
    pub async fn ready(mut self) -> Result<Fleet, BenchError> {
        let Err(failure) = all_ready(&mut self.ready, self.clients).await else {
            return Ok(self);
        };
        let Fleet {
            tasks, start, stop, ..
        } = self;
        let _ = stop.send(true);
        // Closing the start makes every client waiting for it close.
        drop(start);
        join_all(tasks).await?;
        Err(failure)
    }

    /// Announces the common start, [`START_DELAY`] from now.
    pub fn start(&self) -> Instant {
        let start = Instant::now() + START_DELAY;
        let _ = self.start.send(Some(start));
        start
    }

    /// Sleeps until every client is done sending, or `deadline`.
    pub async fn done_by(&mut self, deadline: Instant) {
        wait_signals(&mut self.done, self.clients, deadline).await;
    }

    /// Tells every client to stop, and waits for them.
    pub async fn stop(self) -> Result<(), BenchError> {
        let _ = self.stop.send(true);
        join_all(self.tasks).await.map(|_| ())
    }
}

/// Waits for every task; a panicked task is an error.
pub(crate) async fn join_all<T>(tasks: Vec<JoinHandle<T>>) -> Result<Vec<T>, BenchError> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(v) => out.push(v),
            Err(e) => failure = Some(BenchError::Task(e.to_string())),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Sleeps until every one of `expected` signals has come, or `deadline`.
pub(crate) async fn wait_signals(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    expected: u64,
    deadline: Instant,
) {
    let mut got = 0;
    while got < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(())) => got += 1,
            Ok(None) | Err(_) => return,
        }
    }
}

/// Waits for the login report of each of `clients`; the first failure
/// (or a client gone without one) is the run's error.
async fn all_ready(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<(), BenchError>>,
    clients: u64,
) -> Result<(), BenchError> {
    for _ in 0..clients {
        match rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(BenchError::Task("a client ended before logging in".into())),
        }
    }
    Ok(())
}

/// Re-checks `done` every few milliseconds until it holds or `deadline`
/// passes (for counters that other tasks advance).
pub(crate) async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_run_and_the_event() {
        let id = stanza_id(0xabc, 42);
        assert_eq!(parse_id(0xabc, &id), Some(42));
        assert_eq!(parse_id(0xabd, &id), None, "another run's stanza");
        assert_eq!(parse_id(0xabc, "abc"), None);
        assert_eq!(parse_id(0xabc, "abc-x"), None);
    }

    #[test]
    fn each_event_is_seen_once() {
        let seen = Seen::new(130);
        assert!(seen.mark(0));
        assert!(!seen.mark(0));
        assert!(seen.mark(129));
        assert!(!seen.mark(129));
        assert!(!seen.mark(1000), "outside the run");
    }
}
