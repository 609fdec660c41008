//! `bench-plot --results DIR --out DIR`: PNG charts of a benchmark run for
//! bench/RESULTS.md (see tributary_bench::plot and bench/README.md).

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tributary_bench::plot;

/// Charts of `tributary bench` results: latency against offered load per
/// scenario (p99 and p50 per server, the p99 limit from run.json) and the
/// server RSS per idle session.
#[derive(Debug, Parser)]
#[command(name = "bench-plot")]
struct Args {
    /// Directory with the `<server>.jsonl` files (and run.json) of a run.
    #[arg(long)]
    results: PathBuf,
    /// Where to write latency-SCENARIO.png and idle-rss.png (created if
    /// missing; earlier charts of ours there are replaced or removed).
    #[arg(long)]
    out: PathBuf,
    /// TrueType font for the text.
    #[arg(long, default_value = plot::DEFAULT_FONT)]
    font: PathBuf,
}

fn run(args: &Args) -> anyhow::Result<()> {
    let done = plot::render(&args.results, &args.out, &args.font)?;
    if done.charts.is_empty() {
        println!("no steps to chart in {}", args.results.display());
    }
    for p in &done.charts {
        println!("wrote {}", p.display());
    }
    for p in &done.removed {
        println!("removed stale {}", p.display());
    }
    if done.skipped_lines > 0 {
        println!(
            "left out {} line(s) without scenario, offered_rate and a latency or RSS figure",
            done.skipped_lines
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not `{e:#}`: plot's errors already carry their cause in the
            // message, the chain would print it twice.
            eprintln!("bench-plot: {e}");
            ExitCode::FAILURE
        }
    }
}
