//! Client-side stream negotiation, one step at a time: write a request,
//! then read frames until the server's answer. Shared by the collector's
//! link (`xmpp.rs`) and `tributary bench`'s client, which differ in what
//! they negotiate (PLAIN and resumption; SCRAM and plain SM), not in how a
//! step is read. Each step is bounded by [`STEP`].

use minidom::Element;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tributary_proto::error::escape;
use tributary_proto::ns;
use tributary_proto::xml::{Frame, Framer};

/// Bound on each negotiation step (one answer from the server), and on
/// one write.
pub const STEP: Duration = Duration::from_secs(20);
/// Largest element accepted from the server.
const MAX_ELEMENT: usize = 1 << 20;

/// Why a negotiation step failed.
#[derive(Debug, thiserror::Error)]
pub enum NegoError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server did not answer in time ({0})")]
    Timeout(&'static str),
    #[error("the server closed the stream")]
    Closed,
    #[error("unreadable data from the server: {0}")]
    Xml(String),
    /// A stream error from the server; `fatal` when its condition says
    /// that trying again cannot help (host-unknown, invalid-namespace,
    /// unsupported-version, not-authorized).
    #[error("{text}")]
    Stream { text: String, fatal: bool },
    #[error("unexpected <{name}/> {during}")]
    Unexpected { name: String, during: &'static str },
    #[error("request {id} refused: {answer}")]
    Refused { id: String, answer: String },
}

/// One stream being negotiated. The fields are public so that a caller can
/// take the socket for the TLS handshake, and keep the framer and the
/// bytes read past the last answer when the stream goes into use.
pub struct Nego<S> {
    pub io: S,
    pub framer: Framer,
    /// Read and not yet framed.
    pub buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Nego<S> {
    pub fn new(io: S) -> Nego<S> {
        Nego {
            io,
            framer: Framer::new(MAX_ELEMENT),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, data: &str) -> Result<(), NegoError> {
        let io = &mut self.io;
        match tokio::time::timeout(STEP, async {
            io.write_all(data.as_bytes()).await?;
            io.flush().await
        })
        .await
        {
            Ok(r) => Ok(r?),
            Err(_) => Err(NegoError::Timeout("write")),
        }
    }

    async fn frame(&mut self) -> Result<Frame, NegoError> {
        loop {
            let mut slice: &[u8] = &self.buf;
            let before = slice.len();
            let parsed = self.framer.next_frame(&mut slice);
            let used = before - slice.len();
            self.buf.drain(..used);
            match parsed {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(NegoError::Xml(format!("{e:?}"))),
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout(STEP, self.io.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => return Err(NegoError::Timeout("negotiation")),
            };
            if n == 0 {
                return Err(NegoError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next element; a stream error or close ends the attempt.
    pub async fn element(&mut self) -> Result<Element, NegoError> {
        loop {
            match self.frame().await? {
                Frame::Element(el) => return check_stream_error(el),
                Frame::StreamClose => return Err(NegoError::Closed),
                Frame::StreamOpen(_) | Frame::Whitespace => {}
            }
        }
    }

    /// Opens a stream (after resetting the framer, as every restart of
    /// the stream requires) and returns its features.
    pub async fn open(&mut self, domain: &str) -> Result<Element, NegoError> {
        self.framer.reset();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{}' version='1.0'>",
            ns::CLIENT,
            ns::STREAM,
            escape(domain)
        ))
        .await?;
        loop {
            match self.frame().await? {
                Frame::StreamOpen(_) => break,
                Frame::Whitespace => {}
                Frame::Element(el) => {
                    let el = check_stream_error(el)?;
                    return Err(unexpected(&el, "before the stream header"));
                }
                Frame::StreamClose => return Err(NegoError::Closed),
            }
        }
        let features = self.element().await?;
        if !features.is("features", ns::STREAM) {
            return Err(unexpected(&features, "instead of stream features"));
        }
        Ok(features)
    }

    /// The result for the iq with `id`; an error answer ends the attempt.
    pub async fn iq_answer(&mut self, id: &str) -> Result<Element, NegoError> {
        loop {
            let el = self.element().await?;
            if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id) {
                return match el.attr("type") {
                    Some("result") => Ok(el),
                    _ => Err(NegoError::Refused {
                        id: id.to_owned(),
                        answer: tributary_proto::stanza::to_string(&el),
                    }),
                };
            }
        }
    }
}

/// An element the server sent where another was expected.
pub fn unexpected(el: &Element, during: &'static str) -> NegoError {
    NegoError::Unexpected {
        name: el.name().to_owned(),
        during,
    }
}

fn check_stream_error(el: Element) -> Result<Element, NegoError> {
    match stream_error(&el) {
        Some(text) => Err(NegoError::Stream {
            text,
            fatal: is_fatal(&el),
        }),
        None => Ok(el),
    }
}

/// The condition (and text) of a stream error element, if `el` is one.
pub fn stream_error(el: &Element) -> Option<String> {
    if !el.is("error", ns::STREAM) {
        return None;
    }
    let cond = el
        .children()
        .find(|c| c.ns() == ns::STREAMS_ERR && c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "undefined-condition".into());
    let text = el
        .get_child("text", ns::STREAMS_ERR)
        .map(|t| format!(" ({})", t.text()))
        .unwrap_or_default();
    Some(format!("stream error <{cond}/>{text}"))
}

/// A stream error whose condition will not change on another try: the
/// server does not serve this domain or this protocol, or refuses us.
fn is_fatal(el: &Element) -> bool {
    let fatal = [
        "host-unknown",
        "invalid-namespace",
        "unsupported-version",
        "not-authorized",
    ];
    el.children()
        .any(|c| c.ns() == ns::STREAMS_ERR && fatal.contains(&c.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='localhost' version='1.0'>";

    /// A negotiation against a scripted server on the other end of a
    /// pipe: it says its lines, ends its half of the stream, and reads
    /// whatever the client writes.
    fn against(server_says: &str) -> Nego<tokio::io::DuplexStream> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let script = server_says.to_owned();
        tokio::spawn(async move {
            server.write_all(script.as_bytes()).await?;
            server.shutdown().await?;
            tokio::io::copy(&mut server, &mut tokio::io::sink()).await
        });
        Nego::new(client)
    }

    #[tokio::test]
    async fn open_returns_the_features_and_iq_answer_finds_the_result() {
        let mut n = against(&format!(
            "{HEADER}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>\
             <iq type='result' id='other'/><iq type='result' id='bind'><bind/></iq>"
        ));
        let features = n.open("localhost").await.expect("features");
        assert!(features.has_child("bind", ns::BIND));
        let answer = n.iq_answer("bind").await.expect("the answer to bind");
        assert_eq!(answer.attr("id"), Some("bind"));
    }

    #[tokio::test]
    async fn a_stream_error_says_whether_trying_again_can_help() {
        let mut n = against(&format!(
            "{HEADER}<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no such host</text></stream:error>"
        ));
        match n.open("elsewhere").await {
            Err(NegoError::Stream { text, fatal }) => {
                assert_eq!(text, "stream error <host-unknown/> (no such host)");
                assert!(fatal);
            }
            other => panic!("expected a fatal stream error, got {other:?}"),
        }
        let mut n = against(&format!(
            "{HEADER}<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        ));
        assert!(matches!(
            n.open("localhost").await,
            Err(NegoError::Stream { fatal: false, .. })
        ));
    }

    #[tokio::test]
    async fn a_refused_iq_and_a_closed_stream_end_the_attempt() {
        let mut n = against(&format!(
            "{HEADER}<stream:features/><iq type='error' id='bind'/>"
        ));
        n.open("localhost").await.expect("features");
        assert!(matches!(
            n.iq_answer("bind").await,
            Err(NegoError::Refused { id, .. }) if id == "bind"
        ));
        assert!(matches!(n.element().await, Err(NegoError::Closed)));
    }
}
