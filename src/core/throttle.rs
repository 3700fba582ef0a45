//! Client-side adaptive throttling (Google SRE book, ch. 21 "Handling Overload"), and the
//! bulkhead (a cap on requests in flight to one destination).
//!
//! Throttling: per destination, over a rolling window, count `requests` (every request the
//! client wanted to send, including those it rejected itself) and `accepts` (requests the
//! backend accepted: any answer but a rejection signal). Reject locally with probability
//!
//! ```text
//! p = max(0, (requests - K × accepts) / (requests + 1))
//! ```
//!
//! While the backend accepts everything, `requests <= K × accepts` and nothing is rejected.
//! When it rejects (429/503 by default; connect failures and resets always), the client
//! sheds the excess before it reaches the network, so an overloaded backend spends nothing on
//! traffic it would refuse anyway. `p < 1` always (`requests / (requests + 1)`), so a trickle
//! still reaches the backend and notices its recovery; as accepts come back `p` falls to 0.
//! `K` trades waste for reaction: with `K = 2` the backend sees up to twice what it accepts.
//! The window is the same slot window as the breaker's ([`RollingCounts`], requests in `a`,
//! accepts in `b`), so an old overload stops weighing once it leaves the window.
//!
//! Bulkhead: a counter of requests in flight shared by all workers, refused above a cap, so
//! one slow destination cannot hold every connection and worker of the sidecar.

use crate::config::Millis;
use crate::core::breaker::RollingCounts;
use crate::core::rng::Rng;
use crate::core::time::Instant;
use crate::state::codec::{DecodeError, Reader, Writer};

/// Throttling parameters (validated by the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottlePolicy {
    /// Multiplier of accepts: the backend may see up to `k ×` what it accepts.
    pub k: f64,
    pub window: Millis,
}

/// One destination's throttle, as stored in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttle {
    /// Requests (`a`) and accepts (`b`).
    pub counts: RollingCounts,
}

impl Throttle {
    /// Requests and accepts in the window ending at `now`.
    pub fn totals(&self, now: Instant, policy: &ThrottlePolicy) -> (u64, u64) {
        self.counts.totals(now, policy.window)
    }

    /// Probability of rejecting the next request locally, in `[0, 1)`. A non-finite `k`
    /// (cannot come from a validated config) throttles nothing.
    pub fn probability(&self, now: Instant, policy: &ThrottlePolicy) -> f64 {
        if !policy.k.is_finite() {
            return 0.0;
        }
        let (requests, accepts) = self.totals(now, policy);
        let requests = requests as f64;
        let p = (requests - policy.k.max(0.0) * accepts as f64) / (requests + 1.0);
        if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Counts a request the client wants to send (call it whether or not it is then
    /// rejected locally).
    pub fn record_request(&mut self, now: Instant, policy: &ThrottlePolicy) {
        self.counts.add(now, policy.window, 1, 0);
    }

    /// Counts a request the backend accepted (it completed without a rejection signal).
    pub fn record_accept(&mut self, now: Instant, policy: &ThrottlePolicy) {
        self.counts.add(now, policy.window, 0, 1);
    }

    /// The request start in one call (one CAS): counts the request, then draws against the
    /// probability computed *before* counting it (the book's formula is evaluated as the
    /// request arrives). `true`: reject it locally.
    pub fn reject(&mut self, now: Instant, policy: &ThrottlePolicy, rng: &mut impl Rng) -> bool {
        let p = self.probability(now, policy);
        self.record_request(now, policy);
        p > 0.0 && rng.unit() < p
    }

    pub fn write(&self, w: &mut Writer) {
        self.counts.write(w);
    }

    pub fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Throttle {
            counts: RollingCounts::read(r)?,
        })
    }
}

/// Whether a finished request counts as the backend rejecting it: its status is one of
/// `rejection_codes`, or there was no answer at all (`None` or `0`: connect failure, reset),
/// which always counts. A client that went away before any answer is not a rejection: the
/// caller should count it as accepted (it is no evidence of overload).
pub fn is_rejection(status: Option<u64>, rejection_codes: &[u16]) -> bool {
    match status {
        None | Some(0) => true,
        Some(code) => rejection_codes.iter().any(|&c| u64::from(c) == code),
    }
}

/// An in-flight count not touched for this long is stale (a VM that died mid-request never
/// released it) and counts as zero, as the endpoint table's in-flight count does. Without
/// it, leaked slots would fill the bulkhead for ever.
pub const BULKHEAD_STALE: Millis = Millis(60_000);

/// Requests in flight to one destination, as stored in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bulkhead {
    pub in_flight: u32,
    /// Last acquire or release.
    pub at: Instant,
}

impl Bulkhead {
    /// The count as of `now` (zero when stale).
    pub fn effective(&self, now: Instant) -> u32 {
        if now.since(self.at) > BULKHEAD_STALE {
            0
        } else {
            self.in_flight
        }
    }

    /// Takes a slot if fewer than `max` are in flight. `false`: refuse the request (and do
    /// not call [`Bulkhead::release`] for it).
    pub fn try_acquire(&mut self, now: Instant, max: u32) -> bool {
        let current = self.effective(now);
        if current >= max {
            self.in_flight = current;
            return false;
        }
        self.in_flight = current + 1;
        self.at = self.at.max(now);
        true
    }

    /// Gives back a slot taken by [`Bulkhead::try_acquire`] (saturating: a release after the
    /// count was reset as stale is harmless).
    pub fn release(&mut self, now: Instant) {
        self.in_flight = self.effective(now).saturating_sub(1);
        self.at = self.at.max(now);
    }

    pub fn write(&self, w: &mut Writer) {
        w.u32(self.in_flight);
        w.u64(self.at.0);
    }

    pub fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Bulkhead {
            in_flight: r.u32()?,
            at: Instant(r.u64()?),
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::core::rng::SplitMix64;

    const POLICY: ThrottlePolicy = ThrottlePolicy {
        k: 2.0,
        window: Millis(30_000),
    };

    fn traffic(t: &mut Throttle, now: u64, requests: u32, accepts: u32) {
        for _ in 0..requests {
            t.record_request(Instant(now), &POLICY);
        }
        for _ in 0..accepts {
            t.record_accept(Instant(now), &POLICY);
        }
    }

    #[test]
    fn healthy_destination_is_never_throttled() {
        let mut t = Throttle::default();
        assert_eq!(t.probability(Instant(0), &POLICY), 0.0);
        traffic(&mut t, 1_000, 1_000, 1_000);
        assert_eq!(t.probability(Instant(1_000), &POLICY), 0.0);
        // Up to half rejected is still within K = 2.
        traffic(&mut t, 1_000, 1_000, 0);
        assert_eq!(t.probability(Instant(1_000), &POLICY), 0.0);
        // Every further request accepted keeps it there.
        let mut rng = SplitMix64::new(3);
        for _ in 0..100 {
            assert!(!t.reject(Instant(1_000), &POLICY, &mut rng));
            t.record_accept(Instant(1_000), &POLICY);
        }
    }

    #[test]
    fn rejections_raise_the_probability_towards_but_below_one() {
        let mut t = Throttle::default();
        traffic(&mut t, 0, 100, 10);
        // (100 - 2 × 10) / 101
        let p = t.probability(Instant(0), &POLICY);
        assert!((p - 80.0 / 101.0).abs() < 1e-12, "{p}");
        let mut t = Throttle::default();
        traffic(&mut t, 0, 10_000, 0);
        let p = t.probability(Instant(0), &POLICY);
        assert!((p - 10_000.0 / 10_001.0).abs() < 1e-12 && p < 1.0, "{p}");
    }

    #[test]
    fn a_fraction_always_goes_through_when_everything_is_rejected() {
        let mut t = Throttle::default();
        let mut rng = SplitMix64::new(7);
        let sent = (0..2_000)
            .filter(|_| !t.reject(Instant(0), &POLICY, &mut rng))
            .count();
        // The first request always goes; then p = n / (n + 1) lets about ln(n) through.
        assert!((2..=40).contains(&sent), "{sent}");
        assert_eq!(t.totals(Instant(0), &POLICY), (2_000, 0));
    }

    #[test]
    fn recovery_lowers_the_probability_as_accepts_return() {
        let mut t = Throttle::default();
        traffic(&mut t, 0, 1_000, 0);
        let before = t.probability(Instant(0), &POLICY);
        traffic(&mut t, 1_000, 100, 100);
        let mid = t.probability(Instant(1_000), &POLICY);
        traffic(&mut t, 2_000, 0, 500);
        let after = t.probability(Instant(2_000), &POLICY);
        assert!(before > mid && mid > 0.0, "{before} {mid}");
        // 1100 requests, 600 accepts: 1100 - 1200 < 0.
        assert_eq!(after, 0.0);
    }

    #[test]
    fn an_old_overload_leaves_the_window() {
        let mut t = Throttle::default();
        traffic(&mut t, 0, 1_000, 0);
        assert!(t.probability(Instant(29_999), &POLICY) > 0.99);
        assert_eq!(t.probability(Instant(30_000), &POLICY), 0.0);
        traffic(&mut t, 40_000, 10, 10);
        assert_eq!(t.totals(Instant(40_000), &POLICY), (10, 10));
    }

    #[test]
    fn garbage_k_throttles_nothing() {
        let mut t = Throttle::default();
        traffic(&mut t, 0, 100, 0);
        for k in [f64::NAN, f64::INFINITY] {
            let policy = ThrottlePolicy { k, ..POLICY };
            assert_eq!(t.probability(Instant(0), &policy), 0.0);
        }
    }

    #[test]
    fn rejection_signals() {
        let codes = [429, 503];
        assert!(is_rejection(None, &codes));
        assert!(is_rejection(Some(0), &codes));
        assert!(is_rejection(Some(429), &codes));
        assert!(is_rejection(Some(503), &codes));
        assert!(!is_rejection(Some(500), &codes));
        assert!(!is_rejection(Some(200), &codes));
        assert!(!is_rejection(Some(429 + (1 << 32)), &codes));
    }

    #[test]
    fn throttle_round_trips() {
        let mut t = Throttle::default();
        traffic(&mut t, 12_345, 7, 3);
        let mut w = Writer::new();
        t.write(&mut w);
        let bytes = w.finish();
        assert_eq!(Throttle::read(&mut Reader::new(&bytes).unwrap()), Ok(t));
        let mut r = Reader::new(&bytes[..bytes.len() - 1]).unwrap();
        assert!(Throttle::read(&mut r).is_err());
    }

    #[test]
    fn bulkhead_caps_in_flight_and_releases() {
        let mut b = Bulkhead::default();
        assert!(b.try_acquire(Instant(1), 2));
        assert!(b.try_acquire(Instant(2), 2));
        assert!(!b.try_acquire(Instant(3), 2));
        assert_eq!(b.in_flight, 2);
        b.release(Instant(4));
        assert!(b.try_acquire(Instant(5), 2));
        for _ in 0..5 {
            b.release(Instant(6));
        }
        assert_eq!(b.in_flight, 0);
        assert!(!b.try_acquire(Instant(7), 0));
    }

    #[test]
    fn leaked_bulkhead_slots_expire() {
        let mut b = Bulkhead::default();
        assert!(b.try_acquire(Instant(1_000), 1));
        assert!(!b.try_acquire(Instant(61_000), 1));
        assert!(b.try_acquire(Instant(61_001), 1));
        assert_eq!(b.in_flight, 1);
    }

    #[test]
    fn bulkhead_round_trips() {
        let b = Bulkhead {
            in_flight: 42,
            at: Instant(1_700_000_000_000),
        };
        let mut w = Writer::new();
        b.write(&mut w);
        let bytes = w.finish();
        assert_eq!(Bulkhead::read(&mut Reader::new(&bytes).unwrap()), Ok(b));
        assert!(Bulkhead::read(&mut Reader::new(&bytes[..5]).unwrap()).is_err());
    }
}
