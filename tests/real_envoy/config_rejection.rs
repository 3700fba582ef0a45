//! Invalid configuration is refused by Envoy with reflex's message naming field and rule, and
//! an invalid update through dynamic listener config leaves the previous one serving.

use crate::support::*;
use reflex_harness::envoy::free_port;
use reflex_harness::load::{closed_loop, ClosedLoop, RequestSpec};
use reflex_harness::{Envoy, EnvoyOptions, ProxyConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn assert_rejected_at_start(config: &str, expected: &str) {
    let ups = upstreams(1);
    let yaml = ProxyConfig::new(&addrs(&ups))
        .with_http_filter(reflex_filter(config))
        .render();
    match Envoy::start(EnvoyOptions::new(yaml)) {
        Ok(envoy) => panic!("envoy accepted {config}; log:\n{}", envoy.log()),
        Err(err) => assert!(
            err.message.contains(expected),
            "expected {expected:?} in Envoy's output for {config}:\n{err}"
        ),
    }
}

#[test]
fn unknown_field_is_rejected_naming_the_field() {
    assert_rejected_at_start(
        r#"{"version": 1, "endpoints": {"maxClusterz": 3}}"#,
        "invalid reflex configuration at `endpoints.maxClusterz`: unknown field `maxClusterz`",
    );
}

#[test]
fn wrong_type_is_rejected_naming_the_field() {
    assert_rejected_at_start(
        r#"{"version": 1, "status": {"enabled": "yes"}}"#,
        "invalid reflex configuration at `status.enabled`: invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn out_of_range_value_is_rejected_naming_the_rule() {
    assert_rejected_at_start(
        r#"{"version": 1, "endpoints": {"maxClusters": 0}}"#,
        "invalid reflex configuration at `endpoints.maxClusters`: must be between 1 and 4096 (got 0)",
    );
}

#[test]
fn invalid_update_is_rejected_and_previous_config_keeps_serving() {
    let ups = upstreams(1);
    let lds = lds_path("lds");
    let port = free_port();
    let good = r#"{"version": 1, "status": {"enabled": true, "path": "/first"}}"#;
    publish(
        &lds,
        &lds_document(port, ups[0].addr(), vec![reflex_filter(good)]),
    );

    let envoy = start_with_lds(&addrs(&ups), &lds, 2);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_lds_updates(&envoy, 1);

    // Traffic flows during both updates; not one request may fail.
    let stop = AtomicBool::new(false);
    let (report, ()) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut total = reflex_harness::LoadReport::default();
            while !stop.load(Ordering::Relaxed) {
                let spec = RequestSpec::get("/work");
                let part = closed_loop(
                    addr,
                    &spec,
                    &ClosedLoop {
                        requests: 40,
                        threads: 2,
                        ..Default::default()
                    },
                );
                total.merge(part);
            }
            total
        });

        let bad = r#"{"version": 1, "endpoints": {"forgetAfter": "soon"}}"#;
        publish(
            &lds,
            &lds_document(port, ups[0].addr(), vec![reflex_filter(bad)]),
        );
        envoy
            .wait_for_stat(
                "listener_manager.lds.update_rejected",
                |v| v >= 1,
                Duration::from_secs(10),
            )
            .unwrap();
        envoy
            .wait_for_log(
                "invalid reflex configuration at `endpoints.forgetAfter`: expected a duration",
                Duration::from_secs(5),
            )
            .unwrap();
        // The first config still serves: its status path answers.
        assert_eq!(status(addr, "/first")["version"], reflex::VERSION);

        let newer = r#"{"version": 1, "status": {"enabled": true, "path": "/second"}}"#;
        publish(
            &lds,
            &lds_document(port, ups[0].addr(), vec![reflex_filter(newer)]),
        );
        wait_for_lds_updates(&envoy, 2);
        let served = eventually(Duration::from_secs(5), || {
            let r = reflex_harness::Client::new(addr).get("/second", &[]).ok()?;
            (r.status == 200 && r.upstream_id().is_none()).then_some(())
        });
        assert!(served.is_some(), "the valid update did not take effect");
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (load.join().unwrap(), ())
    });
    if let Some(dir) = lds.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(report.sent > 0);
    assert_eq!(
        report.ok(),
        report.sent,
        "requests failed during config updates: {}",
        report.summary()
    );
}
