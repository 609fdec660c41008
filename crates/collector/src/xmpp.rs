//! The client side of an XMPP stream, just what a collector needs:
//! STARTTLS, SASL PLAIN over TLS, resource binding, and XEP-0198 (enable
//! with resumption, or resume). Parsing is `tributary_proto`'s [`Framer`].
//!
//! Once negotiated, the stream is split: a reader task frames everything
//! the server sends into an unbounded channel (so the server can always
//! write to us while we write to it), and the caller writes on the other
//! half.

use crate::nego::{Nego, NegoError, STEP};
use crate::Error;
use base64::Engine as _;
use minidom::Element;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tributary_proto::error::escape;
use tributary_proto::xml::{Frame, Framer};
use tributary_proto::{ns, sm};

/// Who to log in as, where, and how to check the server.
#[derive(Clone)]
pub struct Params {
    pub user: String,
    pub domain: String,
    pub password: String,
    pub resource: String,
    pub server: String,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Params {
    pub fn new(config: &crate::CollectorConfig) -> Result<Params, Error> {
        let (bare, jid_resource) = match config.jid.split_once('/') {
            Some((b, r)) => (b, Some(r)),
            None => (config.jid.as_str(), None),
        };
        let Some((user, domain)) = bare.split_once('@') else {
            return Err(Error::Config(format!(
                "jid {:?} has no local part (expected user@domain)",
                config.jid
            )));
        };
        if user.is_empty() || domain.is_empty() {
            return Err(Error::Config(format!("invalid jid {:?}", config.jid)));
        }
        if config.server.is_empty() {
            return Err(Error::Config("no server address".into()));
        }
        let resource = config
            .resource
            .clone()
            .or_else(|| jid_resource.map(str::to_owned))
            .unwrap_or_else(|| format!("collector-{:08x}", rand::random::<u32>()));
        Ok(Params {
            user: user.to_owned(),
            domain: domain.to_ascii_lowercase(),
            password: config.password.clone(),
            resource,
            server: config.server.clone(),
            tls: crate::tls::client_config(config)?,
        })
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Worth trying again later (network, server restarting, ...).
    Retry(String),
    /// Trying again cannot help (wrong password, untrusted certificate).
    Fatal(Error),
}

impl From<NegoError> for ConnectError {
    fn from(e: NegoError) -> Self {
        match e {
            NegoError::Stream { text, fatal: true } => {
                ConnectError::Fatal(Error::Unsupported(text))
            }
            other => ConnectError::Retry(other.to_string()),
        }
    }
}

/// XEP-0198 as granted by `<enabled/>`.
#[derive(Debug, Clone)]
pub struct Enabled {
    pub id: String,
    pub resume: bool,
}

/// How the session came to be.
#[derive(Debug)]
pub enum Established {
    /// The previous session was resumed; `h` is how many of our stanzas
    /// the server handled.
    Resumed { h: u32 },
    /// A new session. `failed_h`: the server's count for the previous
    /// session when it refused to resume it but still knew it. `early`:
    /// stanzas the server sent before `<enabled/>` (receipts for an earlier
    /// session, say), outside stream management's count.
    Fresh {
        jid: String,
        sm: Option<Enabled>,
        failed_h: Option<u32>,
        early: Vec<Element>,
    },
}

/// A negotiated stream.
pub struct Link {
    rx: mpsc::UnboundedReceiver<Result<Frame, String>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
    reader: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Link {
    /// The next frame from the server; `Err` when the link is gone.
    pub async fn recv(&mut self) -> Result<Frame, String> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err("connection closed".into()),
        }
    }

    /// A frame that has already arrived, if any.
    pub fn try_recv(&mut self) -> Option<Result<Frame, String>> {
        self.rx.try_recv().ok()
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), String> {
        let w = &mut self.writer;
        match tokio::time::timeout(STEP, async {
            w.write_all(data).await?;
            w.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("write timed out".into()),
        }
    }

    /// Ends the stream cleanly: acknowledges what we handled (so the server
    /// keeps nothing for us), closes, and waits briefly for the server's
    /// close.
    pub async fn close(mut self, handled: Option<u32>) {
        let mut bye = String::new();
        if let Some(h) = handled {
            bye.push_str(&format!("<a xmlns='{}' h='{h}'/>", sm::NS));
        }
        bye.push_str("</stream:stream>");
        if self.write(bye.as_bytes()).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match self.recv().await {
                    Ok(Frame::StreamClose) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
    }
}

/// Connects, secures, authenticates, and then resumes `resume` (previd,
/// our handled count) or binds a fresh session, enabling XEP-0198 with
/// resumption when `sm` is set.
pub async fn connect(
    p: &Params,
    resume: Option<(String, u32)>,
    sm: bool,
) -> Result<(Link, Established), ConnectError> {
    let tcp = match tokio::time::timeout(STEP, TcpStream::connect(&p.server)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(ConnectError::Retry(format!("{}: {e}", p.server))),
        Err(_) => {
            return Err(ConnectError::Retry(format!(
                "{}: connect timed out",
                p.server
            )))
        }
    };
    let _ = tcp.set_nodelay(true);

    // Plain stream: only to ask for TLS.
    let mut n = Nego::new(tcp);
    let features = n.open(&p.domain).await?;
    if !features.has_child("starttls", ns::TLS) {
        return Err(ConnectError::Fatal(Error::Unsupported(
            "the server does not offer STARTTLS".into(),
        )));
    }
    n.send(&format!("<starttls xmlns='{}'/>", ns::TLS)).await?;
    let answer = n.element().await?;
    if !answer.is("proceed", ns::TLS) {
        return Err(ConnectError::Retry(format!(
            "STARTTLS refused: <{}/>",
            answer.name()
        )));
    }
    let name = rustls::pki_types::ServerName::try_from(p.domain.clone())
        .map_err(|e| ConnectError::Fatal(Error::Config(format!("domain {:?}: {e}", p.domain))))?;
    let tls = tokio_rustls::TlsConnector::from(p.tls.clone())
        .connect(name, n.io)
        .await
        .map_err(tls_error)?;

    // TLS stream: authenticate.
    let mut n = Nego::new(tls);
    let features = n.open(&p.domain).await?;
    let offers_plain = features.get_child("mechanisms", ns::SASL).is_some_and(|m| {
        m.children()
            .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "PLAIN")
    });
    if !offers_plain {
        return Err(ConnectError::Fatal(Error::Unsupported(
            "the server does not offer SASL PLAIN over TLS".into(),
        )));
    }
    let creds = format!("\0{}\0{}", p.user, p.password);
    let b64 = base64::engine::general_purpose::STANDARD.encode(creds.as_bytes());
    n.send(&format!(
        "<auth xmlns='{}' mechanism='PLAIN'>{b64}</auth>",
        ns::SASL
    ))
    .await?;
    let answer = n.element().await?;
    if answer.is("failure", ns::SASL) {
        let cond = answer
            .children()
            .find(|c| c.name() != "text")
            .map(|c| c.name().to_owned())
            .unwrap_or_else(|| "failure".into());
        let text = answer
            .get_child("text", ns::SASL)
            .map(|t| format!(": {}", t.text()))
            .unwrap_or_default();
        return Err(ConnectError::Fatal(Error::Auth(format!("{cond}{text}"))));
    }
    if !answer.is("success", ns::SASL) {
        return Err(ConnectError::Retry(format!(
            "unexpected <{}/> during authentication",
            answer.name()
        )));
    }

    // Authenticated stream: resume or bind.
    let features = n.open(&p.domain).await?;
    let offers_sm = features.has_child("sm", sm::NS);
    let mut failed_h = None;
    if let (Some((previd, h)), true) = (resume, offers_sm) {
        n.send(&format!(
            "<resume xmlns='{}' previd='{}' h='{h}'/>",
            sm::NS,
            escape(&previd)
        ))
        .await?;
        let answer = n.element().await?;
        if answer.is("resumed", sm::NS) {
            let h = sm::parse_h(&answer)
                .ok_or_else(|| ConnectError::Retry("<resumed/> without a valid h".into()))?;
            return Ok((n.into_link(), Established::Resumed { h }));
        }
        if !answer.is("failed", sm::NS) {
            return Err(ConnectError::Retry(format!(
                "unexpected <{}/> in answer to <resume/>",
                answer.name()
            )));
        }
        failed_h = sm::parse_h(&answer);
        tracing::debug!("session not resumed; starting a new one");
    }
    if !features.has_child("bind", ns::BIND) {
        return Err(ConnectError::Fatal(Error::Unsupported(
            "the server does not offer resource binding".into(),
        )));
    }
    n.send(&format!(
        "<iq xmlns='{}' type='set' id='bind-1'><bind xmlns='{}'><resource>{}</resource></bind></iq>",
        ns::CLIENT,
        ns::BIND,
        escape(&p.resource)
    ))
    .await?;
    let answer = n.iq_answer("bind-1").await?;
    let jid = answer
        .get_child("bind", ns::BIND)
        .and_then(|b| b.get_child("jid", ns::BIND))
        .map(|j| j.text())
        .ok_or_else(|| ConnectError::Retry("resource binding refused".into()))?;
    let session_required = features
        .get_child("session", ns::SESSION)
        .is_some_and(|s| !s.has_child("optional", ns::SESSION));
    if session_required {
        n.send(&format!(
            "<iq xmlns='{}' type='set' id='session-1'><session xmlns='{}'/></iq>",
            ns::CLIENT,
            ns::SESSION
        ))
        .await?;
        n.iq_answer("session-1").await?;
    }
    let mut enabled = None;
    let mut early = Vec::new();
    if sm && offers_sm {
        n.send(&format!("<enable xmlns='{}' resume='true'/>", sm::NS))
            .await?;
        // Stanzas the server sends before <enabled/> are outside stream
        // management's count; only the SM answer (or an error) decides.
        let answer = loop {
            let e = n.element().await?;
            if e.has_ns(sm::NS) || e.name() == "error" {
                break e;
            }
            early.push(e);
        };
        if answer.name() == "error" {
            return Err(ConnectError::Retry(
                "stream error while enabling stream management".into(),
            ));
        }
        if answer.is("enabled", sm::NS) {
            enabled = Some(Enabled {
                id: answer.attr("id").unwrap_or_default().to_owned(),
                resume: matches!(answer.attr("resume"), Some("true" | "1"))
                    && answer.attr("id").is_some(),
            });
        } else {
            tracing::warn!("stream management refused: <{}/>", answer.name());
        }
    }
    Ok((
        n.into_link(),
        Established::Fresh {
            jid,
            sm: enabled,
            failed_h,
            early,
        },
    ))
}

/// Untrusted certificates will not become trusted by retrying.
fn tls_error(e: std::io::Error) -> ConnectError {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(
            err @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType),
        ) => ConnectError::Fatal(Error::Tls(err.to_string())),
        _ => ConnectError::Retry(format!("TLS handshake: {e}")),
    }
}

impl Nego<TlsStream<TcpStream>> {
    fn into_link(self) -> Link {
        let (read, writer) = tokio::io::split(self.io);
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_frames(read, self.framer, self.buf, tx));
        Link { rx, writer, reader }
    }
}

async fn read_frames(
    mut read: ReadHalf<TlsStream<TcpStream>>,
    mut framer: Framer,
    mut buf: Vec<u8>,
    tx: mpsc::UnboundedSender<Result<Frame, String>>,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        loop {
            let mut slice: &[u8] = &buf;
            let before = slice.len();
            let parsed = framer.next_frame(&mut slice);
            let used = before - slice.len();
            buf.drain(..used);
            match parsed {
                Ok(Some(f)) => {
                    if tx.send(Ok(f)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(format!("unreadable data from the server: {e:?}")));
                    return;
                }
            }
        }
        match read.read(&mut chunk).await {
            Ok(0) => {
                let _ = tx.send(Err("connection closed by the server".into()));
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                let _ = tx.send(Err(format!("read failed: {e}")));
                return;
            }
        }
    }
}
