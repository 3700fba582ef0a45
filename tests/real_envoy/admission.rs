//! Adaptive admission in front of a capacity-limited service, in a real Envoy: the same
//! 2.5x overload with and without reflex, critical and default traffic mixed.

use crate::support::*;
use reflex_harness::load::{
    closed_loop, open_loop, percentile_of, ClosedLoop, OpenLoop, RequestSpec,
};
use reflex_harness::timeline::{run_timeline, RatePhase, Record, TimelineLoad};
use reflex_harness::{Behaviour, Envoy, LoadReport, ProxyConfig, Upstream};
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

/// 8 requests at a time, 80 ms each: 100 requests/s. Anything beyond queues (up to 2000),
/// as in a thread-pool server: latency grows with the queue.
fn service() -> Behaviour {
    Behaviour::ok()
        .with_latency_ms(80, 5)
        .with_capacity(8, 2_000)
}
const CAPACITY_RPS: f64 = 100.0;
/// Time the limit gets to react to an overload's onset: four 250 ms windows.
const REACTION: Duration = Duration::from_secs(1);

const ADMISSION: &str = r#"{"version": 1, "status": {"enabled": true},
    "loadBalancing": {"enabled": false},
    "admission": {"enabled": true, "initialLimit": 16, "minLimit": 4}}"#;

fn setup(config: Option<&str>) -> (Upstream, Envoy, SocketAddr) {
    let app = Upstream::start("app", service()).unwrap();
    let mut proxy = ProxyConfig::new(&[app.addr()]);
    if let Some(config) = config {
        proxy = proxy.with_http_filter(reflex_filter(config));
    }
    proxy.route = serde_json::json!({"timeout": "30s"});
    let envoy = start(proxy.render(), 2);
    let addr = envoy.listener_addr("ingress").unwrap();
    (app, envoy, addr)
}

fn spec(priority: &str) -> RequestSpec {
    RequestSpec::get("/work").with_header("x-reflex-priority", priority)
}

fn run(addr: SocketAddr, spec: RequestSpec, rps: f64, secs: f64) -> LoadReport {
    open_loop(
        addr,
        &spec,
        &OpenLoop {
            rps,
            duration: Duration::from_secs_f64(secs),
            workers: 64,
            timeout: Duration::from_secs(3),
            grace: Duration::from_secs(3),
        },
    )
}

/// 2.5x the capacity for `secs`: 10% critical, 90% default, at the same time.
fn overload(addr: SocketAddr, secs: f64) -> (LoadReport, LoadReport) {
    let total = CAPACITY_RPS * 2.5;
    let critical = thread::spawn(move || run(addr, spec("critical"), total * 0.1, secs));
    let default = run(addr, spec("default"), total * 0.9, secs);
    (critical.join().unwrap(), default)
}

#[test]
fn overload_keeps_goodput_and_latency_and_protects_critical_traffic() {
    const SECS: f64 = 10.0;
    // Without reflex: the queue grows for the whole run.
    let (_app, _envoy, addr) = setup(None);
    let unloaded = run(addr, spec("default"), 30.0, 3.0);
    let unloaded_p99 = unloaded.percentile(99.0).unwrap();
    // What the service behind this Envoy completes per second on this machine right now: a
    // closed loop with a few more clients than its 8 slots keeps every slot busy. Goodput
    // is judged against this, measured in the same run (the nominal 100/s assumes 80 ms
    // exactly and a host with nothing else to do).
    let saturated = closed_loop(
        addr,
        &spec("default"),
        &ClosedLoop {
            requests: 300,
            threads: 12,
            ..Default::default()
        },
    );
    let capacity = saturated.ok() as f64 / saturated.elapsed.as_secs_f64();
    let (c, d) = overload(addr, SECS);
    let mut plain = c;
    plain.merge(d);
    eprintln!(
        "without reflex: goodput {:.1}/s of {CAPACITY_RPS}, p99 of successes {:?}\n{}",
        plain.ok() as f64 / SECS,
        plain.ok_percentile(99.0),
        plain.summary()
    );
    let collapsed_p99 = plain.ok_percentile(99.0).unwrap_or(Duration::MAX);
    assert!(
        collapsed_p99 > unloaded_p99 * 5,
        "the control run should show queueing collapse (p99 {collapsed_p99:?})"
    );

    let (app, envoy, addr) = setup(Some(ADMISSION));
    run(addr, spec("default"), 30.0, 3.0);
    let sampler = thread::spawn(move || {
        (0..24)
            .map(|_| {
                thread::sleep(Duration::from_millis(500));
                let doc = status(addr, "/.reflex/status");
                let a = &doc["admission"];
                format!(
                    "{}/{} ({:.0}/{:.0}ms)",
                    a["limit"],
                    a["inFlight"],
                    a["lastSampleMs"].as_f64().unwrap_or(0.0),
                    a["noLoadMs"].as_f64().unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    });
    // The same 2.5x overload, every request kept with its send time: 1 critical in 10.
    let mut specs = vec![spec("critical")];
    specs.extend(std::iter::repeat_n(spec("default"), 9));
    let timeline = run_timeline(
        addr,
        &specs,
        &TimelineLoad {
            phases: vec![RatePhase {
                duration: Duration::from_secs_f64(SECS),
                rps: CAPACITY_RPS * 2.5,
            }],
            workers: 64,
            timeout: Duration::from_secs(3),
            grace: Duration::from_secs(3),
        },
    );
    eprintln!("limit/in-flight every 500 ms: {}", sampler.join().unwrap());
    let records = &timeline.records;
    let ok_latencies = |keep: &dyn Fn(&Record) -> bool| {
        let mut l: Vec<Duration> = records
            .iter()
            .filter(|r| r.ok() && keep(r))
            .map(|r| r.latency)
            .collect();
        l.sort();
        l
    };
    let goodput = records.iter().filter(|r| r.ok()).count() as f64 / SECS;
    // The limit reacts once per 250 ms window, from completions: requests sent in the first
    // second of the overload meet the queue the held limit let in before it fell. That
    // reaction is bounded below; the 2x target applies once it is over.
    let onset = ok_latencies(&|r| r.due < REACTION);
    let steady = ok_latencies(&|r| r.due >= REACTION);
    let (onset_max, steady_p99) = (
        *onset.last().unwrap(),
        percentile_of(&steady, 99.0).unwrap(),
    );
    let critical: Vec<&Record> = records.iter().filter(|r| r.class == 0).collect();
    let critical_ok = critical.iter().filter(|r| r.ok()).count();
    let default_shed = records
        .iter()
        .filter(|r| r.class != 0 && r.status == Some(503))
        .count() as u64;
    eprintln!(
        "with reflex: goodput {goodput:.1}/s (capacity measured {capacity:.1}/s, nominal {CAPACITY_RPS}/s), \
         admitted p99 {steady_p99:?} after the first {REACTION:?} (unloaded {unloaded_p99:?}), \
         slowest admitted in the first {REACTION:?} {onset_max:?}, critical {critical_ok}/{}, \
         default shed {default_shed}, upstream max concurrent {}",
        critical.len(),
        app.stats().max_concurrent,
    );
    assert!(
        goodput >= 0.9 * capacity,
        "goodput {goodput:.1}/s below 90% of the measured capacity {capacity:.1}/s"
    );
    assert!(
        steady_p99 <= unloaded_p99 * 2,
        "admitted p99 {steady_p99:?} above twice the unloaded {unloaded_p99:?}"
    );
    assert!(
        onset_max <= unloaded_p99 * 3,
        "the onset's slowest admitted request {onset_max:?} above 3x the unloaded p99 {unloaded_p99:?}"
    );
    let prom = envoy.prometheus().unwrap();
    assert!(
        critical_ok as f64 >= 0.999 * critical.len() as f64,
        "critical {critical_ok}/{}, shed by reflex {:?}, upstream resets/refusals {:?}",
        critical.len(),
        prometheus_value(&prom, "reflex_shed_critical_total"),
        (
            app.stats().resets,
            app.stats().refused_connections,
            app.stats().rejected
        )
    );
    assert!(default_shed > 0, "nothing was shed");
    assert_eq!(
        prometheus_value(&prom, "reflex_shed_default_total"),
        Some(default_shed)
    );

    // Recovery: at normal load everything is admitted again within seconds.
    thread::sleep(Duration::from_secs(1));
    let after = run(addr, spec("sheddable"), 50.0, 3.0);
    assert_eq!(after.ok(), after.sent, "{}", after.summary());
    let doc = status(addr, "/.reflex/status");
    assert!(
        doc["admission"]["limit"].as_u64().unwrap_or(0) >= 4,
        "{doc}"
    );
    assert!(
        doc["admission"]["noLoadMs"].as_f64().unwrap_or(0.0) >= 75.0,
        "{doc}"
    );
}

#[test]
fn dry_run_admits_everything_but_counts_what_it_would_shed() {
    let config = ADMISSION.replace(
        r#""enabled": true, "initialLimit""#,
        r#""enabled": true, "dryRun": true, "initialLimit""#,
    );
    let (_app, envoy, addr) = setup(Some(&config));
    let (critical, default) = overload(addr, 4.0);
    assert_eq!(critical.status(503) + default.status(503), 0);
    let prom = envoy.prometheus().unwrap();
    assert!(prometheus_value(&prom, "reflex_admission_dry_run_shed_total").unwrap() > 0);
    assert_eq!(
        prometheus_value(&prom, "reflex_shed_default_total"),
        Some(0)
    );
}
