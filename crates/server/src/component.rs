//! One task per external component connection (XEP-0114): the handshake,
//! stanzas both ways, and XEP-0198 acks through the shared `Outgoing`
//! layer, so the server knows exactly which stanzas a processor has taken.

use crate::limits::ReadRate;
use crate::modules;
use crate::node::Node;
use crate::router::{ComponentEntry, Outbound};
use crate::stream::Outgoing;
use minidom::Element;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tributary_proto::component::ComponentNegotiator;
use tributary_proto::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use tributary_proto::negotiation::Action;
use tributary_proto::sm::{self, SmState};
use tributary_proto::xml::Framer;
use tributary_proto::{ns, stanza};

const READ_CHUNK: usize = 8192;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A component must finish its handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

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

fn to_component_ns(el: Element) -> Element {
    stanza::translate(el, ns::CLIENT, ns::COMPONENT_ACCEPT)
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
    closing: bool,
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
            rate: ReadRate::new(limits.read_bytes_per_second, limits.read_burst_bytes),
            outgoing: Outgoing::new(
                sm_config.ack_request_every,
                Duration::from_millis(sm_config.ack_request_delay_ms),
                to_component_ns,
            ),
            conn_id: node.router.new_conn_id(),
            tx,
            rx,
            kill: CancellationToken::new(),
            shutdown,
            domain: None,
            closing: false,
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
                msg = self.rx.recv(), if connected => match msg {
                    Some(Outbound::Stanza(el)) => self.emit(el),
                    Some(Outbound::Close(err)) => self.close_with(Some(err)),
                    None => self.closing = true,
                },
                _ = tokio::time::sleep_until(handshake_deadline), if !connected => {
                    self.close_with(Some(StreamError::new(StreamErrorCondition::ConnectionTimeout)));
                }
                _ = sleep_until_opt(ack_due) => self.outgoing.on_timer(Instant::now()),
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

    fn emit(&mut self, el: Element) {
        if let Err(e) = self.outgoing.emit(el) {
            tracing::warn!("{e}; closing the component stream");
            if !self.closing {
                self.close_with(Some(StreamError::with_text(
                    StreamErrorCondition::PolicyViolation,
                    "too many unacknowledged stanzas",
                )));
            }
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
                }
                Action::Stanza(el) => {
                    if let Some(reply) = modules::from_component(&self.node, el).await {
                        self.emit(reply);
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
                }
                Action::AckRequested => self.outgoing.answer_ack_request(),
                Action::Acked(h) => {
                    if let Err(e) = self.outgoing.on_ack(h) {
                        let mut err = StreamError::with_text(
                            StreamErrorCondition::UndefinedCondition,
                            e.to_string(),
                        );
                        if let Some(app) = e.app_condition() {
                            err = err.with_app(app);
                        }
                        self.close_with(Some(err));
                    }
                }
                // Client-stream actions never come from the component core.
                _ => {}
            }
        }
    }

    /// The connection ended: what the component never acknowledged goes to
    /// another connection of the same domain, or back to its sender as an
    /// error; nothing is dropped silently.
    fn finish(&mut self) {
        let Some(domain) = self.domain.take() else {
            return;
        };
        self.node.router.detach_component(&domain, self.conn_id);
        tracing::info!("component disconnected");
        let mut left = self.outgoing.take_unacked();
        left.append(&mut self.outgoing.overflow);
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            if let Outbound::Stanza(el) = msg {
                left.push(el);
            }
        }
        let (mut moved, mut bounced) = (0, 0);
        for el in left {
            // Stanzas kept by SM are in the component's namespace.
            let el = stanza::translate(el, ns::COMPONENT_ACCEPT, ns::CLIENT);
            match self.node.router.to_component(&domain, el) {
                Ok(()) => moved += 1,
                Err(el) => {
                    bounced += 1;
                    modules::bounce(&self.node, &el, StanzaErrorCondition::ServiceUnavailable);
                }
            }
        }
        if moved + bounced > 0 {
            tracing::warn!(moved, bounced, "stanzas the component had not acknowledged");
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
