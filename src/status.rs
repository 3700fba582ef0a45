//! The JSON document served at `status.path`: what reflex knows and decided, as every worker
//! sees it, with the reason for each endpoint's state.

use crate::config::Config;
use crate::core::time::Instant;
use crate::state::admission::AdmissionState;
use crate::state::guard::{self, Guard, Policies};
use crate::state::table::{EndpointSnapshot, TableSnapshot};
use serde::Serialize;
use serde_json::{json, Map, Value};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDocument<'a> {
    version: &'a str,
    git_sha: &'a str,
    now_ms: u64,
    clusters: Vec<ClusterStatus<'a>>,
    /// Breakers, budgets, bulkheads and throttles per guarded destination, the admission
    /// controller and the emergency switches (see [`guards`], [`admission`]).
    #[serde(flatten)]
    extra: Map<String, Value>,
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

/// Milliseconds since the epoch as RFC 3339 (UTC), so `since` reads without a converter.
pub fn rfc3339(at: Instant) -> String {
    let secs = at.0 / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        at.0 % 1_000
    )
}

/// The `breakers` and `retryBudgets` sections: one entry per guarded destination.
pub fn guards(
    destinations: &[(String, Guard)],
    config: &Config,
    now: Instant,
) -> Map<String, Value> {
    let mut breakers = Vec::new();
    let mut budgets = Vec::new();
    for (name, guard) in destinations {
        let policies = Policies::for_cluster(config, guard::cluster_of(name));
        if policies.breaker.enabled {
            let b = &guard.breaker;
            let reason = b.reason.map(|r| match r {
                crate::core::breaker::BreakerReason::ErrorRate {
                    rate_permille,
                    volume,
                } => format!(
                    "error rate {:.1}% over {volume} requests",
                    f64::from(rate_permille) / 10.0
                ),
                crate::core::breaker::BreakerReason::ConsecutiveFailures(n) => {
                    format!("{n} consecutive failures")
                }
                crate::core::breaker::BreakerReason::ProbeFailed => "half-open probe failed".into(),
            });
            breakers.push(json!({
                "destination": guard::display(name),
                "state": b.state.name(),
                "since": rfc3339(b.since),
                "reason": reason,
                "dryRun": policies.breaker.dry_run,
            }));
        }
        if policies.retries.enabled {
            budgets.push(json!({
                "destination": guard::display(name),
                "available": (guard.budget.available(now, &policies.retries.budget) * 10.0).round() / 10.0,
                "bulkheadInFlight": guard.bulkhead.effective(now),
            }));
        }
    }
    let mut out = Map::new();
    out.insert("breakers".into(), Value::Array(breakers));
    out.insert("retryBudgets".into(), Value::Array(budgets));
    out
}

/// The `admission` section: the adaptive limiter as all workers see it.
pub fn admission(state: &AdmissionState, config: &Config) -> Value {
    let l = &state.limiter;
    json!({
        "enabled": config.admission.enabled,
        "dryRun": config.admission.dry_run,
        "limit": l.limit(),
        "inFlight": l.in_flight(),
        "noLoadMs": l.no_load_ms(),
        "lastSampleMs": l.last_sample_ms(),
        "windowStartedAt": rfc3339(l.window_start()),
    })
}

/// Renders the status document; per-cluster totals are summed here, never stored.
pub fn render(snapshot: &TableSnapshot, now: Instant, extra: Map<String, Value>) -> String {
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
        extra,
    };
    // Serializing plain structs of strings and numbers cannot fail; an empty object is still
    // valid JSON if it somehow did.
    serde_json::to_string_pretty(&document).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(Instant(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(Instant(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339(Instant(1_795_383_606_004)),
            "2026-11-22T21:40:06.004Z"
        );
    }

    #[test]
    fn open_breaker_is_reported_with_since_and_reason() {
        let config =
            Config::parse(br#"{"version": 1, "circuitBreaker": {"enabled": true}}"#).unwrap();
        let mut guard = Guard::default();
        guard.breaker.state = crate::core::breaker::BreakerState::Open;
        guard.breaker.since = Instant(1_000);
        guard.breaker.reason = Some(crate::core::breaker::BreakerReason::ErrorRate {
            rate_permille: 625,
            volume: 16,
        });
        let out = guards(&[("c".into(), guard)], &config, Instant(2_000));
        let b = &out["breakers"][0];
        assert_eq!(b["state"], "open");
        assert_eq!(b["since"], "1970-01-01T00:00:01.000Z");
        assert_eq!(b["reason"], "error rate 62.5% over 16 requests");
    }
}
