//! Pieces both benchmarks share: machine description, process accounting from `/proc`, small
//! statistics, config files with their ports moved, result files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reflex_harness::envoy::workspace_root;
use reflex_harness::Envoy;
use serde::Serialize;
use serde_json::Value;

pub type Result<T> = std::result::Result<T, String>;

/// Whether a stat name as Envoy's `/stats` shows it is reflex's metric `name` (e.g.
/// `reflex_requests_total`), untagged (`wasmcustom.reflex_requests_total`) or with
/// `metrics.tags` segments in it (`wasmcustom.reflex_direction=.=outbound;.;requests_total`:
/// `/stats` shows names before tag extraction, `/stats/prometheus` after).
pub fn is_reflex_metric(stat: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix("reflex_") else {
        return false;
    };
    let Some(tagged) = stat.strip_prefix("wasmcustom.reflex_") else {
        return false;
    };
    tagged == rest
        || tagged
            .strip_suffix(rest)
            .is_some_and(|tags| tags.ends_with(";.;"))
}

/// The sum of every stat that is reflex's metric `name` (see [`is_reflex_metric`]).
pub fn reflex_metric(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| is_reflex_metric(k, name))
        .map(|(_, v)| *v)
        .sum()
}

/// Where the machine and the build came from, printed with every table.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date_utc: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub envoy: String,
    pub git: String,
    /// The reflex module measured: `--label` if given (e.g. "commit a96cd5b"), else its path;
    /// with the start of its sha256.
    pub module: String,
}

impl Machine {
    pub fn probe(wasm: &Path, label: Option<&str>) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem_total_mib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let envoy = Envoy::version()
            .ok()
            .and_then(|v| {
                // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
                let (_, rest) = v.split_once("version:")?;
                rest.split('/').nth(1).map(|s| format!("Envoy {s}"))
            })
            .unwrap_or_else(|| "Envoy (unknown version)".into());
        Machine {
            date_utc: utc_now(),
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_mib,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            envoy,
            git: git_describe(),
            module: format!(
                "{} (sha256 {})",
                label.map_or_else(|| wasm.display().to_string(), str::to_string),
                sha256(wasm).chars().take(16).collect::<String>()
            ),
        }
    }

    /// One Markdown line.
    pub fn line(&self) -> String {
        format!(
            "{} · {} × {} · {} MiB RAM · Linux {} · {} · working tree {} · reflex module {}",
            self.date_utc,
            self.nproc,
            self.cpu_model,
            self.mem_total_mib,
            self.kernel,
            self.envoy,
            self.git,
            self.module
        )
    }
}

fn git_describe() -> String {
    Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `YYYY-MM-DD HH:MM:SS UTC` without a date crate (civil-from-days, Howard Hinnant).
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// `YYYYMMDD-HHMMSS`, for file names.
pub fn stamp() -> String {
    utc_now()
        .trim_end_matches(" UTC")
        .replace(['-', ':'], "")
        .replace(' ', "-")
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// sha256 of a file, via coreutils' `sha256sum` (no hashing crate in the harness).
pub fn sha256(path: &Path) -> String {
    Command::new("sha256sum")
        .arg(path)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn file_size(path: &Path) -> Result<u64> {
    fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Total CPU time (user + system, all threads) a process has used, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) may contain spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: field {} unreadable", i + 3))
    };
    let ticks = tick(11)? + tick(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// CPU time a process's threads have run, in nanoseconds: the sum of the kernel's per-thread
/// `sum_exec_runtime` (`/proc/<pid>/task/*/schedstat`, first field). Same accounting as
/// utime + stime, without the 10 ms tick granularity (threads that exited are not counted;
/// Envoy's threads live as long as the process).
pub fn process_cpu_precise(pid: u32) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for entry in fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let path = entry.map_err(|e| e.to_string())?.path().join("schedstat");
        // A thread may exit between listing and reading: skip it.
        if let Ok(text) = fs::read_to_string(&path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{}: unreadable", path.display()))?;
        }
    }
    Ok(Duration::from_nanos(total))
}

/// Restricts every thread of process `pid` to `cpu` (threads it creates later inherit it).
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    let dir = format!("/proc/{pid}/task");
    for entry in fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        let Some(tid) = name.to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        pin_thread(tid, cpu)?;
    }
    Ok(())
}

/// Restricts one thread (`0`: the calling thread) to `cpu`.
pub fn pin_thread(tid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes from it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "sched_setaffinity({tid}, cpu {cpu}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Busy CPU time of the whole machine (all CPUs, everything but idle and iowait), from the
/// `cpu` line of `/proc/stat`.
pub fn machine_busy() -> Result<Duration> {
    let stat = fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("/proc/stat: no cpu line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = v.iter().take(8).sum::<u64>()
        - v.get(3).copied().unwrap_or(0)
        - v.get(4).copied().unwrap_or(0);
    Ok(ticks_to_duration(busy))
}

/// CPU time of this process (all threads) plus its waited-for children (e.g. wrk), from
/// `/proc/self/stat` (utime, stime, cutime, cstime).
pub fn self_and_children_cpu() -> Result<Duration> {
    let stat =
        fs::read_to_string("/proc/self/stat").map_err(|e| format!("/proc/self/stat: {e}"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc/self/stat")?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    Ok(ticks_to_duration(f.iter().sum()))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Resident set size of a process in KiB (`VmRSS`).
pub fn process_rss_kib(pid: u32) -> Result<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status: no VmRSS"))
}

/// One wasm linear memory as V8 maps it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WasmMemory {
    /// Accessible size (the linear memory's current size, a multiple of 64 KiB pages).
    pub size_kib: u64,
    /// Pages of it actually touched (resident).
    pub rss_kib: u64,
}

/// The wasm linear memories of a process, found in `/proc/<pid>/smaps`. V8 reserves a fixed
/// address range per wasm memory (8 GiB on x86-64: the 4 GiB a 32-bit index can reach plus
/// guard pages) and makes only the memory's current size accessible: each memory shows as a
/// `rw-p` anonymous mapping immediately followed by a `---p` one, together exactly one
/// reservation. Nothing else in Envoy maps that shape, so the count of such pairs is the count of
/// wasm VMs and the `rw-p` size is each VM's linear memory.
pub fn wasm_memories(pid: u32) -> Result<Vec<WasmMemory>> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("/proc/{pid}/smaps: {e}"))?;
    struct Map {
        start: u64,
        end: u64,
        perms: String,
        anonymous: bool,
        rss_kib: u64,
    }
    let mut maps: Vec<Map> = Vec::new();
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = parts.next().unwrap_or_default().to_string();
                // offset, dev, inode, then an optional path
                let path = parts.nth(3);
                maps.push(Map {
                    start,
                    end,
                    perms,
                    anonymous: path.is_none(),
                    rss_kib: 0,
                });
                continue;
            }
        }
        if let (Some(m), Some(v)) = (maps.last_mut(), line.strip_prefix("Rss:")) {
            m.rss_kib = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    const GIB: u64 = 1 << 30;
    let mut out = Vec::new();
    for pair in maps.windows(2) {
        let (rw, guard) = (&pair[0], &pair[1]);
        let total = guard.end - rw.start;
        if rw.perms == "rw-p"
            && guard.perms == "---p"
            && rw.anonymous
            && guard.anonymous
            && rw.end == guard.start
            && total >= 4 * GIB
            && total % GIB == 0
        {
            out.push(WasmMemory {
                size_kib: (rw.end - rw.start) / 1024,
                rss_kib: rw.rss_kib,
            });
        }
    }
    Ok(out)
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold((f64::NAN, f64::NAN), |(lo, hi), x| {
            (
                if lo.is_nan() { x } else { lo.min(x) },
                if hi.is_nan() { x } else { hi.max(x) },
            )
        })
}

/// Median with min-max, e.g. `12.3 (11.9–12.8)`.
pub fn spread(values: &[f64], decimals: usize) -> String {
    let (lo, hi) = min_max(values);
    if lo.is_nan() {
        return "–".into();
    }
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        median(values),
        lo,
        hi,
        d = decimals
    )
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of `sorted` latencies, `p` in [0, 100], in ms; `None` if empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(ms(sorted[rank.clamp(1, sorted.len()) - 1]))
}

/// `bench/` in the workspace.
pub fn bench_dir() -> PathBuf {
    workspace_root().join("bench")
}

/// Reads a config file of `bench/configs/` and moves its ports: each `(from, to)` rewrites
/// `port_value: from}` (every config writes socket addresses in flow style), and
/// `filename: out/reflex.wasm` becomes `wasm`. The files are runnable as they are (fixed
/// ports, see bench/configs/README.md); the benchmark runs them beside other processes.
pub fn config_with_ports(name: &str, ports: &[(u16, u16)], wasm: &Path) -> Result<String> {
    let path = bench_dir().join("configs").join(name);
    let mut text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (from, to) in ports {
        let needle = format!("port_value: {from}}}");
        if !text.contains(&needle) {
            return Err(format!("{name} has no `{needle}`"));
        }
        text = text.replace(&needle, &format!("port_value: {to}}}"));
    }
    Ok(text.replace(
        "filename: out/reflex.wasm",
        &format!("filename: {}", wasm.display()),
    ))
}

/// The reflex plugin configuration a config file embeds as its one `value: |` YAML block.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedConfig {
    /// Lines of the block's content (after the `value: |` line), as indices into the text's lines.
    pub lines: std::ops::Range<usize>,
    /// Indentation of the content, in spaces.
    pub indent: usize,
    pub json: Value,
}

/// Finds and parses the embedded reflex configuration of a config `text` (`name` for errors).
/// Exactly one `value: |` block is expected.
pub fn embedded_config(text: &str, name: &str) -> Result<EmbeddedConfig> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut starts = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == "value: |")
        .map(|(i, _)| i);
    let start = starts
        .next()
        .ok_or_else(|| format!("{name}: no `value: |` block"))?;
    if starts.next().is_some() {
        return Err(format!("{name}: more than one `value: |` block"));
    }
    let base = indent(lines[start]);
    let len = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .count();
    let block = &lines[start + 1..start + 1 + len];
    let json: Value = serde_json::from_str(&block.join("\n"))
        .map_err(|e| format!("{name}: embedded reflex config: {e}"))?;
    Ok(EmbeddedConfig {
        lines: start + 1..start + 1 + len,
        indent: block
            .iter()
            .find(|l| !l.trim().is_empty())
            .map_or(base + 2, |l| indent(l)),
        json,
    })
}

/// `text` with its embedded reflex configuration merged with `patch` (objects merge key by key,
/// see [`reflex_harness::json_merge`]) and written back in place, same indentation.
pub fn patch_embedded_config(text: &str, name: &str, patch: Value) -> Result<String> {
    let mut embedded = embedded_config(text, name)?;
    reflex_harness::json_merge(&mut embedded.json, patch);
    let rendered = serde_json::to_string_pretty(&embedded.json).map_err(|e| e.to_string())?;
    let pad = " ".repeat(embedded.indent);
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines[..embedded.lines.start]
        .iter()
        .map(|l| l.to_string())
        .collect();
    out.extend(rendered.lines().map(|l| format!("{pad}{l}")));
    out.extend(lines[embedded.lines.end..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

/// Writes `bench/results/<name>`; returns the path.
pub fn write_result(name: &str, contents: &str) -> Result<PathBuf> {
    let dir = bench_dir().join("results");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(name);
    fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Writes a run's JSON (`<prefix>-<stamp>.json`) and, for a full run, the published
/// `<kind>-latest.json/.md`; a partial run's table goes to `<kind>-partial.md` and never
/// replaces the published one. Prints the table and where it went.
pub fn publish(
    kind: &str,
    prefix: &str,
    json_text: &str,
    md: &str,
    full: bool,
    elapsed: std::time::Duration,
) -> Result<()> {
    let run_path = write_result(&format!("{prefix}-{}.json", stamp()), json_text)?;
    let md_path = if full {
        write_result(&format!("{kind}-latest.json"), json_text)?;
        write_result(&format!("{kind}-latest.md"), md)?
    } else {
        write_result(&format!("{kind}-partial.md"), md)?
    };
    println!("\n{md}");
    println!(
        "wrote {} and {} ({:.0} s)",
        run_path.display(),
        md_path.display(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

pub fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| e.to_string())
}

/// Counters whose name contains one of `needles`, from Envoy's admin API.
pub fn envoy_counters(envoy: &Envoy, needles: &[&str]) -> BTreeMap<String, u64> {
    envoy
        .stats()
        .map(|s| {
            s.into_iter()
                .filter(|(k, _)| needles.iter().any(|n| k.contains(n)))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a JSON file of `bench/configs/`.
pub fn config_json(name: &str) -> Result<Value> {
    let path = bench_dir().join("configs").join(name);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Percent with one decimal, `–` for NaN.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "–".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflex_metrics_are_found_with_or_without_tags() {
        let name = "reflex_requests_total";
        assert!(is_reflex_metric("wasmcustom.reflex_requests_total", name));
        assert!(is_reflex_metric(
            "wasmcustom.reflex_direction=.=outbound;.;requests_total",
            name
        ));
        assert!(is_reflex_metric(
            "wasmcustom.reflex_a=.=x;.;b=.=y;.;requests_total",
            name
        ));
        // Other metrics whose names end alike are not it.
        assert!(!is_reflex_metric(
            "wasmcustom.reflex_control_requests_total",
            name
        ));
        assert!(!is_reflex_metric(
            "wasmcustom.reflex_direction=.=outbound;.;control_requests_total",
            name
        ));
        assert!(!is_reflex_metric(
            "http.ingress.reflex_requests_total",
            name
        ));
        let stats = BTreeMap::from([
            (
                "wasmcustom.reflex_direction=.=outbound;.;requests_total".to_string(),
                3,
            ),
            (
                "wasmcustom.reflex_direction=.=inbound;.;requests_total".to_string(),
                4,
            ),
            (
                "wasmcustom.reflex_direction=.=inbound;.;status_requests_total".to_string(),
                9,
            ),
        ]);
        assert_eq!(reflex_metric(&stats, name), 7);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn embedded_config_is_found_and_patched_in_place() {
        let yaml = "a:\n  value: |\n    {\n      \"version\": 1\n    }\n  vm_config: x\n";
        let e = embedded_config(yaml, "t").unwrap();
        assert_eq!((e.lines.clone(), e.indent), (2..5, 4));
        assert_eq!(e.json, serde_json::json!({"version": 1}));
        let patched =
            patch_embedded_config(yaml, "t", serde_json::json!({"control": {"enabled": true}}))
                .unwrap();
        assert!(patched.ends_with("  vm_config: x\n"), "{patched}");
        assert_eq!(
            embedded_config(&patched, "t").unwrap().json,
            serde_json::json!({"version": 1, "control": {"enabled": true}})
        );
        assert!(embedded_config("a: 1\n", "t").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(min_max(&[2.0, f64::NAN, 5.0, 1.0]), (1.0, 5.0));
    }
}
