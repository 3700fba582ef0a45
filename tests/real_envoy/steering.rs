//! The steering header belongs to reflex: a client that sends it cannot pick the endpoint.

use crate::support::*;
use reflex_harness::load::{closed_loop, ClosedLoop, RequestSpec};
use reflex_harness::ProxyConfig;

const REQUESTS: u64 = 150;

/// Share of `REQUESTS` requests, each asking for endpoint u1, that u1 served.
fn share_served_by_requested_endpoint(with_reflex: bool) -> f64 {
    let ups = upstreams(3);
    let mut proxy = ProxyConfig::new(&addrs(&ups));
    proxy.cluster = reflex_harness::envoy::steered_cluster();
    if with_reflex {
        proxy = proxy.with_http_filter(reflex_filter(r#"{"version": 1}"#));
    }
    let envoy = start(proxy.render(), 2);
    let addr = envoy.listener_addr("ingress").unwrap();
    let wanted = ups[1].addr().to_string();
    let spec = RequestSpec::get("/").with_header("x-reflex-endpoint", &wanted);
    let report = closed_loop(
        addr,
        &spec,
        &ClosedLoop {
            requests: REQUESTS,
            threads: 3,
            ..Default::default()
        },
    );
    assert_eq!(report.ok(), REQUESTS, "{}", report.summary());
    report.upstream("u1") as f64 / REQUESTS as f64
}

#[test]
fn without_reflex_the_header_steers_every_request() {
    // The control: proves the cluster really honours the header, so the next test can fail.
    assert_eq!(share_served_by_requested_endpoint(false), 1.0);
}

#[test]
fn client_cannot_choose_the_endpoint_through_reflex() {
    // Fair share is 1/3; chance alone keeps it far below 0.6 for 150 requests.
    let share = share_served_by_requested_endpoint(true);
    assert!(
        share < 0.6,
        "u1 served {share:.2} of requests that asked for it"
    );
}
