//! Metrics in Envoy's Prometheus output, the status endpoint's guard rails, the version line.

use crate::support::*;
use reflex_harness::load::{closed_loop, ClosedLoop, RequestSpec};
use reflex_harness::{Client, ProxyConfig};
use serde_json::json;
use std::time::Duration;

#[test]
fn reflex_metrics_appear_in_prometheus_output() {
    let ups = upstreams(2);
    let yaml = ProxyConfig::new(&addrs(&ups))
        .with_http_filter(reflex_filter(r#"{"version": 1}"#))
        .render();
    let envoy = start(yaml, 2);
    let addr = envoy.listener_addr("ingress").unwrap();
    let spec = RequestSpec::get("/").with_header("x-reflex-endpoint", "10.9.9.9:80");
    let report = closed_loop(
        addr,
        &spec,
        &ClosedLoop {
            requests: 40,
            threads: 2,
            ..Default::default()
        },
    );
    assert_eq!(report.ok(), 40);
    let counts = eventually(Duration::from_secs(5), || {
        let prom = envoy.prometheus().ok()?;
        let requests = prometheus_value(&prom, "reflex_requests_total")?;
        let observed = prometheus_value(&prom, "reflex_endpoint_observations_total")?;
        (requests == 40 && observed == 40).then_some(prom)
    });
    let prom = counts.unwrap_or_else(|| envoy.prometheus().unwrap());
    assert_eq!(
        prometheus_value(&prom, "reflex_requests_total"),
        Some(40),
        "{prom}"
    );
    assert_eq!(
        prometheus_value(&prom, "reflex_endpoint_observations_total"),
        Some(40)
    );
    assert_eq!(
        prometheus_value(&prom, "reflex_steering_header_stripped_total"),
        Some(40)
    );
    assert!(prom.contains("# TYPE reflex_requests_total counter"));
    // The gauge is refreshed by the housekeeping tick (1 s by default); a loaded machine can
    // delay ticks, so allow several.
    let mut last = None;
    let tracked = eventually(Duration::from_secs(10), || {
        let prom = envoy.prometheus().ok()?;
        last = prometheus_value(&prom, "reflex_tracked_endpoints");
        (last? == 2).then_some(())
    });
    if tracked.is_none() {
        let log = envoy.log();
        let ticks: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("reflex tracks") || l.contains("shared"))
            .collect();
        panic!("reflex_tracked_endpoints never reached 2 (last {last:?}); log: {ticks:?}");
    }
}

#[test]
fn status_endpoint_is_off_unless_enabled() {
    let ups = upstreams(1);
    let yaml = ProxyConfig::new(&addrs(&ups))
        .with_http_filter(reflex_filter(r#"{"version": 1}"#))
        .render();
    let envoy = start(yaml, 1);
    let addr = envoy.listener_addr("ingress").unwrap();
    let response = Client::new(addr).get("/.reflex/status", &[]).unwrap();
    assert_eq!(
        response.upstream_id(),
        Some("u0"),
        "reflex answered although disabled"
    );
}

#[test]
fn status_endpoint_answers_loopback_callers_only() {
    let ups = upstreams(1);
    let config = r#"{"version": 1, "status": {"enabled": true, "path": "/.reflex/status"}}"#;
    let yaml = ProxyConfig::new(&addrs(&ups))
        .with_http_filter(reflex_filter(config))
        .render();
    let envoy = start(yaml, 1);
    let addr = envoy.listener_addr("ingress").unwrap();
    let local = Client::new(addr)
        .get("/.reflex/status?pretty", &[])
        .unwrap();
    assert_eq!(local.status, 200);
    assert_eq!(local.header("content-type"), Some("application/json"));
    assert!(local.upstream_id().is_none());
    // A forwarded request is not a local operator, whatever address it claims.
    for claimed in ["10.1.2.3", "127.0.0.1"] {
        let forwarded = Client::new(addr)
            .get("/.reflex/status", &[("x-forwarded-for", claimed)])
            .unwrap();
        assert_eq!(
            forwarded.upstream_id(),
            Some("u0"),
            "served to x-forwarded-for {claimed}"
        );
    }
}

#[test]
fn version_is_logged_when_the_vm_starts() {
    let ups = upstreams(1);
    let yaml = ProxyConfig::new(&addrs(&ups))
        .with_http_filter(reflex_filter(r#"{"version": 1}"#))
        .render();
    let envoy = start(yaml, 2);
    envoy
        .wait_for_log(
            &format!("reflex {} (", reflex::VERSION),
            Duration::from_secs(5),
        )
        .unwrap();
    envoy
        .wait_for_log("reflex configuration accepted", Duration::from_secs(5))
        .unwrap();
}

/// Two reflex filters in one Envoy (a sidecar's inbound and outbound side), each with its own
/// `metrics.tags.direction`, and the bootstrap's `stats_tags` regex for that tag: every metric
/// is one series per side, so one side's gauges never overwrite the other's and counters do
/// not add up across sides.
#[test]
fn metric_tags_keep_inbound_and_outbound_series_apart() {
    let ups = upstreams(1);
    let outbound = r#"{"version": 1, "metrics": {"tags": {"direction": "outbound"}}}"#;
    let inbound = r#"{"version": 1, "metrics": {"tags": {"direction": "inbound"}},
        "admission": {"enabled": true, "initialLimit": 30}}"#;
    let mut config = ProxyConfig::new(&addrs(&ups))
        .with_http_filter(reflex_filter_named("reflex-outbound", outbound))
        .to_value();
    let mut second = config["static_resources"]["listeners"][0].clone();
    second["name"] = json!("inbound");
    let hcm = &mut second["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["stat_prefix"] = json!("inbound");
    hcm["http_filters"][0] = reflex_filter_named("reflex-inbound", inbound);
    config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(second);
    config["stats_config"] = json!({"stats_tags": [
        {"tag_name": "direction", "regex": "(direction=\\.=(.*?);\\.;)"}
    ]});
    let envoy = start(serde_json::to_string_pretty(&config).unwrap(), 2);
    for (listener, n) in [("ingress", 30), ("inbound", 20)] {
        let report = closed_loop(
            envoy.listener_addr(listener).unwrap(),
            &RequestSpec::get("/"),
            &ClosedLoop {
                requests: n,
                threads: 2,
                ..Default::default()
            },
        );
        assert_eq!(report.ok(), n, "{listener}: {}", report.summary());
    }
    let series = |prom: &str, name: &str, side: &str| {
        prometheus_value(prom, &format!("{name}{{direction=\"{side}\"}}"))
    };
    let prom = eventually(Duration::from_secs(5), || {
        let prom = envoy.prometheus().ok()?;
        (series(&prom, "reflex_admission_limit", "inbound")? > 0).then_some(prom)
    })
    .unwrap_or_else(|| envoy.prometheus().unwrap());
    assert_eq!(
        series(&prom, "reflex_requests_total", "outbound"),
        Some(30),
        "{prom}"
    );
    assert_eq!(series(&prom, "reflex_requests_total", "inbound"), Some(20));
    assert_eq!(series(&prom, "reflex_admission_limit", "inbound"), Some(30));
    assert_eq!(series(&prom, "reflex_admission_limit", "outbound"), Some(0));
    assert!(
        !prom.contains("=.="),
        "every tag is extracted, none left in a name:\n{prom}"
    );
    assert!(prom.contains("# TYPE reflex_requests_total counter"));
}
