//! Traffic handled by different Envoy workers lands in one shared endpoint table: the counts
//! reflex reports equal what each upstream actually saw.

use crate::support::*;
use reflex_harness::load::{closed_loop, ClosedLoop, RequestSpec};
use reflex_harness::{Behaviour, ProxyConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

const CONFIG: &str = r#"{"version": 1, "status": {"enabled": true, "path": "/.reflex/status"}}"#;

/// Per endpoint address: (requests, failures) as the status endpoint reports them.
fn reported(doc: &Value) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for cluster in doc["clusters"].as_array().into_iter().flatten() {
        for ep in cluster["endpoints"].as_array().into_iter().flatten() {
            let address = ep["address"].as_str().unwrap_or_default().to_string();
            out.insert(
                address,
                (
                    ep["requests"].as_u64().unwrap_or(0),
                    ep["failures"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    out
}

#[test]
fn four_workers_count_into_one_table_that_matches_the_upstreams() {
    let ups = upstreams(3);
    // One endpoint fails a fifth of its requests, so failure counts are checked too.
    ups[2].set_behaviour(Behaviour::ok().with_status_mix(&[(200, 4), (503, 1)]));
    let yaml = ProxyConfig::new(&addrs(&ups))
        .with_http_filter(reflex_filter(CONFIG))
        .render();
    let envoy = start(yaml, 4);
    let addr = envoy.listener_addr("ingress").unwrap();

    // Many short connections spread over the workers (Envoy balances connections, not
    // requests, across workers).
    let spec = RequestSpec::get("/work").with_header("connection", "close");
    let report = closed_loop(
        addr,
        &spec,
        &ClosedLoop {
            requests: 600,
            threads: 6,
            timeout: Duration::from_secs(10),
        },
    );
    assert_eq!(report.responses(), 600, "{}", report.summary());

    let workers_used = envoy
        .stats_matching(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$")
        .unwrap()
        .values()
        .filter(|&&n| n > 0)
        .count();
    assert!(
        workers_used >= 2,
        "traffic reached only {workers_used} worker(s)"
    );

    let expected: BTreeMap<String, (u64, u64)> = ups
        .iter()
        .map(|u| {
            let stats = u.stats();
            let failures: u64 = stats.by_status.range(500..).map(|(_, n)| n).sum();
            (u.addr().to_string(), (stats.requests, failures))
        })
        .collect();
    assert!(
        expected.values().map(|e| e.1).sum::<u64>() > 0,
        "the failing upstream never failed"
    );

    // The last responses' bookkeeping may still be running when the client has its answer.
    let got = eventually(Duration::from_secs(5), || {
        let got = reported(&status(addr, "/.reflex/status"));
        (got == expected).then_some(got)
    });
    assert_eq!(
        got,
        Some(expected.clone()),
        "status endpoint disagrees with the upstreams: {:?} vs {expected:?}",
        reported(&status(addr, "/.reflex/status"))
    );

    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "reflex_endpoint_observations_total"),
        Some(600)
    );
    assert_eq!(
        prometheus_value(&prom, "reflex_shared_state_errors_total"),
        Some(0)
    );
    // This cluster is not marked for steering: reflex observes it, and may only report what
    // it would eject.
    assert_eq!(prometheus_value(&prom, "reflex_ejections_total"), Some(0));
}
