//! `keel-bulk build --table T --input PATH... --format tsv|parquet --out DIR` builds a feature
//! table's version offline, as per-partition files in the engine's formats
//! ([`keel_node::bulk`]); `keel-bulk verify DIR` checks a built directory as a node would before
//! adopting it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_node::bulk::{self, BuildOptions, Format};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keel's bulk loader: feature-table versions built offline.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Builds one version of a table from TSV or Parquet files into DIR (which must not exist):
    /// DIR/part-NNNNN.seg and .idx per partition and DIR/manifest.json. Nothing is left that
    /// looks valid if it fails.
    Build {
        /// The table's name (its keys are read as `<table>:<key>`).
        #[arg(long)]
        table: String,
        /// Input files, or directories of them (names starting with `.` or `_` are skipped).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// tsv (`key<TAB>value` lines; docs/design.md, "Bulk-built tables", gives the escaping) or
        /// parquet (string or binary key and value columns).
        #[arg(long)]
        format: Format,
        /// The directory to build into.
        #[arg(long)]
        out: PathBuf,
        /// The table's partitions (a power of two); a load checks that the table has as many.
        #[arg(long, default_value_t = 64)]
        partitions: u32,
        /// The value-log segment size of the nodes that will load it (engine.segment_bytes).
        #[arg(long, default_value_t = 16 << 20)]
        segment_bytes: u64,
        /// The longest value accepted, in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        value_max: u64,
        /// Worker threads (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
        /// Parquet: the column of keys.
        #[arg(long, default_value = "key")]
        key_column: String,
        /// Parquet: the column of values (a null value is a deletion).
        #[arg(long, default_value = "value")]
        value_column: String,
    },
    /// Checks a built directory: every file's size and checksum against its manifest, every
    /// header, and every index entry against its record.
    Verify { dir: PathBuf },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.command {
        Command::Build {
            table,
            input,
            format,
            out,
            partitions,
            segment_bytes,
            value_max,
            threads,
            key_column,
            value_column,
        } => {
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            let opts = BuildOptions {
                table,
                inputs: input,
                format,
                out,
                partitions,
                segment_bytes,
                value_len_max: value_max,
                threads,
                key_column,
                value_column,
            };
            bulk::build(&opts).map(|r| {
                let m = &r.manifest;
                let data: u64 = m.files.iter().map(|f| f.seg_bytes + f.idx_bytes).sum();
                println!(
                    "built table {} into {}: {} keys ({} deletions), {} partitions, {} bytes of \
                     files from {} input bytes in {:.2} s ({:.0} keys/s with {} threads)",
                    m.table,
                    opts.out.display(),
                    m.records,
                    m.tombstones,
                    m.partitions,
                    data,
                    r.input_bytes,
                    r.secs,
                    m.records as f64 / r.secs.max(1e-9),
                    opts.threads
                );
            })
        }
        Command::Verify { dir } => bulk::verify(&dir).map(|v| {
            println!(
                "{}: ok, {} keys ({} deletions), {} value bytes",
                dir.display(),
                v.records,
                v.tombstones,
                v.value_bytes
            );
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bulk: {e}");
            ExitCode::FAILURE
        }
    }
}
