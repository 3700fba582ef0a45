//! The protection benchmark: five endpoints behind one Envoy, constant-rate (open-loop) load,
//! a fault injected mid-run, for each scenario x configuration. Configurations are the YAML
//! files in bench/configs/; scenarios are defined here. See bench/README.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use reflex_harness::timeline::{start_timeline, RatePhase, Record, TimelineLoad};
use reflex_harness::upstream::UpstreamOptions;
use reflex_harness::{Behaviour, Client, Envoy, EnvoyOptions, RequestSpec, Upstream};
use serde::Serialize;
use serde_json::json;

use crate::common::{self, percentile, Machine, Result};

#[derive(Debug, Default)]
pub struct ProtectionArgs {
    pub scenarios: Option<Vec<String>>,
    pub configs: Option<Vec<String>>,
    pub quick: bool,
    pub wasm: PathBuf,
    pub label: Option<String>,
}

const ENDPOINTS: usize = 5;
/// Ports the config files use (rewritten to the real ones before each run).
const CONFIG_LISTENER_PORT: u16 = 10100;
const CONFIG_ADMIN_PORT: u16 = 9911;
const CONFIG_ENDPOINT_PORTS: [u16; ENDPOINTS] = [9101, 9102, 9103, 9104, 9105];
/// The clients' deadline: a request not answered within it (per socket operation) fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Envoy worker threads, as a typical 2-vCPU sidecar.
const ENVOY_WORKERS: u32 = 2;
/// Resolution of the traffic-share time series.
const WINDOW: Duration = Duration::from_millis(250);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long a share must hold, to the end of the phase, to count as settled.
const SETTLED_FOR: Duration = Duration::from_secs(1);
const PRIORITY_HEADER: &str = "x-reflex-priority";
const CLASSES: [&str; 3] = ["critical", "default", "sheddable"];

struct ConfigDef {
    key: &'static str,
    file: &'static str,
    label: &'static str,
}

const CONFIGS: [ConfigDef; 4] = [
    ConfigDef {
        key: "round-robin",
        file: "protection-round-robin.yaml",
        label: "round robin",
    },
    ConfigDef {
        key: "istio-default",
        file: "protection-istio-default.yaml",
        label: "Istio defaults",
    },
    ConfigDef {
        key: "expert",
        file: "protection-expert.yaml",
        label: "expert native Envoy",
    },
    ConfigDef {
        key: "reflex",
        file: "protection-reflex.yaml",
        label: "reflex",
    },
];

/// Healthy endpoint: 5-7 ms, no errors, no concurrency limit.
fn healthy() -> Behaviour {
    Behaviour::ok().with_latency_ms(5, 2)
}

/// Overload scenario endpoint: one request at a time, 40 ms each (25 requests/s), 4 more may
/// queue, beyond that an immediate 503 (a server with a bounded accept queue).
fn capacity_bound() -> Behaviour {
    Behaviour::ok().with_latency_ms(40, 0).with_capacity(1, 4)
}
const OVERLOAD_CAPACITY_RPS: f64 = ENDPOINTS as f64 * 25.0;

#[derive(Debug, Clone)]
enum Action {
    Set(usize, Behaviour),
    /// Stop serving (the port refuses connections).
    Stop(usize),
    /// Serve again on the same address, healthy.
    Restart(usize),
}

struct Scenario {
    key: &'static str,
    title: &'static str,
    /// Healthy phase before the fault.
    pre: Duration,
    /// Fault phase.
    fault: Duration,
    /// Phase after the fault is repaired (recovery only).
    after: Duration,
    rps_pre: f64,
    rps_fault: f64,
    /// Endpoints the fault hits (their combined share is tracked).
    faulty: Vec<usize>,
    base: fn() -> Behaviour,
    onset: Vec<Action>,
    repair: Vec<Action>,
    /// Send the critical/default/sheddable mix (3:3:4) instead of unmarked requests.
    classes: bool,
}

impl Scenario {
    /// The fault stops an endpoint (its own counters then see nothing of what it refuses).
    fn is_outage(&self) -> bool {
        self.onset.iter().any(|a| matches!(a, Action::Stop(_)))
    }
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    let s = |full: u64, short: u64| Duration::from_secs(if quick { short } else { full });
    let (pre, fault) = (s(4, 2), s(8, 4));
    vec![
        Scenario {
            key: "dead",
            title: "dead endpoint: u0 answers every request with 503",
            pre,
            fault,
            after: Duration::ZERO,
            rps_pre: 200.0,
            rps_fault: 200.0,
            faulty: vec![0],
            base: healthy,
            onset: vec![Action::Set(0, Behaviour::status(503))],
            repair: vec![],
            classes: false,
        },
        Scenario {
            key: "flaky",
            title: "flaky endpoint: u0 answers 30% of requests with 503",
            pre,
            fault,
            after: Duration::ZERO,
            rps_pre: 200.0,
            rps_fault: 200.0,
            faulty: vec![0],
            base: healthy,
            onset: vec![Action::Set(0, healthy().with_status_mix(&[(200, 7), (503, 3)]))],
            repair: vec![],
            classes: false,
        },
        Scenario {
            key: "slow",
            title: "slow endpoint: u0 takes 50-70 ms (10x), no errors",
            pre,
            fault,
            after: Duration::ZERO,
            rps_pre: 200.0,
            rps_fault: 200.0,
            faulty: vec![0],
            base: healthy,
            onset: vec![Action::Set(0, Behaviour::ok().with_latency_ms(50, 20))],
            repair: vec![],
            classes: false,
        },
        Scenario {
            key: "hang",
            title: "hanging endpoint: u0 accepts requests and never answers",
            pre,
            fault,
            after: Duration::ZERO,
            rps_pre: 200.0,
            rps_fault: 200.0,
            faulty: vec![0],
            base: healthy,
            onset: vec![Action::Set(0, healthy().with_hang(true))],
            repair: vec![],
            classes: false,
        },
        Scenario {
            key: "overload",
            title: "overload: 60 → 312 requests/s against a capacity of 125/s (2.5x), 30% critical, 30% default, 40% sheddable",
            pre,
            fault,
            after: Duration::ZERO,
            rps_pre: 60.0,
            rps_fault: OVERLOAD_CAPACITY_RPS * 2.5,
            faulty: vec![],
            base: capacity_bound,
            onset: vec![],
            repair: vec![],
            classes: true,
        },
        Scenario {
            key: "retry-storm",
            title: "retry storm: u0 and u1 answer every request with 503 (configs with retries retry them)",
            pre,
            fault,
            after: Duration::ZERO,
            rps_pre: 200.0,
            rps_fault: 200.0,
            faulty: vec![0, 1],
            base: healthy,
            onset: vec![
                Action::Set(0, Behaviour::status(503)),
                Action::Set(1, Behaviour::status(503)),
            ],
            repair: vec![],
            classes: false,
        },
        Scenario {
            key: "recovery",
            title: "recovery: u0 is down (connections refused), then back healthy",
            pre,
            fault: s(5, 3),
            after: s(6, 3),
            rps_pre: 200.0,
            rps_fault: 200.0,
            faulty: vec![0],
            base: healthy,
            onset: vec![Action::Stop(0)],
            repair: vec![Action::Restart(0)],
            classes: false,
        },
    ]
}

/// The five endpoints, restartable in place.
struct Pool {
    addrs: Vec<SocketAddr>,
    servers: Vec<Option<Upstream>>,
    /// Requests counted by earlier incarnations of a restarted server.
    carried: Vec<u64>,
}

impl Pool {
    fn start() -> Result<Pool> {
        let servers: Vec<Upstream> = (0..ENDPOINTS)
            .map(|i| {
                Upstream::start_with(UpstreamOptions {
                    behaviour: healthy(),
                    max_connections: 2048,
                    ..UpstreamOptions::new(&format!("u{i}"))
                })
                .map_err(|e| e.to_string())
            })
            .collect::<Result<_>>()?;
        Ok(Pool {
            addrs: servers.iter().map(Upstream::addr).collect(),
            servers: servers.into_iter().map(Some).collect(),
            carried: vec![0; ENDPOINTS],
        })
    }

    fn serve(&mut self, i: usize, behaviour: Behaviour) -> Result<()> {
        if self.servers[i].is_none() {
            // Rebinding right after a stop can race the kernel for a moment: retry briefly.
            let mut last = String::new();
            for _ in 0..50 {
                match Upstream::start_with(UpstreamOptions {
                    listen: self.addrs[i],
                    behaviour: behaviour.clone(),
                    max_connections: 2048,
                    ..UpstreamOptions::new(&format!("u{i}"))
                }) {
                    Ok(u) => {
                        self.servers[i] = Some(u);
                        return Ok(());
                    }
                    Err(e) => last = e.to_string(),
                }
                thread::sleep(Duration::from_millis(20));
            }
            return Err(format!("cannot restart u{i} on {}: {last}", self.addrs[i]));
        }
        if let Some(u) = &self.servers[i] {
            u.set_behaviour(behaviour);
        }
        Ok(())
    }

    fn apply(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::Set(i, b) => self.serve(*i, b.clone()),
            Action::Stop(i) => {
                if let Some(u) = self.servers[*i].take() {
                    self.carried[*i] += u.stats().requests;
                    u.stop();
                }
                Ok(())
            }
            Action::Restart(i) => self.serve(*i, healthy()),
        }
    }

    /// Cumulative requests each endpoint received since the last reset.
    fn counts(&self) -> Vec<u64> {
        self.servers
            .iter()
            .zip(&self.carried)
            .map(|(s, c)| c + s.as_ref().map_or(0, |u| u.stats().requests))
            .collect()
    }

    /// Every endpoint serving `base`, idle, counters zero.
    fn reset(&mut self, base: &Behaviour) -> Result<()> {
        for i in 0..ENDPOINTS {
            self.serve(i, base.clone())?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && self
                .servers
                .iter()
                .flatten()
                .any(|u| u.stats().in_flight > 0)
        {
            thread::sleep(Duration::from_millis(20));
        }
        for u in self.servers.iter().flatten() {
            u.reset_stats();
        }
        self.carried = vec![0; ENDPOINTS];
        Ok(())
    }
}

fn config_text(def: &ConfigDef, pool: &Pool, wasm: &std::path::Path) -> Result<String> {
    let mut ports = vec![(CONFIG_LISTENER_PORT, 0), (CONFIG_ADMIN_PORT, 0)];
    ports.extend(
        CONFIG_ENDPOINT_PORTS
            .iter()
            .zip(&pool.addrs)
            .map(|(from, a)| (*from, a.port())),
    );
    common::config_with_ports(def.file, &ports, wasm)
}

/// The reflex plugin configuration embedded in protection-reflex.yaml must be reflex-all.json.
fn check_embedded_reflex_config() -> Result<()> {
    let path = common::bench_dir().join("configs/protection-reflex.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let embedded = common::embedded_config(&text, "protection-reflex.yaml")?.json;
    if embedded != common::config_json("reflex-all.json")? {
        return Err(
            "bench/configs/protection-reflex.yaml embeds a reflex configuration that differs from \
             bench/configs/reflex-all.json: copy the file into the `value: |` block"
                .into(),
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
struct Window {
    t_ms: u64,
    sent: usize,
    ok: usize,
    upstream: u64,
    faulty: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Outcome {
    scenario: &'static str,
    config: &'static str,
    error: Option<String>,
    sent: usize,
    ok: usize,
    success: f64,
    sent_after: usize,
    ok_after: usize,
    success_after: f64,
    p50_after_ms: Option<f64>,
    p90_after_ms: Option<f64>,
    p99_after_ms: Option<f64>,
    p99_before_ms: Option<f64>,
    errors_after: BTreeMap<String, usize>,
    upstream_total: u64,
    amplification: f64,
    amplification_after: f64,
    faulty_share_after: Option<f64>,
    fair_share: Option<f64>,
    below_half_fair_after_s: Option<f64>,
    fair_again_after_repair_s: Option<f64>,
    goodput_after_rps: Option<f64>,
    capacity_rps: Option<f64>,
    success_by_class_after: BTreeMap<String, f64>,
    envoy_counters: BTreeMap<String, u64>,
    windows: Vec<Window>,
}

/// Cumulative per-endpoint counts at `t` (the last sample at or before it).
fn counts_at(samples: &[(Duration, Vec<u64>)], t: Duration) -> Vec<u64> {
    samples
        .iter()
        .take_while(|(at, _)| *at <= t)
        .last()
        .or_else(|| samples.first())
        .map_or_else(|| vec![0; ENDPOINTS], |(_, c)| c.clone())
}

fn delta(samples: &[(Duration, Vec<u64>)], from: Duration, to: Duration, only: &[usize]) -> u64 {
    let (a, b) = (counts_at(samples, from), counts_at(samples, to));
    (0..ENDPOINTS)
        .filter(|i| only.is_empty() || only.contains(i))
        .map(|i| b[i].saturating_sub(a[i]))
        .sum()
}

/// Start of the first window from which on every window in `[from, to)` satisfies `pred` on
/// the faulty endpoints' share of upstream requests (windows without traffic are skipped).
fn settled_after(
    samples: &[(Duration, Vec<u64>)],
    faulty: &[usize],
    from: Duration,
    to: Duration,
    pred: impl Fn(f64) -> bool,
) -> Option<f64> {
    let mut starts = Vec::new();
    let mut t = from;
    while t + WINDOW <= to {
        starts.push(t);
        t += WINDOW;
    }
    let ok: Vec<Option<bool>> = starts
        .iter()
        .map(|&s| {
            let total = delta(samples, s, s + WINDOW, &[]);
            (total > 0).then(|| pred(delta(samples, s, s + WINDOW, faulty) as f64 / total as f64))
        })
        .collect();
    let last_bad = ok.iter().rposition(|v| *v == Some(false));
    let first_good = match last_bad {
        None => 0,
        Some(i) => i + 1,
    };
    // A state counts as reached only if it then held for at least SETTLED_FOR (a last lucky
    // window is not a recovery).
    let held = WINDOW * (starts.len() - first_good) as u32;
    (first_good < starts.len() && held >= SETTLED_FOR)
        .then(|| (starts[first_good] - from).as_secs_f64())
}

fn analyse(
    sc: &Scenario,
    config: &'static str,
    records: &[Record],
    samples: &[(Duration, Vec<u64>)],
    counters: BTreeMap<String, u64>,
) -> Outcome {
    let onset = sc.pre;
    let fault_end = sc.pre + sc.fault;
    let end = fault_end + sc.after;
    let after: Vec<&Record> = records.iter().filter(|r| r.due >= onset).collect();
    let before: Vec<&Record> = records.iter().filter(|r| r.due < onset).collect();
    let sorted = |rs: &[&Record]| {
        let mut v: Vec<Duration> = rs
            .iter()
            .filter(|r| !r.dropped())
            .map(|r| r.latency)
            .collect();
        v.sort_unstable();
        v
    };
    let lat_after = sorted(&after);
    let lat_before = sorted(&before);
    let ok = records.iter().filter(|r| r.ok()).count();
    let ok_after = after.iter().filter(|r| r.ok()).count();
    let ratio = |a: usize, b: usize| if b > 0 { a as f64 / b as f64 } else { f64::NAN };
    let mut errors_after = BTreeMap::new();
    for r in &after {
        let key = match (r.status, r.error) {
            (Some(s), _) if !(200..300).contains(&s) => format!("status {s}"),
            (_, Some(e)) => e.to_string(),
            _ => continue,
        };
        *errors_after.entry(key).or_insert(0) += 1;
    }
    let last = samples.last().map_or(Duration::ZERO, |(t, _)| *t);
    let upstream_total = delta(samples, Duration::ZERO, last, &[]);
    let upstream_after = delta(samples, onset, last, &[]);
    let sent_after = after.iter().filter(|r| !r.dropped()).count();
    let sent = records.iter().filter(|r| !r.dropped()).count();
    let has_faulty = !sc.faulty.is_empty();
    let fair = sc.faulty.len() as f64 / ENDPOINTS as f64;
    let faulty_share_after = (has_faulty && !sc.is_outage()).then(|| {
        ratio(
            delta(samples, onset, fault_end, &sc.faulty) as usize,
            delta(samples, onset, fault_end, &[]) as usize,
        )
    });
    let below_half_fair_after_s = if has_faulty && !sc.is_outage() {
        settled_after(samples, &sc.faulty, onset, fault_end, |s| s < fair / 2.0)
    } else {
        None
    };
    let fair_again_after_repair_s = (has_faulty && !sc.after.is_zero())
        .then(|| settled_after(samples, &sc.faulty, fault_end, end, |s| s >= fair / 2.0))
        .flatten();
    let (goodput_after_rps, capacity_rps) = if sc.classes {
        (
            Some(ok_after as f64 / (end - onset).as_secs_f64()),
            Some(OVERLOAD_CAPACITY_RPS),
        )
    } else {
        (None, None)
    };
    let mut success_by_class_after = BTreeMap::new();
    if sc.classes {
        for (i, class) in CLASSES.iter().enumerate() {
            let of_class: Vec<&&Record> = after
                .iter()
                .filter(|r| class_of(r.class) == Some(i))
                .collect();
            let ok = of_class.iter().filter(|r| r.ok()).count();
            success_by_class_after.insert(class.to_string(), ratio(ok, of_class.len()));
        }
    }
    let mut windows = Vec::new();
    let mut t = Duration::ZERO;
    while t < end {
        let in_window: Vec<&Record> = records
            .iter()
            .filter(|r| r.due >= t && r.due < t + WINDOW)
            .collect();
        windows.push(Window {
            t_ms: t.as_millis() as u64,
            sent: in_window.len(),
            ok: in_window.iter().filter(|r| r.ok()).count(),
            upstream: delta(samples, t, t + WINDOW, &[]),
            faulty: if has_faulty {
                delta(samples, t, t + WINDOW, &sc.faulty)
            } else {
                0
            },
        });
        t += WINDOW;
    }
    Outcome {
        scenario: sc.key,
        config,
        error: None,
        sent: records.len(),
        ok,
        success: ratio(ok, records.len()),
        sent_after: after.len(),
        ok_after,
        success_after: ratio(ok_after, after.len()),
        p50_after_ms: percentile(&lat_after, 50.0),
        p90_after_ms: percentile(&lat_after, 90.0),
        p99_after_ms: percentile(&lat_after, 99.0),
        p99_before_ms: percentile(&lat_before, 99.0),
        errors_after,
        upstream_total,
        amplification: ratio(upstream_total as usize, sent),
        amplification_after: ratio(upstream_after as usize, sent_after),
        faulty_share_after,
        fair_share: has_faulty.then_some(fair),
        below_half_fair_after_s,
        fair_again_after_repair_s,
        goodput_after_rps,
        capacity_rps,
        success_by_class_after,
        envoy_counters: counters,
        windows,
    }
}

/// The class mix: request `i` uses spec `i % 10`; indices into [`CLASSES`].
const MIX: [usize; 10] = [0, 1, 2, 0, 2, 1, 2, 0, 1, 2];

fn class_of(spec_index: usize) -> Option<usize> {
    MIX.get(spec_index).copied()
}

fn specs(sc: &Scenario) -> Vec<RequestSpec> {
    if sc.classes {
        MIX.iter()
            .map(|&c| RequestSpec::get("/").with_header(PRIORITY_HEADER, CLASSES[c]))
            .collect()
    } else {
        vec![RequestSpec::get("/")]
    }
}

const COUNTERS: [&str; 12] = [
    "outlier_detection.ejections_enforced_total",
    "outlier_detection.ejections_active",
    "upstream_rq_retry",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_success",
    "upstream_rq_per_try_timeout",
    "upstream_rq_timeout",
    "upstream_cx_connect_fail",
    "admission_control.rq_rejected",
    "gradient_controller.rq_blocked",
    "downstream_rq_5xx",
    "reflex_",
];

fn run_one(
    sc: &Scenario,
    def: &ConfigDef,
    pool: &mut Pool,
    args: &ProtectionArgs,
) -> Result<Outcome> {
    pool.reset(&(sc.base)())?;
    let yaml = config_text(def, pool, &args.wasm)?;
    let mut opts = EnvoyOptions::new(yaml);
    opts.concurrency = ENVOY_WORKERS;
    opts.log_level = "warning".into();
    let envoy = Envoy::start(opts).map_err(|e| e.to_string())?;
    let addr = envoy.listener_addr("outbound").map_err(|e| e.to_string())?;
    // Warm-up: connections, JIT; then counters start from zero.
    let mut warm = Client::new(addr).with_timeout(CLIENT_TIMEOUT);
    for _ in 0..25 {
        let _ = warm.get("/", &[]);
    }
    drop(warm);
    pool.reset(&(sc.base)())?;

    let rps_max = sc.rps_pre.max(sc.rps_fault);
    let load = TimelineLoad {
        phases: vec![
            RatePhase {
                duration: sc.pre,
                rps: sc.rps_pre,
            },
            RatePhase {
                duration: sc.fault + sc.after,
                rps: sc.rps_fault,
            },
        ],
        workers: ((rps_max * CLIENT_TIMEOUT.as_secs_f64() * 1.25) as usize + 16).min(600),
        timeout: CLIENT_TIMEOUT,
        grace: CLIENT_TIMEOUT,
    };
    let mut events: Vec<(Duration, Action)> = sc
        .onset
        .iter()
        .map(|a| (sc.pre, a.clone()))
        .chain(sc.repair.iter().map(|a| (sc.pre + sc.fault, a.clone())))
        .collect();
    events.reverse();
    let run = start_timeline(addr, &specs(sc), &load);
    let end = load.duration();
    let mut samples = vec![(Duration::ZERO, pool.counts())];
    let mut failure = None;
    while run.elapsed() < end + CLIENT_TIMEOUT {
        while events.last().is_some_and(|(at, _)| run.elapsed() >= *at) {
            if let Some((_, action)) = events.pop() {
                if let Err(e) = pool.apply(&action) {
                    failure = Some(e);
                }
            }
        }
        samples.push((run.elapsed(), pool.counts()));
        thread::sleep(SAMPLE_EVERY);
    }
    let timeline = run.join();
    samples.push((end + CLIENT_TIMEOUT * 2, pool.counts()));
    let counters = common::envoy_counters(&envoy, &COUNTERS);
    drop(envoy);
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(analyse(sc, def.key, &timeline.records, &samples, counters))
}

fn counter_sum(o: &Outcome, suffix: &str) -> u64 {
    o.envoy_counters
        .iter()
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(_, v)| v)
        .sum()
}

fn actions(o: &Outcome) -> String {
    let mut parts = Vec::new();
    for (suffix, label) in [
        ("outlier_detection.ejections_enforced_total", "ejections"),
        ("upstream_rq_retry", "retries"),
        ("upstream_rq_retry_overflow", "retries refused"),
        ("upstream_rq_per_try_timeout", "per-try timeouts"),
        ("admission_control.rq_rejected", "admission rejects"),
        ("gradient_controller.rq_blocked", "concurrency rejects"),
        // reflex's own decisions (its retries and per-try timeouts are Envoy's, counted above).
        ("reflex_ejections_total", "reflex ejections"),
        (
            "reflex_retries_denied_budget_total",
            "retries cut by reflex's budget",
        ),
        ("reflex_breaker_opened_total", "breaker openings"),
        ("reflex_breaker_rejected_total", "breaker rejects"),
        ("reflex_throttle_rejected_total", "throttled"),
        ("reflex_bulkhead_rejected_total", "bulkhead rejects"),
        ("reflex_shed_critical_total", "shed critical"),
        ("reflex_shed_default_total", "shed default"),
        ("reflex_shed_sheddable_total", "shed sheddable"),
    ] {
        let n = counter_sum(o, suffix);
        if n > 0 {
            parts.push(format!("{n} {label}"));
        }
    }
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join(", ")
    }
}

fn secs(v: Option<f64>, applicable: bool) -> String {
    match (v, applicable) {
        (_, false) => "–".into(),
        // Window starts: 0 means the very first window after the event was already settled.
        (Some(s), true) if s < WINDOW.as_secs_f64() / 2.0 => {
            format!("< {:.2} s", WINDOW.as_secs_f64())
        }
        (Some(s), true) => format!("{s:.2} s"),
        (None, true) => "never".into(),
    }
}

fn markdown(
    machine: &Machine,
    scenarios: &[Scenario],
    configs: &[&ConfigDef],
    outcomes: &[Outcome],
    elapsed: Duration,
    quick: bool,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# reflex protection benchmark\n");
    let _ = writeln!(md, "{}\n", machine.line());
    let _ = writeln!(
        md,
        "`./build.sh bench protection`{}: five test upstreams (u0–u4, healthy = 5–7 ms) behind one \
         Envoy ({ENVOY_WORKERS} workers), open-loop constant-rate load (clients' deadline {} s per \
         request; latency counted from the intended send time), the fault starting at the \
         onset; one fresh Envoy per scenario × configuration, configurations from \
         `bench/configs/`. Total run {:.0} s.{}\n",
        if quick { " --quick" } else { "" },
        CLIENT_TIMEOUT.as_secs(),
        elapsed.as_secs_f64(),
        if quick {
            " **Quick mode: shortened phases, for development only.**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Columns: *success* = 2xx answers ÷ requests scheduled (whole run / from onset); latency \
         percentiles over every request from onset, failed ones included at their time to \
         failure; *amplification* = requests the upstreams received (their own counters) ÷ \
         requests clients sent, from onset; *share* = the faulty endpoint(s)' share of upstream \
         requests during the fault (fair share in brackets); *below ½ fair after* = time from \
         onset until that share stays under half the fair share, in {} ms windows (\"never\": \
         not within the fault phase); *Envoy* = what Envoy itself did, from its counters.\n",
        WINDOW.as_millis()
    );
    for sc in scenarios {
        let rows: Vec<(&ConfigDef, &Outcome)> = configs
            .iter()
            .filter_map(|c| {
                outcomes
                    .iter()
                    .find(|o| o.scenario == sc.key && o.config == c.key)
                    .map(|o| (*c, o))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {}\n", sc.key);
        let _ = writeln!(
            md,
            "{}. {} s healthy at {:.0}/s, then {} s{} at {:.0}/s.\n",
            sc.title,
            sc.pre.as_secs(),
            sc.rps_pre,
            sc.fault.as_secs(),
            if sc.after.is_zero() {
                String::new()
            } else {
                format!(", then {} s repaired", sc.after.as_secs())
            },
            sc.rps_fault
        );
        let extra_head = if sc.classes {
            " goodput from onset (capacity 125/s) | success critical / default / sheddable |"
        } else if !sc.after.is_zero() {
            " share | below ½ fair after | fair share again after repair |"
        } else {
            " share | below ½ fair after |"
        };
        let _ = writeln!(
            md,
            "| config | success, whole run | success from onset | p50 / p90 / p99 from onset, ms | p99 before onset, ms | amplification |{extra_head} Envoy |"
        );
        let cols = 6 + extra_head.matches('|').count() + 1;
        let _ = writeln!(md, "|{}", "---|".repeat(cols));
        for (c, o) in rows {
            if let Some(e) = &o.error {
                let _ = writeln!(md, "| {} | run failed: {} |", c.label, e.replace('|', "/"));
                continue;
            }
            let opt = |v: Option<f64>| v.map_or("–".into(), |x| format!("{x:.1}"));
            let extra = if sc.classes {
                let class = |k: &str| {
                    o.success_by_class_after
                        .get(k)
                        .map_or("–".into(), |v| common::pct(*v))
                };
                format!(
                    " {:.0}/s ({}) | {} / {} / {} |",
                    o.goodput_after_rps.unwrap_or(f64::NAN),
                    common::pct(o.goodput_after_rps.unwrap_or(f64::NAN) / OVERLOAD_CAPACITY_RPS),
                    class("critical"),
                    class("default"),
                    class("sheddable")
                )
            } else {
                let mut s = if sc.is_outage() {
                    // A stopped endpoint cannot count the connections it refuses.
                    " n/a (down) | n/a (down) |".to_string()
                } else {
                    let share = format!(
                        "{} ({})",
                        common::pct(o.faulty_share_after.unwrap_or(f64::NAN)),
                        common::pct(o.fair_share.unwrap_or(f64::NAN))
                    );
                    format!(" {share} | {} |", secs(o.below_half_fair_after_s, true))
                };
                if !sc.after.is_zero() {
                    let _ = write!(s, " {} |", secs(o.fair_again_after_repair_s, true));
                }
                s
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} / {} / {} | {} | {:.2} |{extra} {} |",
                c.label,
                common::pct(o.success),
                common::pct(o.success_after),
                opt(o.p50_after_ms),
                opt(o.p90_after_ms),
                opt(o.p99_after_ms),
                opt(o.p99_before_ms),
                o.amplification_after,
                actions(o)
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "## Where reflex stands against the expert configuration\n"
    );
    let mut lines = Vec::new();
    for sc in scenarios {
        let find = |k: &str| {
            outcomes
                .iter()
                .find(|o| o.scenario == sc.key && o.config == k && o.error.is_none())
        };
        let (Some(r), Some(e)) = (find("reflex"), find("expert")) else {
            continue;
        };
        let mut behind = Vec::new();
        let mut ahead = Vec::new();
        // Differences within `tie` count as neither (run-to-run noise, rounding).
        let mut cmp = |name: &str,
                       rv: f64,
                       ev: f64,
                       higher_better: bool,
                       tie: f64,
                       fmt: &dyn Fn(f64) -> String| {
            if !(rv.is_finite() && ev.is_finite()) || (rv - ev).abs() <= tie {
                return;
            }
            let better = if higher_better { rv > ev } else { rv < ev };
            let line = format!("{name} {} vs {}", fmt(rv), fmt(ev));
            if better {
                ahead.push(line);
            } else {
                behind.push(line);
            }
        };
        cmp(
            "success from onset",
            r.success_after,
            e.success_after,
            true,
            0.0005,
            &|v| common::pct(v),
        );
        cmp(
            "p99 from onset",
            r.p99_after_ms.unwrap_or(f64::NAN),
            e.p99_after_ms.unwrap_or(f64::NAN),
            false,
            0.05 * e.p99_after_ms.unwrap_or(0.0),
            &|v| format!("{v:.1} ms"),
        );
        cmp(
            "amplification",
            r.amplification_after,
            e.amplification_after,
            false,
            0.005,
            &|v| format!("{v:.2}"),
        );
        lines.push(format!(
            "- **{}**: behind on {}; ahead on {} (ties within 0.05 points of success, 5% of \
             p99, 0.005 of amplification not listed).",
            sc.key,
            if behind.is_empty() {
                "nothing".into()
            } else {
                behind.join(", ")
            },
            if ahead.is_empty() {
                "nothing".into()
            } else {
                ahead.join(", ")
            }
        ));
    }
    for l in lines {
        let _ = writeln!(md, "{l}");
    }
    let targets = targets(scenarios, configs, outcomes);
    if !targets.is_empty() {
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(
            md,
            "The targets set for reflex's retries, timeouts and admission, checked for every \
             configuration of this run (✔ met, ✘ missed).\n"
        );
        let _ = writeln!(
            md,
            "| target | {} |",
            configs
                .iter()
                .map(|c| c.label)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(md, "|---|{}", "---|".repeat(configs.len()));
        for l in targets {
            let _ = writeln!(md, "{l}");
        }
    }
    md
}

/// Hang: success from onset >= 99.9%. Retry storm: amplification <= 1.2. Overload: critical
/// success >= 99.9% and goodput >= 90% of capacity. One table row per target.
fn targets(scenarios: &[Scenario], configs: &[&ConfigDef], outcomes: &[Outcome]) -> Vec<String> {
    type Get = fn(&Outcome) -> Option<f64>;
    /// Scenario, target text, value, higher is better, threshold, format.
    type Target = (
        &'static str,
        &'static str,
        Get,
        bool,
        f64,
        fn(f64) -> String,
    );
    let defs: [Target; 4] = [
        (
            "hang",
            "hang: success from onset ≥ 99.9%",
            |o| Some(o.success_after),
            true,
            0.999,
            |v| format!("{:.2}%", 100.0 * v),
        ),
        (
            "retry-storm",
            "retry-storm: amplification ≤ 1.20",
            |o| Some(o.amplification_after),
            false,
            1.2,
            |v| format!("{v:.2}"),
        ),
        (
            "overload",
            "overload: critical success ≥ 99.9%",
            |o| o.success_by_class_after.get("critical").copied(),
            true,
            0.999,
            |v| format!("{:.2}%", 100.0 * v),
        ),
        (
            "overload",
            "overload: goodput ≥ 90% of capacity",
            |o| Some(o.goodput_after_rps? / o.capacity_rps?),
            true,
            0.9,
            |v| common::pct(v),
        ),
    ];
    let mut rows = Vec::new();
    for (scenario, name, get, higher, bound, fmt) in defs {
        if !scenarios.iter().any(|s| s.key == scenario) {
            continue;
        }
        let cells: Vec<String> = configs
            .iter()
            .map(|c| {
                let v = outcomes
                    .iter()
                    .find(|o| o.scenario == scenario && o.config == c.key && o.error.is_none())
                    .and_then(get)
                    .filter(|v| v.is_finite());
                match v {
                    None => "–".into(),
                    Some(v) => {
                        let met = if higher { v >= bound } else { v <= bound };
                        format!("{} {}", if met { "✔" } else { "✘" }, fmt(v))
                    }
                }
            })
            .collect();
        rows.push(format!("| {name} | {} |", cells.join(" | ")));
    }
    rows
}

pub fn run(args: &ProtectionArgs) -> Result<()> {
    let started = Instant::now();
    let all = scenarios(args.quick);
    let pick = |key: &str, wanted: &Option<Vec<String>>| {
        wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == key))
    };
    if let Some(w) = &args.scenarios {
        for k in w {
            if !all.iter().any(|s| s.key == k) {
                return Err(format!("unknown scenario {k}"));
            }
        }
    }
    if let Some(w) = &args.configs {
        for k in w {
            if !CONFIGS.iter().any(|c| c.key == k) {
                return Err(format!("unknown configuration {k}"));
            }
        }
    }
    let chosen: Vec<Scenario> = all
        .into_iter()
        .filter(|s| pick(s.key, &args.scenarios))
        .collect();
    let configs: Vec<&ConfigDef> = CONFIGS
        .iter()
        .filter(|c| pick(c.key, &args.configs))
        .collect();
    if !args.wasm.is_file() {
        return Err(format!("{} not found: run ./build.sh", args.wasm.display()));
    }
    check_embedded_reflex_config()?;
    let machine = Machine::probe(&args.wasm, args.label.as_deref());
    let mut pool = Pool::start()?;
    // Every configuration must pass `envoy --mode validate` (with the real ports and module).
    for c in &configs {
        let text = config_text(c, &pool, &args.wasm)?;
        Envoy::validate(&text)
            .map_err(|e| format!("{} fails envoy --mode validate:\n{e}", c.file))?;
    }
    println!("reflex protection benchmark — {}", machine.line());
    println!(
        "{} scenarios × {} configurations{}",
        chosen.len(),
        configs.len(),
        if args.quick { " (quick)" } else { "" }
    );
    let mut outcomes = Vec::new();
    for sc in &chosen {
        println!("== {}: {}", sc.key, sc.title);
        for c in &configs {
            let outcome = match run_one(sc, c, &mut pool, args) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("   {} failed: {e}", c.key);
                    let mut o = analyse(sc, c.key, &[], &[], BTreeMap::new());
                    o.error = Some(e.lines().next().unwrap_or_default().to_string());
                    o
                }
            };
            println!(
                "   {:<14} success {:>6} (from onset {:>6})  p99 {:>7} ms  amplification {:.2}  {}",
                c.key,
                common::pct(outcome.success),
                common::pct(outcome.success_after),
                outcome
                    .p99_after_ms
                    .map_or("–".into(), |v| format!("{v:.1}")),
                outcome.amplification_after,
                actions(&outcome)
            );
            outcomes.push(outcome);
        }
    }
    drop(pool);
    let elapsed = started.elapsed();
    let md = markdown(&machine, &chosen, &configs, &outcomes, elapsed, args.quick);
    let doc = json!({
        "benchmark": "protection",
        "machine": machine,
        "quick": args.quick,
        "settings": {
            "endpoints": ENDPOINTS, "envoyWorkers": ENVOY_WORKERS,
            "clientTimeoutMs": CLIENT_TIMEOUT.as_millis() as u64,
            "windowMs": WINDOW.as_millis() as u64,
            "healthy": healthy(), "overloadEndpoint": capacity_bound(),
            "overloadCapacityRps": OVERLOAD_CAPACITY_RPS,
            "wasm": args.wasm.display().to_string(), "wasmSha256": common::sha256(&args.wasm),
        },
        "scenarios": chosen.iter().map(|s| json!({
            "key": s.key, "title": s.title, "preSecs": s.pre.as_secs_f64(),
            "faultSecs": s.fault.as_secs_f64(), "afterSecs": s.after.as_secs_f64(),
            "rpsPre": s.rps_pre, "rpsFault": s.rps_fault, "faulty": s.faulty,
        })).collect::<Vec<_>>(),
        "configs": configs.iter().map(|c| json!({"key": c.key, "file": format!("bench/configs/{}", c.file)})).collect::<Vec<_>>(),
        "outcomes": outcomes,
        "elapsedSecs": elapsed.as_secs_f64(),
    });
    // Compact: the per-window series make the pretty form large.
    let json_text = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
    let prefix = if args.quick {
        "protection-quick"
    } else {
        "protection"
    };
    // Partial runs never replace the published table.
    let full = !(args.quick || args.scenarios.is_some() || args.configs.is_some());
    common::publish("protection", prefix, &json_text, &md, full, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(per_window: &[(u64, u64)]) -> Vec<(Duration, Vec<u64>)> {
        // (faulty, others) requests per 250 ms window; faulty is endpoint 0.
        let mut out = vec![(Duration::ZERO, vec![0; ENDPOINTS])];
        let mut acc = vec![0u64; ENDPOINTS];
        for (i, (f, o)) in per_window.iter().enumerate() {
            acc[0] += f;
            acc[1] += o;
            out.push((WINDOW * (i as u32 + 1), acc.clone()));
        }
        out
    }

    #[test]
    fn settles_when_the_share_stays_low() {
        let s = samples(&[(10, 40), (8, 42), (1, 49), (0, 50), (0, 50), (0, 50)]);
        let t = settled_after(&s, &[0], Duration::ZERO, WINDOW * 6, |x| x < 0.1);
        assert_eq!(t, Some(0.5));
        // Settled for less than SETTLED_FOR before the phase ends: not settled.
        let s = samples(&[(10, 40), (8, 42), (1, 49), (0, 50)]);
        assert_eq!(
            settled_after(&s, &[0], Duration::ZERO, WINDOW * 4, |x| x < 0.1),
            None
        );
        // A relapse in the last window means it never settled.
        let s = samples(&[(0, 50), (0, 50), (0, 50), (0, 50), (10, 40)]);
        assert_eq!(
            settled_after(&s, &[0], Duration::ZERO, WINDOW * 5, |x| x < 0.1),
            None
        );
    }

    #[test]
    fn scenarios_fit_the_time_budget() {
        let total: Duration = scenarios(false)
            .iter()
            .map(|s| s.pre + s.fault + s.after)
            .sum();
        // x 4 configurations, plus start-up and drain: well under 15 minutes.
        assert!(total * 4 < Duration::from_secs(8 * 60), "{total:?}");
    }
}
