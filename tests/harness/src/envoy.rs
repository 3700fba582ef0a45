//! Launches a real Envoy for a test and tears it down reliably. Each instance gets its own
//! temp dir (config, logs, admin address file) and runs with `--disable-hot-restart`: Envoy's
//! default hot-restart shared memory is keyed by `--base-id`, and two instances with the same id
//! cannot coexist, which breaks parallel tests.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::client::{self, Client, Response};

/// Env var naming the Envoy binary to use (first choice).
pub const ENVOY_ENV: &str = "REFLEX_ENVOY";
/// Env var: when set (non-empty), the temp dir of each instance is kept for post-mortems.
pub const KEEP_ENV: &str = "REFLEX_KEEP_ENVOY_DIR";

/// Failure to start, query or validate Envoy; carries the tail of Envoy's output when it helps.
#[derive(Debug, Clone)]
pub struct Error {
    pub message: String,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Returns a port that was free a moment ago. Prefer `port_value: 0` plus
/// [`Envoy::listener_addr`] where possible: another process can grab the port in between.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The Envoy binary: `$REFLEX_ENVOY`, else `<workspace>/.venv/bin/envoy`, else `envoy` on PATH.
pub fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENVOY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin/envoy");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    })
}

/// Whether tests that need a real Envoy should be skipped (`REFLEX_SKIP_ENVOY=1`). Without
/// that opt-out a missing Envoy binary fails the test: it must never pass without Envoy.
pub fn skip_envoy_tests() -> bool {
    if std::env::var_os("REFLEX_SKIP_ENVOY").is_some_and(|v| !v.is_empty()) {
        eprintln!("REFLEX_SKIP_ENVOY set: skipping");
        return true;
    }
    assert!(
        find_envoy().is_some(),
        "no Envoy binary: set REFLEX_ENVOY or install .venv/bin/envoy (or REFLEX_SKIP_ENVOY=1)"
    );
    false
}

/// The built filter under test: `$REFLEX_WASM` (set by `./build.sh test`), else
/// `<workspace>/out/reflex.wasm`. A missing file fails the test: it must never pass without
/// the filter.
pub fn built_filter() -> PathBuf {
    let path = std::env::var_os("REFLEX_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("out/reflex.wasm"));
    assert!(
        path.is_file(),
        "{} not found: run ./build.sh (or ./build.sh test) first",
        path.display()
    );
    path
}

/// The cargo workspace root (this crate lives in `<root>/tests/harness`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest.join("../.."), Path::to_path_buf)
}

/// How to start Envoy. The caller writes the whole config; see [`ProxyConfig`] for a
/// ready-made listener → filters → router → cluster config.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub config_yaml: String,
    /// Admin port the config uses; 0 means "discover it" (works with `port_value: 0` in the
    /// config: Envoy writes the bound address to `--admin-address-path`).
    pub admin_port: u16,
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// `-l` level: trace, debug, info, warning, error, critical, off.
    pub log_level: String,
    /// Appended to the command line (e.g. `--component-log-level wasm:debug`).
    pub extra_args: Vec<String>,
    /// How long to wait for `GET /ready` to answer 200.
    pub ready_timeout: Duration,
    /// Binary to run; `None` uses [`find_envoy`].
    pub binary: Option<PathBuf>,
}

impl EnvoyOptions {
    pub fn new(config_yaml: impl Into<String>) -> EnvoyOptions {
        EnvoyOptions {
            config_yaml: config_yaml.into(),
            admin_port: 0,
            concurrency: 2,
            log_level: "info".into(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            binary: None,
        }
    }
}

/// A running Envoy; dropping it stops it (SIGTERM, then SIGKILL after 3 s) and reaps it.
pub struct Envoy {
    child: Option<Child>,
    dir: PathBuf,
    admin: SocketAddr,
}

impl fmt::Debug for Envoy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envoy")
            .field("pid", &self.pid())
            .field("admin", &self.admin)
            .field("dir", &self.dir)
            .finish()
    }
}

fn unique_dir(prefix: &str) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Envoy {
    /// Starts Envoy and waits until it is ready.
    ///
    /// # Errors
    /// No binary, spawn failure, Envoy exiting early or not ready in time; the message includes
    /// the tail of Envoy's log and stderr.
    pub fn start(opts: EnvoyOptions) -> Result<Envoy, Error> {
        let binary = opts.binary.clone().or_else(find_envoy).ok_or_else(|| {
            Error::new(format!(
                "no Envoy binary: set {ENVOY_ENV}, create .venv/bin/envoy or put envoy on PATH"
            ))
        })?;
        let dir = unique_dir("reflex-envoy").map_err(|e| Error::new(format!("temp dir: {e}")))?;
        let config = dir.join("envoy.yaml");
        fs::write(&config, &opts.config_yaml)
            .map_err(|e| Error::new(format!("write config: {e}")))?;
        let stdout =
            fs::File::create(dir.join("stdout.log")).map_err(|e| Error::new(e.to_string()))?;
        let stderr =
            fs::File::create(dir.join("stderr.log")).map_err(|e| Error::new(e.to_string()))?;
        let admin_file = dir.join("admin_address");
        let mut cmd = Command::new(&binary);
        // Envoy buffers its log file and flushes every 10 s by default, far too late for
        // `log()` and `wait_for_log()`; flush often unless the caller chose a value.
        if !opts
            .extra_args
            .iter()
            .any(|a| a.starts_with("--file-flush-interval-msec"))
        {
            cmd.args(["--file-flush-interval-msec", "50"]);
        }
        let child = cmd
            .arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(opts.concurrency.max(1).to_string())
            .arg("--disable-hot-restart")
            .arg("-l")
            .arg(&opts.log_level)
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error::new(format!("spawn {}: {e}", binary.display())))?;
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), opts.admin_port);
        let mut envoy = Envoy {
            child: Some(child),
            dir,
            admin: unspecified,
        };
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            if let Some(Ok(Some(status))) = envoy.child.as_mut().map(|c| c.try_wait()) {
                return Err(envoy.fail(&format!("envoy exited during start-up ({status})")));
            }
            if envoy.admin.port() == 0 {
                if let Some(a) = fs::read_to_string(&admin_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    envoy.admin = a;
                }
            }
            if envoy.admin.port() != 0 {
                let mut c = Client::new(envoy.admin).with_timeout(Duration::from_millis(500));
                if c.get("/ready", &[]).is_ok_and(|r| r.status == 200) {
                    return Ok(envoy);
                }
            }
            if Instant::now() >= deadline {
                return Err(envoy.fail(&format!("envoy not ready within {:?}", opts.ready_timeout)));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Builds a start-up error with the output tail (the instance is then dropped and killed).
    fn fail(&self, what: &str) -> Error {
        Error::new(format!(
            "{what} (dir {})\n--- envoy log (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.dir.display(),
            tail(&self.log(), 30),
            tail(&self.stderr(), 30)
        ))
    }

    /// Runs `envoy --mode validate` on a config; `Err` carries Envoy's output.
    pub fn validate(config_yaml: &str) -> Result<(), String> {
        let binary = find_envoy().ok_or("no Envoy binary found")?;
        let dir = unique_dir("reflex-envoy-validate").map_err(|e| e.to_string())?;
        let config = dir.join("envoy.yaml");
        let result = fs::write(&config, config_yaml)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                Command::new(&binary)
                    .args([
                        "--mode",
                        "validate",
                        "--disable-hot-restart",
                        "-l",
                        "warning",
                        "-c",
                    ])
                    .arg(&config)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("spawn {}: {e}", binary.display()))
            })
            .and_then(|out| {
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            });
        let _ = fs::remove_dir_all(&dir);
        result
    }

    /// Envoy's version line (`envoy --version`).
    pub fn version() -> Result<String, String> {
        let binary = find_envoy().ok_or("no Envoy binary found")?;
        let out = Command::new(&binary)
            .arg("--version")
            .output()
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Admin interface address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// This instance's temp dir (config and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `GET` on the admin interface.
    pub fn admin_get(&self, path: &str) -> Result<Response, client::Error> {
        Client::new(self.admin)
            .with_timeout(Duration::from_secs(5))
            .get(path, &[])
    }

    /// `POST` on the admin interface (e.g. `/runtime_modify?k=v`, `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> Result<Response, client::Error> {
        Client::new(self.admin)
            .with_timeout(Duration::from_secs(5))
            .post(path, &[], b"")
    }

    fn admin_text(&self, path: &str) -> Result<String, Error> {
        let r = self
            .admin_get(path)
            .map_err(|e| Error::new(format!("admin {path}: {e}")))?;
        if r.status != 200 {
            return Err(Error::new(format!(
                "admin {path}: status {}: {}",
                r.status,
                r.text()
            )));
        }
        Ok(r.text())
    }

    /// Counters and gauges (histograms and text readouts are left out), from
    /// `/stats?format=json`.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>, Error> {
        self.stats_matching("")
    }

    /// Like [`stats`](Self::stats), limited by Envoy's `filter` regex (e.g. `^cluster\.upstream\.`).
    pub fn stats_matching(&self, regex: &str) -> Result<BTreeMap<String, u64>, Error> {
        let path = if regex.is_empty() {
            "/stats?format=json".to_string()
        } else {
            format!("/stats?format=json&filter={}", url_encode(regex))
        };
        let v: Value = serde_json::from_str(&self.admin_text(&path)?)
            .map_err(|e| Error::new(format!("stats json: {e}")))?;
        let mut out = BTreeMap::new();
        for s in v["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.insert(name.to_string(), value);
            }
        }
        Ok(out)
    }

    /// One counter or gauge; `None` if it does not exist (Envoy creates many lazily).
    pub fn stat(&self, name: &str) -> Result<Option<u64>, Error> {
        Ok(self.stats()?.get(name).copied())
    }

    /// Polls until `stat(name)` satisfies `pred` (a missing stat reads as 0); returns its value.
    /// Stats are updated asynchronously by the workers, so tests should wait rather than read.
    pub fn wait_for_stat(
        &self,
        name: &str,
        pred: impl Fn(u64) -> bool,
        timeout: Duration,
    ) -> Result<u64, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name)?.unwrap_or(0);
            if pred(v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "stat {name} = {v}: condition not met within {timeout:?}"
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Prometheus exposition text (`/stats/prometheus`).
    pub fn prometheus(&self) -> Result<String, Error> {
        self.admin_text("/stats/prometheus")
    }

    /// Bound address of a listener by name (for configs using `port_value: 0`).
    pub fn listener_addr(&self, name: &str) -> Result<SocketAddr, Error> {
        let v: Value = serde_json::from_str(&self.admin_text("/listeners?format=json")?)
            .map_err(|e| Error::new(format!("listeners json: {e}")))?;
        let l = v["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .ok_or_else(|| Error::new(format!("no listener named {name}")))?;
        let sa = &l["local_address"]["socket_address"];
        let ip: IpAddr = sa["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::new("listener address not an IP"))?;
        let port = sa["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| Error::new("listener port missing"))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// Contents of Envoy's log file (`--log-path`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Envoy's stderr (messages printed before logging is set up, e.g. bad flags).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "{needle:?} not in envoy log within {timeout:?}; tail:\n{}",
                    tail(&log, 20)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops Envoy (same as dropping it).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: plain kill(2) on our own child's pid, which is not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        if std::env::var_os(KEEP_ENV).is_none_or(|v| v.is_empty()) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Cluster settings (merged into [`ProxyConfig::cluster`]) in the shape reflex steers, as in
/// `envoy/outbound.yaml`: override_host from `x-reflex-endpoint` with a LEAST_REQUEST fallback
/// (absent header or unknown host), and the metadata mark that tells reflex the cluster
/// honours the header.
pub fn steered_cluster() -> Value {
    json!({
        "lb_policy": null,
        "metadata": {"filter_metadata": {"reflex": {"steering": "override_host"}}},
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_retries": 100000}]},
        "load_balancing_policy": {"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.override_host",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                "override_host_sources": [{"header": "x-reflex-endpoint"}],
                "fallback_policy": {"policies": [{"typed_extension_config": {
                    "name": "envoy.load_balancing_policies.least_request",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"}
                }}]}
            }
        }}]}
    })
}

/// Route settings (merged into [`ProxyConfig::route`]) as in `envoy/outbound.yaml`: reflex
/// sets the retry count, conditions and per-try timeout per request through headers; the
/// route supplies the jittered back-off, waiting out Retry-After, the previous-hosts
/// predicate and hedging on per-try timeouts.
pub fn retry_route() -> Value {
    json!({
        "timeout": "15s",
        "retry_policy": {
            "num_retries": 0,
            "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
            "rate_limited_retry_back_off": {
                "reset_headers": [
                    {"name": "retry-after", "format": "SECONDS"},
                    {"name": "x-ratelimit-reset", "format": "UNIX_TIMESTAMP"}
                ],
                "max_interval": "10s"
            },
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
            }],
            "host_selection_retry_max_attempts": 5
        },
        "hedge_policy": {"hedge_on_per_try_timeout": true}
    })
}

/// A minimal static proxy config: one HTTP listener (`ingress`) → `http_filters` → router →
/// one round-robin cluster (`upstream`) of `endpoints`. Rendered as JSON, which Envoy accepts
/// as YAML, so callers add filters and overrides as `serde_json::Value`s without fighting YAML
/// indentation.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// 0: let Envoy pick (then use `EnvoyOptions::admin_port = 0`).
    pub admin_port: u16,
    /// 0: let Envoy pick (then use [`Envoy::listener_addr`]`("ingress")`).
    pub listener_port: u16,
    pub endpoints: Vec<SocketAddr>,
    /// HTTP filters placed before the router (each a full filter entry with `name` and
    /// `typed_config`).
    pub http_filters: Vec<Value>,
    /// Merged into the route's `route` action (e.g. `{"timeout": "2s", "retry_policy": {...}}`).
    pub route: Value,
    /// Merged into the cluster (e.g. circuit breakers, outlier detection).
    pub cluster: Value,
}

impl ProxyConfig {
    pub fn new(endpoints: &[SocketAddr]) -> ProxyConfig {
        ProxyConfig {
            admin_port: 0,
            listener_port: 0,
            endpoints: endpoints.to_vec(),
            http_filters: Vec::new(),
            route: json!({}),
            cluster: json!({}),
        }
    }

    /// Adds an HTTP filter before the router.
    pub fn with_http_filter(mut self, filter: Value) -> ProxyConfig {
        self.http_filters.push(filter);
        self
    }

    /// The config as a JSON value (edit it further if needed).
    pub fn to_value(&self) -> Value {
        let addr = |a: &SocketAddr| json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}});
        let mut filters = self.http_filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let mut route = json!({"cluster": "upstream"});
        crate::json_merge(&mut route, self.route.clone());
        let mut cluster = json!({
            "name": "upstream",
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {
                "cluster_name": "upstream",
                "endpoints": [{"lb_endpoints": self.endpoints.iter()
                    .map(|a| json!({"endpoint": {"address": addr(a)}}))
                    .collect::<Vec<_>>()}]
            }
        });
        crate::json_merge(&mut cluster, self.cluster.clone());
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        json!({
            "admin": {"address": addr(&SocketAddr::new(loopback.ip(), self.admin_port))},
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": addr(&SocketAddr::new(loopback.ip(), self.listener_port)),
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "route_config": {"name": "local", "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": route}]
                            }]},
                            "http_filters": filters
                        }
                    }]}]
                }],
                "clusters": [cluster]
            }
        })
    }

    /// The config text to put in [`EnvoyOptions::config_yaml`].
    pub fn render(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }
}

/// A shipped config from `<workspace>/envoy/`, made runnable beside other processes: each
/// `(from, to)` in `port_map` rewrites `port_value: from}` (use `to = 0` to let Envoy pick,
/// then [`Envoy::listener_addr`]), and the relative `out/reflex.wasm` becomes `wasm`. The
/// file itself is what users run, so tests and the demo exercise exactly it.
pub fn shipped_config(name: &str, port_map: &[(u16, u16)], wasm: &Path) -> Result<String, Error> {
    let path = workspace_root().join("envoy").join(name);
    let mut text =
        fs::read_to_string(&path).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    for (from, to) in port_map {
        let needle = format!("port_value: {from}}}");
        if !text.contains(&needle) {
            return Err(Error::new(format!("{name} has no `{needle}`")));
        }
        text = text.replace(&needle, &format!("port_value: {to}}}"));
    }
    Ok(text.replace(
        "filename: out/reflex.wasm",
        &format!("filename: {}", wasm.display()),
    ))
}
