//! `report`: each stanza is a report in the wire format of
//! docs/protocol.md, sent to the processor's component domain (`--to`)
//! with a receipt request. Two latencies, both from the scheduled time:
//! *accepted*, when the server's XEP-0198 `<a h/>` covers the report (an
//! `<r/>` follows every batch written), and *processed*, when the
//! processor's XEP-0184 `<received/>` for its id arrives.
//!
//! `drain` sends the same reports while no processor is connected, waits
//! until all are accepted (the backlog), then starts the processor
//! (`--processor-cmd`) and times how long it takes until every report is
//! confirmed; *processed* latencies then count from the processor's start.

use super::{parse_id, stanza_id, until_start, Errors, Fleet, Lines, CLOSE_WAIT, MAX_BATCH};
use crate::client::{self, ClientError, Duplex, Incoming, Wake};
use crate::stats::{Latencies, Outcome, Recorder, Window};
use crate::{BenchError, Ctx, RunReport, Scenario, GRACE};
use minidom::Element;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tributary_proto::error::escape;
use tributary_proto::sm;

/// With reports written but not yet covered by `<a h/>` and no `<r/>`
/// outstanding, ask again after this long. A server may answer `<r/>`
/// before it has handled what came just before (Tributary counts a report
/// only once its commit is done); polling bounds how late we notice.
const ACK_POLL: Duration = Duration::from_millis(2);

const RECEIPTS: &str = "urn:xmpp:receipts";
const REPORT: &str = "urn:tributary:report:0";
const JSON: &str = "urn:xmpp:json:0";

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    processed: AtomicU64,
    /// Measured reports answered with an error.
    failed: AtomicU64,
    duplicates: AtomicU64,
    connection_errors: AtomicU64,
}

struct Shared {
    ctx: Arc<Ctx>,
    to: String,
    accepted: Latencies,
    processed: Latencies,
    counters: Counters,
    errors: Errors,
    drain: Option<Drain>,
}

/// What the clients of a `drain` run share.
#[derive(Default)]
struct Drain {
    /// When the processor was started.
    started: OnceLock<Instant>,
    /// The last confirmation, in ns after `started`.
    last_ns: AtomicU64,
    /// Set when the run gives up waiting.
    stop: AtomicBool,
}

/// How often a `drain` client looks at `Drain::stop`.
const STOP_POLL: Duration = Duration::from_millis(100);

pub(crate) async fn run(ctx: Arc<Ctx>) -> Result<RunReport, BenchError> {
    if !ctx.args.sm {
        return Err(BenchError::Usage(
            "report needs --sm: a report is accepted when the server's <a h/> covers it".into(),
        ));
    }
    let drain = ctx.args.scenario == Scenario::Drain;
    if drain && ctx.args.processor_cmd.is_none() {
        return Err(BenchError::Usage(
            "drain needs --processor-cmd: the processor is started once the backlog is queued"
                .into(),
        ));
    }
    if drain && ctx.args.warmup > 0.0 {
        return Err(BenchError::Usage(
            "drain has no warm-up: every report is part of the backlog".into(),
        ));
    }
    let schedule = ctx.schedule;
    let clients = schedule.clients();
    let shared = Arc::new(Shared {
        to: escape(&ctx.args.to),
        accepted: Latencies::new(),
        processed: Latencies::new(),
        counters: Counters::default(),
        errors: Errors::default(),
        drain: drain.then(Drain::default),
        ctx: ctx.clone(),
    });
    let mut fleet = Fleet::spawn(clients, |lines| client(shared.clone(), lines))
        .ready()
        .await?;
    let start = fleet.start();

    let mut fill_s = None;
    let mut processor = None;
    let (window, deadline) = match &shared.drain {
        None => {
            tokio::time::sleep_until(start + schedule.warmup()).await;
            // Each client ends by itself once all its reports are
            // processed, or at the deadline.
            let window = Window::open(ctx.args.server_pid);
            (window, start + schedule.end() + GRACE)
        }
        Some(d) => {
            let total = schedule.measured_total();
            super::wait_until(start + schedule.end() + GRACE, || {
                shared.counters.accepted.load(Ordering::Relaxed) >= total
            })
            .await;
            fill_s = Some(start.elapsed().as_secs_f64());
            let cmd = ctx.args.processor_cmd.as_deref().unwrap_or_default();
            // `exec`: the processor itself is the child, so stopping the
            // child stops it.
            let child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(format!("exec {cmd}"))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| BenchError::Usage(format!("cannot start the processor: {e}")))?;
            let t0 = Instant::now();
            let _ = d.started.set(t0);
            processor = Some(child);
            let window = Window::open(ctx.args.server_pid);
            (window, t0 + Duration::from_secs_f64(ctx.args.drain_timeout))
        }
    };
    fleet.done_by(deadline + Duration::from_secs(1)).await;
    let resources = window.close();
    if let Some(d) = &shared.drain {
        d.stop.store(true, Ordering::Relaxed);
    }
    fleet.stop().await?;
    if let Some(mut child) = processor {
        // A processor loses nothing when killed (docs/protocol.md).
        let _ = child.kill().await;
    }
    shared.errors.log();

    let c = &shared.counters;
    let mut report = ctx.report();
    report.main = Outcome {
        scheduled: schedule.measured_total(),
        count: c.processed.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        latency: shared.processed.summary(),
    };
    report.accepted = Some(Outcome {
        scheduled: schedule.measured_total(),
        count: c.accepted.load(Ordering::Relaxed),
        failed: 0,
        latency: shared.accepted.summary(),
    });
    report.achieved_rate = report.main.count as f64 / schedule.duration().as_secs_f64().max(1e-9);
    if let Some(d) = &shared.drain {
        let drain_s = d.last_ns.load(Ordering::Relaxed) as f64 / 1e9;
        report.achieved_rate = report.main.count as f64 / drain_s.max(1e-9);
        report.fill_s = fill_s;
        report.drain_s = Some(drain_s);
    }
    report.duplicates = c.duplicates.load(Ordering::Relaxed);
    report.connection_errors = c.connection_errors.load(Ordering::Relaxed);
    report.resources = resources;
    Ok(report)
}

/// One collector: it ends once all its reports are processed, at the
/// deadline, or in a drain when `Drain::stop` is set, so the fleet's stop
/// line goes unused.
async fn client(shared: Arc<Shared>, mut lines: Lines) {
    let k = lines.k;
    let ctx = &shared.ctx;
    let session = {
        let _permit = lines.logins.acquire().await;
        client::login(&ctx.client, &ctx.user(k)).await
    };
    let session = match session {
        Ok(s) if s.sm => s,
        Ok(s) => {
            s.close().await;
            let source = ClientError::Sm("not enabled".into());
            return lines.login_failed(ctx.bare(k), source);
        }
        Err(source) => {
            return lines.login_failed(ctx.bare(k), source);
        }
    };
    let mut d = session.into_duplex();
    let _ = lines.ready.send(Ok(()));
    let outcome = match until_start(&mut d, &mut lines.start).await {
        Ok(Some(start)) => Sender::new(&shared, k, start).run(&mut d).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    let _ = lines.done.send(());
    match outcome {
        Ok(()) => d.close(CLOSE_WAIT).await,
        Err(e) => {
            shared.errors.add(format!("{}: {e}", ctx.bare(k)));
            shared
                .counters
                .connection_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A report waiting for its answers.
#[derive(Clone, Copy)]
struct Pending {
    at_ns: u64,
    measured: bool,
}

/// One client's reports in flight.
struct Sender<'a> {
    shared: &'a Shared,
    k: u64,
    start: Instant,
    /// Written, not yet covered by `<a h/>`: (our stanza count just after
    /// writing it, the report).
    unacked: VecDeque<(u32, Pending)>,
    /// Not yet confirmed processed, by event number.
    unprocessed: HashMap<u64, Pending>,
    accepted: Recorder,
    processed: Recorder,
    /// `<r/>` sent and not yet answered.
    requests: u32,
    last_request: Instant,
}

impl<'a> Sender<'a> {
    fn new(shared: &'a Shared, k: u64, start: Instant) -> Sender<'a> {
        Sender {
            shared,
            k,
            start,
            unacked: VecDeque::new(),
            unprocessed: HashMap::new(),
            accepted: shared.accepted.recorder(),
            processed: shared.processed.recorder(),
            requests: 0,
            last_request: start,
        }
    }

    async fn run(mut self, d: &mut Duplex) -> Result<(), ClientError> {
        let ctx = &self.shared.ctx;
        let mut slots = ctx.schedule.client(self.k);
        let drain = self.shared.drain.as_ref();
        let mut deadline = self.start + ctx.schedule.end() + crate::GRACE;
        if drain.is_some() {
            // The run decides when a drain is over (`Drain::stop`).
            deadline += Duration::from_secs_f64(ctx.args.drain_timeout);
        }
        loop {
            let now = Instant::now();
            if now >= deadline || drain.is_some_and(|d| d.stop.load(Ordering::Relaxed)) {
                return Ok(());
            }
            if now >= self.start {
                let elapsed = Ctx::ns_since(self.start, now);
                let mut batch = 0;
                while batch < MAX_BATCH {
                    let Some(slot) = slots.pop_due(elapsed) else {
                        break;
                    };
                    self.send(d, slot.n, slot.seq, slot.at_ns, slot.measured);
                    batch += 1;
                }
                let poll = self.requests == 0
                    && !self.unacked.is_empty()
                    && now >= self.last_request + ACK_POLL;
                if batch > 0 || poll {
                    d.send_raw(&format!("<r xmlns='{}'/>", sm::NS));
                    self.requests += 1;
                    self.last_request = now;
                }
            }
            if slots.is_done() && self.unacked.is_empty() && self.unprocessed.is_empty() {
                return Ok(());
            }
            let mut next = slots
                .peek()
                .map(|s| self.start + Duration::from_nanos(s.at_ns))
                .unwrap_or(deadline)
                .min(deadline);
            if self.requests == 0 && !self.unacked.is_empty() {
                next = next.min(self.last_request + ACK_POLL);
            }
            if drain.is_some() {
                next = next.min(Instant::now() + STOP_POLL);
            }
            if d.wait(Some(next)).await? == Wake::Read {
                let now = Instant::now();
                while let Some(incoming) = d.incoming()? {
                    match incoming {
                        Incoming::Ack(h) => self.on_ack(h, now),
                        Incoming::Stanza(el) => self.on_stanza(&el, now),
                    }
                }
                self.accepted.flush();
                self.processed.flush();
            }
        }
    }

    fn send(&mut self, d: &mut Duplex, n: u64, seq: u64, at_ns: u64, measured: bool) {
        let ctx = &self.shared.ctx;
        let id = stanza_id(ctx.run_id, n);
        d.send_stanza(&format!(
            "<message to='{to}' id='{id}'>\
             <report xmlns='{REPORT}' id='{id}' kind='bench'>\
             <json xmlns='{JSON}'>{{\"client\":{k},\"seq\":{seq},\"at_ns\":{at_ns}}}</json>\
             </report><request xmlns='{RECEIPTS}'/></message>",
            to = self.shared.to,
            k = self.k,
        ));
        let p = Pending { at_ns, measured };
        self.unacked.push_back((d.sent(), p));
        self.unprocessed.insert(n, p);
    }

    fn latency(&self, p: Pending, now: Instant) -> Duration {
        now.saturating_duration_since(self.start + Duration::from_nanos(p.at_ns))
    }

    /// The server handled our first `h` stanzas (counting wraps at 2^32).
    fn on_ack(&mut self, h: u32, now: Instant) {
        self.requests = self.requests.saturating_sub(1);
        while let Some(&(count, p)) = self.unacked.front() {
            if (h.wrapping_sub(count) as i32) < 0 {
                break;
            }
            self.unacked.pop_front();
            if p.measured {
                self.accepted.record(self.latency(p, now));
                self.shared
                    .counters
                    .accepted
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A receipt (processed) or an error for one of our reports.
    fn on_stanza(&mut self, el: &Element, now: Instant) {
        if el.name() != "message" {
            return;
        }
        let run_id = self.shared.ctx.run_id;
        let c = &self.shared.counters;
        let (n, failed) = if el.attr("type") == Some("error") {
            match el.attr("id").and_then(|id| parse_id(run_id, id)) {
                Some(n) => (n, true),
                None => return,
            }
        } else {
            let receipt = el
                .children()
                .find(|c| c.is("received", RECEIPTS))
                .and_then(|r| r.attr("id"))
                .and_then(|id| parse_id(run_id, id));
            match receipt {
                Some(n) => (n, false),
                None => return,
            }
        };
        match self.unprocessed.remove(&n) {
            Some(p) if p.measured => {
                if failed {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                } else {
                    let latency = match self.shared.drain.as_ref() {
                        Some(d) => {
                            let since = d
                                .started
                                .get()
                                .map_or(Duration::ZERO, |t0| now.saturating_duration_since(*t0));
                            let ns = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
                            d.last_ns.fetch_max(ns, Ordering::Relaxed);
                            since
                        }
                        None => self.latency(p, now),
                    };
                    self.processed.record(latency);
                    c.processed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(_) => {}
            None => {
                c.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
