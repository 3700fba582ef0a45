//! Shared pieces of the real-Envoy tests: the built filter, its Envoy filter entry, the
//! override_host cluster, and the shipped configs with their ports moved to free ones.

use reflex_harness::{Envoy, EnvoyOptions, Upstream};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The release filter under test (see `reflex_harness::envoy::built_filter`).
pub fn wasm_path() -> PathBuf {
    reflex_harness::envoy::built_filter()
}

/// The reflex HTTP filter entry with `config` as its plugin configuration.
pub fn reflex_filter(config: &str) -> Value {
    reflex_filter_named("reflex", config)
}

/// A reflex filter entry with its own filter and plugin `name` (same VM, same shared data):
/// e.g. a `switches` instance beside the main filter.
pub fn reflex_filter_named(name: &str, config: &str) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": "reflex",
                "failure_policy": "FAIL_OPEN",
                // Lets the control endpoint read a request body before anything is forwarded.
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config
                },
                "vm_config": {
                    "vm_id": "reflex-test",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_path().to_string_lossy()}}
                }
            }
        }
    })
}

/// `n` healthy test upstreams named u0..u{n-1}.
pub fn upstreams(n: usize) -> Vec<Upstream> {
    (0..n)
        .map(|i| Upstream::start(&format!("u{i}"), reflex_harness::Behaviour::ok()).unwrap())
        .collect()
}

pub fn addrs(upstreams: &[Upstream]) -> Vec<SocketAddr> {
    upstreams.iter().map(|u| u.addr()).collect()
}

/// Starts Envoy with `workers` workers and fails the test with Envoy's log if it cannot.
pub fn start(config_yaml: String, workers: u32) -> Envoy {
    let mut options = EnvoyOptions::new(config_yaml);
    options.concurrency = workers;
    Envoy::start(options).unwrap_or_else(|e| panic!("envoy failed to start: {e}"))
}

/// A shipped config from `envoy/` with its ports remapped and the built filter's path.
pub fn shipped_config(name: &str, port_map: &[(u16, u16)]) -> String {
    reflex_harness::envoy::shipped_config(name, port_map, &wasm_path()).unwrap()
}

/// Polls `check` until it returns `Some` or `timeout` passes; state that crosses Envoy's
/// workers and its stats flush settles asynchronously.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// reflex's status document, fetched through the listener at `addr`.
pub fn status(addr: SocketAddr, path: &str) -> Value {
    let response = reflex_harness::Client::new(addr).get(path, &[]).unwrap();
    assert_eq!(response.status, 200, "status endpoint: {}", response.text());
    serde_json::from_slice(&response.body).unwrap()
}

/// The value of a Prometheus sample without labels, e.g. `reflex_requests_total`.
pub fn prometheus_value(text: &str, name: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (metric, value) = l.rsplit_once(' ')?;
        let metric = metric.strip_suffix("{}").unwrap_or(metric);
        (metric == name).then(|| value.parse::<f64>().ok().map(|v| v as u64))?
    })
}

/// An LDS resource file with one listener (`port`) whose HTTP filters are `filters`, routing
/// to `cluster_addr`.
pub fn lds_document(port: u16, cluster_addr: SocketAddr, filters: Vec<Value>) -> String {
    let mut proxy = reflex_harness::ProxyConfig::new(&[cluster_addr]);
    proxy.http_filters = filters;
    proxy.listener_port = port;
    let mut listener = proxy.to_value()["static_resources"]["listeners"][0].clone();
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    serde_json::to_string(&json!({ "resources": [listener] })).unwrap()
}

/// Writes an xDS file the way Envoy watches for it: a rename onto the path.
pub fn publish(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Envoy with its listeners from the LDS file `lds` (file-based xDS, as a control plane
/// would push them) and a static cluster of `upstreams`.
pub fn start_with_lds(upstreams: &[SocketAddr], lds: &std::path::Path, workers: u32) -> Envoy {
    let mut bootstrap = reflex_harness::ProxyConfig::new(upstreams).to_value();
    bootstrap["static_resources"]["listeners"] = json!([]);
    bootstrap["node"] = json!({"id": "reflex-test", "cluster": "reflex-test"});
    bootstrap["dynamic_resources"] = json!({"lds_config": {
        "resource_api_version": "V3",
        "path_config_source": {"path": lds.to_string_lossy()}
    }});
    start(bootstrap.to_string(), workers)
}

/// A fresh path for an LDS file of the test called `name`.
pub fn lds_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("reflex-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("lds.json")
}

/// Waits until Envoy has accepted `n` LDS updates (the first is the initial listener).
pub fn wait_for_lds_updates(envoy: &Envoy, n: u64) {
    envoy
        .wait_for_stat(
            "listener_manager.lds.update_success",
            |v| v >= n,
            Duration::from_secs(10),
        )
        .unwrap();
}
