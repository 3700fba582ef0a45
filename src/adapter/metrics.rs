//! reflex's Prometheus metrics, defined once per VM. Envoy keeps custom wasm metrics in the
//! `wasmcustom` stat namespace and exports them without prefix on `/stats/prometheus`, so the
//! names below are what an SRE queries. Counters end in `_total`. Envoy's wasm ABI has no
//! labels, so per-detector counts are separate names.

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
}

impl Metrics {
    pub fn define() -> Result<Metrics, Status> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name);
        let gauge = |name: &str| hostcalls::define_metric(MetricType::Gauge, name);
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
