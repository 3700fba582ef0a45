//! The local service's admission state, shared by all workers of the inbound sidecar: the
//! adaptive concurrency limiter and the optional token bucket, in one value (one CAS when a
//! request arrives, one when it ends).

use super::codec::{DecodeError, Reader, Writer};
use super::record::{update, Record, RecordError};
use super::store::SharedStore;
use crate::config::Admission;
use crate::core::concurrency_limit::{ConcurrencyLimiter, LimitChange};
use crate::core::priority::Priority;
use crate::core::time::Instant;
use crate::core::token_bucket::TokenBucket;

pub const KEY: &str = "reflex.v2.admission";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdmissionState {
    pub limiter: ConcurrencyLimiter,
    pub bucket: TokenBucket,
}

impl Record for AdmissionState {
    fn write(&self, w: &mut Writer) {
        self.limiter.write(w);
        self.bucket.write(w);
    }
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AdmissionState {
            limiter: ConcurrencyLimiter::read(r)?,
            bucket: TokenBucket::read(r)?,
        })
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The static token bucket is empty.
    RateLimited,
    /// The adaptive limit (for this priority class) is reached.
    OverLimit,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Counted in flight: the request must be finished exactly once.
    pub counted: bool,
    /// Enforced: answer locally.
    pub shed: Option<Shed>,
    /// Only counted (dry-run).
    pub would_shed: Option<Shed>,
    pub limit: u32,
    pub in_flight: u32,
    /// Admitted with no queue ahead: its latency measures the no-load latency.
    pub quiet: bool,
}

/// Decides whether a request of `priority` is admitted to the local service.
pub fn admit(
    store: &dyn SharedStore,
    admission: &Admission,
    now: Instant,
    priority: Priority,
    dry_run: bool,
) -> Result<Decision, RecordError> {
    let dry_run = dry_run || admission.dry_run;
    let policy = &admission.limiter;
    let share = admission.priority.shares.share(priority);
    update(store, KEY, |state: &mut AdmissionState| {
        if state.limiter.limit() == 0 {
            state.limiter = ConcurrencyLimiter::new(policy, now);
        }
        let mut decision = Decision {
            counted: false,
            shed: None,
            would_shed: None,
            limit: 0,
            in_flight: 0,
            quiet: state.limiter.is_quiet(policy),
        };
        let mut refused = None;
        if let Some(rate) = &admission.rate_limit {
            if !state
                .bucket
                .try_take(now, rate.requests_per_second, rate.burst)
            {
                refused = Some(Shed::RateLimited);
            }
        }
        if refused.is_none() && !state.limiter.try_admit(now, share, policy) {
            refused = Some(Shed::OverLimit);
        } else if refused.is_none() {
            decision.counted = true;
        }
        match refused {
            Some(shed) if dry_run => {
                decision.would_shed = Some(shed);
                state.limiter.admit_over_limit(now);
                decision.counted = true;
            }
            shed => decision.shed = shed,
        }
        decision.limit = state.limiter.limit();
        decision.in_flight = state.limiter.in_flight();
        (decision, true)
    })
}

/// Ends an admitted request: its latency (None when there is no usable sample: reset,
/// cancelled, answered locally) feeds the controller unless automation is frozen; `quiet`
/// is [`Decision::quiet`].
pub fn finish(
    store: &dyn SharedStore,
    admission: &Admission,
    now: Instant,
    latency_ms: Option<f64>,
    quiet: bool,
    frozen: bool,
) -> Result<Option<LimitChange>, RecordError> {
    update(store, KEY, |state: &mut AdmissionState| {
        let change = match latency_ms {
            Some(ms) => state
                .limiter
                .complete(now, ms, quiet, &admission.limiter, frozen),
            None => {
                state.limiter.release_without_sample();
                None
            }
        };
        (change, true)
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::Config;
    use crate::state::store::memory::MemoryStore;

    fn admission(json: &str) -> Admission {
        Config::parse(json.as_bytes()).unwrap().admission
    }

    #[test]
    fn critical_gets_the_last_slots_and_finishing_frees_them() {
        let a = admission(
            r#"{"version": 1, "admission": {"enabled": true, "initialLimit": 10,
                "minLimit": 1, "priority": {"defaultShare": 0.5, "sheddableShare": 0.2}}}"#,
        );
        let store = MemoryStore::default();
        let now = Instant(1_000);
        let admitted = (0..10)
            .filter(|_| {
                admit(&store, &a, now, Priority::Default, false)
                    .unwrap()
                    .counted
            })
            .count();
        assert_eq!(admitted, 5);
        let shed = admit(&store, &a, now, Priority::Sheddable, false).unwrap();
        assert_eq!(shed.shed, Some(Shed::OverLimit));
        // Critical may overdraw the limit (share 2).
        for _ in 0..15 {
            assert!(
                admit(&store, &a, now, Priority::Critical, false)
                    .unwrap()
                    .counted
            );
        }
        assert_eq!(
            admit(&store, &a, now, Priority::Critical, false)
                .unwrap()
                .shed,
            Some(Shed::OverLimit)
        );
        finish(&store, &a, now, Some(5.0), false, false).unwrap();
        assert!(
            admit(&store, &a, now, Priority::Critical, false)
                .unwrap()
                .counted
        );
    }

    #[test]
    fn dry_run_counts_but_admits() {
        let a = admission(
            r#"{"version": 1, "admission": {"enabled": true, "dryRun": true,
                "initialLimit": 1, "minLimit": 1}}"#,
        );
        let store = MemoryStore::default();
        let now = Instant(1_000);
        assert!(admit(&store, &a, now, Priority::Default, false)
            .unwrap()
            .shed
            .is_none());
        let d = admit(&store, &a, now, Priority::Default, false).unwrap();
        assert_eq!(
            (d.shed, d.would_shed, d.counted),
            (None, Some(Shed::OverLimit), true)
        );
        assert_eq!(d.in_flight, 2);
    }

    #[test]
    fn empty_bucket_rate_limits() {
        let a = admission(
            r#"{"version": 1, "admission": {"enabled": true,
                "rateLimit": {"enabled": true, "requestsPerSecond": 2, "burst": 2}}}"#,
        );
        let store = MemoryStore::default();
        let now = Instant(1_000);
        for _ in 0..2 {
            assert!(
                admit(&store, &a, now, Priority::Default, false)
                    .unwrap()
                    .counted
            );
        }
        let d = admit(&store, &a, now, Priority::Default, false).unwrap();
        assert_eq!((d.shed, d.counted), (Some(Shed::RateLimited), false));
    }
}
