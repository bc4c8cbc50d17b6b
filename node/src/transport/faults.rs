//! The seeded fault plan: a test instrument applied in `Transport::send` (and, for partitions,
//! on receive). Pure: it draws from its own generator and returns a verdict; the transport carries
//! it out. The shipped binary never sets a plan.

use std::collections::HashSet;
use std::time::Duration;

use super::backoff::SplitMix64;

#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    pub seed: u64,
    /// Out of 1000 sends, how many are dropped.
    pub drop_per_mille: u32,
    /// Out of 1000 sends that are not dropped, how many go out twice.
    pub duplicate_per_mille: u32,
    /// Each copy is held back by a uniform delay in `[0, delay_max]`, which reorders frames.
    /// Zero: no delay, order kept.
    pub delay_max: Duration,
    /// Nodes cut off from this transport: nothing is sent to them and frames from them are
    /// dropped on arrival.
    pub partitioned: HashSet<u64>,
}

/// What to do with one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    /// Queue one copy per entry, each after its delay (zero = queue now).
    Deliver(Vec<Duration>),
}

/// A plan and its generator's position.
#[derive(Debug)]
pub struct Faults {
    plan: FaultPlan,
    rng: SplitMix64,
}

impl Faults {
    pub fn new(plan: FaultPlan) -> Faults {
        let rng = SplitMix64::new(plan.seed);
        Faults { plan, rng }
    }

    pub fn is_partitioned(&self, node: u64) -> bool {
        self.plan.partitioned.contains(&node)
    }

    /// The verdict for the next send to `to_node`. Every call draws the same number of values
    /// whatever the outcome, so the n-th send's fate depends only on the seed and n.
    pub fn decide(&mut self, to_node: u64) -> Verdict {
        let draws = [
            self.rng.next_u64(),
            self.rng.next_u64(),
            self.rng.next_u64(),
            self.rng.next_u64(),
        ];
        if self.is_partitioned(to_node) || draws[0] % 1000 < u64::from(self.plan.drop_per_mille) {
            return Verdict::Drop;
        }
        let copies = if draws[1] % 1000 < u64::from(self.plan.duplicate_per_mille) {
            2
        } else {
            1
        };
        let delay_max_ns = self.plan.delay_max.as_nanos().min(u64::MAX as u128 - 1) as u64;
        let delays = draws[2..2 + copies]
            .iter()
            .map(|d| Duration::from_nanos(d % (delay_max_ns + 1)))
            .collect();
        Verdict::Deliver(delays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64) -> FaultPlan {
        FaultPlan {
            seed,
            drop_per_mille: 300,
            duplicate_per_mille: 100,
            delay_max: Duration::from_millis(5),
            partitioned: HashSet::from([9]),
        }
    }

    #[test]
    fn same_seed_same_verdicts() {
        let (mut a, mut b) = (Faults::new(plan(1)), Faults::new(plan(1)));
        let va: Vec<Verdict> = (0..1000).map(|i| a.decide(i % 3)).collect();
        let vb: Vec<Verdict> = (0..1000).map(|i| b.decide(i % 3)).collect();
        assert_eq!(va, vb);
        let mut c = Faults::new(plan(2));
        let vc: Vec<Verdict> = (0..1000).map(|i| c.decide(i % 3)).collect();
        assert_ne!(va, vc);
    }

    #[test]
    fn rates_are_roughly_as_planned_and_delays_bounded() {
        let mut f = Faults::new(plan(3));
        let (mut dropped, mut doubled) = (0, 0);
        for _ in 0..10_000 {
            match f.decide(1) {
                Verdict::Drop => dropped += 1,
                Verdict::Deliver(d) => {
                    assert!(d.iter().all(|d| *d <= Duration::from_millis(5)));
                    doubled += usize::from(d.len() == 2);
                }
            }
        }
        assert!((2500..3500).contains(&dropped), "{dropped}");
        assert!((400..1000).contains(&doubled), "{doubled}");
    }

    #[test]
    fn partitioned_node_gets_nothing() {
        let mut f = Faults::new(FaultPlan {
            partitioned: HashSet::from([9]),
            ..FaultPlan::default()
        });
        assert!((0..1000).all(|_| f.decide(9) == Verdict::Drop));
        assert_eq!(f.decide(1), Verdict::Deliver(vec![Duration::ZERO]));
    }
}
