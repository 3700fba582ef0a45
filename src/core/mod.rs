//! Pure decision logic: no proxy-wasm imports, no clock, no randomness of its own. Callers
//! pass `now` and a random source in, so every algorithm is tested with exact values.

pub mod breaker;
pub mod concurrency_limit;
pub mod emergency;
pub mod ewma;
pub mod latency_quantile;
pub mod outcome;
pub mod outlier;
pub mod p2c;
pub mod priority;
pub mod rate;
pub mod retry_budget;
pub mod retry_policy;
pub mod rng;
pub mod score;
pub mod throttle;
pub mod time;
pub mod token_bucket;
