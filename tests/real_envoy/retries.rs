//! Retries under a budget, adaptive per-try timeouts, circuit breaking and the bulkhead, in a
//! real Envoy. The evidence is what the upstreams counted (every attempt reaches one) and
//! what the client saw.

use crate::support::*;
use reflex_harness::envoy::{retry_route, steered_cluster};
use reflex_harness::load::{closed_loop, open_loop, ClosedLoop, OpenLoop, RequestSpec};
use reflex_harness::{Behaviour, Client, Envoy, LoadReport, ProxyConfig, Upstream};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `n` upstreams behind Envoy (`workers` workers) with reflex configured by `config` and the
/// shipped retry route; `steered` installs the override_host cluster.
fn setup(
    n: usize,
    workers: u32,
    steered: bool,
    config: &str,
) -> (Vec<Upstream>, Envoy, SocketAddr) {
    let ups = upstreams(n);
    let mut proxy = ProxyConfig::new(&addrs(&ups)).with_http_filter(reflex_filter(config));
    proxy.route = retry_route();
    if steered {
        proxy.cluster = steered_cluster();
    }
    let envoy = start(proxy.render(), workers);
    let addr = envoy.listener_addr("ingress").unwrap();
    (ups, envoy, addr)
}

fn attempts(ups: &[Upstream]) -> u64 {
    ups.iter().map(|u| u.stats().requests).sum()
}

fn reset(ups: &[Upstream]) {
    ups.iter().for_each(Upstream::reset_stats);
}

fn open(addr: SocketAddr, spec: &RequestSpec, rps: f64, secs: f64) -> LoadReport {
    open_loop(
        addr,
        spec,
        &OpenLoop {
            rps,
            duration: Duration::from_secs_f64(secs),
            grace: Duration::from_secs(3),
            ..Default::default()
        },
    )
}

fn success(report: &LoadReport) -> f64 {
    report.ok() as f64 / report.sent.max(1) as f64
}

/// Outlier detection and P2C off: every request's first attempt lands wherever Envoy's
/// round robin puts it, so two dead endpoints of five fail 40% of first attempts for the
/// whole run and only the budget stands between them and a retry storm.
const NO_EJECTION: &str = r#""loadBalancing": {"enabled": false},
    "outlierDetection": {"consecutive5xx": {"enabled": false},
        "consecutiveGatewayFailure": {"enabled": false}, "failurePercentage": {"enabled": false},
        "successRate": {"enabled": false}, "latency": {"enabled": false}}"#;

#[test]
fn retry_budget_caps_amplification_with_two_of_five_endpoints_dead() {
    let budgeted = format!(
        r#"{{"version": 1, {NO_EJECTION}, "retries": {{"enabled": true, "maxRetries": 2,
            "retryOn": ["retriable-status-codes", "reset", "connect-failure"],
            "retriableStatusCodes": [503],
            "budget": {{"ratio": 0.2, "minPerSecond": 1, "window": "10s"}}}}}}"#
    );
    let unbounded = budgeted.replace(
        r#""ratio": 0.2, "minPerSecond": 1"#,
        r#""ratio": 1.0, "minPerSecond": 10000"#,
    );
    let mut amplification = Vec::new();
    for config in [&budgeted, &unbounded] {
        let (ups, envoy, addr) = setup(5, 2, false, config);
        ups[1].set_behaviour(Behaviour::status(503));
        ups[3].set_behaviour(Behaviour::status(503));
        let report = open(addr, &RequestSpec::get("/work"), 200.0, 4.0);
        let ratio = attempts(&ups) as f64 / report.sent as f64;
        eprintln!(
            "amplification {ratio:.3}, success {:.3}\n{}",
            success(&report),
            report.summary()
        );
        amplification.push((ratio, report.sent));
        if config == &budgeted {
            let prom = envoy.prometheus().unwrap();
            let denied = prometheus_value(&prom, "reflex_retries_denied_budget_total").unwrap();
            assert!(denied > 100, "budget denials {denied}");
            assert!(prometheus_value(&prom, "reflex_retries_allowed_total").unwrap() > 0);
        }
    }
    let (ratio, sent) = amplification[0];
    // 20% of the requests in the window plus the minimum (1/s over the 10 s window).
    let bound = 1.0 + 0.2 + 10.0 / sent as f64;
    assert!(
        ratio <= bound + 0.01,
        "amplification {ratio:.3} > {bound:.3}"
    );
    // The control run shows what the budget prevented (1 + 0.4 + 0.16 without it).
    assert!(
        amplification[1].0 > 1.45,
        "control amplification {:.3}",
        amplification[1].0
    );
}

#[test]
fn two_dead_of_five_with_full_reflex_keep_success_high_and_amplification_low() {
    let config = r#"{"version": 1, "retries": {"enabled": true,
        "retryOn": ["retriable-status-codes", "reset", "connect-failure"],
        "retriableStatusCodes": [503], "budget": {"ratio": 0.2, "minPerSecond": 5}}}"#;
    let (ups, _envoy, addr) = setup(5, 2, true, config);
    open(addr, &RequestSpec::get("/warm"), 150.0, 2.0);
    reset(&ups);
    ups[0].set_behaviour(Behaviour::status(503));
    ups[4].set_behaviour(Behaviour::status(503));
    let report = open(addr, &RequestSpec::get("/work"), 150.0, 4.0);
    let ratio = attempts(&ups) as f64 / report.sent as f64;
    eprintln!("amplification {ratio:.3}\n{}", report.summary());
    assert!(
        success(&report) >= 0.999,
        "success {:.4}\n{}",
        success(&report),
        report.summary()
    );
    assert!(ratio <= 1.2, "amplification {ratio:.3}");
}

#[test]
fn post_is_never_retried_unless_its_route_allows_it() {
    let config = format!(
        r#"{{"version": 1, {NO_EJECTION}, "retries": {{"enabled": true,
            "retryOn": ["retriable-status-codes"], "retriableStatusCodes": [503],
            "budget": {{"minPerSecond": 1000}},
            "routes": [{{"pathPrefix": "/orders/idempotent", "methods": ["POST"]}}]}}}}"#
    );
    let (ups, _envoy, addr) = setup(2, 1, false, &config);
    ups[0].set_behaviour(Behaviour::status(503));
    let mut client = Client::new(addr);
    let send = |client: &mut Client, method: &str, path: &str| {
        client.request(method, path, &[], b"{}").unwrap().status
    };
    // Round robin puts some first attempts on the failing endpoint.
    let posts: Vec<u16> = (0..20)
        .map(|_| send(&mut client, "POST", "/orders"))
        .collect();
    assert_eq!(attempts(&ups), 20, "a POST was retried");
    let failed = posts.iter().filter(|s| **s == 503).count() as u64;
    assert!(failed > 0 && failed == ups[0].stats().requests, "{posts:?}");
    reset(&ups);
    let gets: Vec<u16> = (0..20)
        .map(|_| send(&mut client, "GET", "/orders"))
        .collect();
    assert!(gets.iter().all(|s| *s == 200), "{gets:?}");
    assert!(ups[0].stats().requests > 0);
    assert_eq!(
        attempts(&ups),
        20 + ups[0].stats().requests,
        "each failed GET retried once, on the other endpoint"
    );
    reset(&ups);
    let allowed: Vec<u16> = (0..20)
        .map(|_| send(&mut client, "POST", "/orders/idempotent/1"))
        .collect();
    assert!(allowed.iter().all(|s| *s == 200), "{allowed:?}");
}

#[test]
fn retry_after_is_waited_out_before_the_retry() {
    let config = format!(
        r#"{{"version": 1, {NO_EJECTION}, "retries": {{"enabled": true,
            "retryOn": ["retriable-status-codes"], "retriableStatusCodes": [503],
            "budget": {{"minPerSecond": 1000}}}}}}"#
    );
    let (ups, _envoy, addr) = setup(2, 1, false, &config);
    ups[0].set_behaviour(Behaviour::status(503).with_retry_after(1));
    let mut client = Client::new(addr);
    let mut retried = Vec::new();
    for _ in 0..4 {
        let before = ups[0].stats().requests;
        let t = Instant::now();
        let response = client.get("/work", &[]).unwrap();
        assert_eq!(response.status, 200);
        if ups[0].stats().requests > before {
            retried.push(t.elapsed());
        }
    }
    assert!(
        !retried.is_empty(),
        "round robin sends some requests to the 503 first"
    );
    for latency in retried {
        assert!(
            latency >= Duration::from_millis(950),
            "retried {latency:?} after a Retry-After of 1 s"
        );
    }
}

#[test]
fn hanging_endpoint_costs_at_most_one_per_try_timeout() {
    let config = r#"{"version": 1, "retries": {"enabled": true,
        "retryOn": ["retriable-status-codes", "reset", "connect-failure"],
        "retriableStatusCodes": [503], "budget": {"ratio": 0.2, "minPerSecond": 10},
        "perTryTimeout": {"min": "50ms", "max": "250ms"}}}"#;
    let (ups, _envoy, addr) = setup(5, 2, true, config);
    ups.iter()
        .for_each(|u| u.set_behaviour(Behaviour::ok().with_latency_ms(4, 2)));
    open(addr, &RequestSpec::get("/warm"), 100.0, 3.0);
    ups[2].set_behaviour(Behaviour::ok().with_hang(true));
    let report = open(addr, &RequestSpec::get("/work"), 100.0, 5.0);
    ups[2].set_behaviour(Behaviour::ok());
    eprintln!("{}", report.summary());
    assert!(
        success(&report) >= 0.999,
        "success {:.4}\n{}",
        success(&report),
        report.summary()
    );
    let worst = report.latencies.last().copied().unwrap_or_default();
    // One per-try timeout (at most the configured 250 ms) plus a healthy attempt, not the
    // route's 15 s.
    assert!(
        worst < Duration::from_millis(450),
        "worst latency {worst:?}"
    );
}

#[test]
fn breaker_opens_fails_fast_probes_and_closes() {
    let config = r#"{"version": 1, "status": {"enabled": true},
        "loadBalancing": {"enabled": false},
        "circuitBreaker": {"enabled": true, "minimumRequests": 10, "failureRate": 0.5,
            "sleepWindow": "1s", "halfOpenProbes": 2,
            "localReply": {"status": 503, "body": "breaker open\n",
                "headers": {"x-reflex-breaker": "open"}}}}"#;
    let (ups, envoy, addr) = setup(2, 2, false, config);
    ups.iter()
        .for_each(|u| u.set_behaviour(Behaviour::status(500)));
    let mut client = Client::new(addr);
    for _ in 0..30 {
        client.get("/work", &[]).unwrap();
    }
    let reached = attempts(&ups);
    assert!(
        (10..=12).contains(&reached),
        "{reached} requests reached the upstreams"
    );
    let rejected = client.get("/work", &[]).unwrap();
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.header("x-reflex-breaker"), Some("open"));
    assert_eq!(rejected.text(), "breaker open\n");
    assert_eq!(
        attempts(&ups),
        reached,
        "an open breaker called the upstream"
    );
    let doc = status(addr, "/.reflex/status");
    let breaker = &doc["breakers"][0];
    assert_eq!(breaker["state"], "open", "{doc}");
    assert!(breaker["since"].is_string(), "{doc}");
    assert!(
        breaker["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("error rate"),
        "{doc}"
    );
    // The gauge is refreshed by the housekeeping tick (1 s).
    let open = eventually(Duration::from_secs(3), || {
        let prom = envoy.prometheus().ok()?;
        (prometheus_value(&prom, "reflex_breakers_open") == Some(1)).then_some(prom)
    });
    let prom = open.expect("reflex_breakers_open never reached 1");
    assert!(prometheus_value(&prom, "reflex_breaker_rejected_total").unwrap() >= 18);
    assert_eq!(
        prometheus_value(&prom, "reflex_breaker_opened_total"),
        Some(1)
    );

    // Recovery: after the sleep window, probes go through and close it.
    ups.iter().for_each(|u| u.set_behaviour(Behaviour::ok()));
    std::thread::sleep(Duration::from_millis(1_100));
    let statuses: Vec<u16> = (0..10)
        .map(|_| client.get("/work", &[]).unwrap().status)
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        status(addr, "/.reflex/status")["breakers"][0]["state"],
        "closed"
    );
    envoy
        .wait_for_log("reflex circuit breaker", Duration::from_secs(2))
        .unwrap();
}

#[test]
fn bulkhead_caps_concurrency_across_workers() {
    let config = r#"{"version": 1, "loadBalancing": {"enabled": false},
        "bulkhead": {"enabled": true, "maxConcurrent": 8, "status": 503}}"#;
    let (ups, envoy, addr) = setup(1, 4, false, config);
    ups[0].set_behaviour(Behaviour::ok().with_latency_ms(100, 0));
    let report = closed_loop(
        addr,
        &RequestSpec::get("/work"),
        &ClosedLoop {
            requests: 300,
            threads: 24,
            ..Default::default()
        },
    );
    let stats = ups[0].stats();
    eprintln!(
        "{}\nupstream max concurrent {}",
        report.summary(),
        stats.max_concurrent
    );
    assert!(
        stats.max_concurrent <= 8,
        "{} concurrent",
        stats.max_concurrent
    );
    assert!(
        stats.max_concurrent >= 6,
        "the bulkhead should still admit up to its cap"
    );
    assert!(
        report.status(503) > 0 && report.ok() > 0,
        "{}",
        report.summary()
    );
    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "reflex_bulkhead_rejected_total"),
        Some(report.status(503))
    );
}

#[test]
fn client_side_throttling_backs_off_a_destination_that_keeps_rejecting() {
    let config = r#"{"version": 1, "loadBalancing": {"enabled": false},
        "clientThrottling": {"enabled": true, "k": 2, "window": "1s"}}"#;
    let (ups, envoy, addr) = setup(1, 2, false, config);
    ups[0].set_behaviour(Behaviour::status(429));
    let report = open(addr, &RequestSpec::get("/work"), 100.0, 4.0);
    let reached = ups[0].stats().requests;
    let local = report.sent - reached;
    eprintln!(
        "{} sent, {reached} reached the upstream\n{}",
        report.sent,
        report.summary()
    );
    // Nothing is accepted: the probability climbs towards (n - 0) / (n + 1), so most
    // requests stay local, and some still go through to notice recovery.
    assert!(
        local as f64 > 0.6 * report.sent as f64,
        "{local} of {}",
        report.sent
    );
    assert!(
        reached >= 3,
        "some requests must still probe the destination"
    );
    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "reflex_throttle_rejected_total"),
        Some(local)
    );
    assert!(prometheus_value(&prom, "reflex_throttle_probability_permille").unwrap() > 600);

    // Recovery: the few requests let through are accepted again and each accept lets more
    // through: the share let through grows about k-fold per window, so from a trickle of
    // 1 in N it takes about log_k(N) windows to reopen. Here N is ~100 (100 rps, 1 s
    // window): a simulation of the formula puts a clean second at 3-9 s after recovery
    // (a 2 s window doubles that, which a 15 s wait could not always cover).
    ups[0].set_behaviour(Behaviour::ok());
    let later = eventually(Duration::from_secs(25), || {
        let r = open(addr, &RequestSpec::get("/work"), 100.0, 1.0);
        (r.ok() == r.sent).then_some(())
    });
    assert!(later.is_some(), "throttling never lifted after recovery");
}

#[test]
fn dry_run_decisions_are_explained_in_a_response_header() {
    let config = r#"{"version": 1, "loadBalancing": {"enabled": false},
        "decisionHeader": "x-reflex-decision",
        "bulkhead": {"enabled": true, "dryRun": true, "maxConcurrent": 1}}"#;
    let (ups, _envoy, addr) = setup(1, 1, false, config);
    ups[0].set_behaviour(Behaviour::ok().with_latency_ms(200, 0));
    let report = closed_loop(
        addr,
        &RequestSpec::get("/work"),
        &ClosedLoop {
            requests: 8,
            threads: 4,
            ..Default::default()
        },
    );
    assert_eq!(
        report.ok(),
        8,
        "dry-run must not refuse: {}",
        report.summary()
    );
    assert!(ups[0].stats().max_concurrent > 1);
    let mut client = Client::new(addr);
    let explained = (0..3).any(|_| {
        let slow = std::thread::spawn(move || Client::new(addr).get("/slow", &[]).ok());
        std::thread::sleep(Duration::from_millis(50));
        let r = client.get("/work", &[]).unwrap();
        slow.join().ok();
        r.header("x-reflex-decision") == Some("dry-run: bulkhead-full")
    });
    assert!(
        explained,
        "no decision header on a request the bulkhead would have refused"
    );
}
