//! Node configuration: a TOML file whose every key has a default, so that
//! `tributary serve` runs with no file at all.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XMPP domain this node serves.
    pub domain: String,
    /// Where the database and the generated certificate live.
    pub data_dir: PathBuf,
    /// Bare JIDs allowed to run XEP-0133 service administration commands.
    pub admins: Vec<String>,
    pub tls: TlsConfig,
    pub listen: ListenConfig,
    pub limits: LimitsConfig,
    pub stream_management: StreamManagementConfig,
    pub keepalive: KeepaliveConfig,
    pub queue: QueueConfig,
    /// External components (XEP-0114): processors connect as these.
    #[serde(rename = "component")]
    pub components: Vec<ComponentConfig>,
}

/// One component domain and the secret its connections authenticate with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    pub domain: String,
    pub secret: String,
    /// Receives every local user's available and unavailable presence.
    #[serde(default)]
    pub observe_presence: bool,
    /// Most stanzas its durable queue holds; beyond it senders get
    /// `<resource-constraint/>`.
    #[serde(default = "default_quota")]
    pub quota: u64,
    /// Stanzas in flight (sent, not yet acknowledged) per connection.
    /// The default lets a processor commit one batch while the next is
    /// already on its way: with 256 a draining processor waited for each
    /// batch in turn (6,600 reports/s against 12,700 with 2,048 in
    /// `bench drain`, processor on its own core).
    #[serde(default = "default_window")]
    pub window: usize,
}

impl ComponentConfig {
    /// A component with the defaults a config file gets for what it omits.
    pub fn new(domain: impl Into<String>, secret: impl Into<String>) -> ComponentConfig {
        ComponentConfig {
            domain: domain.into(),
            secret: secret.into(),
            observe_presence: false,
            quota: default_quota(),
            window: default_window(),
        }
    }
}

fn default_quota() -> u64 {
    1_000_000
}

fn default_window() -> usize {
    2048
}

/// XEP-0198 policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// Seconds a detached session waits for resumption.
    pub resume_timeout: u64,
    /// Stanzas held for one session (sent but unacknowledged, or waiting
    /// while detached) before the stream is closed; they go offline.
    pub max_unacked: usize,
    /// Ask for an ack after this many stanzas sent without one...
    pub ack_request_every: u32,
    /// ...or this many milliseconds after the oldest unacknowledged one.
    pub ack_request_delay_ms: u64,
}

/// The durable queues' group-commit writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// While commits follow each other closely, a commit waits this many
    /// milliseconds after its first request for more to join it: fewer
    /// fsyncs under load, at most this much more accept latency. 0: none.
    /// `bench report` (1,000 clients, node and processor on one core, on
    /// disk), 0 against 2: node CPU 6.89 -> 4.55 s at 1,000/s (p50
    /// accepted 1.7 -> 4.2 ms), 12.95 -> 9.81 s at 6,000/s, where p99
    /// processed went from 88.9 ms to 38.1 ms (sustained).
    pub commit_delay_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { commit_delay_ms: 2 }
    }
}

/// Dead-peer detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// Seconds of silence before the server asks the peer (SM `<r/>` or a
    /// XEP-0199 ping); also the TCP keepalive idle time.
    pub idle_ping: u64,
    /// Seconds without an answer before the session is detached.
    pub dead_after: u64,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig {
            resume_timeout: 300,
            max_unacked: 5000,
            ack_request_every: 5,
            ack_request_delay_ms: 5000,
        }
    }
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            idle_ping: 60,
            dead_after: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; absent = self-signed, generated once in data_dir.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Allow authentication without TLS on the STARTTLS port (testing only).
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// STARTTLS listener (RFC 6120); empty string disables it.
    pub c2s: String,
    /// Direct TLS listener (XEP-0368); empty string disables it.
    pub c2s_tls: String,
    /// XEP-0114 component listener; empty string disables it.
    pub component: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest top-level element accepted from a peer, in bytes.
    pub max_stanza_bytes: usize,
    /// Connections held at once across all listeners; more are refused.
    pub max_connections: usize,
    /// Sustained read rate per connection, bytes per second.
    pub read_bytes_per_second: u32,
    /// Burst allowance above the sustained rate, in bytes.
    pub read_burst_bytes: u32,
    /// The same for each component (processor) connection. Apart, and far
    /// higher by default: a processor is an authenticated peer that
    /// answers every report, so at the client's limit it would cap the
    /// whole node (1 MiB/s of receipts is about 7,000 reports/s).
    pub component_read_bytes_per_second: u32,
    pub component_read_burst_bytes: u32,
    /// Stanzas queued for one session before it is considered stuck and
    /// closed: a client that stops reading cannot grow server memory.
    pub session_queue: usize,
    /// Offline messages kept per user (XEP-0160); more are refused with an error.
    pub max_offline_messages: usize,
    /// Resources one account may bind at once.
    pub max_resources_per_user: usize,
    /// Failed SASL attempts on one stream before it is closed.
    pub max_auth_failures: u32,
    /// First delay after a failed login, doubled per further failure
    /// (per account and per address), in milliseconds.
    pub auth_failure_delay_ms: u64,
    /// Cap of that delay, in milliseconds.
    pub auth_failure_delay_max_ms: u64,
    /// Seconds a connection may take to authenticate.
    pub login_timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("./tributary-data"),
            admins: Vec::new(),
            tls: TlsConfig::default(),
            listen: ListenConfig::default(),
            limits: LimitsConfig::default(),
            stream_management: StreamManagementConfig::default(),
            keepalive: KeepaliveConfig::default(),
            queue: QueueConfig::default(),
            components: Vec::new(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            c2s: "127.0.0.1:5222".into(),
            c2s_tls: "127.0.0.1:5223".into(),
            component: "127.0.0.1:5275".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes: 262_144,
            max_connections: 100_000,
            read_bytes_per_second: 1_048_576,
            read_burst_bytes: 4_194_304,
            component_read_bytes_per_second: 67_108_864,
            component_read_burst_bytes: 16_777_216,
            session_queue: 1024,
            max_offline_messages: 1000,
            max_resources_per_user: 20,
            max_auth_failures: 3,
            auth_failure_delay_ms: 500,
            auth_failure_delay_max_ms: 8000,
            login_timeout: 60,
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml's message names the key and line; keep it on one line.
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        config.validate(path)?;
        let mut config = config;
        // Compared against normalised JIDs, so normalise once here.
        config.admins = config
            .admins
            .iter()
            .filter_map(|a| jid::BareJid::new(a).ok().map(|j| j.to_string()))
            .collect();
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if jid::BareJid::new(&self.domain)
            .ok()
            .filter(|j| j.node().is_none())
            .is_none()
        {
            return Err(invalid(
                "domain",
                format!("{:?} is not a valid domain", self.domain),
            ));
        }
        for admin in &self.admins {
            if jid::BareJid::new(admin).is_err() {
                return Err(invalid("admins", format!("{admin:?} is not a valid JID")));
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("tls", "cert and key must be given together".into()));
        }
        for (key, addr) in [
            ("listen.c2s", &self.listen.c2s),
            ("listen.c2s_tls", &self.listen.c2s_tls),
        ] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    key,
                    format!("{addr:?} is not an address like 127.0.0.1:5222"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.components {
            let valid = jid::BareJid::new(&c.domain)
                .ok()
                .filter(|j| j.node().is_none());
            if valid.is_none() || c.domain == self.domain {
                return Err(invalid(
                    "component.domain",
                    format!("{:?} is not a usable component domain", c.domain),
                ));
            }
            if !seen.insert(c.domain.to_ascii_lowercase()) {
                return Err(invalid(
                    "component.domain",
                    format!("{:?} is declared twice", c.domain),
                ));
            }
            if c.quota == 0 || c.window == 0 {
                return Err(invalid(
                    "component.quota",
                    format!("quota and window of {} must be greater than 0", c.domain),
                ));
            }
            if c.secret.is_empty() {
                return Err(invalid(
                    "component.secret",
                    format!("empty secret for {}", c.domain),
                ));
            }
        }
        if self.listen.c2s.is_empty() && self.listen.c2s_tls.is_empty() {
            return Err(invalid("listen", "at least one listener is needed".into()));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_stanza_bytes", l.max_stanza_bytes as u64),
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.read_bytes_per_second",
                l.read_bytes_per_second as u64,
            ),
            (
                "limits.component_read_bytes_per_second",
                l.component_read_bytes_per_second as u64,
            ),
            ("limits.session_queue", l.session_queue as u64),
            (
                "limits.max_resources_per_user",
                l.max_resources_per_user as u64,
            ),
            ("limits.max_auth_failures", l.max_auth_failures as u64),
            ("limits.login_timeout", l.login_timeout),
            (
                "stream_management.max_unacked",
                self.stream_management.max_unacked as u64,
            ),
            (
                "stream_management.ack_request_every",
                self.stream_management.ack_request_every as u64,
            ),
            (
                "stream_management.ack_request_delay_ms",
                self.stream_management.ack_request_delay_ms,
            ),
            ("keepalive.idle_ping", self.keepalive.idle_ping),
            ("keepalive.dead_after", self.keepalive.dead_after),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        if l.max_stanza_bytes < 1024 {
            return Err(invalid(
                "limits.max_stanza_bytes",
                "must be at least 1024".into(),
            ));
        }
        Ok(())
    }

    /// The configured component serving `domain`.
    pub fn component(&self, domain: &str) -> Option<&ComponentConfig> {
        self.components
            .iter()
            .find(|c| c.domain.eq_ignore_ascii_case(domain))
    }

    /// Whether `domain` is a configured component domain.
    pub fn is_component(&self, domain: &str) -> bool {
        self.component(domain).is_some()
    }

    pub fn is_admin(&self, bare: &str) -> bool {
        self.admins.iter().any(|a| a == bare)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("tributary.sqlite")
    }

    /// A complete, commented configuration with every default spelled out.
    pub fn example() -> &'static str {
        include_str!("../config.example.toml")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_equals_defaults() {
        let c =
            Config::parse(Config::example(), Path::new("example.toml")).expect("example is valid");
        let d = Config::default();
        assert_eq!(c.domain, d.domain);
        assert_eq!(c.limits.max_stanza_bytes, d.limits.max_stanza_bytes);
        assert_eq!(c.listen.c2s, d.listen.c2s);
        assert_eq!(c.queue.commit_delay_ms, d.queue.commit_delay_ms);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[limits]\nmax_stanzas = 3\n", Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("max_stanzas"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse("[listen]\nc2s = \"nowhere\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("listen.c2s"), "{err}");
        let err = Config::parse(
            "[limits]\nmax_stanza_bytes = \"big\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_stanza_bytes"), "{err}");
        let err = Config::parse("domain = \"a@b\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("domain"), "{err}");
    }

    #[test]
    fn components_are_checked() {
        let ok = "[[component]]\ndomain = \"collect.localhost\"\nsecret = \"s\"\n";
        let c = Config::parse(ok, Path::new("x.toml")).expect("valid");
        assert!(c.is_component("collect.localhost"));
        let twice = format!("{ok}{ok}");
        assert!(Config::parse(&twice, Path::new("x.toml"))
            .unwrap_err()
            .to_string()
            .contains("component.domain"));
        let empty = "[[component]]\ndomain = \"c.localhost\"\nsecret = \"\"\n";
        assert!(Config::parse(empty, Path::new("x.toml"))
            .unwrap_err()
            .to_string()
            .contains("component.secret"));
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Path::new("/nonexistent/tributary.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tributary.toml"));
    }
}
