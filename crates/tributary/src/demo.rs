//! `tributary demo`: a node, the reference processor and a few simulated
//! collectors, all on embedded defaults in one process, to see the whole
//! pipeline work and know where to look.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tributary_collector::{CollectorConfig, Report, Summary, Wait};
use tributary_processor::sql::SqlProcessor;
use tributary_processor::{http, LinkConfig, LinkStats};
use tributary_proto::scram::Credentials;
use tributary_server::config::ComponentConfig;
use tributary_server::Config;
use tributary_store::StoreError;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its data (node, processor database, outboxes).
    #[arg(long, default_value = "./tributary-demo")]
    dir: PathBuf,
    /// Simulated collectors.
    #[arg(long, default_value_t = 3)]
    collectors: u32,
    /// Reports each collector sends.
    #[arg(long, default_value_t = 20)]
    reports: u32,
    /// Address of the processor's JSON API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Exit once every report is processed instead of running on.
    #[arg(long)]
    exit_when_done: bool,
}

const DOMAIN: &str = "collect.localhost";

fn free_port() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

pub async fn run(args: DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let secret = format!("{:032x}", rand::random::<u128>());
    let mut config = Config {
        data_dir: args.dir.join("node"),
        ..Config::default()
    };
    config.listen.c2s = free_port()?;
    config.listen.c2s_tls = free_port()?;
    config.listen.component = free_port()?;
    config.components = vec![ComponentConfig {
        observe_presence: true,
        ..ComponentConfig::new(DOMAIN, secret.clone())
    }];
    let running = tributary_server::serve(config).await?;
    let c2s = running.c2s.map(|a| a.to_string()).unwrap_or_default();
    let component = running.component.map(|a| a.to_string()).unwrap_or_default();
    println!("node:      localhost, STARTTLS on {c2s}, components on {component}");

    let db = SqlProcessor::connect(&format!(
        "sqlite://{}",
        args.dir.join("reports.db").display()
    ))
    .await?;
    let stats = Arc::new(LinkStats::default());
    // The requested address, or any free port when it is taken (or 0).
    let api = match tokio::net::TcpListener::bind(&args.http).await {
        Ok(l) if !args.http.ends_with(":0") => {
            drop(l);
            args.http.clone()
        }
        _ => free_port()?,
    };
    {
        let (api, db, stats) = (api.clone(), db.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = http::serve(&api, db, stats).await {
                tracing::error!("HTTP API stopped: {e:#}");
            }
        });
    }
    tokio::spawn(tributary_processor::run(
        LinkConfig {
            server: component,
            domain: DOMAIN.into(),
            secret,
            max_backoff: Duration::from_secs(2),
            commit_delay: tributary_processor::DEFAULT_COMMIT_DELAY,
        },
        db.clone(),
        stats.clone(),
    ));
    println!(
        "processor: {DOMAIN}, database {}",
        args.dir.join("reports.db").display()
    );
    println!("API:       http://{api}/api/stats  /api/reports  /api/online");

    let cert = args.dir.join("node/tls/cert.pem");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for n in 1..=args.collectors {
        let user = format!("collector{n}");
        let password = format!("demo-{n}");
        match running
            .node
            .store
            .create_account(&user, &Credentials::new(&password)?)
            .await
        {
            Ok(()) | Err(StoreError::AccountExists) => {}
            Err(e) => return Err(e.into()),
        }
        let mut cc = CollectorConfig::new(format!("{user}@localhost"), password);
        cc.server = c2s.clone();
        cc.to = DOMAIN.into();
        cc.kind = "meter.reading".into();
        cc.outbox = args.dir.join(format!("outbox-{user}.sqlite"));
        cc.wait = Wait::Processed;
        cc.tls_ca = Some(cert.clone());
        let reports: Vec<Report> = (0..args.reports)
            .map(|i| {
                Report::new(serde_json::json!({
                    "meter": format!("M-{n:02}"),
                    "reading": i,
                    "kwh": 1000.0 + f64::from(n) * 10.0 + f64::from(i) * 0.5,
                }))
            })
            .collect();
        let count = u64::from(args.reports);
        tasks.push(tokio::spawn(async move {
            // When the node had accepted all of this collector's reports.
            let (watch, mut changes) = tokio::sync::watch::channel(Summary::default());
            let accepted = tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    if changes.borrow_and_update().accepted >= count {
                        return Some(std::time::Instant::now());
                    }
                }
                None
            });
            let result = tributary_collector::run_watched(&cc, reports, watch).await;
            (user, result, accepted.await.ok().flatten())
        }));
    }
    let mut all_done = true;
    let mut all_accepted = Some(started);
    for task in tasks {
        let (user, result, accepted_at) = task.await?;
        all_accepted = match (all_accepted, accepted_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        match result {
            Ok(s) => {
                println!(
                    "{user}: sent {}, accepted {}, processed {}, failed {}",
                    s.sent, s.accepted, s.processed, s.failed
                );
                all_done &= s.remaining == 0;
            }
            Err(e) => {
                println!("{user}: {e}");
                all_done = false;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = u64::from(args.collectors) * u64::from(args.reports);
    println!(
        "reports stored by the processor: {}",
        db.report_count().await?
    );
    if let Some(at) = all_accepted {
        let secs = at.duration_since(started).as_secs_f64();
        println!(
            "{total} reports accepted (committed on the node) in {secs:.2} s: {:.0} reports/s accepted",
            total as f64 / secs.max(1e-9)
        );
    }
    println!(
        "{total} reports sent, accepted and processed in {elapsed:.2} s: {:.0} reports/s end to end",
        total as f64 / elapsed.max(1e-9)
    );
    if args.exit_when_done {
        running.shutdown().await;
        if !all_done {
            anyhow::bail!("some reports were not processed");
        }
        return Ok(());
    }
    println!("running; look at the API, or press Ctrl-C to stop");
    crate::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}
