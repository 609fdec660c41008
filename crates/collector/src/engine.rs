//! The sending loop: outbox in, reports out over a stream-managed session,
//! acknowledgements and receipts back into the outbox; reconnection with
//! resumption when the link drops.

use crate::nego;
use crate::outbox::Outbox;
use crate::report::{Stored, RECEIPTS_NS};
use crate::xmpp::{self, ConnectError, Established, Link, Params};
use crate::{CollectorConfig, Error, Report, Show, Summary, Wait};
use minidom::Element;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tributary_proto::error::StanzaErrorCondition;
use tributary_proto::jid::Jid;
use tributary_proto::ns;
use tributary_proto::sm::{self, SmState};
use tributary_proto::stanza::{self, StanzaKind};
use tributary_proto::xml::Frame;

/// Silence after which we ask the server for an ack (a probe).
const PROBE_AFTER: Duration = Duration::from_secs(15);
/// Silence after a probe after which the link counts as dead.
const DEAD_AFTER: Duration = Duration::from_secs(20);
/// Back-off between connection attempts: doubling from the first, capped.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// One connection attempt never takes longer than this.
const ATTEMPT_MAX: Duration = Duration::from_secs(60);
const PING_NS: &str = "urn:xmpp:ping";
/// Most frames handled before their receipts are committed.
const BATCH: usize = 512;

/// Why a session ended.
enum End {
    /// Nothing more to do.
    Done,
    /// The link is gone; try again.
    Lost(String),
}

pub async fn run(
    config: &CollectorConfig,
    reports: Vec<Report>,
    watch: Option<tokio::sync::watch::Sender<Summary>>,
) -> Result<Summary, Error> {
    if config.window == 0 {
        return Err(Error::Config("window must be at least 1".into()));
    }
    let to = Jid::new(&config.to)
        .map_err(|e| Error::Config(format!("--to {:?}: {e}", config.to)))?
        .to_bare();
    let stored = reports
        .into_iter()
        .map(|r| Stored::prepare(r, &config.kind))
        .collect::<Result<Vec<_>, _>>()?;
    let params = Params::new(config)?;
    let outbox = Outbox::open(&config.outbox).await?;
    let result = async {
        let added = outbox.insert(&stored).await?;
        if added < stored.len() as u64 {
            tracing::info!(
                "{} report(s) were already in the outbox",
                stored.len() as u64 - added
            );
        }
        if config.wait == Wait::Accepted {
            let gone = outbox.remove_accepted().await?;
            if gone > 0 {
                tracing::info!("{gone} already accepted report(s) left the outbox");
            }
        }
        let mut engine = Engine {
            config,
            watch,
            to,
            params,
            outbox: outbox.clone(),
            sm: None,
            unacked_ids: VecDeque::new(),
            pending: VecDeque::new(),
            awaiting: HashSet::new(),
            sent: HashSet::new(),
            accepted: HashSet::new(),
            processed: HashSet::new(),
            failed: HashSet::new(),
            held: HashSet::new(),
            receipts: Vec::new(),
            duplicate_receipts: 0,
            reconfirmed: false,
            last_progress: Instant::now(),
            progress: 0,
        };
        engine.run().await
    }
    .await;
    let result = match result {
        Ok(mut summary) => match outbox.counts().await {
            Ok(c) => {
                summary.remaining = c.total();
                Ok(summary)
            }
            Err(e) => Err(e),
        },
        Err(Error::GaveUp {
            secs,
            last,
            mut summary,
        }) => {
            if let Ok(c) = outbox.counts().await {
                summary.remaining = c.total();
            }
            Err(Error::GaveUp {
                secs,
                last,
                summary,
            })
        }
        Err(e) => Err(e),
    };
    outbox.close().await;
    result
}

struct Engine<'a> {
    config: &'a CollectorConfig,
    /// Where progress goes while the run lasts (a progress bar).
    watch: Option<tokio::sync::watch::Sender<Summary>>,
    /// Where receipts and errors for our reports come from.
    to: tributary_proto::jid::BareJid,
    params: Params,
    outbox: Outbox,
    /// XEP-0198 state of the current (or last) session; kept across a
    /// lost link to resume it.
    sm: Option<SmState>,
    /// Report id of each stanza in `sm`'s unacknowledged queue (`None`
    /// for our other stanzas), oldest first.
    unacked_ids: VecDeque<Option<String>>,
    /// Reports to send in this session, oldest first.
    pending: VecDeque<Stored>,
    /// Accepted, waiting for the processor's receipt.
    awaiting: HashSet<String>,
    // What this run did, by report id (each counted once).
    sent: HashSet<String>,
    accepted: HashSet<String>,
    processed: HashSet<String>,
    failed: HashSet<String>,
    /// Refused for now (error type `wait`): not sent again in this run.
    held: HashSet<String>,
    /// Receipts read and not yet committed to the outbox.
    receipts: Vec<String>,
    /// Receipts for reports already confirmed in this run.
    duplicate_receipts: u64,
    /// Whether this session already sent the awaiting reports again.
    reconfirmed: bool,
    /// Last acceptance or receipt.
    last_progress: Instant,
    /// Acknowledgements and receipts seen, ever.
    progress: u64,
}

impl Engine<'_> {
    /// Current counts for the watcher; `remaining` is what is still to be
    /// accepted or confirmed.
    fn publish(&self) {
        if let Some(w) = &self.watch {
            let mut s = self.summary();
            s.remaining =
                (self.pending.len() + self.unacked_reports() + self.awaiting.len()) as u64;
            w.send_if_modified(|old| {
                let changed = *old != s;
                *old = s;
                changed
            });
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            sent: self.sent.len() as u64,
            accepted: self.accepted.len() as u64,
            processed: self.processed.len() as u64,
            failed: self.failed.len() as u64,
            duplicate_receipts: self.duplicate_receipts,
            remaining: 0,
        }
    }

    async fn run(&mut self) -> Result<Summary, Error> {
        self.reload().await?;
        if self.done() {
            return Ok(self.summary());
        }
        // Start of the current stretch without a working session.
        let mut failing_since = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let left = self
                .config
                .retry_for
                .saturating_sub(failing_since.elapsed());
            let resume = self
                .sm
                .as_ref()
                .filter(|s| s.resumable)
                .map(|s| (s.id.clone(), s.handled()));
            let budget = left.clamp(Duration::from_secs(2), ATTEMPT_MAX);
            let outcome = tokio::time::timeout(budget, xmpp::connect(&self.params, resume, true))
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectError::Retry("connection attempt timed out".into()))
                });
            let reason = match outcome {
                Ok((mut link, est)) => {
                    attempt = 0;
                    let progress_before = self.progress;
                    match self.session(&mut link, est).await? {
                        End::Done => {
                            let handled = self.sm.as_ref().map(SmState::handled);
                            link.close(handled).await;
                            return Ok(self.summary());
                        }
                        End::Lost(reason) => {
                            tracing::warn!("connection lost: {reason}; reconnecting");
                            // A link that drops before anything got through
                            // does not restart the clock.
                            if self.progress != progress_before {
                                failing_since = Instant::now();
                            }
                            reason
                        }
                    }
                }
                Err(ConnectError::Fatal(e)) => return Err(e),
                Err(ConnectError::Retry(reason)) => {
                    tracing::info!("cannot connect: {reason}");
                    reason
                }
            };
            let left = self
                .config
                .retry_for
                .saturating_sub(failing_since.elapsed());
            if left.is_zero() {
                return Err(Error::GaveUp {
                    secs: self.config.retry_for.as_secs(),
                    last: reason,
                    summary: self.summary(),
                });
            }
            tokio::time::sleep(backoff(attempt).min(left)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// Reads what is left to do from the outbox: what the server has not
    /// accepted goes out (again: whatever was in flight on an old session
    /// may be lost); what it accepted waits for its receipt.
    async fn reload(&mut self) -> Result<(), Error> {
        self.pending = self
            .outbox
            .load(false)
            .await?
            .into_iter()
            .filter(|r| !self.held.contains(&r.id))
            .collect();
        self.awaiting = if self.config.wait == Wait::Processed {
            self.outbox.accepted_ids().await?.into_iter().collect()
        } else {
            HashSet::new()
        };
        self.awaiting.retain(|id| !self.held.contains(id));
        self.reconfirmed = false;
        Ok(())
    }

    /// Nothing came for `reconfirm_after` while reports wait for their
    /// receipts: a receipt may have been lost with the server (it keeps
    /// them in memory only), so those reports go out again. The server
    /// merges a copy with a report it still has queued, and the processor
    /// answers a report it already committed again, without a new row.
    async fn reconfirm(&mut self) -> Result<(), Error> {
        self.reconfirmed = true;
        let again: Vec<Stored> = self
            .outbox
            .load(true)
            .await?
            .into_iter()
            .filter(|r| self.awaiting.contains(&r.id))
            .collect();
        if !again.is_empty() {
            tracing::info!(
                "no receipt for {:?}: sending {} accepted report(s) again",
                self.config.reconfirm_after,
                again.len()
            );
            self.pending.extend(again);
        }
        Ok(())
    }

    fn unacked_reports(&self) -> usize {
        self.unacked_ids.iter().filter(|i| i.is_some()).count()
    }

    fn done(&self) -> bool {
        self.pending.is_empty()
            && self.unacked_reports() == 0
            && (self.config.wait == Wait::Accepted || self.awaiting.is_empty())
    }

    /// Sets up a new or resumed session, then runs it.
    async fn session(&mut self, link: &mut Link, est: Established) -> Result<End, Error> {
        match est {
            Established::Resumed { h } => {
                tracing::info!("session resumed");
                if let Err(end) = self.on_ack(h).await? {
                    return Ok(end);
                }
                // What the server did not get goes out again, in order.
                let Some(sm) = self.sm.as_mut() else {
                    return Ok(End::Lost("resumed without a session".into()));
                };
                let again = sm.take_unacked();
                let ids: Vec<Option<String>> = self.unacked_ids.drain(..).collect();
                let mut buf = String::new();
                for (el, id) in again.into_iter().zip(ids) {
                    self.queue_stanza(&mut buf, el, id)?;
                }
                if !buf.is_empty() {
                    buf.push_str(&format!("<r xmlns='{}'/>", sm::NS));
                    if let Err(e) = link.write(buf.as_bytes()).await {
                        return Ok(End::Lost(e));
                    }
                }
            }
            Established::Fresh {
                jid,
                sm,
                failed_h,
                early,
            } => {
                tracing::info!(%jid, "session started");
                // Receipts routed to us before stream management began.
                for el in early.iter().filter(|e| e.name() == "message") {
                    self.on_message(el).await?;
                }
                self.flush_receipts().await?;
                if let Some(h) = failed_h {
                    // The server still knew how much of the old session
                    // it handled: those are accepted.
                    if self.sm.is_some() {
                        let _ = self.on_ack(h).await?;
                    }
                }
                let Some(enabled) = sm else {
                    return Err(Error::Unsupported(
                        "the server does not grant stream management (XEP-0198), so it cannot \
                         confirm acceptance"
                            .into(),
                    ));
                };
                self.sm = Some(SmState::new(
                    enabled.id,
                    enabled.resume,
                    self.config.window.saturating_mul(4).saturating_add(1024),
                ));
                self.unacked_ids.clear();
                self.reload().await?;
            }
        }
        self.drive(link).await
    }

    /// The session loop.
    async fn drive(&mut self, link: &mut Link) -> Result<End, Error> {
        self.last_progress = Instant::now();
        let mut last_heard = Instant::now();
        let mut probe_sent: Option<Instant> = None;
        loop {
            if let Err(e) = self.fill(link).await? {
                return Ok(e);
            }
            self.publish();
            if self.done() {
                return Ok(End::Done);
            }
            let probe_at = match probe_sent {
                Some(at) => at + DEAD_AFTER,
                None => last_heard + PROBE_AFTER,
            };
            let idle = self.pending.is_empty() && self.unacked_reports() == 0;
            let give_up_at = idle.then(|| self.last_progress + self.config.wait_timeout);
            let reconfirm_at = (idle && !self.reconfirmed && !self.awaiting.is_empty())
                .then(|| self.last_progress + self.config.reconfirm_after);
            tokio::select! {
                frame = link.recv() => {
                    let frame = match frame {
                        Ok(f) => f,
                        Err(e) => return Ok(End::Lost(e)),
                    };
                    last_heard = Instant::now();
                    probe_sent = None;
                    // Take whatever else is already here, so receipts
                    // commit in one transaction.
                    let mut next = Some(Ok(frame));
                    let mut taken = 0;
                    while let Some(frame) = next.take() {
                        let frame = match frame {
                            Ok(f) => f,
                            Err(e) => {
                                self.flush_receipts().await?;
                                return Ok(End::Lost(e));
                            }
                        };
                        if let Err(end) = self.on_frame(link, frame).await? {
                            self.flush_receipts().await?;
                            return Ok(end);
                        }
                        taken += 1;
                        if taken < BATCH {
                            next = link.try_recv();
                        }
                    }
                    self.flush_receipts().await?;
                }
                _ = tokio::time::sleep_until(probe_at) => {
                    if probe_sent.is_some() {
                        return Ok(End::Lost("the server stopped answering".into()));
                    }
                    if let Err(e) = link.write(format!("<r xmlns='{}'/>", sm::NS).as_bytes()).await {
                        return Ok(End::Lost(e));
                    }
                    probe_sent = Some(Instant::now());
                }
                _ = sleep_until_opt(reconfirm_at) => self.reconfirm().await?,
                _ = sleep_until_opt(give_up_at) => {
                    tracing::warn!(
                        "no receipt for {:?}; {} report(s) stay in the outbox as accepted",
                        self.config.wait_timeout,
                        self.awaiting.len()
                    );
                    return Ok(End::Done);
                }
            }
        }
    }

    /// Appends a stanza to `buf` and records it for acknowledgement.
    fn queue_stanza(
        &mut self,
        buf: &mut String,
        el: Element,
        id: Option<String>,
    ) -> Result<(), Error> {
        buf.push_str(&stanza::to_string(&el));
        let Some(sm) = self.sm.as_mut() else {
            return Err(Error::Unsupported("no stream management".into()));
        };
        sm.on_send(Some(el))
            .map_err(|e| Error::Unsupported(format!("stream management: {e}")))?;
        if let Some(id) = &id {
            self.sent.insert(id.clone());
        }
        self.unacked_ids.push_back(id);
        Ok(())
    }

    /// Sends pending reports while the window has room, then asks for an
    /// ack covering them.
    async fn fill(&mut self, link: &mut Link) -> Result<Result<(), End>, Error> {
        let mut buf = String::new();
        while self.unacked_reports() < self.config.window {
            let Some(r) = self.pending.pop_front() else {
                break;
            };
            if self.processed.contains(&r.id)
                || self.failed.contains(&r.id)
                || self.held.contains(&r.id)
            {
                continue;
            }
            let el = r.stanza(self.to.as_str());
            self.queue_stanza(&mut buf, el, Some(r.id))?;
        }
        if buf.is_empty() {
            return Ok(Ok(()));
        }
        buf.push_str(&format!("<r xmlns='{}'/>", sm::NS));
        Ok(link.write(buf.as_bytes()).await.map_err(End::Lost))
    }

    async fn on_frame(&mut self, link: &mut Link, frame: Frame) -> Result<Result<(), End>, Error> {
        let el = match frame {
            Frame::Element(el) => el,
            Frame::StreamClose => return Ok(Err(End::Lost("the server closed the stream".into()))),
            Frame::StreamOpen(_) | Frame::Whitespace => return Ok(Ok(())),
        };
        if let Some(err) = nego::stream_error(&el) {
            return Ok(Err(End::Lost(err)));
        }
        if el.has_ns(sm::NS) {
            return match el.name() {
                "a" => match sm::parse_h(&el) {
                    Some(h) => self.on_ack(h).await,
                    None => Ok(Err(End::Lost("ack without a valid h".into()))),
                },
                "r" => {
                    // What we count as handled must be committed first.
                    self.flush_receipts().await?;
                    let h = self.sm.as_ref().map(SmState::handled).unwrap_or(0);
                    let a = format!("<a xmlns='{}' h='{h}'/>", sm::NS);
                    Ok(link.write(a.as_bytes()).await.map_err(End::Lost))
                }
                _ => Ok(Ok(())),
            };
        }
        let mut reply = None;
        match StanzaKind::of(&el, ns::CLIENT) {
            Some(StanzaKind::Message) => self.on_message(&el).await?,
            Some(StanzaKind::Iq) => {
                if matches!(stanza::stanza_type(&el), Some("get" | "set")) {
                    reply = Some(if el.has_child("ping", PING_NS) {
                        stanza::iq_result(&el, None)
                    } else {
                        stanza::error_reply(&el, StanzaErrorCondition::ServiceUnavailable, None)
                    });
                }
            }
            Some(StanzaKind::Presence) | None => {}
        }
        if StanzaKind::of(&el, ns::CLIENT).is_some() {
            if let Some(sm) = self.sm.as_mut() {
                sm.handled_one();
            }
        }
        if let Some(reply) = reply {
            // Our replies carry our full JID implicitly; the server stamps it.
            let mut reply = reply;
            stanza::remove_attr(&mut reply, "from");
            let mut buf = String::new();
            self.queue_stanza(&mut buf, reply, None)?;
            return Ok(link.write(buf.as_bytes()).await.map_err(End::Lost));
        }
        Ok(Ok(()))
    }

    /// The server handled our stanzas up to `h`.
    async fn on_ack(&mut self, h: u32) -> Result<Result<(), End>, Error> {
        let Some(sm) = self.sm.as_mut() else {
            return Ok(Ok(()));
        };
        let newly = match sm.on_ack(h) {
            Ok(n) => n,
            Err(e) => {
                // Our count and the server's disagree: start over with a
                // fresh session, which resends what is not accepted.
                self.sm = None;
                self.unacked_ids.clear();
                return Ok(Err(End::Lost(format!("bad acknowledgement: {e}"))));
            }
        };
        let ids: Vec<String> = self
            .unacked_ids
            .drain(..newly.min(self.unacked_ids.len()))
            .flatten()
            .filter(|id| !self.failed.contains(id) && !self.held.contains(id))
            .collect();
        if ids.is_empty() {
            return Ok(Ok(()));
        }
        match self.config.wait {
            Wait::Processed => {
                self.outbox.mark_accepted(&ids).await?;
                for id in ids {
                    if !self.processed.contains(&id) {
                        self.awaiting.insert(id.clone());
                    }
                    self.accepted.insert(id);
                }
            }
            Wait::Accepted => {
                self.outbox.remove(&ids).await?;
                self.accepted.extend(ids);
            }
        }
        self.last_progress = Instant::now();
        self.progress += 1;
        Ok(Ok(()))
    }

    /// Whether `el` comes from the processor's address.
    fn sent_by_processor(&self, el: &Element) -> bool {
        stanza::from(el)
            .and_then(|f| Jid::new(f).ok())
            .is_some_and(|j| j.to_bare() == self.to)
    }

    async fn on_message(&mut self, el: &Element) -> Result<(), Error> {
        if !self.sent_by_processor(el) {
            tracing::debug!("ignoring a message from {:?}", stanza::from(el));
            return Ok(());
        }
        if stanza::stanza_type(el) == Some("error") {
            let Some(id) = stanza::id(el).map(str::to_owned) else {
                return Ok(());
            };
            return self.on_refused(&id, el).await;
        }
        for received in el.children().filter(|c| c.is("received", RECEIPTS_NS)) {
            if let Some(id) = received.attr("id") {
                if self.processed.contains(id) {
                    self.duplicate_receipts += 1;
                } else if !self.failed.contains(id) {
                    self.receipts.push(id.to_owned());
                }
            }
        }
        Ok(())
    }

    /// Commits the receipts read so far in one transaction.
    async fn flush_receipts(&mut self) -> Result<(), Error> {
        if self.receipts.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.receipts);
        let removed: HashSet<String> = self.outbox.remove(&ids).await?.into_iter().collect();
        for id in ids {
            if self.processed.contains(&id) {
                self.duplicate_receipts += 1;
                continue;
            }
            if !removed.contains(&id) && !self.sent.contains(&id) {
                tracing::debug!(%id, "receipt for a report this outbox does not know");
                continue;
            }
            self.awaiting.remove(&id);
            self.accepted.insert(id.clone());
            self.processed.insert(id);
            self.last_progress = Instant::now();
            self.progress += 1;
        }
        Ok(())
    }

    /// An error answer to one of our reports.
    async fn on_refused(&mut self, id: &str, el: &Element) -> Result<(), Error> {
        if !self.sent.contains(id) && !self.outbox.contains(id).await? {
            return Ok(());
        }
        let error = el.get_child("error", ns::CLIENT);
        let kind = error.and_then(|e| e.attr("type")).unwrap_or("cancel");
        let condition = error
            .and_then(|e| {
                e.children()
                    .find(|c| c.ns() == ns::STANZAS_ERR && c.name() != "text")
            })
            .map(|c| c.name().to_owned())
            .unwrap_or_else(|| "undefined-condition".into());
        let text = error
            .and_then(|e| e.get_child("text", ns::STANZAS_ERR))
            .map(|t| format!(": {}", t.text()))
            .unwrap_or_default();
        let what = format!("{condition}{text}");
        if kind == "wait" {
            tracing::warn!(%id, "report refused for now ({what}); it stays queued for a later run");
            self.held.insert(id.to_owned());
        } else {
            tracing::error!(%id, "report refused ({what}); kept in the outbox as failed");
            self.outbox.mark_failed(id, &what).await?;
        }
        self.failed.insert(id.to_owned());
        self.awaiting.remove(id);
        Ok(())
    }
}

/// Doubling back-off from `BACKOFF_FIRST`, capped at `BACKOFF_MAX`, with
/// the upper half randomised so that many devices do not reconnect in step.
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub async fn send_presence(
    config: &CollectorConfig,
    show: Option<Show>,
    status: Option<&str>,
    priority: Option<i8>,
) -> Result<(), Error> {
    let params = Params::new(config)?;
    let mut presence = Element::bare("presence", ns::CLIENT);
    if let Some(show) = show {
        presence.append_child(stanza::text_element("show", ns::CLIENT, show.as_str()));
    }
    if let Some(status) = status {
        presence.append_child(stanza::text_element("status", ns::CLIENT, status));
    }
    if let Some(p) = priority {
        presence.append_child(stanza::text_element("priority", ns::CLIENT, &p.to_string()));
    }
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let left = config.retry_for.saturating_sub(started.elapsed());
        let budget = left.clamp(Duration::from_secs(2), ATTEMPT_MAX);
        let outcome = tokio::time::timeout(budget, async {
            let (mut link, est) = xmpp::connect(&params, None, true).await?;
            let with_sm = matches!(est, Established::Fresh { sm: Some(_), .. });
            presence_once(&mut link, &presence, with_sm)
                .await
                .map_err(ConnectError::Retry)?;
            Ok::<_, ConnectError>(link)
        })
        .await
        .unwrap_or_else(|_| Err(ConnectError::Retry("timed out".into())));
        let reason = match outcome {
            Ok(link) => {
                link.close(None).await;
                return Ok(());
            }
            Err(ConnectError::Fatal(e)) => return Err(e),
            Err(ConnectError::Retry(reason)) => reason,
        };
        let left = config.retry_for.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(Error::GaveUp {
                secs: config.retry_for.as_secs(),
                last: reason,
                summary: Summary::default(),
            });
        }
        tracing::info!("presence not sent: {reason}; retrying");
        tokio::time::sleep(backoff(attempt).min(left)).await;
        attempt += 1;
    }
}

/// Sends the presence; with stream management, waits until the server
/// says it handled it.
async fn presence_once(link: &mut Link, presence: &Element, with_sm: bool) -> Result<(), String> {
    let mut out = stanza::to_string(presence);
    if !with_sm {
        return link.write(out.as_bytes()).await;
    }
    out.push_str(&format!("<r xmlns='{}'/>", sm::NS));
    link.write(out.as_bytes()).await?;
    let mut handled: u32 = 0;
    loop {
        let el = match link.recv().await? {
            Frame::Element(el) => el,
            Frame::StreamClose => return Err("the server closed the stream".into()),
            _ => continue,
        };
        if let Some(err) = nego::stream_error(&el) {
            return Err(err);
        }
        if el.is("a", sm::NS) {
            if sm::parse_h(&el).is_some_and(|h| h >= 1) {
                return Ok(());
            }
        } else if el.is("r", sm::NS) {
            let a = format!("<a xmlns='{}' h='{handled}'/>", sm::NS);
            link.write(a.as_bytes()).await?;
        } else if StanzaKind::of(&el, ns::CLIENT).is_some() {
            handled = handled.wrapping_add(1);
        }
    }
}
