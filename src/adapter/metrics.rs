//! reflex's Prometheus metrics, defined once per VM. Envoy keeps custom wasm metrics in the
//! `wasmcustom` stat namespace and exports them without prefix on `/stats/prometheus`, so the
//! names below are what an SRE queries. Counters end in `_total`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};

#[derive(Clone, Copy)]
pub struct Metrics {
    /// Requests the filter saw (every request through the listener).
    pub requests: u32,
    /// Requests that arrived carrying the steering header, which reflex removed.
    pub steering_header_stripped: u32,
    /// Upstream responses recorded in the shared endpoint table.
    pub endpoint_observations: u32,
    /// Responses not recorded because a table cap (clusters or endpoints) was reached.
    pub endpoint_table_overflow: u32,
    /// Shared-state updates dropped after losing every CAS attempt, or refused by the host.
    pub shared_state_errors: u32,
    /// Requests answered by the status endpoint.
    pub status_requests: u32,
    /// Gauges: what the shared table tracks, as of the last tick.
    pub tracked_clusters: u32,
    pub tracked_endpoints: u32,
    /// Endpoints forgotten after `endpoints.forgetAfter` without traffic.
    pub endpoints_forgotten: u32,
}

impl Metrics {
    pub fn define() -> Result<Metrics, Status> {
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name);
        let gauge = |name| hostcalls::define_metric(MetricType::Gauge, name);
        Ok(Metrics {
            requests: counter("reflex_requests_total")?,
            steering_header_stripped: counter("reflex_steering_header_stripped_total")?,
            endpoint_observations: counter("reflex_endpoint_observations_total")?,
            endpoint_table_overflow: counter("reflex_endpoint_table_overflow_total")?,
            shared_state_errors: counter("reflex_shared_state_errors_total")?,
            status_requests: counter("reflex_status_requests_total")?,
            tracked_clusters: gauge("reflex_tracked_clusters")?,
            tracked_endpoints: gauge("reflex_tracked_endpoints")?,
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
