//! A minimal XMPP client, just what the load generator needs, and written
//! to work the same against any server: TCP, STARTTLS (required), SASL
//! (SCRAM-SHA-1, SCRAM-SHA-256 or PLAIN through rsasl, with the salted
//! password kept after the first login as real clients do),
//! resource binding, the legacy session when a server requires it, and
//! optionally XEP-0198 stream management (`<enable/>` without resumption).
//!
//! Everything the server sends is parsed by `tributary_proto`'s rxml-based
//! [`Framer`]. After login a [`Session`] becomes a [`Duplex`]: one task
//! reads and writes concurrently (so a server that stops reading cannot
//! stop us from reading, and the reverse), with writes collected into one
//! buffer and sent in batches.

use crate::BenchError;
use base64::Engine as _;
use minidom::Element;
use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::{Iterations, Salt, SaltedPassword};
use rsasl::mechanisms::scram::tools;
use rsasl::prelude::{Mechname, SASLClient, SASLConfig, SessionError, State};
use rsasl::property::{AuthId, Password};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tributary_collector::nego::{stream_error, unexpected, Nego, NegoError, STEP};
use tributary_proto::error::escape;
use tributary_proto::xml::{Frame, Framer};
use tributary_proto::{ns, sm};

/// Size of one socket read.
const READ_CHUNK: usize = 8 * 1024;

/// Why a connection, a login or a session failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server did not answer in time ({0})")]
    Timeout(&'static str),
    #[error("the server closed the stream")]
    Closed,
    #[error("unreadable data from the server: {0}")]
    Xml(String),
    #[error("{0}")]
    Stream(String),
    #[error("the server does not offer {0}")]
    Unsupported(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("unexpected <{name}/> {during}")]
    Unexpected { name: String, during: &'static str },
    #[error("resource binding refused: {0}")]
    Bind(String),
    #[error("stream management: {0}")]
    Sm(String),
}

impl From<NegoError> for ClientError {
    fn from(e: NegoError) -> Self {
        match e {
            NegoError::Io(e) => ClientError::Io(e),
            NegoError::Timeout(step) => ClientError::Timeout(step),
            NegoError::Closed => ClientError::Closed,
            NegoError::Xml(e) => ClientError::Xml(e),
            NegoError::Stream { text, .. } => ClientError::Stream(text),
            NegoError::Unexpected { name, during } => ClientError::Unexpected { name, during },
            NegoError::Refused { id, .. } => ClientError::Bind(format!("request {id} refused")),
        }
    }
}

/// SASL mechanism to log in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    #[value(name = "SCRAM-SHA-1")]
    ScramSha1,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "PLAIN")]
    Plain,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::Plain => "PLAIN",
        }
    }
}

/// Where to connect and how to log in; shared by every client of a run.
#[derive(Clone)]
pub struct ClientConfig {
    pub server: String,
    pub domain: String,
    pub password: String,
    pub mechanism: Mechanism,
    pub tls: Arc<rustls::ClientConfig>,
    /// Enable XEP-0198 after binding.
    pub sm: bool,
    /// Salted passwords derived so far (SCRAM).
    pub salts: SaltCache,
}

/// How the server's certificate is checked.
pub enum Trust<'a> {
    /// The certificates in a PEM file (a self-signed server's own).
    Ca(&'a Path),
    /// Any certificate (handshake signatures are still checked).
    Insecure,
    /// The system's roots.
    System,
}

/// The TLS client configuration for `trust` (the collector's, so the
/// load generator checks certificates the same way).
pub fn tls_config(trust: Trust<'_>) -> Result<Arc<rustls::ClientConfig>, BenchError> {
    let (ca, insecure) = match trust {
        Trust::Ca(path) => (Some(path), false),
        Trust::Insecure => (None, true),
        Trust::System => (None, false),
    };
    tributary_collector::tls::client_config_for(ca, insecure)
        .map_err(|e| BenchError::Tls(e.to_string()))
}

/// A logged-in stream, before it is split for the run.
pub struct Session {
    /// The full JID the server bound.
    pub jid: String,
    /// XEP-0198 is enabled on the stream.
    pub sm: bool,
    io: TlsStream<TcpStream>,
    framer: Framer,
    buf: Vec<u8>,
}

/// Logs in as `user@domain`: TCP, STARTTLS, SASL, bind, and stream
/// management when configured.
pub async fn login(cfg: &ClientConfig, user: &str) -> Result<Session, ClientError> {
    let tcp = match tokio::time::timeout(STEP, TcpStream::connect(&cfg.server)).await {
        Ok(Ok(t)) => t,
        Ok(Err(source)) => {
            return Err(ClientError::Connect {
                server: cfg.server.clone(),
                source,
            })
        }
        Err(_) => return Err(ClientError::Timeout("TCP connect")),
    };
    tcp.set_nodelay(true)?;

    let mut n = Nego::new(tcp);
    let features = n.open(&cfg.domain).await?;
    if !features.has_child("starttls", ns::TLS) {
        return Err(ClientError::Unsupported("STARTTLS".into()));
    }
    n.send(&format!("<starttls xmlns='{}'/>", ns::TLS)).await?;
    let answer = n.element().await?;
    if !answer.is("proceed", ns::TLS) {
        return Err(unexpected(&answer, "in answer to <starttls/>").into());
    }
    let name = ServerName::try_from(cfg.domain.clone())
        .map_err(|e| ClientError::Tls(format!("domain {:?}: {e}", cfg.domain)))?;
    let tls = match tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(cfg.tls.clone()).connect(name, n.io),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(ClientError::Tls(e.to_string())),
        Err(_) => return Err(ClientError::Timeout("TLS handshake")),
    };

    let mut n = Nego::new(tls);
    let features = n.open(&cfg.domain).await?;
    authenticate(&mut n, &features, cfg, user).await?;

    let features = n.open(&cfg.domain).await?;
    if !features.has_child("bind", ns::BIND) {
        return Err(ClientError::Unsupported("resource binding".into()));
    }
    n.send(&format!(
        "<iq type='set' id='bind'><bind xmlns='{}'/></iq>",
        ns::BIND
    ))
    .await?;
    let answer = n.iq_answer("bind").await?;
    let jid = answer
        .get_child("bind", ns::BIND)
        .and_then(|b| b.get_child("jid", ns::BIND))
        .map(|j| j.text())
        .ok_or_else(|| ClientError::Bind("no JID in the answer".into()))?;
    let session_required = features
        .get_child("session", ns::SESSION)
        .is_some_and(|s| !s.has_child("optional", ns::SESSION));
    if session_required {
        n.send(&format!(
            "<iq type='set' id='session'><session xmlns='{}'/></iq>",
            ns::SESSION
        ))
        .await?;
        n.iq_answer("session").await?;
    }
    let mut sm_on = false;
    if cfg.sm {
        if !features.has_child("sm", sm::NS) {
            return Err(ClientError::Unsupported(
                "XEP-0198 stream management".into(),
            ));
        }
        n.send(&format!("<enable xmlns='{}'/>", sm::NS)).await?;
        // Anything the server sends before <enabled/> is outside the count.
        loop {
            let el = n.element().await?;
            if el.is("enabled", sm::NS) {
                break;
            }
            if el.is("failed", sm::NS) {
                return Err(ClientError::Sm("<enable/> refused".into()));
            }
        }
        sm_on = true;
    }
    Ok(Session {
        jid,
        sm: sm_on,
        io: n.io,
        framer: n.framer,
        buf: n.buf,
    })
}

async fn authenticate(
    n: &mut Nego<TlsStream<TcpStream>>,
    features: &Element,
    cfg: &ClientConfig,
    user: &str,
) -> Result<(), ClientError> {
    let wanted = cfg.mechanism.name();
    let offered = features.get_child("mechanisms", ns::SASL).is_some_and(|m| {
        m.children()
            .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == wanted)
    });
    if !offered {
        return Err(ClientError::Unsupported(format!("SASL {wanted}")));
    }
    let mut exchange = SaslClient::start(cfg, user)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let encode = |data: &[u8]| {
        if data.is_empty() {
            "=".to_owned()
        } else {
            b64.encode(data)
        }
    };
    let initial = exchange.step(None)?;
    n.send(&format!(
        "<auth xmlns='{}' mechanism='{wanted}'>{}</auth>",
        ns::SASL,
        encode(&initial)
    ))
    .await?;
    loop {
        let el = n.element().await?;
        let text = el.text();
        let text = text.trim();
        let data = if text.is_empty() || text == "=" {
            Vec::new()
        } else {
            b64.decode(text)
                .map_err(|e| ClientError::Auth(format!("bad base64 from the server: {e}")))?
        };
        if el.is("challenge", ns::SASL) {
            let response = exchange.step(Some(&data))?;
            n.send(&format!(
                "<response xmlns='{}'>{}</response>",
                ns::SASL,
                encode(&response)
            ))
            .await?;
        } else if el.is("success", ns::SASL) {
            if !exchange.finished && !data.is_empty() {
                exchange.step(Some(&data))?;
            }
            if !exchange.finished {
                // SCRAM: the server must prove it knew the password too.
                return Err(ClientError::Auth(
                    "the server's success does not complete the exchange".into(),
                ));
            }
            return Ok(());
        } else if el.is("failure", ns::SASL) {
            let cond = el
                .children()
                .find(|c| c.name() != "text")
                .map(|c| c.name().to_owned())
                .unwrap_or_else(|| "failure".into());
            return Err(ClientError::Auth(cond));
        } else {
            return Err(unexpected(&el, "during authentication").into());
        }
    }
}

/// Salted passwords already derived, by hash name, salt and iteration
/// count. Real clients keep the salted password after the first login;
/// without this the generator would run PBKDF2 (thousands of HMACs) for
/// every login of a storm and measure itself rather than the server.
#[derive(Clone, Default)]
pub struct SaltCache(Arc<Mutex<SaltMap>>);

/// (hash name, salt, iterations) to the salted password.
type SaltMap = HashMap<(&'static str, Vec<u8>, u32), Arc<[u8]>>;

impl SaltCache {
    fn salted(&self, mechanism: &str, password: &str, salt: &[u8], iterations: u32) -> Arc<[u8]> {
        let hash = if mechanism.starts_with("SCRAM-SHA-256") {
            "SHA-256"
        } else {
            "SHA-1"
        };
        let key = (hash, salt.to_vec(), iterations);
        // A panic elsewhere while holding the lock leaves a usable map.
        if let Some(found) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return found.clone();
        }
        // SCRAM hashes the SASLprep'd password (RFC 5802 2.2).
        let prepped = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_owned());
        let salted: Arc<[u8]> = if hash == "SHA-256" {
            let mut out = digest::Output::<sha2::Sha256>::default();
            tools::hash_password::<sha2::Sha256>(prepped.as_bytes(), iterations, salt, &mut out);
            Arc::from(out.as_slice())
        } else {
            let mut out = digest::Output::<sha1::Sha1>::default();
            tools::hash_password::<sha1::Sha1>(prepped.as_bytes(), iterations, salt, &mut out);
            Arc::from(out.as_slice())
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, salted.clone());
        salted
    }
}

/// rsasl's questions during the exchange: who we are, and the salted
/// password (from the cache) or the password.
struct Callback {
    authcid: String,
    password: String,
    cache: SaltCache,
}

impl SessionCallback for Callback {
    fn callback(
        &self,
        session_data: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        if request.is::<SaltedPassword>() {
            let mechanism = session_data.mechanism().mechanism.as_str();
            if let (Some(salt), Some(iterations)) =
                (context.get_ref::<Salt>(), context.get_ref::<Iterations>())
            {
                let salted = self
                    .cache
                    .salted(mechanism, &self.password, salt, *iterations);
                request.satisfy::<SaltedPassword>(&salted)?;
            }
            return Ok(());
        }
        request
            .satisfy::<AuthId>(&self.authcid)?
            .satisfy::<Password>(self.password.as_bytes())?;
        Ok(())
    }
}

/// One SASL exchange on the client side, through rsasl.
struct SaslClient {
    session: rsasl::prelude::Session,
    finished: bool,
}

impl SaslClient {
    fn start(cfg: &ClientConfig, user: &str) -> Result<SaslClient, ClientError> {
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(Callback {
                authcid: user.to_owned(),
                password: cfg.password.clone(),
                cache: cfg.salts.clone(),
            })
            .map_err(|e| ClientError::Auth(e.to_string()))?;
        let name = Mechname::parse(cfg.mechanism.name().as_bytes())
            .map_err(|e| ClientError::Auth(e.to_string()))?;
        let session = SASLClient::new(config)
            .start_suggested(&[name])
            .map_err(|e| ClientError::Auth(e.to_string()))?;
        Ok(SaslClient {
            session,
            finished: false,
        })
    }

    /// One step; what to send back.
    fn step(&mut self, input: Option<&[u8]>) -> Result<Vec<u8>, ClientError> {
        if self.finished {
            return Err(ClientError::Auth(
                "the server sent more after the exchange ended".into(),
            ));
        }
        let mut out = Vec::new();
        // rsasl 2.3.1 can panic on malformed SCRAM input; the server must
        // not be able to crash the generator.
        let session = &mut self.session;
        let result = catch_unwind(AssertUnwindSafe(|| session.step(input, &mut out)));
        match result {
            Ok(Ok(State::Running)) => Ok(out),
            Ok(Ok(State::Finished(_))) => {
                self.finished = true;
                Ok(out)
            }
            Ok(Err(e)) => Err(ClientError::Auth(e.to_string())),
            Err(_) => Err(ClientError::Auth(
                "malformed SASL data from the server".into(),
            )),
        }
    }
}

/// What [`Duplex::incoming`] found in the stream.
#[derive(Debug)]
pub enum Incoming {
    /// A message, a presence, or an iq result or error (iq requests are
    /// answered inside).
    Stanza(Element),
    /// The server's XEP-0198 `<a h/>`: it handled `h` of our stanzas.
    Ack(u32),
}

/// The result of one wait in [`Duplex::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Bytes arrived: call [`Duplex::incoming`] until it returns `None`.
    Read,
    /// The requested instant was reached.
    Timer,
}

/// A logged-in stream during the run: one task reads and writes at once.
pub struct Duplex {
    pub jid: String,
    pub sm: bool,
    r: ReadHalf<TlsStream<TcpStream>>,
    w: WriteHalf<TlsStream<TcpStream>>,
    framer: Framer,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes were read that [`Duplex::incoming`] has not looked at yet.
    unparsed: bool,
    chunk: Box<[u8]>,
    out: Vec<u8>,
    out_pos: usize,
    need_flush: bool,
    /// XEP-0198: stanzas received from the server since `<enabled/>`.
    handled: u32,
    /// Stanzas we sent since `<enabled/>` (the count `<a h/>` refers to).
    sent: u32,
}

impl Session {
    pub fn into_duplex(self) -> Duplex {
        let (r, w) = tokio::io::split(self.io);
        Duplex {
            jid: self.jid,
            sm: self.sm,
            r,
            w,
            framer: self.framer,
            unparsed: !self.buf.is_empty(),
            buf: self.buf,
            pos: 0,
            chunk: vec![0u8; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            out_pos: 0,
            need_flush: false,
            handled: 0,
            sent: 0,
        }
    }

    /// Closes a session that was only opened to log in.
    pub async fn close(self) {
        self.into_duplex().close(Duration::from_secs(2)).await;
    }
}

impl Duplex {
    /// Queues one stanza for writing (counted for stream management).
    pub fn send_stanza(&mut self, xml: &str) {
        self.out.extend_from_slice(xml.as_bytes());
        self.sent = self.sent.wrapping_add(1);
    }

    /// Queues bytes that are not a stanza (`<r/>`, ...).
    pub fn send_raw(&mut self, xml: &str) {
        self.out.extend_from_slice(xml.as_bytes());
    }

    /// Stanzas sent since stream management was enabled (wrapping).
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Bytes queued and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what is queued while reading, until bytes arrive or `until`
    /// passes. Cancel-safe parts only: nothing is lost between calls.
    pub async fn wait(&mut self, until: Option<Instant>) -> Result<Wake, ClientError> {
        loop {
            if self.unparsed {
                return Ok(Wake::Read);
            }
            let want_write = self.out_pos < self.out.len();
            let want_flush = !want_write && self.need_flush;
            let timer = async {
                match until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let Duplex {
                r,
                w,
                chunk,
                out,
                out_pos,
                ..
            } = self;
            let pending = &out[*out_pos..];
            let write = async move {
                if want_write {
                    w.write(pending).await.map(Some)
                } else {
                    w.flush().await.map(|()| None)
                }
            };
            tokio::select! {
                biased;
                read = r.read(chunk) => {
                    let n = read?;
                    if n == 0 {
                        return Err(ClientError::Closed);
                    }
                    if self.pos > 0 {
                        self.buf.drain(..self.pos);
                        self.pos = 0;
                    }
                    self.buf.extend_from_slice(&self.chunk[..n]);
                    self.unparsed = true;
                    return Ok(Wake::Read);
                }
                written = write, if want_write || want_flush => {
                    match written? {
                        Some(0) => return Err(ClientError::Closed),
                        Some(n) => {
                            self.out_pos += n;
                            if self.out_pos == self.out.len() {
                                self.out.clear();
                                self.out_pos = 0;
                                self.need_flush = true;
                            }
                        }
                        None => self.need_flush = false,
                    }
                }
                _ = timer => return Ok(Wake::Timer),
            }
        }
    }

    /// The next message, presence or ack already read; `None` when more
    /// bytes are needed. Answers `<r/>` and iq requests by itself.
    pub fn incoming(&mut self) -> Result<Option<Incoming>, ClientError> {
        loop {
            let mut slice: &[u8] = &self.buf[self.pos..];
            let before = slice.len();
            let parsed = self.framer.next_frame(&mut slice);
            self.pos += before - slice.len();
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
            }
            let el = match parsed {
                Ok(Some(Frame::Element(el))) => el,
                Ok(Some(Frame::StreamClose)) => return Err(ClientError::Closed),
                Ok(Some(Frame::StreamOpen(_) | Frame::Whitespace)) => continue,
                Ok(None) => {
                    self.unparsed = false;
                    return Ok(None);
                }
                Err(e) => return Err(ClientError::Xml(format!("{e:?}"))),
            };
            if let Some(err) = stream_error(&el) {
                return Err(ClientError::Stream(err));
            }
            if el.has_ns(sm::NS) {
                match el.name() {
                    "r" => {
                        let a = format!("<a xmlns='{}' h='{}'/>", sm::NS, self.handled);
                        self.send_raw(&a);
                    }
                    "a" => match sm::parse_h(&el) {
                        Some(h) => return Ok(Some(Incoming::Ack(h))),
                        None => return Err(ClientError::Sm("<a/> without a valid h".into())),
                    },
                    other => return Err(ClientError::Sm(format!("unexpected <{other}/>"))),
                }
                continue;
            }
            if !el.has_ns(ns::CLIENT) {
                continue;
            }
            match el.name() {
                "message" | "presence" => {
                    self.handled = self.handled.wrapping_add(1);
                    return Ok(Some(Incoming::Stanza(el)));
                }
                "iq" => {
                    self.handled = self.handled.wrapping_add(1);
                    if matches!(el.attr("type"), Some("result" | "error")) {
                        return Ok(Some(Incoming::Stanza(el)));
                    }
                    self.answer_iq(&el);
                }
                _ => {}
            }
        }
    }

    /// Pings get a result; other requests `<service-unavailable/>`.
    fn answer_iq(&mut self, iq: &Element) {
        let kind = iq.attr("type").unwrap_or_default();
        if kind != "get" && kind != "set" {
            return;
        }
        let id = escape(iq.attr("id").unwrap_or_default());
        let to = iq
            .attr("from")
            .map(|f| format!(" to='{}'", escape(f)))
            .unwrap_or_default();
        let answer = if iq.has_child("ping", ns::PING) {
            format!("<iq type='result' id='{id}'{to}/>")
        } else {
            format!(
                "<iq type='error' id='{id}'{to}><error type='cancel'>\
                 <service-unavailable xmlns='{}'/></error></iq>",
                ns::STANZAS_ERR
            )
        };
        self.send_stanza(&answer);
    }

    /// Writes everything queued, waiting at most until `deadline`.
    pub async fn drain_writes(&mut self, deadline: Instant) -> Result<(), ClientError> {
        while self.pending_bytes() > 0 || self.need_flush {
            if self.wait(Some(deadline)).await? == Wake::Timer {
                return Err(ClientError::Timeout("write"));
            }
            // Frames read meanwhile are dropped; the run is over.
            while self.incoming()?.is_some() {}
        }
        Ok(())
    }

    /// Ends the stream cleanly: our final `<a h/>`, the close tag, and a
    /// short wait for the server's close.
    pub async fn close(mut self, wait: Duration) {
        if self.sm {
            let a = format!("<a xmlns='{}' h='{}'/>", sm::NS, self.handled);
            self.send_raw(&a);
        }
        self.send_raw("</stream:stream>");
        let deadline = Instant::now() + wait;
        if self.drain_writes(deadline).await.is_err() {
            return;
        }
        while let Ok(Wake::Read) = self.wait(Some(deadline)).await {
            if self.incoming().is_err() {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), self.w.shutdown()).await;
    }
}
