//! Open-loop load that keeps every request: when it was due, how long it took, what came back
//! and from which upstream. [`crate::load::open_loop`] sums a run up; benchmarks need the
//! timeline instead (success after a fault's onset, latency per phase, traffic share per
//! quarter second, success per priority class), so this variant records one [`Record`] per
//! request and runs in the background while the caller injects faults.
//!
//! Same discipline as `open_loop`: arrivals follow a fixed schedule (piecewise-constant rate,
//! [`RatePhase`]), independent of how fast answers come; a pool of worker threads with one
//! keep-alive connection each sends them; latency is measured from the *intended* send time,
//! so waiting for a free worker counts (no coordinated omission); requests not started by the
//! end of the schedule plus `grace` are recorded as dropped. Bounded in count and time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::load::RequestSpec;

/// `rps` requests per second for `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePhase {
    pub duration: Duration,
    pub rps: f64,
}

/// A timeline run: the arrival schedule, the sender pool and the per-request timeout.
#[derive(Debug, Clone)]
pub struct TimelineLoad {
    pub phases: Vec<RatePhase>,
    /// Sender threads (one keep-alive connection each). Size it for rate x worst latency.
    pub workers: usize,
    /// Client timeout per socket operation (connect, write, read): a request not answered
    /// within it fails as `timeout`.
    pub timeout: Duration,
    /// Requests not started by the end of the schedule plus `grace` are dropped.
    pub grace: Duration,
}

impl TimelineLoad {
    /// Intended send offsets (from the start) of every request of the schedule.
    pub fn schedule(&self) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut phase_start = 0.0f64;
        for phase in &self.phases {
            let secs = phase.duration.as_secs_f64();
            if phase.rps.is_finite() && phase.rps > 0.0 {
                let n = (phase.rps * secs).round() as u64;
                out.extend(
                    (0..n).map(|i| Duration::from_secs_f64(phase_start + i as f64 / phase.rps)),
                );
            }
            phase_start += secs;
        }
        out
    }

    /// Length of the schedule.
    pub fn duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }
}

/// Response header in which reflex says why it answered a request itself (`killed`, `shed`, …).
pub const REFLEX_REASON_HEADER: &str = "x-reflex-reason";

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Intended send time, from the start of the run.
    pub due: Duration,
    /// When a worker actually started sending it, from the start of the run: `due`, or later
    /// when every worker was busy (for a dropped request, when it was given up).
    pub sent: Duration,
    /// From the intended send time until the answer (or the failure) arrived; zero if dropped.
    pub latency: Duration,
    /// Index of the [`RequestSpec`] used (request `i` uses spec `i % specs.len()`).
    pub class: usize,
    /// Response status; `None` if the request failed or was dropped.
    pub status: Option<u16>,
    /// Failure kind ([`crate::client::Error::kind_name`], or `"dropped"`).
    pub error: Option<&'static str>,
    /// `x-upstream-id` of the response, if any.
    pub upstream: Option<String>,
    /// [`REFLEX_REASON_HEADER`] of the response, if any: reflex answered it locally.
    pub reason: Option<String>,
}

impl Record {
    /// True for a 2xx response.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// True if the request was never sent (schedule overran its time bound).
    pub fn dropped(&self) -> bool {
        self.error == Some("dropped")
    }
}

/// All records of a run, sorted by `due`.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub records: Vec<Record>,
    /// Wall time of the run (schedule plus stragglers).
    pub elapsed: Duration,
}

/// A timeline run in progress; [`TimelineRun::join`] waits for it.
#[derive(Debug)]
pub struct TimelineRun {
    start: Instant,
    workers: Vec<thread::JoinHandle<Vec<Record>>>,
}

impl TimelineRun {
    /// The instant the schedule counts from (offset zero).
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits for every worker and returns the records sorted by intended send time.
    pub fn join(self) -> Timeline {
        let mut records = Vec::new();
        for w in self.workers {
            if let Ok(mut r) = w.join() {
                records.append(&mut r);
            }
        }
        records.sort_by_key(|r| r.due);
        Timeline {
            records,
            elapsed: self.start.elapsed(),
        }
    }
}

/// Starts a timeline run against `addr` in background threads and returns at once. Request `i`
/// of the schedule is sent with `specs[i % specs.len()]`, so a class mix is a list with the
/// wanted proportions (e.g. 3 critical, 3 default, 4 sheddable entries).
pub fn start_timeline(addr: SocketAddr, specs: &[RequestSpec], cfg: &TimelineLoad) -> TimelineRun {
    let schedule = Arc::new(cfg.schedule());
    let specs: Arc<Vec<RequestSpec>> = Arc::new(if specs.is_empty() {
        vec![RequestSpec::get("/")]
    } else {
        specs.to_vec()
    });
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + cfg.duration() + cfg.grace;
    let workers = (0..cfg.workers.max(1))
        .map(|_| {
            let (schedule, specs, next, timeout) = (
                Arc::clone(&schedule),
                Arc::clone(&specs),
                Arc::clone(&next),
                cfg.timeout,
            );
            thread::spawn(move || {
                let mut client = Client::new(addr).with_timeout(timeout);
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&offset) = usize::try_from(i).ok().and_then(|i| schedule.get(i))
                    else {
                        break;
                    };
                    let class = usize::try_from(i).map_or(0, |i| i % specs.len());
                    let due = start + offset;
                    let now = Instant::now();
                    if now >= deadline {
                        out.push(Record {
                            due: offset,
                            sent: now - start,
                            latency: Duration::ZERO,
                            class,
                            status: None,
                            error: Some("dropped"),
                            upstream: None,
                            reason: None,
                        });
                        continue;
                    }
                    if due > now {
                        thread::sleep(due - now);
                    }
                    let sent = start.elapsed();
                    let spec = &specs[class];
                    let headers: Vec<(&str, &str)> = spec
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let result = client.request(&spec.method, &spec.path, &headers, &spec.body);
                    let latency = due.elapsed();
                    out.push(match result {
                        Ok(r) => Record {
                            due: offset,
                            sent,
                            latency,
                            class,
                            status: Some(r.status),
                            error: None,
                            upstream: r.upstream_id().map(str::to_string),
                            reason: r.header(REFLEX_REASON_HEADER).map(str::to_string),
                        },
                        Err(e) => Record {
                            due: offset,
                            sent,
                            latency,
                            class,
                            status: None,
                            error: Some(e.kind_name()),
                            upstream: None,
                            reason: None,
                        },
                    });
                }
                out
            })
        })
        .collect();
    TimelineRun { start, workers }
}

/// Runs a timeline to the end (see [`start_timeline`]).
pub fn run_timeline(addr: SocketAddr, specs: &[RequestSpec], cfg: &TimelineLoad) -> Timeline {
    start_timeline(addr, specs, cfg).join()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_the_phases() {
        let cfg = TimelineLoad {
            phases: vec![
                RatePhase {
                    duration: Duration::from_secs(1),
                    rps: 10.0,
                },
                RatePhase {
                    duration: Duration::from_secs(2),
                    rps: 5.0,
                },
            ],
            workers: 1,
            timeout: Duration::from_secs(1),
            grace: Duration::ZERO,
        };
        let s = cfg.schedule();
        assert_eq!(s.len(), 20);
        assert_eq!(s[0], Duration::ZERO);
        assert_eq!(s[9], Duration::from_millis(900));
        assert_eq!(s[10], Duration::from_secs(1));
        assert_eq!(s[11], Duration::from_millis(1200));
        assert_eq!(cfg.duration(), Duration::from_secs(3));
    }
}
