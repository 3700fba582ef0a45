//! The soak run: the shipped `envoy/outbound.yaml` (its embedded reflex configuration with the
//! control endpoint switched on, under a random token) in front of three healthy upstreams, at a
//! steady open-loop rate for N minutes, while the kill switch and the global dry-run are toggled
//! through the control endpoint; Envoy's memory is sampled every 10 s. It answers two questions:
//! does memory stay flat over a long run with switches flipping, and does the filter ever make a
//! request fail that it should not have. Bounded, not in CI: `./build.sh soak [--minutes N]`.
//!
//! Each minute of the run: 15 s steady, 10 s kill (`{"scope": {"all": true}}`) then `normal`,
//! 20 s steady, 10 s global dry-run (`{"enabled": true}`) then `normal`, 5 s steady.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use reflex_harness::envoy::shipped_config;
use reflex_harness::load::{open_loop, OpenLoop};
use reflex_harness::timeline::{start_timeline, RatePhase, Record, TimelineLoad};
use reflex_harness::{Behaviour, Client, Envoy, EnvoyOptions, RequestSpec, Upstream};
use serde::Serialize;
use serde_json::{json, Value};

use crate::common::{self, percentile, Machine, Result};

/// A run of this length (or longer) is published as `soak-latest`; shorter ones are partial.
pub const DEFAULT_MINUTES: u64 = 10;

pub struct SoakArgs {
    pub minutes: u64,
    pub rps: f64,
    pub wasm: PathBuf,
    pub label: Option<String>,
}

impl Default for SoakArgs {
    fn default() -> Self {
        SoakArgs {
            minutes: DEFAULT_MINUTES,
            rps: 200.0,
            wasm: PathBuf::new(),
            label: None,
        }
    }
}

/// Envoy worker threads, as a typical 2-vCPU sidecar.
const ENVOY_WORKERS: u32 = 2;
const UPSTREAMS: usize = 3;
/// Ports `envoy/outbound.yaml` uses (moved to free ones).
const CONFIG_LISTENER_PORT: u16 = 10000;
const CONFIG_ADMIN_PORT: u16 = 9901;
const CONFIG_ENDPOINT_PORTS: [u16; UPSTREAMS] = [9001, 9002, 9003];
/// The control endpoint's default path prefix (the shipped config does not change it).
const CONTROL: &str = "/.reflex/control";
/// The toggles repeat every cycle: kill at +15 s, dry-run at +45 s, each for 10 s.
const CYCLE: Duration = Duration::from_secs(60);
const KILL_AT: Duration = Duration::from_secs(15);
const DRY_RUN_AT: Duration = Duration::from_secs(45);
const SWITCH_FOR: Duration = Duration::from_secs(10);
const KILL_BODY: &str = r#"{"scope": {"all": true}}"#;
const DRY_RUN_BODY: &str = r#"{"enabled": true}"#;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Open-loop traffic before the measured run (connections, JIT, endpoint discovery).
const WARMUP: Duration = Duration::from_secs(5);
/// The clients' deadline per socket operation.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Memory counts as flat when the last third's mean is at most this much above the first's.
const FLAT_WITHIN: f64 = 0.05;
/// The reply reflex's kill switch gives (`x-reflex-reason`, status).
const KILL_REASON: &str = "killed";
const KILL_STATUS: u16 = 503;

/// Healthy upstream with a few ms of latency: 3-5 ms, no errors.
fn healthy() -> Behaviour {
    Behaviour::ok().with_latency_ms(3, 2)
}

/// 32 hex characters from the kernel's random source (the endpoint wants 16+ printable ones).
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `envoy/outbound.yaml` with its ports moved to free ones and the control endpoint on.
fn config(ups: &[Upstream], wasm: &std::path::Path, token: &str) -> Result<String> {
    let mut ports = vec![(CONFIG_LISTENER_PORT, 0), (CONFIG_ADMIN_PORT, 0)];
    ports.extend(
        CONFIG_ENDPOINT_PORTS
            .iter()
            .zip(ups)
            .map(|(from, u)| (*from, u.port())),
    );
    let yaml = shipped_config("outbound.yaml", &ports, wasm).map_err(|e| e.to_string())?;
    common::patch_embedded_config(
        &yaml,
        "envoy/outbound.yaml",
        json!({"control": {"enabled": true, "token": token}}),
    )
}

/// One control request: `GET <prefix>/status` (empty body) or `POST <prefix>/<action>`.
fn control(addr: SocketAddr, token: &str, action: &str, body: &str) -> Result<(u16, Value)> {
    let auth = format!("Bearer {token}");
    let method = if action == "status" { "GET" } else { "POST" };
    let r = Client::new(addr)
        .with_timeout(CLIENT_TIMEOUT)
        .request(
            method,
            &format!("{CONTROL}/{action}"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .map_err(|e| format!("control {action}: {e}"))?;
    Ok((
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    ))
}

/// The switches in force as the status answer states them (`effective`).
fn effective(addr: SocketAddr, token: &str) -> Result<Value> {
    match control(addr, token, "status", "")? {
        (200, doc) if doc["effective"].is_object() => Ok(doc["effective"].clone()),
        (status, doc) => Err(format!("control status answered {status}: {doc}")),
    }
}

/// One switch change as it happened, offsets from the start of the measured run.
#[derive(Debug, Clone, Serialize)]
struct Toggle {
    cycle: u64,
    action: &'static str,
    body: &'static str,
    scheduled_s: f64,
    sent_ms: f64,
    acked_ms: f64,
    /// HTTP status of the control answer (0: no answer).
    status: u16,
    /// `effective` of a status request right after.
    effective: Value,
    /// Answered 200 and the status shows what was asked for.
    ok: bool,
    error: Option<String>,
}

fn toggle(
    addr: SocketAddr,
    token: &str,
    start: Instant,
    (cycle, at, action, body): (u64, Duration, &'static str, &'static str),
) -> Toggle {
    let sent = start.elapsed();
    let answer = control(addr, token, action, body);
    let acked = start.elapsed();
    let (status, error) = match &answer {
        Ok((200, _)) => (200, None),
        Ok((s, doc)) => (*s, Some(format!("answered {s}: {doc}"))),
        Err(e) => (0, Some(e.clone())),
    };
    let (effective, check) = match effective(addr, token) {
        Ok(v) => {
            let rules = v["killRules"].as_u64();
            let dry = v["dryRun"].as_bool();
            let expected = match action {
                "kill" => rules == Some(1),
                "dry-run" => dry == Some(true),
                _ => rules == Some(0) && dry == Some(false),
            };
            (v, expected)
        }
        Err(e) => (Value::String(e), false),
    };
    Toggle {
        cycle,
        action,
        body,
        scheduled_s: at.as_secs_f64(),
        sent_ms: common::ms(sent),
        acked_ms: common::ms(acked),
        status,
        ok: status == 200 && check,
        error: error.or_else(|| (!check).then(|| format!("status shows {effective}"))),
        effective,
    }
}

/// Memory and counters at one moment.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    t_s: f64,
    rss_kib: u64,
    /// Wasm linear memories in the process (one per VM) and their sizes, from smaps.
    wasm_vms: usize,
    linear_kib: Vec<u64>,
    touched_kib: Vec<u64>,
    /// Envoy's own allocator figures (`server.memory_allocated`, `server.memory_heap_size`).
    memory_allocated: Option<u64>,
    memory_heap_size: Option<u64>,
    shared_state_errors: u64,
    reflex_requests: u64,
    /// Envoy's wasm runtime statistics (`wasm.*`; reflex's own metrics are `wasmcustom.*`).
    wasm_stats: BTreeMap<String, u64>,
}

fn sample(envoy: &Envoy, t: Duration) -> Result<Sample> {
    let pid = envoy.pid().ok_or("envoy has no pid")?;
    let memories = common::wasm_memories(pid)?;
    let stats = envoy.stats().map_err(|e| e.to_string())?;
    Ok(Sample {
        t_s: t.as_secs_f64(),
        rss_kib: common::process_rss_kib(pid)?,
        wasm_vms: memories.len(),
        linear_kib: memories.iter().map(|m| m.size_kib).collect(),
        touched_kib: memories.iter().map(|m| m.rss_kib).collect(),
        memory_allocated: stats.get("server.memory_allocated").copied(),
        memory_heap_size: stats.get("server.memory_heap_size").copied(),
        shared_state_errors: common::reflex_metric(&stats, "reflex_shared_state_errors_total"),
        reflex_requests: common::reflex_metric(&stats, "reflex_requests_total"),
        wasm_stats: stats
            .iter()
            .filter(|(k, _)| k.starts_with("wasm."))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    })
}

/// A switch's span, offsets from the start: set from `on.0` (sent) to `on.1` (acknowledged),
/// cleared from `off.0` to `off.1`. Only switches that were acknowledged make a window.
#[derive(Debug, Clone, Copy)]
struct Window {
    on: (Duration, Duration),
    off: (Duration, Duration),
}

fn windows(toggles: &[Toggle], action: &str, end: Duration) -> Vec<Window> {
    let d = |ms: f64| Duration::from_secs_f64(ms / 1e3);
    let mut out = Vec::new();
    for (i, t) in toggles.iter().enumerate() {
        if t.action != action || t.status != 200 {
            continue;
        }
        // Its `normal`; if that failed, the switch may hold to the end.
        let off = toggles[i + 1..]
            .iter()
            .find(|n| n.action == "normal")
            .filter(|n| n.status == 200)
            .map_or((end, end + CLIENT_TIMEOUT * 2), |n| {
                (d(n.sent_ms), d(n.acked_ms))
            });
        out.push(Window {
            on: (d(t.sent_ms), d(t.acked_ms)),
            off,
        });
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    /// No switch set.
    Steady,
    /// Started after the kill was acknowledged and answered before `normal` was sent: only the
    /// kill reply is right.
    Kill,
    /// Overlapping a kill's set or clear: the kill reply or a 2xx are both right.
    KillTransition,
    /// Overlapping a global dry-run (set, held or cleared): must be 2xx like steady traffic.
    DryRun,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Steady => "steady (no switch)",
            Phase::Kill => "kill in force",
            Phase::KillTransition => "kill being set or cleared",
            Phase::DryRun => "global dry-run",
        }
    }
}

fn is_kill_reply(r: &Record) -> bool {
    r.status == Some(KILL_STATUS) && r.reason.as_deref() == Some(KILL_REASON)
}

fn phase_of(r: &Record, kills: &[Window], dry_runs: &[Window]) -> Phase {
    let (start, end) = (r.sent, r.sent.max(r.due + r.latency));
    let overlaps = |w: &Window| start <= w.off.1 && end >= w.on.0;
    if kills.iter().any(|w| start >= w.on.1 && end <= w.off.0) {
        Phase::Kill
    } else if kills.iter().any(overlaps) {
        Phase::KillTransition
    } else if dry_runs.iter().any(overlaps) {
        Phase::DryRun
    } else {
        Phase::Steady
    }
}

/// Whether an answer in `phase` is what a correct filter gives with healthy upstreams.
fn answer_is_right(r: &Record, phase: Phase) -> bool {
    let ok = r.ok();
    match phase {
        Phase::Kill => is_kill_reply(r),
        Phase::KillTransition => ok || is_kill_reply(r),
        Phase::Steady | Phase::DryRun => ok,
    }
}

#[derive(Debug, Clone, Default, Serialize)]
struct PhaseStats {
    sent: u64,
    answered: u64,
    ok_2xx: u64,
    kill_replies: u64,
    /// Answers the filter should not have produced here (see [`answer_is_right`]).
    filter_errors: u64,
    /// Statuses of those wrong answers.
    wrong_statuses: BTreeMap<u16, u64>,
    /// Requests without an answer, by kind (timeout, reset, ...; `dropped`: never sent).
    client_errors: BTreeMap<String, u64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

/// How one kill went: control round trip, first kill reply, first 2xx after `normal`.
#[derive(Debug, Clone, Serialize)]
struct KillEffect {
    cycle: u64,
    control_round_trip_ms: f64,
    /// From the kill request being sent until the first client request that got the kill
    /// reply was sent.
    first_kill_reply_after_ms: Option<f64>,
    /// Client requests sent after the kill was acknowledged and before `normal` was sent that
    /// did not get the kill reply.
    missed_after_ack: u64,
    /// From `normal` being sent until the first client request answered 2xx was sent.
    first_2xx_after_normal_ms: Option<f64>,
}

fn kill_effects(records: &[Record], toggles: &[Toggle], kills: &[Window]) -> Vec<KillEffect> {
    let cycles: Vec<u64> = toggles
        .iter()
        .filter(|t| t.action == "kill" && t.status == 200)
        .map(|t| t.cycle)
        .collect();
    kills
        .iter()
        .zip(cycles)
        .map(|(w, cycle)| {
            let after = |from: Duration, pred: &dyn Fn(&Record) -> bool| {
                records
                    .iter()
                    .filter(|r| r.sent >= from && r.status.is_some() && pred(r))
                    .map(|r| r.sent)
                    .min()
                    .map(|t| common::ms(t - from))
            };
            KillEffect {
                cycle,
                control_round_trip_ms: common::ms(w.on.1 - w.on.0),
                first_kill_reply_after_ms: after(w.on.0, &is_kill_reply),
                missed_after_ack: records
                    .iter()
                    .filter(|r| r.sent >= w.on.1 && r.sent < w.off.0 && !is_kill_reply(r))
                    .filter(|r| r.sent.max(r.due + r.latency) <= w.off.0)
                    .count() as u64,
                first_2xx_after_normal_ms: after(w.off.0, &Record::ok),
            }
        })
        .collect()
}

fn phase_stats(
    records: &[Record],
    kills: &[Window],
    dry_runs: &[Window],
) -> BTreeMap<Phase, PhaseStats> {
    let mut out: BTreeMap<Phase, PhaseStats> = BTreeMap::new();
    let mut latencies: BTreeMap<Phase, Vec<Duration>> = BTreeMap::new();
    for r in records {
        let phase = phase_of(r, kills, dry_runs);
        let s = out.entry(phase).or_default();
        s.sent += u64::from(!r.dropped());
        match r.status {
            Some(status) => {
                s.answered += 1;
                s.ok_2xx += u64::from(r.ok());
                s.kill_replies += u64::from(is_kill_reply(r));
                if !answer_is_right(r, phase) {
                    s.filter_errors += 1;
                    *s.wrong_statuses.entry(status).or_insert(0) += 1;
                }
                latencies.entry(phase).or_default().push(r.latency);
            }
            None => {
                let kind = r.error.unwrap_or("unknown").to_string();
                *s.client_errors.entry(kind).or_insert(0) += 1;
            }
        }
    }
    for (phase, mut l) in latencies {
        l.sort_unstable();
        if let Some(s) = out.get_mut(&phase) {
            s.p50_ms = percentile(&l, 50.0);
            s.p99_ms = percentile(&l, 99.0);
            s.max_ms = percentile(&l, 100.0);
        }
    }
    out
}

/// Mean of the first and of the last third of `values` and the growth between them.
fn thirds(values: &[f64]) -> Option<(f64, f64, f64)> {
    let k = (values.len() / 3).max(1);
    if values.len() < 2 {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&values[..k]), mean(&values[values.len() - k..]));
    Some((first, last, last / first - 1.0))
}

#[derive(Debug, Clone, Serialize)]
struct Growth {
    what: &'static str,
    first_third: f64,
    last_third: f64,
    growth: f64,
    flat: bool,
}

fn growth(what: &'static str, values: &[f64]) -> Option<Growth> {
    thirds(values).map(|(first_third, last_third, growth)| Growth {
        what,
        first_third,
        last_third,
        growth,
        flat: growth <= FLAT_WITHIN,
    })
}

fn plan(minutes: u64) -> Vec<(u64, Duration, &'static str, &'static str)> {
    let mut plan = Vec::new();
    for c in 0..minutes {
        let base = CYCLE * c as u32;
        plan.push((c, base + KILL_AT, "kill", KILL_BODY));
        plan.push((c, base + KILL_AT + SWITCH_FOR, "normal", ""));
        plan.push((c, base + DRY_RUN_AT, "dry-run", DRY_RUN_BODY));
        plan.push((c, base + DRY_RUN_AT + SWITCH_FOR, "normal", ""));
    }
    plan
}

pub fn run(args: &SoakArgs) -> Result<()> {
    if args.minutes == 0 || !(args.rps > 0.0 && args.rps <= 2000.0) {
        return Err("--minutes must be positive and --rps in (0, 2000]".into());
    }
    let started = Instant::now();
    let machine = Machine::probe(&args.wasm, args.label.as_deref());
    println!("{}", machine.line());
    let ups: Vec<Upstream> = (0..UPSTREAMS)
        .map(|i| Upstream::start(&format!("u{i}"), healthy()).map_err(|e| e.to_string()))
        .collect::<Result<_>>()?;
    let token = random_token()?;
    let yaml = config(&ups, &args.wasm, &token)?;
    let mut opts = EnvoyOptions::new(yaml);
    opts.concurrency = ENVOY_WORKERS;
    opts.log_level = "warning".into();
    let mut envoy = Envoy::start(opts).map_err(|e| e.to_string())?;
    let addr = envoy.listener_addr("outbound").map_err(|e| e.to_string())?;
    let before = effective(addr, &token).map_err(|e| format!("control endpoint not on: {e}"))?;
    println!(
        "soak: envoy/outbound.yaml + control endpoint on {addr} ({ENVOY_WORKERS} workers), \
         {UPSTREAMS} upstreams, {} requests/s for {} min; switches now {before}",
        args.rps, args.minutes
    );
    let warm = open_loop(
        addr,
        &RequestSpec::get("/soak"),
        &OpenLoop {
            rps: args.rps,
            duration: WARMUP,
            workers: 16,
            timeout: CLIENT_TIMEOUT,
            grace: CLIENT_TIMEOUT,
        },
    );
    println!("warm-up: {}", warm.summary());

    let load = TimelineLoad {
        phases: vec![RatePhase {
            duration: CYCLE * args.minutes as u32,
            rps: args.rps,
        }],
        // Far more than 200/s x a few ms needs; a stall of the proxy shows as latency.
        workers: ((args.rps * 0.25) as usize).clamp(16, 256),
        timeout: CLIENT_TIMEOUT,
        grace: CLIENT_TIMEOUT,
    };
    let end = load.duration();
    let mut pending = plan(args.minutes);
    pending.reverse();
    let mut toggles = Vec::new();
    let mut samples = Vec::new();
    let run = start_timeline(addr, &[RequestSpec::get("/soak")], &load);
    let mut next_sample = Duration::ZERO;
    let mut failure = None;
    while run.elapsed() < end {
        while pending.last().is_some_and(|p| run.elapsed() >= p.1) {
            if let Some(p) = pending.pop() {
                let t = toggle(addr, &token, run.start(), p);
                if !t.ok {
                    eprintln!(
                        "soak: {} at {:.0} s: {:?}",
                        t.action, t.scheduled_s, t.error
                    );
                }
                toggles.push(t);
            }
        }
        if run.elapsed() >= next_sample {
            match sample(&envoy, run.elapsed()) {
                Ok(s) => {
                    if s.t_s as u64 % 60 < SAMPLE_EVERY.as_secs() {
                        println!(
                            "t={:>4.0} s  RSS {:.1} MiB, wasm linear memory {} KiB over {} VMs, \
                             shared-state errors {}, reflex requests {}",
                            s.t_s,
                            s.rss_kib as f64 / 1024.0,
                            s.linear_kib.iter().sum::<u64>(),
                            s.wasm_vms,
                            s.shared_state_errors,
                            s.reflex_requests
                        );
                    }
                    samples.push(s);
                }
                Err(e) => failure = Some(e),
            }
            next_sample += SAMPLE_EVERY;
        }
        if failure.is_none() && !envoy.is_running() {
            failure = Some(format!("Envoy exited during the soak:\n{}", envoy.stderr()));
        }
        if failure.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let timeline = run.join();
    // Last sample, after the stragglers are in (same offset as the schedule's end).
    if failure.is_none() {
        match sample(&envoy, end) {
            Ok(s) => samples.push(s),
            Err(e) => failure = Some(e),
        }
    }
    let log_tail: Vec<String> = envoy
        .log()
        .lines()
        .filter(|l| l.contains("reflex") || l.contains("wasm"))
        .rev()
        .take(20)
        .map(str::to_string)
        .collect();
    drop(envoy);
    drop(ups);
    if let Some(e) = failure {
        return Err(e);
    }

    let records = &timeline.records;
    let kills = windows(&toggles, "kill", end);
    let dry_runs = windows(&toggles, "dry-run", end);
    let phases = phase_stats(records, &kills, &dry_runs);
    let effects = kill_effects(records, &toggles, &kills);
    let rss: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64).collect();
    let linear: Vec<f64> = samples
        .iter()
        .map(|s| s.linear_kib.iter().sum::<u64>() as f64)
        .collect();
    let allocated: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.memory_allocated.map(|v| v as f64))
        .collect();
    let growths: Vec<Growth> = [
        growth("Envoy RSS (VmRSS), KiB", &rss),
        growth("wasm linear memory, all VMs, KiB", &linear),
        growth(
            "Envoy heap allocated (server.memory_allocated), bytes",
            &allocated,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let elapsed = started.elapsed();
    let summary = Summary::new(&phases, &toggles, &samples, &growths);
    let md = markdown(
        args, &machine, &phases, &toggles, &effects, &samples, &growths, &summary, elapsed,
    );
    let doc = json!({
        "benchmark": "soak",
        "machine": machine,
        "settings": {
            "minutes": args.minutes, "rps": args.rps, "envoyWorkers": ENVOY_WORKERS,
            "upstreams": UPSTREAMS, "upstreamBehaviour": healthy(),
            "config": "envoy/outbound.yaml + {\"control\": {\"enabled\": true, \"token\": <random>}}",
            "kill": {"everySecs": CYCLE.as_secs(), "atSecs": KILL_AT.as_secs(), "forSecs": SWITCH_FOR.as_secs(), "body": KILL_BODY},
            "dryRun": {"everySecs": CYCLE.as_secs(), "atSecs": DRY_RUN_AT.as_secs(), "forSecs": SWITCH_FOR.as_secs(), "body": DRY_RUN_BODY},
            "sampleEverySecs": SAMPLE_EVERY.as_secs(), "clientTimeoutSecs": CLIENT_TIMEOUT.as_secs(),
            "warmupSecs": WARMUP.as_secs(), "flatWithin": FLAT_WITHIN,
        },
        "verdict": summary,
        "phases": phases,
        "toggles": toggles,
        "killEffects": effects,
        "memoryGrowth": growths,
        "samples": samples,
        "envoyLogTail": log_tail,
        "elapsedSecs": elapsed.as_secs_f64(),
    });
    let json_text = common::to_json(&doc)?;
    common::publish(
        "soak",
        "soak",
        &json_text,
        &md,
        args.minutes >= DEFAULT_MINUTES,
        elapsed,
    )?;
    if summary.pass {
        Ok(())
    } else {
        Err(format!("soak failed: {}", summary.failures.join("; ")))
    }
}

#[derive(Debug, Clone, Serialize)]
struct Summary {
    sent: u64,
    answered: u64,
    filter_errors: u64,
    client_errors: u64,
    toggles: usize,
    toggles_failed: usize,
    shared_state_errors: u64,
    wasm_memory_stats: Vec<String>,
    memory_flat: bool,
    pass: bool,
    failures: Vec<String>,
}

impl Summary {
    fn new(
        phases: &BTreeMap<Phase, PhaseStats>,
        toggles: &[Toggle],
        samples: &[Sample],
        growths: &[Growth],
    ) -> Summary {
        let sum = |f: fn(&PhaseStats) -> u64| phases.values().map(f).sum::<u64>();
        let client_errors = sum(|s| s.client_errors.values().sum());
        let filter_errors = sum(|s| s.filter_errors);
        let toggles_failed = toggles.iter().filter(|t| !t.ok).count();
        let shared_state_errors = samples.last().map_or(0, |s| s.shared_state_errors);
        let memory_flat = growths
            .iter()
            .filter(|g| !g.what.starts_with("Envoy heap"))
            .all(|g| g.flat);
        let mut failures = Vec::new();
        if filter_errors > 0 {
            failures.push(format!("{filter_errors} filter-made errors"));
        }
        if client_errors > 0 {
            failures.push(format!("{client_errors} requests without an answer"));
        }
        if toggles_failed > 0 {
            failures.push(format!("{toggles_failed} control requests failed"));
        }
        if !memory_flat {
            failures.push("memory grew".into());
        }
        Summary {
            sent: sum(|s| s.sent),
            answered: sum(|s| s.answered),
            filter_errors,
            client_errors,
            toggles: toggles.len(),
            toggles_failed,
            shared_state_errors,
            wasm_memory_stats: samples
                .last()
                .map(|s| {
                    s.wasm_stats
                        .keys()
                        .filter(|k| k.contains("memory") || k.contains("bytes"))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            memory_flat,
            pass: failures.is_empty(),
            failures,
        }
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

fn counts(map: &BTreeMap<impl std::fmt::Display, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    map.iter()
        .map(|(k, v)| format!("{v} × {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    args: &SoakArgs,
    machine: &Machine,
    phases: &BTreeMap<Phase, PhaseStats>,
    toggles: &[Toggle],
    effects: &[KillEffect],
    samples: &[Sample],
    growths: &[Growth],
    summary: &Summary,
    elapsed: Duration,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# reflex soak run\n");
    let _ = writeln!(md, "{}\n", machine.line());
    let _ = writeln!(
        md,
        "`./build.sh soak --minutes {}`: the shipped `envoy/outbound.yaml` (ports moved; its \
         embedded reflex configuration plus `\"control\": {{\"enabled\": true, \"token\": \
         <random>}}`), Envoy with {ENVOY_WORKERS} workers, {UPSTREAMS} healthy in-process \
         upstreams (3–5 ms, no errors), open-loop `GET /soak` at {} requests/s for {} min after \
         a {} s warm-up (clients' deadline {} s). Every {} s, through the control endpoint: at \
         +{} s `kill {KILL_BODY}`, {} s later `normal`; at +{} s `dry-run {DRY_RUN_BODY}`, {} s \
         later `normal`. Envoy sampled every {} s. Total run {:.0} s.{}\n",
        args.minutes,
        args.rps,
        args.minutes,
        WARMUP.as_secs(),
        CLIENT_TIMEOUT.as_secs(),
        CYCLE.as_secs(),
        KILL_AT.as_secs(),
        SWITCH_FOR.as_secs(),
        DRY_RUN_AT.as_secs(),
        SWITCH_FOR.as_secs(),
        SAMPLE_EVERY.as_secs(),
        elapsed.as_secs_f64(),
        if args.minutes < DEFAULT_MINUTES {
            " **Shorter than the published run: partial.**"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "## Verdict\n");
    for g in growths {
        let _ = writeln!(
            md,
            "- {}: first third {:.0}, last third {:.0}: {:+.2}% → {}",
            g.what,
            g.first_third,
            g.last_third,
            100.0 * g.growth,
            if g.growth.abs() <= FLAT_WITHIN {
                "flat".to_string()
            } else if g.flat {
                "shrinking".to_string()
            } else {
                format!("GREW (more than {:.0}%)", 100.0 * FLAT_WITHIN)
            }
        );
    }
    let _ = writeln!(
        md,
        "- Filter-made errors: {} ({} requests sent, {} answered) → {}",
        summary.filter_errors,
        summary.sent,
        summary.answered,
        if summary.filter_errors == 0 {
            "zero"
        } else {
            "NOT ZERO"
        }
    );
    let _ = writeln!(
        md,
        "- Requests without an answer (client errors, timeouts, never sent): {}",
        summary.client_errors
    );
    let _ = writeln!(
        md,
        "- Control requests: {} ({} failed or not reflected in the status answer)",
        summary.toggles, summary.toggles_failed
    );
    let _ = writeln!(
        md,
        "- `reflex_shared_state_errors_total` at the end: {}",
        summary.shared_state_errors
    );
    let _ = writeln!(
        md,
        "- **{}**\n",
        if summary.pass {
            "PASS: memory flat, zero filter-made errors".to_string()
        } else {
            format!("FAIL: {}", summary.failures.join("; "))
        }
    );
    let _ = writeln!(
        md,
        "A *filter-made error* is any non-2xx answer outside a kill (the upstreams are healthy), \
         or any answer while a kill is in force that is not the kill reply (503 with \
         `x-reflex-reason: killed`). *Kill in force* = requests sent after the kill request was \
         acknowledged and answered before `normal` was sent; requests overlapping the kill's \
         setting or clearing may get either the kill reply or a 2xx. Latency counts from the \
         intended send time.\n"
    );
    let _ = writeln!(md, "## Requests by phase\n");
    let _ = writeln!(
        md,
        "| phase | sent | answered | 2xx | kill replies | filter-made errors | no answer | p50 ms | p99 ms | max ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for (phase, s) in phases {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            phase.label(),
            s.sent,
            s.answered,
            s.ok_2xx,
            s.kill_replies,
            if s.filter_errors == 0 {
                "0".to_string()
            } else {
                format!("{} ({})", s.filter_errors, counts(&s.wrong_statuses))
            },
            counts(&s.client_errors),
            opt_ms(s.p50_ms),
            opt_ms(s.p99_ms),
            opt_ms(s.max_ms)
        );
    }
    let _ = writeln!(md, "\n## Kill switch: time to take effect\n");
    let round_trips: Vec<f64> = effects.iter().map(|e| e.control_round_trip_ms).collect();
    let first: Vec<f64> = effects
        .iter()
        .filter_map(|e| e.first_kill_reply_after_ms)
        .collect();
    let restore: Vec<f64> = effects
        .iter()
        .filter_map(|e| e.first_2xx_after_normal_ms)
        .collect();
    let _ = writeln!(
        md,
        "Over {} kills, median (min–max): control request answered after {} ms; first client \
         request with the kill reply sent {} ms after the kill request; first 2xx sent {} ms \
         after `normal`; client requests sent after the kill was acknowledged that were not \
         killed: {}.\n",
        effects.len(),
        common::spread(&round_trips, 1),
        common::spread(&first, 1),
        common::spread(&restore, 1),
        effects.iter().map(|e| e.missed_after_ack).sum::<u64>()
    );
    let _ = writeln!(
        md,
        "| minute | kill answered, ms | first kill reply after, ms | not killed after ack | first 2xx after normal, ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for e in effects {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} | {} |",
            e.cycle + 1,
            e.control_round_trip_ms,
            opt_ms(e.first_kill_reply_after_ms),
            e.missed_after_ack,
            opt_ms(e.first_2xx_after_normal_ms)
        );
    }
    if summary.toggles_failed > 0 {
        let _ = writeln!(md, "\nFailed control requests:\n");
        for t in toggles.iter().filter(|t| !t.ok) {
            let _ = writeln!(
                md,
                "- {} at {:.0} s: {}",
                t.action,
                t.scheduled_s,
                t.error.as_deref().unwrap_or("?")
            );
        }
    }
    let _ = writeln!(md, "\n## Memory\n");
    let _ = writeln!(
        md,
        "*RSS* = Envoy's `VmRSS` (`/proc/<pid>/status`). *Wasm linear memory* = each VM's \
         linear memory as V8 maps it (`/proc/<pid>/smaps`, see the cost benchmark), summed \
         over the VMs; *touched* its resident part. {} *Heap* = `server.memory_allocated`. \
         reflex's shared endpoint table and switches live in Envoy's shared-data store, \
         outside linear memory: they count in RSS and heap.\n",
        if summary.wasm_memory_stats.is_empty() {
            "Envoy's own wasm statistics (`wasm.*`: `wasm.wasm_vm_count`, \
             `wasm.envoy.wasm.runtime.v8.active`/`created`, reload and remote-load counters) \
             count VMs, not bytes, so linear memory is measured from the process; RSS covers \
             everything else."
                .to_string()
        } else {
            format!(
                "Envoy's wasm memory statistics: {} (in the JSON).",
                summary.wasm_memory_stats.join(", ")
            )
        }
    );
    let _ = writeln!(
        md,
        "| t, s | RSS, MiB | wasm VMs | linear memory, KiB (sum) | touched, KiB (sum) | heap, MiB | shared-state errors | reflex requests |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for s in samples {
        let _ = writeln!(
            md,
            "| {:.0} | {:.1} | {} | {} | {} | {} | {} | {} |",
            s.t_s,
            s.rss_kib as f64 / 1024.0,
            s.wasm_vms,
            s.linear_kib.iter().sum::<u64>(),
            s.touched_kib.iter().sum::<u64>(),
            s.memory_allocated
                .map_or("–".into(), |b| format!("{:.1}", b as f64 / 1_048_576.0)),
            s.shared_state_errors,
            s.reflex_requests
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sent_ms: u64, latency_ms: u64, status: u16, reason: Option<&str>) -> Record {
        Record {
            due: Duration::from_millis(sent_ms),
            sent: Duration::from_millis(sent_ms),
            latency: Duration::from_millis(latency_ms),
            class: 0,
            status: Some(status),
            error: None,
            upstream: None,
            reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn answers_are_judged_by_phase() {
        let s = Duration::from_millis;
        let kill = [Window {
            on: (s(1000), s(1010)),
            off: (s(2000), s(2010)),
        }];
        let dry = [Window {
            on: (s(3000), s(3010)),
            off: (s(4000), s(4010)),
        }];
        let killed = rec(1500, 1, 503, Some("killed"));
        assert_eq!(phase_of(&killed, &kill, &dry), Phase::Kill);
        assert!(answer_is_right(&killed, Phase::Kill));
        let leaked = rec(1500, 5, 200, None);
        assert!(!answer_is_right(&leaked, Phase::Kill));
        // Sent before the kill was acknowledged: either answer is right.
        let early = rec(1005, 5, 200, None);
        assert_eq!(phase_of(&early, &kill, &dry), Phase::KillTransition);
        assert!(answer_is_right(&early, Phase::KillTransition));
        // Answered after `normal` was sent.
        assert_eq!(
            phase_of(&rec(1998, 5, 503, Some("killed")), &kill, &dry),
            Phase::KillTransition
        );
        let dry_503 = rec(3500, 5, 503, None);
        assert_eq!(phase_of(&dry_503, &kill, &dry), Phase::DryRun);
        assert!(!answer_is_right(&dry_503, Phase::DryRun));
        let stray_kill = rec(5000, 1, 503, Some("killed"));
        assert_eq!(phase_of(&stray_kill, &kill, &dry), Phase::Steady);
        assert!(!answer_is_right(&stray_kill, Phase::Steady));
    }

    #[test]
    fn growth_compares_thirds() {
        let g = growth("x", &[100.0, 100.0, 101.0, 102.0, 104.0, 104.0]).unwrap();
        assert_eq!((g.first_third, g.last_third), (100.0, 104.0));
        assert!(g.flat);
        assert!(!growth("x", &[100.0, 100.0, 120.0]).unwrap().flat);
        assert!(growth("x", &[1.0]).is_none());
    }

    #[test]
    fn plan_toggles_every_minute() {
        let p = plan(2);
        let at: Vec<(u64, &str)> = p.iter().map(|(_, t, a, _)| (t.as_secs(), *a)).collect();
        assert_eq!(
            at,
            [
                (15, "kill"),
                (25, "normal"),
                (45, "dry-run"),
                (55, "normal"),
                (75, "kill"),
                (85, "normal"),
                (105, "dry-run"),
                (115, "normal")
            ]
        );
    }
}
