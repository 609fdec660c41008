//! `tributary report`: command-line arguments (clap) and the entry point
//! the binary calls.
//!
//! ```text
//! tributary report --jid alice@localhost --password-stdin [--server 127.0.0.1:5222]
//!     [--to collect.localhost] [--kind K] [--data JSON ... | --file F | --flush]
//!     [--outbox PATH] [--wait processed|accepted] [--retry-for SECS] [--ca PEM]
//! tributary report presence --jid alice@localhost --password P --show away --status "in the field"
//! ```
//!
//! Without `--data`, `--file` or `--flush`, reports are read from standard
//! input, one JSON value per line (unless it is a terminal). With
//! `--password-stdin`, the first line of standard input is the password and
//! the remaining lines are the reports.

use crate::{CollectorConfig, Report, Show, Summary, Wait};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Arguments of `tributary report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub command: Option<ReportCommand>,

    /// Account to log in as (user@domain).
    #[arg(long, global = true)]
    pub jid: Option<String>,
    /// The password (visible in the process list; prefer --password-stdin).
    #[arg(long, global = true, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long, global = true)]
    pub password_stdin: bool,
    /// Server address, host:port of its STARTTLS listener [default: <domain of --jid>:5222].
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// PEM file of the certificate(s) to trust, e.g. <data_dir>/tls/cert.pem
    /// of a server with a self-signed certificate [default: system roots].
    #[arg(long, global = true, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (unsafe: for tests only).
    #[arg(long, global = true, conflicts_with = "ca")]
    pub insecure: bool,
    /// Keep trying to (re)connect for this many seconds before giving up.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 120)]
    pub retry_for: u64,

    /// The processor's component domain.
    #[arg(long, default_value = "collect.localhost")]
    pub to: String,
    /// Kind of the reports.
    #[arg(long, default_value = "report")]
    pub kind: String,
    /// One report's JSON payload (repeatable).
    #[arg(long, value_name = "JSON", conflicts_with_all = ["file", "flush"])]
    pub data: Vec<String>,
    /// A file of reports: one JSON value per line, or one JSON array
    /// (`-` = standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "flush")]
    pub file: Option<PathBuf>,
    /// Read no new reports; only send what the outbox holds.
    #[arg(long)]
    pub flush: bool,
    /// The local outbox (SQLite), created if missing.
    #[arg(long, value_name = "PATH", default_value = "tributary-outbox.sqlite")]
    pub outbox: PathBuf,
    /// Keep reports until the processor confirmed them, or only until the
    /// server accepted them.
    #[arg(long, value_enum, default_value_t = WaitArg::Processed)]
    pub wait: WaitArg,
    /// With --wait processed: give up waiting after this many seconds
    /// without a new confirmation (reports stay in the outbox).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub wait_timeout: u64,
    /// With --wait processed: after this many seconds without a new
    /// confirmation, send the accepted reports still waiting for one again
    /// (their receipts may have been lost with a crashed server).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub reconfirm_after: u64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ReportCommand {
    /// Send a presence (online status), then log out.
    Presence(PresenceArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Availability: chat, away, xa (extended away) or dnd; plain available
    /// when absent.
    #[arg(long, value_enum)]
    pub show: Option<ShowArg>,
    /// Free-text status.
    #[arg(long)]
    pub status: Option<String>,
    /// Presence priority (-128..127).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaitArg {
    Processed,
    Accepted,
}

impl From<WaitArg> for Wait {
    fn from(w: WaitArg) -> Wait {
        match w {
            WaitArg::Processed => Wait::Processed,
            WaitArg::Accepted => Wait::Accepted,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowArg {
    Chat,
    Away,
    Xa,
    Dnd,
}

impl From<ShowArg> for Show {
    fn from(s: ShowArg) -> Show {
        match s {
            ShowArg::Chat => Show::Chat,
            ShowArg::Away => Show::Away,
            ShowArg::Xa => Show::Xa,
            ShowArg::Dnd => Show::Dnd,
        }
    }
}

impl ReportArgs {
    /// The library configuration these arguments describe (the password
    /// must already be known).
    pub fn config(&self, password: String) -> Result<CollectorConfig> {
        let Some(jid) = &self.jid else {
            bail!("--jid is required");
        };
        let mut c = CollectorConfig::new(jid.clone(), password);
        if let Some(server) = &self.server {
            c.server = server.clone();
        }
        c.to = self.to.clone();
        c.kind = self.kind.clone();
        c.outbox = self.outbox.clone();
        c.wait = self.wait.into();
        c.retry_for = Duration::from_secs(self.retry_for);
        c.wait_timeout = Duration::from_secs(self.wait_timeout);
        c.reconfirm_after = Duration::from_secs(self.reconfirm_after);
        c.tls_ca = self.ca.clone();
        c.insecure_accept_any = self.insecure;
        Ok(c)
    }
}

/// Runs `tributary report` (or `tributary report presence`): reads the
/// input, sends, prints the final counts on standard output. The summary
/// is returned so the caller can choose an exit status
/// ([`Summary::is_complete`]); a presence run returns an empty one.
pub async fn main_with(args: ReportArgs) -> Result<Summary> {
    if args.jid.is_none() {
        bail!("--jid is required");
    }
    let reads_reports =
        args.command.is_none() && args.data.is_empty() && !args.flush && args.file.is_none();
    let file_is_stdin = args.file.as_deref() == Some(Path::new("-"));
    let needs_stdin = args.password_stdin || reads_reports || file_is_stdin;
    let mut stdin_text = String::new();
    if needs_stdin {
        let stdin = std::io::stdin();
        let only_password = args.password_stdin && !reads_reports && !file_is_stdin;
        if reads_reports && !args.password_stdin && stdin.is_terminal() {
            // Interactive and nothing given: flush the outbox only.
        } else if only_password {
            let mut line = String::new();
            stdin
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            stdin_text = line;
        } else {
            stdin
                .lock()
                .read_to_string(&mut stdin_text)
                .context("cannot read standard input")?;
        }
    }
    let mut rest: &str = &stdin_text;
    let password = match &args.password {
        Some(p) => p.clone(),
        None if args.password_stdin => {
            let (first, tail) = rest.split_once('\n').unwrap_or((rest, ""));
            rest = tail;
            first.trim_end_matches('\r').to_owned()
        }
        None => bail!("no password given (use --password or --password-stdin)"),
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let config = args.config(password)?;

    if let Some(ReportCommand::Presence(p)) = &args.command {
        crate::send_presence(
            &config,
            p.show.map(Show::from),
            p.status.as_deref(),
            p.priority,
        )
        .await?;
        println!("presence sent");
        return Ok(Summary::default());
    }

    let reports: Vec<Report> = if !args.data.is_empty() {
        args.data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                serde_json::from_str(d)
                    .map(Report::new)
                    .with_context(|| format!("--data #{}: not JSON", i + 1))
            })
            .collect::<Result<_>>()?
    } else if let Some(file) = args.file.as_deref().filter(|f| *f != Path::new("-")) {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        parse_reports(&text).with_context(|| file.display().to_string())?
    } else if reads_reports || file_is_stdin {
        parse_reports(rest).context("standard input")?
    } else {
        Vec::new()
    };
    let (watch, mut changes) = tokio::sync::watch::channel(Summary::default());
    let bar = progress_bar(config.wait);
    let shown = bar.clone();
    let wait = config.wait;
    let drawing = tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let s = *changes.borrow_and_update();
            let done = match wait {
                Wait::Processed => s.processed + s.failed,
                Wait::Accepted => s.accepted + s.failed,
            };
            shown.set_length(done + s.remaining);
            shown.set_position(done);
            shown.set_message(format!(
                "sent {} accepted {} processed {} failed {}",
                s.sent, s.accepted, s.processed, s.failed
            ));
        }
    });
    let result = crate::run_watched(&config, reports, watch).await;
    let _ = drawing.await;
    bar.finish_and_clear();
    let summary = result?;
    println!("{summary}");
    Ok(summary)
}

/// A bar on standard error (drawn only when it is a terminal, so scripts
/// and logs see just the final counts on standard output).
fn progress_bar(wait: Wait) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let unit = match wait {
        Wait::Processed => "processed",
        Wait::Accepted => "accepted",
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{elapsed}}) {{msg}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// One JSON array of reports, or one JSON value per line (blank lines
/// skipped).
pub fn parse_reports(text: &str) -> Result<Vec<Report>> {
    if text.trim_start().starts_with('[') {
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text) {
            return Ok(items.into_iter().map(Report::new).collect());
        }
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(Report::new)
                .with_context(|| format!("line {}: not JSON", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Report(ReportArgs),
    }

    fn parse(args: &[&str]) -> ReportArgs {
        let Top::Report(r) = Cli::try_parse_from(args).expect("parses").command;
        r
    }

    #[test]
    fn report_arguments() {
        let r = parse(&[
            "tributary",
            "report",
            "--jid",
            "alice@localhost",
            "--password",
            "p",
            "--data",
            r#"{"a":1}"#,
            "--data",
            "2",
            "--wait",
            "accepted",
            "--retry-for",
            "5",
            "--ca",
            "cert.pem",
        ]);
        assert!(r.command.is_none());
        assert_eq!(r.data.len(), 2);
        let c = r.config("p".into()).expect("config");
        assert_eq!(c.server, "localhost:5222");
        assert_eq!(c.to, "collect.localhost");
        assert_eq!(c.wait, Wait::Accepted);
        assert_eq!(c.retry_for, Duration::from_secs(5));
        assert_eq!(c.tls_ca.as_deref(), Some(Path::new("cert.pem")));
    }

    #[test]
    fn presence_arguments_before_or_after_the_subcommand() {
        let r = parse(&[
            "tributary",
            "report",
            "--jid",
            "alice@localhost",
            "presence",
            "--password",
            "p",
            "--show",
            "away",
            "--status",
            "in the field",
        ]);
        let Some(ReportCommand::Presence(p)) = &r.command else {
            panic!("presence subcommand")
        };
        assert_eq!(p.show, Some(ShowArg::Away));
        assert_eq!(p.status.as_deref(), Some("in the field"));
        assert_eq!(r.jid.as_deref(), Some("alice@localhost"));
        assert_eq!(r.password.as_deref(), Some("p"));
    }

    #[test]
    fn conflicting_inputs_are_refused() {
        assert!(
            Cli::try_parse_from(["tributary", "report", "--data", "1", "--file", "x"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "tributary",
            "report",
            "--password",
            "p",
            "--password-stdin"
        ])
        .is_err());
    }

    #[test]
    fn report_files() {
        let lines = parse_reports("{\"a\":1}\n\n[2]\n\"x\"\n").expect("lines");
        assert_eq!(lines.len(), 3);
        let array = parse_reports(" [ {\"a\":1}, {\"a\":2} ]").expect("array");
        assert_eq!(array.len(), 2);
        assert_eq!(array[1].payload["a"], 2);
        let err = parse_reports("{\"a\":1}\nnope\n").expect_err("bad line");
        assert!(format!("{err:#}").contains("line 2"));
    }
}
