//! Random sources: a small seeded PRNG, key distributions (uniform, zipfian, sequential) and value
//! size distributions. No I/O, no clock: tests drive them with fixed seeds.

use std::fmt;

/// xoshiro256** seeded through splitmix64. Not cryptographic; fast and reproducible per seed.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, n). Multiply-shift: bias below 2^-32 for n < 2^32, fine for a load generator.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Which keys a workload touches.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyDistSpec {
    Uniform,
    /// Zipfian with exponent theta > 0 (0.99 is YCSB's): rank 0 is the hottest key.
    Zipfian(f64),
    /// Each thread walks the key space in order from its own offset, wrapping.
    Sequential,
}

impl std::str::FromStr for KeyDistSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Self::Uniform),
            "sequential" => Ok(Self::Sequential),
            "zipfian" => Ok(Self::Zipfian(0.99)),
            _ => {
                let theta = s.strip_prefix("zipfian:").ok_or_else(|| {
                    format!("dist = {s:?}: expected uniform, zipfian:THETA or sequential")
                })?;
                let theta: f64 = theta
                    .parse()
                    .map_err(|_| format!("dist = {s:?}: THETA is not a number"))?;
                if !(theta > 0.0 && theta <= 5.0) {
                    return Err(format!("dist = {s:?}: THETA must be in (0, 5]"));
                }
                Ok(Self::Zipfian(theta))
            }
        }
    }
}

impl fmt::Display for KeyDistSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uniform => write!(f, "uniform"),
            Self::Zipfian(t) => write!(f, "zipfian:{t}"),
            Self::Sequential => write!(f, "sequential"),
        }
    }
}

/// Zipfian sampler by rejection-inversion (Hörmann and Derflinger, "Rejection-inversion to
/// generate variates from monotone discrete distributions", 1996; as in Apache Commons RNG).
/// Exact for every n and theta > 0, O(1) per draw, no O(n) set-up (YCSB's Gray et al. method is
/// only approximate beyond rank 1: about 17 % off at rank 2 for theta 0.99).
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl Zipfian {
    pub fn new(n: u64, theta: f64) -> Self {
        assert!(n >= 1 && theta > 0.0);
        let mut z = Self {
            n,
            theta,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.s = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    fn h(&self, x: f64) -> f64 {
        (-self.theta * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let lx = x.ln();
        helper2((1.0 - self.theta) * lx) * lx
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.theta)).max(-1.0);
        (helper1(t) * x).exp()
    }

    /// A rank in [0, n); 0 is the most frequent.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        // Bounded: the acceptance probability is above 0.5 for every n and theta, so 64 rounds
        // fail with probability below 2^-64; the fallback keeps the loop finite regardless.
        for _ in 0..64 {
            let u = self.h_integral_n + rng.unit() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = ((x + 0.5) as u64).clamp(1, self.n);
            if k as f64 - x <= self.s || u >= self.h_integral(k as f64 + 0.5) - self.h(k as f64) {
                return k - 1;
            }
        }
        0
    }

    /// The exact probability of `rank` under the zipfian law. O(min(n, 10^6)): tests and reports.
    pub fn probability(&self, rank: u64) -> f64 {
        1.0 / ((rank + 1) as f64).powf(self.theta) / zeta(self.n, self.theta)
    }
}

/// log1p(x) / x, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// expm1(x) / x, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// Exact partial sums up to this many terms; the tail uses the Euler-Maclaurin integral, accurate
/// to well under 1e-6 there.
const ZETA_EXACT_TERMS_MAX: u64 = 1_000_000;

/// The generalised harmonic number H(n, theta) = sum of 1/i^theta for i in 1..=n (theta != 1).
pub fn zeta(n: u64, theta: f64) -> f64 {
    let m = n.min(ZETA_EXACT_TERMS_MAX);
    let mut sum = 0.0;
    for i in 1..=m {
        sum += 1.0 / (i as f64).powf(theta);
    }
    if n > m {
        let f = |x: f64| x.powf(-theta);
        let integral =
            ((n as f64).powf(1.0 - theta) - (m as f64).powf(1.0 - theta)) / (1.0 - theta);
        // Sum over (m, n] ~ integral from m to n + (f(n) - f(m)) / 2.
        sum += integral + (f(n as f64) - f(m as f64)) / 2.0;
    }
    sum
}

/// A key chooser built from a [`KeyDistSpec`] for one worker thread.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { n: u64 },
    Zipfian(Zipfian),
    Sequential { n: u64, next: u64 },
}

impl KeyChooser {
    pub fn new(spec: &KeyDistSpec, n: u64, thread_idx: u64, threads: u64) -> Self {
        match spec {
            KeyDistSpec::Uniform => Self::Uniform { n },
            KeyDistSpec::Zipfian(theta) => Self::Zipfian(Zipfian::new(n, *theta)),
            KeyDistSpec::Sequential => Self::Sequential {
                n,
                next: n / threads.max(1) * thread_idx,
            },
        }
    }

    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        match self {
            Self::Uniform { n } => rng.below(*n),
            Self::Zipfian(z) => z.sample(rng),
            Self::Sequential { n, next } => {
                let k = *next % *n;
                *next = next.wrapping_add(1);
                k
            }
        }
    }
}

/// Value sizes: `N`, `uniform:MIN-MAX`, or `list:SIZE=WEIGHT,...` (e.g. `list:100=80,4096=19,1048576=1`).
#[derive(Clone, Debug, PartialEq)]
pub enum ValueSizeSpec {
    Fixed(u32),
    Uniform(u32, u32),
    Weighted(Vec<(u32, u32)>),
}

impl ValueSizeSpec {
    pub fn min(&self) -> u32 {
        match self {
            Self::Fixed(n) => *n,
            Self::Uniform(a, _) => *a,
            Self::Weighted(v) => v.iter().map(|x| x.0).min().unwrap_or(0),
        }
    }

    pub fn max(&self) -> u32 {
        match self {
            Self::Fixed(n) => *n,
            Self::Uniform(_, b) => *b,
            Self::Weighted(v) => v.iter().map(|x| x.0).max().unwrap_or(0),
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> u32 {
        match self {
            Self::Fixed(n) => *n,
            Self::Uniform(a, b) => a + rng.below((b - a + 1) as u64) as u32,
            Self::Weighted(v) => {
                let total: u64 = v.iter().map(|x| x.1 as u64).sum();
                let mut pick = rng.below(total);
                for &(size, w) in v {
                    if pick < w as u64 {
                        return size;
                    }
                    pick -= w as u64;
                }
                v[v.len() - 1].0
            }
        }
    }
}

impl std::str::FromStr for ValueSizeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("value-size = {s:?}: {why}");
        let num = |x: &str| x.trim().parse::<u32>().map_err(|_| bad("not a number"));
        if let Some(r) = s.strip_prefix("uniform:") {
            let (a, b) = r
                .split_once('-')
                .ok_or_else(|| bad("expected uniform:MIN-MAX"))?;
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(bad("MIN > MAX"));
            }
            Ok(Self::Uniform(a, b))
        } else if let Some(r) = s.strip_prefix("list:") {
            let mut v = Vec::new();
            for part in r.split(',') {
                let (size, w) = part
                    .split_once('=')
                    .ok_or_else(|| bad("expected SIZE=WEIGHT"))?;
                let w = num(w)?;
                if w > 0 {
                    v.push((num(size)?, w));
                }
            }
            if v.is_empty() {
                return Err(bad("no size with a weight > 0"));
            }
            Ok(Self::Weighted(v))
        } else {
            Ok(Self::Fixed(num(s)?))
        }
    }
}

impl fmt::Display for ValueSizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Uniform(a, b) => write!(f, "uniform:{a}-{b}"),
            Self::Weighted(v) => {
                write!(f, "list:")?;
                for (i, (s, w)) in v.iter().enumerate() {
                    write!(f, "{}{s}={w}", if i > 0 { "," } else { "" })?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_rank_frequencies_match_the_law() {
        let n = 1000;
        let z = Zipfian::new(n, 0.99);
        let mut rng = Rng::new(7);
        let draws = 1_000_000u64;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        // Rejection-inversion is exact: the head rank by rank within sampling noise (1M draws:
        // about 0.5 % at rank 0, 3 % at rank 9), the tail as a mass.
        let zetan = zeta(n, 0.99);
        for rank in 0..10u64 {
            let expected = z.probability(rank) * draws as f64;
            let got = counts[rank as usize] as f64;
            let err = (got - expected).abs() / expected;
            assert!(
                err < 0.05,
                "rank {rank}: got {got}, expected {expected:.0} ({err:.3})"
            );
        }
        let tail_expected: f64 = (100..n)
            .map(|r| 1.0 / ((r + 1) as f64).powf(0.99) / zetan)
            .sum::<f64>()
            * draws as f64;
        let tail_got: u64 = counts[100..].iter().sum();
        let err = (tail_got as f64 - tail_expected).abs() / tail_expected;
        assert!(
            err < 0.02,
            "tail mass: got {tail_got}, expected {tail_expected:.0}"
        );
        // Rank order holds on the head.
        assert!(counts[0] > counts[1] && counts[1] > counts[2] && counts[2] > counts[5]);
    }

    #[test]
    fn zeta_tail_approximation_is_close() {
        // Compare the Euler-Maclaurin tail against a direct sum just past the exact limit.
        let n = ZETA_EXACT_TERMS_MAX * 3;
        let approx = zeta(n, 0.99);
        let exact: f64 = (1..=n).map(|i| 1.0 / (i as f64).powf(0.99)).sum();
        assert!((approx - exact).abs() / exact < 1e-6, "{approx} vs {exact}");
    }

    #[test]
    fn zipfian_stays_in_range_for_huge_and_tiny_spaces() {
        let mut rng = Rng::new(9);
        for (n, theta) in [(1u64, 0.99), (2, 0.5), (1_000_000_000, 0.99), (10, 1.2)] {
            let z = Zipfian::new(n, theta);
            for _ in 0..10_000 {
                assert!(z.sample(&mut rng) < n);
            }
        }
    }

    #[test]
    fn uniform_and_sequential_cover_the_space() {
        let mut rng = Rng::new(1);
        let mut u = KeyChooser::new(&KeyDistSpec::Uniform, 10, 0, 1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[u.next(&mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        let mut s = KeyChooser::new(&KeyDistSpec::Sequential, 10, 1, 2);
        let got: Vec<u64> = (0..7).map(|_| s.next(&mut rng)).collect();
        assert_eq!(got, vec![5, 6, 7, 8, 9, 0, 1]);
    }

    #[test]
    fn specs_parse_and_reject() {
        assert_eq!(
            "zipfian:0.9".parse::<KeyDistSpec>().unwrap(),
            KeyDistSpec::Zipfian(0.9)
        );
        assert!("zipfian:0".parse::<KeyDistSpec>().is_err());
        assert_eq!(
            "zipfian:1.2".parse::<KeyDistSpec>().unwrap(),
            KeyDistSpec::Zipfian(1.2)
        );
        assert!("gauss".parse::<KeyDistSpec>().is_err());
        assert_eq!(
            "100".parse::<ValueSizeSpec>().unwrap(),
            ValueSizeSpec::Fixed(100)
        );
        assert_eq!(
            "uniform:10-20".parse::<ValueSizeSpec>().unwrap(),
            ValueSizeSpec::Uniform(10, 20)
        );
        let w: ValueSizeSpec = "list:100=3,4096=1".parse().unwrap();
        assert_eq!(w.to_string(), "list:100=3,4096=1");
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            assert!((10..=20).contains(&ValueSizeSpec::Uniform(10, 20).sample(&mut rng)));
            assert!([100, 4096].contains(&w.sample(&mut rng)));
        }
    }
}
