//! Test harness: a real node on free loopback ports with a fresh data
//! directory, and tokio-xmpp connectors that trust its generated
//! certificate.
#![allow(dead_code)]

pub mod procs;
pub mod proxy;
pub mod raw;

use futures::{SinkExt, StreamExt};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_xmpp::connect::ServerConnector;
use tokio_xmpp::error::ProtocolError;
use tokio_xmpp::parsers::{jid::Jid, starttls};
use tokio_xmpp::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, ServerName},
};
use tokio_xmpp::xmlstream::{
    initiate_stream, PendingFeaturesRecv, ReadError, StreamHeader, Timeouts, XmlStream,
    XmppStreamElement,
};
use tokio_xmpp::{Client, Event, Stanza};
use tributary_proto::scram::Credentials;
use tributary_server::{Config, Running};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub tls: Arc<rustls::ClientConfig>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        // Server logs in test output, filtered by RUST_LOG.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.listen.c2s = "127.0.0.1:0".into();
        config.listen.c2s_tls = "127.0.0.1:0".into();
        config.listen.component = "127.0.0.1:0".into();
        config.admins = vec!["admin@localhost".into()];
        config.limits.auth_failure_delay_ms = 10;
        config.limits.auth_failure_delay_max_ms = 50;
        tweak(&mut config);
        let running = tributary_server::serve(config)
            .await
            .expect("server starts");
        let cert = dir.path().join("data/tls/cert.pem");
        TestServer {
            running,
            tls: tls_config(&cert),
            dir,
        }
    }

    pub fn c2s(&self) -> String {
        self.running.c2s.expect("c2s listener").to_string()
    }

    /// Messages the store holds for `user` while they are offline.
    pub async fn offline_count(&self, user: &str) -> usize {
        self.running
            .node
            .store
            .offline_count(user)
            .await
            .expect("offline count")
    }

    pub fn component(&self) -> String {
        self.running
            .component
            .expect("component listener")
            .to_string()
    }

    pub fn c2s_tls(&self) -> String {
        self.running
            .c2s_tls
            .expect("direct TLS listener")
            .to_string()
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        let creds = Credentials::new(password).expect("valid password");
        self.running
            .node
            .store
            .create_account(user, &creds)
            .await
            .expect("account created");
    }

    /// A logged-in tokio-xmpp client over STARTTLS.
    pub async fn client(&self, jid: &str, password: &str) -> (Client, Jid) {
        let connector = LocalStartTls {
            addr: self.c2s(),
            tls: self.tls.clone(),
        };
        online(Client::new_with_connector(
            jid::BareJid::new(jid).expect("jid"),
            password.to_owned(),
            connector,
            Timeouts::tight(),
        ))
        .await
    }
}

pub async fn online(mut client: Client) -> (Client, Jid) {
    loop {
        match within(client.next()).await {
            Some(Event::Online { bound_jid, .. }) => return (client, bound_jid),
            Some(Event::Disconnected(e)) => panic!("disconnected: {e}"),
            Some(Event::Stanza(_)) => {}
            None => panic!("client stream ended"),
        }
    }
}

/// Awaits with the standard test timeout.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Next stanza matching `pred`, skipping others.
pub async fn next_stanza(client: &mut Client, pred: impl Fn(&Stanza) -> bool) -> Stanza {
    loop {
        match within(client.next()).await {
            Some(Event::Stanza(s)) if pred(&s) => return s,
            Some(Event::Stanza(_)) | Some(Event::Online { .. }) => {}
            Some(Event::Disconnected(e)) => panic!("disconnected: {e}"),
            None => panic!("client stream ended"),
        }
    }
}

pub fn tls_config(cert_pem: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert_pem).expect("cert file") {
        roots.add(c.expect("cert")).expect("root added");
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
}

/// STARTTLS to a fixed address, trusting the test certificate.
#[derive(Clone, Debug)]
pub struct LocalStartTls {
    pub addr: String,
    pub tls: Arc<rustls::ClientConfig>,
}

impl ServerConnector for LocalStartTls {
    type Stream = BufStream<tokio_rustls::client::TlsStream<TcpStream>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<
        (
            PendingFeaturesRecv<Self::Stream>,
            sasl::common::ChannelBinding,
        ),
        tokio_xmpp::Error,
    > {
        let domain = jid.domain().as_str().to_owned();
        let header = || StreamHeader {
            to: Some(domain.clone().into()),
            from: None,
            id: None,
        };
        let tcp = TcpStream::connect(&self.addr).await?;
        let pending = initiate_stream(BufStream::new(tcp), ns, header(), timeouts).await?;
        let (features, mut s): (_, XmlStream<_, XmppStreamElement>) =
            pending.recv_features().await?;
        if !features.can_starttls() {
            return Err(ProtocolError::NoTls.into());
        }
        s.send(&XmppStreamElement::Starttls(starttls::Nonza::Request(
            starttls::Request,
        )))
        .await?;
        loop {
            match s.next().await {
                Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)))) => break,
                Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
                Some(Err(ReadError::HardError(e))) => return Err(e.into()),
                _ => return Err(tokio_xmpp::Error::Disconnected),
            }
        }
        let tcp = s.into_inner().into_inner();
        let name = ServerName::try_from(domain.clone()).map_err(io_err)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let pending = initiate_stream(BufStream::new(tls), ns, header(), timeouts).await?;
        Ok((pending, sasl::common::ChannelBinding::None))
    }
}

/// Direct TLS (XEP-0368). With `plus`, the tls-exporter channel binding is
/// offered, so tokio-xmpp picks SCRAM-SHA-256-PLUS.
#[derive(Clone, Debug)]
pub struct LocalDirectTls {
    pub addr: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub plus: bool,
}

impl ServerConnector for LocalDirectTls {
    type Stream = BufStream<tokio_rustls::client::TlsStream<TcpStream>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<
        (
            PendingFeaturesRecv<Self::Stream>,
            sasl::common::ChannelBinding,
        ),
        tokio_xmpp::Error,
    > {
        let domain = jid.domain().as_str().to_owned();
        let name = ServerName::try_from(domain.clone()).map_err(io_err)?;
        let tcp = TcpStream::connect(&self.addr).await?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let binding = if self.plus {
            let data = tls
                .get_ref()
                .1
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .map_err(io_err)?;
            sasl::common::ChannelBinding::TlsExporter(data)
        } else {
            sasl::common::ChannelBinding::None
        };
        let header = StreamHeader {
            to: Some(domain.into()),
            from: None,
            id: None,
        };
        Ok((
            initiate_stream(BufStream::new(tls), ns, header, timeouts).await?,
            binding,
        ))
    }
}
