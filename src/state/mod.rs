//! State that every Envoy worker must see: one wasm VM runs per worker, so anything learned
//! on one worker lives in proxy-wasm shared data (a host map guarded by one mutex, values
//! copied in and out, compare-and-swap on a per-key version).
//!
//! - [`store`]: the narrow host interface ([`SharedStore`]) and the CAS retry loop.
//! - [`codec`]: the versioned byte encoding of every value reflex stores.
//! - [`record`]: small per-key values (budgets, breakers, limiters, switches) under CAS.
//! - [`table`]: the endpoint table (clusters -> endpoints -> statistics), bounded.

pub mod codec;
pub mod record;
pub mod store;
pub mod table;

pub use store::{Cas, SharedStore, StoreError};
pub use table::{EndpointTable, Recorded, TableError, TableSnapshot};
