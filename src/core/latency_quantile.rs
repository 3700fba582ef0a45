//! A decaying latency histogram for quantile estimates, and the per-try timeout derived from
//! it.
//!
//! Buckets grow geometrically, as in HdrHistogram's log buckets or Prometheus' exponential
//! buckets: bucket 0 holds `[0, 100 us)` and bucket `i >= 1` holds
//! `[100 us x 1.25^(i-1), 100 us x 1.25^i)`; the last of the [`BUCKETS`] is open-ended and
//! starts at `100 us x 1.25^62 ~ 102 s`. A quantile is found by walking the cumulative counts
//! and interpolating linearly inside the bucket that holds it, so its error is below one
//! bucket width (25% of the value at worst, much less for smooth distributions).
//!
//! Old samples fade with exponential decay (forward-decay histograms, Cormode et al. 2009):
//! every count is multiplied by `2^(-elapsed / halfLife)`. The decay is applied lazily, when a
//! sample is recorded; as it scales all buckets alike it never moves a quantile, it only
//! lowers the evidence, so a read applies it to the total alone. With fewer than
//! [`MIN_SAMPLES`] decayed samples there is no estimate: a quantile of a handful of samples
//! is noise.
//!
//! The histogram is per worker and deliberately not shared: a timeout needs a reasonable
//! estimate, not an exact one, and each worker sees a uniform share of the traffic. Sharing
//! would cost a compare-and-swap of half a kilobyte per request.
//!
//! [`per_try_timeout`] turns the estimate into Envoy's `x-envoy-upstream-rq-per-try-timeout-ms`:
//! `clamp(quantile x factor, min, max)` (the "hedge after p95" rule of thumb of Dean and
//! Barroso's "The Tail at Scale", applied to the retry timeout instead of a hedge).

use crate::config::Millis;
use crate::core::time::Instant;

/// Number of buckets.
pub const BUCKETS: usize = 64;
/// Upper bound of bucket 0, in microseconds.
const FIRST_BOUND_US: f64 = 100.0;
/// Ratio between consecutive bucket bounds.
const GROWTH: f64 = 1.25;
/// Decayed samples needed before a quantile is reported.
pub const MIN_SAMPLES: f64 = 20.0;
/// Below this total the histogram is cleared, so counts never linger as denormals.
const NEGLIGIBLE: f64 = 1e-9;

/// Lower bound of bucket `i`, in microseconds.
fn lower_bound(i: usize) -> f64 {
    if i == 0 {
        0.0
    } else {
        FIRST_BOUND_US * GROWTH.powi(i as i32 - 1)
    }
}

/// Upper bound of bucket `i` (exclusive), in microseconds.
fn upper_bound(i: usize) -> f64 {
    FIRST_BOUND_US * GROWTH.powi(i as i32)
}

fn bucket_of(latency_us: f64) -> usize {
    if latency_us < FIRST_BOUND_US {
        return 0;
    }
    let i = ((latency_us / FIRST_BOUND_US).ln() / GROWTH.ln()).floor() + 1.0;
    // The logarithm can land a hair off at a bound; the comparisons below settle it.
    let mut i = (i.max(1.0) as usize).min(BUCKETS - 1);
    if i < BUCKETS - 1 && latency_us >= upper_bound(i) {
        i += 1;
    } else if i > 1 && latency_us < lower_bound(i) {
        i -= 1;
    }
    i
}

/// `2^(-elapsed / half_life)`; a zero half-life keeps nothing from earlier instants.
fn decay(elapsed: Millis, half_life: Millis) -> f64 {
    if elapsed.0 == 0 {
        return 1.0;
    }
    if half_life.0 == 0 {
        return 0.0;
    }
    (-(elapsed.0 as f64) / half_life.0 as f64).exp2()
}

/// A decaying log-bucket latency histogram (one per destination and worker).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyQuantile {
    counts: [f64; BUCKETS],
    /// When the counts were last decayed.
    at: Instant,
    half_life: Millis,
}

impl LatencyQuantile {
    pub fn new(half_life: Millis) -> Self {
        LatencyQuantile {
            counts: [0.0; BUCKETS],
            at: Instant(0),
            half_life,
        }
    }

    /// Changes the half-life (configuration reload); the samples are kept.
    pub fn set_half_life(&mut self, half_life: Millis) {
        self.half_life = half_life;
    }

    /// Adds one latency sample taken at `now`. NaN is ignored, a negative sample counts as
    /// zero and one beyond the range (infinity included) in the open-ended top bucket.
    pub fn record(&mut self, latency_us: f64, now: Instant) {
        if latency_us.is_nan() {
            return;
        }
        let w = decay(now.since(self.at), self.half_life);
        if w < 1.0 {
            let mut total = 0.0;
            for c in self.counts.iter_mut() {
                *c *= w;
                total += *c;
            }
            if total < NEGLIGIBLE {
                self.counts = [0.0; BUCKETS];
            }
        }
        self.at = self.at.max(now);
        if let Some(c) = self.counts.get_mut(bucket_of(latency_us.max(0.0))) {
            *c += 1.0;
        }
    }

    /// Decayed number of samples as of `now`.
    pub fn count(&self, now: Instant) -> f64 {
        self.counts.iter().sum::<f64>() * decay(now.since(self.at), self.half_life)
    }

    /// The `q`-quantile (`0..=1`) in microseconds as of `now`, `None` with fewer than
    /// [`MIN_SAMPLES`] decayed samples.
    pub fn quantile(&self, q: f64, now: Instant) -> Option<f64> {
        if !q.is_finite() || self.count(now) < MIN_SAMPLES {
            return None;
        }
        let total: f64 = self.counts.iter().sum();
        let target = q.clamp(0.0, 1.0) * total;
        let mut below = 0.0;
        let mut last = None;
        for (i, &c) in self.counts.iter().enumerate() {
            if c <= 0.0 {
                continue;
            }
            last = Some(i);
            if below + c >= target {
                if i == BUCKETS - 1 {
                    return Some(lower_bound(i));
                }
                let share = ((target - below) / c).clamp(0.0, 1.0);
                let (lo, hi) = (lower_bound(i), upper_bound(i));
                return Some(lo + (hi - lo) * share);
            }
            below += c;
        }
        // Rounding left the target a hair above the sum: the top of the highest bucket.
        last.map(|i| {
            if i == BUCKETS - 1 {
                lower_bound(i)
            } else {
                upper_bound(i)
            }
        })
    }
}

/// The per-try timeout: `clamp(estimate x factor, min, max)`, rounded up to a millisecond;
/// `max` without an estimate (or with a nonsensical one), so an unknown destination gets the
/// most lenient timeout. If `min > max`, `max` wins.
pub fn per_try_timeout(estimate_us: Option<f64>, factor: f64, min: Millis, max: Millis) -> Millis {
    let Some(estimate) = estimate_us.filter(|e| e.is_finite() && *e >= 0.0) else {
        return max;
    };
    let factor = if factor.is_finite() {
        factor.max(0.0)
    } else {
        1.0
    };
    let ms = (estimate * factor / 1000.0).ceil();
    if !ms.is_finite() {
        return max;
    }
    // `as` saturates for values beyond u64.
    Millis((ms as u64).max(min.0).min(max.0))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const HALF_LIFE: Millis = Millis(10_000);
    const T0: Instant = Instant(1_700_000_000_000);

    fn at(ms: u64) -> Instant {
        Instant(T0.0 + ms)
    }

    #[test]
    fn buckets_cover_the_range_with_growing_width() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(99.9), 0);
        assert_eq!(bucket_of(100.0), 1);
        assert_eq!(bucket_of(124.9), 1);
        assert_eq!(bucket_of(125.0), 2);
        assert!(
            lower_bound(BUCKETS - 1) > 100e6,
            "{}",
            lower_bound(BUCKETS - 1)
        );
        assert_eq!(bucket_of(1e12), BUCKETS - 1);
        for i in 1..BUCKETS - 1 {
            assert_eq!(bucket_of(lower_bound(i)), i, "lower bound of {i}");
            assert_eq!(bucket_of(upper_bound(i) * 0.999_999), i, "top of {i}");
        }
    }

    fn exact(sorted: &[f64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn quantiles_are_within_one_bucket_of_exact() {
        let mut h = LatencyQuantile::new(HALF_LIFE);
        // A skewed distribution: 1 ms .. ~1 s, denser at the low end.
        let mut samples: Vec<f64> = (1..=2000)
            .map(|i| 1_000.0 * (1.0 + (i as f64 / 2000.0).powi(4) * 999.0))
            .collect();
        for &s in &samples {
            h.record(s, T0);
        }
        samples.sort_by(f64::total_cmp);
        for q in [0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let want = exact(&samples, q);
            let got = h.quantile(q, T0).unwrap();
            let width = upper_bound(bucket_of(want)) - lower_bound(bucket_of(want));
            assert!((got - want).abs() <= width, "q{q}: {got} vs {want}");
        }
        // Uniform samples interpolate closely inside a bucket they fill...
        let mut u = LatencyQuantile::new(HALF_LIFE);
        for i in 1..=1000 {
            u.record(i as f64 * 1_000.0, T0);
        }
        let p50 = u.quantile(0.5, T0).unwrap();
        assert!((p50 - 500_000.0).abs() < 5_000.0, "{p50}");
        // ...and stay within the bucket where the distribution ends (940 ms .. 1.18 s here).
        let p95 = u.quantile(0.95, T0).unwrap();
        assert!((950_000.0..1_000_000.0).contains(&p95), "{p95}");
    }

    #[test]
    fn decay_forgets_the_old_regime() {
        let mut h = LatencyQuantile::new(HALF_LIFE);
        for _ in 0..1000 {
            h.record(10_000.0, T0);
        }
        let p50 = h.quantile(0.5, T0).unwrap();
        assert!((8_000.0..12_500.0).contains(&p50), "{p50}");
        // Six half-lives later the 1000 old samples weigh ~16: 200 new ones dominate.
        for _ in 0..200 {
            h.record(100_000.0, at(60_000));
        }
        let p50 = h.quantile(0.5, at(60_000)).unwrap();
        assert!((80_000.0..125_000.0).contains(&p50), "{p50}");
        let p05 = h.quantile(0.05, at(60_000)).unwrap();
        assert!(p05 < 12_500.0, "the remnant is still there: {p05}");
        // Without decay the old regime would still be the median.
        let mut flat = LatencyQuantile::new(Millis(u64::MAX));
        for _ in 0..1000 {
            flat.record(10_000.0, T0);
        }
        for _ in 0..200 {
            flat.record(100_000.0, at(60_000));
        }
        assert!(flat.quantile(0.5, at(60_000)).unwrap() < 12_500.0);
    }

    #[test]
    fn few_samples_give_no_estimate() {
        let mut h = LatencyQuantile::new(HALF_LIFE);
        assert_eq!(h.quantile(0.5, T0), None);
        for _ in 0..19 {
            h.record(5_000.0, T0);
        }
        assert_eq!(h.quantile(0.5, T0), None);
        h.record(5_000.0, T0);
        assert!(h.quantile(0.5, T0).is_some());
        // One half-life later only 10 remain in evidence.
        assert!((h.count(at(10_000)) - 10.0).abs() < 1e-9);
        assert_eq!(h.quantile(0.5, at(10_000)), None);
        assert_eq!(h.quantile(f64::NAN, T0), None);
    }

    #[test]
    fn garbage_samples_and_clock_steps_are_harmless() {
        let mut h = LatencyQuantile::new(HALF_LIFE);
        h.record(f64::NAN, at(5_000));
        assert_eq!(h.count(at(5_000)), 0.0);
        for _ in 0..10 {
            h.record(-3.0, at(5_000));
            h.record(f64::INFINITY, at(1_000));
        }
        assert_eq!(h.at, at(5_000));
        assert!((h.count(at(0)) - 20.0).abs() < 1e-9, "no decay backwards");
        assert_eq!(h.quantile(0.0, at(5_000)), Some(0.0));
        assert_eq!(h.quantile(1.0, at(5_000)), Some(lower_bound(BUCKETS - 1)));
        // A zero half-life keeps only the present instant.
        let mut z = LatencyQuantile::new(Millis(0));
        for _ in 0..30 {
            z.record(1_000.0, T0);
        }
        z.record(1_000.0, at(1));
        assert_eq!(z.count(at(1)), 1.0);
        // Counts that decay to nothing are cleared.
        let mut d = LatencyQuantile::new(Millis(1_000));
        d.record(1_000.0, T0);
        d.record(50_000.0, at(1_070_000));
        assert_eq!(d.counts.iter().filter(|&&c| c > 0.0).count(), 1);
    }

    #[test]
    fn timeout_is_the_clamped_scaled_estimate() {
        let (min, max) = (Millis(25), Millis(2_000));
        assert_eq!(per_try_timeout(Some(100_000.0), 2.0, min, max), Millis(200));
        assert_eq!(per_try_timeout(Some(100_100.0), 2.0, min, max), Millis(201));
        assert_eq!(per_try_timeout(Some(1_000.0), 2.0, min, max), min);
        assert_eq!(per_try_timeout(Some(5e6), 2.0, min, max), max);
        assert_eq!(per_try_timeout(None, 2.0, min, max), max);
        assert_eq!(per_try_timeout(Some(f64::NAN), 2.0, min, max), max);
        assert_eq!(per_try_timeout(Some(-1.0), 2.0, min, max), max);
        assert_eq!(per_try_timeout(Some(1e300), 1e300, min, max), max);
        assert_eq!(
            per_try_timeout(Some(100_000.0), f64::NAN, min, max),
            Millis(100)
        );
        assert_eq!(
            per_try_timeout(Some(100_000.0), 2.0, Millis(500), Millis(300)),
            Millis(300)
        );
    }
}
