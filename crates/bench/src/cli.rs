//! The command line of `tributary bench`. The names are a contract with
//! scripts (bench/run.sh): change them only together.

use crate::client::Mechanism;
use std::path::PathBuf;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One-to-one chat messages between the clients (latency at the
    /// receiver).
    Chat,
    /// Reports to a processor component (accepted and processed latency).
    Report,
    /// Connect, STARTTLS, authenticate, bind and close, over and over.
    Login,
    /// Hold idle sessions and measure the server's memory per session.
    Idle,
    /// MQTT 3.1.1 over TLS against a broker (Mosquitto): QoS 1 publishes
    /// between the clients (PUBACK and delivery latency).
    Mqtt,
    /// Reports queued while no processor is connected, then the time a
    /// processor (`--processor-cmd`, started once all are accepted) takes
    /// to take and confirm them all.
    Drain,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Chat => "chat",
            Scenario::Report => "report",
            Scenario::Login => "login",
            Scenario::Idle => "idle",
            Scenario::Mqtt => "mqtt",
            Scenario::Drain => "drain",
        }
    }
}

/// Load generator for any XMPP server (Tributary, ejabberd, Prosody), and
/// for an MQTT broker (mqtt): an open-loop schedule, latency from each
/// stanza's scheduled send time.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// chat | report | login | idle | mqtt
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The server's client (STARTTLS) port, HOST:PORT. mqtt: the broker's
    /// TLS port, and HOST is the name its certificate must carry.
    #[arg(long)]
    pub server: String,
    /// The XMPP domain of the accounts.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Accounts are {prefix}{i}@{domain} for i in 0..clients, registered
    /// beforehand.
    #[arg(long, default_value = "bench")]
    pub user_prefix: String,
    /// The password of every account.
    #[arg(long, default_value = "bench")]
    pub password: String,
    /// Concurrent clients (sessions, or login workers).
    #[arg(long, default_value_t = 10)]
    pub clients: u32,
    /// Total offered rate: stanzas (or logins) per second, over all
    /// clients.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds measured (idle: seconds the sessions are held).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before the measurement starts (not recorded).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Enable XEP-0198 stream management (required for report).
    #[arg(long)]
    pub sm: bool,
    /// SASL mechanism.
    #[arg(long, value_enum, ignore_case = true, default_value = "SCRAM-SHA-1")]
    pub mechanism: Mechanism,
    /// Trust the certificates in this PEM file (else the system's roots).
    #[arg(long, conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// report: the processor's component domain.
    #[arg(long, default_value = "collect.localhost")]
    pub to: String,
    /// drain: the shell command that starts the processor once the
    /// backlog (--rate x --duration reports) is accepted; it is stopped
    /// (SIGTERM) at the end.
    #[arg(long)]
    pub processor_cmd: Option<String>,
    /// drain: seconds allowed for the processor to confirm the backlog.
    #[arg(long, default_value_t = 600.0)]
    pub drain_timeout: f64,
    /// Sample this server process's CPU time and memory (/proc) around the
    /// measured window.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A name for this run in the output (e.g. the server under test).
    #[arg(long)]
    pub label: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    /// Arguments with the defaults, for a scenario against a server.
    pub fn new(scenario: Scenario, server: impl Into<String>) -> BenchArgs {
        BenchArgs {
            scenario,
            server: server.into(),
            domain: "localhost".into(),
            user_prefix: "bench".into(),
            password: "bench".into(),
            clients: 10,
            rate: 100.0,
            duration: 10.0,
            warmup: 0.0,
            sm: false,
            mechanism: Mechanism::ScramSha1,
            ca: None,
            insecure: false,
            to: "collect.localhost".into(),
            processor_cmd: None,
            drain_timeout: 600.0,
            server_pid: None,
            label: None,
            json: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn the_documented_command_line_parses() {
        let cli = Cli::try_parse_from([
            "bench",
            "report",
            "--server",
            "127.0.0.1:5222",
            "--domain",
            "example.org",
            "--user-prefix",
            "u",
            "--password",
            "pw",
            "--clients",
            "50",
            "--rate",
            "1000",
            "--duration",
            "30",
            "--warmup",
            "5",
            "--sm",
            "--mechanism",
            "SCRAM-SHA-256",
            "--ca",
            "cert.pem",
            "--to",
            "collect.example.org",
            "--server-pid",
            "1234",
            "--label",
            "prosody",
            "--json",
            "out.jsonl",
        ])
        .expect("parses");
        let a = cli.args;
        assert_eq!(a.scenario, Scenario::Report);
        assert_eq!(a.mechanism, Mechanism::ScramSha256);
        assert_eq!(
            (a.clients, a.rate, a.duration, a.warmup),
            (50, 1000.0, 30.0, 5.0)
        );
        assert!(a.sm);
        assert_eq!(a.server_pid, Some(1234));
        assert_eq!(a.label.as_deref(), Some("prosody"));

        let d = Cli::try_parse_from(["bench", "chat", "--server", "h:1", "--insecure"])
            .expect("parses")
            .args;
        let n = BenchArgs::new(Scenario::Chat, "h:1");
        assert_eq!(
            (d.domain, d.user_prefix, d.password, d.clients, d.rate),
            (n.domain, n.user_prefix, n.password, n.clients, n.rate)
        );
        assert_eq!(d.mechanism, Mechanism::ScramSha1);
        assert!(d.insecure);
        assert!(
            Cli::try_parse_from(["bench", "chat", "--server", "h:1", "--mechanism", "plain"])
                .is_ok()
        );
        assert!(Cli::try_parse_from([
            "bench",
            "chat",
            "--server",
            "h:1",
            "--ca",
            "x",
            "--insecure"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["bench", "flood", "--server", "h:1"]).is_err());
    }

    #[test]
    fn mqtt_takes_the_line_run_sh_gives_it() {
        // bench/run.sh passes no --mechanism for mqtt.
        let line = "bench mqtt --server 127.0.0.1:48883 --domain localhost --user-prefix bench \
                    --password bench --ca cert.pem --server-pid 7 --label mosquitto \
                    --json m.jsonl --clients 100 --rate 2000 --duration 5 --warmup 1";
        let a = Cli::try_parse_from(line.split_whitespace())
            .expect("parses")
            .args;
        assert_eq!(a.scenario, Scenario::Mqtt);
        assert_eq!(a.scenario.name(), "mqtt");
    }
}
