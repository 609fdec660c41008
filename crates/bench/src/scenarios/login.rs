//! `login`: connect + STARTTLS + SASL + bind storms. `--clients` workers
//! each log in as their own account over and over, on the open-loop
//! schedule (`--rate` logins per second in total); latency runs from the
//! scheduled start of a login to the moment the resource is bound. Each
//! session is then closed cleanly in the background.

use super::{join_all, Errors, CLOSE_WAIT, START_DELAY};
use crate::client;
use crate::stats::{Latencies, Outcome, Window};
use crate::{BenchError, Ctx, RunReport, GRACE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Default)]
struct Counters {
    bound: AtomicU64,
    failed: AtomicU64,
}

pub(crate) async fn run(ctx: Arc<Ctx>) -> Result<RunReport, BenchError> {
    let schedule = ctx.schedule;
    let clients = schedule.clients();
    let latencies = Latencies::new();
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(Errors::default());
    let start = Instant::now() + START_DELAY;
    let deadline = start + schedule.end() + GRACE;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            tokio::spawn(worker(
                ctx.clone(),
                k,
                start,
                deadline,
                latencies.clone(),
                counters.clone(),
                errors.clone(),
                done_tx.clone(),
            ))
        })
        .collect();
    drop(done_tx);

    tokio::time::sleep_until(start + schedule.warmup()).await;
    let window = Window::open(ctx.args.server_pid);
    super::wait_signals(&mut done_rx, clients, deadline + Duration::from_secs(1)).await;
    let resources = window.close();
    join_all(tasks).await?;
    errors.log();

    let mut report = ctx.report();
    report.main = Outcome {
        scheduled: schedule.measured_total(),
        count: counters.bound.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        latency: latencies.summary(),
    };
    report.achieved_rate = report.main.count as f64 / schedule.duration().as_secs_f64().max(1e-9);
    report.resources = resources;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    ctx: Arc<Ctx>,
    k: u64,
    start: Instant,
    deadline: Instant,
    latencies: Latencies,
    counters: Arc<Counters>,
    errors: Arc<Errors>,
    done: mpsc::UnboundedSender<()>,
) {
    let user = ctx.user(k);
    let mut slots = ctx.schedule.client(k);
    let mut recorder = latencies.recorder();
    let mut closing = JoinSet::new();
    while let Some(slot) = slots.pop() {
        let due = start + Duration::from_nanos(slot.at_ns);
        tokio::time::sleep_until(due).await;
        // Behind schedule past the deadline: the rest is lost.
        let Ok(result) = tokio::time::timeout_at(deadline, client::login(&ctx.client, &user)).await
        else {
            break;
        };
        match result {
            Ok(session) => {
                let bound = Instant::now();
                if slot.measured {
                    recorder.record(bound.saturating_duration_since(due));
                    counters.bound.fetch_add(1, Ordering::Relaxed);
                }
                closing.spawn(async move {
                    let _ = tokio::time::timeout(CLOSE_WAIT * 2, session.close()).await;
                });
            }
            Err(e) => {
                errors.add(format!("{}: {e}", ctx.bare(k)));
                if slot.measured {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Reap closes already done, so the set stays small.
        while closing.try_join_next().is_some() {}
    }
    recorder.flush();
    let _ = done.send(());
    while closing.join_next().await.is_some() {}
}
