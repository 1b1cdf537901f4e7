//! Draw the loss and attention entropy of several finished or stopped runs side by side
//! (`compare_loss.svg`, `compare_entropy.svg`), e.g. a plain and a σReparam model trained
//! with the same settings:
//!
//!     cargo run --release -p tasks --example compare_runs -- --out DIR plain=RUN1 sigma=RUN2

use clap::Parser;
use std::path::PathBuf;

/// Compare runs' curves.
#[derive(Debug, Parser)]
struct Args {
    /// Directory for the two SVG files (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// What the loss measures, for the chart's title.
    #[arg(long, default_value = "nats")]
    unit: String,
    /// Runs as NAME=DIR (the legend's name and the run's output directory).
    #[arg(required = true)]
    runs: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let runs = a
        .runs
        .iter()
        .map(|r| match r.split_once('=') {
            Some((name, dir)) => Ok((name.to_string(), PathBuf::from(dir))),
            None => Err(format!("expected NAME=DIR, got `{r}`")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&a.out)?;
    let runs: Vec<(String, &std::path::Path)> =
        runs.iter().map(|(n, d)| (n.clone(), d.as_path())).collect();
    tasks::train::write_comparison(&a.out, &runs, &a.unit)?;
    Ok(())
}
