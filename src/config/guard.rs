//! Guards in front of a destination: `circuitBreaker`, `bulkhead` and `clientThrottling`
//! (see `core::breaker` and `core::throttle`). Each section can be overridden per destination
//! cluster under `clusters`; an override changes only the fields it names (an object field
//! such as `localReply` is replaced whole: its omitted fields take their defaults). All three
//! are off by default.

use super::raw::{header_name, in_range};
use super::{section_with_overrides, ConfigError, Millis};
use crate::core::breaker::BreakerPolicy;
use crate::core::throttle::ThrottlePolicy;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A section's value for every destination: the default, and the clusters that override it.
#[derive(Debug, Clone, PartialEq)]
pub struct PerCluster<T> {
    pub default: T,
    pub clusters: Vec<(String, T)>,
}

impl<T> PerCluster<T> {
    /// The settings that apply to `cluster`.
    pub fn for_cluster(&self, cluster: &str) -> &T {
        self.clusters
            .iter()
            .find(|(name, _)| name == cluster)
            .map_or(&self.default, |(_, value)| value)
    }
}

/// An answer reflex makes itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub body: String,
    /// Lowercase names, printable ASCII values, sorted by name.
    pub headers: Vec<(String, String)>,
}

pub const MAX_LOCAL_REPLY_BODY: usize = 4096;
pub const MAX_LOCAL_REPLY_HEADERS: usize = 16;
const MAX_HEADER_VALUE: usize = 1024;
/// Framing and hop-by-hop headers: Envoy sets them for the reply it sends.
const RESERVED_HEADERS: [&str; 3] = ["content-length", "transfer-encoding", "connection"];

/// `localReply` as written, for any section that answers locally: omitted fields take the
/// section's defaults, given to [`RawLocalReply::validate`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(super) struct RawLocalReply {
    status: Option<u64>,
    body: Option<String>,
    headers: BTreeMap<String, String>,
}

impl RawLocalReply {
    pub(super) fn validate(
        self,
        path: &str,
        default_status: u16,
        default_body: &str,
    ) -> Result<LocalReply, ConfigError> {
        let status = in_range(
            &format!("{path}.status"),
            self.status.unwrap_or(u64::from(default_status)),
            200,
            599,
        )? as u16;
        let body = self.body.unwrap_or_else(|| default_body.to_string());
        if body.len() > MAX_LOCAL_REPLY_BODY {
            return Err(ConfigError::new(
                &format!("{path}.body"),
                format!(
                    "must be at most {MAX_LOCAL_REPLY_BODY} bytes (got {})",
                    body.len()
                ),
            ));
        }
        if self.headers.len() > MAX_LOCAL_REPLY_HEADERS {
            return Err(ConfigError::new(
                &format!("{path}.headers"),
                format!(
                    "must have at most {MAX_LOCAL_REPLY_HEADERS} headers (got {})",
                    self.headers.len()
                ),
            ));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in self.headers {
            let at = format!("{path}.headers.{name}");
            let name = header_name(&at, name)?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    &at,
                    "must not be a framing or hop-by-hop header (Envoy sets it)",
                ));
            }
            if value.len() > MAX_HEADER_VALUE || !value.chars().all(|c| (' '..='~').contains(&c)) {
                return Err(ConfigError::new(
                    &at,
                    format!(
                        "must be printable ASCII, at most {MAX_HEADER_VALUE} bytes (got {value:?})"
                    ),
                ));
            }
            headers.push((name, value));
        }
        Ok(LocalReply {
            status,
            body,
            headers,
        })
    }
}

/// One breaker per destination cluster, or per cluster and route name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerScope {
    Cluster,
    Route,
}

/// `circuitBreaker` for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    pub enabled: bool,
    /// Run the breaker and count what it would reject, but let everything through.
    pub dry_run: bool,
    pub policy: BreakerPolicy,
    pub scope: BreakerScope,
    /// What a rejected request gets.
    pub local_reply: LocalReply,
}

/// `bulkhead` for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadConfig {
    pub enabled: bool,
    pub dry_run: bool,
    /// Requests in flight to the destination, over all workers, beyond which reflex refuses.
    pub max_concurrent: u32,
    /// Status of the local reply to a refused request.
    pub status: u16,
}

/// `clientThrottling` for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientThrottling {
    pub enabled: bool,
    pub dry_run: bool,
    pub policy: ThrottlePolicy,
    /// Status of the local reply to a throttled request.
    pub reject_status: u16,
    /// Statuses that mean the backend rejected the request. A request with no answer at
    /// all (connect failure, reset) is always a rejection, whatever this list says.
    pub rejection_codes: Vec<u16>,
}

pub type CircuitBreakerSection = PerCluster<CircuitBreaker>;
pub type BulkheadSection = PerCluster<BulkheadConfig>;
pub type ClientThrottlingSection = PerCluster<ClientThrottling>;

pub const DEFAULT_BREAKER_BODY: &str = "circuit open: upstream marked unavailable by reflex\n";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawCircuitBreaker {
    enabled: bool,
    dry_run: bool,
    failure_rate: f64,
    minimum_requests: u64,
    window: Millis,
    consecutive_failures: u64,
    sleep_window: Millis,
    half_open_probes: u64,
    scope: String,
    local_reply: RawLocalReply,
}

impl Default for RawCircuitBreaker {
    fn default() -> Self {
        RawCircuitBreaker {
            enabled: false,
            dry_run: false,
            failure_rate: 0.5,
            minimum_requests: 20,
            window: Millis::from_secs(10),
            consecutive_failures: 0,
            sleep_window: Millis::from_secs(5),
            half_open_probes: 3,
            scope: "cluster".into(),
            local_reply: RawLocalReply::default(),
        }
    }
}

impl RawCircuitBreaker {
    fn validate(self, path: &str) -> Result<CircuitBreaker, ConfigError> {
        let at = |field: &str| format!("{path}.{field}");
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(ConfigError::new(
                &at("failureRate"),
                format!("must be above 0 and at most 1 (got {})", self.failure_rate),
            ));
        }
        let minimum_requests = in_range(&at("minimumRequests"), self.minimum_requests, 1, 100_000)?;
        let window = in_range(
            &at("window"),
            self.window,
            Millis::from_secs(1),
            Millis::from_secs(600),
        )?;
        let consecutive = in_range(
            &at("consecutiveFailures"),
            self.consecutive_failures,
            0,
            1000,
        )?;
        let sleep_window = in_range(
            &at("sleepWindow"),
            self.sleep_window,
            Millis(100),
            Millis::from_secs(600),
        )?;
        let half_open_probes = in_range(&at("halfOpenProbes"), self.half_open_probes, 1, 100)?;
        let scope = match self.scope.as_str() {
            "cluster" => BreakerScope::Cluster,
            "route" => BreakerScope::Route,
            other => {
                return Err(ConfigError::new(
                    &at("scope"),
                    format!("must be \"cluster\" or \"route\" (got {other:?})"),
                ))
            }
        };
        Ok(CircuitBreaker {
            enabled: self.enabled,
            dry_run: self.dry_run,
            policy: BreakerPolicy {
                failure_rate: self.failure_rate,
                minimum_requests: minimum_requests as u32,
                window,
                consecutive_failures: (consecutive > 0).then_some(consecutive as u32),
                sleep_window,
                half_open_probes: half_open_probes as u32,
            },
            scope,
            local_reply: self
                .local_reply
                .validate(&at("localReply"), 503, DEFAULT_BREAKER_BODY)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawBulkhead {
    enabled: bool,
    dry_run: bool,
    max_concurrent: u64,
    status: u64,
}

impl Default for RawBulkhead {
    fn default() -> Self {
        RawBulkhead {
            enabled: false,
            dry_run: false,
            max_concurrent: 1000,
            status: 503,
        }
    }
}

impl RawBulkhead {
    fn validate(self, path: &str) -> Result<BulkheadConfig, ConfigError> {
        Ok(BulkheadConfig {
            enabled: self.enabled,
            dry_run: self.dry_run,
            max_concurrent: in_range(
                &format!("{path}.maxConcurrent"),
                self.max_concurrent,
                1,
                1_000_000,
            )? as u32,
            status: in_range(&format!("{path}.status"), self.status, 200, 599)? as u16,
        })
    }
}

/// Enough for every 4xx/5xx a backend could mean as "go away".
const MAX_REJECTION_CODES: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawClientThrottling {
    enabled: bool,
    dry_run: bool,
    k: f64,
    window: Millis,
    reject_status: u64,
    rejection_codes: Vec<u64>,
}

impl Default for RawClientThrottling {
    fn default() -> Self {
        RawClientThrottling {
            enabled: false,
            dry_run: false,
            k: 2.0,
            window: Millis::from_secs(30),
            reject_status: 503,
            rejection_codes: vec![429, 503],
        }
    }
}

impl RawClientThrottling {
    fn validate(self, path: &str) -> Result<ClientThrottling, ConfigError> {
        let at = |field: &str| format!("{path}.{field}");
        let k = in_range(&at("k"), self.k, 1.0, 10.0)?;
        let window = in_range(
            &at("window"),
            self.window,
            Millis::from_secs(1),
            Millis::from_secs(600),
        )?;
        let reject_status = in_range(&at("rejectStatus"), self.reject_status, 200, 599)? as u16;
        if self.rejection_codes.is_empty() || self.rejection_codes.len() > MAX_REJECTION_CODES {
            return Err(ConfigError::new(
                &at("rejectionCodes"),
                format!("must list between 1 and {MAX_REJECTION_CODES} status codes"),
            ));
        }
        let mut rejection_codes = Vec::with_capacity(self.rejection_codes.len());
        for (i, code) in self.rejection_codes.into_iter().enumerate() {
            let code = in_range(&format!("{path}.rejectionCodes[{i}]"), code, 400, 599)? as u16;
            if !rejection_codes.contains(&code) {
                rejection_codes.push(code);
            }
        }
        Ok(ClientThrottling {
            enabled: self.enabled,
            dry_run: self.dry_run,
            policy: ThrottlePolicy { k, window },
            reject_status,
            rejection_codes,
        })
    }
}

/// Reads a section with overrides and validates each value (overrides at
/// `<path>.clusters.<name>`).
fn per_cluster<R: serde::de::DeserializeOwned, T>(
    path: &str,
    value: Option<Value>,
    validate: impl Fn(R, &str) -> Result<T, ConfigError>,
) -> Result<PerCluster<T>, ConfigError> {
    let (base, overrides) = section_with_overrides::<R>(path, value)?;
    let default = validate(base, path)?;
    let clusters = overrides
        .into_iter()
        .map(|(cluster, raw)| {
            let value = validate(raw, &format!("{path}.clusters.{cluster}"))?;
            Ok((cluster, value))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(PerCluster { default, clusters })
}

pub(super) fn parse_circuit_breaker(
    value: Option<Value>,
) -> Result<CircuitBreakerSection, ConfigError> {
    per_cluster("circuitBreaker", value, RawCircuitBreaker::validate)
}

pub(super) fn parse_bulkhead(value: Option<Value>) -> Result<BulkheadSection, ConfigError> {
    per_cluster("bulkhead", value, RawBulkhead::validate)
}

pub(super) fn parse_client_throttling(
    value: Option<Value>,
) -> Result<ClientThrottlingSection, ConfigError> {
    per_cluster("clientThrottling", value, RawClientThrottling::validate)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn breaker_err(value: Value) -> ConfigError {
        let e = parse_circuit_breaker(Some(value)).unwrap_err();
        assert!(
            e.rule.contains("must") || e.rule.contains("unknown field"),
            "{e}"
        );
        e
    }

    #[test]
    fn breaker_defaults_are_off_and_safe() {
        let section = parse_circuit_breaker(None).unwrap();
        let b = &section.default;
        assert!(!b.enabled && !b.dry_run);
        assert_eq!(
            b.policy,
            BreakerPolicy {
                failure_rate: 0.5,
                minimum_requests: 20,
                window: Millis(10_000),
                consecutive_failures: None,
                sleep_window: Millis(5_000),
                half_open_probes: 3,
            }
        );
        assert_eq!(b.scope, BreakerScope::Cluster);
        assert_eq!(
            b.local_reply,
            LocalReply {
                status: 503,
                body: DEFAULT_BREAKER_BODY.into(),
                headers: vec![],
            }
        );
        assert!(section.clusters.is_empty());
        assert_eq!(parse_circuit_breaker(Some(json!({}))).unwrap(), section);
    }

    #[test]
    fn breaker_full_document_with_overrides() {
        let section = parse_circuit_breaker(Some(json!({
            "enabled": true,
            "dryRun": true,
            "failureRate": 0.25,
            "minimumRequests": 50,
            "window": "30s",
            "consecutiveFailures": 5,
            "sleepWindow": "250ms",
            "halfOpenProbes": 1,
            "scope": "route",
            "localReply": {
                "status": 429,
                "body": "busy",
                "headers": {"retry-after": "5", "x-reflex": "breaker open"}
            },
            "clusters": {
                "outbound|80||pay.svc": {"failureRate": 1, "localReply": {"body": "pay down"}}
            }
        })))
        .unwrap();
        let b = &section.default;
        assert!(b.enabled && b.dry_run);
        assert_eq!(b.policy.failure_rate, 0.25);
        assert_eq!(b.policy.minimum_requests, 50);
        assert_eq!(b.policy.window, Millis(30_000));
        assert_eq!(b.policy.consecutive_failures, Some(5));
        assert_eq!(b.policy.sleep_window, Millis(250));
        assert_eq!(b.policy.half_open_probes, 1);
        assert_eq!(b.scope, BreakerScope::Route);
        assert_eq!(
            b.local_reply,
            LocalReply {
                status: 429,
                body: "busy".into(),
                headers: vec![
                    ("retry-after".into(), "5".into()),
                    ("x-reflex".into(), "breaker open".into())
                ],
            }
        );
        let pay = section.for_cluster("outbound|80||pay.svc");
        assert_eq!(pay.policy.failure_rate, 1.0);
        assert_eq!(pay.policy.minimum_requests, 50, "inherited");
        assert_eq!(
            pay.local_reply,
            LocalReply {
                status: 503,
                body: "pay down".into(),
                headers: vec![]
            },
            "an object field is replaced whole"
        );
        assert_eq!(section.for_cluster("other"), &section.default);
    }

    #[test]
    fn breaker_invalid_values_name_their_path() {
        let cases = [
            (json!({"failureRate": 0}), "circuitBreaker.failureRate"),
            (json!({"failureRate": 1.01}), "circuitBreaker.failureRate"),
            (
                json!({"minimumRequests": 0}),
                "circuitBreaker.minimumRequests",
            ),
            (
                json!({"minimumRequests": 100001}),
                "circuitBreaker.minimumRequests",
            ),
            (json!({"window": "999ms"}), "circuitBreaker.window"),
            (json!({"window": "11m"}), "circuitBreaker.window"),
            (
                json!({"consecutiveFailures": 1001}),
                "circuitBreaker.consecutiveFailures",
            ),
            (json!({"sleepWindow": "99ms"}), "circuitBreaker.sleepWindow"),
            (json!({"sleepWindow": "601s"}), "circuitBreaker.sleepWindow"),
            (
                json!({"halfOpenProbes": 0}),
                "circuitBreaker.halfOpenProbes",
            ),
            (
                json!({"halfOpenProbes": 101}),
                "circuitBreaker.halfOpenProbes",
            ),
            (json!({"scope": "endpoint"}), "circuitBreaker.scope"),
            (
                json!({"localReply": {"status": 199}}),
                "circuitBreaker.localReply.status",
            ),
            (
                json!({"localReply": {"status": 600}}),
                "circuitBreaker.localReply.status",
            ),
            (
                json!({"localReply": {"body": "x".repeat(4097)}}),
                "circuitBreaker.localReply.body",
            ),
            (
                json!({"localReply": {"headers": {"X-Upper": "a"}}}),
                "circuitBreaker.localReply.headers.X-Upper",
            ),
            (
                json!({"localReply": {"headers": {":status": "200"}}}),
                "circuitBreaker.localReply.headers.:status",
            ),
            (
                json!({"localReply": {"headers": {"content-length": "3"}}}),
                "circuitBreaker.localReply.headers.content-length",
            ),
            (
                json!({"localReply": {"headers": {"x-a": "line\nbreak"}}}),
                "circuitBreaker.localReply.headers.x-a",
            ),
            (
                json!({"localReply": {"headers": {"x-a": "é"}}}),
                "circuitBreaker.localReply.headers.x-a",
            ),
            (
                json!({"clusters": {"pay": {"halfOpenProbes": 0}}}),
                "circuitBreaker.clusters.pay.halfOpenProbes",
            ),
            (json!({"sleepwindow": "1s"}), "circuitBreaker.sleepwindow"),
        ];
        for (value, path) in cases {
            let e = breaker_err(value.clone());
            assert_eq!(e.path, path, "{value}: {e}");
        }
        let many: serde_json::Map<String, Value> =
            (0..17).map(|i| (format!("x-h{i}"), json!("v"))).collect();
        let e = breaker_err(json!({"localReply": {"headers": many}}));
        assert_eq!(e.path, "circuitBreaker.localReply.headers");
        // The limits themselves are accepted.
        let body = "x".repeat(4096);
        let ok = parse_circuit_breaker(Some(
            json!({"failureRate": 1, "localReply": {"body": body}}),
        ));
        assert!(ok.is_ok());
    }

    #[test]
    fn bulkhead_defaults_full_document_and_errors() {
        let section = parse_bulkhead(None).unwrap();
        assert_eq!(
            section.default,
            BulkheadConfig {
                enabled: false,
                dry_run: false,
                max_concurrent: 1000,
                status: 503
            }
        );
        let section = parse_bulkhead(Some(json!({
            "enabled": true, "dryRun": true, "maxConcurrent": 64, "status": 429,
            "clusters": {"db": {"maxConcurrent": 8}}
        })))
        .unwrap();
        assert_eq!(
            section.default,
            BulkheadConfig {
                enabled: true,
                dry_run: true,
                max_concurrent: 64,
                status: 429
            }
        );
        assert_eq!(section.for_cluster("db").max_concurrent, 8);
        assert_eq!(section.for_cluster("db").status, 429);
        let cases = [
            (json!({"maxConcurrent": 0}), "bulkhead.maxConcurrent"),
            (json!({"maxConcurrent": 1000001}), "bulkhead.maxConcurrent"),
            (json!({"status": 199}), "bulkhead.status"),
            (json!({"status": 600}), "bulkhead.status"),
            (
                json!({"clusters": {"db": {"status": 1}}}),
                "bulkhead.clusters.db.status",
            ),
            (json!({"enabled": "yes"}), "bulkhead.enabled"),
            (json!([]), "bulkhead"),
        ];
        for (value, path) in cases {
            let e = parse_bulkhead(Some(value.clone())).unwrap_err();
            assert_eq!(e.path, path, "{value}: {e}");
        }
    }

    #[test]
    fn client_throttling_defaults_full_document_and_errors() {
        let section = parse_client_throttling(None).unwrap();
        assert_eq!(
            section.default,
            ClientThrottling {
                enabled: false,
                dry_run: false,
                policy: ThrottlePolicy {
                    k: 2.0,
                    window: Millis(30_000)
                },
                reject_status: 503,
                rejection_codes: vec![429, 503],
            }
        );
        let section = parse_client_throttling(Some(json!({
            "enabled": true, "dryRun": true, "k": 1.5, "window": "1m", "rejectStatus": 429,
            "rejectionCodes": [503, 429, 503],
            "clusters": {"api": {"k": 10}}
        })))
        .unwrap();
        let t = &section.default;
        assert!(t.enabled && t.dry_run);
        assert_eq!(
            t.policy,
            ThrottlePolicy {
                k: 1.5,
                window: Millis(60_000)
            }
        );
        assert_eq!(t.reject_status, 429);
        assert_eq!(t.rejection_codes, vec![503, 429], "duplicates dropped");
        assert_eq!(section.for_cluster("api").policy.k, 10.0);
        assert_eq!(section.for_cluster("api").reject_status, 429);
        let cases = [
            (json!({"k": 0.99}), "clientThrottling.k"),
            (json!({"k": 10.5}), "clientThrottling.k"),
            (json!({"window": "500ms"}), "clientThrottling.window"),
            (json!({"window": "601s"}), "clientThrottling.window"),
            (
                json!({"rejectStatus": 100}),
                "clientThrottling.rejectStatus",
            ),
            (
                json!({"rejectionCodes": []}),
                "clientThrottling.rejectionCodes",
            ),
            (
                json!({"rejectionCodes": [429, 399]}),
                "clientThrottling.rejectionCodes[1]",
            ),
            (
                json!({"rejectionCodes": [600]}),
                "clientThrottling.rejectionCodes[0]",
            ),
            (
                json!({"clusters": {"api": {"rejectionCodes": []}}}),
                "clientThrottling.clusters.api.rejectionCodes",
            ),
            (
                json!({"clusters": {"api": {"clusters": {}}}}),
                "clientThrottling.clusters.api.clusters",
            ),
        ];
        for (value, path) in cases {
            let e = parse_client_throttling(Some(value.clone())).unwrap_err();
            assert_eq!(e.path, path, "{value}: {e}");
            assert!(e.rule.contains("must"), "{value}: {e}");
        }
        let codes: Vec<u16> = (400..433).collect();
        let e = parse_client_throttling(Some(json!({ "rejectionCodes": codes }))).unwrap_err();
        assert_eq!(e.path, "clientThrottling.rejectionCodes");
    }

    #[test]
    fn per_cluster_lookup_is_exact() {
        let p = PerCluster {
            default: 1,
            clusters: vec![("a".into(), 2), ("ab".into(), 3)],
        };
        assert_eq!(*p.for_cluster("a"), 2);
        assert_eq!(*p.for_cluster("ab"), 3);
        assert_eq!(*p.for_cluster("A"), 1);
        assert_eq!(*p.for_cluster(""), 1);
    }
}
