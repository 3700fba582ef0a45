//! Time as the core sees it: milliseconds on the host's wall clock.
//!
//! Wall-clock (not monotonic) because every Envoy worker must agree on timestamps stored in
//! shared data, and proxy-wasm gives all of them the same `get_current_time`. A clock that
//! steps backwards is tolerated: ages saturate at zero instead of wrapping.

use crate::config::Millis;

/// A point in time, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// Time elapsed since `earlier`, zero if `earlier` is in the future (clock step).
    pub fn since(self, earlier: Instant) -> Millis {
        Millis(self.0.saturating_sub(earlier.0))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn age_saturates_when_the_clock_steps_back() {
        assert_eq!(Instant(5_000).since(Instant(4_000)), Millis(1_000));
        assert_eq!(Instant(4_000).since(Instant(5_000)), Millis(0));
    }
}
