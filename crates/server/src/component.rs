//! One task per external component connection (XEP-0114): the handshake,
//! stanzas both ways, and acknowledgements of queued stanzas, so the server
//! knows exactly which stanzas a processor has taken:
//! - with XEP-0198 enabled, `<a h/>` acknowledges (through the shared
//!   `Outgoing` layer) every stanza up to `h`;
//! - without it, the processor's XEP-0184 receipt (or message error) or
//!   iq result for a stanza is that stanza's acknowledgement. A queued
//!   stanza that cannot be answered that way (no receipt requested,
//!   presence, iq results) counts as acknowledged once written: at most
//!   once for plain components.
//!
//! Whatever a connection holds unacknowledged when it ends is handed to
//! another connection of the domain, or kept until one connects.
//!
//! A processor's answer to a queued stanza (receipt, message error, iq
//! result or error) is routed to the sender only once that stanza is
//! deleted from the queue:
//! a stanza that comes back after a crash (of the processor or the node)
//! was never answered, so its sender gets its answer exactly once. An
//! answer whose stanza comes back is dropped; the redelivery answers again.

use crate::limits::ReadRate;
use crate::modules;
use crate::node::Node;
use crate::queue::QueuedStanza;
use crate::router::{ComponentEntry, Outbound};
use crate::stream::{Outgoing, Peer};
use minidom::Element;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tributary_proto::component::ComponentNegotiator;
use tributary_proto::error::{StreamError, StreamErrorCondition};
use tributary_proto::negotiation::Action;
use tributary_proto::sm::{self, SmError, SmState};
use tributary_proto::stanza;
use tributary_proto::xml::Framer;

const READ_CHUNK: usize = 8192;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A component must finish its handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the handshake, queued stanzas wait this long for `<enable/>`:
/// how they are acknowledged (SM counts from `<enabled/>`, or answers)
/// must be settled before the first one is written.
const ENABLE_GRACE: Duration = Duration::from_millis(250);
/// Most stanzas taken from the connection's channel for one write: a
/// backlog goes out in few large writes rather than one syscall each.
const OUTBOUND_PER_WRITE: usize = 64;

pub async fn run(node: Arc<Node>, tcp: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let span = tracing::info_span!("component", %peer, domain = tracing::field::Empty);
    let conn_span = span.clone();
    async move {
        let mut conn = ComponentConn::new(node, shutdown, conn_span);
        conn.drive(tcp).await;
        conn.finish();
    }
    .instrument(span)
    .await
}

struct ComponentConn {
    node: Arc<Node>,
    span: tracing::Span,
    negotiator: ComponentNegotiator,
    framer: Framer,
    rate: ReadRate,
    outgoing: Outgoing,
    conn_id: u64,
    tx: mpsc::Sender<Outbound>,
    rx: mpsc::Receiver<Outbound>,
    kill: CancellationToken,
    shutdown: CancellationToken,
    /// Set once the handshake succeeded.
    domain: Option<String>,
    /// When to start taking queued stanzas if SM is not enabled by then;
    /// `None` once taking them (or before the handshake).
    attach_at: Option<tokio::time::Instant>,
    closing: bool,
    /// With SM: the queue id (if any) of each stanza in the unacked list,
    /// in the same order.
    sm_ids: VecDeque<Option<i64>>,
    /// Queued stanzas in flight that ask for an answer (receipt or iq
    /// result), by (sender, stanza id): their queue id, and whether the
    /// answer is their ack (written before SM was enabled).
    answerable: HashMap<(String, String), (i64, bool)>,
    /// Answers that wait for their stanza's deletion before they go out,
    /// with the stanza's dedup key, by queue id.
    held: HashMap<i64, (Element, Option<String>)>,
}

impl ComponentConn {
    fn new(node: Arc<Node>, shutdown: CancellationToken, span: tracing::Span) -> Self {
        let secrets: HashMap<String, String> = node
            .config
            .components
            .iter()
            .map(|c| (c.domain.to_ascii_lowercase(), c.secret.clone()))
            .collect();
        let limits = &node.config.limits;
        let sm_config = &node.config.stream_management;
        let (tx, rx) = mpsc::channel(limits.session_queue);
        ComponentConn {
            negotiator: ComponentNegotiator::new(secrets),
            framer: Framer::new(limits.max_stanza_bytes),
            rate: ReadRate::new(
                limits.component_read_bytes_per_second,
                limits.component_read_burst_bytes,
            ),
            outgoing: Outgoing::new(
                sm_config.ack_request_every,
                Duration::from_millis(sm_config.ack_request_delay_ms),
                Peer::Component,
            ),
            conn_id: node.router.new_conn_id(),
            tx,
            rx,
            kill: CancellationToken::new(),
            shutdown,
            domain: None,
            attach_at: None,
            closing: false,
            sm_ids: VecDeque::new(),
            answerable: HashMap::new(),
            held: HashMap::new(),
            node,
            span,
        }
    }

    async fn drive(&mut self, mut stream: TcpStream) {
        let mut buf = vec![0u8; READ_CHUNK];
        let handshake_deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            if !self.outgoing.out.is_empty() && !self.flush(&mut stream).await {
                return;
            }
            if self.closing {
                let _ = stream.shutdown().await;
                return;
            }
            let connected = self.domain.is_some();
            let ack_due = self.outgoing.ack_due();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.close_with(Some(StreamError::new(StreamErrorCondition::SystemShutdown)));
                }
                _ = self.kill.cancelled() => {
                    self.close_with(Some(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        "too many stanzas waiting: the component is not reading",
                    )));
                }
                msg = self.rx.recv(), if connected => {
                    self.on_outbound(msg);
                    // What else is waiting goes out in the same write.
                    for _ in 1..OUTBOUND_PER_WRITE {
                        if self.closing {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(msg) => self.on_outbound(Some(msg)),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(handshake_deadline), if !connected => {
                    self.close_with(Some(StreamError::new(StreamErrorCondition::ConnectionTimeout)));
                }
                _ = sleep_until_opt(ack_due) => self.outgoing.on_timer(Instant::now()),
                _ = sleep_until_opt(self.attach_at.map(Into::into)) => self.attach_queue(),
                read = stream.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    self.on_bytes(&buf[..n]).await;
                    let pause = self.rate.consume(n, Instant::now());
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> bool {
        let data = std::mem::take(&mut self.outgoing.out);
        tokio::select! {
            r = stream.write_all(&data) => r.is_ok(),
            _ = self.kill.cancelled() => false,
            _ = tokio::time::sleep(WRITE_TIMEOUT) => false,
        }
    }

    fn close_with(&mut self, err: Option<StreamError>) {
        if let Some(e) = &err {
            tracing::info!(error = %e, "closing component stream");
            self.outgoing.raw(e.to_xml().as_bytes());
        }
        self.outgoing.raw(b"</stream:stream>");
        self.closing = true;
    }

    fn on_outbound(&mut self, msg: Option<Outbound>) {
        match msg {
            Some(Outbound::Stanza(el)) => self.emit(*el),
            Some(Outbound::Queued { id, stanza }) => self.emit_queued(id, *stanza),
            Some(Outbound::Close(err)) => self.close_with(Some(*err)),
            None => self.closing = true,
        }
    }

    /// Writes a queued stanza and notes how it will be acknowledged.
    fn emit_queued(&mut self, id: i64, queued: QueuedStanza) {
        let sm = self.outgoing.sm.is_some();
        if sm {
            self.sm_ids.push_back(Some(id));
        }
        if let Err(e) = self.outgoing.emit_serialized(queued.text.as_bytes()) {
            self.overflowed(e);
        }
        match queued.answer_to {
            Some(key) => {
                self.answerable.insert(key, (id, !sm));
            }
            None if !sm => self.ack(vec![id]),
            None => {}
        }
    }

    fn emit(&mut self, el: Element) {
        if self.outgoing.sm.is_some() {
            self.sm_ids.push_back(None);
        }
        self.write(el);
    }

    /// The processor is done with these items: the queue deletes them,
    /// then the answers held for them go to their senders.
    fn ack(&mut self, ids: Vec<i64>) {
        let Some(domain) = &self.domain else { return };
        let answers: Vec<(Element, Option<String>)> =
            ids.iter().filter_map(|id| self.held.remove(id)).collect();
        if !self.answerable.is_empty() {
            let done: std::collections::HashSet<i64> = ids.iter().copied().collect();
            self.answerable.retain(|_, (id, _)| !done.contains(id));
        }
        if answers.is_empty() {
            self.node.queues.acked(domain, self.conn_id, ids, None);
            return;
        }
        // Marked before the deletion is asked for: a copy the writer sees
        // after the deletion finds the mark (see `crate::queue`).
        self.node
            .queues
            .answering(domain, answers.iter().filter_map(|(_, k)| k.as_deref()));
        let (removed, deleted) = tokio::sync::oneshot::channel();
        self.node
            .queues
            .acked(domain, self.conn_id, ids, Some(removed));
        // Routed apart from this connection: once the items are deleted
        // the answers are the only trace of them and must go out even if
        // the processor disconnects meanwhile.
        let node = self.node.clone();
        let domain = domain.clone();
        tokio::spawn(
            async move {
                if deleted.await.is_err() {
                    return;
                }
                // Only an answer that reaches a session makes a copy a
                // no-op; one kept offline may never reach a sender that
                // started afresh. A detached session counts: it resumes
                // with the answer, or ends and hands it to
                // `modules::components::undelivered`. Judged by where each
                // answer went, not by a look at the sessions beforehand:
                // a sender binding meanwhile would get an answer whose
                // copies count as new.
                let mut missed = Vec::new();
                for (answer, key) in answers {
                    let routed = modules::from_component(&node, answer).await;
                    if let Some(err) = routed.reply {
                        tracing::debug!(error = %stanza::to_string(&err), "an answer was not delivered");
                    }
                    if !routed.reached_session {
                        missed.extend(key);
                    }
                }
                node.queues
                    .not_delivered(&domain, missed.iter().map(String::as_str));
            }
            .instrument(self.span.clone()),
        );
    }

    /// Holds `el` if it answers a queued stanza in flight (XEP-0184
    /// receipt, message error, iq result or error) until that stanza is
    /// deleted; without SM the answer is the stanza's ack as well. Any
    /// other stanza comes back.
    fn hold_answer(&mut self, el: Element) -> Option<Element> {
        if self.answerable.is_empty() {
            return Some(el);
        }
        let (Some(to), Some(sid)) = (stanza::to(&el), modules::components::answered_id(&el)) else {
            return Some(el);
        };
        let Some((id, acks)) = self.answerable.remove(&(to.to_owned(), sid.to_owned())) else {
            return Some(el);
        };
        let key = modules::components::answer_key(to, sid);
        self.held.insert(id, (el, key));
        if acks {
            self.ack(vec![id]);
        }
        None
    }

    fn write(&mut self, el: Element) {
        if let Err(e) = self.outgoing.emit(el) {
            self.overflowed(e);
        }
    }

    fn overflowed(&mut self, e: SmError) {
        tracing::warn!("{e}; closing the component stream");
        if !self.closing {
            self.close_with(Some(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "too many unacknowledged stanzas",
            )));
        }
    }

    async fn on_bytes(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.closing {
            let mut actions = Vec::new();
            match self.framer.next_frame(&mut data) {
                Ok(Some(frame)) => self.negotiator.handle(frame, &mut actions),
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "bad input from component");
                    self.negotiator.fail(e, &mut actions);
                }
            }
            self.apply(actions).await;
        }
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Write(s) => self.outgoing.raw(s.as_bytes()),
                Action::Reply(el) => self.emit(el),
                Action::Close(err) => self.close_with(err),
                Action::Authenticated(domain) => {
                    let domain = domain.to_string();
                    self.span.record("domain", tracing::field::display(&domain));
                    tracing::info!("component connected");
                    self.node.router.attach_component(
                        &domain,
                        ComponentEntry {
                            conn_id: self.conn_id,
                            tx: self.tx.clone(),
                            kill: self.kill.clone(),
                        },
                    );
                    self.domain = Some(domain);
                    self.attach_at = Some(tokio::time::Instant::now() + ENABLE_GRACE);
                }
                Action::Stanza(el) => {
                    // A held answer counts as handled: if it is lost, its
                    // stanza comes back from the queue and is answered again.
                    if let Some(el) = self.hold_answer(el) {
                        if let Some(reply) = modules::from_component(&self.node, el).await.reply {
                            self.emit(reply);
                        }
                    }
                    // Handled: routed, stored or answered (XEP-0198 `h`).
                    self.outgoing.handled_one();
                }
                Action::Handled => self.outgoing.handled_one(),
                Action::EnableSm { .. } => {
                    if self.outgoing.sm.is_some() {
                        self.outgoing.raw(
                            tributary_proto::negotiation::sm_failed(None, "unexpected-request")
                                .as_bytes(),
                        );
                        continue;
                    }
                    let id = format!("{:032x}", rand::random::<u128>());
                    let max = self.node.config.stream_management.max_unacked;
                    self.outgoing.sm = Some(SmState::new(id.clone(), false, max));
                    self.outgoing
                        .raw(format!("<enabled xmlns='{}' id='{id}'/>", sm::NS).as_bytes());
                    self.attach_queue();
                }
                Action::AckRequested => self.outgoing.answer_ack_request(),
                Action::Acked(h) => match self.outgoing.on_ack(h) {
                    Ok(n) => {
                        let ids: Vec<i64> = self
                            .sm_ids
                            .drain(..n.min(self.sm_ids.len()))
                            .flatten()
                            .collect();
                        self.ack(ids);
                    }
                    Err(e) => {
                        let mut err = StreamError::with_text(
                            StreamErrorCondition::UndefinedCondition,
                            e.to_string(),
                        );
                        if let Some(app) = e.app_condition() {
                            err = err.with_app(app);
                        }
                        self.close_with(Some(err));
                    }
                },
                // Client-stream actions never come from the component core.
                _ => {}
            }
        }
    }

    /// Starts taking queued stanzas.
    fn attach_queue(&mut self) {
        let (Some(domain), Some(_)) = (&self.domain, self.attach_at.take()) else {
            return;
        };
        let window = self.node.config.component(domain).map_or(1, |c| c.window);
        self.node
            .queues
            .attach(domain, self.conn_id, self.tx.clone(), window);
    }

    /// The connection ended: the queue hands what it held to another
    /// connection of the domain, or keeps it until one connects.
    fn finish(&mut self) {
        let Some(domain) = self.domain.take() else {
            return;
        };
        self.node.router.detach_component(&domain, self.conn_id);
        self.node.queues.detach(&domain, self.conn_id);
        tracing::info!("component disconnected");
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
