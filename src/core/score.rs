//! The cost of sending the next request to an endpoint, as power-of-two-choices compares it.
//!
//! ```text
//! cost = latency × (in_flight + 1) × (1 + errorWeight × error_rate)
//! ```
//!
//! - `latency × (in_flight + 1)` is Finagle's and tower's peak-EWMA load: the expected wait
//!   if the request queues behind the ones already in flight (counted across all workers).
//! - Failures are usually *fast* (a 503 in a millisecond), so latency alone would make a
//!   failing endpoint look cheap and draw more traffic: the black-hole effect. The error term
//!   makes an endpoint failing 30% of requests (weight 10) cost 4× a healthy one.
//! - Slow start is not in the cost: [`ramp`] weighs how often P2C *draws* an endpoint (see
//!   `core::p2c`), so a new endpoint earns its share over the window instead of being starved.
//! - An endpoint without latency samples is scored with its cluster's typical latency (the
//!   median of its peers), so a cold endpoint is neither favoured nor starved.
//! - Later signals (in-band load reports from the upstream's reflex) multiply in here too.

/// What the cost is computed from, for one endpoint at one moment (and its draw weight).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub latency_us: f64,
    pub in_flight: u32,
    pub error_rate: f64,
    /// Slow-start weight in `[0.1, 1]`: not part of the cost.
    pub ramp: f64,
}

/// Lower is better. Always finite and positive for finite inputs.
pub fn cost(load: &Load, error_weight: f64) -> f64 {
    let latency = load.latency_us.max(1.0);
    let queue = f64::from(load.in_flight) + 1.0;
    let errors = 1.0 + error_weight * load.error_rate.clamp(0.0, 1.0);
    latency * queue * errors
}

/// Slow-start weight in `[0.1, 1]`: linear from 0.1 at age 0 to 1 after `window`.
pub fn ramp(age_ms: u64, window_ms: u64) -> f64 {
    if window_ms == 0 || age_ms >= window_ms {
        1.0
    } else {
        (0.1 + 0.9 * age_ms as f64 / window_ms as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn load(latency_us: f64, in_flight: u32, error_rate: f64) -> Load {
        Load {
            latency_us,
            in_flight,
            error_rate,
            ramp: 1.0,
        }
    }

    #[test]
    fn slower_or_busier_costs_more() {
        assert!(cost(&load(10_000.0, 0, 0.0), 10.0) > cost(&load(1_000.0, 0, 0.0), 10.0));
        assert!(cost(&load(1_000.0, 3, 0.0), 10.0) > cost(&load(1_000.0, 0, 0.0), 10.0));
        assert_eq!(cost(&load(1_000.0, 3, 0.0), 10.0), 4_000.0);
    }

    #[test]
    fn a_fast_failing_endpoint_is_not_cheap() {
        let failing_fast = cost(&load(500.0, 0, 0.5), 10.0);
        let healthy = cost(&load(2_000.0, 0, 0.0), 10.0);
        assert!(failing_fast > healthy, "{failing_fast} vs {healthy}");
    }

    #[test]
    fn slow_start_ramps_linearly_from_a_tenth() {
        assert_eq!(ramp(0, 10_000), 0.1);
        assert!((ramp(5_000, 10_000) - 0.55).abs() < 1e-9);
        assert_eq!(ramp(10_000, 10_000), 1.0);
        assert_eq!(ramp(5, 0), 1.0);
        let new = Load {
            ramp: ramp(0, 10_000),
            ..load(1_000.0, 0, 0.0)
        };
        assert_eq!(cost(&new, 10.0), 1_000.0, "the ramp weighs draws, not cost");
    }

    #[test]
    fn degenerate_inputs_stay_finite_and_positive() {
        for l in [
            load(0.0, 0, 0.0),
            load(-3.0, 0, -1.0),
            load(1.0, u32::MAX, 2.0),
        ] {
            let c = cost(&l, 10.0);
            assert!(c.is_finite() && c > 0.0, "{l:?}: {c}");
        }
    }
}
