//! A hand-driven XMPP client on a raw socket, for tests that need to say
//! exactly what goes on the wire (bad input, stream management).
#![allow(dead_code)]

use super::{within, TestServer};
use base64::Engine;
use minidom::Element;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_xmpp::rustls::{self, pki_types::ServerName};
use tributary_proto::xml::{Frame, Framer};

pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A hand-driven client: writes what it is told, parses what comes back
/// with the same framer the server uses.
pub struct Raw {
    conn: Conn,
    framer: Framer,
    pending: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: &str) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Raw {
            conn: Conn::Tcp(tcp),
            framer: Framer::new(1 << 20),
            pending: Vec::new(),
        }
    }

    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.conn {
            Conn::Tcp(t) => t.write_all(data).await,
            Conn::Tls(t) => {
                t.write_all(data).await?;
                t.flush().await
            }
        }
    }

    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.conn {
            Conn::Tcp(t) => t.read(buf).await,
            Conn::Tls(t) => t.read(buf).await,
        }
    }

    pub async fn send(&mut self, data: &str) {
        self.write(data.as_bytes()).await.expect("write");
    }

    /// Next frame, or None when the server closed the connection.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            let mut slice: &[u8] = &self.pending;
            let before = slice.len();
            let r = self
                .framer
                .next_frame(&mut slice)
                .expect("server output is well-formed");
            let used = before - slice.len();
            self.pending.drain(..used);
            if let Some(f) = r {
                return Some(f);
            }
            let mut buf = [0u8; 8192];
            let n = within(self.read(&mut buf)).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Next top-level element, skipping headers and whitespace.
    pub async fn element(&mut self) -> Option<Element> {
        loop {
            match self.frame().await? {
                Frame::Element(e) => return Some(e),
                Frame::StreamClose => return None,
                _ => {}
            }
        }
    }

    /// Reads until the stream error and returns its condition; checks the
    /// stream is then closed.
    pub async fn stream_error(&mut self) -> String {
        loop {
            let Some(e) = self.element().await else {
                panic!("closed without a stream error")
            };
            if e.name() == "error" && e.ns() == "http://etherx.jabber.org/streams" {
                let cond = e
                    .children()
                    .find(|c| c.ns() == STREAMS && c.name() != "text")
                    .map(|c| c.name().to_owned())
                    .expect("a defined condition");
                assert!(
                    self.element().await.is_none(),
                    "stream closes after the error"
                );
                return cond;
            }
        }
    }

    pub async fn features(&mut self) -> Element {
        loop {
            let e = self.element().await.expect("features");
            if e.name() == "features" {
                return e;
            }
        }
    }

    pub async fn starttls(self, server: &TestServer) -> Raw {
        self.starttls_with(&server.tls).await
    }

    pub async fn starttls_with(mut self, tls: &Arc<rustls::ClientConfig>) -> Raw {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = self.element().await.expect("proceed");
        assert_eq!(proceed.name(), "proceed");
        let tls = tokio_rustls::TlsConnector::from(tls.clone());
        let name = ServerName::try_from("localhost").expect("name");
        let Conn::Tcp(tcp) = self.conn else {
            panic!("already TLS")
        };
        let stream = tls.connect(name, tcp).await.expect("TLS handshake");
        Raw {
            conn: Conn::Tls(Box::new(stream)),
            framer: Framer::new(1 << 20),
            pending: Vec::new(),
        }
    }

    /// Opens a stream, upgrades to TLS, authenticates with PLAIN and binds.
    pub async fn login(server: &TestServer, user: &str, password: &str) -> Raw {
        Raw::login_at(server, &server.c2s(), user, password).await
    }

    /// The same through another address (a proxy in front of the server).
    pub async fn login_at(server: &TestServer, addr: &str, user: &str, password: &str) -> Raw {
        let mut raw = Raw::authenticate_at(server, addr, user, password).await;
        raw.bind("raw").await;
        raw
    }

    /// STARTTLS and SASL PLAIN, up to the features of the restarted stream.
    pub async fn authenticate_at(
        server: &TestServer,
        addr: &str,
        user: &str,
        password: &str,
    ) -> Raw {
        Raw::authenticate_with(&server.tls, addr, user, password).await
    }

    /// STARTTLS (trusting `tls`) and SASL PLAIN against any address.
    pub async fn authenticate_with(
        tls: &Arc<rustls::ClientConfig>,
        addr: &str,
        user: &str,
        password: &str,
    ) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(HEADER).await;
        raw.features().await;
        let mut raw = raw.starttls_with(tls).await;
        raw.send(HEADER).await;
        raw.features().await;
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        raw.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
        ))
        .await;
        assert_eq!(raw.element().await.expect("sasl answer").name(), "success");
        raw.framer.reset();
        raw.send(HEADER).await;
        raw.features().await;
        raw
    }

    /// Connects as an external component (XEP-0114) and completes the
    /// handshake; returns the stream error instead when it fails.
    pub async fn component(addr: &str, domain: &str, secret: &str) -> Result<Raw, String> {
        let mut raw = Raw::connect(addr).await;
        raw.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        ))
        .await;
        let id = loop {
            match raw.frame().await {
                Some(Frame::StreamOpen(h)) => break h.id.expect("stream id"),
                Some(_) => {}
                None => panic!("closed before the header"),
            }
        };
        let digest = tributary_proto::component::handshake_digest(&id, secret);
        raw.send(&format!("<handshake>{digest}</handshake>")).await;
        let answer = raw.element().await.expect("handshake answer");
        if answer.name() == "handshake" {
            return Ok(raw);
        }
        let cond = answer
            .children()
            .find(|c| c.ns() == STREAMS && c.name() != "text")
            .map(|c| c.name().to_owned())
            .unwrap_or_default();
        Err(cond)
    }

    pub async fn bind(&mut self, resource: &str) {
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let bound = self.element().await.expect("bind result");
        assert_eq!(
            bound.attr("type"),
            Some("result"),
            "{}",
            String::from(&bound)
        );
    }

    /// Next element that is not an SM ack request (answered with `h`).
    pub async fn stanza_answering_acks(&mut self, h: &mut u32) -> Option<Element> {
        loop {
            let e = self.element().await?;
            if e.is("r", "urn:xmpp:sm:3") {
                self.send(&format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>"))
                    .await;
                continue;
            }
            if matches!(e.name(), "message" | "presence" | "iq") {
                *h = h.wrapping_add(1);
            }
            return Some(e);
        }
    }
}
