//! # reflex-harness
//!
//! Real-Envoy test harness and programmable test upstreams for reflex. Tests of the filter need
//! the real thing (Envoy 1.40 loading the Wasm module, real sockets, real failures), not mocks;
//! this crate makes that cheap and self-cleaning, using only std, serde and libc so it compiles
//! fast on a 2-core CI machine.
//!
//! - [`upstream`]: a threaded HTTP/1.1 server whose [`Behaviour`] (status mix, latency and slow
//!   tail, capacity + queue, hang, TCP resets, Retry-After) can change at runtime, from the
//!   handle or over HTTP at `/_upstream/{stats,behaviour,reset-stats}` on the same port. Every
//!   answer carries `x-upstream-id: <name>`. Per request, `x-upstream-status` and
//!   `x-upstream-delay-ms` request headers override status and latency.
//! - [`client`]: a blocking keep-alive HTTP/1.1 client; [`load`]: closed-loop and open-loop
//!   (constant-rate) load generators with status, error, per-upstream and latency reports.
//! - [`envoy`]: starts Envoy (`$REFLEX_ENVOY`, else `<workspace>/.venv/bin/envoy`, else `envoy`
//!   on PATH) on a caller-supplied config in a private temp dir with `--disable-hot-restart`
//!   (so instances run in parallel), waits for `/ready`, exposes admin, stats, Prometheus text
//!   and logs, and kills and reaps it on drop. [`ProxyConfig`] renders a minimal listener →
//!   filters → router → cluster config (ports 0, discovered through the admin API).
//!
//! The demo and benchmarks reuse the same upstreams in a native topology (no Docker) through
//! the `reflex-upstream` binary:
//!
//! ```text
//! cargo build --release -p reflex-harness --bin reflex-upstream
//! target/release/reflex-upstream --listen 127.0.0.1:9001 --listen 127.0.0.1:9002 \
//!     --name u0 --name u1 --behaviour '{"latency":{"baseMs":5,"jitterMs":2}}' &
//! # prints: listening u0 127.0.0.1:9001 / listening u1 127.0.0.1:9002
//! curl -X PUT -d '{"statusMix":[{"status":503,"weight":1}]}' 127.0.0.1:9002/_upstream/behaviour
//! curl -X PATCH -d '{"hang":true}' 127.0.0.1:9002/_upstream/behaviour
//! curl 127.0.0.1:9002/_upstream/stats
//! ```
//!
//! It runs until SIGTERM/SIGINT (or, with `--exit-on-stdin-eof`, until its stdin closes, so a
//! parent holding a pipe cannot leak it). From Rust, [`RemoteUpstream`] drives such a process.
//!
//! Set `REFLEX_KEEP_ENVOY_DIR=1` to keep each Envoy's temp dir (config, `envoy.log`, stderr).

pub mod client;
pub mod envoy;
mod http;
pub mod load;
pub mod rng;
pub mod timeline;
pub mod upstream;

pub use client::{Client, Response};
pub use envoy::{free_port, Envoy, EnvoyOptions, ProxyConfig};
pub use load::{closed_loop, open_loop, ClosedLoop, LoadReport, OpenLoop, RequestSpec};
pub use upstream::{Behaviour, RemoteUpstream, Upstream, UpstreamOptions, UpstreamStats};

/// Recursive JSON merge: objects merge key by key, anything else in `patch` replaces `base`.
pub fn json_merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                json_merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}
