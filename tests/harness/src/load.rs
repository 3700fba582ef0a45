//! Load generators built on [`Client`]: closed-loop (N requests over K threads, as fast as
//! answers come) and open-loop (a constant arrival rate, independent of how fast the system
//! answers, which is what exposes queueing and overload). Both are bounded in count and time and
//! sized for a small (2-core) machine: plain threads, one keep-alive connection each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Client, Error, DEFAULT_TIMEOUT};

/// The request every load worker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RequestSpec {
    pub fn get(path: &str) -> RequestSpec {
        RequestSpec {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> RequestSpec {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn send(&self, client: &mut Client) -> Result<crate::client::Response, Error> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        client.request(&self.method, &self.path, &headers, &self.body)
    }
}

/// Outcome of a load run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Requests attempted.
    pub sent: u64,
    /// Responses by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Failed requests by [`Error::kind_name`].
    pub errors: BTreeMap<String, u64>,
    /// Responses by `x-upstream-id` (`"-"` when absent, e.g. Envoy's own local replies).
    pub by_upstream: BTreeMap<String, u64>,
    /// Latency of every response (any status), sorted ascending. Open loop measures from the
    /// intended send time, so time spent waiting for a free worker counts (no coordinated
    /// omission).
    pub latencies: Vec<Duration>,
    /// Latency of every 2xx response, sorted ascending (what admitted requests cost when a
    /// proxy sheds the rest quickly).
    pub ok_latencies: Vec<Duration>,
    /// Open loop only: scheduled requests never sent because the run hit its time bound.
    pub dropped: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Responses with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Responses with a 2xx status.
    pub fn ok(&self) -> u64 {
        self.by_status.range(200..300).map(|(_, n)| n).sum()
    }

    /// Responses received, any status.
    pub fn responses(&self) -> u64 {
        self.by_status.values().sum()
    }

    /// Failed requests (no response), all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Responses attributed to upstream `name`.
    pub fn upstream(&self, name: &str) -> u64 {
        self.by_upstream.get(name).copied().unwrap_or(0)
    }

    /// Latency percentile, `p` in [0, 100] (nearest rank); `None` without responses.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        percentile_of(&self.latencies, p)
    }

    /// Latency percentile of 2xx responses only; `None` without any.
    pub fn ok_percentile(&self, p: f64) -> Option<Duration> {
        percentile_of(&self.ok_latencies, p)
    }

    /// Mean latency; `None` without responses.
    pub fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.latencies.len())
            .ok()
            .filter(|&n| n > 0)?;
        Some(self.latencies.iter().sum::<Duration>() / n)
    }

    /// Responses per second of wall time.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.responses() as f64 / secs
        } else {
            0.0
        }
    }

    /// One-line human summary for logs and benchmark output.
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        format!(
            "sent={} responses={} ok={} errors={:?} dropped={} status={:?} upstreams={:?} p50={}ms p99={}ms max={}ms rps={:.1}",
            self.sent,
            self.responses(),
            self.ok(),
            self.errors,
            self.dropped,
            self.by_status,
            self.by_upstream,
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.latencies.last().copied()),
            self.throughput()
        )
    }

    fn record(&mut self, result: Result<crate::client::Response, Error>, latency: Duration) {
        self.sent += 1;
        match result {
            Ok(r) => {
                *self.by_status.entry(r.status).or_insert(0) += 1;
                let id = r.upstream_id().unwrap_or("-").to_string();
                *self.by_upstream.entry(id).or_insert(0) += 1;
                self.latencies.push(latency);
                if (200..300).contains(&r.status) {
                    self.ok_latencies.push(latency);
                }
            }
            Err(e) => *self.errors.entry(e.kind_name().to_string()).or_insert(0) += 1,
        }
    }

    /// Adds another run's counts (latencies stay sorted; elapsed is the caller's to set).
    pub fn merge(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.dropped += other.dropped;
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.by_upstream {
            *self.by_upstream.entry(k).or_insert(0) += v;
        }
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self.ok_latencies.extend(other.ok_latencies);
        self.ok_latencies.sort_unstable();
    }
}

/// Nearest-rank percentile of sorted `latencies`, `p` in [0, 100]; `None` if empty.
pub fn percentile_of(latencies: &[Duration], p: f64) -> Option<Duration> {
    if latencies.is_empty() {
        return None;
    }
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * latencies.len() as f64).ceil() as usize;
    Some(latencies[rank.clamp(1, latencies.len()) - 1])
}

/// Closed-loop run: `requests` requests shared by `threads` workers, each sending its next
/// request as soon as the previous one is answered.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    pub requests: u64,
    pub threads: usize,
    pub timeout: Duration,
}

impl Default for ClosedLoop {
    fn default() -> Self {
        ClosedLoop {
            requests: 100,
            threads: 4,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Runs a closed-loop load against `addr`.
pub fn closed_loop(addr: SocketAddr, spec: &RequestSpec, cfg: &ClosedLoop) -> LoadReport {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..cfg.threads.max(1))
        .map(|_| {
            let (next, spec, total, timeout) =
                (Arc::clone(&next), spec.clone(), cfg.requests, cfg.timeout);
            thread::spawn(move || {
                let mut client = Client::new(addr).with_timeout(timeout);
                let mut report = LoadReport::default();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let r = spec.send(&mut client);
                    report.record(r, t.elapsed());
                }
                report
            })
        })
        .collect();
    finish(workers, start)
}

/// Open-loop run: requests are due at a constant `rps` for `duration`, served by a pool of
/// `workers` threads (each with one keep-alive connection). If every worker is busy, due
/// requests wait (and their latency grows); requests not started by `duration + grace` are
/// counted as `dropped`, which bounds the run's wall time.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    pub rps: f64,
    pub duration: Duration,
    pub workers: usize,
    pub timeout: Duration,
    pub grace: Duration,
}

impl Default for OpenLoop {
    fn default() -> Self {
        OpenLoop {
            rps: 100.0,
            duration: Duration::from_secs(2),
            workers: 32,
            timeout: DEFAULT_TIMEOUT,
            grace: Duration::from_secs(2),
        }
    }
}

/// Runs an open-loop load against `addr`.
pub fn open_loop(addr: SocketAddr, spec: &RequestSpec, cfg: &OpenLoop) -> LoadReport {
    let rps = if cfg.rps.is_finite() && cfg.rps > 0.0 {
        cfg.rps
    } else {
        1.0
    };
    let total = (rps * cfg.duration.as_secs_f64()).ceil() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + cfg.duration + cfg.grace;
    let workers: Vec<_> = (0..cfg.workers.max(1))
        .map(|_| {
            let (next, spec, timeout) = (Arc::clone(&next), spec.clone(), cfg.timeout);
            thread::spawn(move || {
                let mut client = Client::new(addr).with_timeout(timeout);
                let mut report = LoadReport::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(i as f64 / rps);
                    let now = Instant::now();
                    if now >= deadline {
                        report.dropped += 1;
                        continue;
                    }
                    if due > now {
                        thread::sleep(due - now);
                    }
                    let r = spec.send(&mut client);
                    report.record(r, due.elapsed());
                }
                report
            })
        })
        .collect();
    finish(workers, start)
}

fn finish(workers: Vec<thread::JoinHandle<LoadReport>>, start: Instant) -> LoadReport {
    let mut total = LoadReport::default();
    for w in workers {
        if let Ok(r) = w.join() {
            total.merge(r);
        }
    }
    total.elapsed = start.elapsed();
    total.latencies.sort_unstable();
    total.ok_latencies.sort_unstable();
    total
}
