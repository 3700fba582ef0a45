//! Pure decision logic: no proxy-wasm imports, no clock, no randomness of its own. Callers
//! pass `now` and a random source in, so every algorithm is tested with exact values.

pub mod ewma;
pub mod outcome;
pub mod outlier;
pub mod p2c;
pub mod rate;
pub mod rng;
pub mod score;
pub mod time;
