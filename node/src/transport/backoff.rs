//! The reconnect schedule, as a pure function: the writer passes the number of failed attempts
//! and a random draw, so tests drive it by hand.

use std::time::Duration;

/// How long to wait after `failures` consecutive failed connects (1 = the first failure).
///
/// The ceiling doubles from `min` per failure up to `max`; the wait is drawn uniformly from the
/// upper half of the ceiling ("equal jitter"), so peers that lost a node at the same moment spread
/// their reconnects out while each still waits at least half the schedule. Never below `min`, never
/// above `max`.
pub fn backoff_delay(min: Duration, max: Duration, failures: u32, draw: u64) -> Duration {
    debug_assert!(min <= max);
    let min_ns = min.as_nanos().min(u64::MAX as u128) as u64;
    let max_ns = max.as_nanos().min(u64::MAX as u128) as u64;
    // 2^63 is past any u64 of nanoseconds: cap the shift so it cannot overflow.
    let shift = failures.saturating_sub(1).min(63);
    let ceiling = min_ns.saturating_mul(1u64 << shift).min(max_ns);
    let half = ceiling / 2;
    let jitter = draw % (ceiling - half + 1);
    let d = (half + jitter).clamp(min_ns, max_ns);
    Duration::from_nanos(d)
}

/// splitmix64: a tiny seeded generator for back-off jitter and the fault plan. Not for secrets;
/// chosen so a seed gives the same sequence on every platform and dependency version.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    #[test]
    fn ceiling_doubles_from_min_up_to_max_and_the_floor_is_half_of_it() {
        let ceilings_ms = [10, 20, 40, 80, 160, 320, 640, 1000, 1000];
        for (f, &c_ms) in (1..).zip(ceilings_ms.iter()) {
            let c = Duration::from_millis(c_ms).as_nanos() as u64;
            // The draw that lands on the top of the range [c/2, c].
            assert_eq!(
                backoff_delay(MIN, MAX, f, c - c / 2).as_nanos() as u64,
                c,
                "failure {f}"
            );
            let floor = Duration::from_nanos(c / 2).max(MIN);
            assert_eq!(backoff_delay(MIN, MAX, f, 0), floor, "failure {f}");
        }
    }

    #[test]
    fn every_draw_stays_within_min_and_max_and_the_upper_half() {
        let mut rng = SplitMix64::new(7);
        for failures in [0, 1, 2, 5, 10, 40, 64, 1000, u32::MAX] {
            let shift = failures.saturating_sub(1).min(63);
            let ceiling = MIN.saturating_mul(1u32 << shift.min(31)).min(MAX);
            for _ in 0..1000 {
                let d = backoff_delay(MIN, MAX, failures, rng.next_u64());
                assert!(d >= MIN && d <= MAX, "{failures}: {d:?}");
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{failures}: {d:?} vs {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn min_equal_to_max_is_a_fixed_delay() {
        for draw in [0, 1, 12345, u64::MAX] {
            assert_eq!(backoff_delay(MAX, MAX, 3, draw), MAX);
        }
    }

    #[test]
    fn splitmix_is_deterministic_per_seed() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = SplitMix64::new(42);
        assert!(a.iter().all(|&x| x == r.next_u64()));
        assert_ne!(SplitMix64::new(43).next_u64(), a[0]);
    }
}
