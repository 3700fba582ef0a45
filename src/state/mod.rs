//! State that every Envoy worker must see: one wasm VM runs per worker, so anything learned
//! on one worker lives in proxy-wasm shared data (a host map guarded by one mutex, values
//! copied in and out, compare-and-swap on a per-key version).
//!
//! - [`store`]: the narrow host interface ([`SharedStore`]) and the CAS retry loop.
//! - [`codec`]: the versioned byte encoding of every value reflex stores.
//! - [`record`]: small per-key values (budgets, breakers, limiters, switches) under CAS.
//! - [`guard`]: per-destination retry budget, breaker, bulkhead and throttle, in one value.
//! - [`admission`]: the local service's adaptive limit and token bucket.
//! - [`switchboard`]: emergency switches set through the control endpoint or pushed by
//!   `switches` instances.
//! - [`table`]: the endpoint table (clusters -> endpoints -> statistics), bounded.

pub mod admission;
pub mod codec;
pub mod guard;
pub mod record;
pub mod store;
pub mod switchboard;
pub mod table;

pub use store::{Cas, SharedStore, StoreError};
pub use table::{EndpointTable, Recorded, TableError, TableSnapshot};

/// How the automation may act right now (from the emergency switches and the config):
/// `frozen` holds every automatic state where it is, `dry_run` decides without enforcing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Automation {
    pub frozen: bool,
    pub dry_run: bool,
}
