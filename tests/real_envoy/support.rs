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
    json!({
        "name": "reflex",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "reflex",
                "root_id": "reflex",
                "failure_policy": "FAIL_OPEN",
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
