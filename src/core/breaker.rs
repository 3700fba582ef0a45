//! Circuit breaker per destination (Hystrix / resilience4j style, as in Nygard's "Release
//! It!"): when a destination keeps failing, stop sending it requests for a while and answer
//! locally, so that callers fail fast instead of piling up on a dead dependency.
//!
//! States:
//! - **Closed**: every request passes; outcomes are counted in a rolling window of
//!   [`SLOTS`] slots of `window / SLOTS` each (resilience4j's time-based sliding window). The
//!   breaker opens when the window holds at least `minimum_requests` outcomes and
//!   `failures / (successes + failures) >= failure_rate`, or when `consecutive_failures`
//!   failures follow each other (optional).
//! - **Open**: every request is rejected until `sleep_window` has passed since the opening.
//! - **HalfOpen**: the first request after the sleep moves the breaker here and is a *probe*;
//!   at most `half_open_probes` probes are in flight at once, everything else is rejected.
//!   One probe failure reopens the breaker for a new sleep; `half_open_probes` probe
//!   successes close it with an empty window.
//!
//! The window rotates lazily: a slot is the epoch `now / slot_len`, and writing into a newer
//! epoch clears the slots in between, so no timer is needed and an idle breaker costs nothing.
//!
//! **Freeze** (operator switch "freeze automation"): outcomes keep being counted but no
//! transition happens, in either method: a closed breaker stays closed, an open one stays
//! open (and keeps rejecting after its sleep), a half-open one keeps probing without closing
//! or reopening. Disabling the breaker, not freezing it, is how traffic is let through.
//!
//! State is shared by all Envoy workers: callers load it, call [`Breaker::admit`] or
//! [`Breaker::record`] inside a compare-and-swap loop and write back what changed.

use crate::config::Millis;
use crate::core::outcome::Outcome;
use crate::core::time::Instant;
use crate::state::codec::{DecodeError, Reader, Writer};

/// Slots of a rolling window.
pub const SLOTS: usize = 10;

/// Two counters (`a`, `b`) over a rolling window of [`SLOTS`] time slots, rotated lazily by
/// epoch index. The breaker counts successes and failures in it, the client throttle
/// requests and accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollingCounts {
    /// Slot length the counts were taken with (0: never written). A different window in the
    /// configuration makes the epochs incomparable, so the counts start over.
    pub slot_ms: u64,
    /// Epoch (`now / slot_ms`) of the newest slot.
    pub epoch: u64,
    /// `[a, b]` per slot; the slot of epoch `e` is `e % SLOTS`.
    pub slots: [[u32; 2]; SLOTS],
}

fn slot_len(window: Millis) -> u64 {
    (window.0 / SLOTS as u64).max(1)
}

const SLOTS_U64: u64 = SLOTS as u64;

impl RollingCounts {
    /// Adds `a` and `b` at `now`. A timestamp slightly older than the newest slot (another
    /// worker wrote a later `now` first) lands in its own slot if that is still in the
    /// window; a clock that stepped back by more than the window starts over.
    pub fn add(&mut self, now: Instant, window: Millis, a: u32, b: u32) {
        let len = slot_len(window);
        let epoch = now.0 / len;
        if self.slot_ms != len || epoch.saturating_add(SLOTS_U64) <= self.epoch {
            *self = RollingCounts {
                slot_ms: len,
                epoch,
                slots: [[0; 2]; SLOTS],
            };
        } else if epoch > self.epoch {
            // Clear the slots of the epochs skipped over (all of them after a long idle).
            let gap = (epoch - self.epoch).min(SLOTS_U64);
            for k in 1..=gap {
                if let Some(slot) = self.slots.get_mut(((self.epoch + k) % SLOTS_U64) as usize) {
                    *slot = [0; 2];
                }
            }
            self.epoch = epoch;
        }
        if let Some([sa, sb]) = self.slots.get_mut((epoch % SLOTS_U64) as usize) {
            *sa = sa.saturating_add(a);
            *sb = sb.saturating_add(b);
        }
    }

    /// Sums of `a` and `b` over the window ending at `now`.
    pub fn totals(&self, now: Instant, window: Millis) -> (u64, u64) {
        let len = slot_len(window);
        let epoch = now.0 / len;
        if self.slot_ms != len
            || epoch >= self.epoch.saturating_add(SLOTS_U64)
            || epoch.saturating_add(SLOTS_U64) <= self.epoch
        {
            return (0, 0);
        }
        let oldest = epoch.max(self.epoch).saturating_sub(SLOTS_U64 - 1);
        (oldest..=self.epoch)
            .filter_map(|e| self.slots.get((e % SLOTS_U64) as usize))
            .fold((0, 0), |(ta, tb), [a, b]| {
                (ta + u64::from(*a), tb + u64::from(*b))
            })
    }

    pub fn write(&self, w: &mut Writer) {
        w.u64(self.slot_ms);
        w.u64(self.epoch);
        for [a, b] in self.slots {
            w.u32(a);
            w.u32(b);
        }
    }

    pub fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let slot_ms = r.u64()?;
        let epoch = r.u64()?;
        let mut slots = [[0; 2]; SLOTS];
        for slot in slots.iter_mut() {
            *slot = [r.u32()?, r.u32()?];
        }
        Ok(RollingCounts {
            slot_ms,
            epoch,
            slots,
        })
    }
}

/// How a breaker decides (validated by the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Failure share in (0, 1] at or above which the breaker opens.
    pub failure_rate: f64,
    /// Outcomes the window must hold before the share counts.
    pub minimum_requests: u32,
    /// Length of the rolling window.
    pub window: Millis,
    /// Opens after this many failures in a row, whatever the volume (`None`: off).
    pub consecutive_failures: Option<u32>,
    /// How long an open breaker rejects before probing.
    pub sleep_window: Millis,
    /// Probes in flight at once while half-open, and probe successes needed to close.
    pub half_open_probes: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "halfOpen",
        }
    }

    fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        match code {
            0 => Ok(BreakerState::Closed),
            1 => Ok(BreakerState::Open),
            2 => Ok(BreakerState::HalfOpen),
            _ => Err(DecodeError::BadValue),
        }
    }
}

/// Why the breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerReason {
    /// Failure share (in ‰) and volume of the window when it opened.
    ErrorRate { rate_permille: u16, volume: u32 },
    /// This many failures in a row.
    ConsecutiveFailures(u32),
    /// A half-open probe failed.
    ProbeFailed,
}

impl BreakerReason {
    pub fn name(self) -> &'static str {
        match self {
            BreakerReason::ErrorRate { .. } => "errorRate",
            BreakerReason::ConsecutiveFailures(_) => "consecutiveFailures",
            BreakerReason::ProbeFailed => "probeFailed",
        }
    }

    /// Fixed width: tag, then two fields that mean something only for some tags.
    fn write(reason: Option<BreakerReason>, w: &mut Writer) {
        let (tag, permille, count) = match reason {
            None => (0, 0, 0),
            Some(BreakerReason::ErrorRate {
                rate_permille,
                volume,
            }) => (1, rate_permille, volume),
            Some(BreakerReason::ConsecutiveFailures(n)) => (2, 0, n),
            Some(BreakerReason::ProbeFailed) => (3, 0, 0),
        };
        w.u8(tag);
        w.u16(permille);
        w.u32(count);
    }

    fn read(r: &mut Reader) -> Result<Option<BreakerReason>, DecodeError> {
        let (tag, permille, count) = (r.u8()?, r.u16()?, r.u32()?);
        Ok(match tag {
            0 => None,
            1 if permille <= 1000 => Some(BreakerReason::ErrorRate {
                rate_permille: permille,
                volume: count,
            }),
            2 => Some(BreakerReason::ConsecutiveFailures(count)),
            3 => Some(BreakerReason::ProbeFailed),
            _ => return Err(DecodeError::BadValue),
        })
    }
}

/// A state change, for the log line and the metric of the worker that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerTransition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// Why it opened (`None` when it half-opens or closes).
    pub reason: Option<BreakerReason>,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as a half-open probe: record its outcome with `probe = true`.
    Probe,
    /// Answer locally.
    Rejected,
}

/// One destination's breaker, as stored in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breaker {
    pub state: BreakerState,
    /// When the current state began.
    pub since: Instant,
    /// Why the breaker last opened (kept after it closes, for the status document).
    pub reason: Option<BreakerReason>,
    /// Successes (`a`) and failures (`b`).
    pub window: RollingCounts,
    pub consecutive_failures: u32,
    /// Probes of the current half-open period: admitted, completed (any outcome), succeeded.
    pub probes_admitted: u32,
    pub probes_completed: u32,
    pub probes_succeeded: u32,
    /// Last probe admission or completion (the wedge guard's clock).
    pub probe_at: Instant,
}

/// Probes outstanding with no probe activity for `sleep_window ×` this are written off.
///
/// Why: a probe whose completion is never recorded (its worker's VM restarted, or the
/// completion's CAS lost 16 races and was dropped) would otherwise hold a half-open slot for
/// ever, and with all slots held the breaker would reject every request with nobody left to
/// close or reopen it. Two sleep windows is long for a probe (the sleep is what the operator
/// thinks a recovery takes) yet short for an outage; a written-off probe that completes late
/// still counts its verdict.
const PROBE_WEDGE_FACTOR: u64 = 2;

impl Breaker {
    /// Decides whether a request may go. Write the breaker back when it changed (it does
    /// when it half-opens or admits a probe).
    pub fn admit(&mut self, now: Instant, policy: &BreakerPolicy, frozen: bool) -> Admission {
        self.admit_with_transition(now, policy, frozen).0
    }

    /// A probe admitted for a request that was then not sent (another guard refused it):
    /// its slot is free again, so the half-open period is not left waiting for it.
    pub fn return_probe(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probes_admitted = self.probes_admitted.saturating_sub(1);
        }
    }

    /// [`Breaker::admit`], also returning the Open -> HalfOpen transition when this call made
    /// it (for the log line).
    pub fn admit_with_transition(
        &mut self,
        now: Instant,
        policy: &BreakerPolicy,
        frozen: bool,
    ) -> (Admission, Option<BreakerTransition>) {
        match self.state {
            BreakerState::Closed => (Admission::Allowed, None),
            BreakerState::Open => {
                if frozen || now.since(self.since) < policy.sleep_window {
                    return (Admission::Rejected, None);
                }
                self.enter(BreakerState::HalfOpen, now);
                let admission = self.admit_probe(now, policy);
                let transition = BreakerTransition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen,
                    reason: None,
                };
                (admission, Some(transition))
            }
            BreakerState::HalfOpen => (self.admit_probe(now, policy), None),
        }
    }

    fn admit_probe(&mut self, now: Instant, policy: &BreakerPolicy) -> Admission {
        let outstanding = self.probes_admitted.saturating_sub(self.probes_completed);
        let limit = policy.half_open_probes.max(1);
        if outstanding >= limit {
            let wedge = Millis(policy.sleep_window.0.saturating_mul(PROBE_WEDGE_FACTOR));
            if now.since(self.probe_at) <= wedge {
                return Admission::Rejected;
            }
            // Written off: see PROBE_WEDGE_FACTOR.
            self.probes_admitted = self.probes_completed;
        }
        self.probes_admitted = self.probes_admitted.saturating_add(1);
        self.probe_at = self.probe_at.max(now);
        Admission::Probe
    }

    /// Counts a finished request (`probe`: it was admitted as [`Admission::Probe`]) and
    /// returns the transition it caused, if any. `Abandoned` counts as nothing (it only frees
    /// a probe slot).
    pub fn record(
        &mut self,
        now: Instant,
        policy: &BreakerPolicy,
        outcome: Outcome,
        probe: bool,
        frozen: bool,
    ) -> Option<BreakerTransition> {
        match outcome {
            Outcome::Success => {
                self.window.add(now, policy.window, 1, 0);
                self.consecutive_failures = 0;
            }
            Outcome::Failure => {
                self.window.add(now, policy.window, 0, 1);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            }
            Outcome::Abandoned => {}
        }
        // A probe of an earlier half-open period (the breaker closed or reopened since)
        // is an ordinary outcome.
        let probe = probe && self.state == BreakerState::HalfOpen;
        if probe {
            if self.probes_completed < self.probes_admitted {
                self.probes_completed += 1;
            }
            if outcome == Outcome::Success {
                self.probes_succeeded = self.probes_succeeded.saturating_add(1);
            }
            self.probe_at = self.probe_at.max(now);
        }
        if frozen {
            return None;
        }
        match self.state {
            BreakerState::Closed => {
                let reason = self.trip_reason(now, policy)?;
                Some(self.open(now, reason))
            }
            BreakerState::HalfOpen if probe && outcome == Outcome::Failure => {
                Some(self.open(now, BreakerReason::ProbeFailed))
            }
            BreakerState::HalfOpen if self.probes_succeeded >= policy.half_open_probes.max(1) => {
                self.enter(BreakerState::Closed, now);
                self.window = RollingCounts::default();
                self.consecutive_failures = 0;
                Some(BreakerTransition {
                    from: BreakerState::HalfOpen,
                    to: BreakerState::Closed,
                    reason: None,
                })
            }
            BreakerState::HalfOpen | BreakerState::Open => None,
        }
    }

    /// Why a closed breaker must open now, if it must.
    fn trip_reason(&self, now: Instant, policy: &BreakerPolicy) -> Option<BreakerReason> {
        if let Some(limit) = policy.consecutive_failures {
            if limit > 0 && self.consecutive_failures >= limit {
                return Some(BreakerReason::ConsecutiveFailures(
                    self.consecutive_failures,
                ));
            }
        }
        let (successes, failures) = self.window.totals(now, policy.window);
        let volume = successes + failures;
        if volume == 0 || volume < u64::from(policy.minimum_requests) {
            return None;
        }
        let rate = failures as f64 / volume as f64;
        if !policy.failure_rate.is_finite() || rate < policy.failure_rate {
            return None;
        }
        Some(BreakerReason::ErrorRate {
            rate_permille: (rate * 1000.0).round().clamp(0.0, 1000.0) as u16,
            volume: u32::try_from(volume).unwrap_or(u32::MAX),
        })
    }

    fn open(&mut self, now: Instant, reason: BreakerReason) -> BreakerTransition {
        let from = self.state;
        self.enter(BreakerState::Open, now);
        self.reason = Some(reason);
        self.consecutive_failures = 0;
        BreakerTransition {
            from,
            to: BreakerState::Open,
            reason: Some(reason),
        }
    }

    fn enter(&mut self, state: BreakerState, now: Instant) {
        self.state = state;
        self.since = now;
        self.probes_admitted = 0;
        self.probes_completed = 0;
        self.probes_succeeded = 0;
        self.probe_at = now;
    }

    pub fn write(&self, w: &mut Writer) {
        w.u8(self.state.code());
        w.u64(self.since.0);
        BreakerReason::write(self.reason, w);
        self.window.write(w);
        w.u32(self.consecutive_failures);
        w.u32(self.probes_admitted);
        w.u32(self.probes_completed);
        w.u32(self.probes_succeeded);
        w.u64(self.probe_at.0);
    }

    pub fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Breaker {
            state: BreakerState::from_code(r.u8()?)?,
            since: Instant(r.u64()?),
            reason: BreakerReason::read(r)?,
            window: RollingCounts::read(r)?,
            consecutive_failures: r.u32()?,
            probes_admitted: r.u32()?,
            probes_completed: r.u32()?,
            probes_succeeded: r.u32()?,
            probe_at: Instant(r.u64()?),
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate: 0.5,
            minimum_requests: 10,
            window: Millis(10_000),
            consecutive_failures: None,
            sleep_window: Millis(5_000),
            half_open_probes: 2,
        }
    }

    fn record_n(b: &mut Breaker, now: u64, outcome: Outcome, n: u32) -> Option<BreakerTransition> {
        let mut last = None;
        for _ in 0..n {
            if let Some(t) = b.record(Instant(now), &policy(), outcome, false, false) {
                last = Some(t);
            }
        }
        last
    }

    /// A breaker opened at `at` by an error rate.
    fn opened(at: u64) -> Breaker {
        let mut b = Breaker::default();
        record_n(&mut b, at, Outcome::Success, 5);
        let t = record_n(&mut b, at, Outcome::Failure, 5).unwrap();
        assert_eq!(t.to, BreakerState::Open);
        b
    }

    #[test]
    fn rolling_counts_rotate_lazily_and_expire() {
        let w = Millis(10_000);
        let mut c = RollingCounts::default();
        c.add(Instant(0), w, 1, 2);
        c.add(Instant(4_500), w, 3, 0);
        assert_eq!(c.totals(Instant(4_500), w), (4, 2));
        // Slot 0 (0..1s) leaves the window at 10s; slot 4 at 14s.
        assert_eq!(c.totals(Instant(9_999), w), (4, 2));
        assert_eq!(c.totals(Instant(10_000), w), (3, 0));
        assert_eq!(c.totals(Instant(13_999), w), (3, 0));
        assert_eq!(c.totals(Instant(14_000), w), (0, 0));
        // Writing at 12s clears the skipped slots (0 among them) before counting.
        c.add(Instant(12_000), w, 0, 1);
        assert_eq!(c.totals(Instant(12_000), w), (3, 1));
        assert_eq!(c.slots[0], [0, 0]);
        // A slightly late write from another worker lands in its own, still valid slot.
        c.add(Instant(11_000), w, 1, 0);
        assert_eq!(c.totals(Instant(12_000), w), (4, 1));
        assert_eq!(c.epoch, 12);
        // A long idle clears everything.
        c.add(Instant(100_000), w, 1, 1);
        assert_eq!(c.totals(Instant(100_000), w), (1, 1));
    }

    #[test]
    fn rolling_counts_start_over_on_a_new_window_or_a_big_clock_step() {
        let mut c = RollingCounts::default();
        c.add(Instant(50_000), Millis(10_000), 5, 5);
        assert_eq!(c.totals(Instant(50_000), Millis(20_000)), (0, 0));
        c.add(Instant(50_000), Millis(20_000), 1, 0);
        assert_eq!(c.totals(Instant(50_000), Millis(20_000)), (1, 0));
        c.add(Instant(1_000), Millis(20_000), 0, 1);
        assert_eq!(c.totals(Instant(1_000), Millis(20_000)), (0, 1));
        assert_eq!(c.totals(Instant(50_000), Millis(20_000)), (0, 0));
        // Tiny windows still have 1 ms slots.
        let mut t = RollingCounts::default();
        t.add(Instant(3), Millis(0), 1, 0);
        assert_eq!(t.totals(Instant(3), Millis(0)), (1, 0));
    }

    #[test]
    fn closed_breaker_allows_and_opens_on_error_rate() {
        let mut b = Breaker::default();
        assert_eq!(b.admit(Instant(1), &policy(), false), Admission::Allowed);
        record_n(&mut b, 1_000, Outcome::Success, 5);
        assert_eq!(record_n(&mut b, 1_000, Outcome::Failure, 4), None);
        assert_eq!(b.state, BreakerState::Closed);
        let t = b.record(Instant(1_000), &policy(), Outcome::Failure, false, false);
        let reason = BreakerReason::ErrorRate {
            rate_permille: 500,
            volume: 10,
        };
        assert_eq!(
            t,
            Some(BreakerTransition {
                from: BreakerState::Closed,
                to: BreakerState::Open,
                reason: Some(reason),
            })
        );
        assert_eq!(
            (b.state, b.since, b.reason),
            (BreakerState::Open, Instant(1_000), Some(reason))
        );
    }

    #[test]
    fn minimum_volume_is_required_and_old_failures_expire() {
        let mut b = Breaker::default();
        // 9 failures: 100% but below the volume.
        assert_eq!(record_n(&mut b, 0, Outcome::Failure, 9), None);
        // 11 s later they left the window: one more failure is 1 of 1.
        assert_eq!(record_n(&mut b, 11_000, Outcome::Failure, 1), None);
        assert_eq!(b.window.totals(Instant(11_000), policy().window), (0, 1));
        // Below the rate with volume: stays closed.
        let mut b = Breaker::default();
        record_n(&mut b, 0, Outcome::Success, 11);
        assert_eq!(record_n(&mut b, 0, Outcome::Failure, 10), None);
        assert_eq!(b.state, BreakerState::Closed);
    }

    #[test]
    fn consecutive_failures_open_below_the_volume() {
        let p = BreakerPolicy {
            consecutive_failures: Some(3),
            ..policy()
        };
        let mut b = Breaker::default();
        b.record(Instant(0), &p, Outcome::Failure, false, false);
        b.record(Instant(0), &p, Outcome::Failure, false, false);
        // A success resets the streak; an abandoned request does not.
        b.record(Instant(0), &p, Outcome::Success, false, false);
        b.record(Instant(0), &p, Outcome::Failure, false, false);
        b.record(Instant(0), &p, Outcome::Failure, false, false);
        assert_eq!(
            b.record(Instant(0), &p, Outcome::Abandoned, false, false),
            None
        );
        let t = b.record(Instant(0), &p, Outcome::Failure, false, false);
        assert_eq!(
            t.map(|t| t.reason),
            Some(Some(BreakerReason::ConsecutiveFailures(3)))
        );
        assert_eq!(b.consecutive_failures, 0);
    }

    #[test]
    fn abandoned_counts_as_nothing() {
        let mut b = Breaker::default();
        record_n(&mut b, 0, Outcome::Abandoned, 50);
        assert_eq!(b.window.totals(Instant(0), policy().window), (0, 0));
    }

    #[test]
    fn open_rejects_until_the_sleep_then_half_opens_with_a_probe() {
        let mut b = opened(1_000);
        let p = policy();
        assert_eq!(b.admit(Instant(5_999), &p, false), Admission::Rejected);
        assert_eq!(
            b.admit_with_transition(Instant(6_000), &p, false),
            (
                Admission::Probe,
                Some(BreakerTransition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen,
                    reason: None
                })
            )
        );
        assert_eq!((b.state, b.since), (BreakerState::HalfOpen, Instant(6_000)));
        // The second probe is admitted, the third is over the in-flight limit.
        assert_eq!(b.admit(Instant(6_001), &p, false), Admission::Probe);
        assert_eq!(b.admit(Instant(6_002), &p, false), Admission::Rejected);
        assert_eq!(b.probes_admitted, 2);
        // A probe completing frees its slot.
        assert_eq!(
            b.record(Instant(6_010), &p, Outcome::Abandoned, true, false),
            None
        );
        assert_eq!(b.admit(Instant(6_011), &p, false), Admission::Probe);
        assert_eq!(b.admit(Instant(6_012), &p, false), Admission::Rejected);
    }

    #[test]
    fn probe_successes_close_with_an_empty_window() {
        let mut b = opened(0);
        let p = policy();
        assert_eq!(b.admit(Instant(5_000), &p, false), Admission::Probe);
        assert_eq!(b.admit(Instant(5_000), &p, false), Admission::Probe);
        assert_eq!(
            b.record(Instant(5_100), &p, Outcome::Success, true, false),
            None
        );
        // A non-probe outcome (admitted before the opening) decides nothing.
        assert_eq!(
            b.record(Instant(5_150), &p, Outcome::Failure, false, false),
            None
        );
        assert_eq!(b.state, BreakerState::HalfOpen);
        let t = b.record(Instant(5_200), &p, Outcome::Success, true, false);
        assert_eq!(
            t,
            Some(BreakerTransition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed,
                reason: None
            })
        );
        assert_eq!(b.state, BreakerState::Closed);
        assert_eq!(b.window.totals(Instant(5_200), p.window), (0, 0));
        assert_eq!(b.admit(Instant(5_201), &p, false), Admission::Allowed);
        // The reason of the last opening is kept for the status document.
        assert!(matches!(b.reason, Some(BreakerReason::ErrorRate { .. })));
    }

    #[test]
    fn a_probe_failure_reopens_for_a_new_sleep() {
        let mut b = opened(0);
        let p = policy();
        assert_eq!(b.admit(Instant(5_000), &p, false), Admission::Probe);
        let t = b.record(Instant(5_300), &p, Outcome::Failure, true, false);
        assert_eq!(
            t,
            Some(BreakerTransition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open,
                reason: Some(BreakerReason::ProbeFailed)
            })
        );
        assert_eq!((b.state, b.since), (BreakerState::Open, Instant(5_300)));
        assert_eq!(b.admit(Instant(10_299), &p, false), Admission::Rejected);
        assert_eq!(b.admit(Instant(10_300), &p, false), Admission::Probe);
        // A late result of a probe from an earlier period is an ordinary outcome.
        let mut closed = Breaker::default();
        assert_eq!(
            closed.record(Instant(1), &p, Outcome::Failure, true, false),
            None
        );
        assert_eq!(closed.probes_completed, 0);
    }

    #[test]
    fn frozen_breakers_count_but_never_change_state() {
        let p = policy();
        let mut b = Breaker::default();
        for _ in 0..20 {
            assert_eq!(
                b.record(Instant(0), &p, Outcome::Failure, false, true),
                None
            );
        }
        assert_eq!(b.state, BreakerState::Closed);
        assert_eq!(b.window.totals(Instant(0), p.window), (0, 20));
        // Unfrozen, the next outcome acts on what was counted.
        assert!(b
            .record(Instant(1), &p, Outcome::Failure, false, false)
            .is_some());

        let mut b = opened(0);
        assert_eq!(b.admit(Instant(60_000), &p, true), Admission::Rejected);
        assert_eq!(b.state, BreakerState::Open);

        let mut b = opened(0);
        assert_eq!(b.admit(Instant(5_000), &p, false), Admission::Probe);
        assert_eq!(
            b.record(Instant(5_001), &p, Outcome::Failure, true, true),
            None
        );
        assert_eq!(b.state, BreakerState::HalfOpen);
        assert_eq!(b.admit(Instant(5_002), &p, true), Admission::Probe);
        assert_eq!(b.admit(Instant(5_003), &p, true), Admission::Probe);
        assert_eq!(
            b.record(Instant(5_004), &p, Outcome::Success, true, true),
            None
        );
        assert_eq!(
            b.record(Instant(5_005), &p, Outcome::Success, true, true),
            None
        );
        assert_eq!(b.state, BreakerState::HalfOpen);
    }

    #[test]
    fn lost_probes_do_not_wedge_half_open() {
        let p = policy();
        let mut b = opened(0);
        assert_eq!(b.admit(Instant(5_000), &p, false), Admission::Probe);
        assert_eq!(b.admit(Instant(5_000), &p, false), Admission::Probe);
        // Neither completes. Up to 2 × sleep after the last probe activity: rejected.
        assert_eq!(b.admit(Instant(15_000), &p, false), Admission::Rejected);
        assert_eq!(b.admit(Instant(15_001), &p, false), Admission::Probe);
        assert_eq!((b.probes_admitted, b.probes_completed), (1, 0));
        assert_eq!(b.admit(Instant(15_002), &p, false), Admission::Probe);
        assert_eq!(b.admit(Instant(15_003), &p, false), Admission::Rejected);
        // A written-off probe that completes late still counts its verdict.
        b.record(Instant(15_004), &p, Outcome::Success, true, false);
        b.record(Instant(15_005), &p, Outcome::Success, true, false);
        assert_eq!(b.state, BreakerState::Closed);
    }

    #[test]
    fn encoding_round_trips_and_rejects_bad_values() {
        let mut b = opened(1_000);
        b.admit(Instant(7_000), &policy(), false);
        b.consecutive_failures = 7;
        let reasons = [
            None,
            Some(BreakerReason::ErrorRate {
                rate_permille: 625,
                volume: 40,
            }),
            Some(BreakerReason::ConsecutiveFailures(9)),
            Some(BreakerReason::ProbeFailed),
        ];
        for reason in reasons {
            b.reason = reason;
            let mut w = Writer::new();
            b.write(&mut w);
            let bytes = w.finish();
            let mut r = Reader::new(&bytes).unwrap();
            assert_eq!(Breaker::read(&mut r), Ok(b));
            for n in 0..bytes.len() {
                let mut r = Reader::new(&bytes[..n.max(1)]).unwrap();
                assert!(Breaker::read(&mut r).is_err(), "prefix {n}");
            }
        }
        let mut w = Writer::new();
        b.write(&mut w);
        let mut bytes = w.finish();
        bytes[1] = 3;
        assert_eq!(
            Breaker::read(&mut Reader::new(&bytes).unwrap()),
            Err(DecodeError::BadValue)
        );
        bytes[1] = 0;
        bytes[10] = 9; // reason tag
        assert_eq!(
            Breaker::read(&mut Reader::new(&bytes).unwrap()),
            Err(DecodeError::BadValue)
        );
    }
}
