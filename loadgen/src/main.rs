use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_loadgen::config::{RunArgs, Workload};
use keel_loadgen::{report, run};

/// Load generator for memcached-text servers with HDR latency reports.
#[derive(Parser, Debug)]
#[command(name = "keel-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a workload and write summary.json, *.hgrm and latency.svg to --out.
    Run(Box<RunArgs>),
    /// Print throughput and percentile ratios of run B against run A (B / A).
    Compare { a: PathBuf, b: PathBuf },
    /// Plot latency by percentile of one or more runs into an SVG file.
    Plot {
        #[arg(required = true)]
        summaries: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write one self-contained HTML page about one or more runs: latency by percentile,
    /// throughput over time and a table of ratios against the first run.
    Report {
        /// summary.json files written by `run` (the first is the base of the ratios).
        #[arg(required = true)]
        summaries: Vec<PathBuf>,
        /// The HTML file to write.
        #[arg(short = 'o', long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Run(args) => Workload::from_args(&args)
            .map_err(anyhow::Error::from)
            .and_then(|w| run::run(&w))
            .map(|(_, code)| code),
        Command::Compare { a, b } => (|| {
            let (a, b) = (run::load_summary(&a)?, run::load_summary(&b)?);
            print!("{}", report::compare(&a, &b));
            Ok(0)
        })(),
        Command::Plot { summaries, out } => run::plot_files(&summaries, &out).map(|_| 0),
        Command::Report { summaries, out } => run::report_files(&summaries, &out).map(|_| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("keel-loadgen: {e:#}");
            ExitCode::from(1)
        }
    }
}
