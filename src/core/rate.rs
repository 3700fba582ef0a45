//! Exponentially decayed success and failure counts: an error rate over a sliding window
//! without storing the window. Each count is multiplied by `exp(-elapsed / window)` before a
//! new outcome is added, so an outcome `window` old weighs 1/e of a fresh one, and the volume
//! (`successes + failures`) says how much evidence the rate rests on.

use crate::config::Millis;
use crate::core::outcome::Outcome;
use crate::core::time::Instant;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecayedCounts {
    pub successes: f64,
    pub failures: f64,
    pub at: Instant,
}

impl DecayedCounts {
    fn decayed(&self, now: Instant, window: Millis) -> (f64, f64) {
        if window.0 == 0 {
            return (0.0, 0.0);
        }
        let w = (-(now.since(self.at).0 as f64) / window.0 as f64).exp();
        (self.successes * w, self.failures * w)
    }

    pub fn record(&mut self, outcome: Outcome, now: Instant, window: Millis) {
        let (mut s, mut f) = self.decayed(now, window);
        match outcome {
            Outcome::Success => s += 1.0,
            Outcome::Failure => f += 1.0,
            Outcome::Abandoned => {}
        }
        self.successes = s;
        self.failures = f;
        self.at = self.at.max(now);
    }

    /// Decayed number of outcomes as of `now`.
    pub fn volume(&self, now: Instant, window: Millis) -> f64 {
        let (s, f) = self.decayed(now, window);
        s + f
    }

    /// Failure share in `[0, 1]` as of `now` (0 without any outcome).
    pub fn failure_rate(&self, now: Instant, window: Millis) -> f64 {
        let (s, f) = self.decayed(now, window);
        if s + f <= 0.0 {
            0.0
        } else {
            f / (s + f)
        }
    }
}

/// Pseudo-successes added when the rate is used as a cost: as the counts decay without
/// traffic the smoothed rate falls to zero, so an endpoint that failed once at low traffic
/// is tried again instead of being starved forever (P2C never picks the dearer of two).
const COST_PRIOR: f64 = 5.0;

impl DecayedCounts {
    /// `failures / (successes + failures + COST_PRIOR)` as of `now`.
    pub fn smoothed_failure_rate(&self, now: Instant, window: Millis) -> f64 {
        let (s, f) = self.decayed(now, window);
        f / (s + f + COST_PRIOR)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const WINDOW: Millis = Millis(10_000);

    #[test]
    fn rate_is_the_failure_share() {
        let mut c = DecayedCounts::default();
        for i in 0..10 {
            let outcome = if i < 3 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            c.record(outcome, Instant(1_000), WINDOW);
        }
        assert!((c.failure_rate(Instant(1_000), WINDOW) - 0.3).abs() < 1e-9);
        assert!((c.volume(Instant(1_000), WINDOW) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn old_failures_fade_behind_new_successes() {
        let mut c = DecayedCounts::default();
        for _ in 0..10 {
            c.record(Outcome::Failure, Instant(0), WINDOW);
        }
        for _ in 0..10 {
            c.record(Outcome::Success, Instant(30_000), WINDOW);
        }
        // 10 failures three windows old weigh 10/e^3 ~ 0.5.
        let rate = c.failure_rate(Instant(30_000), WINDOW);
        assert!(rate < 0.05, "{rate}");
        assert!(
            (c.volume(Instant(60_000), WINDOW) - c.volume(Instant(30_000), WINDOW) / 20.0855).abs()
                < 0.01
        );
    }

    #[test]
    fn smoothed_rate_fades_when_the_endpoint_is_idle() {
        let mut c = DecayedCounts::default();
        c.record(Outcome::Failure, Instant(0), WINDOW);
        for _ in 0..4 {
            c.record(Outcome::Success, Instant(0), WINDOW);
        }
        // The raw rate stays 0.2 however long the endpoint is idle...
        assert!((c.failure_rate(Instant(60_000), WINDOW) - 0.2).abs() < 1e-9);
        // ...the smoothed one starts at 0.1 and fades.
        assert!((c.smoothed_failure_rate(Instant(0), WINDOW) - 0.1).abs() < 1e-9);
        assert!(c.smoothed_failure_rate(Instant(60_000), WINDOW) < 0.002);
    }

    #[test]
    fn empty_counts_have_no_rate() {
        let c = DecayedCounts::default();
        assert_eq!(c.failure_rate(Instant(5), WINDOW), 0.0);
        assert_eq!(c.volume(Instant(5), Millis(0)), 0.0);
    }
}
