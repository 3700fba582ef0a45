//! `./build.sh demo`: Envoy with reflex (the shipped `envoy/outbound.yaml`) in front of three
//! local test upstreams, constant-rate traffic, faults injected on a timeline, and what reflex
//! saw printed as it happens. Bounded (about 25 s) and self-cleaning: every process it starts
//! is stopped when it ends, on success or failure.
//!
//! What it shows today is reflex's shared view of the endpoints (per-endpoint requests and
//! failures across all Envoy workers, from the status endpoint and Prometheus metrics).
//! Steering and ejection are not built yet: the demo says so instead of pretending.

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
const STATUS_PATH: &str = "/.reflex/status";

struct Phase {
    title: &'static str,
    apply: fn(&[Upstream]),
}

const PHASES: [Phase; 4] = [
    Phase {
        title: "healthy: three endpoints, 2-4 ms each",
        apply: |ups| ups.iter().for_each(|u| u.set_behaviour(healthy())),
    },
    Phase {
        title: "fault: u1 answers 503 to half its requests",
        apply: |ups| ups[1].set_behaviour(healthy().with_status_mix(&[(200, 1), (503, 1)])),
    },
    Phase {
        title: "fault: u2 turns slow (120 ms), u1 still flaky",
        apply: |ups| ups[2].set_behaviour(Behaviour::ok().with_latency_ms(120, 10)),
    },
    Phase {
        title: "recovery: all endpoints healthy again",
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
    let mut before = endpoint_counts(addr, &names)?;
    for phase in &PHASES {
        (phase.apply)(&ups);
        println!("== {}", phase.title);
        let mut total = LoadReport::default();
        for second in 1..=PHASE_SECS {
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
        let after = endpoint_counts(addr, &names)?;
        println!("  what reflex saw this phase (all workers, from {STATUS_PATH}):");
        for (name, (requests, failures)) in &after {
            let (r0, f0) = before.get(name).copied().unwrap_or_default();
            let (requests, failures) = (requests - r0, failures - f0);
            let rate = if requests > 0 {
                100.0 * failures as f64 / requests as f64
            } else {
                0.0
            };
            println!("    {name}: {requests:>4} requests, {failures:>4} failures ({rate:.0}%)");
        }
        println!("  clients: {}\n", client_line(&total));
        before = after;
    }

    let prom = envoy.prometheus().map_err(|e| e.to_string())?;
    println!("reflex metrics (Envoy /stats/prometheus):");
    for line in prom.lines().filter(|l| l.starts_with("reflex_")) {
        println!("  {line}");
    }
    println!(
        "\nreflex today observes every endpoint from all workers and strips client steering;\n\
         it does not yet steer (P2C) or eject: the clients above felt every fault. Those\n\
         reflexes arrive with the endpoint-intelligence work (issue #4)."
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

/// Per upstream name: cumulative (requests, failures) from reflex's status endpoint.
fn endpoint_counts(
    addr: std::net::SocketAddr,
    names: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, (u64, u64)>, String> {
    let response = Client::new(addr)
        .get(STATUS_PATH, &[])
        .map_err(|e| format!("status endpoint: {e:?}"))?;
    let doc: Value = serde_json::from_slice(&response.body).map_err(|e| e.to_string())?;
    let mut counts: BTreeMap<String, (u64, u64)> =
        names.values().map(|n| (n.clone(), (0, 0))).collect();
    for cluster in doc["clusters"].as_array().into_iter().flatten() {
        for ep in cluster["endpoints"].as_array().into_iter().flatten() {
            let address = ep["address"].as_str().unwrap_or_default();
            if let Some(name) = names.get(address) {
                counts.insert(
                    name.clone(),
                    (
                        ep["requests"].as_u64().unwrap_or(0),
                        ep["failures"].as_u64().unwrap_or(0),
                    ),
                );
            }
        }
    }
    Ok(counts)
}
