//! `chat`: every client online; each stanza is a `<message type='chat'>`
//! to another client chosen uniformly at random; latency is measured at
//! the receiver, from the scheduled send time carried in the body.

use super::{
    go_online, parse_id, stanza_id, until_start, wait_until, Errors, Fleet, Lines, Seen,
    CLOSE_WAIT, MAX_BATCH,
};
use crate::client::{self, Duplex, Incoming, Wake};
use crate::stats::{Latencies, Outcome, Window};
use crate::{BenchError, Ctx, RunReport, GRACE};
use minidom::Element;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tributary_proto::error::escape;
use tributary_proto::ns;

#[derive(Default)]
struct Counters {
    /// Measured messages written.
    sent: AtomicU64,
    /// Measured messages received (each once).
    received: AtomicU64,
    /// Measured messages bounced with an error.
    failed: AtomicU64,
    duplicates: AtomicU64,
    connection_errors: AtomicU64,
}

struct Shared {
    ctx: Arc<Ctx>,
    /// Escaped bare JIDs of the clients.
    jids: Vec<String>,
    latencies: Latencies,
    seen: Seen,
    counters: Counters,
    errors: Errors,
}

pub(crate) async fn run(ctx: Arc<Ctx>) -> Result<RunReport, BenchError> {
    let schedule = ctx.schedule;
    let clients = schedule.clients();
    if clients < 2 {
        return Err(BenchError::Usage("chat needs --clients 2 or more".into()));
    }
    let shared = Arc::new(Shared {
        jids: (0..clients).map(|i| escape(&ctx.bare(i))).collect(),
        latencies: Latencies::new(),
        seen: Seen::new(schedule.total()),
        counters: Counters::default(),
        errors: Errors::default(),
        ctx: ctx.clone(),
    });
    // Everyone online first.
    let mut fleet = Fleet::spawn(clients, |lines| client(shared.clone(), lines))
        .ready()
        .await?;
    let start = fleet.start();

    tokio::time::sleep_until(start + schedule.warmup()).await;
    let window = Window::open(ctx.args.server_pid);
    // Senders finish on their own; then wait for the messages in flight.
    let deadline = start + schedule.end() + GRACE;
    fleet.done_by(deadline).await;
    let c = &shared.counters;
    wait_until(deadline, || {
        c.received.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed)
            >= c.sent.load(Ordering::Relaxed)
    })
    .await;
    let resources = window.close();
    fleet.stop().await?;
    shared.errors.log();

    let mut report = ctx.report();
    report.main = Outcome {
        scheduled: schedule.measured_total(),
        count: c.received.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        latency: shared.latencies.summary(),
    };
    report.achieved_rate = report.main.count as f64 / schedule.duration().as_secs_f64().max(1e-9);
    report.duplicates = c.duplicates.load(Ordering::Relaxed);
    report.connection_errors = c.connection_errors.load(Ordering::Relaxed);
    report.resources = resources;
    Ok(report)
}

async fn client(shared: Arc<Shared>, mut lines: Lines) {
    let k = lines.k;
    let ctx = &shared.ctx;
    let session = {
        let _permit = lines.logins.acquire().await;
        client::login(&ctx.client, &ctx.user(k)).await
    };
    let mut d = match session {
        Ok(s) => s.into_duplex(),
        Err(source) => return lines.login_failed(ctx.bare(k), source),
    };
    if let Err(source) = go_online(&mut d, &ctx.client.domain, Duration::from_secs(20)).await {
        return lines.login_failed(ctx.bare(k), source);
    }
    let _ = lines.ready.send(Ok(()));
    let start = match until_start(&mut d, &mut lines.start).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            let _ = lines.done.send(());
            d.close(CLOSE_WAIT).await;
            return;
        }
        Err(e) => {
            shared.errors.add(format!("{}: {e}", ctx.bare(k)));
            shared
                .counters
                .connection_errors
                .fetch_add(1, Ordering::Relaxed);
            let _ = lines.done.send(());
            return;
        }
    };
    let result = session_loop(&shared, k, &mut d, start, &lines.done, &mut lines.stop).await;
    match result {
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

/// Sends on schedule and receives until told to stop.
async fn session_loop(
    shared: &Shared,
    k: u64,
    d: &mut Duplex,
    start: Instant,
    done: &mpsc::UnboundedSender<()>,
    stop_rx: &mut watch::Receiver<bool>,
) -> Result<(), client::ClientError> {
    let ctx = &shared.ctx;
    let schedule = ctx.schedule;
    let others = schedule.clients() - 1;
    let mut slots = schedule.client(k);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut recorder = shared.latencies.recorder();
    let mut finished_sending = false;
    let result = loop {
        let now = Instant::now();
        if now >= start {
            let elapsed = Ctx::ns_since(start, now);
            let mut batch = 0;
            while batch < MAX_BATCH {
                let Some(slot) = slots.pop_due(elapsed) else {
                    break;
                };
                let mut to = rng.gen_range(0..others);
                if to >= k {
                    to += 1;
                }
                let id = stanza_id(ctx.run_id, slot.n);
                d.send_stanza(&format!(
                    "<message to='{}' type='chat' id='{id}'><body>{:x} {} {}</body></message>",
                    shared.jids[to as usize], ctx.run_id, slot.n, slot.at_ns
                ));
                if slot.measured {
                    shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                batch += 1;
            }
        }
        if !finished_sending && slots.is_done() {
            finished_sending = true;
            let _ = done.send(());
        }
        let next = slots.peek().map(|s| start + Duration::from_nanos(s.at_ns));
        let wake = tokio::select! {
            biased;
            _ = stop_rx.changed() => break Ok(()),
            w = d.wait(next) => w,
        };
        match wake {
            Ok(Wake::Timer) => {}
            Ok(Wake::Read) => {
                let now = Instant::now();
                loop {
                    match d.incoming() {
                        Ok(Some(Incoming::Stanza(el))) => {
                            on_message(shared, &el, start, now, &mut recorder)
                        }
                        Ok(Some(Incoming::Ack(_))) => {}
                        Ok(None) => break,
                        Err(e) => return finish(done, finished_sending, Err(e)),
                    }
                }
                recorder.flush();
            }
            Err(e) => break Err(e),
        }
    };
    finish(done, finished_sending, result)
}

fn finish<T>(
    done: &mpsc::UnboundedSender<()>,
    finished_sending: bool,
    result: Result<T, client::ClientError>,
) -> Result<T, client::ClientError> {
    if !finished_sending {
        let _ = done.send(());
    }
    result
}

/// A received message: its latency, or its bounce.
fn on_message(
    shared: &Shared,
    el: &Element,
    start: Instant,
    now: Instant,
    recorder: &mut crate::stats::Recorder,
) {
    if el.name() != "message" {
        return;
    }
    let ctx = &shared.ctx;
    let schedule = ctx.schedule;
    let c = &shared.counters;
    if el.attr("type") == Some("error") {
        let n = el.attr("id").and_then(|id| parse_id(ctx.run_id, id));
        if let Some(n) = n.filter(|&n| schedule.is_measured(n)) {
            if shared.seen.mark(n) {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    let Some(body) = el.get_child("body", ns::CLIENT) else {
        return;
    };
    let text = body.text();
    let mut parts = text.split_ascii_whitespace();
    let stamp = (|| {
        let run = u64::from_str_radix(parts.next()?, 16).ok()?;
        let n: u64 = parts.next()?.parse().ok()?;
        let at_ns: u64 = parts.next()?.parse().ok()?;
        Some((run, n, at_ns))
    })();
    // Another run's leftovers (offline storage) or a foreign message.
    let Some((_, n, at_ns)) = stamp.filter(|s| s.0 == ctx.run_id) else {
        return;
    };
    if !schedule.is_measured(n) {
        return;
    }
    if shared.seen.mark(n) {
        let scheduled = start + Duration::from_nanos(at_ns);
        recorder.record(now.saturating_duration_since(scheduled));
        c.received.fetch_add(1, Ordering::Relaxed);
    } else {
        c.duplicates.fetch_add(1, Ordering::Relaxed);
    }
}
