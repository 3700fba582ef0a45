//! Programmable HTTP/1.1 test upstream: answers with a configurable status mix, latency,
//! capacity limit, hangs and TCP resets, so that reflex can be exercised against realistic
//! failures behind a real Envoy. Behaviour can be changed while traffic flows, from the Rust
//! handle or over HTTP on the same port (`/_upstream/...`), which is what the demo and benchmark
//! scripts use against the `reflex-upstream` binary.
//!
//! Threading model: one accept thread plus one thread per connection (capped), all blocking
//! std I/O. That is plenty for a 2-core test machine and keeps the crate dependency-free.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::http::{self, BodyKind, ReadError};
use crate::rng::Rng;

/// Header every answer carries, naming the server, so load reports can attribute traffic.
pub const UPSTREAM_ID_HEADER: &str = "x-upstream-id";
/// Request header forcing the status of that one request (overrides `statusMix`); lets a test
/// drive exact sequences through Envoy without changing the behaviour.
pub const FORCE_STATUS_HEADER: &str = "x-upstream-status";
/// Request header forcing the latency (ms) of that one request (replaces `latency`).
pub const FORCE_DELAY_HEADER: &str = "x-upstream-delay-ms";
/// Path prefix of the control API; requests under it are never counted as traffic.
pub const CONTROL_PREFIX: &str = "/_upstream/";

/// How often blocked handlers (hang, queue, sleep) re-check behaviour, peer and shutdown.
const POLL: Duration = Duration::from_millis(20);

/// One entry of the weighted status distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusWeight {
    pub status: u16,
    pub weight: u32,
}

/// Latency added before answering: `baseMs + uniform[0, jitterMs]`, plus `slowMs` for a
/// `slowFraction` share of requests (a long tail).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Latency {
    pub base_ms: u64,
    pub jitter_ms: u64,
    pub slow_fraction: f64,
    pub slow_ms: u64,
}

/// Concurrency limit. `concurrency` 0 means unlimited (and `queue` is ignored). Otherwise at
/// most `concurrency` requests are served at once, up to `queue` more wait for a slot, and any
/// request beyond that is answered 503 at once (counted in `rejected`), like an overloaded
/// server with a bounded accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Capacity {
    pub concurrency: u32,
    pub queue: u32,
}

/// Everything that shapes the answers. Serialized in camelCase; every field is optional in JSON
/// (missing ones take the defaults: always 200, no latency, unlimited, no faults), and unknown
/// fields are rejected so that typos in a scenario fail loudly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Behaviour {
    /// Weighted status distribution; empty or all-zero weights means 200.
    pub status_mix: Vec<StatusWeight>,
    pub latency: Latency,
    pub capacity: Capacity,
    /// Accept requests but never answer while true. A hung request is released (and then
    /// answered normally) when the behaviour stops hanging, or dropped when the peer closes.
    pub hang: bool,
    /// Share of requests answered by a TCP RST instead of a response.
    pub reset_fraction: f64,
    /// If set, 429 and 503 answers carry `Retry-After: <secs>`.
    pub retry_after_secs: Option<u64>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            status_mix: vec![StatusWeight {
                status: 200,
                weight: 1,
            }],
            latency: Latency::default(),
            capacity: Capacity::default(),
            hang: false,
            reset_fraction: 0.0,
            retry_after_secs: None,
        }
    }
}

impl Behaviour {
    /// Always answers 200 at once.
    pub fn ok() -> Behaviour {
        Behaviour::default()
    }

    /// Always answers `status`.
    pub fn status(status: u16) -> Behaviour {
        Behaviour::default().with_status_mix(&[(status, 1)])
    }

    /// Replaces the status mix with `(status, weight)` pairs.
    pub fn with_status_mix(mut self, mix: &[(u16, u32)]) -> Behaviour {
        self.status_mix = mix
            .iter()
            .map(|&(status, weight)| StatusWeight { status, weight })
            .collect();
        self
    }

    /// Sets base latency and jitter (ms).
    pub fn with_latency_ms(mut self, base_ms: u64, jitter_ms: u64) -> Behaviour {
        self.latency.base_ms = base_ms;
        self.latency.jitter_ms = jitter_ms;
        self
    }

    /// Sets the concurrency limit and queue length (see [`Capacity`]).
    pub fn with_capacity(mut self, concurrency: u32, queue: u32) -> Behaviour {
        self.capacity = Capacity { concurrency, queue };
        self
    }

    /// Sets `hang`.
    pub fn with_hang(mut self, hang: bool) -> Behaviour {
        self.hang = hang;
        self
    }

    /// Sets the share of requests answered with a TCP RST.
    pub fn with_reset_fraction(mut self, fraction: f64) -> Behaviour {
        self.reset_fraction = fraction;
        self
    }

    /// Sets the Retry-After value added to 429/503 answers.
    pub fn with_retry_after(mut self, secs: u64) -> Behaviour {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Checks ranges: statuses 200..=599 (a 1xx cannot be a final answer), fractions in [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        for sw in &self.status_mix {
            if !(200..=599).contains(&sw.status) {
                return Err(format!("status {} outside 200..=599", sw.status));
            }
        }
        for (name, f) in [
            ("resetFraction", self.reset_fraction),
            ("latency.slowFraction", self.latency.slow_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("{name} {f} outside [0, 1]"));
            }
        }
        Ok(())
    }

    /// Parses and validates a JSON behaviour (as sent to `PUT /_upstream/behaviour`).
    pub fn from_json(json: &str) -> Result<Behaviour, String> {
        let b: Behaviour = serde_json::from_str(json).map_err(|e| e.to_string())?;
        b.validate()?;
        Ok(b)
    }

    /// Applies a partial JSON object on top of this behaviour (objects merge recursively, other
    /// values replace), so one can say "add latency" without restating the status mix.
    pub fn merged(&self, patch_json: &str) -> Result<Behaviour, String> {
        let patch: serde_json::Value =
            serde_json::from_str(patch_json).map_err(|e| e.to_string())?;
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        crate::json_merge(&mut current, patch);
        let b: Behaviour = serde_json::from_value(current).map_err(|e| e.to_string())?;
        b.validate()?;
        Ok(b)
    }

    fn pick_status(&self, rng: &mut Rng) -> u16 {
        let total: u64 = self.status_mix.iter().map(|s| u64::from(s.weight)).sum();
        if total == 0 {
            return 200;
        }
        let mut x = rng.below(total);
        for s in &self.status_mix {
            let w = u64::from(s.weight);
            if x < w {
                return s.status;
            }
            x -= w;
        }
        200
    }

    fn pick_delay(&self, rng: &mut Rng) -> Duration {
        let l = &self.latency;
        let mut ms = l
            .base_ms
            .saturating_add(rng.below(l.jitter_ms.saturating_add(1)));
        if rng.chance(l.slow_fraction) {
            ms = ms.saturating_add(l.slow_ms);
        }
        Duration::from_millis(ms)
    }
}

/// Counters of one server. `requests` counts traffic requests fully received (control requests
/// excluded); `byStatus` counts answers sent by status (including capacity rejections);
/// `inFlight` is a gauge (received, not yet answered, including queued and hung ones) and
/// `maxConcurrent` its high-water mark since the last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpstreamStats {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub resets: u64,
    /// Answered 503 because concurrency and queue were full.
    pub rejected: u64,
    pub in_flight: u64,
    pub max_concurrent: u64,
    /// Connections accepted and served.
    pub connections: u64,
    /// Connections closed at once because the connection-thread cap was reached.
    pub refused_connections: u64,
    /// Malformed requests (answered 400, connection closed).
    pub bad_requests: u64,
}

impl UpstreamStats {
    /// Answers sent with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Answers sent, all statuses.
    pub fn answered(&self) -> u64 {
        self.by_status.values().sum()
    }
}

/// Start-up options; [`UpstreamOptions::new`] gives a server on a free loopback port.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Reported in `x-upstream-id` and used as the body.
    pub name: String,
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
    pub behaviour: Behaviour,
    /// PRNG seed; `None` derives it from the name (reproducible, distinct per server).
    pub seed: Option<u64>,
    /// Cap on connection threads; connections beyond it are closed at once.
    pub max_connections: usize,
}

impl UpstreamOptions {
    pub fn new(name: &str) -> UpstreamOptions {
        UpstreamOptions {
            name: name.to_string(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            behaviour: Behaviour::default(),
            seed: None,
            max_connections: 512,
        }
    }
}

/// State shared by the handle, the accept thread and the connection threads.
struct Shared {
    name: String,
    behaviour: RwLock<Behaviour>,
    rng: Mutex<Rng>,
    stats: Mutex<UpstreamStats>,
    gate: Mutex<Gate>,
    gate_cv: Condvar,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    live_conns: AtomicUsize,
    max_connections: usize,
}

/// The capacity gate: served in arrival order, like a thread pool's FIFO queue (a condvar
/// alone would wake an arbitrary waiter and let newcomers barge in, which no real server's
/// queue does and which would give queued requests an unrealistic tail).
#[derive(Default)]
struct Gate {
    active: u32,
    waiting: u32,
    /// Next ticket to hand out, and the ticket whose turn it is.
    next_ticket: u64,
    next_turn: u64,
}

/// Locks ignoring poisoning: a panicking test thread must not take the server down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn behaviour(&self) -> Behaviour {
        self.behaviour
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_behaviour(&self, b: Behaviour) {
        *self.behaviour.write().unwrap_or_else(|e| e.into_inner()) = b;
        // Capacity may have grown: let queued requests re-check.
        self.gate_cv.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn stats(&self) -> UpstreamStats {
        lock(&self.stats).clone()
    }

    fn reset_stats(&self) {
        let mut s = lock(&self.stats);
        let in_flight = s.in_flight;
        *s = UpstreamStats {
            in_flight,
            max_concurrent: in_flight,
            ..UpstreamStats::default()
        };
    }

    /// Waits for a capacity slot; `None` means rejected (full queue) or shutting down.
    fn admit(&self) -> Option<Slot<'_>> {
        let mut g = lock(&self.gate);
        let mut ticket = None;
        loop {
            let cap = self
                .behaviour
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .capacity;
            let my_turn = match ticket {
                Some(t) => t == g.next_turn,
                None => g.waiting == 0,
            };
            if cap.concurrency == 0 || (my_turn && g.active < cap.concurrency) {
                if ticket.is_some() {
                    g.waiting -= 1;
                    g.next_turn += 1;
                }
                g.active += 1;
                drop(g);
                // The next in line may fit too (capacity can grow).
                self.gate_cv.notify_all();
                return Some(Slot(self));
            }
            if ticket.is_none() {
                if g.waiting >= cap.queue {
                    return None;
                }
                g.waiting += 1;
                ticket = Some(g.next_ticket);
                g.next_ticket += 1;
            }
            if self.stopped() {
                // Shutting down: every waiter leaves, order no longer matters.
                g.waiting -= 1;
                return None;
            }
            g = self
                .gate_cv
                .wait_timeout(g, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A held capacity slot, released on drop.
struct Slot<'a>(&'a Shared);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut g = lock(&self.0.gate);
        g.active = g.active.saturating_sub(1);
        drop(g);
        self.0.gate_cv.notify_all();
    }
}

/// Marks a request in flight from receipt until it is answered (or abandoned), so that the
/// gauge already reads 0 when the client sees the answer.
struct InFlight<'a> {
    shared: &'a Shared,
    done: std::cell::Cell<bool>,
}

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared) -> InFlight<'a> {
        let mut st = lock(&shared.stats);
        st.requests += 1;
        st.in_flight += 1;
        st.max_concurrent = st.max_concurrent.max(st.in_flight);
        InFlight {
            shared,
            done: std::cell::Cell::new(false),
        }
    }

    /// Ends the request, counting its outcome in the same critical section.
    fn finish(&self, count: impl FnOnce(&mut UpstreamStats)) {
        let mut st = lock(&self.shared.stats);
        if !self.done.replace(true) {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
        count(&mut st);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.finish(|_| {});
    }
}

/// A running upstream server. Dropping it (or calling [`Upstream::stop`]) closes the listener
/// and every connection and waits briefly for the threads to finish.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Upstream {
    /// Starts a server named `name` on a free 127.0.0.1 port.
    pub fn start(name: &str, behaviour: Behaviour) -> io::Result<Upstream> {
        Upstream::start_with(UpstreamOptions {
            behaviour,
            ..UpstreamOptions::new(name)
        })
    }

    /// Starts a server with full options.
    ///
    /// # Errors
    /// Bind failure, or an invalid behaviour (`InvalidInput`).
    pub fn start_with(opts: UpstreamOptions) -> io::Result<Upstream> {
        opts.behaviour
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(opts.listen)?;
        let addr = listener.local_addr()?;
        let seed = opts.seed.unwrap_or_else(|| Rng::seed_from_name(&opts.name));
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            behaviour: RwLock::new(opts.behaviour),
            rng: Mutex::new(Rng::new(seed)),
            stats: Mutex::new(UpstreamStats::default()),
            gate: Mutex::new(Gate::default()),
            gate_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            live_conns: AtomicUsize::new(0),
            max_connections: opts.max_connections.max(1),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("upstream-{}", opts.name))
            .spawn(move || accept_loop(&s, &listener))?;
        Ok(Upstream {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Current behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.shared.behaviour()
    }

    /// Replaces the behaviour; applies to requests from now on and releases hung or queued
    /// ones if the new behaviour allows.
    ///
    /// # Panics
    /// If the behaviour does not [`validate`](Behaviour::validate): a test bug, reported loudly.
    pub fn set_behaviour(&self, b: Behaviour) {
        if let Err(e) = b.validate() {
            panic!("invalid upstream behaviour: {e}");
        }
        self.shared.set_behaviour(b);
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> UpstreamStats {
        self.shared.stats()
    }

    /// Zeroes the counters (the in-flight gauge is kept).
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Stops the server now (same as dropping it).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a connection of our own.
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.addr.port())
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = accept.join();
        for (_, c) in lock(&self.shared.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.shared.gate_cv.notify_all();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.shared.live_conns.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if shared.stopped() {
            break;
        }
        let Ok(stream) = stream else {
            // EMFILE and friends: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.live_conns.load(Ordering::SeqCst) >= shared.max_connections {
            lock(&shared.stats).refused_connections += 1;
            continue;
        }
        next_id += 1;
        let id = next_id;
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        lock(&shared.conns).insert(id, registered);
        shared.live_conns.fetch_add(1, Ordering::SeqCst);
        lock(&shared.stats).connections += 1;
        let s = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("upstream-{}-conn", shared.name))
            .spawn(move || {
                serve_connection(&s, stream, id);
                s.live_conns.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            lock(&shared.conns).remove(&id);
            shared.live_conns.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What to do with the connection after a request.
enum After {
    KeepAlive,
    Close,
    /// Answer with a TCP RST.
    Reset,
}

/// A request as the handlers need it.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

fn serve_connection(shared: &Shared, stream: TcpStream, id: u64) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(&stream);
    let after = loop {
        if shared.stopped() {
            break After::Close;
        }
        let req = match read_request(&mut reader, &stream) {
            Ok(r) => r,
            Err(ReadError::Bad(msg)) => {
                lock(&shared.stats).bad_requests += 1;
                let _ = write_response(&stream, shared, 400, &[], msg.as_bytes(), false, false);
                break After::Close;
            }
            Err(_) => break After::Close,
        };
        let after = if req.path.starts_with(CONTROL_PREFIX) {
            control(shared, &stream, &req)
        } else {
            traffic(shared, &stream, &req)
        };
        match after {
            After::KeepAlive => continue,
            other => break other,
        }
    };
    // Drop the registry's duplicate first: the kernel only resets when the last fd closes.
    let registered = lock(&shared.conns).remove(&id);
    drop(registered);
    if let After::Reset = after {
        set_linger_zero(&stream);
    }
    drop(reader);
    drop(stream);
}

fn read_request(
    reader: &mut BufReader<&TcpStream>,
    stream: &TcpStream,
) -> Result<Request, ReadError> {
    let head = http::read_head(reader)?;
    let mut parts = head.start.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad("malformed request line".into()));
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Bad("malformed method".into()));
    }
    let keep_alive = match version {
        "HTTP/1.1" => !http::has_token(&head.headers, "connection", "close"),
        "HTTP/1.0" => http::has_token(&head.headers, "connection", "keep-alive"),
        _ => return Err(ReadError::Bad("unsupported HTTP version".into())),
    };
    let kind = http::body_kind(&head.headers, BodyKind::None)?;
    if kind != BodyKind::None
        && head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        let mut w = stream;
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = http::read_body(reader, kind)?;
    // Absolute-form targets (proxies) are reduced to their path.
    let path = match target.find("://") {
        Some(i) => target[i + 3..]
            .find('/')
            .map_or("/", |j| &target[i + 3 + j..]),
        None => target,
    };
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers: head.headers,
        body,
        keep_alive,
    })
}

/// Writes one whole response in a single write (fewer packets, and no half-written answers).
#[allow(clippy::too_many_arguments)]
fn write_response(
    mut stream: &TcpStream,
    shared: &Shared,
    status: u16,
    extra: &[(&str, String)],
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(160 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\n{UPSTREAM_ID_HEADER}: {}\r\ncontent-length: {}\r\n",
        http::reason(status),
        shared.name,
        body.len()
    );
    for (k, v) in extra {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)
}

fn traffic(shared: &Shared, stream: &TcpStream, req: &Request) -> After {
    let in_flight = InFlight::new(shared);
    let head_only = req.method == "HEAD";
    let answer = |status: u16, b: &Behaviour| -> After {
        in_flight.finish(|st| *st.by_status.entry(status).or_insert(0) += 1);
        let mut extra = vec![("content-type", "text/plain".to_string())];
        if let (Some(secs), 429 | 503) = (b.retry_after_secs, status) {
            extra.push(("retry-after", secs.to_string()));
        }
        let body = format!("{}\n", shared.name);
        match write_response(
            stream,
            shared,
            status,
            &extra,
            body.as_bytes(),
            req.keep_alive,
            head_only,
        ) {
            Ok(()) if req.keep_alive => After::KeepAlive,
            _ => After::Close,
        }
    };

    let Some(_slot) = shared.admit() else {
        if shared.stopped() {
            return After::Close;
        }
        in_flight.finish(|st| st.rejected += 1);
        return answer(503, &shared.behaviour());
    };

    let mut b = shared.behaviour();
    while b.hang {
        if shared.stopped() || peer_closed(stream) {
            return After::Close;
        }
        thread::sleep(POLL);
        b = shared.behaviour();
    }

    let forced_status = http::header(&req.headers, FORCE_STATUS_HEADER)
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s));
    let forced_delay =
        http::header(&req.headers, FORCE_DELAY_HEADER).and_then(|v| v.trim().parse::<u64>().ok());
    let (reset, delay, status) = {
        let mut rng = lock(&shared.rng);
        let reset = rng.chance(b.reset_fraction);
        let delay = b.pick_delay(&mut rng);
        let status = b.pick_status(&mut rng);
        (reset, delay, status)
    };
    let delay = forced_delay.map_or(delay, Duration::from_millis);
    if !sleep_unless_stopped(shared, delay) {
        return After::Close;
    }
    if reset {
        in_flight.finish(|st| st.resets += 1);
        return After::Reset;
    }
    answer(forced_status.unwrap_or(status), &b)
}

/// Sleeps in small steps so that shutdown is never held up by a long configured latency.
fn sleep_unless_stopped(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if shared.stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        thread::sleep((end - now).min(POLL));
    }
}

/// True if the peer has closed (or reset) the connection; used to end hung requests.
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = stream.peek(&mut b);
    let _ = stream.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted,
    }
}

/// SO_LINGER {on, 0}: closing the socket then sends RST instead of FIN.
fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `stream`, pointer and length describe a live `linger` value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn control(shared: &Shared, stream: &TcpStream, req: &Request) -> After {
    let (status, body): (u16, String) =
        match (req.method.as_str(), &req.path[CONTROL_PREFIX.len()..]) {
            ("GET", "stats") => (200, json(&shared.stats())),
            ("GET", "behaviour") => (200, json(&shared.behaviour())),
            ("PUT" | "POST", "behaviour") => match std::str::from_utf8(&req.body)
                .map_err(|e| e.to_string())
                .and_then(Behaviour::from_json)
            {
                Ok(b) => {
                    let body = json(&b);
                    shared.set_behaviour(b);
                    (200, body)
                }
                Err(e) => (400, format!("invalid behaviour: {e}\n")),
            },
            ("PATCH", "behaviour") => match std::str::from_utf8(&req.body)
                .map_err(|e| e.to_string())
                .and_then(|s| shared.behaviour().merged(s))
            {
                Ok(b) => {
                    let body = json(&b);
                    shared.set_behaviour(b);
                    (200, body)
                }
                Err(e) => (400, format!("invalid behaviour patch: {e}\n")),
            },
            ("POST", "reset-stats") => {
                shared.reset_stats();
                (200, "{}".to_string())
            }
            (_, "stats" | "behaviour" | "reset-stats") => (405, "method not allowed\n".to_string()),
            _ => (404, "unknown control path\n".to_string()),
        };
    let ctype = if status == 200 {
        "application/json"
    } else {
        "text/plain"
    };
    let extra = [("content-type", ctype.to_string())];
    match write_response(
        stream,
        shared,
        status,
        &extra,
        body.as_bytes(),
        req.keep_alive,
        req.method == "HEAD",
    ) {
        Ok(()) if req.keep_alive => After::KeepAlive,
        _ => After::Close,
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Controls an upstream over HTTP (e.g. a `reflex-upstream` process started by a script or a
/// benchmark), through the same `/_upstream/` API.
#[derive(Debug, Clone)]
pub struct RemoteUpstream {
    pub addr: SocketAddr,
}

impl RemoteUpstream {
    pub fn new(addr: SocketAddr) -> RemoteUpstream {
        RemoteUpstream { addr }
    }

    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<String, String> {
        let mut c = crate::client::Client::new(self.addr).with_timeout(Duration::from_secs(5));
        let r = c
            .request(method, &format!("{CONTROL_PREFIX}{path}"), &[], body)
            .map_err(|e| e.to_string())?;
        if r.status == 200 {
            Ok(r.text())
        } else {
            Err(format!("{} {}", r.status, r.text().trim()))
        }
    }

    pub fn stats(&self) -> Result<UpstreamStats, String> {
        serde_json::from_str(&self.call("GET", "stats", b"")?).map_err(|e| e.to_string())
    }

    pub fn behaviour(&self) -> Result<Behaviour, String> {
        serde_json::from_str(&self.call("GET", "behaviour", b"")?).map_err(|e| e.to_string())
    }

    pub fn set_behaviour(&self, b: &Behaviour) -> Result<(), String> {
        let json = serde_json::to_vec(b).map_err(|e| e.to_string())?;
        self.call("PUT", "behaviour", &json).map(drop)
    }

    /// Merges a partial JSON object into the current behaviour (`PATCH`).
    pub fn patch_behaviour(&self, patch_json: &str) -> Result<(), String> {
        self.call("PATCH", "behaviour", patch_json.as_bytes())
            .map(drop)
    }

    pub fn reset_stats(&self) -> Result<(), String> {
        self.call("POST", "reset-stats", b"").map(drop)
    }
}
