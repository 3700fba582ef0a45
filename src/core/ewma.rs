//! Peak-EWMA latency estimate (Finagle's "peak EWMA", as in tower's `load::PeakEwma` and
//! linkerd2-proxy).
//!
//! A plain moving average hides a latency spike for several samples; peak-EWMA jumps to any
//! sample above the estimate at once and decays back towards lower samples with a time-based
//! weight `w = exp(-elapsed / decay)`, so one slow response makes an endpoint look slow
//! immediately and a recovered endpoint regains its reputation in a few `decay` periods. The
//! same decay applies while no sample arrives: an endpoint that got no traffic because it
//! looked slow looks a little better as time passes, is tried again, and is re-measured. That
//! is what lets a slow endpoint that recovered come back without a probe mechanism.

use crate::config::Millis;
use crate::core::time::Instant;

/// The estimate and when it was last updated; `value_us == 0` means "no sample yet".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeakEwma {
    pub value_us: f64,
    pub at: Instant,
}

fn weight(elapsed: Millis, decay: Millis) -> f64 {
    if decay.0 == 0 {
        return 0.0;
    }
    (-(elapsed.0 as f64) / decay.0 as f64).exp()
}

impl PeakEwma {
    /// Adds one latency sample taken at `now`.
    pub fn observe(&mut self, sample_us: f64, now: Instant, decay: Millis) {
        let sample = if sample_us.is_finite() {
            sample_us.max(0.0)
        } else {
            0.0
        };
        if self.value_us <= 0.0 || sample > self.value_us {
            self.value_us = sample;
        } else {
            let w = weight(now.since(self.at), decay);
            self.value_us = self.value_us * w + sample * (1.0 - w);
        }
        self.at = self.at.max(now);
    }

    /// The estimate as of `now`: `default_us` without samples, otherwise the stored value
    /// decayed towards `default_us` by the time since the last sample.
    pub fn estimate_us(&self, now: Instant, decay: Millis, default_us: f64) -> f64 {
        if self.value_us <= 0.0 {
            return default_us;
        }
        let w = weight(now.since(self.at), decay);
        self.value_us * w + default_us.min(self.value_us) * (1.0 - w)
    }
}

/// A plain (symmetric) exponentially weighted moving average of latency with the same
/// time-based weight: the *typical* latency of an endpoint, which the latency detector and the
/// cold-endpoint estimate compare. Peak-EWMA is deliberately pessimistic for load balancing;
/// comparing endpoints by their worst recent spike would call every endpoint an outlier after
/// one hiccup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeanEwma {
    pub value_us: f64,
    pub at: Instant,
}

impl MeanEwma {
    pub fn observe(&mut self, sample_us: f64, now: Instant, decay: Millis) {
        let sample = if sample_us.is_finite() {
            sample_us.max(0.0)
        } else {
            0.0
        };
        if self.value_us <= 0.0 {
            self.value_us = sample;
        } else {
            // Weight at least a few percent per sample: under heavy traffic samples arrive
            // microseconds apart and a purely time-based weight would never move.
            let w = weight(now.since(self.at), decay).min(0.95);
            self.value_us = self.value_us * w + sample * (1.0 - w);
        }
        self.at = self.at.max(now);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const DECAY: Millis = Millis(10_000);

    #[test]
    fn cold_estimate_is_the_default() {
        let e = PeakEwma::default();
        assert_eq!(e.estimate_us(Instant(5), DECAY, 25_000.0), 25_000.0);
    }

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let mut e = PeakEwma::default();
        e.observe(1_000.0, Instant(0), DECAY);
        e.observe(50_000.0, Instant(1), DECAY);
        assert_eq!(e.value_us, 50_000.0);
    }

    #[test]
    fn faster_samples_pull_the_estimate_down_with_time() {
        let mut e = PeakEwma::default();
        e.observe(50_000.0, Instant(0), DECAY);
        // One decay period later a fast sample weighs 1 - 1/e.
        e.observe(1_000.0, Instant(10_000), DECAY);
        let expected = 50_000.0 * (-1f64).exp() + 1_000.0 * (1.0 - (-1f64).exp());
        assert!((e.value_us - expected).abs() < 1e-6, "{}", e.value_us);
        // A fast sample right after another barely moves it.
        let before = e.value_us;
        e.observe(1_000.0, Instant(10_001), DECAY);
        assert!(before - e.value_us < 5.0);
    }

    #[test]
    fn an_idle_slow_estimate_decays_towards_the_default() {
        let mut e = PeakEwma::default();
        e.observe(100_000.0, Instant(0), DECAY);
        assert_eq!(e.estimate_us(Instant(0), DECAY, 10_000.0), 100_000.0);
        let later = e.estimate_us(Instant(30_000), DECAY, 10_000.0);
        assert!(later < 15_000.0 && later > 10_000.0, "{later}");
        // A fast endpoint never looks slower by being idle.
        let mut fast = PeakEwma::default();
        fast.observe(2_000.0, Instant(0), DECAY);
        assert_eq!(fast.estimate_us(Instant(60_000), DECAY, 10_000.0), 2_000.0);
    }

    #[test]
    fn mean_ewma_follows_the_typical_value_not_the_spikes() {
        let mut m = MeanEwma::default();
        m.observe(5_000.0, Instant(0), DECAY);
        for i in 1..100 {
            let sample = if i % 20 == 0 { 50_000.0 } else { 5_000.0 };
            m.observe(sample, Instant(i * 10), DECAY);
        }
        assert!(m.value_us < 15_000.0, "{}", m.value_us);
        // A lasting change moves it within a few dozen samples.
        for i in 100..160 {
            m.observe(40_000.0, Instant(i * 10), DECAY);
        }
        assert!(m.value_us > 30_000.0, "{}", m.value_us);
    }

    #[test]
    fn garbage_samples_and_clock_steps_are_harmless() {
        let mut e = PeakEwma::default();
        e.observe(f64::NAN, Instant(10), DECAY);
        e.observe(-5.0, Instant(10), DECAY);
        e.observe(3_000.0, Instant(5), DECAY);
        assert_eq!(e.value_us, 3_000.0);
        assert_eq!(e.at, Instant(10));
        assert!(e.estimate_us(Instant(0), Millis(0), 1.0).is_finite());
    }
}
