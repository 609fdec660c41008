//! `idle`: log in `--clients` sessions at `--rate` logins per second (each
//! sends initial presence, as an online client does), hold them all for
//! `--duration` seconds, then sample the server's memory: RSS per session
//! is (RSS with the sessions − RSS before the first login) / sessions.
//! Latency is the login latency (scheduled start to bound); the CPU window
//! is the hold, so it shows what idle sessions cost the server.

use super::{join_all, Errors, CLOSE_WAIT, START_DELAY};
use crate::client::{self, Duplex, Wake};
use crate::schedule::Schedule;
use crate::stats::{sample, Latencies, Outcome, Window};
use crate::{BenchError, Ctx, RunReport, GRACE};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub(crate) async fn run(ctx: Arc<Ctx>) -> Result<RunReport, BenchError> {
    let clients = ctx.schedule.clients();
    let rate = ctx.schedule.rate();
    let hold = ctx.schedule.duration();
    // One login per client: client k's is event k.
    let logins = Schedule::new(
        ctx.args.clients,
        rate,
        Duration::ZERO,
        Duration::from_secs_f64(clients as f64 / rate),
    )?;
    let rss_before = ctx.args.server_pid.and_then(|p| sample(Some(p)).rss_kb);
    let latencies = Latencies::new();
    let errors = Arc::new(Errors::default());
    let start = Instant::now() + START_DELAY;
    let login_deadline = start + logins.end() + GRACE;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let due = start + Duration::from_nanos(logins.at_ns(k));
            tokio::spawn(session(
                ctx.clone(),
                k,
                due,
                login_deadline,
                ready_tx.clone(),
                stop_rx.clone(),
                errors.clone(),
            ))
        })
        .collect();
    drop(ready_tx);

    let mut recorder = latencies.recorder();
    let (mut established, mut failed) = (0u64, 0u64);
    let mut last_bound = start;
    for _ in 0..clients {
        match tokio::time::timeout_at(login_deadline, ready_rx.recv()).await {
            Ok(Some(Ok((latency, bound)))) => {
                recorder.record(latency);
                established += 1;
                last_bound = last_bound.max(bound);
            }
            Ok(Some(Err(()))) => failed += 1,
            Ok(None) | Err(_) => break,
        }
    }
    recorder.flush();

    let window = Window::open(ctx.args.server_pid);
    tokio::time::sleep(hold).await;
    let mut resources = window.close();
    let _ = stop_tx.send(true);
    let alive = join_all(tasks).await?.into_iter().filter(|&a| a).count() as u64;
    errors.log();

    resources.server_rss_before_kb = rss_before;
    let mut report = ctx.report();
    report.main = Outcome {
        scheduled: clients,
        count: alive,
        // Failed logins, and sessions lost during the hold.
        failed: failed + established.saturating_sub(alive),
        latency: latencies.summary(),
    };
    let login_secs = last_bound.saturating_duration_since(start).as_secs_f64();
    report.achieved_rate = established as f64 / login_secs.max(1e-9);
    report.connection_errors = established.saturating_sub(alive);
    report.rss_per_session_kb = match (rss_before, resources.server_rss_after_kb) {
        (Some(before), Some(after)) if alive > 0 => {
            Some((after as f64 - before as f64) / alive as f64)
        }
        _ => None,
    };
    report.resources = resources;
    Ok(report)
}

/// One session: log in when due, then stay until told to stop. Returns
/// whether the session was still up at the end.
async fn session(
    ctx: Arc<Ctx>,
    k: u64,
    due: Instant,
    deadline: Instant,
    ready: mpsc::UnboundedSender<Result<(Duration, Instant), ()>>,
    mut stop: watch::Receiver<bool>,
    errors: Arc<Errors>,
) -> bool {
    tokio::time::sleep_until(due).await;
    let login = tokio::time::timeout_at(deadline, client::login(&ctx.client, &ctx.user(k))).await;
    let mut d = match login {
        Ok(Ok(s)) => {
            let bound = Instant::now();
            let _ = ready.send(Ok((bound.saturating_duration_since(due), bound)));
            s.into_duplex()
        }
        Ok(Err(e)) => {
            errors.add(format!("{}: {e}", ctx.bare(k)));
            let _ = ready.send(Err(()));
            return false;
        }
        Err(_) => return false,
    };
    d.send_stanza("<presence/>");
    match hold(&mut d, &mut stop).await {
        Ok(()) => {
            d.close(CLOSE_WAIT).await;
            true
        }
        Err(e) => {
            errors.add(format!("{}: session lost: {e}", ctx.bare(k)));
            false
        }
    }
}

/// Answers what the server asks (pings, ack requests) until the stop.
async fn hold(d: &mut Duplex, stop: &mut watch::Receiver<bool>) -> Result<(), client::ClientError> {
    loop {
        if *stop.borrow_and_update() {
            return Ok(());
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return Ok(());
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
