//! Pure decision logic: no proxy-wasm imports, no clock, no randomness of its own. Callers
//! pass `now` (and later a random source) in, so every algorithm is tested with exact values.

pub mod outcome;
pub mod time;
