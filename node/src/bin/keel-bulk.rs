//! `keel-bulk build --table T --input PATH... --format tsv|parquet --out DIR` builds a feature
//! table's version offline, as per-partition files in the engine's formats
//! ([`keel_node::bulk`]); `keel-bulk verify DIR` checks a built directory as a node would before
//! adopting it; `keel-bulk load --meta ADDR --table T DIR` makes it the table's current version
//! on every node; `rollback`, `unrollback` and `status` operate the versions.

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
    /// Loads a built directory as the table's next version: every replica adopts its
    /// partitions' files from DIR (a path every node reads), then the version becomes current
    /// for every reader at once.
    Load {
        /// The meta service (ADDR[,ADDR...]); a lone keel-node's is its node.meta_listen.
        #[arg(long)]
        meta: String,
        #[arg(long)]
        table: String,
        dir: PathBuf,
        /// full (the version replaces the one before). incremental is not built yet.
        #[arg(long, default_value = "full")]
        mode: String,
        /// DIR as the nodes see it (default: DIR made absolute).
        #[arg(long)]
        source: Option<String>,
        /// Seconds to wait for every replica before the load is aborted.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Points the table's readers back to a version still on the nodes (the one before the
    /// current by default); loads are refused until unrollback.
    Rollback {
        #[arg(long)]
        meta: String,
        #[arg(long)]
        table: String,
        #[arg(long)]
        to: Option<u32>,
    },
    /// Ends a rollback: the table takes loads again (the current version stays).
    Unrollback {
        #[arg(long)]
        meta: String,
        #[arg(long)]
        table: String,
    },
    /// The tables' versions, their sizes, which is current, and loads in flight.
    Status {
        #[arg(long)]
        meta: String,
        #[arg(long)]
        table: Option<String>,
        #[arg(long)]
        json: bool,
    },
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
        Command::Load {
            meta,
            table,
            dir,
            mode,
            source,
            timeout,
        } => (|| {
            match mode.as_str() {
                "full" => {}
                "incremental" => {
                    return Err("--mode incremental: not built yet (issue 11); load full \
                                versions"
                        .to_string())
                }
                other => return Err(format!("--mode {other}: must be full or incremental")),
            }
            let source = match source {
                Some(s) => s,
                None => std::fs::canonicalize(&dir)
                    .map_err(|e| format!("{}: {e}", dir.display()))?
                    .display()
                    .to_string(),
            };
            let l = bulk::load::load(
                &meta,
                &table,
                &dir,
                &source,
                std::time::Duration::from_secs(timeout),
            )?;
            println!(
                "table {table} version {} is current: {} keys, {} bytes loaded in {:.2} s",
                l.version, l.records, l.bytes, l.secs
            );
            Ok(())
        })(),
        Command::Rollback { meta, table, to } => {
            let t0 = std::time::Instant::now();
            bulk::load::rollback(&meta, &table, to).map(|v| {
                println!(
                    "table {table}: reads see version {v} ({:.3} s); loads are refused until \
                     keel-bulk unrollback",
                    t0.elapsed().as_secs_f64()
                )
            })
        }
        Command::Unrollback { meta, table } => bulk::load::unrollback(&meta, &table)
            .map(|()| println!("table {table}: takes loads again")),
        Command::Status { meta, table, json } => {
            bulk::load::status(&meta, table.as_deref(), json).map(|s| print!("{s}"))
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
