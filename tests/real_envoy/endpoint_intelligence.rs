//! P2C steering and outlier ejection in a real Envoy, on the harness's upstreams: faults are
//! injected mid-run under constant-rate load, and what each upstream actually served is the
//! evidence.

use crate::support::*;
use reflex_harness::load::{open_loop, OpenLoop, RequestSpec};
use reflex_harness::{Behaviour, Envoy, LoadReport, ProxyConfig, Upstream};
use std::net::SocketAddr;
use std::time::Duration;

const STATUS: &str = "/.reflex/status";

fn healthy() -> Behaviour {
    Behaviour::ok().with_latency_ms(4, 2)
}

/// `n` upstreams (4 ms ± 2) behind Envoy with `workers` workers, reflex steering them with
/// `config` (status endpoint added).
fn setup(n: usize, workers: u32, config: &str) -> (Vec<Upstream>, Envoy, SocketAddr) {
    let ups = upstreams(n);
    ups.iter().for_each(|u| u.set_behaviour(healthy()));
    let mut proxy = ProxyConfig::new(&addrs(&ups)).with_http_filter(reflex_filter(config));
    proxy.cluster = reflex_harness::envoy::steered_cluster();
    let envoy = start(proxy.render(), workers);
    let addr = envoy.listener_addr("ingress").unwrap();
    (ups, envoy, addr)
}

fn load(addr: SocketAddr, rps: f64, secs: f64) -> LoadReport {
    open_loop(
        addr,
        &RequestSpec::get("/work"),
        &OpenLoop {
            rps,
            duration: Duration::from_secs_f64(secs),
            grace: Duration::from_secs(2),
            ..Default::default()
        },
    )
}

fn served(u: &Upstream) -> u64 {
    u.stats().requests
}

fn endpoint_state(addr: SocketAddr, endpoint: &Upstream) -> (String, Option<String>) {
    let doc = status(addr, STATUS);
    let address = endpoint.addr().to_string();
    for ep in doc["clusters"][0]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if ep["address"] == address.as_str() {
            return (
                ep["state"].as_str().unwrap_or_default().to_string(),
                ep["lastEjectionReason"].as_str().map(str::to_string),
            );
        }
    }
    panic!("{address} not in status: {doc}");
}

#[test]
fn dead_endpoint_stops_receiving_traffic_within_a_second_with_four_workers() {
    let config = r#"{"version": 1, "status": {"enabled": true}}"#;
    let (ups, envoy, addr) = setup(5, 4, config);
    let warm = load(addr, 200.0, 2.0);
    assert_eq!(warm.ok(), warm.sent, "{}", warm.summary());

    ups[3].set_behaviour(Behaviour::ok().with_status_mix(&[(503, 1)]));
    let onset = load(addr, 200.0, 1.0);
    let before = served(&ups[3]);
    let after = load(addr, 200.0, 2.0);
    let leaked = served(&ups[3]) - before;
    assert_eq!(
        leaked, 0,
        "the dead endpoint still got {leaked} requests 1-3 s after onset"
    );
    assert_eq!(after.ok(), after.sent, "{}", after.summary());
    // Until ejection, a few requests failed: that is the detection cost.
    assert!(onset.sent - onset.ok() < 20, "{}", onset.summary());
    let (state, reason) = endpoint_state(addr, &ups[3]);
    assert_eq!(state, "ejected");
    assert_eq!(reason.as_deref(), Some("consecutiveGatewayFailure"));
    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "reflex_ejections_consecutiveGatewayFailure_total"),
        Some(1)
    );
    envoy
        .wait_for_log("reflex ejected", Duration::from_secs(2))
        .unwrap();
}

#[test]
fn slow_endpoint_loses_its_share_and_p99_stays_near_healthy() {
    // Latency detector off: this is P2C alone.
    let config = r#"{"version": 1, "status": {"enabled": true},
        "outlierDetection": {"latency": {"enabled": false}}}"#;
    let (ups, _envoy, addr) = setup(5, 2, config);
    // Past the discovery phase (exploration is raised for 5 s after the last new endpoint),
    // which by design still sends some requests wherever the fallback policy likes.
    let baseline = load(addr, 150.0, 6.0);
    let healthy_p99 = baseline.percentile(99.0).unwrap();

    ups[2].set_behaviour(Behaviour::ok().with_latency_ms(40, 4));
    load(addr, 150.0, 2.0);
    let before = served(&ups[2]);
    let measured = load(addr, 150.0, 3.0);
    let slow_share = (served(&ups[2]) - before) as f64 / measured.sent as f64;
    // Fair share is 20%; reflex must keep it under a tenth of that.
    assert!(
        slow_share < 0.02,
        "slow endpoint served {:.1}% of requests\n{}",
        slow_share * 100.0,
        status(addr, STATUS)
    );
    let p99 = measured.percentile(99.0).unwrap();
    assert!(
        p99 <= healthy_p99 * 2 + Duration::from_millis(3),
        "p99 {p99:?} vs healthy {healthy_p99:?}"
    );
    assert_eq!(measured.ok(), measured.sent);
}

#[test]
fn slow_endpoint_is_ejected_by_the_latency_detector() {
    let config = r#"{"version": 1, "status": {"enabled": true}, "tickInterval": "250ms",
        "outlierDetection": {"latency": {"factor": 3, "minLatency": "10ms", "for": "1s"}}}"#;
    let (ups, envoy, addr) = setup(5, 2, config);
    load(addr, 150.0, 2.0);
    ups[1].set_behaviour(Behaviour::ok().with_latency_ms(40, 4));
    load(addr, 150.0, 3.0);
    let ejected = eventually(Duration::from_secs(3), || {
        let prom = envoy.prometheus().ok()?;
        (prometheus_value(&prom, "reflex_ejections_latency_total")? >= 1).then_some(())
    });
    assert!(
        ejected.is_some(),
        "latency detector did not eject: {}",
        status(addr, STATUS)
    );
    assert_eq!(endpoint_state(addr, &ups[1]).1.as_deref(), Some("latency"));
}

#[test]
fn flaky_endpoint_is_ejected_by_success_rate() {
    // Only the statistical detector is on, so the ejection can only come from it.
    let config = r#"{"version": 1, "status": {"enabled": true}, "tickInterval": "250ms",
        "outlierDetection": {"consecutive5xx": {"enabled": false},
            "consecutiveGatewayFailure": {"enabled": false},
            "failurePercentage": {"enabled": false}, "latency": {"enabled": false},
            "successRate": {"minVolume": 10}}}"#;
    let (ups, envoy, addr) = setup(5, 2, config);
    load(addr, 200.0, 1.0);
    ups[0].set_behaviour(healthy().with_status_mix(&[(200, 7), (503, 3)]));
    load(addr, 200.0, 3.0);
    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "reflex_ejections_successRate_total"),
        Some(1),
        "{prom}"
    );
    assert_eq!(prometheus_value(&prom, "reflex_ejections_total"), Some(1));
    assert_eq!(
        endpoint_state(addr, &ups[0]),
        ("ejected".to_string(), Some("successRate".to_string()))
    );
}

#[test]
fn panic_floor_holds_when_most_endpoints_fail() {
    let config = r#"{"version": 1, "status": {"enabled": true}, "tickInterval": "250ms",
        "outlierDetection": {"maxEjectionPercent": 50, "panicThresholdPercent": 50}}"#;
    let (ups, envoy, addr) = setup(5, 2, config);
    load(addr, 150.0, 1.0);
    for u in &ups[1..] {
        u.set_behaviour(Behaviour::ok().with_status_mix(&[(503, 1)]));
    }
    load(addr, 150.0, 3.0);
    let prom = envoy.prometheus().unwrap();
    // 50% of 5 endpoints: at most 2 ejected, whatever the detectors say.
    let reflex_lines: Vec<&str> = prom.lines().filter(|l| l.starts_with("reflex_")).collect();
    assert_eq!(
        prometheus_value(&prom, "reflex_ejections_total"),
        Some(2),
        "{reflex_lines:?}\n{}",
        envoy.log()
    );
    assert!(prometheus_value(&prom, "reflex_ejections_blocked_total").unwrap_or(0) >= 1);
    let panicking = eventually(Duration::from_secs(2), || {
        let prom = envoy.prometheus().ok()?;
        (prometheus_value(&prom, "reflex_panic_clusters")? == 1).then_some(())
    });
    assert!(panicking.is_some(), "reflex_panic_clusters never reached 1");
    assert_eq!(status(addr, STATUS)["clusters"][0]["panic"], true);
    envoy
        .wait_for_log("reflex panic in", Duration::from_secs(2))
        .unwrap();
}

#[test]
fn recovered_endpoint_returns_through_probes_and_keeps_a_fair_share() {
    let config = r#"{"version": 1, "status": {"enabled": true}, "tickInterval": "250ms",
        "loadBalancing": {"slowStart": "1s"},
        "outlierDetection": {"baseEjectionTime": "1s", "probes": 3}}"#;
    let (ups, envoy, addr) = setup(4, 2, config);
    load(addr, 120.0, 1.0);
    ups[2].set_behaviour(Behaviour::ok().with_status_mix(&[(503, 1)]));
    let ejected = (0..6).any(|_| {
        load(addr, 120.0, 0.5);
        endpoint_state(addr, &ups[2]).0 == "ejected"
    });
    assert!(ejected, "{}", status(addr, STATUS));
    ups[2].set_behaviour(healthy());
    // Ejection (1 s ± 10%) expires, probes pass, slow start (1 s) ends.
    load(addr, 120.0, 3.0);
    assert_eq!(
        endpoint_state(addr, &ups[2]).0,
        "healthy",
        "{}\n{}",
        status(addr, STATUS),
        envoy.log()
    );
    // Back to a fair share: P2C shares follow measured latency, so "fair" means treated like
    // its peers, not exactly a quarter.
    let before: Vec<u64> = ups.iter().map(served).collect();
    let measured = load(addr, 120.0, 3.0);
    let shares: Vec<u64> = ups
        .iter()
        .zip(&before)
        .map(|(u, b)| served(u) - b)
        .collect();
    assert!(
        shares[2] * 20 >= measured.sent,
        "returned endpoint served {} of {} requests, peers {shares:?}\n{}",
        shares[2],
        measured.sent,
        status(addr, STATUS)
    );
    assert_eq!(measured.ok(), measured.sent, "{}", measured.summary());
    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "reflex_endpoint_returns_total"),
        Some(1),
        "{prom}"
    );
    assert_eq!(
        prometheus_value(&prom, "reflex_ejections_total"),
        Some(1),
        "it flapped: {prom}"
    );
    assert_eq!(
        prometheus_value(&prom, "reflex_probe_failures_total"),
        Some(0),
        "it failed a probe: {prom}"
    );
}

#[test]
fn dry_run_detector_reports_but_keeps_the_endpoint_in_service() {
    let config = r#"{"version": 1, "status": {"enabled": true},
        "loadBalancing": {"errorWeight": 0},
        "outlierDetection": {"consecutiveGatewayFailure": {"dryRun": true},
            "consecutive5xx": {"dryRun": true}, "failurePercentage": {"dryRun": true},
            "successRate": {"dryRun": true}}}"#;
    let (ups, envoy, addr) = setup(3, 2, config);
    load(addr, 100.0, 1.0);
    ups[0].set_behaviour(Behaviour::ok().with_status_mix(&[(503, 1)]));
    load(addr, 100.0, 1.0);
    let before = served(&ups[0]);
    load(addr, 100.0, 1.0);
    assert!(
        served(&ups[0]) - before > 10,
        "dry-run ejection removed the endpoint"
    );
    let prom = envoy.prometheus().unwrap();
    assert!(
        prometheus_value(&prom, "reflex_dry_run_ejections_total").unwrap_or(0) >= 1,
        "{prom}"
    );
    assert_eq!(prometheus_value(&prom, "reflex_ejections_total"), Some(0));
    assert_eq!(endpoint_state(addr, &ups[0]).0, "ejected-dry-run");
}

#[test]
fn retries_cannot_hide_a_failing_endpoint() {
    // With a retry policy, the HTTP filter sees only the final attempt; reflex infers the
    // earlier failed attempts from the order it wrote into the steering header.
    let config = r#"{"version": 1, "status": {"enabled": true}}"#;
    let ups = upstreams(5);
    ups.iter().for_each(|u| u.set_behaviour(healthy()));
    let mut proxy = ProxyConfig::new(&addrs(&ups)).with_http_filter(reflex_filter(config));
    proxy.cluster = reflex_harness::envoy::steered_cluster();
    proxy.route = serde_json::json!({"retry_policy": {
        "retry_on": "5xx,reset,connect-failure",
        "num_retries": 2,
        // What any retry policy should have: a retry never goes back to the host that failed.
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 3
    }});
    let envoy = start(proxy.render(), 2);
    let addr = envoy.listener_addr("ingress").unwrap();
    load(addr, 150.0, 1.5);
    ups[4].set_behaviour(Behaviour::ok().with_status_mix(&[(503, 1)]));
    let during = load(addr, 150.0, 1.0);
    // Retries to other endpoints saved every request...
    assert_eq!(during.ok(), during.sent, "{}", during.summary());
    // ...but the failing endpoint was still detected and ejected.
    // (Whichever detector gets there first: the inferred attempts feed all of them.)
    assert_eq!(endpoint_state(addr, &ups[4]).0, "ejected");
    let before = served(&ups[4]);
    let after = load(addr, 150.0, 1.5);
    assert_eq!(served(&ups[4]) - before, 0);
    assert_eq!(after.ok(), after.sent);
}

#[test]
fn hanging_endpoint_is_ejected_through_the_time_clients_waited() {
    // No route timeout: the only signal is clients giving up. Their wait is a latency sample
    // (not an error: a client leaving says nothing else about the endpoint).
    let config = r#"{"version": 1, "status": {"enabled": true}, "tickInterval": "250ms",
        "outlierDetection": {"latency": {"for": "1s"}}}"#;
    let (ups, envoy, addr) = setup(5, 2, config);
    let impatient = |secs: f64| {
        open_loop(
            addr,
            &RequestSpec::get("/work"),
            &OpenLoop {
                rps: 150.0,
                duration: Duration::from_secs_f64(secs),
                timeout: Duration::from_millis(300),
                grace: Duration::from_secs(1),
                ..Default::default()
            },
        )
    };
    impatient(2.0);
    ups[3].set_behaviour(Behaviour::ok().with_hang(true));
    impatient(4.0);
    let ejected = eventually(Duration::from_secs(2), || {
        let prom = envoy.prometheus().ok()?;
        (prometheus_value(&prom, "reflex_ejections_latency_total")? >= 1).then_some(())
    });
    assert!(
        ejected.is_some(),
        "hanging endpoint not ejected: {}",
        status(addr, STATUS)
    );
    let before = served(&ups[3]);
    let after = impatient(2.0);
    assert_eq!(served(&ups[3]) - before, 0);
    assert_eq!(after.ok(), after.sent, "{}", after.summary());
    ups[3].set_behaviour(healthy());
}
