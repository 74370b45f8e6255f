//! `tidewatch fixtures …`: the files the demo, the tests and the benchmarks
//! read.

use std::path::PathBuf;

use tidewatch::fixtures::{self, DemoShape};

/// `tidewatch fixtures …`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Write the full demo stream and training data.
    Generate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Write reference.parquet and current.parquet (full-precision doubles,
    /// Snappy-compressed, the first five columns shifted) for the analyze
    /// benchmark.
    AnalyzeData {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Rows per file.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Numeric columns.
        #[arg(long, default_value_t = 20)]
        columns: usize,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Also write the same data as reference.csv and current.csv.
        #[arg(long)]
        csv: bool,
    },
    /// Rewrite the small committed samples (fixtures/demo-sample*.{jsonl,csv}).
    Sample {
        /// Output directory.
        #[arg(long, default_value = "fixtures")]
        out: PathBuf,
    },
}

/// Writes the files.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate { out, seed } => {
            let generated = fixtures::generate(DemoShape::full(), seed);
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("stream.jsonl"), generated.stream)?;
            std::fs::write(out.join("train.csv"), generated.training_csv)?;
            println!(
                "wrote {} predictions and {} actuals to {}",
                generated.predictions,
                generated.actuals,
                out.display()
            );
        }
        Command::AnalyzeData {
            out,
            rows,
            columns,
            seed,
            csv,
        } => {
            fixtures::write_analyze_data(&out, rows, columns, seed, csv)?;
            println!(
                "wrote reference and current{} ({rows} rows x {columns} columns) to {}",
                if csv {
                    " as Parquet and CSV"
                } else {
                    ".parquet"
                },
                out.display()
            );
        }
        Command::Sample { out } => {
            let generated = fixtures::generate(DemoShape::sample(), 42);
            std::fs::write(out.join("demo-sample.jsonl"), generated.stream)?;
            std::fs::write(out.join("demo-sample-train.csv"), generated.training_csv)?;
            println!("wrote samples to {}", out.display());
        }
    }
    Ok(())
}
