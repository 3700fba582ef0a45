//! `./build.sh demo`: Envoy with reflex (the shipped `envoy/outbound.yaml`) in front of three
//! local test upstreams, constant-rate traffic, faults injected on a timeline, and what reflex
//! saw printed as it happens. Bounded (about 25 s) and self-cleaning: every process it starts
//! is stopped when it ends, on success or failure.
//!
//! It shows, per phase, what the clients got, where the traffic actually went (the upstreams'
//! own counters), and what reflex decided (endpoint state and reason from its status
//! endpoint, the same view on every Envoy worker).

use reflex_harness::envoy::shipped_config;
use reflex_harness::load::{open_loop, OpenLoop, RequestSpec};
use reflex_harness::{Behaviour, Client, Envoy, EnvoyOptions, LoadReport, Upstream};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const RPS: f64 = 150.0;
const PHASE_SECS: u64 = 5;
/// Long enough for an ejection (10 s ± 10% by default) to end and the endpoint to return.
const RECOVERY_SECS: u64 = 14;
const STATUS_PATH: &str = "/.reflex/status";
const CONTROL_PATH: &str = "/.reflex/control";
/// The demo's control-endpoint token (the shipped config leaves the endpoint off).
const DEMO_TOKEN: &str = "demo-token-not-for-production";

struct Phase {
    title: &'static str,
    secs: u64,
    apply: fn(&[Upstream]),
}

const PHASES: [Phase; 4] = [
    Phase {
        title: "healthy: three endpoints, 2-4 ms each",
        secs: PHASE_SECS,
        apply: |ups| ups.iter().for_each(|u| u.set_behaviour(healthy())),
    },
    Phase {
        title: "fault: u1 dies (every request answered 503)",
        secs: PHASE_SECS,
        apply: |ups| ups[1].set_behaviour(Behaviour::ok().with_status_mix(&[(503, 1)])),
    },
    Phase {
        title: "fault: u2 turns 10x slower (30 ms, no errors), u1 still dead",
        secs: PHASE_SECS,
        apply: |ups| ups[2].set_behaviour(Behaviour::ok().with_latency_ms(30, 4)),
    },
    Phase {
        title: "recovery: all endpoints healthy again",
        secs: RECOVERY_SECS,
        apply: |ups| ups.iter().for_each(|u| u.set_behaviour(healthy())),
    },
];

fn healthy() -> Behaviour {
    Behaviour::ok().with_latency_ms(2, 2)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run() -> Result<(), String> {
    let wasm = PathBuf::from(arg("--wasm").unwrap_or_else(|| "out/reflex.wasm".into()));
    if !wasm.is_file() {
        return Err(format!(
            "{} not found: run ./build.sh first",
            wasm.display()
        ));
    }
    let ups: Vec<Upstream> = (0..3)
        .map(|i| Upstream::start(&format!("u{i}"), healthy()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let ports = [
        (10000, 0),
        (9901, 0),
        (9001, ups[0].port()),
        (9002, ups[1].port()),
        (9003, ups[2].port()),
    ];
    let yaml = shipped_config("outbound.yaml", &ports, &wasm).map_err(|e| e.to_string())?;
    // The operator's panel: the shipped config with the local control endpoint turned on.
    let yaml = yaml.replacen(
        r#""tickInterval": "1s""#,
        &format!(
            r#""tickInterval": "1s", "control": {{"enabled": true, "token": "{DEMO_TOKEN}"}}"#
        ),
        1,
    );
    let mut options = EnvoyOptions::new(yaml);
    options.concurrency = 2;
    options.binary = arg("--envoy").map(PathBuf::from);
    let envoy = Envoy::start(options).map_err(|e| e.to_string())?;
    let addr = envoy.listener_addr("outbound").map_err(|e| e.to_string())?;
    println!(
        "Envoy {} with reflex on {addr} (2 workers), admin on {}",
        Envoy::version().unwrap_or_default().trim(),
        envoy.admin_addr()
    );
    for u in &ups {
        println!("  upstream {} on {}", u.name(), u.addr());
    }
    println!("Traffic: {RPS} requests/s, open loop, phases of {PHASE_SECS} s.\n");

    let names: BTreeMap<String, String> = ups
        .iter()
        .map(|u| (u.addr().to_string(), u.name().to_string()))
        .collect();
    for phase in &PHASES {
        (phase.apply)(&ups);
        println!("== {}", phase.title);
        let total = seconds_of_traffic(addr, phase.secs);
        println!("  clients this phase: {}", client_line(&total));
        println!("  reflex's view now (all workers, from {STATUS_PATH}):");
        for (name, line) in endpoint_states(addr, &names)? {
            println!("    {name}: {line}");
        }
        println!();
    }

    println!("== operator: kill switch through the local control endpoint, then normal");
    println!(
        "  POST {CONTROL_PATH}/kill -> {}",
        control(
            addr,
            "kill",
            r#"{"scope": {"all": true}, "body": "maintenance\n"}"#
        )?
    );
    let killed = seconds_of_traffic(addr, 2);
    println!("  clients while killed: {}", client_line(&killed));
    println!(
        "  POST {CONTROL_PATH}/normal -> {}",
        control(addr, "normal", "")?
    );
    let after = seconds_of_traffic(addr, 2);
    println!("  clients after normal: {}\n", client_line(&after));

    let prom = envoy.prometheus().map_err(|e| e.to_string())?;
    println!("reflex metrics (Envoy /stats/prometheus):");
    for line in prom.lines().filter(|l| l.starts_with("reflex_")) {
        println!("  {line}");
    }
    println!(
        "\nreflex steered each request to the better of two endpoints, ejected the dead one within\n\
         a few requests (retrying the few that hit it, within the retry budget), starved the slow\n\
         one, let u1 back through probes once it recovered, and obeyed the operator's kill switch\n\
         on every worker until `normal`. The side-by-side comparison with native Envoy (retry\n\
         storms, hangs, overload) is the protection benchmark (bench/)."
    );
    drop(envoy);
    drop(ups);
    println!("demo finished; Envoy and the upstreams are stopped.");
    Ok(())
}

fn progress(report: &LoadReport) -> String {
    let share: Vec<String> = report
        .by_upstream
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{}  served by [{}]", client_line(report), share.join(" "))
}

fn client_line(report: &LoadReport) -> String {
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let success = if report.sent > 0 {
        100.0 * report.ok() as f64 / report.sent as f64
    } else {
        0.0
    };
    format!(
        "{:>4} sent, {success:5.1}% success, p50 {:6.1} ms, p99 {:6.1} ms",
        report.sent,
        ms(report.percentile(50.0)),
        ms(report.percentile(99.0))
    )
}

/// Per upstream name: reflex's state for it and why, with its score inputs.
fn endpoint_states(
    addr: std::net::SocketAddr,
    names: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let response = Client::new(addr)
        .get(STATUS_PATH, &[])
        .map_err(|e| format!("status endpoint: {e:?}"))?;
    let doc: Value = serde_json::from_slice(&response.body).map_err(|e| e.to_string())?;
    let mut states: BTreeMap<String, String> = names
        .values()
        .map(|n| (n.clone(), "not seen yet".to_string()))
        .collect();
    for cluster in doc["clusters"].as_array().into_iter().flatten() {
        for ep in cluster["endpoints"].as_array().into_iter().flatten() {
            let address = ep["address"].as_str().unwrap_or_default();
            if let Some(name) = names.get(address) {
                let reason = ep["lastEjectionReason"]
                    .as_str()
                    .map_or(String::new(), |r| format!(" (last ejection: {r})"));
                states.insert(
                    name.clone(),
                    format!(
                        "{:<8} latency {:>6.1} ms, error rate {:>4.0}%, {} requests{reason}",
                        ep["state"].as_str().unwrap_or("?"),
                        ep["latencyMs"].as_f64().unwrap_or(0.0),
                        ep["errorRate"].as_f64().unwrap_or(0.0) * 100.0,
                        ep["requests"].as_u64().unwrap_or(0),
                    ),
                );
            }
        }
    }
    Ok(states)
}

/// `secs` seconds of constant-rate traffic, one progress line per second.
fn seconds_of_traffic(addr: std::net::SocketAddr, secs: u64) -> LoadReport {
    let mut total = LoadReport::default();
    for second in 1..=secs {
        let report = open_loop(
            addr,
            &RequestSpec::get("/demo"),
            &OpenLoop {
                rps: RPS,
                duration: Duration::from_secs(1),
                grace: Duration::from_millis(500),
                ..Default::default()
            },
        );
        println!("  t+{second}s  {}", progress(&report));
        total.merge(report);
    }
    total
}

/// One control-endpoint action; its JSON answer on one line.
fn control(addr: std::net::SocketAddr, action: &str, body: &str) -> Result<String, String> {
    let auth = format!("Bearer {DEMO_TOKEN}");
    let r = Client::new(addr)
        .request(
            "POST",
            &format!("{CONTROL_PATH}/{action}"),
            &[("authorization", auth.as_str())],
            body.as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("control {action}: HTTP {} {}", r.status, r.text()));
    }
    Ok(format!("{} {}", r.status, r.text().trim()))
}
