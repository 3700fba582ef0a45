//! The `retries` section: how many retries reflex lets Envoy make for a destination, on which
//! failures, within which budget, and with which per-try timeout. Per-destination overrides
//! go under `clusters` (see [`super::section_with_overrides`]).
//!
//! ```json
//! "retries": {
//!   "enabled": true, "maxRetries": 2, "retryOn": ["gateway-error", "reset", "connect-failure"],
//!   "budget": {"ratio": 0.2, "minPerSecond": 3, "window": "10s"},
//!   "perTryTimeout": {"quantile": 0.95, "factor": 2, "min": "25ms", "max": "2s"},
//!   "routes": [{"pathPrefix": "/orders", "methods": ["POST"]}],
//!   "clusters": {"outbound|80||pay.svc": {"maxRetries": 1}}
//! }
//! ```
//!
//! Defaults are safe: retries are off until enabled, and once on they are bounded by a 20%
//! budget and only apply to idempotent requests and failures where the endpoint cannot have
//! processed the request or answered that it is unavailable.

use super::raw::in_range;
use super::{ConfigError, Millis};
use crate::core::retry_budget::BudgetPolicy;
use crate::core::retry_policy::{self, Eligibility, RetryCondition, RouteMatch, RouteRule};
use serde::Deserialize;

/// Most route rules one section (or override) may list.
const MAX_ROUTES: usize = 64;
/// Most methods one route rule may list.
const MAX_METHODS: usize = 16;
/// Most retriable status codes.
const MAX_STATUS_CODES: usize = 32;
/// Longest route name or path prefix.
const MAX_ROUTE_TEXT: usize = 256;

/// Per-try timeout derived from the destination's latency quantile (`core::latency_quantile`).
#[derive(Debug, Clone, PartialEq)]
pub struct PerTryTimeout {
    /// Which latency quantile the timeout is based on (0.95 = p95).
    pub quantile: f64,
    /// Timeout = quantile x factor...
    pub factor: f64,
    /// ...but at least this...
    pub min: Millis,
    /// ...and at most this (also the timeout while there is no estimate).
    pub max: Millis,
    /// Half-life of the latency histogram.
    pub half_life: Millis,
}

/// The retry policy of one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    pub enabled: bool,
    /// Decide, reserve and count, but set no header.
    pub dry_run: bool,
    pub max_retries: u32,
    pub retry_on: Vec<RetryCondition>,
    /// Non-empty exactly when `retry_on` has [`RetryCondition::RetriableStatusCodes`].
    pub retriable_status_codes: Vec<u16>,
    pub budget: BudgetPolicy,
    /// `None` when off: reflex leaves the route's per-try timeout alone.
    pub per_try_timeout: Option<PerTryTimeout>,
    /// Non-idempotent methods that may be retried on matching requests.
    pub routes: Vec<RouteRule>,
}

impl Retries {
    /// Whether a request may be retried at all (see [`retry_policy::plan`]).
    pub fn plan(&self, method: &str, path: &str, route_name: Option<&str>) -> Eligibility {
        retry_policy::plan(method, path, route_name, self.enabled, &self.routes)
    }

    /// The value of `x-envoy-retry-on`.
    pub fn retry_on_header(&self) -> String {
        retry_policy::retry_on_header(&self.retry_on)
    }

    /// The value of `x-envoy-retriable-status-codes`, if there are codes to set.
    pub fn status_codes_header(&self) -> Option<String> {
        (!self.retriable_status_codes.is_empty())
            .then(|| retry_policy::status_codes_header(&self.retriable_status_codes))
    }
}

/// The section: the policy for every destination and the destinations that differ.
#[derive(Debug, Clone, PartialEq)]
pub struct RetriesSection {
    pub default: Retries,
    pub clusters: Vec<(String, Retries)>,
}

impl RetriesSection {
    /// The policy of `cluster`: its override, or the section's.
    pub fn for_cluster(&self, cluster: &str) -> &Retries {
        self.clusters
            .iter()
            .find(|(name, _)| name == cluster)
            .map_or(&self.default, |(_, retries)| retries)
    }
}

/// Reads and validates the section (`None` when the document has none).
pub(super) fn parse(value: Option<serde_json::Value>) -> Result<RetriesSection, ConfigError> {
    let path = "retries";
    let (base, overrides) = super::section_with_overrides::<RawRetries>(path, value)?;
    let default = base.validate(path)?;
    let clusters = overrides
        .into_iter()
        .map(|(name, raw)| {
            let retries = raw.validate(&format!("{path}.clusters.{name}"))?;
            Ok((name, retries))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(RetriesSection { default, clusters })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawRetries {
    enabled: bool,
    dry_run: bool,
    max_retries: u64,
    retry_on: Vec<String>,
    retriable_status_codes: Vec<u64>,
    budget: RawBudget,
    per_try_timeout: RawPerTryTimeout,
    routes: Vec<RawRoute>,
}

impl Default for RawRetries {
    fn default() -> Self {
        RawRetries {
            enabled: false,
            dry_run: false,
            max_retries: 2,
            // Failures where the request did not reach the application or the gateway said
            // the endpoint is unavailable: a retry elsewhere is likely to succeed.
            retry_on: vec![
                "gateway-error".into(),
                "reset".into(),
                "connect-failure".into(),
            ],
            retriable_status_codes: Vec::new(),
            budget: RawBudget::default(),
            per_try_timeout: RawPerTryTimeout::default(),
            routes: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawBudget {
    ratio: f64,
    min_per_second: f64,
    window: Millis,
}

impl Default for RawBudget {
    fn default() -> Self {
        // Linkerd's retry budget defaults (20% extra load over 10 s) with a smaller floor than
        // its 10 per second: enough to retry a lone failure at low traffic, too little to
        // matter to a failing destination.
        RawBudget {
            ratio: 0.2,
            min_per_second: 3.0,
            window: Millis::from_secs(10),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawPerTryTimeout {
    enabled: bool,
    quantile: f64,
    factor: f64,
    min: Millis,
    max: Millis,
    half_life: Millis,
}

impl Default for RawPerTryTimeout {
    fn default() -> Self {
        RawPerTryTimeout {
            enabled: true,
            quantile: 0.95,
            factor: 2.0,
            min: Millis(25),
            max: Millis::from_secs(2),
            half_life: Millis::from_secs(10),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawRoute {
    path_prefix: Option<String>,
    route_name: Option<String>,
    methods: Vec<String>,
}

impl RawRetries {
    fn validate(self, p: &str) -> Result<Retries, ConfigError> {
        let max_retries = in_range(&format!("{p}.maxRetries"), self.max_retries, 1, 10)? as u32;
        let retry_on = retry_on(p, &self.retry_on)?;
        let retriable_status_codes = status_codes(p, &self.retriable_status_codes, &retry_on)?;
        Ok(Retries {
            enabled: self.enabled,
            dry_run: self.dry_run,
            max_retries,
            retry_on,
            retriable_status_codes,
            budget: self.budget.validate(&format!("{p}.budget"))?,
            per_try_timeout: self
                .per_try_timeout
                .validate(&format!("{p}.perTryTimeout"))?,
            routes: routes(p, self.routes)?,
        })
    }
}

fn retry_on(p: &str, names: &[String]) -> Result<Vec<RetryCondition>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::new(
            &format!("{p}.retryOn"),
            "must list at least one condition",
        ));
    }
    let mut conditions = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let at = format!("{p}.retryOn[{i}]");
        let Some(condition) = RetryCondition::from_envoy_name(name) else {
            let known: Vec<&str> = RetryCondition::ALL.iter().map(|c| c.envoy_name()).collect();
            return Err(ConfigError::new(
                &at,
                format!("must be one of {} (got {name:?})", known.join(", ")),
            ));
        };
        if conditions.contains(&condition) {
            return Err(ConfigError::new(
                &at,
                format!("must not repeat a condition (got {name:?} twice)"),
            ));
        }
        conditions.push(condition);
    }
    Ok(conditions)
}

fn status_codes(
    p: &str,
    codes: &[u64],
    retry_on: &[RetryCondition],
) -> Result<Vec<u16>, ConfigError> {
    let path = format!("{p}.retriableStatusCodes");
    let wanted = retry_on.contains(&RetryCondition::RetriableStatusCodes);
    if wanted && codes.is_empty() {
        return Err(ConfigError::new(
            &path,
            "must list at least one code when retryOn has \"retriable-status-codes\"",
        ));
    }
    if !wanted && !codes.is_empty() {
        return Err(ConfigError::new(
            &path,
            "must be empty unless retryOn has \"retriable-status-codes\"",
        ));
    }
    if codes.len() > MAX_STATUS_CODES {
        return Err(ConfigError::new(
            &path,
            format!("must list at most {MAX_STATUS_CODES} codes"),
        ));
    }
    let mut out = Vec::with_capacity(codes.len());
    for (i, &code) in codes.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let code = in_range(&at, code, 100, 599)? as u16;
        if out.contains(&code) {
            return Err(ConfigError::new(
                &at,
                format!("must not repeat a code (got {code} twice)"),
            ));
        }
        out.push(code);
    }
    Ok(out)
}

impl RawBudget {
    fn validate(self, p: &str) -> Result<BudgetPolicy, ConfigError> {
        if !(self.ratio > 0.0 && self.ratio <= 1.0) {
            return Err(ConfigError::new(
                &format!("{p}.ratio"),
                format!("must be greater than 0 and at most 1 (got {})", self.ratio),
            ));
        }
        Ok(BudgetPolicy {
            ratio: self.ratio,
            min_per_second: in_range(
                &format!("{p}.minPerSecond"),
                self.min_per_second,
                0.0,
                10_000.0,
            )?,
            window: in_range(
                &format!("{p}.window"),
                self.window,
                Millis::from_secs(1),
                Millis::from_secs(300),
            )?,
        })
    }
}

impl RawPerTryTimeout {
    /// Fields are checked even when off, so that turning it on cannot reveal an error.
    fn validate(self, p: &str) -> Result<Option<PerTryTimeout>, ConfigError> {
        let quantile = in_range(&format!("{p}.quantile"), self.quantile, 0.5, 0.999)?;
        let factor = in_range(&format!("{p}.factor"), self.factor, 1.0, 10.0)?;
        // Envoy reads a per-try timeout of 0 as "none", so the floor is 1 ms.
        let min = in_range(
            &format!("{p}.min"),
            self.min,
            Millis(1),
            Millis::from_secs(300),
        )?;
        let max = in_range(
            &format!("{p}.max"),
            self.max,
            Millis(1),
            Millis::from_secs(300),
        )?;
        if max < min {
            return Err(ConfigError::new(
                &format!("{p}.max"),
                format!("must be at least min ({min}) (got {max})"),
            ));
        }
        let half_life = in_range(
            &format!("{p}.halfLife"),
            self.half_life,
            Millis::from_secs(1),
            Millis::from_secs(600),
        )?;
        Ok(self.enabled.then_some(PerTryTimeout {
            quantile,
            factor,
            min,
            max,
            half_life,
        }))
    }
}

/// An HTTP method as written on the wire: an uppercase token.
fn method(at: &str, name: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "-_".contains(c));
    if !ok {
        return Err(ConfigError::new(
            at,
            format!("must be an uppercase HTTP method such as \"POST\" (got {name:?})"),
        ));
    }
    Ok(name.to_string())
}

fn routes(p: &str, raw: Vec<RawRoute>) -> Result<Vec<RouteRule>, ConfigError> {
    if raw.len() > MAX_ROUTES {
        return Err(ConfigError::new(
            &format!("{p}.routes"),
            format!("must list at most {MAX_ROUTES} rules (got {})", raw.len()),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, route)| route.validate(&format!("{p}.routes[{i}]")))
        .collect()
}

impl RawRoute {
    fn validate(self, at: &str) -> Result<RouteRule, ConfigError> {
        let matcher = match (self.path_prefix, self.route_name) {
            (Some(prefix), None) => RouteMatch::PathPrefix(super::raw::request_path(
                &format!("{at}.pathPrefix"),
                prefix,
            )?),
            (None, Some(name)) => {
                let ok = !name.is_empty()
                    && name.len() <= MAX_ROUTE_TEXT
                    && name.chars().all(|c| c.is_ascii_graphic());
                if !ok {
                    return Err(ConfigError::new(
                        &format!("{at}.routeName"),
                        format!(
                            "must be a non-empty route name of printable characters without spaces, at most {MAX_ROUTE_TEXT} long (got {name:?})"
                        ),
                    ));
                }
                RouteMatch::RouteName(name)
            }
            _ => {
                return Err(ConfigError::new(
                    at,
                    "must set exactly one of pathPrefix and routeName",
                ))
            }
        };
        let path = format!("{at}.methods");
        if self.methods.is_empty() || self.methods.len() > MAX_METHODS {
            return Err(ConfigError::new(
                &path,
                format!("must list between 1 and {MAX_METHODS} methods"),
            ));
        }
        let mut methods: Vec<String> = Vec::with_capacity(self.methods.len());
        for (i, name) in self.methods.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let name = method(&at, name)?;
            if methods.contains(&name) {
                return Err(ConfigError::new(
                    &at,
                    format!("must not repeat a method (got {name:?} twice)"),
                ));
            }
            methods.push(name);
        }
        Ok(RouteRule { matcher, methods })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn err(value: serde_json::Value) -> ConfigError {
        parse(Some(value)).unwrap_err()
    }

    #[test]
    fn absent_section_gets_safe_defaults() {
        let s = parse(None).unwrap();
        assert_eq!(s, parse(Some(json!({}))).unwrap());
        assert!(s.clusters.is_empty());
        let d = &s.default;
        assert!(!d.enabled && !d.dry_run);
        assert_eq!(d.max_retries, 2);
        assert_eq!(
            d.retry_on,
            vec![
                RetryCondition::GatewayError,
                RetryCondition::Reset,
                RetryCondition::ConnectFailure
            ]
        );
        assert!(d.retriable_status_codes.is_empty());
        assert_eq!(
            d.budget,
            BudgetPolicy {
                ratio: 0.2,
                min_per_second: 3.0,
                window: Millis(10_000)
            }
        );
        assert_eq!(
            d.per_try_timeout,
            Some(PerTryTimeout {
                quantile: 0.95,
                factor: 2.0,
                min: Millis(25),
                max: Millis(2_000),
                half_life: Millis(10_000)
            })
        );
        assert!(d.routes.is_empty());
        assert_eq!(d.plan("GET", "/", None), Eligibility::Disabled);
        assert_eq!(d.retry_on_header(), "gateway-error,reset,connect-failure");
        assert_eq!(d.status_codes_header(), None);
    }

    #[test]
    fn full_document_is_read_with_overrides() {
        let s = parse(Some(json!({
            "enabled": true,
            "dryRun": true,
            "maxRetries": 3,
            "retryOn": ["5xx", "refused-stream", "retriable-status-codes"],
            "retriableStatusCodes": [409, 429],
            "budget": {"ratio": 0.1, "minPerSecond": 0, "window": "30s"},
            "perTryTimeout": {"enabled": true, "quantile": 0.99, "factor": 3,
                              "min": "50ms", "max": "5s", "halfLife": "1m"},
            "routes": [
                {"pathPrefix": "/orders", "methods": ["POST"]},
                {"routeName": "payments", "methods": ["POST", "PATCH"]}
            ],
            "clusters": {
                "outbound|80||pay.svc": {"maxRetries": 1, "perTryTimeout": {"enabled": false},
                                         "routes": []},
                "outbound|80||off.svc": {"enabled": false}
            }
        })))
        .unwrap();
        let d = &s.default;
        assert!(d.enabled && d.dry_run);
        assert_eq!(d.max_retries, 3);
        assert_eq!(
            d.retry_on_header(),
            "5xx,refused-stream,retriable-status-codes"
        );
        assert_eq!(d.retriable_status_codes, vec![409, 429]);
        assert_eq!(d.status_codes_header().as_deref(), Some("409,429"));
        assert_eq!(
            d.budget,
            BudgetPolicy {
                ratio: 0.1,
                min_per_second: 0.0,
                window: Millis(30_000)
            }
        );
        assert_eq!(
            d.per_try_timeout,
            Some(PerTryTimeout {
                quantile: 0.99,
                factor: 3.0,
                min: Millis(50),
                max: Millis(5_000),
                half_life: Millis(60_000)
            })
        );
        assert_eq!(
            d.routes,
            vec![
                RouteRule {
                    matcher: RouteMatch::PathPrefix("/orders".into()),
                    methods: vec!["POST".into()]
                },
                RouteRule {
                    matcher: RouteMatch::RouteName("payments".into()),
                    methods: vec!["POST".into(), "PATCH".into()]
                }
            ]
        );
        assert_eq!(d.plan("POST", "/orders/1", None), Eligibility::Eligible);
        assert_eq!(d.plan("POST", "/cart", None), Eligibility::NonIdempotent);

        let pay = s.for_cluster("outbound|80||pay.svc");
        assert_eq!(pay.max_retries, 1);
        assert_eq!(pay.per_try_timeout, None);
        assert!(pay.routes.is_empty());
        // What the override omits keeps the section's value.
        assert!(pay.enabled && pay.dry_run);
        assert_eq!(pay.retriable_status_codes, vec![409, 429]);
        assert_eq!(pay.budget, d.budget);
        assert_eq!(
            pay.plan("POST", "/orders/1", None),
            Eligibility::NonIdempotent
        );
        let off = s.for_cluster("outbound|80||off.svc");
        assert_eq!(off.plan("GET", "/", None), Eligibility::Disabled);
        assert_eq!(s.for_cluster("outbound|80||other.svc"), d);
    }

    #[test]
    fn invalid_values_are_rejected_with_their_path() {
        let cases = [
            (json!({"maxRetries": 0}), "retries.maxRetries"),
            (json!({"maxRetries": 11}), "retries.maxRetries"),
            (json!({"retryOn": []}), "retries.retryOn"),
            (json!({"retryOn": ["reset", "5XX"]}), "retries.retryOn[1]"),
            (json!({"retryOn": ["reset", "reset"]}), "retries.retryOn[1]"),
            (json!({"retryOn": ["retriable-4xx"]}), "retries.retryOn[0]"),
            (
                json!({"retryOn": ["retriable-status-codes"]}),
                "retries.retriableStatusCodes",
            ),
            (
                json!({"retriableStatusCodes": [503]}),
                "retries.retriableStatusCodes",
            ),
            (
                json!({"retryOn": ["retriable-status-codes"], "retriableStatusCodes": [503, 99]}),
                "retries.retriableStatusCodes[1]",
            ),
            (
                json!({"retryOn": ["retriable-status-codes"], "retriableStatusCodes": [600]}),
                "retries.retriableStatusCodes[0]",
            ),
            (
                json!({"retryOn": ["retriable-status-codes"], "retriableStatusCodes": [503, 503]}),
                "retries.retriableStatusCodes[1]",
            ),
            (
                json!({"retryOn": ["retriable-status-codes"],
                       "retriableStatusCodes": (100..140).collect::<Vec<u32>>()}),
                "retries.retriableStatusCodes",
            ),
            (json!({"budget": {"ratio": 0}}), "retries.budget.ratio"),
            (json!({"budget": {"ratio": 1.5}}), "retries.budget.ratio"),
            (json!({"budget": {"ratio": -0.1}}), "retries.budget.ratio"),
            (
                json!({"budget": {"minPerSecond": -1}}),
                "retries.budget.minPerSecond",
            ),
            (
                json!({"budget": {"minPerSecond": 10001}}),
                "retries.budget.minPerSecond",
            ),
            (
                json!({"budget": {"window": "999ms"}}),
                "retries.budget.window",
            ),
            (json!({"budget": {"window": "6m"}}), "retries.budget.window"),
            (
                json!({"perTryTimeout": {"quantile": 0.4}}),
                "retries.perTryTimeout.quantile",
            ),
            (
                json!({"perTryTimeout": {"quantile": 1}}),
                "retries.perTryTimeout.quantile",
            ),
            (
                json!({"perTryTimeout": {"factor": 0.5}}),
                "retries.perTryTimeout.factor",
            ),
            (
                json!({"perTryTimeout": {"factor": 11}}),
                "retries.perTryTimeout.factor",
            ),
            (
                json!({"perTryTimeout": {"min": "0ms"}}),
                "retries.perTryTimeout.min",
            ),
            (
                json!({"perTryTimeout": {"max": "6m"}}),
                "retries.perTryTimeout.max",
            ),
            (
                json!({"perTryTimeout": {"min": "3s", "max": "2s"}}),
                "retries.perTryTimeout.max",
            ),
            (
                json!({"perTryTimeout": {"enabled": false, "halfLife": "0s"}}),
                "retries.perTryTimeout.halfLife",
            ),
            (
                json!({"routes": [{"methods": ["POST"]}]}),
                "retries.routes[0]",
            ),
            (
                json!({"routes": [{"pathPrefix": "/a", "routeName": "b", "methods": ["POST"]}]}),
                "retries.routes[0]",
            ),
            (
                json!({"routes": [{"pathPrefix": "/a", "methods": ["POST"]},
                                  {"pathPrefix": "orders", "methods": ["POST"]}]}),
                "retries.routes[1].pathPrefix",
            ),
            (
                json!({"routes": [{"routeName": "a b", "methods": ["POST"]}]}),
                "retries.routes[0].routeName",
            ),
            (
                json!({"routes": [{"routeName": "", "methods": ["POST"]}]}),
                "retries.routes[0].routeName",
            ),
            (
                json!({"routes": [{"pathPrefix": "/a", "methods": []}]}),
                "retries.routes[0].methods",
            ),
            (
                json!({"routes": [{"pathPrefix": "/a", "methods": ["POST", "post"]}]}),
                "retries.routes[0].methods[1]",
            ),
            (
                json!({"routes": [{"pathPrefix": "/a", "methods": ["POST", "POST"]}]}),
                "retries.routes[0].methods[1]",
            ),
            (
                json!({"routes": [{"pathPrefix": "/a", "methods": [""]}]}),
                "retries.routes[0].methods[0]",
            ),
            (
                json!({"routes": (0..65).map(|i| json!({"pathPrefix": format!("/{i}"),
                                                        "methods": ["POST"]}))
                                        .collect::<Vec<_>>()}),
                "retries.routes",
            ),
            (
                json!({"clusters": {"c1": {"budget": {"ratio": 2}}}}),
                "retries.clusters.c1.budget.ratio",
            ),
            (
                json!({"clusters": {"c1": {"routes": [{"methods": ["POST"]}]}}}),
                "retries.clusters.c1.routes[0]",
            ),
        ];
        for (value, path) in cases {
            let text = value.to_string();
            let e = err(value);
            assert_eq!(e.path, path, "{text}: {e}");
            assert!(e.rule.contains("must"), "{text}: {e}");
        }
    }

    #[test]
    fn wrong_shapes_are_named_by_serde() {
        let cases = [
            (json!({"maxRetries": -1}), "retries.maxRetries"),
            (json!({"maxRetries": 1.5}), "retries.maxRetries"),
            (json!({"retryOne": []}), "retries.retryOne"),
            (
                json!({"retriableStatusCodes": [-5]}),
                "retries.retriableStatusCodes[0]",
            ),
            (json!({"budget": {"ratoi": 0.1}}), "retries.budget.ratoi"),
            (
                json!({"budget": {"window": "ten seconds"}}),
                "retries.budget.window",
            ),
            (
                json!({"routes": [{"pathPrefix": "/a", "methods": ["POST"], "host": "x"}]}),
                "retries.routes[0].host",
            ),
            (
                json!({"clusters": {"c1": {"dryrun": true}}}),
                "retries.clusters.c1.dryrun",
            ),
            (
                json!({"clusters": {"c1": {"clusters": {}}}}),
                "retries.clusters.c1.clusters",
            ),
            (json!({"clusters": []}), "retries.clusters"),
            (json!([]), "retries"),
        ];
        for (value, path) in cases {
            let text = value.to_string();
            let e = err(value);
            assert_eq!(e.path, path, "{text}: {e}");
        }
    }

    #[test]
    fn limits_are_accepted_at_their_bounds() {
        let s = parse(Some(json!({
            "maxRetries": 10,
            "retryOn": ["5xx", "gateway-error", "reset", "connect-failure", "refused-stream",
                        "retriable-status-codes"],
            "retriableStatusCodes": [100, 599],
            "budget": {"ratio": 1, "minPerSecond": 10000, "window": "5m"},
            "perTryTimeout": {"quantile": 0.999, "factor": 10, "min": "1ms", "max": "1ms",
                              "halfLife": "1s"},
            "routes": (0..64).map(|i| json!({"routeName": format!("r{i}"),
                                             "methods": ["POST", "PATCH", "X-CUSTOM_1"]}))
                             .collect::<Vec<_>>()
        })))
        .unwrap();
        assert_eq!(s.default.max_retries, 10);
        assert_eq!(s.default.retry_on, RetryCondition::ALL.to_vec());
        assert_eq!(s.default.routes.len(), 64);
        assert_eq!(s.default.budget.window, Millis(300_000));
    }
}
