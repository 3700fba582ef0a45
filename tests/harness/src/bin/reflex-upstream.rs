//! `reflex-upstream`: runs programmable test upstreams as a standalone process, for the demo and
//! the benchmarks (native topology, no Docker). See the crate docs for the control API.
//!
//! Lifetime: runs until SIGTERM/SIGINT (the default signal action ends the process and the
//! kernel closes the listeners: nothing to flush). With `--exit-on-stdin-eof` it also exits when
//! stdin closes; that is opt-in because shells start background jobs with stdin on /dev/null.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use reflex_harness::upstream::{Behaviour, Upstream, UpstreamOptions};

const USAGE: &str = "\
usage: reflex-upstream --listen ADDR [--listen ADDR ...] [--name NAME ...]
                       [--behaviour JSON|@FILE] [--seed N] [--exit-on-stdin-eof]

  --listen ADDR         address to serve on (e.g. 127.0.0.1:9001; port 0 picks one); repeatable
  --name NAME           server name, paired with --listen in order (default u0, u1, ...)
  --behaviour JSON      initial behaviour of every server (camelCase JSON, or @file)
  --seed N              PRNG seed (default: derived from each name)
  --exit-on-stdin-eof   also exit when stdin is closed

Prints `listening <name> <addr>` per server, then serves until SIGTERM/SIGINT.
Control: GET /_upstream/stats, GET|PUT|PATCH /_upstream/behaviour, POST /_upstream/reset-stats";

struct Args {
    listen: Vec<SocketAddr>,
    names: Vec<String>,
    behaviour: Behaviour,
    seed: Option<u64>,
    exit_on_stdin_eof: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        listen: Vec::new(),
        names: Vec::new(),
        behaviour: Behaviour::default(),
        seed: None,
        exit_on_stdin_eof: false,
    };
    while let Some(flag) = it.next() {
        let mut value = |what: &str| it.next().ok_or_else(|| format!("{flag} needs {what}"));
        match flag.as_str() {
            "--listen" => {
                let v = value("an address")?;
                args.listen
                    .push(v.parse().map_err(|e| format!("bad --listen {v}: {e}"))?);
            }
            "--name" => args.names.push(value("a name")?),
            "--behaviour" | "--behavior" => {
                let v = value("JSON")?;
                let json = match v.strip_prefix('@') {
                    Some(path) => {
                        std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?
                    }
                    None => v,
                };
                args.behaviour =
                    Behaviour::from_json(&json).map_err(|e| format!("bad --behaviour: {e}"))?;
            }
            "--seed" => {
                let v = value("a number")?;
                args.seed = Some(v.parse().map_err(|e| format!("bad --seed {v}: {e}"))?);
            }
            "--exit-on-stdin-eof" => args.exit_on_stdin_eof = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.listen.is_empty() {
        return Err("at least one --listen is required".into());
    }
    if args.names.len() > args.listen.len() {
        return Err("more --name than --listen".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("reflex-upstream: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut servers = Vec::new();
    for (i, listen) in args.listen.iter().enumerate() {
        let name = args
            .names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("u{i}"));
        let opts = UpstreamOptions {
            listen: *listen,
            behaviour: args.behaviour.clone(),
            seed: args.seed.map(|s| s.wrapping_add(i as u64)),
            ..UpstreamOptions::new(&name)
        };
        match Upstream::start_with(opts) {
            Ok(u) => servers.push(u),
            Err(e) => {
                eprintln!("reflex-upstream: cannot serve {name} on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    {
        let mut out = io::stdout().lock();
        for u in &servers {
            let _ = writeln!(out, "listening {} {}", u.name(), u.addr());
        }
        let _ = out.flush();
    }
    if args.exit_on_stdin_eof {
        let mut sink = [0u8; 256];
        let mut stdin = io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        drop(servers);
        return ExitCode::SUCCESS;
    }
    loop {
        std::thread::park();
    }
}
