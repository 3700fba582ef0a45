//! The JSON document served at `status.path`: what reflex knows and decided, as every worker
//! sees it, with the reason for each endpoint's state.

use crate::core::time::Instant;
use crate::state::table::{EndpointSnapshot, TableSnapshot};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDocument<'a> {
    version: &'a str,
    git_sha: &'a str,
    now_ms: u64,
    clusters: Vec<ClusterStatus<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterStatus<'a> {
    name: &'a str,
    requests: u64,
    failures: u64,
    /// Too few healthy endpoints: reflex spreads load over all and ejects no more.
    panic: bool,
    endpoints: Vec<EndpointStatus<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointStatus<'a> {
    address: &'a str,
    /// `healthy`, `ejected`, `probing`, or `ejected-dry-run` (decided, not enforced).
    state: &'static str,
    /// While ejected: Unix time in ms when probing starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    ejected_until_ms: Option<u64>,
    /// The detector behind the most recent ejection, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_ejection_reason: Option<&'static str>,
    ejections: u32,
    requests: u64,
    failures: u64,
    consecutive_5xx: u32,
    consecutive_gateway_failures: u32,
    /// The P2C cost inputs and the resulting cost (lower is better).
    latency_ms: f64,
    in_flight: u32,
    error_rate: f64,
    slow_start_ramp: f64,
    cost: f64,
    /// Unix time in milliseconds of the last response from this endpoint.
    last_seen_ms: u64,
}

fn endpoint_status(e: &EndpointSnapshot, now: Instant) -> EndpointStatus<'_> {
    let ejection = &e.member.ejection;
    let state = match ejection.active {
        None => "healthy",
        Some(a) if a.dry_run => "ejected-dry-run",
        Some(_) if ejection.is_probing(now) => "probing",
        Some(_) => "ejected",
    };
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    EndpointStatus {
        address: &e.member.address,
        state,
        ejected_until_ms: ejection.active.map(|a| a.until.0),
        last_ejection_reason: ejection.last_detector.map(|d| d.name()),
        ejections: ejection.count,
        requests: e.record.requests,
        failures: e.record.failures,
        consecutive_5xx: e.record.consecutive_5xx,
        consecutive_gateway_failures: e.record.consecutive_gateway,
        latency_ms: round(e.load.latency_us / 1_000.0, 3),
        in_flight: e.load.in_flight,
        error_rate: round(e.load.error_rate, 4),
        slow_start_ramp: round(e.load.ramp, 3),
        cost: round(e.cost, 1),
        last_seen_ms: e.record.last_seen.0,
    }
}

/// Renders the status document; per-cluster totals are summed here, never stored.
pub fn render(snapshot: &TableSnapshot, now: Instant) -> String {
    let clusters = snapshot
        .clusters
        .iter()
        .map(|cluster| {
            let endpoints: Vec<EndpointStatus> = cluster
                .endpoints
                .iter()
                .map(|e| endpoint_status(e, now))
                .collect();
            ClusterStatus {
                name: &cluster.name,
                requests: endpoints.iter().map(|e| e.requests).sum(),
                failures: endpoints.iter().map(|e| e.failures).sum(),
                panic: cluster.panic,
                endpoints,
            }
        })
        .collect();
    let document = StatusDocument {
        version: crate::VERSION,
        git_sha: crate::GIT_SHA,
        now_ms: now.0,
        clusters,
    };
    // Serializing plain structs of strings and numbers cannot fail; an empty object is still
    // valid JSON if it somehow did.
    serde_json::to_string_pretty(&document).unwrap_or_else(|_| "{}".to_string())
}
