//! The guards of one destination, shared by all workers in one value so that a request costs
//! one compare-and-swap when it starts and one when it ends, whatever is enabled: the retry
//! budget, the circuit breaker, the bulkhead and client-side throttling.
//!
//! Order at the start of a request: breaker (an open breaker answers before anything is
//! counted), then throttling (which counts every request the caller wanted to send), then the
//! bulkhead, then the retry budget (only requests that go upstream deposit into it). Each
//! refusal is enforced, or only counted when its feature (or the whole filter) runs dry.

use super::codec::{DecodeError, Reader, Writer, MAX_LIST_ENTRIES};
use super::record::{keyed, update, Record, RecordError};
use super::store::SharedStore;
use super::Automation;
use crate::config::{BulkheadConfig, CircuitBreaker, ClientThrottling, Config, Retries};
use crate::core::breaker::{Admission, Breaker, BreakerTransition};
use crate::core::outcome::Outcome;
use crate::core::retry_budget::RetryBudget;
use crate::core::rng::Rng;
use crate::core::throttle::{is_rejection, Bulkhead, Throttle};
use crate::core::time::Instant;

/// Everything reflex guards a destination with.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Guard {
    pub budget: RetryBudget,
    pub breaker: Breaker,
    pub bulkhead: Bulkhead,
    pub throttle: Throttle,
}

impl Record for Guard {
    fn write(&self, w: &mut Writer) {
        self.budget.write(w);
        self.breaker.write(w);
        self.bulkhead.write(w);
        self.throttle.write(w);
    }
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Guard {
            budget: RetryBudget::read(r)?,
            breaker: Breaker::read(r)?,
            bulkhead: Bulkhead::read(r)?,
            throttle: Throttle::read(r)?,
        })
    }
}

/// The policies that apply to one destination.
#[derive(Debug, Clone, Copy)]
pub struct Policies<'a> {
    pub retries: &'a Retries,
    pub breaker: &'a CircuitBreaker,
    pub bulkhead: &'a BulkheadConfig,
    pub throttling: &'a ClientThrottling,
}

impl<'a> Policies<'a> {
    pub fn for_cluster(config: &'a Config, cluster: &str) -> Self {
        Policies {
            retries: config.retries.for_cluster(cluster),
            breaker: config.circuit_breaker.for_cluster(cluster),
            bulkhead: config.bulkhead.for_cluster(cluster),
            throttling: config.client_throttling.for_cluster(cluster),
        }
    }

    /// Whether any guard is on (otherwise the request costs no shared-data call).
    pub fn any(&self) -> bool {
        self.retries.enabled
            || self.breaker.enabled
            || self.bulkhead.enabled
            || self.throttling.enabled
    }
}

/// Separates cluster and route in a destination's name (a character neither can contain).
const ROUTE_SEPARATOR: char = '\u{1f}';

/// The name of a guarded destination: the cluster, or cluster and route when breakers are
/// per route (then every guard of the destination is per route). The shared list of
/// destinations and the keys hold this name.
pub fn destination(cluster: &str, route: Option<&str>) -> String {
    match route {
        Some(route) => format!("{cluster}{ROUTE_SEPARATOR}{route}"),
        None => cluster.to_string(),
    }
}

/// The cluster a destination belongs to (its policies are the cluster's).
pub fn cluster_of(destination: &str) -> &str {
    destination
        .split(ROUTE_SEPARATOR)
        .next()
        .unwrap_or(destination)
}

/// A destination as operators read it: `cluster` or `cluster route name`.
pub fn display(destination: &str) -> String {
    destination.replace(ROUTE_SEPARATOR, " route ")
}

/// The shared-data key of a destination's guard value.
pub fn key(destination: &str) -> String {
    keyed("guard", destination)
}

/// The destinations that have a guard value, for the status document and the gauges.
pub const DESTINATIONS_KEY: &str = "reflex.v2.destinations";

/// The names of guarded destinations, in the order they were first seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Destinations(pub Vec<String>);

impl Record for Destinations {
    fn write(&self, w: &mut Writer) {
        w.u16(self.0.len().min(MAX_LIST_ENTRIES) as u16);
        for name in self.0.iter().take(MAX_LIST_ENTRIES) {
            w.str(name);
        }
    }
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let count = usize::from(r.u16()?);
        if count > MAX_LIST_ENTRIES {
            return Err(DecodeError::TooLong);
        }
        (0..count)
            .map(|_| r.str())
            .collect::<Result<_, _>>()
            .map(Destinations)
    }
}

/// Adds `destination` to the list (at most `max` names: beyond, it is guarded but not
/// listed). Returns whether it is listed.
pub fn remember(
    store: &dyn SharedStore,
    destination: &str,
    max: usize,
) -> Result<bool, RecordError> {
    update(store, DESTINATIONS_KEY, |list: &mut Destinations| {
        if list.0.iter().any(|d| d == destination) {
            (true, false)
        } else if list.0.len() < max {
            list.0.push(destination.to_string());
            (true, true)
        } else {
            (false, false)
        }
    })
}

/// Which guard refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BreakerOpen,
    Throttled,
    BulkheadFull,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BreakerOpen => "circuit-open",
            Refusal::Throttled => "client-throttled",
            Refusal::BulkheadFull => "bulkhead-full",
        }
    }
}

/// What the guards decided for a request, and what it holds until it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Start {
    /// The enforced refusal, if any: answer locally, nothing else was taken.
    pub refused: Option<Refusal>,
    /// Refusals that were only counted (dry-run).
    pub would_refuse: Vec<Refusal>,
    /// The request is a half-open probe of the breaker.
    pub probe: bool,
    pub holds_bulkhead: bool,
    /// Retries reserved from the budget (the request may use up to this many).
    pub granted: u32,
    pub budget_level: f64,
    pub throttle_probability: f64,
    pub transition: Option<BreakerTransition>,
}

/// Runs the guards for a request that is about to go upstream. `wants_retries` is whether
/// the request may be retried at all (retries on, method eligible).
pub fn start(
    store: &dyn SharedStore,
    key: &str,
    policies: &Policies,
    now: Instant,
    rng: &mut impl Rng,
    wants_retries: bool,
    automation: Automation,
) -> Result<Start, RecordError> {
    update(store, key, |guard: &mut Guard| {
        let before = *guard;
        let start = decide(guard, policies, now, rng, wants_retries, automation);
        // An unchanged value (a closed breaker alone, say) costs no write.
        let changed = *guard != before;
        (start, changed)
    })
}

/// The decisions of [`start`] on one guard value.
fn decide(
    guard: &mut Guard,
    policies: &Policies,
    now: Instant,
    rng: &mut impl Rng,
    wants_retries: bool,
    automation: Automation,
) -> Start {
    let mut start = Start::default();
    let breaker = policies.breaker;
    if breaker.enabled {
        let (admission, transition) =
            guard
                .breaker
                .admit_with_transition(now, &breaker.policy, automation.frozen);
        start.transition = transition;
        match admission {
            Admission::Allowed => {}
            Admission::Probe => start.probe = true,
            Admission::Rejected if breaker.dry_run || automation.dry_run => {
                start.would_refuse.push(Refusal::BreakerOpen)
            }
            Admission::Rejected => {
                start.refused = Some(Refusal::BreakerOpen);
                return start;
            }
        }
    }
    // The bulkhead before throttling: a request refused locally for lack of room says
    // nothing about the destination, so throttling never counts it.
    let bulkhead = policies.bulkhead;
    if bulkhead.enabled {
        if guard.bulkhead.try_acquire(now, bulkhead.max_concurrent) {
            start.holds_bulkhead = true;
        } else if bulkhead.dry_run || automation.dry_run {
            start.would_refuse.push(Refusal::BulkheadFull);
            // Counted anyway, so the dry-run shows the concurrency it would have capped.
            guard.bulkhead.try_acquire(now, u32::MAX);
            start.holds_bulkhead = true;
        } else {
            return refuse(guard, start, Refusal::BulkheadFull, now);
        }
    }
    let throttling = policies.throttling;
    if throttling.enabled {
        start.throttle_probability = guard.throttle.probability(now, &throttling.policy);
        if guard.throttle.reject(now, &throttling.policy, rng) {
            if throttling.dry_run || automation.dry_run {
                start.would_refuse.push(Refusal::Throttled);
            } else {
                return refuse(guard, start, Refusal::Throttled, now);
            }
        }
    }
    let retries = policies.retries;
    if retries.enabled && wants_retries {
        guard.budget.deposit(now, &retries.budget);
        start.granted = guard
            .budget
            .withdraw(now, &retries.budget, retries.max_retries);
        start.budget_level = guard.budget.available(now, &retries.budget);
    }
    start
}

/// Refuses after the breaker admitted: what the request took so far is given back.
fn refuse(guard: &mut Guard, mut start: Start, refusal: Refusal, now: Instant) -> Start {
    if start.probe {
        guard.breaker.return_probe();
        start.probe = false;
    }
    if start.holds_bulkhead {
        guard.bulkhead.release(now);
        start.holds_bulkhead = false;
    }
    start.refused = Some(refusal);
    start
}

/// How a request that passed the guards ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finish {
    /// Outcome of the last attempt (None: nothing usable, e.g. the route had no upstream).
    pub outcome: Option<Outcome>,
    /// Final status (None or 0 when the upstream never answered).
    pub status: Option<u64>,
    /// Attempts Envoy made (1 without retries).
    pub attempts: u32,
}

/// Returns what the request took and records its outcome.
pub fn finish(
    store: &dyn SharedStore,
    key: &str,
    policies: &Policies,
    now: Instant,
    start: &Start,
    finish: &Finish,
    automation: Automation,
) -> Result<Option<BreakerTransition>, RecordError> {
    update(store, key, |guard: &mut Guard| {
        let mut transition = None;
        if policies.breaker.enabled {
            // A probe that says nothing still frees its slot.
            let outcome = finish.outcome.or(start.probe.then_some(Outcome::Abandoned));
            if let Some(outcome) = outcome {
                transition = guard.breaker.record(
                    now,
                    &policies.breaker.policy,
                    outcome,
                    start.probe,
                    automation.frozen,
                );
            }
        }
        if start.holds_bulkhead {
            guard.bulkhead.release(now);
        }
        let throttling = policies.throttling;
        if throttling.enabled
            && (finish.outcome == Some(Outcome::Abandoned)
                || !is_rejection(finish.status, &throttling.rejection_codes))
        {
            guard.throttle.record_accept(now, &throttling.policy);
        }
        if start.granted > 0 {
            let used = finish.attempts.saturating_sub(1).min(start.granted);
            guard
                .budget
                .refund(now, &policies.retries.budget, start.granted - used);
        }
        (transition, true)
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::core::breaker::BreakerState;
    use crate::core::rng::SplitMix64;
    use crate::state::record::load;
    use crate::state::store::memory::MemoryStore;

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes()).unwrap()
    }

    const KEY: &str = "reflex.v2.guard.1.c";

    fn run(store: &MemoryStore, config: &Config, now: u64, automation: Automation) -> Start {
        let policies = Policies::for_cluster(config, "c");
        let mut rng = SplitMix64::new(now);
        start(
            store,
            KEY,
            &policies,
            Instant(now),
            &mut rng,
            true,
            automation,
        )
        .unwrap()
    }

    fn end(store: &MemoryStore, config: &Config, now: u64, s: &Start, status: u64, attempts: u32) {
        let policies = Policies::for_cluster(config, "c");
        let outcome = if status >= 500 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let done = Finish {
            outcome: Some(outcome),
            status: Some(status),
            attempts,
        };
        finish(
            store,
            KEY,
            &policies,
            Instant(now),
            s,
            &done,
            Automation::default(),
        )
        .unwrap();
    }

    #[test]
    fn nothing_enabled_means_no_guard() {
        let c = config(r#"{"version": 1}"#);
        assert!(!Policies::for_cluster(&c, "c").any());
    }

    #[test]
    fn budget_reserves_and_refunds_what_was_not_used() {
        let c = config(
            r#"{"version": 1, "retries": {"enabled": true, "maxRetries": 2,
                "budget": {"ratio": 0.5, "minPerSecond": 0}}}"#,
        );
        let store = MemoryStore::default();
        // 1st request: 0.5 retries available -> none granted.
        let s = run(&store, &c, 1_000, Automation::default());
        assert_eq!(s.granted, 0);
        end(&store, &c, 1_001, &s, 200, 1);
        // 2nd: 1.0 available -> one granted; unused, it is refunded.
        let s = run(&store, &c, 1_002, Automation::default());
        assert_eq!(s.granted, 1);
        end(&store, &c, 1_003, &s, 200, 1);
        let s = run(&store, &c, 1_004, Automation::default());
        assert_eq!(s.granted, 1, "the refund made room again");
        end(&store, &c, 1_005, &s, 503, 2);
        let guard: Guard = load(&store, KEY).unwrap();
        assert!(
            guard
                .budget
                .available(Instant(1_006), &c.retries.default.budget)
                < 1.0
        );
    }

    #[test]
    fn open_breaker_refuses_and_dry_run_only_counts() {
        let c = config(
            r#"{"version": 1, "circuitBreaker": {"enabled": true, "minimumRequests": 2,
                "failureRate": 0.5}}"#,
        );
        let store = MemoryStore::default();
        for t in 0..2 {
            let s = run(&store, &c, 1_000 + t, Automation::default());
            assert_eq!(s.refused, None);
            end(&store, &c, 1_000 + t, &s, 503, 1);
        }
        let guard: Guard = load(&store, KEY).unwrap();
        assert_eq!(guard.breaker.state, BreakerState::Open);
        let s = run(&store, &c, 1_010, Automation::default());
        assert_eq!(s.refused, Some(Refusal::BreakerOpen));
        let dry = Automation {
            dry_run: true,
            ..Default::default()
        };
        let s = run(&store, &c, 1_011, dry);
        assert_eq!(
            (s.refused, s.would_refuse.clone()),
            (None, vec![Refusal::BreakerOpen])
        );
    }

    #[test]
    fn a_probe_refused_by_the_bulkhead_is_given_back() {
        let c = config(
            r#"{"version": 1, "circuitBreaker": {"enabled": true, "minimumRequests": 1,
                "failureRate": 0.5, "sleepWindow": "1s", "halfOpenProbes": 1},
                "bulkhead": {"enabled": true, "maxConcurrent": 1}}"#,
        );
        let store = MemoryStore::default();
        let s = run(&store, &c, 1_000, Automation::default());
        end(&store, &c, 1_000, &s, 503, 1);
        // Open; one request holds the bulkhead's only slot.
        let mut g: Guard = load(&store, KEY).unwrap();
        g.bulkhead.try_acquire(Instant(2_500), 1);
        store.set(KEY, &g.encode(), None).unwrap();
        let refused = run(&store, &c, 2_500, Automation::default());
        assert_eq!(refused.refused, Some(Refusal::BulkheadFull));
        assert!(!refused.probe);
        let g: Guard = load(&store, KEY).unwrap();
        assert_eq!(g.breaker.probes_admitted, 0, "the probe slot was returned");
        assert_eq!(
            g.bulkhead.effective(Instant(2_500)),
            1,
            "only the holder's slot"
        );
    }

    #[test]
    fn bulkhead_caps_and_releases() {
        let c = config(r#"{"version": 1, "bulkhead": {"enabled": true, "maxConcurrent": 2}}"#);
        let store = MemoryStore::default();
        let a = run(&store, &c, 1_000, Automation::default());
        let b = run(&store, &c, 1_000, Automation::default());
        let refused = run(&store, &c, 1_000, Automation::default());
        assert!(a.holds_bulkhead && b.holds_bulkhead);
        assert_eq!(refused.refused, Some(Refusal::BulkheadFull));
        end(&store, &c, 1_001, &a, 200, 1);
        assert!(run(&store, &c, 1_002, Automation::default()).holds_bulkhead);
    }

    #[test]
    fn destinations_are_listed_once_and_bounded() {
        let store = MemoryStore::default();
        assert!(remember(&store, "a", 2).unwrap());
        assert!(remember(&store, "a", 2).unwrap());
        assert!(remember(&store, "b", 2).unwrap());
        assert!(!remember(&store, "c", 2).unwrap());
        let list: Destinations = load(&store, DESTINATIONS_KEY).unwrap();
        assert_eq!(list.0, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(Destinations::decode(&list.encode()).unwrap(), list);
    }

    #[test]
    fn routes_get_their_own_key() {
        assert_ne!(
            key(&destination("c", Some("r"))),
            key(&destination("c", None))
        );
        assert_eq!(key(&destination("c", None)), KEY);
        assert_eq!(cluster_of(&destination("c", Some("r"))), "c");
        assert_eq!(display(&destination("c", Some("r"))), "c route r");
    }
}
