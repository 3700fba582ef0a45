//! reflex's Prometheus metrics, defined when a configuration is accepted. Envoy keeps custom
//! wasm metrics in the `wasmcustom` stat namespace and exports them without prefix on
//! `/stats/prometheus`, so the names below are what an SRE queries. Counters end in `_total`.
//! Envoy's wasm ABI has no labels, so per-detector counts are separate names, and configured
//! `metrics.tags` are encoded into every name as `tag=.=value;.;` (Istio's convention), right
//! after `reflex_` so that the name still starts with it (stats inclusion lists match
//! `wasmcustom.reflex_`): `reflex_direction=.=inbound;.;requests_total`. A bootstrap `stats_tags` entry with the
//! regex `(direction=\.=(.*?);\.;)` (what Istio's `extraStatTags` generates) removes the
//! tag from the name and makes it a Prometheus label: `reflex_requests_total{direction=...}`.

use crate::core::outlier::Detector;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};

#[derive(Clone, Copy)]
pub struct Metrics {
    /// Requests the filter saw (every request through the listener).
    pub requests: u32,
    /// Requests that arrived carrying the steering header, which reflex removed.
    pub steering_header_stripped: u32,
    /// Requests steered by P2C (header written).
    pub picks: u32,
    /// Picks made in `loadBalancing.dryRun` (decided and counted, header not written).
    pub dry_run_picks: u32,
    /// Requests left to Envoy's own load balancing: the cluster is not marked for steering
    /// (`filter_metadata.reflex.steering: override_host`), or reflex knows none of its
    /// endpoints yet.
    pub unsteered: u32,
    /// Requests deliberately left to the fallback policy to discover new endpoints.
    pub explored: u32,
    /// Upstream responses recorded in the shared endpoint table.
    pub endpoint_observations: u32,
    /// Responses not recorded because a table cap (clusters or endpoints) was reached.
    pub endpoint_table_overflow: u32,
    /// Shared-state updates dropped after losing every CAS attempt, or refused by the host.
    pub shared_state_errors: u32,
    /// Ejections enforced, in total and by detector.
    pub ejections: u32,
    pub ejections_by: [u32; 5],
    /// Ejections decided in a detector's dry-run (endpoint kept in service).
    pub dry_run_ejections: u32,
    /// Ejections refused by `maxEjectionPercent` or panic.
    pub ejections_blocked: u32,
    /// Ejected endpoints that passed their probes and returned.
    pub endpoint_returns: u32,
    /// Probing endpoints that failed a probe and were ejected again.
    pub probe_failures: u32,
    /// Requests answered by the status endpoint.
    pub status_requests: u32,
    /// Gauges, as of the last tick.
    pub tracked_clusters: u32,
    pub tracked_endpoints: u32,
    pub ejected_endpoints: u32,
    pub panic_clusters: u32,
    /// Endpoints forgotten after `endpoints.forgetAfter` without traffic.
    pub endpoints_forgotten: u32,
    /// Retries reserved from the budget (the most a request may use), retries Envoy made,
    /// and retries the budget refused to reserve; the budget level of the last destination
    /// a request drew from.
    pub retries_allowed: u32,
    pub retries_used: u32,
    pub retries_denied_budget: u32,
    pub retry_budget_available: u32,
    /// Requests refused by an open breaker, client-side throttling, a full bulkhead; and
    /// the refusals a dry-run only counted.
    pub breaker_rejected: u32,
    pub throttle_rejected: u32,
    pub bulkhead_rejected: u32,
    pub guard_dry_run_rejections: u32,
    /// Breaker transitions, and the guarded destinations whose breaker is open (tick).
    pub breaker_opened: u32,
    pub breaker_closed: u32,
    pub breakers_open: u32,
    /// Client-side throttling probability of the last destination a request went to, in
    /// per mille.
    pub throttle_probability_permille: u32,
    /// Admission (inbound): admitted and shed by priority class (critical, default,
    /// sheddable), shed by the token bucket, refusals only counted in dry-run, and the
    /// limiter's gauges.
    pub admitted: [u32; 3],
    pub shed: [u32; 3],
    pub rate_limited: u32,
    pub admission_dry_run_shed: u32,
    pub admission_limit: u32,
    pub admission_in_flight: u32,
    pub limit_changes: u32,
    /// Emergency switches: requests killed and shed, and the switch states (tick and on
    /// every change through this worker's control endpoint).
    pub killed: u32,
    pub emergency_shed: u32,
    pub switch_kill_rules: u32,
    pub switch_shed_sheddable_percent: u32,
    pub switch_shed_default_percent: u32,
    pub switch_freeze: u32,
    pub switch_dry_run: u32,
    /// Control endpoint: requests served, refused for a wrong or missing token, changes.
    pub control_requests: u32,
    pub control_unauthorized: u32,
    pub control_changes: u32,
}

impl Metrics {
    /// Defines (or, on a reconfiguration with the same tags, looks up) every metric.
    pub fn define(tags: &[(String, String)]) -> Result<Metrics, Status> {
        let encoded: String = tags
            .iter()
            .map(|(name, value)| format!("{name}=.={value};.;"))
            .collect();
        // Every name below starts with `reflex_`; the tags go right after it.
        let tagged = |name: &str| {
            let rest = name.trim_start_matches("reflex_");
            format!("reflex_{encoded}{rest}")
        };
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, &tagged(name));
        let gauge = |name: &str| hostcalls::define_metric(MetricType::Gauge, &tagged(name));
        let by_detector = |d: Detector| counter(&format!("reflex_ejections_{}_total", d.name()));
        Ok(Metrics {
            requests: counter("reflex_requests_total")?,
            steering_header_stripped: counter("reflex_steering_header_stripped_total")?,
            picks: counter("reflex_picks_total")?,
            dry_run_picks: counter("reflex_dry_run_picks_total")?,
            unsteered: counter("reflex_unsteered_total")?,
            explored: counter("reflex_explored_total")?,
            endpoint_observations: counter("reflex_endpoint_observations_total")?,
            endpoint_table_overflow: counter("reflex_endpoint_table_overflow_total")?,
            shared_state_errors: counter("reflex_shared_state_errors_total")?,
            ejections: counter("reflex_ejections_total")?,
            ejections_by: [
                by_detector(Detector::Consecutive5xx)?,
                by_detector(Detector::ConsecutiveGateway)?,
                by_detector(Detector::FailurePercentage)?,
                by_detector(Detector::SuccessRate)?,
                by_detector(Detector::Latency)?,
            ],
            dry_run_ejections: counter("reflex_dry_run_ejections_total")?,
            ejections_blocked: counter("reflex_ejections_blocked_total")?,
            endpoint_returns: counter("reflex_endpoint_returns_total")?,
            probe_failures: counter("reflex_probe_failures_total")?,
            status_requests: counter("reflex_status_requests_total")?,
            tracked_clusters: gauge("reflex_tracked_clusters")?,
            tracked_endpoints: gauge("reflex_tracked_endpoints")?,
            ejected_endpoints: gauge("reflex_ejected_endpoints")?,
            panic_clusters: gauge("reflex_panic_clusters")?,
            endpoints_forgotten: counter("reflex_endpoints_forgotten_total")?,
            retries_allowed: counter("reflex_retries_allowed_total")?,
            retries_used: counter("reflex_retries_used_total")?,
            retries_denied_budget: counter("reflex_retries_denied_budget_total")?,
            retry_budget_available: gauge("reflex_retry_budget_available")?,
            breaker_rejected: counter("reflex_breaker_rejected_total")?,
            throttle_rejected: counter("reflex_throttle_rejected_total")?,
            bulkhead_rejected: counter("reflex_bulkhead_rejected_total")?,
            guard_dry_run_rejections: counter("reflex_guard_dry_run_rejections_total")?,
            breaker_opened: counter("reflex_breaker_opened_total")?,
            breaker_closed: counter("reflex_breaker_closed_total")?,
            breakers_open: gauge("reflex_breakers_open")?,
            throttle_probability_permille: gauge("reflex_throttle_probability_permille")?,
            admitted: [
                counter("reflex_admitted_critical_total")?,
                counter("reflex_admitted_default_total")?,
                counter("reflex_admitted_sheddable_total")?,
            ],
            shed: [
                counter("reflex_shed_critical_total")?,
                counter("reflex_shed_default_total")?,
                counter("reflex_shed_sheddable_total")?,
            ],
            rate_limited: counter("reflex_rate_limited_total")?,
            admission_dry_run_shed: counter("reflex_admission_dry_run_shed_total")?,
            admission_limit: gauge("reflex_admission_limit")?,
            admission_in_flight: gauge("reflex_admission_in_flight")?,
            limit_changes: counter("reflex_admission_limit_changes_total")?,
            killed: counter("reflex_killed_total")?,
            emergency_shed: counter("reflex_emergency_shed_total")?,
            switch_kill_rules: gauge("reflex_switch_kill_rules")?,
            switch_shed_sheddable_percent: gauge("reflex_switch_shed_sheddable_percent")?,
            switch_shed_default_percent: gauge("reflex_switch_shed_default_percent")?,
            switch_freeze: gauge("reflex_switch_freeze")?,
            switch_dry_run: gauge("reflex_switch_dry_run")?,
            control_requests: counter("reflex_control_requests_total")?,
            control_unauthorized: counter("reflex_control_unauthorized_total")?,
            control_changes: counter("reflex_control_changes_total")?,
        })
    }

    /// Adds to a counter. A metric update failing is not worth failing a request over.
    pub fn add(id: u32, n: u64) {
        let _ = hostcalls::increment_metric(id, n as i64);
    }

    pub fn set(id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

impl Metrics {
    /// Index of a priority class in the per-class counters.
    pub fn class(priority: crate::core::priority::Priority) -> usize {
        match priority {
            crate::core::priority::Priority::Critical => 0,
            crate::core::priority::Priority::Default => 1,
            crate::core::priority::Priority::Sheddable => 2,
        }
    }

    /// The switch-state gauges.
    pub fn switches(
        &self,
        switches: &crate::core::emergency::Switches,
        now: crate::core::time::Instant,
    ) {
        let active = switches.active(now);
        let shed = active.shed_at(now);
        Metrics::set(self.switch_kill_rules, active.kill.len() as u64);
        Metrics::set(
            self.switch_shed_sheddable_percent,
            shed.map_or(0, |s| u64::from(s.sheddable_percent)),
        );
        Metrics::set(
            self.switch_shed_default_percent,
            shed.map_or(0, |s| u64::from(s.default_percent)),
        );
        Metrics::set(self.switch_freeze, u64::from(active.frozen(now)));
        Metrics::set(self.switch_dry_run, u64::from(active.dry_run(now)));
    }
}
