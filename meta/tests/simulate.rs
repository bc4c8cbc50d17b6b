//! The simulation of issue 8 at a size CI runs in seconds (the full size is the `simulate`
//! example, a benchmark): 30 nodes in 3 zones, 1024 partitions, RF 3; 3 nodes added, 3 drained,
//! 2 of one zone lost and replaced. Every phase converges to replica skew <= 1 and leader skew
//! <= 1; no move takes a partition below its replication factor of serving voters.

use keel_meta::placement::{measure, Limits, Move};
use keel_meta::sim::{run, Scenario};

#[test]
fn a_cluster_placed_grown_drained_and_repaired_stays_balanced() {
    let s = Scenario {
        nodes: 30,
        zones: 3,
        partitions: 1024,
        replication_factor: 3,
        add: 3,
        drain: 3,
        lose: 2,
        limits: Limits {
            moves_in_flight_max: 16,
            ..Limits::default()
        },
        steps_max: 2000,
        seed: 8,
    };
    // Only a removal can lower a partition's serving voters: of a serving node, it must leave
    // the replication factor.
    let reports = run(&s, |state, m| {
        if let Move::RemoveReplica { partition, node } = *m {
            let served = state.node(node).unwrap().health.serves();
            let now = measure::serving_voters(state, partition);
            assert!(
                !served || now >= 3,
                "{m:?} left partition {partition} {now} serving voters"
            );
        }
    })
    .unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.name).collect();
    assert_eq!(names, ["place", "add", "drain", "lose", "replace"]);
    for r in &reports {
        assert!(r.leader_skew <= 1.0, "{r:?}");
        assert!(r.replica_skew_in_zone <= 1.0, "{r:?}");
        if r.name != "lose" {
            // After the loss one zone has 2 nodes fewer, and each zone holds one replica of every
            // partition: its nodes must hold more until the replacements join.
            assert!(r.replica_skew <= 1.0, "{r:?}");
        }
    }
    assert_eq!(reports[0].moves.create, 1024);
    // Each added node takes its share, 3072 / 33 = 93: one learner, promotion and removal each.
    assert!(
        (3 * 92..=3 * 94).contains(&reports[1].moves.add_learner),
        "{:?}",
        reports[1]
    );
}
