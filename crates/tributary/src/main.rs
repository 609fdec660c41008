//! `tributary`: the single binary. Errors reach the user as one line and
//! a non-zero exit status; nothing here panics on user input.

// jemalloc rather than glibc's allocator: in `bench report` at 2,000
// reports/s (node and processor on one core) it took 3-4 % less CPU and
// cut the processed p99 from 55-100 ms to 30-48 ms, where glibc's
// `malloc_consolidate` / `unlink_chunk` had shown in the profile. An idle
// session costs ~0.6 KiB more (16.2 against 15.6 KiB on a fresh node).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod demo;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::{Path, PathBuf};
use tributary_proto::scram::Credentials;
use tributary_server::Config;
use tributary_store::{SqliteStore, Store, StoreError};

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "An XMPP server that never loses an accepted report"
)]
struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults are used.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server node.
    Serve,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage accounts (works while the server runs).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Send reports (or presence) as a collector, with a durable outbox.
    Report(tributary_collector::ReportArgs),
    /// Run a node, the reference processor and simulated collectors in one
    /// go, on embedded defaults.
    Demo(demo::DemoArgs),
    /// Run the reference data processing server: a component that writes
    /// reports and presence into SQL and confirms them to the reporters.
    Process(ProcessArgs),
    /// Inspect the durable component queues (works while the server runs).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Load generator for any XMPP server (chat, report, login, idle):
    /// open-loop schedule, latency percentiles, server CPU and memory.
    Bench(tributary_bench::BenchArgs),
}

#[derive(clap::Args)]
struct ProcessArgs {
    /// The node's component listener.
    #[arg(long, default_value = "127.0.0.1:5275")]
    server: String,
    /// The component domain to serve (declared in the node's config).
    #[arg(long, default_value = "collect.localhost")]
    domain: String,
    /// The component's shared secret.
    #[arg(long)]
    secret: String,
    /// Where reports go: sqlite://FILE or postgres://...
    #[arg(long, default_value = "sqlite://reports.db")]
    db: String,
    /// Serve the JSON API on this address (e.g. 127.0.0.1:8080).
    #[arg(long)]
    http: Option<String>,
    /// Group-commit delay: while batches follow each other closely, a
    /// batch waits this long for more reports before it commits (fewer
    /// fsyncs under load; an idle link never waits). 0: no wait.
    #[arg(long, default_value_t = tributary_processor::DEFAULT_COMMIT_DELAY.as_millis() as u64)]
    commit_delay_ms: u64,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Each queue's depth and the age of its oldest stanza.
    List,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a complete, commented configuration file.
    Example,
    /// Check a configuration file and print the result.
    Check,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Add {
        jid: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Delete an account and everything stored for it.
    Remove { jid: String },
    /// Change an account's password.
    Passwd {
        jid: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// List accounts.
    List,
}

#[derive(clap::Args)]
struct PasswordArgs {
    /// The password (visible in the process list; prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn read(&self) -> Result<String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("cannot read the password from standard input")?;
        let password = input.lines().next().unwrap_or_default().to_owned();
        if password.is_empty() {
            bail!("no password given (use --password or --password-stdin)");
        }
        Ok(password)
    }
}

fn main() {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line. Many of our errors already
/// include their cause's text, so a cause already said is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{}", Config::example());
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let config = load_config(cli.config.as_deref())?;
            println!("configuration is valid: domain {}", config.domain);
            Ok(())
        }
        Command::Serve => serve(load_config(cli.config.as_deref())?).await,
        Command::User { command } => user(load_config(cli.config.as_deref())?, command).await,
        Command::Process(args) => process(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Report(args) => {
            let summary = tributary_collector::main_with(args).await?;
            if !summary.is_complete() {
                bail!(
                    "{} reports are still waiting in the outbox",
                    summary.remaining
                );
            }
            Ok(())
        }
        Command::Queue {
            command: QueueCommand::List,
        } => queue_list(load_config(cli.config.as_deref())?).await,
        Command::Bench(args) => {
            tributary_bench::main_with(args).await?;
            Ok(())
        }
    }
}

async fn serve(config: Config) -> Result<()> {
    let domain = config.domain.clone();
    let running = tributary_server::serve(config).await?;
    let show =
        |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    tracing::info!(
        "serving {domain}: STARTTLS on {}, direct TLS on {}",
        show(running.c2s),
        show(running.c2s_tls)
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// How long `tributary process` waits for its database at start.
const DATABASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn process(args: ProcessArgs) -> Result<()> {
    use std::sync::Arc;
    use tributary_processor::{http, sql::SqlProcessor, LinkConfig, LinkStats};
    // A database that is starting, or locked by another processor creating
    // the schema at the same moment, is waited for a while.
    let mut wait = std::time::Duration::from_millis(100);
    let started = std::time::Instant::now();
    let db = loop {
        match SqlProcessor::connect(&args.db).await {
            Ok(db) => break db,
            Err(e) if started.elapsed() < DATABASE_WAIT => {
                tracing::warn!("database not ready ({e:#}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    };
    let stats = Arc::new(LinkStats::default());
    if let Some(addr) = &args.http {
        let (addr, db, stats) = (addr.clone(), db.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = http::serve(&addr, db, stats).await {
                tracing::error!("HTTP API stopped: {e:#}");
            }
        });
    }
    let link = LinkConfig {
        server: args.server,
        domain: args.domain,
        secret: args.secret,
        max_backoff: std::time::Duration::from_secs(10),
        commit_delay: std::time::Duration::from_millis(args.commit_delay_ms),
    };
    // Spawned, not polled by `block_on` here: the thread that calls
    // `block_on` is not one of the runtime's workers, so each socket or
    // database wake-up of the link would come through a worker thread and
    // then a second thread switch to this one.
    let mut link_task = tokio::spawn(tributary_processor::run(link, db, stats));
    tokio::select! {
        _ = &mut link_task => {}
        _ = shutdown_signal() => {
            tracing::info!("stopping");
            link_task.abort();
        }
    }
    Ok(())
}

async fn queue_list(config: Config) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let store = SqliteStore::open(&config.database_path()).await?;
    let depths = store.queue_depths().await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut listed = std::collections::HashSet::new();
    for d in &depths {
        let age = (now_ms - d.oldest_at).max(0) / 1000;
        println!("{}\tdepth {}\toldest {}s", d.queue, d.depth, age);
        listed.insert(d.queue.clone());
    }
    for c in &config.components {
        if !listed.contains(&c.domain.to_ascii_lowercase()) {
            println!("{}\tdepth 0", c.domain);
        }
    }
    Ok(())
}

/// Parses `user@domain` and returns the normalised local part.
fn local_part(config: &Config, jid: &str) -> Result<String> {
    let bare = jid::BareJid::new(jid).with_context(|| format!("{jid:?} is not a valid JID"))?;
    let Some(node) = bare.node() else {
        bail!("{jid} has no user part (expected user@{})", config.domain);
    };
    if bare.domain().as_str() != config.domain {
        bail!("{jid} is not on this server's domain {}", config.domain);
    }
    Ok(node.to_string())
}

async fn user(config: Config, command: UserCommand) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let store = SqliteStore::open(&config.database_path()).await?;
    match command {
        UserCommand::Add { jid, password } => {
            let user = local_part(&config, &jid)?;
            let creds = Credentials::new(&password.read()?)?;
            match store.create_account(&user, &creds).await {
                Ok(()) => println!("created {user}@{}", config.domain),
                Err(StoreError::AccountExists) => bail!("{user}@{} already exists", config.domain),
                Err(e) => return Err(e.into()),
            }
        }
        UserCommand::Remove { jid } => {
            let user = local_part(&config, &jid)?;
            match store.delete_account(&user).await {
                Ok(()) => println!("removed {user}@{}", config.domain),
                Err(StoreError::NoAccount) => bail!("{user}@{} does not exist", config.domain),
                Err(e) => return Err(e.into()),
            }
        }
        UserCommand::Passwd { jid, password } => {
            let user = local_part(&config, &jid)?;
            let creds = Credentials::new(&password.read()?)?;
            match store.set_credentials(&user, &creds).await {
                Ok(()) => println!("password changed for {user}@{}", config.domain),
                Err(StoreError::NoAccount) => bail!("{user}@{} does not exist", config.domain),
                Err(e) => return Err(e.into()),
            }
        }
        UserCommand::List => {
            for user in store.list_accounts().await? {
                println!("{user}@{}", config.domain);
            }
        }
    }
    Ok(())
}
