//! reflex: fast local reflexes for every Envoy sidecar.
//!
//! The crate is split the way the request path is: a pure core that decides (no proxy-wasm
//! imports; time and randomness are arguments) and a thin adapter that talks to the host.
//! Everything but `adapter` builds and tests on the host and on 32-bit wasm.
//!
//! - [`config`]: the operator's JSON, parsed strictly and validated into typed values.
//! - [`core`]: pure decision logic (outcome classification, time).
//! - [`state`]: state shared by all Envoy workers (versioned encoding, CAS updates, bounds).
//! - [`control`]: the local control endpoint's protocol (requests, answers, token check).
//! - [`properties`]: decoding of the values Envoy reports (codes, addresses).
//! - [`status`]: the JSON status document.
//! - `adapter` (wasm32-wasip1 only): proxy-wasm contexts, host store, metrics.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod control;
pub mod core;
pub mod properties;
pub mod state;
pub mod status;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod adapter;

/// The crate version, logged at VM start and shown by the status endpoint.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the filter was built from (`build.sh` sets `REFLEX_GIT_SHA`).
pub const GIT_SHA: &str = match option_env!("REFLEX_GIT_SHA") {
    Some(sha) => sha,
    None => "unknown",
};
