//! A retry budget shared by all Envoy workers: retries may add at most a fixed share of the
//! original traffic (plus a small floor), so that retries can never multiply the load on a
//! failing destination (the "retry storm").
//!
//! The rule is Finagle's `RetryBudget` and linkerd2's `retry budget` (also gRPC's retry
//! throttling in spirit): over a sliding window,
//!
//! ```text
//! retries reserved in window <= floor(ratio x requests in window + minPerSecond x window_s)
//! ```
//!
//! Finagle keeps the balance in a token bucket; here the window is kept as [`SLOTS`] counters
//! of `window / SLOTS` each, so the value is small, fixed-size and exact across workers. A
//! slot is tagged with its epoch (`now / slot width`) and sits at index `epoch % SLOTS`; a
//! slot whose epoch is [`SLOTS`] or more away from now is stale and is ignored when reading
//! and reset when written (lazy rotation: nothing has to tick). The window therefore covers
//! the current slot and the `SLOTS - 1` before it (between 0.9 and 1.0 x `window`); slots a
//! little *ahead* of now still count, because workers read the clock at slightly different
//! times and a lost compare-and-swap re-applies an update with an older `now`.
//!
//! Retries are *reserved* when a request starts ([`RetryBudget::withdraw`], which sets the
//! number of retries Envoy may make) and the unused reservations are *refunded* when it ends
//! ([`RetryBudget::refund`]). Reserving up front makes the budget a hard bound: however many
//! workers retry at once, no retry happens that was not counted. A refund is taken from the
//! oldest slot in the window first: the reservation was made at or after that slot, so the
//! counted retries never drop below the retries really made (a refund may at worst be lost
//! early when that slot leaves the window, which errs on the side of fewer retries).
//!
//! The slot width is stored with the counters: when the configured window changes, the old
//! counters mean nothing in the new epochs and the budget starts afresh.

use crate::config::Millis;
use crate::core::time::Instant;
use crate::state::codec::{DecodeError, Reader, Writer};

/// Number of slots of the sliding window.
pub const SLOTS: usize = 10;

/// Small margin so that `0.29 x 100 = 28.999999999999996` still allows 29 retries.
const FLOOR_EPSILON: f64 = 1e-9;

/// Upper bound of the allowance, far above any real traffic: keeps the arithmetic finite.
const MAX_ALLOWANCE: f64 = 1e15;

/// How many retries the budget allows (validated by the `retries` config section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// Retries allowed per original request in the window (0.2 = at most 20% extra load).
    pub ratio: f64,
    /// Retries allowed per second of window regardless of traffic, so that a low-traffic
    /// destination can still retry a lone failure.
    pub min_per_second: f64,
    /// Length of the sliding window.
    pub window: Millis,
}

impl BudgetPolicy {
    fn slot_ms(&self) -> u64 {
        (self.window.0 / SLOTS as u64).max(1)
    }

    /// `ratio x requests + min_per_second x window_s`, finite and non-negative.
    fn allowance(&self, requests: u64) -> f64 {
        let ratio = if self.ratio.is_finite() {
            self.ratio.max(0.0)
        } else {
            0.0
        };
        let min = if self.min_per_second.is_finite() {
            self.min_per_second.max(0.0)
        } else {
            0.0
        };
        let value = ratio * requests as f64 + min * (self.window.0 as f64 / 1000.0);
        value.clamp(0.0, MAX_ALLOWANCE)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Slot {
    epoch: u64,
    requests: u32,
    retries: u32,
}

/// The counters of one destination's budget (one shared-data value).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RetryBudget {
    /// Width of a slot the counters were taken with (0 before the first update).
    slot_ms: u64,
    slots: [Slot; SLOTS],
}

fn in_window(slot_epoch: u64, now_epoch: u64) -> bool {
    slot_epoch.abs_diff(now_epoch) < SLOTS as u64
}

impl RetryBudget {
    fn now_epoch(&self, now: Instant) -> u64 {
        now.0 / self.slot_ms.max(1)
    }

    /// Starts afresh if the counters were taken with another slot width.
    fn align(&mut self, policy: &BudgetPolicy) {
        let width = policy.slot_ms();
        if self.slot_ms != width {
            *self = RetryBudget {
                slot_ms: width,
                slots: [Slot::default(); SLOTS],
            };
        }
    }

    /// The slot `now` falls into, reset first if it held an older (or far newer) epoch.
    fn current(&mut self, now: Instant, policy: &BudgetPolicy) -> Option<&mut Slot> {
        self.align(policy);
        let epoch = self.now_epoch(now);
        let slot = self.slots.get_mut((epoch % SLOTS as u64) as usize)?;
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                requests: 0,
                retries: 0,
            };
        }
        Some(slot)
    }

    /// Requests and reserved retries in the window as of `now`.
    fn totals(&self, now: Instant, policy: &BudgetPolicy) -> (u64, u64) {
        if self.slot_ms != policy.slot_ms() {
            return (0, 0);
        }
        let epoch = self.now_epoch(now);
        self.slots
            .iter()
            .filter(|s| in_window(s.epoch, epoch))
            .fold((0, 0), |(req, ret), s| {
                (req + u64::from(s.requests), ret + u64::from(s.retries))
            })
    }

    /// Counts one original request.
    pub fn deposit(&mut self, now: Instant, policy: &BudgetPolicy) {
        if let Some(slot) = self.current(now, policy) {
            slot.requests = slot.requests.saturating_add(1);
        }
    }

    /// Reserves up to `wanted` retries; returns how many were granted (0 when the budget is
    /// spent). Deposit the request first: it is part of what pays for its own retries.
    pub fn withdraw(&mut self, now: Instant, policy: &BudgetPolicy, wanted: u32) -> u32 {
        let (requests, retries) = self.totals(now, policy);
        let limit = (policy.allowance(requests) + FLOOR_EPSILON).floor() as u64;
        let free = limit.saturating_sub(retries);
        let Some(slot) = self.current(now, policy) else {
            return 0;
        };
        let room = u64::from(u32::MAX - slot.retries);
        let granted = u64::from(wanted).min(free).min(room) as u32;
        slot.retries += granted;
        granted
    }

    /// Gives back `unused` reservations (oldest slot first), never more than the window
    /// still holds: a reservation whose slot already left the window is simply gone.
    pub fn refund(&mut self, now: Instant, policy: &BudgetPolicy, unused: u32) {
        self.align(policy);
        let now_epoch = self.now_epoch(now);
        let mut left = unused;
        let first = now_epoch.saturating_sub(SLOTS as u64 - 1);
        for epoch in first..now_epoch.saturating_add(SLOTS as u64) {
            if left == 0 {
                break;
            }
            let Some(slot) = self.slots.get_mut((epoch % SLOTS as u64) as usize) else {
                continue;
            };
            if slot.epoch == epoch {
                let taken = slot.retries.min(left);
                slot.retries -= taken;
                left -= taken;
            }
        }
    }

    /// Retries the budget would still grant as of `now` (for a gauge; may be fractional).
    pub fn available(&self, now: Instant, policy: &BudgetPolicy) -> f64 {
        let (requests, retries) = self.totals(now, policy);
        (policy.allowance(requests) - retries as f64).max(0.0)
    }

    pub fn write(&self, w: &mut Writer) {
        w.u64(self.slot_ms);
        for slot in &self.slots {
            w.u64(slot.epoch);
            w.u32(slot.requests);
            w.u32(slot.retries);
        }
    }

    pub fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut budget = RetryBudget {
            slot_ms: r.u64()?,
            slots: [Slot::default(); SLOTS],
        };
        for slot in budget.slots.iter_mut() {
            *slot = Slot {
                epoch: r.u64()?,
                requests: r.u32()?,
                retries: r.u32()?,
            };
        }
        Ok(budget)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const T0: Instant = Instant(1_700_000_000_000);

    fn policy(ratio: f64, min_per_second: f64) -> BudgetPolicy {
        BudgetPolicy {
            ratio,
            min_per_second,
            window: Millis::from_secs(10),
        }
    }

    fn at(ms: u64) -> Instant {
        Instant(T0.0 + ms)
    }

    #[test]
    fn ratio_alone_allows_exactly_its_share() {
        let p = policy(0.2, 0.0);
        let mut b = RetryBudget::default();
        assert_eq!(b.withdraw(T0, &p, 1), 0, "no traffic, no minimum: nothing");
        for i in 0..1000 {
            b.deposit(at(i), &p);
        }
        assert!((b.available(at(1000), &p) - 200.0).abs() < 1e-9);
        assert_eq!(b.withdraw(at(1000), &p, 150), 150);
        assert_eq!(b.withdraw(at(1000), &p, 150), 50);
        assert_eq!(b.withdraw(at(1000), &p, 1), 0);
        assert_eq!(b.available(at(1000), &p), 0.0);
    }

    #[test]
    fn rounding_does_not_cost_a_retry() {
        let p = policy(0.29, 0.0);
        let mut b = RetryBudget::default();
        for _ in 0..100 {
            b.deposit(T0, &p);
        }
        assert_eq!(b.withdraw(T0, &p, 100), 29);
    }

    #[test]
    fn minimum_alone_allows_min_times_window() {
        let p = policy(0.2, 3.0);
        let mut b = RetryBudget::default();
        assert_eq!(b.withdraw(T0, &p, 10), 10);
        assert_eq!(b.withdraw(T0, &p, 100), 20);
        assert_eq!(b.withdraw(T0, &p, 1), 0);
        // Together with traffic: 30 + 0.2 x 50.
        for _ in 0..50 {
            b.deposit(T0, &p);
        }
        assert_eq!(b.withdraw(T0, &p, 100), 10);
    }

    #[test]
    fn old_requests_and_retries_leave_the_window() {
        let p = policy(0.5, 0.0);
        let mut b = RetryBudget::default();
        for _ in 0..100 {
            b.deposit(T0, &p);
        }
        assert_eq!(b.withdraw(T0, &p, 50), 50);
        // 9 slots later both are still in the window...
        assert_eq!(b.withdraw(at(9_999), &p, 1), 0);
        // ...one more and both are gone.
        assert_eq!(b.available(at(10_000), &p), 0.0);
        b.deposit(at(10_000), &p);
        b.deposit(at(10_000), &p);
        assert_eq!(b.withdraw(at(10_000), &p, 5), 1);
        // A slot reused much later does not carry its old counts.
        assert_eq!(b.available(at(1_000_000), &p), 0.0);
        for _ in 0..4 {
            b.deposit(at(1_000_000), &p);
        }
        assert!((b.available(at(1_000_000), &p) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn refunds_return_unused_reservations_but_never_more() {
        let p = policy(0.1, 0.0);
        let mut b = RetryBudget::default();
        for _ in 0..100 {
            b.deposit(T0, &p);
        }
        assert_eq!(b.withdraw(T0, &p, 4), 4);
        assert_eq!(b.withdraw(at(1_500), &p, 4), 4);
        assert_eq!(b.withdraw(at(1_500), &p, 4), 2);
        b.refund(at(2_000), &p, 3);
        assert!((b.available(at(2_000), &p) - 3.0).abs() < 1e-9);
        // Refunding more than is reserved only empties the reservations.
        b.refund(at(2_000), &p, 1_000);
        assert!((b.available(at(2_000), &p) - 10.0).abs() < 1e-9);
        assert_eq!(b.withdraw(at(2_000), &p, 20), 10);
        // A reservation whose slot left the window is not credited a second time.
        let mut old = RetryBudget::default();
        let q = policy(0.0, 1.0);
        assert_eq!(old.withdraw(T0, &q, 5), 5);
        assert_eq!(old.withdraw(at(9_000), &q, 5), 5);
        old.refund(at(10_000), &q, 10);
        assert!((old.available(at(10_000), &q) - 10.0).abs() < 1e-9);
        assert_eq!(old.withdraw(at(10_000), &q, 100), 10);
    }

    #[test]
    fn refund_is_taken_from_the_oldest_slot_first() {
        let p = policy(0.0, 1.0);
        let mut b = RetryBudget::default();
        assert_eq!(b.withdraw(T0, &p, 4), 4);
        assert_eq!(b.withdraw(at(5_000), &p, 6), 6);
        b.refund(at(6_000), &p, 4);
        assert!((b.available(at(6_000), &p) - 4.0).abs() < 1e-9);
        // The slot at T0 left; the 6 of the later slot are all still counted.
        assert!((b.available(at(10_000), &p) - 4.0).abs() < 1e-9);
    }

    #[test]
    fn clock_stepping_backwards_is_harmless() {
        let p = policy(0.5, 0.0);
        let mut b = RetryBudget::default();
        for _ in 0..10 {
            b.deposit(at(5_000), &p);
        }
        // A worker whose clock read is a few ms older still sees the newer slot.
        assert!((b.available(at(4_990), &p) - 5.0).abs() < 1e-9);
        assert_eq!(b.withdraw(at(4_990), &p, 3), 3);
        assert_eq!(b.withdraw(at(5_000), &p, 3), 2);
        b.refund(at(4_000), &p, 5);
        assert!((b.available(at(5_000), &p) - 5.0).abs() < 1e-9);
        // A large step back: the far "future" slots are ignored and then overwritten.
        let back = Instant(T0.0 - 3_600_000);
        assert_eq!(b.available(back, &p), 0.0);
        b.deposit(back, &p);
        b.deposit(back, &p);
        assert_eq!(b.withdraw(back, &p, 5), 1);
        // Epoch zero (an uninitialised clock) does not underflow.
        let mut z = RetryBudget::default();
        z.refund(Instant(0), &p, 3);
        z.deposit(Instant(0), &p);
        z.deposit(Instant(0), &p);
        assert_eq!(z.withdraw(Instant(0), &p, 5), 1);
    }

    #[test]
    fn a_new_window_length_starts_afresh() {
        let mut b = RetryBudget::default();
        let p = policy(0.5, 0.0);
        for _ in 0..10 {
            b.deposit(T0, &p);
        }
        let longer = BudgetPolicy {
            window: Millis::from_secs(20),
            ..p
        };
        assert_eq!(b.available(T0, &longer), 0.0);
        assert_eq!(b.withdraw(T0, &longer, 1), 0);
        b.deposit(T0, &longer);
        b.deposit(T0, &longer);
        assert_eq!(b.withdraw(T0, &longer, 5), 1);
    }

    #[test]
    fn garbage_policy_values_stay_finite() {
        let p = BudgetPolicy {
            ratio: f64::NAN,
            min_per_second: f64::INFINITY,
            window: Millis(0),
        };
        let mut b = RetryBudget::default();
        b.deposit(T0, &p);
        assert_eq!(b.withdraw(T0, &p, 3), 0);
        assert!(b.available(T0, &p).is_finite());
    }

    #[test]
    fn counters_saturate() {
        let p = policy(1.0, 0.0);
        let mut b = RetryBudget::default();
        b.align(&p);
        let epoch = T0.0 / p.slot_ms();
        let i = (epoch % SLOTS as u64) as usize;
        b.slots[i] = Slot {
            epoch,
            requests: u32::MAX,
            retries: u32::MAX - 1,
        };
        b.deposit(T0, &p);
        assert_eq!(b.slots[i].requests, u32::MAX);
        assert_eq!(b.withdraw(T0, &p, 10), 1, "one left in the allowance");
        assert_eq!(b.slots[i].retries, u32::MAX);
        assert_eq!(b.withdraw(T0, &p, 10), 0);
    }

    #[test]
    fn round_trips_and_rejects_truncation() {
        let p = policy(0.2, 3.0);
        let mut b = RetryBudget::default();
        for i in 0..25 {
            b.deposit(at(i * 700), &p);
            b.withdraw(at(i * 700), &p, 1);
        }
        let mut w = Writer::new();
        b.write(&mut w);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes).unwrap();
        assert_eq!(RetryBudget::read(&mut r), Ok(b));
        for n in 1..bytes.len() {
            let mut r = Reader::new(&bytes[..n]).unwrap();
            assert!(RetryBudget::read(&mut r).is_err(), "prefix {n}");
        }
    }
}
