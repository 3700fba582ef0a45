//! Adaptive concurrency limit of the local service (inbound admission control).
//!
//! **Why a concurrency limit, not a rate limit.** By Little's law the requests in flight are
//! `L = throughput x latency`. A service has a fixed amount of parallel work it can do (its
//! workers, cores, connections); once `L` exceeds it, extra requests only wait in a queue,
//! latency grows and, past the cliff, timeouts turn the waiting into wasted work. Bounding
//! `L` bounds the queue directly, and the admitted *rate* follows the service by itself: when
//! requests get twice as slow, the same limit admits half as many per second. A rate limit
//! would need the capacity in requests per second known in advance, and that number changes
//! with the request mix, the host and every deploy. (Netflix "Performance Under Load", 2018;
//! Envoy `adaptive_concurrency`.)
//!
//! **State.** One record for the local service, shared by all Envoy workers and updated with
//! compare-and-swap on every request start ([`ConcurrencyLimiter::try_admit`]) and
//! completion ([`ConcurrencyLimiter::complete`]), so each operation is a few comparisons and
//! the encoding is small: the limit, the in-flight count, the current sample window (count,
//! latency sum, minimum latency, largest in-flight count seen, sheds, quiet samples) and a
//! ring of at most [`MAX_NO_LOAD_WINDOWS`] no-load measurements (whole microseconds, 4 bytes
//! each).
//!
//! **Windows.** Latency samples are collected for `window`; the first completion after the
//! window's end closes it (lazily: there is no timer) and starts the next one at that moment,
//! its own sample going into the new window. A window needs [`MIN_SAMPLES`] samples to say
//! anything: one that ends with fewer is *extended* until it has them (a slow service at a
//! low limit completes few requests per window, and discarding its windows would pin the
//! limit forever), unless it is older than [`STALE_WINDOWS`] windows, in which case its few
//! samples are dropped. An idle gap of many windows therefore ends at most one window, once.
//!
//! **Gradient controller** (Netflix concurrency-limits `Gradient2Limit`; Envoy
//! `adaptive_concurrency`'s gradient controller). At the end of a window with mean latency
//! `sample` and no-load latency `no_load`:
//!
//! ```text
//! gradient = clamp(tolerance x no_load / sample, 0.5, 1.0)
//! new      = limit x gradient + headroom x sqrt(limit)   (queue allowance; Envoy: headroom 1)
//! limit    = new                              if new < limit (falls at once)
//!            (1 - smoothing) x limit + smoothing x new   otherwise (rises smoothly)
//!            clamped to [min_limit, max_limit]
//! ```
//!
//! While latency stays within `tolerance x no_load` the limit grows by `smoothing x headroom x
//! sqrt(limit)` per window; when queueing raises latency the gradient pulls it down by at most
//! half per window, at once: the queue costs every admitted request now, and a smoothed fall
//! left the onset of an overload a second of queueing (measured in the real-Envoy test). The
//! price: one slow window while busy (a pause near capacity) can cut the limit by up to half,
//! and it regrows by `smoothing x headroom x sqrt(limit)` per busy window. It settles where
//! `limit x (1 - gradient) = headroom x sqrt(limit)`, i.e. about `headroom x sqrt(limit)`
//! requests of queue. The default headroom
//! (0.5) keeps that queue short enough that admitted requests stay within about 1.5x of the
//! no-load latency (the p99 target is 2x) while the limit can still find a bigger service in
//! seconds. As in `Gradient2Limit`, the limit holds while the service is
//! *application-limited* (fewer than `limit / 2` in flight during the window): it does not
//! grow, otherwise a quiet hour would walk it up to `max_limit` and the next burst would be
//! let in whole before the first window could react; and it does not shrink, because a slow
//! window then cannot be a queue the limit let in (a pause, a slow dependency), and shrinking
//! on such hiccups with growth held would pin a quiet service's limit at the floor.
//!
//! **AIMD controller** (Netflix `AIMDLimit`; TCP congestion avoidance, RFC 5681): at the end
//! of a window, `limit x backoff` if `sample > target` (default `no_load x tolerance`), else
//! `limit + 1` if at least `limit / 2` requests were in flight at some point in the window,
//! else unchanged; clamped. Slower to find the level than the gradient, but needs no model of
//! how latency responds to load.
//!
//! **No-load latency without rejecting traffic.** Envoy's adaptive concurrency measures the
//! no-load latency by pinning the limit low for a while, which rejects traffic at a steady
//! rate, by design. Here it is measured passively on the requests that meet no queue: those
//! admitted while fewer than half the limit were in flight ([`ConcurrencyLimiter::is_quiet`];
//! the limit settles above the service's parallelism, so half of it is below, and a FIFO
//! server starts such a request at once). Each window with [`QUIET_MIN_SAMPLES`] quiet
//! requests contributes their *mean* latency, and the estimate is the minimum over the last
//! `no_load_windows` such windows: the mean, because it is compared with the window's mean
//! (like with like: a service with a wide latency spread is not mistaken for a queueing one,
//! as a minimum would be); the minimum over windows, to drop windows that were quiet by the
//! count but not by the service; the bound, so the estimate follows a service that becomes
//! permanently slower (a new version) or faster (a warm cache). A window without quiet
//! requests (sustained overload: every request queues) measures nothing and the estimate
//! holds, since learning from queued requests would ratchet the limit up. Before the first
//! quiet window the window's fastest request stands in. Latencies below
//! [`LATENCY_FLOOR_MS`] are treated as that floor: with millisecond timers a 0 ms minimum would
//! make every window look infinitely slow (and sub-millisecond queueing is harmless anyway).
//!
//! **Freeze.** While the operator's freeze switch is on, windows still roll (their samples are
//! discarded) but the limit and the no-load history hold their values; admission keeps using
//! the held limit.
//!
//! **Leaks.** An admitted request whose completion is lost (a worker that crashed, an update
//! dropped after losing the compare-and-swap race too often) would hold a slot forever, and
//! enough of them would shed all traffic. So when a request would be shed and the in-flight
//! count has not changed for [`LEAK_WINDOWS`] windows (at least [`LEAK_MIN`]), the count is
//! taken as leaked and reset to zero. A service whose requests legitimately all take longer
//! than that (long polls, streams) gets one more batch of `limit` requests each time; such
//! requests should not be counted by the caller.

use crate::config::Millis;
use crate::core::time::Instant;
use crate::state::codec::{DecodeError, Reader, Writer};

/// Most per-window minima the no-load estimate looks back over (and the most decoded).
pub const MAX_NO_LOAD_WINDOWS: usize = 64;
/// Samples a window needs before it may change the limit.
pub const MIN_SAMPLES: u32 = 5;
/// A window still short of samples after this many window lengths is dropped.
pub const STALE_WINDOWS: u64 = 16;
/// Windows without any change of the in-flight count after which a full limit is a leak.
pub const LEAK_WINDOWS: u64 = 32;
/// Lower bound of the leak timeout, whatever the window.
pub const LEAK_MIN: Millis = Millis(30_000);
/// Quiet samples a window needs to measure the no-load latency.
pub const QUIET_MIN_SAMPLES: u32 = 3;
/// Latencies are taken as at least this (millisecond timers report 0 for fast requests).
pub const LATENCY_FLOOR_MS: f64 = 1.0;

/// How the limit reacts to latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Controller {
    #[default]
    Gradient,
    Aimd,
}

/// The validated settings of the limiter (see `config::admission`).
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterPolicy {
    pub controller: Controller,
    pub initial_limit: u32,
    pub min_limit: u32,
    pub max_limit: u32,
    /// Length of a sample window.
    pub window: Millis,
    /// Weight of the new value in the gradient controller, in (0, 1].
    pub smoothing: f64,
    /// Latency up to `tolerance x no_load` is fine (no decrease).
    pub tolerance: f64,
    /// Windows the no-load latency looks back over (1..=64).
    pub no_load_windows: u32,
    /// AIMD: multiplier on a slow window, in [0.5, 1).
    pub aimd_backoff: f64,
    /// AIMD: mean latency above which to back off (default `no_load x tolerance`).
    pub aimd_target: Option<Millis>,
    /// A static ceiling the limit never exceeds, whatever the other bounds say.
    pub hard_max: Option<u32>,
    /// Gradient: the queue allowance, in units of `sqrt(limit)`.
    pub headroom: f64,
}

impl Default for LimiterPolicy {
    fn default() -> Self {
        LimiterPolicy {
            controller: Controller::Gradient,
            initial_limit: 20,
            min_limit: 4,
            max_limit: 1000,
            window: Millis(250),
            smoothing: 0.2,
            tolerance: 1.0,
            // 60 windows that measured a no-load latency (busy windows do not count): at
            // least 15 s at the default window, enough to ride out a quiet spell's noise,
            // short enough to follow a slower deploy.
            no_load_windows: 60,
            aimd_backoff: 0.9,
            aimd_target: None,
            hard_max: None,
            headroom: 0.5,
        }
    }
}

impl LimiterPolicy {
    /// `[low, high]` of the limit: `hard_max` wins over `min_limit`, and both are at least 1.
    fn bounds(&self) -> (f64, f64) {
        let mut high = self.max_limit.max(1);
        if let Some(hard) = self.hard_max {
            high = high.min(hard.max(1));
        }
        let low = self.min_limit.clamp(1, high);
        (f64::from(low), f64::from(high))
    }

    fn clamp(&self, limit: f64) -> f64 {
        let (low, high) = self.bounds();
        if limit.is_finite() {
            limit.max(low).min(high)
        } else {
            low
        }
    }

    fn window_ms(&self) -> u64 {
        self.window.0.max(1)
    }

    fn ring_len(&self) -> usize {
        (self.no_load_windows as usize).clamp(1, MAX_NO_LOAD_WINDOWS)
    }
}

/// Keeps a configured factor finite and within `[low, high]`, `fallback` if it is not a
/// number.
fn factor(value: f64, low: f64, high: f64, fallback: f64) -> f64 {
    if value.is_finite() {
        value.max(low).min(high)
    } else {
        fallback
    }
}

/// The samples of the current window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub samples: u32,
    pub latency_sum_ms: f64,
    /// Smallest latency of the window (meaningless while `samples == 0`).
    pub min_latency_ms: f64,
    /// Most requests in flight at once during the window.
    pub max_in_flight: u32,
    /// Requests refused during the window.
    pub shed: u32,
    /// Samples of requests admitted while fewer than half the limit were in flight (they
    /// met no queue), and their latency sum: the no-load measurement.
    pub quiet_samples: u32,
    pub quiet_sum_ms: f64,
}

/// What a closed window did to the limit (returned for every evaluated window; `from` and
/// `to` may be equal, see [`LimitChange::changed`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitChange {
    pub from: f64,
    pub to: f64,
    pub no_load_ms: f64,
    pub sample_ms: f64,
}

impl LimitChange {
    /// Whether the admitted concurrency (the limit rounded up) moved: worth a log line.
    pub fn changed(&self) -> bool {
        self.from.ceil() != self.to.ceil()
    }
}

/// The shared limiter state of the local service. The default value (limit 0) means "not
/// started": the first operation starts it at the policy's initial limit, so a record that
/// was absent or unreadable never sheds everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConcurrencyLimiter {
    limit: f64,
    in_flight: u32,
    /// When `in_flight` last changed through an admission or completion (leak guard).
    in_flight_at: Instant,
    window_start: Instant,
    window: Window,
    /// Mean latency of the last evaluated window (0 = none yet), for the status document.
    last_sample_ms: f64,
    /// No-load latency measured in each of the last windows that could measure it, oldest
    /// first, in microseconds.
    no_load_us: Vec<u32>,
}

impl ConcurrencyLimiter {
    pub fn new(policy: &LimiterPolicy, now: Instant) -> Self {
        ConcurrencyLimiter {
            limit: policy.clamp(f64::from(policy.initial_limit)),
            window_start: now,
            in_flight_at: now,
            ..ConcurrencyLimiter::default()
        }
    }

    fn start_if_needed(&mut self, now: Instant, policy: &LimiterPolicy) {
        // NaN cannot come from the decoder, but stay safe.
        if self.limit.is_nan() || self.limit < 1.0 {
            self.limit = policy.clamp(f64::from(policy.initial_limit));
            self.window_start = now;
            self.window = Window {
                max_in_flight: self.in_flight,
                ..Window::default()
            };
            self.in_flight_at = now;
        }
    }

    /// Admits one request if fewer than `ceil(limit x share)` are in flight, counting it in
    /// flight; otherwise counts a shed. `share` is the request's class share
    /// (`PriorityShares::share`, above 1 for critical). Every admitted request must later be passed to
    /// [`complete`](Self::complete) or [`release_without_sample`](Self::release_without_sample)
    /// exactly once.
    pub fn try_admit(&mut self, now: Instant, share: f64, policy: &LimiterPolicy) -> bool {
        self.start_if_needed(now, policy);
        // Up to 4: critical traffic may overdraw the limit (see `PriorityShares`).
        let share = factor(share, 0.0, 4.0, 1.0);
        let allowed = (policy.clamp(self.limit) * share).ceil() as u32;
        if self.in_flight >= allowed && self.in_flight > 0 {
            let leak_after = (policy.window_ms().saturating_mul(LEAK_WINDOWS)).max(LEAK_MIN.0);
            if now.since(self.in_flight_at).0 >= leak_after {
                self.in_flight = 0;
                self.in_flight_at = now;
            }
        }
        if self.in_flight < allowed {
            self.admit_over_limit(now);
            true
        } else {
            self.window.shed = self.window.shed.saturating_add(1);
            false
        }
    }

    /// Counts a request in flight without checking the limit: dry-run mode, where a request
    /// [`try_admit`](Self::try_admit) refused (and counted as shed) goes through anyway and
    /// must be completed like any other.
    pub fn admit_over_limit(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_add(1);
        self.in_flight_at = self.in_flight_at.max(now);
        self.window.max_in_flight = self.window.max_in_flight.max(self.in_flight);
    }

    /// One admitted request finished after `latency_ms`. Closes the window if it is over and
    /// ready and returns what that did to the limit. While `frozen` the limit and the no-load
    /// history hold; the window's samples are discarded.
    pub fn complete(
        &mut self,
        now: Instant,
        latency_ms: f64,
        quiet: bool,
        policy: &LimiterPolicy,
        frozen: bool,
    ) -> Option<LimitChange> {
        self.start_if_needed(now, policy);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight_at = self.in_flight_at.max(now);
        let change = self.roll(now, policy, frozen);
        if latency_ms.is_finite() && latency_ms >= 0.0 {
            let w = &mut self.window;
            w.min_latency_ms = if w.samples == 0 {
                latency_ms
            } else {
                w.min_latency_ms.min(latency_ms)
            };
            w.samples = w.samples.saturating_add(1);
            w.latency_sum_ms += latency_ms;
            if quiet {
                w.quiet_samples = w.quiet_samples.saturating_add(1);
                w.quiet_sum_ms += latency_ms;
            }
        }
        change
    }

    /// Whether a request admitted now meets no queue: fewer than half the limit are in
    /// flight (the limit settles above the service's parallelism, so half of it is below).
    /// Its latency is then a no-load measurement (pass it to [`complete`](Self::complete)).
    pub fn is_quiet(&self, policy: &LimiterPolicy) -> bool {
        f64::from(self.in_flight) < (policy.clamp(self.limit) / 2.0).max(1.0)
    }

    /// An admitted request ended without a usable latency (reset, cancelled, answered
    /// locally): it leaves the in-flight count and the samples untouched.
    pub fn release_without_sample(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Closes the window if it is over: evaluates it if it has enough samples (and the limit
    /// is not frozen), drops it if it is stale, extends it otherwise.
    fn roll(&mut self, now: Instant, policy: &LimiterPolicy, frozen: bool) -> Option<LimitChange> {
        if now < self.window_start {
            // The clock stepped back: restart the window rather than wait for it to catch up.
            self.window_start = now;
            return None;
        }
        let window = policy.window_ms();
        let age = now.since(self.window_start).0;
        if age < window {
            return None;
        }
        let ready = self.window.samples >= MIN_SAMPLES;
        if !ready && age < window.saturating_mul(STALE_WINDOWS) {
            return None;
        }
        let closed = self.window;
        self.window = Window {
            max_in_flight: self.in_flight,
            ..Window::default()
        };
        self.window_start = now;
        if !ready || frozen {
            return None;
        }
        Some(self.evaluate(&closed, policy))
    }

    fn evaluate(&mut self, closed: &Window, policy: &LimiterPolicy) -> LimitChange {
        let samples = f64::from(closed.samples.max(1));
        let sample = (closed.latency_sum_ms / samples).max(LATENCY_FLOOR_MS);
        // The no-load latency: the mean of the window's quiet requests (compared with the
        // window's mean, like with like, so latency variance does not bias the gradient). A
        // busy window measures nothing and the estimate holds: under sustained overload every
        // request queues, and learning from them would ratchet the limit up. Before the first
        // quiet window, the window's fastest request stands in.
        let measured = if closed.quiet_samples >= QUIET_MIN_SAMPLES {
            Some(closed.quiet_sum_ms / f64::from(closed.quiet_samples))
        } else if self.no_load_us.is_empty() {
            Some(closed.min_latency_ms)
        } else {
            None
        };
        if let Some(ms) = measured {
            let us = (ms.max(0.0) * 1000.0).round();
            self.no_load_us.push(us.min(f64::from(u32::MAX)) as u32);
        }
        let keep = policy.ring_len();
        if self.no_load_us.len() > keep {
            let excess = self.no_load_us.len() - keep;
            self.no_load_us.drain(..excess);
        }
        let no_load = self.no_load_ms().unwrap_or(sample).max(LATENCY_FLOOR_MS);
        let tolerance = factor(policy.tolerance, 1.0, 100.0, 1.5);
        let from = policy.clamp(self.limit);
        let busy = f64::from(closed.max_in_flight) >= from / 2.0;
        let next = match policy.controller {
            Controller::Gradient => {
                let gradient = (tolerance * no_load / sample).clamp(0.5, 1.0);
                let headroom = factor(policy.headroom, 0.0, 4.0, 0.5);
                let new = from * gradient + headroom * from.sqrt();
                let smoothing = factor(policy.smoothing, 0.0, 1.0, 0.2);
                if !busy {
                    // Application-limited (fewer than half the limit in flight): the limit is
                    // not what bounds the service, so a slower window cannot be a queue it let
                    // in (a pause, a slow dependency); hold it either way, as Gradient2Limit
                    // does. Shrinking here would ratchet the limit down on every hiccup of a
                    // quiet service and, with growth also held, pin it at the floor for good.
                    from
                } else if new < from {
                    // A queue the limit let in costs every admitted request latency now:
                    // fall to the new value at once (the gradient's floor of 0.5 already
                    // bounds the step), so an onset of overload is cut within one window.
                    new
                } else {
                    (1.0 - smoothing) * from + smoothing * new
                }
            }
            Controller::Aimd => {
                let target = policy
                    .aimd_target
                    .map_or(no_load * tolerance, |t| t.0 as f64)
                    .max(LATENCY_FLOOR_MS);
                if sample > target {
                    from * factor(policy.aimd_backoff, 0.1, 1.0, 0.9)
                } else if busy {
                    from + 1.0
                } else {
                    from
                }
            }
        };
        self.limit = policy.clamp(next);
        self.last_sample_ms = sample;
        LimitChange {
            from,
            to: self.limit,
            no_load_ms: no_load,
            sample_ms: sample,
        }
    }

    /// The admitted concurrency (the limit rounded up); 0 before the first operation.
    pub fn limit(&self) -> u32 {
        if self.limit.is_finite() && self.limit > 0.0 {
            self.limit.ceil().min(f64::from(u32::MAX)) as u32
        } else {
            0
        }
    }

    /// The limit with its fraction (the controllers move it in small steps).
    pub fn limit_exact(&self) -> f64 {
        self.limit
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The current no-load latency estimate, `None` before the first evaluated window.
    pub fn no_load_ms(&self) -> Option<f64> {
        self.no_load_us
            .iter()
            .min()
            .map(|&us| f64::from(us) / 1000.0)
    }

    /// Mean latency of the last evaluated window, `None` before the first.
    pub fn last_sample_ms(&self) -> Option<f64> {
        (self.last_sample_ms > 0.0).then_some(self.last_sample_ms)
    }

    /// The window being collected.
    pub fn window(&self) -> &Window {
        &self.window
    }

    pub fn window_start(&self) -> Instant {
        self.window_start
    }

    pub fn write(&self, w: &mut Writer) {
        w.f64(self.limit);
        w.u32(self.in_flight);
        w.u64(self.in_flight_at.0);
        w.u64(self.window_start.0);
        w.u32(self.window.samples);
        w.f64(self.window.latency_sum_ms);
        w.f64(self.window.min_latency_ms);
        w.u32(self.window.max_in_flight);
        w.u32(self.window.shed);
        w.u32(self.window.quiet_samples);
        w.f64(self.window.quiet_sum_ms);
        w.f64(self.last_sample_ms);
        let ring = &self.no_load_us[..self.no_load_us.len().min(MAX_NO_LOAD_WINDOWS)];
        w.u8(ring.len() as u8);
        for &us in ring {
            w.u32(us);
        }
    }

    pub fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let limit = r.f64()?;
        let in_flight = r.u32()?;
        let in_flight_at = Instant(r.u64()?);
        let window_start = Instant(r.u64()?);
        let window = Window {
            samples: r.u32()?,
            latency_sum_ms: r.f64()?,
            min_latency_ms: r.f64()?,
            max_in_flight: r.u32()?,
            shed: r.u32()?,
            quiet_samples: r.u32()?,
            quiet_sum_ms: r.f64()?,
        };
        let last_sample_ms = r.f64()?;
        if limit < 0.0
            || window.latency_sum_ms < 0.0
            || window.quiet_sum_ms < 0.0
            || window.min_latency_ms < 0.0
            || last_sample_ms < 0.0
        {
            return Err(DecodeError::BadValue);
        }
        let len = usize::from(r.u8()?);
        if len > MAX_NO_LOAD_WINDOWS {
            return Err(DecodeError::TooLong);
        }
        let no_load_us = (0..len).map(|_| r.u32()).collect::<Result<_, _>>()?;
        Ok(ConcurrencyLimiter {
            limit,
            in_flight,
            in_flight_at,
            window_start,
            window,
            last_sample_ms,
            no_load_us,
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn policy(controller: Controller) -> LimiterPolicy {
        LimiterPolicy {
            controller,
            initial_limit: 100,
            min_limit: 4,
            max_limit: 1000,
            window: Millis(500),
            smoothing: 0.2,
            tolerance: 1.5,
            no_load_windows: 10,
            aimd_backoff: 0.9,
            aimd_target: None,
            hard_max: None,
            headroom: 1.0,
        }
    }

    /// Runs window `k` (starting at `T0 + k x 500 + 1`): admits up to `busy` requests, then
    /// completes `n` with `latency`, re-admitting to keep `busy` in flight, and releases the
    /// rest at the end. The first completion closes window `k - 1`, so the change returned
    /// is that of the *previous* window.
    fn run_window(
        l: &mut ConcurrencyLimiter,
        p: &LimiterPolicy,
        k: u64,
        latency: f64,
        n: u32,
        busy: u32,
    ) -> Vec<LimitChange> {
        let start = T0 + k * 500 + 1;
        let mut changes = vec![];
        for i in 0..n {
            let now = Instant(start + u64::from(i));
            while l.in_flight() < busy && l.try_admit(now, 1.0, p) {}
            if l.in_flight() == 0 {
                assert!(l.try_admit(now, 1.0, p));
            }
            changes.extend(l.complete(now, latency, true, p, false));
        }
        while l.in_flight() > 0 {
            l.release_without_sample();
        }
        changes
    }

    #[test]
    fn a_new_or_default_limiter_starts_at_the_initial_limit() {
        let p = policy(Controller::Gradient);
        let l = ConcurrencyLimiter::new(&p, Instant(T0));
        assert_eq!(l.limit(), 100);
        assert_eq!(l.window_start(), Instant(T0));
        let mut d = ConcurrencyLimiter::default();
        assert_eq!(d.limit(), 0);
        assert!(d.try_admit(Instant(T0), 1.0, &p));
        assert_eq!((d.limit(), d.in_flight()), (100, 1));
        assert_eq!(d.window_start(), Instant(T0));
        // The initial limit is clamped into the bounds.
        let tight = LimiterPolicy {
            hard_max: Some(7),
            ..policy(Controller::Gradient)
        };
        assert_eq!(ConcurrencyLimiter::new(&tight, Instant(T0)).limit(), 7);
    }

    #[test]
    fn try_admit_respects_the_class_share() {
        let p = LimiterPolicy {
            initial_limit: 10,
            ..policy(Controller::Gradient)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        let now = Instant(T0);
        // Sheddable (0.75): ceil(7.5) = 8 slots.
        assert_eq!((0..20).filter(|_| l.try_admit(now, 0.75, &p)).count(), 8);
        // Default (0.9): up to 9 in flight; critical (1.0): up to 10.
        assert!(l.try_admit(now, 0.9, &p));
        assert!(!l.try_admit(now, 0.9, &p));
        assert!(l.try_admit(now, 1.0, &p));
        assert!(!l.try_admit(now, 1.0, &p));
        assert_eq!(l.in_flight(), 10);
        assert_eq!(l.window().shed, 12 + 1 + 1);
        assert_eq!(l.window().max_in_flight, 10);
        // A share of zero admits nothing; a broken share counts as the whole limit.
        l.release_without_sample();
        assert!(!l.try_admit(now, 0.0, &p));
        assert!(l.try_admit(now, f64::NAN, &p));
    }

    #[test]
    fn release_and_complete_saturate_at_zero() {
        let p = policy(Controller::Gradient);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        l.release_without_sample();
        assert_eq!(l.in_flight(), 0);
        assert!(l.complete(Instant(T0), 5.0, true, &p, false).is_none());
        assert_eq!(l.in_flight(), 0);
        assert_eq!(l.window().samples, 1);
        // A release leaves the samples alone; garbage latencies are not samples.
        assert!(l.try_admit(Instant(T0), 1.0, &p));
        l.release_without_sample();
        l.complete(Instant(T0), f64::NAN, true, &p, false);
        l.complete(Instant(T0), -1.0, true, &p, false);
        assert_eq!(l.window().samples, 1);
    }

    #[test]
    fn gradient_converges_down_when_latency_doubles_and_up_when_it_recovers() {
        let p = policy(Controller::Gradient);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        // Window 0 at no-load (10 ms), busy: the limit grows by smoothing x sqrt(limit).
        assert!(run_window(&mut l, &p, 0, 10.0, 20, 200).is_empty());
        let c = run_window(&mut l, &p, 1, 20.0, 20, 200);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].from, 100.0);
        assert!((c[0].to - 102.0).abs() < 1e-9, "{:?}", c[0]);
        assert_eq!((c[0].no_load_ms, c[0].sample_ms), (10.0, 10.0));
        // Latency doubled: gradient 1.5 x 10 / 20 = 0.75.
        let c = run_window(&mut l, &p, 2, 20.0, 20, 200);
        // Falling: to the new value at once, not smoothed.
        let mut expected = 102.0 * 0.75 + 102f64.sqrt();
        assert!((c[0].to - expected).abs() < 1e-9, "{:?}", c[0]);
        assert_eq!((c[0].no_load_ms, c[0].sample_ms), (10.0, 20.0));
        // It keeps falling every window (towards L = 16, where 0.25 L = sqrt L).
        for k in 3..=10 {
            let c = run_window(&mut l, &p, k, 20.0, 20, 200);
            assert_eq!(c.len(), 1);
            assert!(c[0].to < c[0].from, "window {k}: {:?}", c[0]);
            assert_eq!(c[0].no_load_ms, 10.0);
            expected = expected * 0.75 + expected.sqrt();
        }
        assert!(
            (l.limit_exact() - expected).abs() < 1e-9,
            "{} vs {expected}",
            l.limit_exact()
        );
        // Back at no-load: it grows again, gradually (at most smoothing x sqrt(limit)).
        for k in 11..20 {
            let before = l.limit_exact();
            let c = run_window(&mut l, &p, k, 10.0, 20, 1000);
            let step = c[0].to - c[0].from;
            assert_eq!(c[0].from, before);
            assert!(
                step > 0.0 && step <= 0.2 * before.sqrt() + 1e-9,
                "{k}: {step}"
            );
        }
    }

    #[test]
    fn gradient_converges_to_the_queue_allowance_equilibrium() {
        let p = LimiterPolicy {
            no_load_windows: 64,
            smoothing: 1.0,
            ..policy(Controller::Gradient)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 200);
        for k in 1..60 {
            run_window(&mut l, &p, k, 20.0, 20, 200);
        }
        // Fixed point of L = 0.75 L + sqrt L: L = 16 (a queue of sqrt(L) = 4).
        assert!((l.limit_exact() - 16.0).abs() < 0.1, "{}", l.limit_exact());
    }

    #[test]
    fn gradient_holds_while_application_limited() {
        let p = policy(Controller::Gradient);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 1);
        // Fast and quiet: no growth.
        for k in 1..5 {
            let c = run_window(&mut l, &p, k, 10.0, 20, 1);
            assert_eq!(c[0].to, 100.0);
        }
        // Slow but quiet (a pause, a slow dependency: no queue the limit let in): no fall.
        for k in 5..10 {
            let c = run_window(&mut l, &p, k, 40.0, 20, 1);
            assert_eq!(c[0].to, 100.0, "window {k}");
        }
        // Slow with half the limit in flight: the queue is the limit's doing, it falls.
        let c = run_window(&mut l, &p, 10, 40.0, 20, 50);
        assert!(c[0].to < 100.0, "{:?}", c[0]);
    }

    #[test]
    fn gradient_falls_at_most_by_half_per_window() {
        let p = LimiterPolicy {
            smoothing: 1.0,
            ..policy(Controller::Gradient)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 0);
        // Busy (the admissions before window 1's first completion also made window 0 busy,
        // so it grew): a 100x slower window takes the limit to from / 2 + headroom x sqrt(from).
        run_window(&mut l, &p, 1, 1000.0, 20, 60);
        let c = run_window(&mut l, &p, 2, 10.0, 20, 60);
        let from = c[0].from;
        assert!(from > 100.0, "{:?}", c[0]);
        assert!(
            (c[0].to - (from / 2.0 + from.sqrt())).abs() < 1e-9,
            "{:?}",
            c[0]
        );
    }

    #[test]
    fn aimd_backs_off_when_slow_and_grows_by_one_when_busy() {
        let p = policy(Controller::Aimd);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 100);
        let c = run_window(&mut l, &p, 1, 10.0, 20, 10);
        assert_eq!(c[0].to, 101.0);
        // Not busy (fewer than limit / 2 in flight): holds.
        let c = run_window(&mut l, &p, 2, 20.0, 20, 10);
        assert_eq!(c[0].to, 101.0);
        // Mean 20 ms > target 1.5 x 10 ms: x 0.9.
        let c = run_window(&mut l, &p, 3, 10.0, 20, 10);
        assert!((c[0].to - 90.9).abs() < 1e-9, "{:?}", c[0]);
        // An explicit target.
        let p = LimiterPolicy {
            aimd_target: Some(Millis(50)),
            ..policy(Controller::Aimd)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 40.0, 20, 100);
        let c = run_window(&mut l, &p, 1, 60.0, 20, 100);
        assert_eq!(c[0].to, 101.0, "40 ms is under the 50 ms target");
        let c = run_window(&mut l, &p, 2, 60.0, 20, 100);
        assert!((c[0].to - 90.9).abs() < 1e-9, "{:?}", c[0]);
    }

    #[test]
    fn floors_ceilings_and_hard_max_hold() {
        let p = LimiterPolicy {
            initial_limit: 5,
            min_limit: 4,
            ..policy(Controller::Aimd)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 5);
        for k in 1..10 {
            run_window(&mut l, &p, k, 100.0, 20, 5);
        }
        assert_eq!(l.limit_exact(), 4.0);
        let p = LimiterPolicy {
            initial_limit: 95,
            max_limit: 97,
            ..policy(Controller::Aimd)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        for k in 0..10 {
            run_window(&mut l, &p, k, 10.0, 20, 200);
        }
        assert_eq!(l.limit_exact(), 97.0);
        let p = LimiterPolicy {
            initial_limit: 95,
            hard_max: Some(96),
            ..policy(Controller::Gradient)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        for k in 0..10 {
            run_window(&mut l, &p, k, 10.0, 20, 200);
        }
        assert_eq!(l.limit(), 96);
        let now = Instant(T0 + 10_000);
        assert_eq!((0..200).filter(|_| l.try_admit(now, 1.0, &p)).count(), 96);
        // hard_max below min_limit: the guard rail wins.
        let p = LimiterPolicy {
            min_limit: 10,
            hard_max: Some(3),
            ..policy(Controller::Gradient)
        };
        assert_eq!(ConcurrencyLimiter::new(&p, Instant(T0)).limit(), 3);
    }

    #[test]
    fn no_load_estimate_follows_a_permanent_change_after_its_window_count() {
        let p = LimiterPolicy {
            no_load_windows: 5,
            ..policy(Controller::Gradient)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 200);
        let c = run_window(&mut l, &p, 1, 30.0, 20, 200);
        assert_eq!(c[0].no_load_ms, 10.0);
        // Windows 1..=4 close with 30 ms; window 0's 10 ms is still among the last 5.
        for k in 2..=5 {
            let c = run_window(&mut l, &p, k, 30.0, 20, 200);
            assert_eq!(c[0].no_load_ms, 10.0, "window {k}");
        }
        // Window 5 closes: the ring holds windows 1..=5, all 30 ms.
        let c = run_window(&mut l, &p, 6, 30.0, 20, 200);
        assert_eq!(c[0].no_load_ms, 30.0);
        assert_eq!(l.no_load_ms(), Some(30.0));
        // A faster window is taken at once.
        run_window(&mut l, &p, 7, 8.0, 20, 200);
        let c = run_window(&mut l, &p, 8, 30.0, 20, 200);
        assert_eq!(c[0].no_load_ms, 8.0);
        // The mean of the window's quiet requests is what counts, not its fastest request.
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        for i in 0..10 {
            assert!(l.try_admit(Instant(T0 + i), 1.0, &p));
            l.complete(
                Instant(T0 + i),
                if i == 3 { 4.5 } else { 50.0 },
                true,
                &p,
                false,
            );
        }
        assert!(l.try_admit(Instant(T0 + 600), 1.0, &p));
        let c = l
            .complete(Instant(T0 + 600), 50.0, true, &p, false)
            .unwrap();
        assert!((c.no_load_ms - 45.45).abs() < 1e-9, "{c:?}");
        assert!((c.sample_ms - (9.0 * 50.0 + 4.5) / 10.0).abs() < 1e-9);
        assert_eq!(l.last_sample_ms(), Some(c.sample_ms));
    }

    #[test]
    fn busy_windows_leave_the_no_load_estimate_alone() {
        let p = policy(Controller::Gradient);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 200);
        run_window(&mut l, &p, 1, 10.0, 20, 200);
        assert_eq!(l.no_load_ms(), Some(10.0));
        // Sustained overload: every request queued (none quiet), for far longer than the
        // look-back. The estimate holds instead of learning the queueing latency.
        for k in 0..30u64 {
            let start = T0 + 1_000 + k * 600;
            for i in 0..10 {
                l.try_admit(Instant(start + i), 1.0, &p);
                l.complete(Instant(start + i), 40.0, false, &p, false);
            }
        }
        assert_eq!(l.no_load_ms(), Some(10.0));
        assert!(ConcurrencyLimiter::new(&p, Instant(T0))
            .no_load_ms()
            .is_none());
    }

    #[test]
    fn a_request_is_quiet_below_half_the_limit() {
        let mut p = policy(Controller::Gradient);
        p.initial_limit = 10;
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        for _ in 0..4 {
            assert!(l.is_quiet(&p));
            l.try_admit(Instant(T0), 1.0, &p);
        }
        assert!(l.is_quiet(&p), "4 in flight of 10");
        l.try_admit(Instant(T0), 1.0, &p);
        assert!(!l.is_quiet(&p), "5 in flight of 10");
    }

    #[test]
    fn sub_millisecond_latencies_do_not_collapse_the_limit() {
        let p = policy(Controller::Gradient);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 0.0, 20, 200);
        for k in 1..5 {
            let c = run_window(&mut l, &p, k, 1.0, 20, 200);
            assert!(c[0].to >= c[0].from, "{:?}", c[0]);
        }
    }

    #[test]
    fn frozen_holds_the_limit_and_the_history() {
        let p = policy(Controller::Gradient);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 200);
        run_window(&mut l, &p, 1, 10.0, 20, 200);
        let held = l.limit_exact();
        let ring = l.no_load_us.clone();
        for k in 2..10 {
            let start = T0 + k * 500 + 1;
            for i in 0..20 {
                let now = Instant(start + i);
                l.try_admit(now, 1.0, &p);
                assert_eq!(l.complete(now, 500.0, true, &p, true), None);
            }
        }
        assert_eq!(l.limit_exact(), held);
        assert_eq!(l.no_load_us, ring);
        // Windows still rolled: unfreezing starts from fresh samples, not the frozen ones.
        assert_eq!(l.window().samples, 20);
        let c = run_window(&mut l, &p, 10, 10.0, 20, 200);
        assert_eq!(
            c[0].sample_ms, 500.0,
            "the last frozen window is evaluated once thawed"
        );
        let c = run_window(&mut l, &p, 11, 10.0, 20, 200);
        assert_eq!(c[0].sample_ms, 10.0);
    }

    #[test]
    fn thin_windows_are_extended_then_dropped_when_stale() {
        let p = policy(Controller::Aimd);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        // Four samples by the window's end: not enough, the window is extended...
        for i in 0..4 {
            l.try_admit(Instant(T0 + i * 200), 1.0, &p);
            assert_eq!(
                l.complete(Instant(T0 + i * 200), 10.0, true, &p, false),
                None
            );
        }
        l.try_admit(Instant(T0 + 900), 1.0, &p);
        assert_eq!(l.complete(Instant(T0 + 900), 10.0, true, &p, false), None);
        assert_eq!(l.window().samples, 5);
        assert_eq!(l.window_start(), Instant(T0));
        // ...and the next completion closes it with all five.
        l.try_admit(Instant(T0 + 1_000), 1.0, &p);
        let c = l
            .complete(Instant(T0 + 1_000), 10.0, true, &p, false)
            .unwrap();
        assert_eq!(c.sample_ms, 10.0);
        assert_eq!(l.window_start(), Instant(T0 + 1_000));
        // A window with too few samples older than 16 windows is dropped, not evaluated.
        for i in 1..4 {
            l.complete(Instant(T0 + 1_000 + i), 10.0, true, &p, false);
        }
        assert_eq!(l.window().samples, 4);
        let before = l.limit_exact();
        assert_eq!(
            l.complete(Instant(T0 + 1_000 + 8_000), 99.0, true, &p, false),
            None
        );
        assert_eq!(l.window().samples, 1);
        assert_eq!(l.window_start(), Instant(T0 + 9_000));
        assert_eq!(l.limit_exact(), before);
    }

    #[test]
    fn an_idle_gap_closes_one_window_once() {
        let p = policy(Controller::Aimd);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        run_window(&mut l, &p, 0, 10.0, 20, 100);
        // An hour later: the ready window is evaluated once, a new one starts then.
        let later = T0 + 3_600_000;
        l.try_admit(Instant(later), 1.0, &p);
        let c = l.complete(Instant(later), 10.0, true, &p, false).unwrap();
        assert_eq!(c.to, 101.0);
        assert_eq!(l.window_start(), Instant(later));
        assert_eq!(l.window().samples, 1);
        l.try_admit(Instant(later + 1), 1.0, &p);
        assert_eq!(l.complete(Instant(later + 1), 10.0, true, &p, false), None);
        // The no-load history survived the gap.
        assert_eq!(l.no_load_ms(), Some(10.0));
    }

    #[test]
    fn clock_stepping_back_restarts_the_window() {
        let p = policy(Controller::Aimd);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0 + 10_000));
        for i in 0..10 {
            l.complete(Instant(T0 + i), 10.0, true, &p, false);
        }
        assert_eq!(l.window_start(), Instant(T0));
        assert!(l
            .complete(Instant(T0 + 500), 10.0, true, &p, false)
            .is_some());
    }

    #[test]
    fn a_leaked_in_flight_count_is_reset_after_a_long_silence() {
        let p = LimiterPolicy {
            initial_limit: 4,
            ..policy(Controller::Gradient)
        };
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        for _ in 0..4 {
            assert!(l.try_admit(Instant(T0), 1.0, &p));
        }
        // Completions lost: still full 29.9 s later...
        assert!(!l.try_admit(Instant(T0 + 29_999), 1.0, &p));
        // ...considered leaked at 30 s (32 windows of 500 ms is less than the 30 s floor).
        assert!(l.try_admit(Instant(T0 + 30_000), 1.0, &p));
        assert_eq!(l.in_flight(), 1);
        // A completion keeps a full limit from being taken for a leak.
        for _ in 0..3 {
            assert!(l.try_admit(Instant(T0 + 30_000), 1.0, &p));
        }
        l.complete(Instant(T0 + 50_000), 10.0, true, &p, false);
        assert!(l.try_admit(Instant(T0 + 50_000), 1.0, &p));
        assert!(!l.try_admit(Instant(T0 + 79_999), 1.0, &p));
    }

    #[test]
    fn encode_round_trip_and_bounded_decode() {
        let p = policy(Controller::Gradient);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        for k in 0..12 {
            run_window(&mut l, &p, k, 10.0 + k as f64, 7, 30);
        }
        l.try_admit(Instant(T0 + 99_999), 0.0, &p);
        let mut w = Writer::new();
        l.write(&mut w);
        let bytes = w.finish();
        let decoded = ConcurrencyLimiter::read(&mut Reader::new(&bytes).unwrap()).unwrap();
        assert_eq!(decoded, l);
        assert_eq!(l.no_load_us.len(), 10);
        // Compact: 78 bytes plus 4 per remembered window (at most 334).
        assert_eq!(bytes.len(), 1 + 76 + 1 + 4 * 10);
        for n in 0..bytes.len() {
            if let Ok(mut r) = Reader::new(&bytes[..n]) {
                assert!(ConcurrencyLimiter::read(&mut r).is_err(), "prefix {n}");
            }
        }
        // A ring length above the cap is refused before anything is read from it.
        let mut bad = bytes.clone();
        let ring_at = 1 + 8 + 4 + 8 + 8 + 4 + 8 + 8 + 4 + 4 + 4 + 8 + 8;
        bad[ring_at] = 65;
        assert_eq!(
            ConcurrencyLimiter::read(&mut Reader::new(&bad).unwrap()),
            Err(DecodeError::TooLong)
        );
        // Negative values are refused; NaN is refused by the reader.
        let mut bad = bytes.clone();
        bad[1..9].copy_from_slice(&(-5.0f64).to_bits().to_le_bytes());
        assert_eq!(
            ConcurrencyLimiter::read(&mut Reader::new(&bad).unwrap()),
            Err(DecodeError::BadValue)
        );
        bad[1..9].copy_from_slice(&f64::NAN.to_bits().to_le_bytes());
        assert!(ConcurrencyLimiter::read(&mut Reader::new(&bad).unwrap()).is_err());
        // A zero limit (never started) decodes and starts at the initial limit when used.
        let mut zero = bytes;
        zero[1..9].copy_from_slice(&0f64.to_bits().to_le_bytes());
        let mut z = ConcurrencyLimiter::read(&mut Reader::new(&zero).unwrap()).unwrap();
        z.try_admit(Instant(T0 + 100_000), 1.0, &p);
        assert_eq!(z.limit(), 100);
    }

    #[test]
    fn a_shrunk_ring_setting_drops_the_oldest_minima() {
        let p = policy(Controller::Gradient);
        let mut l = ConcurrencyLimiter::new(&p, Instant(T0));
        for k in 0..12 {
            run_window(&mut l, &p, k, 20.0 - k as f64, 20, 200);
        }
        assert_eq!(l.no_load_us.len(), 10);
        let small = LimiterPolicy {
            no_load_windows: 2,
            ..p
        };
        run_window(&mut l, &small, 12, 50.0, 20, 200);
        assert_eq!(l.no_load_us, vec![10_000, 9_000]);
    }
}
