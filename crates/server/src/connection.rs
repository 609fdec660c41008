//! One task per connection: moves bytes between the socket and the
//! protocol core, and carries out the core's actions (TLS upgrade,
//! credential lookups, binding, stanza handling).
//!
//! A session with XEP-0198 resumption outlives its connection: when the
//! link drops, the task keeps the session (and keeps queueing stanzas for
//! it) until the client resumes on a new connection, which receives the
//! whole session state from this task, or until the resumption timeout,
//! when every unacknowledged message goes to offline storage.

use crate::limits::ReadRate;
use crate::modules::{self, blocking, presence, Session};
use crate::node::Node;
use crate::router::{BindRequest, Outbound};
use crate::stream::{Outgoing, Peer};
use minidom::Element;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tributary_proto::csi::CsiQueue;
use tributary_proto::error::{StreamError, StreamErrorCondition};
use tributary_proto::negotiation::{Action, C2sNegotiator, C2sSettings, Input};
use tributary_proto::sasl::LinkSecurity;
use tributary_proto::sm::{self, SmState};
use tributary_proto::xml::Framer;
use tributary_proto::{ns, stanza};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP that upgrades with STARTTLS.
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
}

/// Most bytes read per call.
const READ_CHUNK: usize = 4096;
/// Outbound stanzas taken from the session's channel for one write: a
/// burst shares a TLS record and a syscall, while a bound keeps one
/// write (and the memory it holds) small.
const COALESCE: usize = 64;
/// A peer that accepts no bytes for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a resuming connection waits for the old session's task.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a resuming connection finds a resumable session's task.
#[derive(Debug, Clone)]
pub struct ResumeHandle {
    /// Local part of the owner: only the same account may resume.
    pub user: String,
    pub tx: mpsc::Sender<ResumeRequest>,
}

/// Asks a session's task to hand the session over.
#[derive(Debug)]
pub struct ResumeRequest {
    user: String,
    h: u32,
    reply: oneshot::Sender<Result<Box<Handover>, Option<u32>>>,
}

/// Everything a session is, moved from its old task to the new connection.
#[derive(Debug)]
pub struct Handover {
    bound: Bound,
    sm: Option<SmState>,
    rx: mpsc::Receiver<Outbound>,
    tx: mpsc::Sender<Outbound>,
    kill: CancellationToken,
    conn_id: u64,
}

/// The state of a bound session.
#[derive(Debug)]
struct Bound {
    session: Session,
    /// Resumption requests for this session (when resumable).
    resume_rx: Option<mpsc::Receiver<ResumeRequest>>,
    /// Seconds the session waits for resumption after its link dropped.
    resume_timeout: u64,
    /// Stanzas that arrived while detached, sent after resumption.
    pending: VecDeque<Element>,
    csi: CsiQueue,
}

pub async fn run(
    node: Arc<Node>,
    tcp: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    shutdown: CancellationToken,
) {
    set_tcp_keepalive(&tcp, node.config.keepalive.idle_ping);
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    let conn_span = span.clone();
    async move {
        tracing::debug!("connected");
        let mut conn = Conn::new(node, peer, transport, shutdown, conn_span);
        conn.serve(tcp, transport).await;
        // Boxed: it runs once, and would otherwise add to the size of
        // every session's task.
        Box::pin(conn.finish()).await;
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// TCP keepalive finds dead peers even when the server has nothing to say.
fn set_tcp_keepalive(tcp: &TcpStream, idle_secs: u64) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(idle_secs))
        .with_interval(Duration::from_secs(idle_secs.clamp(1, 10)));
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!("cannot set TCP keepalive: {e}");
    }
}

enum End<S> {
    StartTls(S),
    /// The stream ended on purpose (closed by either side, or an error).
    Closed,
    /// The link dropped or the peer stopped answering.
    Lost,
    /// The session was resumed on another connection.
    HandedOver,
}

struct Conn {
    node: Arc<Node>,
    peer: SocketAddr,
    span: tracing::Span,
    negotiator: C2sNegotiator,
    framer: Framer,
    rate: ReadRate,
    conn_id: u64,
    /// Given to the router at bind time; other sessions queue stanzas here.
    tx: mpsc::Sender<Outbound>,
    rx: Option<mpsc::Receiver<Outbound>>,
    /// Cancelled by the router when our queue overflowed.
    kill: CancellationToken,
    shutdown: CancellationToken,
    bound: Option<Bound>,
    /// Bytes and stanzas going out, with their XEP-0198 bookkeeping.
    outgoing: Outgoing,
    /// The account of the SASL attempt in progress, for failure accounting.
    attempted_user: Option<String>,
    /// The account authenticated on this stream, once SASL succeeded.
    authenticated: Option<jid::BareJid>,
    closing: bool,
    last_read: Instant,
    /// When we asked an idle peer whether it is still there.
    probe_sent: Option<Instant>,
    /// Stanzas handled but not yet counted, oldest first: a stanza to a
    /// component counts once its commit is on disk, and the ones after it
    /// wait their turn, so `h` stays in order while commits overlap.
    pipeline: VecDeque<Pipelined>,
}

/// A handled stanza waiting to be counted (see `Conn::pipeline`), or the
/// peer's `<r/>`, answered once what came before it is counted.
enum Pipelined {
    Stanza {
        committing: Option<(modules::components::PendingCommit, Element)>,
        replies: Vec<Element>,
    },
    AckRequest,
}

/// Most stanzas waiting in `Conn::pipeline`; reading pauses beyond it.
const MAX_PIPELINE: usize = 4096;

/// Resolves when the oldest pipelined stanza's commit has finished.
async fn front_committed(pipeline: &mut VecDeque<Pipelined>) {
    match pipeline.front_mut() {
        Some(Pipelined::Stanza {
            committing: Some((commit, _)),
            ..
        }) => commit.wait().await,
        _ => std::future::pending().await,
    }
}

impl Conn {
    fn new(
        node: Arc<Node>,
        peer: SocketAddr,
        transport: Transport,
        shutdown: CancellationToken,
        span: tracing::Span,
    ) -> Conn {
        let limits = &node.config.limits;
        let settings = C2sSettings {
            domain: node.config.domain.clone(),
            tls_required: !node.config.tls.allow_plaintext,
            starttls_available: transport == Transport::StartTls,
            max_auth_failures: limits.max_auth_failures,
        };
        let (tx, rx) = mpsc::channel(limits.session_queue);
        let sm_config = &node.config.stream_management;
        let outgoing = Outgoing::new(
            sm_config.ack_request_every,
            Duration::from_millis(sm_config.ack_request_delay_ms),
            Peer::Client,
        );
        Conn {
            negotiator: C2sNegotiator::new(settings),
            framer: Framer::new(limits.max_stanza_bytes),
            rate: ReadRate::new(limits.read_bytes_per_second, limits.read_burst_bytes),
            conn_id: node.router.new_conn_id(),
            tx,
            rx: Some(rx),
            kill: CancellationToken::new(),
            shutdown,
            bound: None,
            outgoing,
            attempted_user: None,
            authenticated: None,
            closing: false,
            last_read: Instant::now(),
            probe_sent: None,
            pipeline: VecDeque::new(),
            node,
            peer,
            span,
        }
    }

    async fn serve(&mut self, tcp: TcpStream, transport: Transport) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.node.tls.clone());
        let tcp = match transport {
            Transport::DirectTls => tcp,
            Transport::StartTls => match self.drive(tcp).await {
                End::StartTls(tcp) => tcp,
                End::Lost if self.resumable() => return self.hibernate().await,
                _ => return,
            },
        };
        // The handshake's future (1.3 KB) and the TLS stream (1.2 KB) are
        // boxed: either would otherwise size this task's future, the memory
        // every idle session keeps for its whole life (the stream, moved
        // into `drive`, would be laid out there and here).
        let handshake = Box::pin(tokio::time::timeout(
            TLS_HANDSHAKE_TIMEOUT,
            acceptor.accept(tcp),
        ));
        let tls = match handshake.await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
        };
        let link = link_security(tls.get_ref().1);
        self.framer.reset();
        let mut ignored = Vec::new();
        self.negotiator
            .handle(Input::TlsEstablished(link), &mut ignored);
        if let End::Lost = self.drive(tls).await {
            if self.resumable() {
                self.hibernate().await;
            }
        }
    }

    fn resumable(&self) -> bool {
        self.bound.is_some() && self.outgoing.sm.as_ref().is_some_and(|s| s.resumable)
    }

    /// Runs the stream until it closes, drops, is handed over, or asks
    /// for a TLS upgrade.
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&mut self, mut stream: S) -> End<S> {
        // The waits on the tokens and the timers are made once per stream,
        // not once per wake-up: made inside the loop, each one joined the
        // token's waiter list or the timer wheel on its first poll and left
        // it when dropped, on every read and every outbound stanza.
        let mut shutdown = pin!(self.shutdown.clone().cancelled_owned());
        // A resumed session brings its own token (`resume`), so this wait
        // is made again when the stream becomes bound.
        let mut kill = pin!(self.kill.clone().cancelled_owned());
        let mut kill_bound = self.bound.is_some();
        let mut login_deadline = pin!(tokio::time::sleep(Duration::from_secs(
            self.node.config.limits.login_timeout
        )));
        let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer_at: Option<Instant> = None;
        loop {
            if self.bound.is_none() && self.rx.is_none() {
                return End::HandedOver;
            }
            if !self.outgoing.out.is_empty() && !self.flush(&mut stream).await {
                return End::Lost;
            }
            if self.closing {
                let _ = stream.shutdown().await;
                return End::Closed;
            }
            let bound = self.bound.is_some();
            if bound != kill_bound {
                kill.set(self.kill.clone().cancelled_owned());
                kill_bound = bound;
            }
            let wake = self.next_wake();
            if let Some(at) = wake.filter(|&at| timer_at != Some(at)) {
                timer.as_mut().reset(at.into());
                timer_at = Some(at);
            }
            let resume_rx = self.bound.as_mut().and_then(|b| b.resume_rx.as_mut());
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.close_with(Some(StreamError::new(StreamErrorCondition::SystemShutdown)));
                }
                _ = &mut kill => {
                    self.close_with(Some(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        "too many stanzas waiting: the client is not reading",
                    )));
                }
                req = recv_opt(resume_rx) => {
                    if let Some(req) = req {
                        if self.handover(req) {
                            tracing::info!("session resumed on another connection");
                            return End::HandedOver;
                        }
                    }
                }
                msg = recv_opt(self.rx.as_mut().filter(|_| bound)) => {
                    self.on_outbound(msg);
                    // What else is already waiting goes out in the same
                    // write: one TLS record and one syscall for a burst
                    // (receipts of a processor's batch, a busy chat).
                    for _ in 1..COALESCE {
                        let Some(Ok(msg)) = self.rx.as_mut().map(|rx| rx.try_recv()) else {
                            break;
                        };
                        self.on_outbound(Some(msg));
                        if self.closing {
                            break;
                        }
                    }
                }
                _ = &mut login_deadline, if !bound => {
                    self.close_with(Some(StreamError::new(StreamErrorCondition::ConnectionTimeout)));
                }
                _ = &mut timer, if bound && wake.is_some() => {
                    if self.on_timer(Instant::now()) {
                        tracing::info!("peer stopped answering");
                        return End::Lost;
                    }
                }
                _ = front_committed(&mut self.pipeline) => self.complete_pipelined(),
                read = read_some(&mut stream), if self.pipeline.len() < MAX_PIPELINE => {
                    let bytes = match read {
                        Ok(bytes) if !bytes.is_empty() => bytes,
                        _ => return End::Lost,
                    };
                    self.last_read = Instant::now();
                    self.probe_sent = None;
                    // Boxed: handling a stanza can await the store, and
                    // those futures would otherwise size every idle
                    // session's task.
                    if Box::pin(self.on_bytes(&bytes)).await {
                        // STARTTLS: nothing the client sent after <starttls/>
                        // may be used (RFC 6120 5.4.3.3); flush <proceed/>.
                        if !self.flush(&mut stream).await {
                            return End::Closed;
                        }
                        return End::StartTls(stream);
                    }
                    let pause = self.rate.consume(bytes.len(), Instant::now());
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Counts (and answers) the pipelined stanzas at the front whose
    /// commits have finished, in the order they arrived.
    fn complete_pipelined(&mut self) {
        while let Some(front) = self.pipeline.front_mut() {
            let refused = match front {
                Pipelined::Stanza {
                    committing: Some((commit, el)),
                    ..
                } => match commit.try_outcome() {
                    None => return,
                    Some(Ok(())) => None,
                    Some(Err(cond)) => modules::components::error_for(el, cond),
                },
                _ => None,
            };
            match self.pipeline.pop_front() {
                Some(Pipelined::Stanza { replies, .. }) => {
                    self.outgoing.handled_one();
                    for reply in refused.into_iter().chain(replies) {
                        self.emit(reply);
                    }
                }
                Some(Pipelined::AckRequest) => self.outgoing.answer_ack_request(),
                None => return,
            }
        }
    }

    /// The next moment a timer needs attention (bound sessions only).
    fn next_wake(&self) -> Option<Instant> {
        let ka = &self.node.config.keepalive;
        let probe = match self.probe_sent {
            Some(t) => t + Duration::from_secs(ka.dead_after),
            None => self.last_read + Duration::from_secs(ka.idle_ping),
        };
        Some(self.outgoing.ack_due().map_or(probe, |a| a.min(probe)))
    }

    /// Handles due timers; true when the peer is considered dead.
    fn on_timer(&mut self, now: Instant) -> bool {
        let ka = &self.node.config.keepalive;
        if let Some(t) = self.probe_sent {
            if now >= t + Duration::from_secs(ka.dead_after) {
                return true;
            }
        } else if now >= self.last_read + Duration::from_secs(ka.idle_ping) {
            self.probe_sent = Some(now);
            self.probe_peer();
        }
        self.outgoing.on_timer(now);
        false
    }

    /// Asks an idle peer for a sign of life: an SM ack request if it has
    /// stream management, else a XEP-0199 ping.
    fn probe_peer(&mut self) {
        if self.outgoing.sm.is_some() {
            self.outgoing.request_ack();
            return;
        }
        let Some(b) = &self.bound else { return };
        let mut ping = stanza::element(
            "iq",
            ns::CLIENT,
            &[
                ("type", "get"),
                ("id", "keepalive"),
                ("from", self.node.domain()),
                ("to", &b.session.jid.to_string()),
            ],
        );
        ping.append_child(Element::bare("ping", ns::PING));
        self.emit(ping);
    }

    /// What the router sent this session; `None`: the router dropped it.
    fn on_outbound(&mut self, msg: Option<Outbound>) {
        match msg {
            Some(Outbound::Stanza(el)) => self.deliver_to_client(*el),
            Some(Outbound::Queued { id, .. }) => queue_item_to_client(id),
            Some(Outbound::Close(err)) => self.close_with(Some(*err)),
            None => self.closing = true,
        }
    }

    /// A stanza routed to this client: through CSI, then out.
    fn deliver_to_client(&mut self, el: Element) {
        let Some(b) = self.bound.as_mut() else { return };
        for el in b.csi.offer(el) {
            self.emit(el);
        }
    }

    /// Writes a stanza to the client, keeping it until acknowledged when
    /// stream management is on.
    fn emit(&mut self, el: Element) {
        if let Err(e) = self.outgoing.emit(el) {
            tracing::warn!("{e}; closing the stream");
            if !self.closing {
                self.close_with(Some(StreamError::with_text(
                    StreamErrorCondition::PolicyViolation,
                    "too many unacknowledged stanzas",
                )));
            }
        }
    }

    /// Writes everything pending; false when the peer is gone or stuck.
    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> bool {
        let data = std::mem::take(&mut self.outgoing.out);
        let write = async {
            stream.write_all(&data).await?;
            stream.flush().await
        };
        // The write first: it nearly always completes in its first poll,
        // and then the kill token and the timeout are never registered.
        tokio::select! {
            biased;
            r = write => r.is_ok(),
            _ = self.kill.cancelled() => false,
            _ = tokio::time::sleep(WRITE_TIMEOUT) => {
                tracing::debug!("write timed out");
                false
            }
        }
    }

    fn close_with(&mut self, err: Option<StreamError>) {
        if let Some(e) = &err {
            tracing::info!(error = %e, "closing stream");
            self.outgoing.raw(e.to_xml().as_bytes());
        }
        self.outgoing.raw(b"</stream:stream>");
        self.closing = true;
    }

    /// Feeds bytes to the framer and the core. Returns true when the
    /// transport must now be upgraded to TLS.
    async fn on_bytes(&mut self, mut data: &[u8]) -> bool {
        let mut inputs = VecDeque::new();
        while !data.is_empty() && !self.closing {
            match self.framer.next_frame(&mut data) {
                Ok(Some(frame)) => inputs.push_back(Input::Frame(frame)),
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "bad input from peer");
                    self.run_inputs(&mut inputs).await;
                    let mut actions = Vec::new();
                    self.negotiator.fail(e, &mut actions);
                    self.apply(actions, &mut inputs).await;
                    return false;
                }
            }
            if self.run_inputs(&mut inputs).await {
                return true;
            }
        }
        false
    }

    /// Processes queued inputs (and the inputs their actions produce).
    /// Returns true on a STARTTLS upgrade.
    async fn run_inputs(&mut self, inputs: &mut VecDeque<Input>) -> bool {
        while let Some(input) = inputs.pop_front() {
            let mut actions = Vec::new();
            self.negotiator.handle(input, &mut actions);
            if self.apply(actions, inputs).await {
                return true;
            }
        }
        false
    }

    async fn apply(&mut self, actions: Vec<Action>, inputs: &mut VecDeque<Input>) -> bool {
        let mut starttls = false;
        for action in actions {
            match action {
                Action::Write(s) => self.outgoing.raw(s.as_bytes()),
                Action::Reply(el) => self.emit(el),
                Action::StartTls => starttls = true,
                Action::ResetFramer => self.framer.reset(),
                Action::LookupCredentials(user) => {
                    let creds = match self.node.store.credentials(&user).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!("credential lookup failed: {e}");
                            None
                        }
                    };
                    self.attempted_user = Some(user);
                    inputs.push_back(Input::Credentials(creds));
                }
                Action::AuthFailed { authcid } => {
                    let user = authcid.or_else(|| self.attempted_user.take());
                    let delay = self.node.auth_failures.failed(
                        user.as_deref(),
                        self.peer.ip(),
                        Instant::now(),
                    );
                    tracing::info!(
                        user = user.as_deref().unwrap_or("?"),
                        ?delay,
                        "authentication failed"
                    );
                    tokio::time::sleep(delay).await;
                }
                Action::Authenticated(bare) => {
                    if let Some(user) = bare.node() {
                        self.node.auth_failures.succeeded(user.as_str());
                    }
                    tracing::info!(%bare, "authenticated");
                    self.authenticated = Some(bare);
                }
                Action::Bind { requested } => {
                    let Some(bare) = self.authenticated.clone() else {
                        continue;
                    };
                    let result = self.node.router.bind(
                        BindRequest {
                            user: &bare,
                            requested: requested.as_deref(),
                            tx: self.tx.clone(),
                            kill: self.kill.clone(),
                            max_resources: self.node.config.limits.max_resources_per_user,
                        },
                        self.conn_id,
                    );
                    inputs.push_back(Input::Bound(result));
                }
                Action::SessionStarted(full) => {
                    self.span.record("jid", tracing::field::display(&full));
                    tracing::info!("session started");
                    let session = Session::new(full, self.conn_id);
                    blocking::load(&self.node, &session.user).await;
                    self.bound = Some(Bound {
                        session,
                        resume_rx: None,
                        resume_timeout: 0,
                        pending: VecDeque::new(),
                        csi: CsiQueue::default(),
                    });
                }
                Action::Stanza(el) => {
                    let mut replies = Vec::new();
                    let mut committing = None;
                    if let Some(b) = self.bound.as_mut() {
                        modules::handle_stanza(&self.node, &mut b.session, el).await;
                        replies = std::mem::take(&mut b.session.replies);
                        committing = b.session.committing.take();
                    }
                    if committing.is_none() && self.pipeline.is_empty() {
                        // Counted only now that it is handled: routed to a
                        // session or committed to storage (XEP-0198 `h`).
                        self.outgoing.handled_one();
                        for reply in replies {
                            self.emit(reply);
                        }
                    } else {
                        // Counted, in order, once the commits before it
                        // (and its own) are on disk.
                        self.pipeline.push_back(Pipelined::Stanza {
                            committing,
                            replies,
                        });
                        self.complete_pipelined();
                    }
                }
                Action::Handled => self.outgoing.handled_one(),
                Action::EnableSm { resume, max } => self.enable_sm(resume, max),
                Action::AckRequested if !self.pipeline.is_empty() => {
                    self.pipeline.push_back(Pipelined::AckRequest);
                }
                Action::AckRequested => self.outgoing.answer_ack_request(),
                Action::Acked(h) => self.on_ack(h),
                Action::ClientState { active } => {
                    let out = match self.bound.as_mut() {
                        Some(b) => b.csi.set_active(active),
                        None => Vec::new(),
                    };
                    for el in out {
                        self.emit(el);
                    }
                }
                Action::Resume { previd, h } => {
                    let result = self.resume(&previd, h).await;
                    inputs.push_back(Input::Resumed(result));
                }
                Action::SessionResumed(full) => {
                    self.span.record("jid", tracing::field::display(&full));
                    tracing::info!("session resumed");
                    self.resend_after_resume();
                }
                Action::Close(err) => self.close_with(err),
            }
        }
        starttls
    }

    fn enable_sm(&mut self, resume: bool, max: Option<u32>) {
        let limits = &self.node.config.stream_management;
        let Some(b) = self.bound.as_mut() else { return };
        if self.outgoing.sm.is_some() {
            self.outgoing.raw(
                format!(
                    "<failed xmlns='{}'><unexpected-request xmlns='{}'/></failed>",
                    sm::NS,
                    ns::STANZAS_ERR
                )
                .as_bytes(),
            );
            return;
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let mut enabled = format!("<enabled xmlns='{}' id='{id}'", sm::NS);
        if resume {
            let timeout = max.map_or(limits.resume_timeout, |m| {
                u64::from(m).min(limits.resume_timeout)
            });
            let (tx, rx) = mpsc::channel(1);
            self.node.resumable.insert(
                id.clone(),
                ResumeHandle {
                    user: b.session.user.clone(),
                    tx,
                },
            );
            b.resume_rx = Some(rx);
            b.resume_timeout = timeout;
            enabled.push_str(&format!(" resume='true' max='{timeout}'"));
        }
        enabled.push_str("/>");
        self.outgoing.sm = Some(SmState::new(id, resume, limits.max_unacked));
        self.outgoing.raw(enabled.as_bytes());
    }

    fn on_ack(&mut self, h: u32) {
        if let Err(e) = self.outgoing.on_ack(h) {
            let mut err =
                StreamError::with_text(StreamErrorCondition::UndefinedCondition, e.to_string());
            if let Some(app) = e.app_condition() {
                err = err.with_app(app);
            }
            self.close_with(Some(err));
        }
    }

    /// Resends, after `<resumed/>`, what the client has not acknowledged
    /// and then what arrived while it was away, in order.
    fn resend_after_resume(&mut self) {
        let mut again = self.outgoing.take_unacked();
        if let Some(b) = self.bound.as_mut() {
            again.extend(b.pending.drain(..));
        }
        for el in again {
            self.deliver_to_client(el);
        }
        if self.outgoing.unacked_len() > 0 {
            self.outgoing.request_ack();
        }
    }

    /// Looks for the session to resume and takes it over.
    async fn resume(&mut self, previd: &str, h: u32) -> Result<(jid::FullJid, u32), Option<u32>> {
        let user = self
            .authenticated
            .as_ref()
            .and_then(|b| b.node())
            .map(|n| n.to_string())
            .ok_or(None)?;
        let handle = self.node.resumable.get(previd).map(|h| h.clone());
        let handover = match handle {
            Some(handle) if handle.user == user => {
                let (reply, answer) = oneshot::channel();
                let request = ResumeRequest {
                    user: user.clone(),
                    h,
                    reply,
                };
                if handle.tx.send(request).await.is_err() {
                    return Err(None);
                }
                match tokio::time::timeout(HANDOVER_TIMEOUT, answer).await {
                    Ok(Ok(result)) => result?,
                    _ => return Err(None),
                }
            }
            _ => {
                let known = self.node.expired_sessions.get(previd);
                return Err(known.filter(|e| e.0 == user).map(|e| e.1));
            }
        };
        let Handover {
            bound,
            sm,
            rx,
            tx,
            kill,
            conn_id,
        } = *handover;
        let full = bound.session.jid.clone();
        let handled = sm.as_ref().map_or(0, |s| s.handled());
        self.outgoing.sm = sm;
        self.node
            .router
            .update(&bound.session.user, bound.session.resource(), |e| {
                e.hibernating = false;
            });
        self.bound = Some(bound);
        self.rx = Some(rx);
        self.tx = tx;
        self.kill = kill;
        self.conn_id = conn_id;
        Ok((full, handled))
    }

    /// Answers a resumption request: hands the whole session over when it
    /// is valid. True when the session left this task.
    fn handover(&mut self, req: ResumeRequest) -> bool {
        let Some(b) = self.bound.as_mut() else {
            let _ = req.reply.send(Err(None));
            return false;
        };
        let Some(sm) = self.outgoing.sm.as_mut() else {
            let _ = req.reply.send(Err(None));
            return false;
        };
        if req.user != b.session.user {
            let _ = req.reply.send(Err(None));
            return false;
        }
        if sm.on_ack(req.h).is_err() {
            let _ = req.reply.send(Err(Some(sm.handled())));
            return false;
        }
        // Held back by CSI: it came before anything that waited while detached.
        let held = b.csi.flush();
        for el in held.into_iter().rev() {
            b.pending.push_front(el);
        }
        let (Some(bound), Some(rx)) = (self.bound.take(), self.rx.take()) else {
            return false;
        };
        let handover = Handover {
            bound,
            sm: self.outgoing.sm.take(),
            rx,
            tx: self.tx.clone(),
            kill: self.kill.clone(),
            conn_id: self.conn_id,
        };
        match req.reply.send(Ok(Box::new(handover))) {
            Ok(()) => true,
            Err(Ok(back)) => {
                self.bound = Some(back.bound);
                self.outgoing.sm = back.sm;
                self.rx = Some(back.rx);
                false
            }
            Err(Err(_)) => false,
        }
    }

    /// The link dropped: keep the session for resumption until the
    /// timeout, queueing what arrives for it.
    async fn hibernate(&mut self) {
        let Some(b) = self.bound.as_ref() else { return };
        let (user, resource) = (b.session.user.clone(), b.session.resource().to_owned());
        let timeout = Duration::from_secs(b.resume_timeout);
        self.node
            .router
            .update(&user, &resource, |e| e.hibernating = true);
        tracing::info!(?timeout, "connection lost; session waits for resumption");
        let max = self.node.config.stream_management.max_unacked;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let resume_rx = self.bound.as_mut().and_then(|b| b.resume_rx.as_mut());
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.kill.cancelled() => return,
                req = recv_opt(resume_rx) => match req {
                    Some(req) => {
                        if self.handover(req) {
                            tracing::info!("session resumed");
                            return;
                        }
                    }
                    None => return,
                },
                msg = recv_opt(self.rx.as_mut()) => match msg {
                    Some(Outbound::Queued { id, .. }) => queue_item_to_client(id),
                    Some(Outbound::Stanza(el)) => {
                        let Some(b) = self.bound.as_mut() else { return };
                        b.pending.push_back(*el);
                        let held = b.pending.len() + self.outgoing.unacked_len();
                        if held > max {
                            tracing::warn!("more than {max} stanzas held for a detached session; ending it");
                            return;
                        }
                    }
                    Some(Outbound::Close(_)) | None => return,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!("resumption timed out");
                    return;
                }
            }
        }
    }

    /// Cleans up after the session ended, however it ended: nothing
    /// unacknowledged or queued is lost (messages go to offline storage),
    /// and nothing acknowledged is stored again.
    async fn finish(&mut self) {
        let Some(mut b) = self.bound.take() else {
            return;
        };
        if let Some(sm) = self.outgoing.sm.as_ref() {
            self.node.resumable.remove(&sm.id);
            if sm.resumable {
                self.node.expired_sessions.insert(
                    sm.id.clone(),
                    (b.session.user.clone(), sm.handled(), Instant::now()),
                );
            }
        }
        presence::disconnected(&self.node, &mut b.session).await;
        self.node
            .router
            .unbind(&b.session.user, b.session.resource(), self.conn_id);
        blocking::unload(&self.node, &b.session.user);
        let mut keep = self.outgoing.take_unacked();
        keep.extend(b.csi.flush());
        keep.extend(b.pending.drain(..));
        keep.append(&mut self.outgoing.overflow);
        if let Some(rx) = self.rx.as_mut() {
            rx.close();
            while let Ok(msg) = rx.try_recv() {
                if let Outbound::Stanza(el) = msg {
                    keep.push(*el);
                }
            }
        }
        for el in keep {
            modules::components::undelivered(&self.node, &el);
            modules::offline::requeue(&self.node, &b.session, el).await;
        }
    }
}

async fn recv_opt<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads what the peer sent into a buffer the size of it. The scratch
/// space is on the stack for the length of one poll: most sessions are idle
/// most of the time, and an idle one then holds no read buffer.
fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> impl std::future::Future<Output = std::io::Result<Vec<u8>>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = tokio::io::ReadBuf::uninit(&mut scratch);
        std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
        std::task::Poll::Ready(Ok(buf.filled().to_vec()))
    })
}

/// TLS facts the SASL layer needs. tls-exporter channel binding is only
/// defined for TLS 1.3 (RFC 9266).
fn link_security(conn: &rustls::ServerConnection) -> LinkSecurity {
    let exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
    } else {
        None
    };
    LinkSecurity {
        tls: true,
        tls_exporter: exporter,
    }
}

/// Queue items are handed only to component connections (`crate::queue`
/// attaches no other); one here would be a bug, and it stays queued.
fn queue_item_to_client(id: i64) {
    tracing::error!(id, "a component's queue item reached a client connection");
}
