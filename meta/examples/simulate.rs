//! The placement planner at internet scale: place partitions on a cluster, add nodes, drain
//! some, lose some of one zone, and report each phase's steps, moves, final skew and planning
//! time. A benchmark command (BENCHMARKS.md, "Placement planner"), not a test:
//!
//! ```sh
//! cargo run --release -p keel-meta --example simulate -- --nodes 1000 --zones 3 --partitions 65536 --rf 3
//! ```

use clap::Parser;
use keel_meta::placement::Limits;
use keel_meta::sim::{run, Scenario};

#[derive(Parser)]
#[command(about = "Simulate the keel-meta placement planner on a large cluster")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: u64,
    #[arg(long, default_value_t = 3)]
    zones: u64,
    #[arg(long, default_value_t = 65536)]
    partitions: u32,
    #[arg(long, default_value_t = 3)]
    rf: usize,
    /// Nodes added after the first placement, each to the zone with fewest nodes.
    #[arg(long, default_value_t = 11)]
    add: u64,
    /// Nodes drained (each from the zone with most nodes), then removed.
    #[arg(long, default_value_t = 9)]
    drain: u64,
    /// Nodes of one zone lost at once, then replaced by as many new nodes in that zone.
    #[arg(long, default_value_t = 10)]
    lose: u64,
    #[arg(long, default_value_t = 256)]
    moves_in_flight: usize,
    #[arg(long, default_value_t = 4096)]
    leader_transfers: usize,
    #[arg(long, default_value_t = Limits::default().creates_per_plan_max)]
    creates: usize,
    #[arg(long, default_value_t = 100_000)]
    steps_max: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let s = Scenario {
        nodes: a.nodes,
        zones: a.zones,
        partitions: a.partitions,
        replication_factor: a.rf,
        add: a.add,
        drain: a.drain,
        lose: a.lose,
        limits: Limits {
            moves_in_flight_max: a.moves_in_flight,
            leader_transfers_per_plan_max: a.leader_transfers,
            creates_per_plan_max: a.creates,
            balance: true,
        },
        steps_max: a.steps_max,
        seed: a.seed,
    };
    println!(
        "{} nodes in {} zones, {} partitions, rf {}; add {}, drain {}, lose {} (one zone) and \
         replace them; {} moves in flight, {} leader transfers and {} creates per step, seed {}",
        s.nodes,
        s.zones,
        s.partitions,
        s.replication_factor,
        s.add,
        s.drain,
        s.lose,
        s.limits.moves_in_flight_max,
        s.limits.leader_transfers_per_plan_max,
        s.limits.creates_per_plan_max,
        s.seed
    );
    println!(
        "{:<8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "phase",
        "steps",
        "create",
        "learner",
        "promote",
        "remove",
        "transfer",
        "rep skew",
        "zone skew",
        "lead skew",
        "plan max ms",
        "plan avg ms"
    );
    let mut worst = std::time::Duration::ZERO;
    for r in run(&s, |_, _| {})? {
        worst = worst.max(r.plan_max);
        println!(
            "{:<8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>12.2}",
            r.name,
            r.steps,
            r.moves.create,
            r.moves.add_learner,
            r.moves.promote,
            r.moves.remove_replica,
            r.moves.transfer_leader,
            r.replica_skew,
            r.replica_skew_in_zone,
            r.leader_skew,
            r.plan_max.as_secs_f64() * 1e3,
            r.plan_total.as_secs_f64() * 1e3 / r.plans as f64,
        );
    }
    println!("slowest planning step: {:.2} ms", worst.as_secs_f64() * 1e3);
    Ok(())
}
