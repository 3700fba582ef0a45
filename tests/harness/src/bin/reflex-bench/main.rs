//! `reflex-bench`: the benchmark suite (bench/README.md).
//!
//! ```text
//! ./build.sh bench cost          # builds reflex, the no-op and probe modules, runs this
//! ./build.sh bench protection
//! ./build.sh soak [--minutes N]  # not in CI: a long run at steady load, switches toggled
//! reflex-bench cost [--rounds N] [--secs S] [--connections C] [--no-attribution] [--pin]
//!                   [--endpoints 1,100,1000] [--wasm out/reflex.wasm] [--envoy PATH] [--label T]
//! reflex-bench protection [--scenarios a,b] [--configs a,b] [--quick] [--wasm ...] [--label T]
//! reflex-bench soak [--minutes N] [--rps R] [--wasm ...] [--label T]
//! ```
//!
//! All are bounded in time, print a Markdown table, and write JSON plus the table into
//! `bench/results/`. Every process they start (Envoy, upstream threads, wrk) is stopped before
//! they return, on success or failure.

mod common;
mod cost;
mod protection;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use reflex_harness::envoy::workspace_root;

const USAGE: &str = "\
usage: reflex-bench cost [--rounds N] [--secs S] [--connections C] [--no-attribution] [--pin]
                         [--endpoints LIST] [--noop PATH] [--probe PATH] [COMMON]
       reflex-bench protection [--scenarios LIST] [--configs LIST] [--quick] [COMMON]
       reflex-bench soak [--minutes N] [--rps R] [COMMON]
  COMMON: [--wasm PATH] [--envoy PATH] [--label TEXT]

  cost         Envoy CPU per request: no wasm / no-op wasm / reflex default / reflex with every
               feature (+ host-call probes), module sizes, wasm memory per VM for N endpoints
  protection   fault scenarios x {round-robin, istio-default, expert, reflex}
  soak         envoy/outbound.yaml at a steady rate (default 200/s) for N minutes (default 10)
               while kill and dry-run are toggled through the control endpoint: memory growth
               and filter-made errors (runs shorter than 10 minutes are published as partial)
  LIST         comma-separated (scenarios: dead,flaky,slow,hang,overload,retry-storm,recovery;
               configs: round-robin,istio-default,expert,reflex; endpoints: e.g. 1,100,1000)
  --quick      protection: shorter phases (for development; not for the published table)
  --label TEXT how to name the reflex module in the output (default: its path), e.g. a commit";

fn value(args: &[String], i: &mut usize) -> Result<String, String> {
    *i += 1;
    args.get(*i)
        .cloned()
        .ok_or_else(|| format!("{} needs a value", args[*i - 1]))
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what}: {s}"))
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(which) = args.first().cloned() else {
        return Err(USAGE.into());
    };
    let mut wasm = workspace_root().join("out/reflex.wasm");
    let mut cost = cost::CostArgs::new(wasm.clone());
    let mut prot = protection::ProtectionArgs::default();
    let mut soak = soak::SoakArgs::default();
    let (mut noop, mut probe, mut label) = (None, None, None);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--wasm" => wasm = PathBuf::from(value(&args, &mut i)?),
            "--label" => label = Some(value(&args, &mut i)?),
            "--noop" => noop = Some(PathBuf::from(value(&args, &mut i)?)),
            "--probe" => probe = Some(PathBuf::from(value(&args, &mut i)?)),
            "--envoy" => {
                let envoy = value(&args, &mut i)?;
                // The harness finds Envoy through this variable (set before any thread starts).
                std::env::set_var(reflex_harness::envoy::ENVOY_ENV, envoy);
            }
            "--rounds" => cost.rounds = number(&value(&args, &mut i)?, "--rounds")?,
            "--secs" => cost.secs = number(&value(&args, &mut i)?, "--secs")?,
            "--connections" => cost.connections = number(&value(&args, &mut i)?, "--connections")?,
            "--no-attribution" => cost.attribution = false,
            "--pin" => cost.pin = true,
            "--endpoints" => {
                cost.endpoint_counts = list(&value(&args, &mut i)?)
                    .iter()
                    .map(|s| number(s, "--endpoints"))
                    .collect::<Result<_, _>>()?;
            }
            "--scenarios" => prot.scenarios = Some(list(&value(&args, &mut i)?)),
            "--configs" => prot.configs = Some(list(&value(&args, &mut i)?)),
            "--quick" => prot.quick = true,
            "--minutes" => soak.minutes = number(&value(&args, &mut i)?, "--minutes")?,
            "--rps" => soak.rps = number(&value(&args, &mut i)?, "--rps")?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
        i += 1;
    }
    if cost.rounds == 0 || cost.secs == 0 || cost.connections == 0 {
        return Err("--rounds, --secs and --connections must be positive".into());
    }
    if cost.endpoint_counts.iter().any(|&n| n == 0 || n > 60_000) {
        return Err("--endpoints: each count must be in 1..=60000".into());
    }
    let wasm = std::fs::canonicalize(&wasm)
        .map_err(|e| format!("{}: {e} (run ./build.sh first)", wasm.display()))?;
    match which.as_str() {
        "cost" => {
            let defaults = cost::CostArgs::new(wasm.clone());
            cost.noop = noop.unwrap_or(defaults.noop);
            cost.probe = probe.unwrap_or(defaults.probe);
            cost.wasm = wasm;
            cost.label = label;
            cost::run(&cost)
        }
        "protection" => {
            prot.wasm = wasm;
            prot.label = label;
            protection::run(&prot)
        }
        "soak" => {
            soak.wasm = wasm;
            soak.label = label;
            soak::run(&soak)
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflex-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
