//! Emergency controls in a real Envoy with 4 workers: the local control endpoint (token,
//! kill, shed, freeze, dry-run, normal, status), and switches pushed through the plugin
//! configuration as the Istio manifests do. Every action is checked on fresh connections,
//! which Envoy spreads over its workers.

use crate::support::*;
use reflex_harness::envoy::{free_port, steered_cluster};
use reflex_harness::{Behaviour, Client, Envoy, ProxyConfig, Upstream};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret-token-for-tests-only";
const CONTROL: &str = "/.reflex/control";

fn config() -> String {
    format!(
        r#"{{"version": 1, "status": {{"enabled": true}}, "tickInterval": "250ms",
            "control": {{"enabled": true, "token": "{TOKEN}", "maxBodyBytes": 512}}}}"#
    )
}

fn setup(n: usize) -> (Vec<Upstream>, Envoy, SocketAddr) {
    let ups = upstreams(n);
    let mut proxy = ProxyConfig::new(&addrs(&ups)).with_http_filter(reflex_filter(&config()));
    proxy.cluster = steered_cluster();
    let envoy = start(proxy.render(), 4);
    let addr = envoy.listener_addr("ingress").unwrap();
    (ups, envoy, addr)
}

/// POSTs a control action with `token`; returns status and JSON body.
fn control(addr: SocketAddr, action: &str, body: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let r = Client::new(addr)
        .request(
            "POST",
            &format!("{CONTROL}/{action}"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap();
    let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, json)
}

/// Statuses of `n` requests, each on a new connection (spread over the workers).
fn statuses(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    (0..n)
        .map(|_| Client::new(addr).get("/work", headers).unwrap().status)
        .collect()
}

#[test]
fn wrong_token_changes_nothing_and_is_counted() {
    let (ups, envoy, addr) = setup(2);
    let (code, body) = control(
        addr,
        "kill",
        r#"{"scope": {"all": true}}"#,
        "wrong-token-xxxxxxxx",
    );
    assert_eq!(code, 401);
    assert_eq!(body, Value::Null, "a 401 carries no detail");
    let r = Client::new(addr)
        .post(&format!("{CONTROL}/kill"), &[], b"{}")
        .unwrap();
    assert_eq!(r.status, 401, "no token");
    assert!(statuses(addr, 20, &[]).iter().all(|s| *s == 200));
    let prom = envoy.prometheus().unwrap();
    assert_eq!(
        prometheus_value(&prom, "reflex_control_unauthorized_total"),
        Some(2)
    );
    assert_eq!(prometheus_value(&prom, "reflex_switch_kill_rules"), Some(0));
    assert_eq!(ups.iter().map(|u| u.stats().requests).sum::<u64>(), 20);
}

#[test]
fn ordinary_traffic_cannot_reach_the_control_endpoint() {
    let (ups, _envoy, addr) = setup(1);
    // Forwarded (x-forwarded-for) requests are not local operators: the path is ordinary
    // traffic and goes upstream, token or not.
    let auth = format!("Bearer {TOKEN}");
    let r = Client::new(addr)
        .request(
            "POST",
            &format!("{CONTROL}/kill"),
            &[
                ("authorization", auth.as_str()),
                ("x-forwarded-for", "10.1.2.3"),
            ],
            br#"{"scope": {"all": true}}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_id(),
        Some("u0"),
        "served by the upstream, not reflex"
    );
    assert_eq!(ups[0].stats().requests, 1);
    assert!(statuses(addr, 10, &[]).iter().all(|s| *s == 200));
    // An oversized body is refused before it is parsed.
    let big = format!(
        r#"{{"scope": {{"all": true}}, "body": "{}"}}"#,
        "x".repeat(600)
    );
    let (code, body) = control(addr, "kill", &big, TOKEN);
    assert_eq!(code, 413, "{body}");
}

#[test]
fn kill_shed_freeze_and_dry_run_act_on_every_worker_and_normal_undoes_them() {
    let (ups, envoy, addr) = setup(3);
    assert!(statuses(addr, 30, &[]).iter().all(|s| *s == 200));

    // Kill: effective on the next request of every worker (shared data is read per request).
    let (code, change) = control(
        addr,
        "kill",
        r#"{"scope": {"all": true}, "status": 503, "body": "maintenance\n",
            "headers": {"x-killed": "yes"}}"#,
        TOKEN,
    );
    assert_eq!(code, 200, "{change}");
    let set = Instant::now();
    let killed = statuses(addr, 40, &[]);
    let elapsed = set.elapsed();
    assert!(killed.iter().all(|s| *s == 503), "{killed:?}");
    eprintln!("kill seen by 40 requests over fresh connections within {elapsed:?}");
    let r = Client::new(addr).get("/work", &[]).unwrap();
    assert_eq!(
        (r.header("x-killed"), r.text().as_str()),
        (Some("yes"), "maintenance\n")
    );
    let before = ups.iter().map(|u| u.stats().requests).sum::<u64>();

    // The status document says what is set, by whom and when.
    let doc = status(addr, "/.reflex/status");
    let kill = &doc["switches"]["kill"][0];
    assert!(
        kill["setBy"]
            .as_str()
            .unwrap()
            .starts_with("control 127.0.0.1:"),
        "{doc}"
    );
    assert!(kill["setAtMs"].as_u64().unwrap() > 0, "{doc}");
    envoy
        .wait_for_log(
            "reflex control: reflex emergency switch kill scope=all",
            Duration::from_secs(2),
        )
        .unwrap();
    let gauges = eventually(Duration::from_secs(2), || {
        let prom = envoy.prometheus().ok()?;
        (prometheus_value(&prom, "reflex_switch_kill_rules") == Some(1)).then_some(())
    });
    assert!(gauges.is_some());

    let (code, _) = control(addr, "normal", "", TOKEN);
    assert_eq!(code, 200);
    assert!(statuses(addr, 40, &[]).iter().all(|s| *s == 200));
    assert_eq!(
        ups.iter().map(|u| u.stats().requests).sum::<u64>(),
        before + 40
    );

    // Shed 50% of sheddable: deterministic by request id, critical untouched.
    let (code, _) = control(addr, "shed", r#"{"sheddablePercent": 50}"#, TOKEN);
    assert_eq!(code, 200);
    let mut client = Client::new(addr);
    let mut shed = 0;
    for i in 0..1_000 {
        let id = format!("req-{i}");
        let s = client
            .get(
                "/work",
                &[("x-reflex-priority", "sheddable"), ("x-request-id", &id)],
            )
            .unwrap()
            .status;
        shed += u32::from(s == 503);
        let again = client
            .get(
                "/work",
                &[("x-reflex-priority", "sheddable"), ("x-request-id", &id)],
            )
            .unwrap()
            .status;
        assert_eq!(s, again, "same request id, same decision");
    }
    assert!((450..=550).contains(&shed), "shed {shed} of 1000");
    let critical = statuses(addr, 50, &[("x-reflex-priority", "critical")]);
    assert!(critical.iter().all(|s| *s == 200));
    control(addr, "normal", "", TOKEN);

    // Freeze: a failing endpoint is not ejected while frozen; after normal it is.
    let (code, _) = control(addr, "freeze", r#"{"expiresIn": "1m"}"#, TOKEN);
    assert_eq!(code, 200);
    ups[1].set_behaviour(Behaviour::status(503));
    for _ in 0..200 {
        client.get("/work", &[]).unwrap();
    }
    let prom = envoy.prometheus().unwrap();
    assert_eq!(prometheus_value(&prom, "reflex_ejections_total"), Some(0));
    assert_eq!(
        prometheus_value(&prom, "reflex_switch_freeze").unwrap_or(1),
        1
    );
    control(addr, "normal", "", TOKEN);
    for _ in 0..200 {
        client.get("/work", &[]).unwrap();
    }
    let prom = envoy.prometheus().unwrap();
    assert!(prometheus_value(&prom, "reflex_ejections_total").unwrap() >= 1);

    // Global dry-run: decisions are reported, not enforced (a new failing endpoint is
    // ejected in dry-run only).
    let (code, _) = control(addr, "dry-run", r#"{"enabled": true}"#, TOKEN);
    assert_eq!(code, 200);
    ups[2].set_behaviour(Behaviour::status(503));
    for _ in 0..200 {
        client.get("/work", &[]).unwrap();
    }
    let prom = envoy.prometheus().unwrap();
    assert!(prometheus_value(&prom, "reflex_dry_run_ejections_total").unwrap() >= 1);
    assert_eq!(prometheus_value(&prom, "reflex_ejections_total"), Some(1));
    control(addr, "normal", "", TOKEN);
    let doc = status(addr, "/.reflex/status");
    assert_eq!(doc["switches"]["effective"]["frozen"], false, "{doc}");
}

#[test]
fn switches_expire_by_themselves() {
    let (_ups, _envoy, addr) = setup(1);
    let (code, _) = control(
        addr,
        "kill",
        r#"{"scope": {"all": true}, "expiresIn": "1s"}"#,
        TOKEN,
    );
    assert_eq!(code, 200);
    assert!(statuses(addr, 8, &[]).iter().all(|s| *s == 503));
    std::thread::sleep(Duration::from_millis(1_100));
    assert!(statuses(addr, 8, &[]).iter().all(|s| *s == 200));
}

#[test]
fn pushed_switches_apply_on_every_worker_and_lapse_when_their_instance_goes() {
    let ups = upstreams(1);
    let lds = lds_path("switches");
    let port = free_port();
    let main = reflex_filter(r#"{"version": 1, "tickInterval": "250ms"}"#);
    publish(&lds, &lds_document(port, ups[0].addr(), vec![main.clone()]));
    let envoy = start_with_lds(&addrs(&ups), &lds, 4);
    wait_for_lds_updates(&envoy, 1);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(statuses(addr, 20, &[]).iter().all(|s| *s == 200));

    // The mesh-wide kill: a `switches` instance appears in the pushed config.
    let kill = reflex_filter_named(
        "reflex-emergency-kill-all",
        r#"{"version": 1, "role": "switches", "tickInterval": "250ms",
            "emergency": {"kill": [{"scope": {"all": true}}]}}"#,
    );
    publish(
        &lds,
        &lds_document(port, ups[0].addr(), vec![main.clone(), kill]),
    );
    let pushed = Instant::now();
    let killed = eventually(Duration::from_secs(10), || {
        statuses(addr, 16, &[])
            .iter()
            .all(|s| *s == 503)
            .then(|| pushed.elapsed())
    });
    let took = killed.expect("the pushed kill never applied to every worker");
    eprintln!("pushed kill applied on all workers {took:?} after the config was written");

    // Undo: the instance is removed; its lease lapses within a few ticks.
    publish(&lds, &lds_document(port, ups[0].addr(), vec![main]));
    let removed = Instant::now();
    let back = eventually(Duration::from_secs(10), || {
        statuses(addr, 16, &[])
            .iter()
            .all(|s| *s == 200)
            .then(|| removed.elapsed())
    });
    let took = back.unwrap_or_else(|| {
        let log = envoy.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "the kill outlived its removed instance:\n{}",
            tail.join("\n")
        )
    });
    eprintln!("pushed kill lifted {took:?} after the config was written");
    assert!(took < Duration::from_secs(3), "{took:?}");
    if let Some(dir) = lds.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
