//! Host-backed implementations of the core's narrow interfaces.

use crate::core::time::Instant;
use crate::state::{Cas, SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::time::UNIX_EPOCH;

/// proxy-wasm shared data, scoped by Envoy to this plugin's `vm_id`.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((None, None)) => Ok(None),
            // An empty value comes back as no data with a version: reflex's deletion marker.
            Ok((data, cas)) => Ok(Some((data.unwrap_or_default(), cas.unwrap_or(0)))),
            Err(status) => Err(StoreError::Host(format!("get_shared_data: {status:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Host(format!("set_shared_data: {status:?}"))),
        }
    }
}

/// The host's wall clock in microseconds since the epoch (latency measurement, seeding).
pub fn now_us() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as u64)
}

/// The host's wall clock, shared by all workers (see `core::time`).
pub fn now() -> Instant {
    Instant(now_us() / 1_000)
}

/// Reads a property as raw bytes; absent and host errors are both `None`.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A string property; absent, empty or not UTF-8 are all `None`.
pub fn string_property(path: &[&str]) -> Option<String> {
    property(path)
        .as_deref()
        .and_then(crate::properties::string)
        .map(str::to_string)
}
