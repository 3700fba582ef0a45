//! The filter's configuration: one JSON document, versioned, camelCase, strict.
//!
//! Parsing happens in two steps, as in Kuadrant's wasm-shim and linkerd2-proxy: serde reads
//! the wire form ([`raw`]) rejecting unknown fields and wrong types, then [`Config::parse`]
//! validates ranges and cross-field rules into typed values. Every error names the JSON path
//! and the rule, so the line Envoy logs is enough to fix the document.

mod admission;
mod duration;
mod emergency;
mod guard;
mod raw;
mod retries;

pub use admission::{Admission, PriorityRules, RateLimit, Reject};
pub use duration::{parse_duration, Millis};
pub use emergency::{AllowFrom, Control, Emergency};
pub use guard::{
    BreakerScope, BulkheadConfig, BulkheadSection, CircuitBreaker, CircuitBreakerSection,
    ClientThrottling, ClientThrottlingSection, LocalReply, PerCluster,
};
pub use retries::{PerTryTimeout, Retries, RetriesSection};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;

/// The only schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

/// A rejected configuration: where, and which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending value, e.g. `endpoints.maxClusters` (`.` for the document).
    pub path: String,
    /// The rule, in words an operator can act on.
    pub rule: String,
}

impl ConfigError {
    /// Control characters are escaped and an empty path is shown as `""`: the message
    /// repeats names from the document, and an operator's (or attacker's) line break must
    /// not split or forge lines in Envoy's log.
    fn new(path: &str, rule: impl Into<String>) -> Self {
        let path = if path.is_empty() { "\"\"" } else { path };
        ConfigError {
            path: escape_controls(path),
            rule: escape_controls(&rule.into()),
        }
    }
}

fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid reflex configuration at `{}`: {}",
            self.path, self.rule
        )
    }
}

impl std::error::Error for ConfigError {}

/// How reflex steers the cluster's override_host load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steering {
    /// Request header read by `envoy.load_balancing_policies.override_host`. reflex removes
    /// it from every incoming request so that a client can never pick an endpoint itself.
    pub header: String,
}

/// Bounds and lifetime of the endpoint table shared by all workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub max_clusters: usize,
    pub max_endpoints_per_cluster: usize,
    /// An endpoint with no traffic for this long is forgotten (Istio EDS moves endpoints).
    pub forget_after: Millis,
}

/// The JSON status endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub enabled: bool,
    pub path: String,
    /// Answer only requests whose downstream peer is a loopback address.
    pub loopback_only: bool,
}

/// Power-of-two-choices steering (see `core::p2c` and `core::score`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancing {
    pub enabled: bool,
    /// Decide and count, but do not write the steering header.
    pub dry_run: bool,
    /// Peak-EWMA decay constant.
    pub latency_decay: Millis,
    /// Latency assumed for an endpoint without samples.
    pub default_rtt: Millis,
    /// Window of the decayed error rate (also used by the failure-percentage and success-rate
    /// detectors).
    pub error_window: Millis,
    /// Weight of the error rate in the cost.
    pub error_weight: f64,
    /// Slow-start window for new and returning endpoints (0 disables).
    pub slow_start: Millis,
    /// Endpoints after the first in the steering header (for retries).
    pub fallbacks: usize,
    /// Share of requests left to the fallback policy so new endpoints get discovered.
    pub explore_ratio: f64,
}

/// A consecutive-failure detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Consecutive {
    pub threshold: u32,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailurePercentage {
    /// Failure share in [0, 1] at or above which an endpoint is ejected.
    pub threshold: f64,
    /// Decayed request volume needed before the share counts.
    pub min_volume: f64,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SuccessRate {
    pub stdev_factor: f64,
    pub min_hosts: usize,
    pub min_volume: f64,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    /// Ejected when slower than `factor ×` the median of its peers...
    pub factor: f64,
    /// ...and slower than this...
    pub min_latency: Millis,
    /// ...for this long.
    pub sustain: Millis,
    pub min_hosts: usize,
    pub dry_run: bool,
}

/// The detectors that are on (`None` = off).
#[derive(Debug, Clone, PartialEq)]
pub struct Detectors {
    pub consecutive_5xx: Option<Consecutive>,
    pub consecutive_gateway: Option<Consecutive>,
    pub failure_percentage: Option<FailurePercentage>,
    pub success_rate: Option<SuccessRate>,
    pub latency: Option<Latency>,
}

/// Outlier ejection (see `core::outlier`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub detectors: Detectors,
    pub base_ejection_time: Millis,
    pub max_ejection_time: Millis,
    pub max_ejection_percent: u32,
    pub panic_threshold_percent: u32,
    /// Successful outcomes a returning endpoint needs before it is healthy again.
    pub probes: u32,
}

/// What a reflex instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// The resilience filter: every feature the document enables.
    #[default]
    Filter,
    /// Applies its own `emergency` section (kill, shed) to the requests it sees and
    /// publishes it to the filters sharing its `vm_id` (freeze, dry-run), renewed as requests
    /// flow through it: the shape of the Istio emergency manifests, which add such an
    /// instance and take it away again (the publication lapses within a few ticks of the
    /// last request through it).
    Switches,
}

/// Top-level fields a `switches` instance may carry.
const SWITCHES_FIELDS: [&str; 6] = [
    "version",
    "role",
    "emergency",
    "tickInterval",
    "metrics",
    "control",
];

/// A validated configuration: every value in range, every duration parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub role: Role,
    /// Global dry-run: every automatic mechanism decides and reports but does not act.
    pub dry_run: bool,
    /// When set, responses carry this header listing the refusals a dry-run only counted
    /// (e.g. `dry-run: circuit-open,overloaded`): what reflex would have done to the request.
    pub decision_header: Option<String>,
    pub retries: RetriesSection,
    pub circuit_breaker: CircuitBreakerSection,
    pub bulkhead: BulkheadSection,
    pub client_throttling: ClientThrottlingSection,
    pub admission: Admission,
    pub emergency: Emergency,
    pub control: Control,
    pub steering: Steering,
    pub endpoints: Endpoints,
    pub load_balancing: LoadBalancing,
    pub outlier_detection: OutlierDetection,
    pub status: Status,
    /// `metrics.tags`: tags encoded into every metric name (`name=.=value;.;` right after
    /// `reflex_`, Istio's convention), for Envoy's `stats_tags` to extract as Prometheus labels,
    /// e.g. `direction` so that an inbound and an outbound filter in one sidecar do not
    /// write the same series. Sorted by name.
    pub metric_tags: Vec<(String, String)>,
    /// Period of the housekeeping tick (forgetting endpoints, refreshing gauges).
    pub tick_interval: Millis,
}

impl Config {
    /// Parses and validates the filter configuration. An empty document is not valid: the
    /// `version` field is required so that a future schema can never be misread as this one.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: raw::RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            ConfigError::new(&path, strip_position(&err.into_inner().to_string()))
        })?;
        de.end()
            .map_err(|err| ConfigError::new(".", strip_position(&err.to_string())))?;
        let config = raw.validate()?;
        if config.role == Role::Switches {
            let fields: Map<String, Value> = serde_json::from_slice(bytes)
                .map_err(|err| ConfigError::new(".", strip_position(&err.to_string())))?;
            if let Some(field) = fields
                .keys()
                .find(|k| !SWITCHES_FIELDS.contains(&k.as_str()))
            {
                return Err(ConfigError::new(
                    field,
                    "must not be set when role is \"switches\": such an instance only publishes its emergency section and may serve the control endpoint",
                ));
            }
        }
        Ok(config)
    }
}

/// Reads a section that may carry per-destination overrides under `clusters`
/// (`{"ratio": 0.2, "clusters": {"outbound|80||pay.svc": {"ratio": 0.1}}}`). An override is
/// the section with some fields changed: what it omits keeps the section's value, so one
/// line changes one destination. Errors name the full path, override included.
pub(super) fn section_with_overrides<R: DeserializeOwned>(
    path: &str,
    section: Option<Value>,
) -> Result<(R, Vec<(String, R)>), ConfigError> {
    let mut base = match section {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ConfigError::new(path, "must be an object")),
    };
    let overrides = match base.remove("clusters") {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ConfigError::new(
                &format!("{path}.clusters"),
                "must be an object of cluster name to overrides",
            ))
        }
    };
    let section: R = from_value(path, Value::Object(base.clone()))?;
    let mut per_cluster = Vec::with_capacity(overrides.len());
    for (cluster, changes) in overrides {
        let at = format!("{path}.clusters.{cluster}");
        if cluster.is_empty() {
            return Err(ConfigError::new(
                &format!("{path}.clusters"),
                "must not name an empty cluster",
            ));
        }
        let Value::Object(changes) = changes else {
            return Err(ConfigError::new(&at, "must be an object"));
        };
        if changes.contains_key("clusters") {
            return Err(ConfigError::new(
                &format!("{at}.clusters"),
                "must not be set: overrides do not nest",
            ));
        }
        let mut merged = base.clone();
        merged.extend(changes);
        per_cluster.push((cluster, from_value(&at, Value::Object(merged))?));
    }
    Ok((section, per_cluster))
}

/// Deserializes a JSON value, naming errors by `path` followed by the path inside it.
fn from_value<R: DeserializeOwned>(path: &str, value: Value) -> Result<R, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        let full = if inner == "." {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::new(&full, strip_position(&err.into_inner().to_string()))
    })
}

/// serde_json appends "at line L column C"; the JSON path says more, and the position of
/// a document embedded as an escaped string in YAML is misleading.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn err(json: &str) -> ConfigError {
        Config::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn minimal_document_gets_safe_defaults() {
        let config = Config::parse(br#"{"version": 1}"#).unwrap();
        assert_eq!(config.steering.header, "x-reflex-endpoint");
        assert!(
            !config.status.enabled,
            "status endpoint must be off by default"
        );
        assert!(config.status.loopback_only);
        assert_eq!(config.endpoints.max_clusters, 64);
        assert_eq!(config.endpoints.max_endpoints_per_cluster, 256);
        assert_eq!(config.endpoints.forget_after, Millis::from_secs(300));
        assert_eq!(config.tick_interval, Millis(1_000));
    }

    #[test]
    fn full_document_is_read_in_camel_case() {
        let config = Config::parse(
            br#"{
              "version": 1,
              "steering": {"header": "x-pick"},
              "endpoints": {"maxClusters": 8, "maxEndpointsPerCluster": 16, "forgetAfter": "30s"},
              "status": {"enabled": true, "path": "/reflex/status", "loopbackOnly": false},
              "tickInterval": "250ms"
            }"#,
        )
        .unwrap();
        assert_eq!(config.steering.header, "x-pick");
        assert_eq!(config.endpoints.max_clusters, 8);
        assert_eq!(config.endpoints.max_endpoints_per_cluster, 16);
        assert_eq!(config.endpoints.forget_after, Millis(30_000));
        assert_eq!(
            config.status,
            Status {
                enabled: true,
                path: "/reflex/status".into(),
                loopback_only: false
            }
        );
        assert_eq!(config.tick_interval, Millis(250));
    }

    #[test]
    fn metric_tags_are_sorted_and_validated() {
        let config = Config::parse(br#"{"version": 1}"#).unwrap();
        assert!(config.metric_tags.is_empty(), "no tags unless asked for");
        let config = Config::parse(
            br#"{"version": 1, "metrics": {"tags": {"direction": "inbound", "team": "pay-v2"}}}"#,
        )
        .unwrap();
        assert_eq!(
            config.metric_tags,
            [
                ("direction".to_string(), "inbound".to_string()),
                ("team".to_string(), "pay-v2".to_string())
            ]
        );
        for (json, path) in [
            (r#"{"Direction": "in"}"#, "metrics.tags.Direction"),
            (r#"{"__name": "in"}"#, "metrics.tags.__name"),
            (r#"{"1st": "in"}"#, "metrics.tags.1st"),
            (r#"{"direction": "in.bound"}"#, "metrics.tags.direction"),
            (r#"{"direction": "a;.;b"}"#, "metrics.tags.direction"),
            (r#"{"direction": ""}"#, "metrics.tags.direction"),
            (
                r#"{"a": "1", "b": "1", "c": "1", "d": "1", "e": "1"}"#,
                "metrics.tags",
            ),
        ] {
            let e = err(&format!(
                r#"{{"version": 1, "metrics": {{"tags": {json}}}}}"#
            ));
            assert_eq!(e.path, path, "{json}: {e}");
        }
        let switches =
            r#"{"version": 1, "role": "switches", "metrics": {"tags": {"direction": "inbound"}}}"#;
        assert!(Config::parse(switches.as_bytes()).is_ok());
    }

    #[test]
    fn a_switches_instance_may_serve_the_control_endpoint() {
        let config = Config::parse(
            br#"{"version": 1, "role": "switches",
                 "control": {"enabled": true, "pathPrefix": "/.reflex/inbound", "token": "0123456789abcdef"}}"#,
        )
        .unwrap();
        assert!(config.control.enabled);
        assert_eq!(config.control.path_prefix, "/.reflex/inbound");
        let e =
            err(r#"{"version": 1, "role": "switches", "control": {"enabled": true, "token": ""}}"#);
        assert_eq!(e.path, "control.token", "{e}");
        assert!(e.rule.contains("must be set"), "{e}");
        // Off with an empty token (the shipped control listener's form) is fine.
        let off =
            br#"{"version": 1, "role": "switches", "control": {"enabled": false, "token": ""}}"#;
        assert!(!Config::parse(off).unwrap().control.enabled);
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let e = err(r#"{"version": 1, "endpoints": {"maxClusterz": 3}}"#);
        assert_eq!(e.path, "endpoints.maxClusterz");
        assert!(e.rule.contains("unknown field `maxClusterz`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let e = err(r#"{"version": 1, "status": {"enabled": "yes"}}"#);
        assert_eq!(e.path, "status.enabled");
        assert!(e.rule.contains("expected a boolean"), "{e}");
    }

    #[test]
    fn bad_duration_is_named_with_its_path() {
        let e = err(r#"{"version": 1, "endpoints": {"forgetAfter": "5 minutes"}}"#);
        assert_eq!(e.path, "endpoints.forgetAfter");
        assert!(e.rule.contains("expected a duration"), "{e}");
    }

    #[test]
    fn version_is_required_and_must_be_known() {
        let e = err(r#"{}"#);
        assert!(e.rule.contains("missing field `version`"), "{e}");
        let e = err(r#"{"version": 2}"#);
        assert_eq!(e.path, "version");
        assert!(e.rule.contains("must be 1"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_rejected_with_the_rule() {
        let cases = [
            (
                r#"{"version":1,"endpoints":{"maxClusters":0}}"#,
                "endpoints.maxClusters",
            ),
            (
                r#"{"version":1,"endpoints":{"maxClusters":100000}}"#,
                "endpoints.maxClusters",
            ),
            (
                r#"{"version":1,"endpoints":{"maxEndpointsPerCluster":0}}"#,
                "endpoints.maxEndpointsPerCluster",
            ),
            (
                r#"{"version":1,"endpoints":{"forgetAfter":"0s"}}"#,
                "endpoints.forgetAfter",
            ),
            (r#"{"version":1,"tickInterval":"5ms"}"#, "tickInterval"),
            (r#"{"version":1,"tickInterval":"2m"}"#, "tickInterval"),
            (r#"{"version":1,"status":{"path":"reflex"}}"#, "status.path"),
            (r#"{"version":1,"status":{"path":"/a b"}}"#, "status.path"),
            (
                r#"{"version":1,"steering":{"header":"X-Upper"}}"#,
                "steering.header",
            ),
            (
                r#"{"version":1,"steering":{"header":""}}"#,
                "steering.header",
            ),
            (
                r#"{"version":1,"steering":{"header":":authority"}}"#,
                "steering.header",
            ),
        ];
        for (json, path) in cases {
            let e = err(json);
            assert_eq!(e.path, path, "{json}: {e}");
            assert!(e.rule.contains("must"), "{json}: {e}");
        }
    }

    #[test]
    fn detector_fields_are_checked_and_misplaced_ones_named() {
        let config = Config::parse(
            br#"{"version": 1, "outlierDetection": {"consecutive5xx": {"threshold": 7},
                "latency": {"factor": 4, "for": "5s", "dryRun": true},
                "successRate": {"enabled": false}}}"#,
        )
        .unwrap();
        let d = &config.outlier_detection.detectors;
        assert_eq!(d.consecutive_5xx.as_ref().map(|c| c.threshold), Some(7));
        assert_eq!(d.consecutive_gateway.as_ref().map(|c| c.threshold), Some(3));
        assert!(d.success_rate.is_none());
        let latency = d.latency.as_ref().unwrap();
        assert_eq!(
            (latency.factor, latency.sustain, latency.dry_run),
            (4.0, Millis(5_000), true)
        );
        let e = err(r#"{"version": 1, "outlierDetection": {"consecutive5xx": {"factor": 2}}}"#);
        assert_eq!(e.path, "outlierDetection.consecutive5xx.factor");
        let e =
            err(r#"{"version": 1, "outlierDetection": {"consecutive5xx": {"threshold": 2.5}}}"#);
        assert_eq!(e.path, "outlierDetection.consecutive5xx.threshold");
        let e = err(
            r#"{"version": 1, "outlierDetection": {"baseEjectionTime": "1m", "maxEjectionTime": "30s"}}"#,
        );
        assert_eq!(e.path, "outlierDetection.maxEjectionTime");
        let e = err(r#"{"version": 1, "loadBalancing": {"exploreRatio": 0.9}}"#);
        assert_eq!(e.path, "loadBalancing.exploreRatio");
    }

    #[test]
    fn names_from_the_document_cannot_split_the_log_line() {
        let e = err("{\"version\": 1, \"a\\nb\": 1}");
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(e.path.contains("\\n"), "{e}");
        let e = err(r#"{"version": 1, "": 1}"#);
        assert_eq!(e.path, "\"\"");
    }

    #[test]
    fn negative_number_is_a_type_error_not_a_wraparound() {
        let e = err(r#"{"version":1,"endpoints":{"maxClusters":-1}}"#);
        assert_eq!(e.path, "endpoints.maxClusters");
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_are_rejected() {
        assert!(Config::parse(b"{\"version\": 1").is_err());
        assert!(Config::parse(b"{\"version\": 1} {}").is_err());
        assert!(Config::parse(b"").is_err());
        assert!(Config::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn error_message_names_path_and_rule_in_one_line() {
        let e = err(r#"{"version":1,"endpoints":{"maxClusters":0}}"#);
        assert_eq!(
            e.to_string(),
            "invalid reflex configuration at `endpoints.maxClusters`: must be between 1 and 4096 (got 0)"
        );
    }
}
