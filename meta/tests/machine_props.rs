//! Properties of the replicated state machine under arbitrary command sequences (what a
//! damaged or hostile log could hold): apply never panics, a refused command changes nothing,
//! replicas that apply the same commands end equal, a snapshot image restores the same state,
//! and the leader's decisions over any such state do not panic either.

use std::time::Instant;

use keel_meta::machine::{decode_image, encode_image, Command, MetaState, Registration};
use keel_meta::placement::{Limits, Move};
use keel_meta::schedule;
use proptest::prelude::*;

fn node() -> impl Strategy<Value = u64> {
    0u64..6
}

fn partition() -> impl Strategy<Value = u32> {
    0u32..10
}

fn a_move() -> impl Strategy<Value = Move> {
    prop_oneof![
        (partition(), prop::collection::vec(node(), 0..4))
            .prop_map(|(partition, voters)| Move::Create { partition, voters }),
        (partition(), node(), prop::option::of(node())).prop_map(|(partition, node, replaces)| {
            Move::AddLearner {
                partition,
                node,
                replaces,
            }
        }),
        (partition(), node()).prop_map(|(partition, node)| Move::Promote { partition, node }),
        (partition(), node()).prop_map(|(partition, node)| Move::RemoveReplica { partition, node }),
        (partition(), node(), node()).prop_map(|(partition, from, to)| Move::TransferLeader {
            partition,
            from,
            to
        }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (prop_oneof![Just(8u32), Just(16), Just(3)], 1u32..4).prop_map(|(partitions, rf)| {
            Command::Bootstrap {
                partitions,
                replication_factor: rf,
            }
        }),
        (
            node(),
            prop_oneof![Just("a"), Just("b"), Just("")],
            prop_oneof![Just(8u32), Just(4)]
        )
            .prop_map(|(n, zone, partitions)| Command::Register(Registration {
                node: n,
                client_addr: format!("c{n}"),
                peer_addr: format!("p{n}"),
                zone: zone.to_string(),
                cores: 1,
                device_bytes: n << 36,
                memory_bytes: 1,
                partitions,
            })),
        (node(), any::<bool>()).prop_map(|(node, down)| Command::SetDown { node, down }),
        (node(), any::<bool>())
            .prop_map(|(node, draining)| Command::SetDraining { node, draining }),
        node().prop_map(|node| Command::Remove { node }),
        any::<bool>().prop_map(|on| Command::SetBalance { on }),
        prop::collection::vec(a_move(), 0..4).prop_map(|moves| Command::StartMoves { moves }),
        a_move().prop_map(|m| Command::CompleteMove { m }),
        partition().prop_map(|partition| Command::AbortMove { partition }),
        (partition(), node())
            .prop_map(|(partition, leader)| Command::SetLeader { partition, leader }),
        (partition(), prop::collection::vec(node(), 0..4), node()).prop_map(
            |(partition, voters, leader)| Command::Adopt {
                partition,
                voters,
                leader,
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_command_sequence_applies_alike_and_restores_from_its_image(
        cmds in prop::collection::vec(command(), 1..80)
    ) {
        let mut a = MetaState::default();
        let mut b = MetaState::default();
        for c in &cmds {
            let before = a.image();
            let ra = a.apply(c);
            let rb = b.apply(c);
            prop_assert_eq!(&ra, &rb);
            if ra.is_err() {
                prop_assert_eq!(a.image(), before, "a refused {:?} changed the state", c);
            }
            if let Some(cl) = a.cluster() {
                prop_assert!(cl.validate().is_ok());
            }
            let restored = decode_image(&encode_image(&a)).unwrap();
            prop_assert_eq!(restored.image(), a.image());
            prop_assert_eq!(restored.cluster(), a.cluster());
            // The leader's decisions over whatever state this is.
            let round = schedule::moves_to_start(&a, &Limits::default());
            for m in &round.start {
                prop_assert!(!a.in_flight().contains_key(&m.partition()));
            }
            for n in 0..6 {
                let _ = schedule::node_commands(&a, n, &[0, 1, 9]);
            }
            let _ = schedule::silent_nodes(&a, &schedule::Soft::default(), Instant::now(),
                std::time::Duration::from_secs(1));
        }
    }
}
