//! One task per connection: moves bytes between the socket and the
//! protocol core, and carries out the core's actions (TLS upgrade,
//! credential lookups, binding, stanza handling).

use crate::limits::ReadRate;
use crate::modules::{self, blocking, presence, Session};
use crate::node::Node;
use crate::router::{BindRequest, Outbound};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tributary_proto::error::{StreamError, StreamErrorCondition};
use tributary_proto::negotiation::{Action, C2sNegotiator, C2sSettings, Input};
use tributary_proto::sasl::LinkSecurity;
use tributary_proto::stanza;
use tributary_proto::xml::Framer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP that upgrades with STARTTLS.
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
}

/// Bytes read per call; small, because most sessions are idle most of the time.
const READ_CHUNK: usize = 4096;
/// A peer that accepts no bytes for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(
    node: Arc<Node>,
    tcp: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
    let conn_span = span.clone();
    async move {
        tracing::debug!("connected");
        let mut conn = Conn::new(node, peer, transport, shutdown, conn_span);
        conn.serve(tcp, transport).await;
        conn.finish().await;
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

enum End<S> {
    StartTls(S),
    Closed,
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
    rx: mpsc::Receiver<Outbound>,
    /// Cancelled by the router when our queue overflowed.
    kill: CancellationToken,
    shutdown: CancellationToken,
    session: Option<Session>,
    /// Bytes waiting to be written.
    out: Vec<u8>,
    /// The account of the SASL attempt in progress, for failure accounting.
    attempted_user: Option<String>,
    /// The account authenticated on this stream, once SASL succeeded.
    authenticated: Option<jid::BareJid>,
    closing: bool,
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
        Conn {
            negotiator: C2sNegotiator::new(settings),
            framer: Framer::new(limits.max_stanza_bytes),
            rate: ReadRate::new(limits.read_bytes_per_second, limits.read_burst_bytes),
            conn_id: node.router.new_conn_id(),
            tx,
            rx,
            kill: CancellationToken::new(),
            shutdown,
            session: None,
            out: Vec::new(),
            attempted_user: None,
            authenticated: None,
            closing: false,
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
                End::Closed => return,
            },
        };
        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
        };
        let link = link_security(tls.get_ref().1);
        self.framer.reset();
        let mut ignored = Vec::new();
        self.negotiator
            .handle(Input::TlsEstablished(link), &mut ignored);
        self.drive(tls).await;
    }

    /// Runs the stream until it closes or asks for a TLS upgrade.
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&mut self, mut stream: S) -> End<S> {
        let mut buf = vec![0u8; READ_CHUNK];
        let login_deadline = tokio::time::Instant::now()
            + Duration::from_secs(self.node.config.limits.login_timeout);
        loop {
            if !self.out.is_empty() && !self.flush(&mut stream).await {
                return End::Closed;
            }
            if self.closing {
                let _ = stream.shutdown().await;
                return End::Closed;
            }
            let bound = self.session.is_some();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.close_with(Some(StreamError::new(StreamErrorCondition::SystemShutdown)));
                }
                _ = self.kill.cancelled() => {
                    self.close_with(Some(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        "too many stanzas waiting: the client is not reading",
                    )));
                }
                msg = self.rx.recv(), if bound => match msg {
                    Some(Outbound::Stanza(el)) => self.out.extend_from_slice(&stanza::to_bytes(&el)),
                    Some(Outbound::Close(err)) => self.close_with(Some(err)),
                    None => self.closing = true,
                },
                _ = tokio::time::sleep_until(login_deadline), if !bound => {
                    self.close_with(Some(StreamError::new(StreamErrorCondition::ConnectionTimeout)));
                }
                read = stream.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => return End::Closed,
                        Ok(n) => n,
                    };
                    if self.on_bytes(&buf[..n]).await {
                        // STARTTLS: nothing the client sent after <starttls/>
                        // may be used (RFC 6120 5.4.3.3); flush <proceed/>.
                        if !self.flush(&mut stream).await {
                            return End::Closed;
                        }
                        return End::StartTls(stream);
                    }
                    let pause = self.rate.consume(n, Instant::now());
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Writes everything pending; false when the peer is gone or stuck.
    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> bool {
        let data = std::mem::take(&mut self.out);
        let write = async {
            stream.write_all(&data).await?;
            stream.flush().await
        };
        tokio::select! {
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
            self.out.extend_from_slice(e.to_xml().as_bytes());
        }
        self.out.extend_from_slice(b"</stream:stream>");
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
                Action::Write(s) => self.out.extend_from_slice(s.as_bytes()),
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
                    self.session = Some(session);
                }
                Action::Stanza(el) => {
                    if let Some(s) = self.session.as_mut() {
                        modules::handle_stanza(&self.node, s, el).await;
                        for reply in s.replies.drain(..) {
                            self.out.extend_from_slice(&stanza::to_bytes(&reply));
                        }
                    }
                }
                Action::Close(err) => self.close_with(err),
            }
        }
        starttls
    }

    /// Cleans up after the stream ended, however it ended.
    async fn finish(&mut self) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        presence::disconnected(&self.node, &mut s).await;
        self.node.router.unbind(&s.user, s.resource(), s.conn_id);
        blocking::unload(&self.node, &s.user);
        // Stanzas still queued for us are not lost: messages go offline.
        self.rx.close();
        while let Ok(Outbound::Stanza(el)) = self.rx.try_recv() {
            modules::offline::requeue(&self.node, &s, el).await;
        }
    }
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
