//! `mqtt`: chat's load against an MQTT broker (Mosquitto), so that the
//! broker can be measured beside the XMPP servers. Every client connects
//! with MQTT 3.1.1 over TLS (rumqttc, on the same rustls configuration as
//! the XMPP scenarios), password login, a clean session and a client id of
//! this run; it subscribes QoS 1 to its own topic `bench/{run}/{i}` and
//! publishes QoS 1 to the topic of a client chosen at random, on chat's
//! open-loop schedule. Two latencies, both from the scheduled send time:
//! *accepted* when the broker's PUBACK arrives, and *delivered* (the main
//! one) when the addressee receives the message.
//!
//! A slow broker cannot slow the schedule down unseen: rumqttc keeps at
//! most `inflight` publishes unacknowledged, with a queue of the same size
//! in front; once both are full the sender waits, and whatever fell due
//! meanwhile goes out late with its own scheduled time, so the wait is in
//! the latencies, and what is still unsent at the end counts as lost.

use super::{parse_id, stanza_id, wait_until, Errors, Fleet, Lines, Seen, CLOSE_WAIT};
use crate::client::ClientError;
use crate::stats::{Latencies, Outcome, Recorder, Window};
use crate::{BenchError, Ctx, RunReport, GRACE};
use rand::{Rng, SeedableRng};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions,
    Outgoing, Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The in-flight window covers this much of a client's offered load, so
/// that it limits nothing while the broker keeps up (p99 limits are tens
/// of milliseconds) and still bounds what a stalled broker piles up.
const INFLIGHT_SECS: f64 = 1.0;
/// Floor of the window: the schedule hands out a burst after any pause of
/// the generator, and a tiny window would turn that into extra latency.
const MIN_INFLIGHT: u16 = 32;
/// Ceiling: memory in broker and generator per client stays small.
const MAX_INFLIGHT: u16 = 1024;
/// TCP, TLS, CONNACK and SUBACK of one client; also rumqttc's bound on a
/// flush once connected.
const CONNECT_LIMIT: Duration = Duration::from_secs(20);
/// Longer than any run step, so that no PINGREQ adds to the load.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Publishing further behind schedule than this is worth a warning (it is
/// in the latencies either way).
const LAG_WARNING: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Counters {
    /// Measured publishes handed to the client.
    sent: AtomicU64,
    /// Measured publishes received by their addressee (each once).
    delivered: AtomicU64,
    /// Measured publishes the broker acknowledged.
    accepted: AtomicU64,
    /// Measured publishes never sent because their connection had failed.
    failed: AtomicU64,
    duplicates: AtomicU64,
    connection_errors: AtomicU64,
    /// Largest delay between a publish's scheduled time and the moment the
    /// client took it, in microseconds.
    max_lag_us: AtomicU64,
}

struct Shared {
    ctx: Arc<Ctx>,
    host: String,
    port: u16,
    inflight: u16,
    /// Topic of each client.
    topics: Vec<String>,
    delivered: Latencies,
    accepted: Latencies,
    seen: Seen,
    counters: Counters,
    errors: Errors,
}

/// A publish between its hand-over to rumqttc and its PUBACK.
#[derive(Clone, Copy)]
struct Pending {
    at_ns: u64,
    measured: bool,
}

pub(crate) async fn run(ctx: Arc<Ctx>) -> Result<RunReport, BenchError> {
    let schedule = ctx.schedule;
    let clients = schedule.clients();
    if clients < 2 {
        return Err(BenchError::Usage("mqtt needs --clients 2 or more".into()));
    }
    let (host, port) = host_port(&ctx.args.server).ok_or_else(|| {
        BenchError::Usage(format!("--server {}: expected HOST:PORT", ctx.args.server))
    })?;
    let inflight = inflight_for(schedule.rate(), clients);
    tracing::debug!("bench: mqtt: {inflight} publishes in flight per client at most");
    let shared = Arc::new(Shared {
        host: host.to_owned(),
        port,
        inflight,
        topics: (0..clients).map(|i| topic(ctx.run_id, i)).collect(),
        delivered: Latencies::new(),
        accepted: Latencies::new(),
        seen: Seen::new(schedule.total()),
        counters: Counters::default(),
        errors: Errors::default(),
        ctx: ctx.clone(),
    });
    let mut fleet = Fleet::spawn(clients, |lines| client(shared.clone(), lines))
        .ready()
        .await?;
    let start = fleet.start();

    tokio::time::sleep_until(start + schedule.warmup()).await;
    let window = Window::open(ctx.args.server_pid);
    // Senders finish on their own; then wait for what is in flight.
    let deadline = start + schedule.end() + GRACE;
    fleet.done_by(deadline).await;
    let c = &shared.counters;
    wait_until(deadline, || {
        let sent = c.sent.load(Ordering::Relaxed);
        c.delivered.load(Ordering::Relaxed) >= sent && c.accepted.load(Ordering::Relaxed) >= sent
    })
    .await;
    let resources = window.close();
    fleet.stop().await?;
    shared.errors.log();
    let lag = Duration::from_micros(c.max_lag_us.load(Ordering::Relaxed));
    if lag > LAG_WARNING {
        tracing::warn!(
            "bench: mqtt: publishes went out up to {:.1} ms behind schedule (in-flight window of \
             {inflight} full, or the generator short of CPU); the latencies include it",
            lag.as_secs_f64() * 1000.0
        );
    }

    let failed = c.failed.load(Ordering::Relaxed);
    let mut report = ctx.report();
    report.mechanism = "password".into();
    report.main = Outcome {
        scheduled: schedule.measured_total(),
        count: c.delivered.load(Ordering::Relaxed),
        failed,
        latency: shared.delivered.summary(),
    };
    report.accepted = Some(Outcome {
        scheduled: schedule.measured_total(),
        count: c.accepted.load(Ordering::Relaxed),
        failed,
        latency: shared.accepted.summary(),
    });
    report.achieved_rate = report.main.count as f64 / schedule.duration().as_secs_f64().max(1e-9);
    report.duplicates = c.duplicates.load(Ordering::Relaxed);
    report.connection_errors = c.connection_errors.load(Ordering::Relaxed);
    report.resources = resources;
    Ok(report)
}

/// HOST and PORT of `--server`.
fn host_port(server: &str) -> Option<(&str, u16)> {
    let (host, port) = server.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// The topic client `i` subscribes to in run `run_id`.
fn topic(run_id: u64, i: u64) -> String {
    format!("bench/{run_id:x}/{i}")
}

/// The in-flight window of one client: [`INFLIGHT_SECS`] of its share of
/// the offered rate, within [`MIN_INFLIGHT`]..=[`MAX_INFLIGHT`].
fn inflight_for(rate: f64, clients: u64) -> u16 {
    let want = (rate / clients.max(1) as f64 * INFLIGHT_SECS).ceil();
    if !want.is_finite() || want >= f64::from(MAX_INFLIGHT) {
        return MAX_INFLIGHT;
    }
    (want as u16).max(MIN_INFLIGHT)
}

/// What a publish carries: the event's id (run and number) and its
/// scheduled time.
fn payload(run_id: u64, n: u64, at_ns: u64) -> String {
    format!("{} {at_ns}", stanza_id(run_id, n))
}

/// Event number and scheduled time from a payload of this run.
fn parse_payload(run_id: u64, payload: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (id, at_ns) = text.split_once(' ')?;
    Some((parse_id(run_id, id)?, at_ns.parse().ok()?))
}

/// rumqttc's error in the terms the other scenarios report.
fn client_error(e: ConnectionError) -> ClientError {
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => ClientError::Auth(format!("CONNACK {code:?}")),
        ConnectionError::ConnectionRefused(code) => {
            ClientError::Stream(format!("connection refused: CONNACK {code:?}"))
        }
        ConnectionError::NetworkTimeout => ClientError::Timeout("MQTT connect"),
        ConnectionError::FlushTimeout => ClientError::Timeout("MQTT write"),
        ConnectionError::Tls(e) => ClientError::Tls(e.to_string()),
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ClientError::Closed
        }
        ConnectionError::Io(e) => ClientError::Io(e),
        other => ClientError::Stream(other.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn client(shared: Arc<Shared>, lines: Lines) {
    let k = lines.k;
    let ctx = &shared.ctx;
    let (mqtt, mut eventloop) = new_client(&shared, k);
    let connected = {
        let _permit = lines.logins.acquire().await;
        connect(&mqtt, &mut eventloop, &shared.topics[k as usize]).await
    };
    if let Err(source) = connected {
        return lines.login_failed(ctx.user(k), source);
    }
    let _ = lines.ready.send(Ok(()));
    let Lines {
        done,
        start: start_rx,
        stop: stop_rx,
        ..
    } = lines;
    // Publishes handed to rumqttc and not yet given a packet id: rumqttc
    // takes them in this order and announces each with
    // `Outgoing::Publish(pkid)`.
    let queued = Mutex::new(VecDeque::new());
    let connection = connection(
        &shared,
        eventloop,
        &mqtt,
        &queued,
        start_rx.clone(),
        stop_rx.clone(),
    );
    let sender = async {
        sender(&shared, k, &mqtt, &queued, start_rx, &stop_rx).await;
        let _ = done.send(());
    };
    let (result, ()) = tokio::join!(connection, sender);
    if let Err(e) = result {
        shared.errors.add(format!("{}: {e}", ctx.user(k)));
        shared
            .counters
            .connection_errors
            .fetch_add(1, Ordering::Relaxed);
    }
}

fn new_client(shared: &Shared, k: u64) -> (AsyncClient, EventLoop) {
    let ctx = &shared.ctx;
    let mut options = MqttOptions::new(
        format!("{}-{:x}", ctx.user(k), ctx.run_id),
        shared.host.clone(),
        shared.port,
    );
    options
        .set_credentials(ctx.user(k), ctx.args.password.clone())
        .set_clean_session(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_inflight(shared.inflight)
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(
            ctx.client.tls.clone(),
        )));
    let (mqtt, mut eventloop) = AsyncClient::new(options, usize::from(shared.inflight));
    let mut network = NetworkOptions::new();
    // Small publishes one at a time: Nagle would hold them back for the
    // broker's delayed ACK.
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(CONNECT_LIMIT.as_secs());
    eventloop.set_network_options(network);
    (mqtt, eventloop)
}

/// Connects and subscribes to the client's own topic, granted at QoS 1.
async fn connect(
    mqtt: &AsyncClient,
    eventloop: &mut EventLoop,
    topic: &str,
) -> Result<(), ClientError> {
    mqtt.try_subscribe(topic, QoS::AtLeastOnce)
        .map_err(|e| ClientError::Stream(e.to_string()))?;
    let handshake = async {
        loop {
            // poll() would reconnect after an error: stop at the first.
            if let Event::Incoming(Packet::SubAck(ack)) =
                eventloop.poll().await.map_err(client_error)?
            {
                return match ack.return_codes.as_slice() {
                    [SubscribeReasonCode::Success(QoS::AtLeastOnce)] => Ok(()),
                    codes => Err(ClientError::Stream(format!(
                        "subscription to {topic} at QoS 1 answered {codes:?}"
                    ))),
                };
            }
        }
    };
    tokio::time::timeout(CONNECT_LIMIT, handshake)
        .await
        .unwrap_or(Err(ClientError::Timeout("MQTT CONNACK and SUBACK")))
}

/// Drives the connection until the run stops: PUBACKs and deliveries are
/// recorded here, as they come off the socket.
async fn connection(
    shared: &Shared,
    mut eventloop: EventLoop,
    mqtt: &AsyncClient,
    queued: &Mutex<VecDeque<Pending>>,
    mut start_rx: watch::Receiver<Option<Instant>>,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let c = &shared.counters;
    let mut unacked: HashMap<u16, Pending> = HashMap::new();
    let mut delivered = shared.delivered.recorder();
    let mut accepted = shared.accepted.recorder();
    let mut start: Option<Instant> = None;
    let result = loop {
        let event = tokio::select! {
            biased;
            _ = stop_rx.changed() => break Ok(()),
            e = eventloop.poll() => e,
        };
        let now = Instant::now();
        let event = match event {
            Ok(event) => event,
            // poll() would reconnect after an error: stop at the first.
            Err(e) => break Err(client_error(e)),
        };
        if start.is_none() {
            start = *start_rx.borrow_and_update();
        }
        match (event, start) {
            (Event::Outgoing(Outgoing::Publish(pkid)), _) => {
                if let Some(p) = lock(queued).pop_front() {
                    unacked.insert(pkid, p);
                }
            }
            (Event::Incoming(Packet::PubAck(ack)), Some(start)) => {
                if let Some(p) = unacked.remove(&ack.pkid) {
                    if p.measured {
                        accepted.record(latency(start, p.at_ns, now));
                        c.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (Event::Incoming(Packet::Publish(p)), Some(start)) => {
                on_publish(shared, &p.payload, start, now, &mut delivered);
            }
            // Nothing of ours is published before the start.
            _ => {}
        }
    };
    delivered.flush();
    accepted.flush();
    if result.is_ok() {
        disconnect(mqtt, &mut eventloop).await;
    }
    result
}

fn latency(start: Instant, at_ns: u64, now: Instant) -> Duration {
    now.saturating_duration_since(start + Duration::from_nanos(at_ns))
}

/// A message for this client: its delivery latency, once per event.
fn on_publish(shared: &Shared, payload: &[u8], start: Instant, now: Instant, rec: &mut Recorder) {
    let ctx = &shared.ctx;
    let Some((n, at_ns)) = parse_payload(ctx.run_id, payload) else {
        return;
    };
    if !ctx.schedule.is_measured(n) {
        return;
    }
    let c = &shared.counters;
    if shared.seen.mark(n) {
        rec.record(latency(start, at_ns, now));
        c.delivered.fetch_add(1, Ordering::Relaxed);
    } else {
        // QoS 1 is at least once: a redelivery is counted, not measured.
        c.duplicates.fetch_add(1, Ordering::Relaxed);
    }
}

/// A DISCONNECT, so that the broker ends the session cleanly, within
/// [`CLOSE_WAIT`].
async fn disconnect(mqtt: &AsyncClient, eventloop: &mut EventLoop) {
    if mqtt.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Publishes this client's events at their scheduled times.
async fn sender(
    shared: &Shared,
    k: u64,
    mqtt: &AsyncClient,
    queued: &Mutex<VecDeque<Pending>>,
    mut start_rx: watch::Receiver<Option<Instant>>,
    stop_rx: &watch::Receiver<bool>,
) {
    let start = loop {
        if let Some(s) = *start_rx.borrow_and_update() {
            break s;
        }
        if start_rx.changed().await.is_err() {
            return; // abandoned before the start
        }
    };
    let ctx = &shared.ctx;
    let c = &shared.counters;
    let others = ctx.schedule.clients() - 1;
    let mut slots = ctx.schedule.client(k);
    let mut rng = rand::rngs::StdRng::from_entropy();
    while let Some(slot) = slots.pop() {
        let due = start + Duration::from_nanos(slot.at_ns);
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        let mut to = rng.gen_range(0..others);
        if to >= k {
            to += 1;
        }
        lock(queued).push_back(Pending {
            at_ns: slot.at_ns,
            measured: slot.measured,
        });
        let handed = mqtt
            .publish(
                shared.topics[to as usize].as_str(),
                QoS::AtLeastOnce,
                false,
                payload(ctx.run_id, slot.n, slot.at_ns),
            )
            .await;
        if handed.is_err() {
            // The connection ended. At the stop, what is unsent is late
            // (lost); before it, the connection failed (its error is
            // counted there) and what it would have sent failed with it.
            if !*stop_rx.borrow() {
                let unsent = u64::from(slot.measured)
                    + std::iter::from_fn(|| slots.pop())
                        .filter(|s| s.measured)
                        .count() as u64;
                c.failed.fetch_add(unsent, Ordering::Relaxed);
            }
            return;
        }
        if slot.measured {
            c.sent.fetch_add(1, Ordering::Relaxed);
        }
        let lag = Instant::now().saturating_duration_since(due);
        let lag_us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        c.max_lag_us.fetch_max(lag_us, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_is_host_and_port() {
        assert_eq!(host_port("127.0.0.1:48883"), Some(("127.0.0.1", 48883)));
        assert_eq!(host_port("localhost:1"), Some(("localhost", 1)));
        assert_eq!(host_port("localhost"), None);
        assert_eq!(host_port(":1883"), None);
        assert_eq!(host_port("h:70000"), None);
    }

    #[test]
    fn payloads_carry_run_event_and_schedule() {
        let p = payload(0xfeed, 42, 1_500_000);
        assert_eq!(parse_payload(0xfeed, p.as_bytes()), Some((42, 1_500_000)));
        assert_eq!(parse_payload(0xbeef, p.as_bytes()), None, "another run's");
        assert_eq!(parse_payload(0xfeed, b"feed-42"), None);
        assert_eq!(parse_payload(0xfeed, b"feed-42 soon"), None);
        assert_eq!(parse_payload(0xfeed, &[0xff, 0xfe]), None);
        assert_eq!(topic(0xfeed, 7), "bench/feed/7");
    }

    #[test]
    fn inflight_window_covers_a_second_within_bounds() {
        // 1,000 clients at 20,000/s: 20 each per second.
        assert_eq!(inflight_for(20_000.0, 1000), MIN_INFLIGHT);
        assert_eq!(inflight_for(20_000.0, 100), 200);
        assert_eq!(inflight_for(1e9, 2), MAX_INFLIGHT);
        assert_eq!(inflight_for(f64::INFINITY, 2), MAX_INFLIGHT);
        assert_eq!(inflight_for(0.5, 0), MIN_INFLIGHT);
    }

    #[test]
    fn broker_refusals_read_as_login_failures() {
        let e = client_error(ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword,
        ));
        assert!(matches!(e, ClientError::Auth(_)), "{e}");
        let e = client_error(ConnectionError::ConnectionRefused(
            ConnectReturnCode::ServiceUnavailable,
        ));
        assert!(matches!(e, ClientError::Stream(_)), "{e}");
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(matches!(
            client_error(ConnectionError::Io(eof)),
            ClientError::Closed
        ));
        assert!(matches!(
            client_error(ConnectionError::NetworkTimeout),
            ClientError::Timeout(_)
        ));
    }
}
