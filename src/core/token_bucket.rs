//! A token bucket: at most `burst` requests at once, `rate_per_second` on average.
//!
//! The classic shaper (Turner 1986; RFC 2697's committed-burst bucket; Envoy's
//! `local_ratelimit` filter): the bucket holds up to `burst` tokens, each request takes one,
//! and tokens come back at `rate_per_second`. Refill is lazy: instead of a timer, each
//! `try_take` first adds `elapsed x rate` tokens for the time since the last call, so the
//! state is two numbers and one update per request (it lives in shared data, updated with
//! compare-and-swap by every worker).
//!
//! The bucket stores the tokens *used* rather than the tokens left, so the all-zero default
//! value is a full bucket: a bucket that was never written (or was unreadable and replaced
//! by its default) lets a burst through instead of refusing the first requests. A clock that
//! steps back refills nothing (elapsed time saturates at zero) and never moves the stored
//! time backwards, so it cannot mint tokens.

use crate::core::time::Instant;
use crate::state::codec::{DecodeError, Reader, Writer};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenBucket {
    /// Tokens taken and not yet refilled, in `[0, burst]` (0 = full).
    used: f64,
    /// When `used` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    /// Takes one token if there is one (after refilling for the time since the last call).
    /// `burst` below 1 is treated as 1, so a bucket always lets some request through
    /// eventually; a rate that is not a positive finite number refills nothing.
    pub fn try_take(&mut self, now: Instant, rate_per_second: f64, burst: f64) -> bool {
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        let rate = if rate_per_second.is_finite() {
            rate_per_second.max(0.0)
        } else {
            0.0
        };
        let elapsed_s = now.since(self.at).0 as f64 / 1000.0;
        let used = if self.used.is_finite() {
            self.used
        } else {
            0.0
        };
        // `burst` may have been lowered by a new configuration: never owe more than a full
        // bucket.
        let mut used = (used - elapsed_s * rate).max(0.0).min(burst);
        self.at = self.at.max(now);
        let taken = used + 1.0 <= burst;
        if taken {
            used += 1.0;
        }
        self.used = used;
        taken
    }

    /// Tokens left as of the last update (for the status document).
    pub fn available(&self, burst: f64) -> f64 {
        (burst - self.used).max(0.0)
    }

    pub fn write(&self, w: &mut Writer) {
        w.f64(self.used);
        w.u64(self.at.0);
    }

    pub fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let used = r.f64()?;
        if used < 0.0 {
            return Err(DecodeError::BadValue);
        }
        Ok(TokenBucket {
            used,
            at: Instant(r.u64()?),
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn takes(b: &mut TokenBucket, now: u64, rate: f64, burst: f64, n: usize) -> usize {
        (0..n)
            .filter(|_| b.try_take(Instant(now), rate, burst))
            .count()
    }

    #[test]
    fn starts_full_and_lets_a_burst_through() {
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, 1_000_000, 10.0, 5.0, 8), 5);
        assert!(!b.try_take(Instant(1_000_000), 10.0, 5.0));
    }

    #[test]
    fn refills_at_the_rate_and_never_above_burst() {
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, 1_000, 10.0, 5.0, 5), 5);
        // 10 per second: one token every 100 ms.
        assert!(!b.try_take(Instant(1_099), 10.0, 5.0));
        assert!(b.try_take(Instant(1_100), 10.0, 5.0));
        assert!(!b.try_take(Instant(1_100), 10.0, 5.0));
        assert_eq!(takes(&mut b, 1_350, 10.0, 5.0, 5), 2);
        // An hour idle refills only up to the burst.
        assert_eq!(takes(&mut b, 3_601_350, 10.0, 5.0, 10), 5);
    }

    #[test]
    fn fractional_rates_accumulate() {
        let mut b = TokenBucket::default();
        assert!(b.try_take(Instant(0), 0.5, 1.0));
        assert!(!b.try_take(Instant(1_000), 0.5, 1.0));
        assert!(b.try_take(Instant(2_000), 0.5, 1.0));
    }

    #[test]
    fn clock_stepping_back_mints_no_tokens() {
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, 10_000, 1.0, 2.0, 2), 2);
        assert!(!b.try_take(Instant(5_000), 1.0, 2.0));
        assert_eq!(b.at, Instant(10_000));
        // Back at the original time: still nothing refilled.
        assert!(!b.try_take(Instant(10_000), 1.0, 2.0));
        assert!(b.try_take(Instant(11_000), 1.0, 2.0));
    }

    #[test]
    fn odd_parameters_stay_safe() {
        let mut b = TokenBucket::default();
        // A burst below one still admits one request; a zero rate never refills.
        assert!(b.try_take(Instant(0), 0.0, 0.2));
        assert!(!b.try_take(Instant(1_000_000), 0.0, 0.2));
        let mut b = TokenBucket::default();
        assert!(b.try_take(Instant(0), f64::NAN, f64::INFINITY));
        assert!(!b.try_take(Instant(5_000), f64::NAN, f64::INFINITY));
        assert!(b.used.is_finite());
        // A lowered burst caps what is owed.
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, 0, 1.0, 100.0, 100), 100);
        assert!(!b.try_take(Instant(0), 1.0, 3.0));
        assert!(b.try_take(Instant(1_000), 1.0, 3.0));
    }

    #[test]
    fn encode_round_trip_and_bad_values() {
        let mut b = TokenBucket::default();
        takes(&mut b, 1_234, 10.0, 5.0, 3);
        let mut w = Writer::new();
        b.write(&mut w);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes).unwrap();
        assert_eq!(TokenBucket::read(&mut r), Ok(b));
        assert_eq!(b.available(5.0), 2.0);
        for n in 0..bytes.len() {
            let mut r = match Reader::new(&bytes[..n]) {
                Ok(r) => r,
                Err(_) => continue,
            };
            assert!(TokenBucket::read(&mut r).is_err(), "prefix {n}");
        }
        let mut w = Writer::new();
        w.f64(-1.0);
        w.u64(0);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes).unwrap();
        assert_eq!(TokenBucket::read(&mut r), Err(DecodeError::BadValue));
    }
}
