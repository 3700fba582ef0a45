//! The launcher against the real Envoy binary. Set `REFLEX_SKIP_ENVOY=1` to skip these where no
//! Envoy is installed (they fail otherwise, so a missing binary is never mistaken for a pass).

use std::time::Duration;

use reflex_harness::envoy::skip_envoy_tests;
use reflex_harness::{Behaviour, Client, Envoy, EnvoyOptions, ProxyConfig, Upstream};
use serde_json::json;

#[test]
fn proxies_to_two_upstreams_and_reports_stats() {
    if skip_envoy_tests() {
        return;
    }
    let u0 = Upstream::start("u0", Behaviour::ok()).unwrap();
    let u1 = Upstream::start("u1", Behaviour::ok()).unwrap();
    let config = ProxyConfig::new(&[u0.addr(), u1.addr()]).render();
    let envoy = Envoy::start(EnvoyOptions {
        concurrency: 2,
        ..EnvoyOptions::new(config)
    })
    .unwrap();
    let listener = envoy.listener_addr("ingress").unwrap();
    let mut client = Client::new(listener);
    for _ in 0..50 {
        let r = client.get("/hello", &[]).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.upstream_id().is_some());
    }
    assert_eq!(
        client.connects(),
        1,
        "Envoy keeps the downstream connection alive"
    );
    let (s0, s1) = (u0.stats().requests, u1.stats().requests);
    assert_eq!(s0 + s1, 50);
    assert!(s0 > 0 && s1 > 0, "round robin reaches both: {s0} / {s1}");

    let rq = envoy
        .wait_for_stat(
            "cluster.upstream.upstream_rq_200",
            |v| v == 50,
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(rq, 50);
    let stats = envoy.stats().unwrap();
    assert_eq!(stats.get("http.ingress.downstream_rq_2xx"), Some(&50));
    let filtered = envoy
        .stats_matching(r"^cluster\.upstream\.upstream_rq_total$")
        .unwrap();
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    let prom = envoy.prometheus().unwrap();
    assert!(
        prom.contains("envoy_cluster_upstream_rq_total"),
        "prometheus text"
    );
    // The log file is flushed every 50 ms: wait for lines rather than reading once.
    envoy
        .wait_for_log("starting main dispatch loop", Duration::from_secs(2))
        .unwrap();
    assert!(envoy.log().contains("all clusters initialized"));
    assert_eq!(envoy.admin_get("/ready").unwrap().text().trim(), "LIVE");

    // An upstream failure shows through the proxy (no retries configured).
    u1.set_behaviour(Behaviour::status(503));
    let codes: Vec<u16> = (0..4)
        .map(|_| client.get("/", &[]).unwrap().status)
        .collect();
    assert!(codes.contains(&503) && codes.contains(&200), "{codes:?}");

    let dir = envoy.dir().to_path_buf();
    envoy.stop();
    assert!(!dir.exists(), "temp dir removed");
    assert!(
        Client::new(listener).get("/", &[]).is_err(),
        "envoy is gone"
    );
}

#[test]
fn start_failure_reports_envoy_output_and_validate_works() {
    if skip_envoy_tests() {
        return;
    }
    let good = ProxyConfig::new(&["127.0.0.1:1".parse().unwrap()])
        .with_http_filter(json!({
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": 1024
            }
        }))
        .render();
    Envoy::validate(&good).unwrap();
    let mut bad = ProxyConfig::new(&[]);
    bad.cluster = json!({"no_such_field": 1});
    let err = Envoy::validate(&bad.render()).unwrap_err();
    assert!(err.contains("no_such_field"), "{err}");
    let err = Envoy::start(EnvoyOptions::new(bad.render())).unwrap_err();
    assert!(err.message.contains("exited"), "{err}");
    assert!(
        err.message.contains("no_such_field"),
        "log tail included: {err}"
    );
}
