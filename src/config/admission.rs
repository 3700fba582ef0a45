//! The `admission` section: inbound admission control in front of the local service (an
//! adaptive concurrency limit, priority classes, an optional static rate limit). There is one
//! local service per sidecar, so there are no per-cluster overrides.
//!
//! ```json
//! "admission": {
//!   "enabled": true, "dryRun": false, "controller": "gradient",
//!   "initialLimit": 20, "minLimit": 4, "maxLimit": 1000, "maxConcurrency": 500,
//!   "window": "250ms", "smoothing": 0.2, "tolerance": 1.0, "headroom": 0.5, "noLoadWindows": 60,
//!   "aimd": {"backoff": 0.9, "target": "200ms"},
//!   "priority": {"header": "x-reflex-priority", "defaultShare": 0.9, "sheddableShare": 0.75,
//!                "routes": [{"pathPrefix": "/healthz", "priority": "critical"}]},
//!   "reject": {"status": 503, "retryAfter": "1s"},
//!   "rateLimit": {"enabled": true, "requestsPerSecond": 500, "burst": 1000}
//! }
//! ```
//!
//! Defaults are safe: admission is off until enabled; once on, the limit starts at 20 and
//! adapts (see `core::concurrency_limit`), critical requests may use the whole limit, default
//! ones 90% and sheddable ones 75% (see `core::priority`).

use super::raw::{header_name, in_range, request_path};
use super::{ConfigError, Millis};
use crate::core::concurrency_limit::{Controller, LimiterPolicy};
use crate::core::priority::{Priority, PriorityRoute, PriorityShares};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Most priority route rules.
const MAX_ROUTES: usize = 64;
/// Bound of every limit setting.
const MAX_LIMIT: u64 = 100_000;

/// How a request is classified and what share of the limit each class gets.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityRules {
    /// Request header naming the class (`critical`, `default`, `sheddable`).
    pub header: String,
    pub shares: PriorityShares,
    /// Classes by path prefix (longest match), used when the header names no class.
    pub routes: Vec<PriorityRoute>,
}

impl PriorityRules {
    /// The class of a request (see `core::priority::classify`).
    pub fn classify(&self, header: Option<&str>, path: &str) -> Priority {
        crate::core::priority::classify(header, path, &self.routes)
    }
}

/// The local reply to a refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// 429 or 503.
    pub status: u16,
    /// `0s` means no `retry-after` header.
    pub retry_after: Millis,
}

impl Reject {
    /// The `retry-after` value: whole seconds, rounded up (`None` for `0s`).
    pub fn retry_after_header(&self) -> Option<String> {
        (self.retry_after.0 > 0).then(|| self.retry_after.0.div_ceil(1000).to_string())
    }
}

/// A static token bucket in front of the adaptive limit (a guard rail against floods of
/// cheap requests that a concurrency limit alone lets through at a high rate).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: f64,
}

/// The validated `admission` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub enabled: bool,
    /// Decide and count, but refuse nothing (refused requests go through and are counted in
    /// flight with `ConcurrencyLimiter::admit_over_limit`).
    pub dry_run: bool,
    /// `maxConcurrency` is `limiter.hard_max`.
    pub limiter: LimiterPolicy,
    pub priority: PriorityRules,
    pub reject: Reject,
    /// `None` when off.
    pub rate_limit: Option<RateLimit>,
}

pub(super) fn parse(value: Option<Value>) -> Result<Admission, ConfigError> {
    let path = "admission";
    let section = match value {
        None => Value::Object(Map::new()),
        Some(Value::Object(map)) => Value::Object(map),
        Some(_) => return Err(ConfigError::new(path, "must be an object")),
    };
    let raw: RawAdmission = super::from_value(path, section)?;
    raw.validate(path)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawAdmission {
    enabled: bool,
    dry_run: bool,
    controller: String,
    initial_limit: u64,
    min_limit: u64,
    max_limit: u64,
    window: Millis,
    smoothing: f64,
    tolerance: f64,
    headroom: f64,
    no_load_windows: u64,
    aimd: RawAimd,
    priority: RawPriority,
    reject: RawReject,
    rate_limit: RawRateLimit,
    max_concurrency: Option<u64>,
}

impl Default for RawAdmission {
    /// The controller's defaults are [`LimiterPolicy::default`]'s, written once there.
    fn default() -> Self {
        let p = LimiterPolicy::default();
        RawAdmission {
            enabled: false,
            dry_run: false,
            controller: match p.controller {
                Controller::Gradient => "gradient",
                Controller::Aimd => "aimd",
            }
            .into(),
            initial_limit: u64::from(p.initial_limit),
            min_limit: u64::from(p.min_limit),
            max_limit: u64::from(p.max_limit),
            window: p.window,
            smoothing: p.smoothing,
            tolerance: p.tolerance,
            headroom: p.headroom,
            no_load_windows: u64::from(p.no_load_windows),
            aimd: RawAimd::default(),
            priority: RawPriority::default(),
            reject: RawReject::default(),
            rate_limit: RawRateLimit::default(),
            max_concurrency: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawAimd {
    backoff: f64,
    target: Option<Millis>,
}

impl Default for RawAimd {
    fn default() -> Self {
        let p = LimiterPolicy::default();
        RawAimd {
            backoff: p.aimd_backoff,
            target: p.aimd_target,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawPriority {
    header: String,
    critical_share: f64,
    default_share: f64,
    sheddable_share: f64,
    routes: Vec<RawRoute>,
}

impl Default for RawPriority {
    fn default() -> Self {
        let shares = PriorityShares::default();
        RawPriority {
            header: "x-reflex-priority".into(),
            critical_share: shares.critical,
            default_share: shares.default,
            sheddable_share: shares.sheddable,
            routes: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute {
    path_prefix: String,
    priority: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawReject {
    status: u64,
    retry_after: Millis,
}

impl Default for RawReject {
    fn default() -> Self {
        RawReject {
            status: 503,
            retry_after: Millis::from_secs(1),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawRateLimit {
    enabled: bool,
    requests_per_second: Option<f64>,
    burst: Option<f64>,
}

/// `low < value <= high`.
fn above(path: &str, value: f64, low: f64, high: f64) -> Result<f64, ConfigError> {
    if value > low && value <= high {
        Ok(value)
    } else {
        Err(ConfigError::new(
            path,
            format!("must be greater than {low} and at most {high} (got {value})"),
        ))
    }
}

fn at_least(path: &str, value: u64, other: &str, min: u64) -> Result<u64, ConfigError> {
    if value >= min {
        Ok(value)
    } else {
        Err(ConfigError::new(
            path,
            format!("must be at least {other} ({min}) (got {value})"),
        ))
    }
}

fn priority(path: &str, name: &str) -> Result<Priority, ConfigError> {
    // Exact lowercase names in configuration (headers are lenient, documents need not be).
    [Priority::Critical, Priority::Default, Priority::Sheddable]
        .into_iter()
        .find(|p| p.as_str() == name)
        .ok_or_else(|| {
            ConfigError::new(
                path,
                format!("must be \"critical\", \"default\" or \"sheddable\" (got {name:?})"),
            )
        })
}

impl RawAdmission {
    fn validate(self, p: &str) -> Result<Admission, ConfigError> {
        let controller = match self.controller.as_str() {
            "gradient" => Controller::Gradient,
            "aimd" => Controller::Aimd,
            other => {
                return Err(ConfigError::new(
                    &format!("{p}.controller"),
                    format!("must be \"gradient\" or \"aimd\" (got {other:?})"),
                ))
            }
        };
        let min_limit = in_range(&format!("{p}.minLimit"), self.min_limit, 1, MAX_LIMIT)?;
        let initial_limit = in_range(
            &format!("{p}.initialLimit"),
            self.initial_limit,
            1,
            MAX_LIMIT,
        )?;
        let initial_limit = at_least(
            &format!("{p}.initialLimit"),
            initial_limit,
            "minLimit",
            min_limit,
        )?;
        let max_limit = in_range(&format!("{p}.maxLimit"), self.max_limit, 1, MAX_LIMIT)?;
        let max_limit = at_least(&format!("{p}.maxLimit"), max_limit, "minLimit", min_limit)?;
        let max_limit = at_least(
            &format!("{p}.maxLimit"),
            max_limit,
            "initialLimit",
            initial_limit,
        )?;
        let hard_max = match self.max_concurrency {
            None => None,
            Some(v) => {
                let at = format!("{p}.maxConcurrency");
                let v = in_range(&at, v, 1, 1_000_000)?;
                Some(at_least(&at, v, "minLimit", min_limit)? as u32)
            }
        };
        let aimd_target = match self.aimd.target {
            None => None,
            Some(t) => Some(in_range(
                &format!("{p}.aimd.target"),
                t,
                Millis(1),
                Millis::from_secs(60),
            )?),
        };
        let backoff = self.aimd.backoff;
        if !(0.5..1.0).contains(&backoff) {
            return Err(ConfigError::new(
                &format!("{p}.aimd.backoff"),
                format!("must be at least 0.5 and less than 1 (got {backoff})"),
            ));
        }
        let limiter = LimiterPolicy {
            controller,
            initial_limit: initial_limit as u32,
            min_limit: min_limit as u32,
            max_limit: max_limit as u32,
            window: in_range(
                &format!("{p}.window"),
                self.window,
                Millis(50),
                Millis::from_secs(60),
            )?,
            smoothing: above(&format!("{p}.smoothing"), self.smoothing, 0.0, 1.0)?,
            tolerance: in_range(&format!("{p}.tolerance"), self.tolerance, 1.0, 10.0)?,
            headroom: in_range(&format!("{p}.headroom"), self.headroom, 0.0, 4.0)?,
            no_load_windows: in_range(
                &format!("{p}.noLoadWindows"),
                self.no_load_windows,
                1,
                crate::core::concurrency_limit::MAX_NO_LOAD_WINDOWS as u64,
            )? as u32,
            aimd_backoff: backoff,
            aimd_target,
            hard_max,
        };
        Ok(Admission {
            enabled: self.enabled,
            dry_run: self.dry_run,
            limiter,
            priority: self.priority.validate(&format!("{p}.priority"))?,
            reject: self.reject.validate(&format!("{p}.reject"))?,
            rate_limit: self.rate_limit.validate(&format!("{p}.rateLimit"))?,
        })
    }
}

impl RawPriority {
    fn validate(self, p: &str) -> Result<PriorityRules, ConfigError> {
        let header = header_name(&format!("{p}.header"), self.header)?;
        let critical = in_range(&format!("{p}.criticalShare"), self.critical_share, 1.0, 4.0)?;
        let default = above(&format!("{p}.defaultShare"), self.default_share, 0.0, 1.0)?;
        let sheddable = above(
            &format!("{p}.sheddableShare"),
            self.sheddable_share,
            0.0,
            default,
        )
        .map_err(|_| {
            ConfigError::new(
                &format!("{p}.sheddableShare"),
                format!(
                    "must be greater than 0 and at most defaultShare ({default}) (got {})",
                    self.sheddable_share
                ),
            )
        })?;
        if self.routes.len() > MAX_ROUTES {
            return Err(ConfigError::new(
                &format!("{p}.routes"),
                format!(
                    "must have at most {MAX_ROUTES} rules (got {})",
                    self.routes.len()
                ),
            ));
        }
        let routes = self
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(PriorityRoute {
                    path_prefix: request_path(
                        &format!("{p}.routes[{i}].pathPrefix"),
                        r.path_prefix,
                    )?,
                    priority: priority(&format!("{p}.routes[{i}].priority"), &r.priority)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(PriorityRules {
            header,
            shares: PriorityShares {
                critical,
                default,
                sheddable,
            },
            routes,
        })
    }
}

impl RawReject {
    fn validate(self, p: &str) -> Result<Reject, ConfigError> {
        if self.status != 429 && self.status != 503 {
            return Err(ConfigError::new(
                &format!("{p}.status"),
                format!("must be 429 or 503 (got {})", self.status),
            ));
        }
        Ok(Reject {
            status: self.status as u16,
            retry_after: in_range(
                &format!("{p}.retryAfter"),
                self.retry_after,
                Millis(0),
                Millis::from_secs(3600),
            )?,
        })
    }
}

impl RawRateLimit {
    fn validate(self, p: &str) -> Result<Option<RateLimit>, ConfigError> {
        let rps_at = format!("{p}.requestsPerSecond");
        let rps = match self.requests_per_second {
            Some(v) => Some(above(&rps_at, v, 0.0, 1e6)?),
            None if self.enabled => {
                return Err(ConfigError::new(
                    &rps_at,
                    "must be set when the rate limit is enabled",
                ))
            }
            None => None,
        };
        let burst = match self.burst {
            Some(b) => Some(in_range(&format!("{p}.burst"), b, 1.0, 1e7)?),
            None => None,
        };
        Ok(match (self.enabled, rps) {
            (true, Some(rps)) => Some(RateLimit {
                requests_per_second: rps,
                // One second's worth by default, and never less than one request.
                burst: burst.unwrap_or(rps.max(1.0)),
            }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn err(value: Value) -> ConfigError {
        let e = parse(Some(value.clone())).unwrap_err();
        assert!(
            e.rule.contains("must") || e.path.contains('.'),
            "{value}: {e}"
        );
        e
    }

    #[test]
    fn absent_section_gets_safe_defaults() {
        let a = parse(None).unwrap();
        assert_eq!(parse(Some(json!({}))).unwrap(), a);
        assert!(!a.enabled && !a.dry_run);
        assert_eq!(a.limiter, LimiterPolicy::default());
        assert_eq!(a.limiter.controller, Controller::Gradient);
        assert_eq!(
            (
                a.limiter.initial_limit,
                a.limiter.min_limit,
                a.limiter.max_limit
            ),
            (20, 4, 1000)
        );
        assert_eq!(a.limiter.window, Millis(250));
        assert_eq!((a.limiter.smoothing, a.limiter.tolerance), (0.2, 1.0));
        assert_eq!(a.limiter.no_load_windows, 60);
        assert_eq!((a.limiter.aimd_backoff, a.limiter.aimd_target), (0.9, None));
        assert_eq!(a.limiter.hard_max, None);
        assert_eq!(a.priority.header, "x-reflex-priority");
        assert_eq!(a.priority.shares, PriorityShares::default());
        assert!(a.priority.routes.is_empty());
        assert_eq!(
            a.reject,
            Reject {
                status: 503,
                retry_after: Millis(1_000)
            }
        );
        assert_eq!(a.reject.retry_after_header().as_deref(), Some("1"));
        assert_eq!(a.rate_limit, None);
    }

    #[test]
    fn full_document_is_read() {
        let a = parse(Some(json!({
            "enabled": true, "dryRun": true, "controller": "aimd",
            "initialLimit": 50, "minLimit": 10, "maxLimit": 400, "maxConcurrency": 300,
            "window": "1s", "smoothing": 1, "tolerance": 2, "noLoadWindows": 64,
            "aimd": {"backoff": 0.5, "target": "250ms"},
            "priority": {"header": "x-prio", "defaultShare": 1, "sheddableShare": 0.5,
                         "routes": [{"pathPrefix": "/batch", "priority": "sheddable"},
                                    {"pathPrefix": "/pay", "priority": "critical"}]},
            "reject": {"status": 429, "retryAfter": "1500ms"},
            "rateLimit": {"enabled": true, "requestsPerSecond": 250.5, "burst": 10}
        })))
        .unwrap();
        assert!(a.enabled && a.dry_run);
        assert_eq!(
            a.limiter,
            LimiterPolicy {
                controller: Controller::Aimd,
                initial_limit: 50,
                min_limit: 10,
                max_limit: 400,
                window: Millis(1_000),
                smoothing: 1.0,
                tolerance: 2.0,
                no_load_windows: 64,
                aimd_backoff: 0.5,
                aimd_target: Some(Millis(250)),
                hard_max: Some(300),
                headroom: 0.5,
            }
        );
        assert_eq!(a.priority.header, "x-prio");
        assert_eq!(
            a.priority.shares,
            PriorityShares {
                critical: 2.0,
                default: 1.0,
                sheddable: 0.5
            }
        );
        assert_eq!(a.priority.classify(None, "/pay/now"), Priority::Critical);
        assert_eq!(a.priority.classify(None, "/batch/x"), Priority::Sheddable);
        assert_eq!(
            a.priority.classify(Some("default"), "/batch/x"),
            Priority::Default
        );
        assert_eq!(a.reject.status, 429);
        assert_eq!(a.reject.retry_after_header().as_deref(), Some("2"));
        assert_eq!(
            a.rate_limit,
            Some(RateLimit {
                requests_per_second: 250.5,
                burst: 10.0
            })
        );
    }

    #[test]
    fn rate_limit_burst_defaults_to_one_second_and_off_means_none() {
        let a = parse(Some(
            json!({"rateLimit": {"enabled": true, "requestsPerSecond": 40}}),
        ))
        .unwrap();
        assert_eq!(
            a.rate_limit,
            Some(RateLimit {
                requests_per_second: 40.0,
                burst: 40.0
            })
        );
        let a = parse(Some(
            json!({"rateLimit": {"enabled": true, "requestsPerSecond": 0.2}}),
        ))
        .unwrap();
        assert_eq!(a.rate_limit.map(|r| r.burst), Some(1.0));
        let a = parse(Some(json!({"rateLimit": {"requestsPerSecond": 40}}))).unwrap();
        assert_eq!(a.rate_limit, None);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_zero_omits_it() {
        let r = |ms| Reject {
            status: 503,
            retry_after: Millis(ms),
        };
        assert_eq!(r(0).retry_after_header(), None);
        assert_eq!(r(1).retry_after_header().as_deref(), Some("1"));
        assert_eq!(r(1_000).retry_after_header().as_deref(), Some("1"));
        assert_eq!(r(1_001).retry_after_header().as_deref(), Some("2"));
        assert_eq!(r(3_600_000).retry_after_header().as_deref(), Some("3600"));
        let a = parse(Some(json!({"reject": {"retryAfter": "0s"}}))).unwrap();
        assert_eq!(a.reject.retry_after_header(), None);
    }

    #[test]
    fn limits_at_their_bounds_are_accepted() {
        let a = parse(Some(
            json!({"initialLimit": 1, "minLimit": 1, "maxLimit": 1,
            "maxConcurrency": 1, "window": "50ms", "noLoadWindows": 1, "tolerance": 10}),
        ))
        .unwrap();
        assert_eq!(a.limiter.hard_max, Some(1));
        let a = parse(Some(json!({"initialLimit": 100000, "maxLimit": 100000,
            "maxConcurrency": 1000000, "window": "60s"})))
        .unwrap();
        assert_eq!(a.limiter.max_limit, 100_000);
    }

    #[test]
    fn invalid_values_are_rejected_with_their_path() {
        let cases = [
            (json!({"controller": "vegas"}), "admission.controller"),
            (json!({"controller": "Gradient"}), "admission.controller"),
            (json!({"initialLimit": 0}), "admission.initialLimit"),
            (
                json!({"initialLimit": 100001, "maxLimit": 100000}),
                "admission.initialLimit",
            ),
            (json!({"minLimit": 0}), "admission.minLimit"),
            (json!({"minLimit": 100001}), "admission.minLimit"),
            (json!({"minLimit": 30}), "admission.initialLimit"),
            (json!({"maxLimit": 0}), "admission.maxLimit"),
            (json!({"maxLimit": 100001}), "admission.maxLimit"),
            (json!({"maxLimit": 10}), "admission.maxLimit"),
            (
                json!({"minLimit": 8, "initialLimit": 8, "maxLimit": 5}),
                "admission.maxLimit",
            ),
            (json!({"maxConcurrency": 0}), "admission.maxConcurrency"),
            (
                json!({"maxConcurrency": 1000001}),
                "admission.maxConcurrency",
            ),
            (json!({"maxConcurrency": 3}), "admission.maxConcurrency"),
            (json!({"window": "49ms"}), "admission.window"),
            (json!({"window": "61s"}), "admission.window"),
            (json!({"window": "fast"}), "admission.window"),
            (json!({"smoothing": 0}), "admission.smoothing"),
            (json!({"smoothing": 1.01}), "admission.smoothing"),
            (json!({"tolerance": 0.99}), "admission.tolerance"),
            (json!({"tolerance": 10.5}), "admission.tolerance"),
            (json!({"noLoadWindows": 0}), "admission.noLoadWindows"),
            (json!({"noLoadWindows": 65}), "admission.noLoadWindows"),
            (json!({"aimd": {"backoff": 0.49}}), "admission.aimd.backoff"),
            (json!({"aimd": {"backoff": 1}}), "admission.aimd.backoff"),
            (json!({"aimd": {"target": "0ms"}}), "admission.aimd.target"),
            (json!({"aimd": {"target": "2m"}}), "admission.aimd.target"),
            (json!({"aimd": {"bakoff": 0.8}}), "admission.aimd.bakoff"),
            (
                json!({"priority": {"header": "X-Prio"}}),
                "admission.priority.header",
            ),
            (
                json!({"priority": {"header": ""}}),
                "admission.priority.header",
            ),
            (
                json!({"priority": {"defaultShare": 0}}),
                "admission.priority.defaultShare",
            ),
            (
                json!({"priority": {"defaultShare": 1.1}}),
                "admission.priority.defaultShare",
            ),
            (
                json!({"priority": {"sheddableShare": 0}}),
                "admission.priority.sheddableShare",
            ),
            (
                json!({"priority": {"defaultShare": 0.5, "sheddableShare": 0.6}}),
                "admission.priority.sheddableShare",
            ),
            (
                json!({"priority": {"routes": [{"pathPrefix": "api", "priority": "critical"}]}}),
                "admission.priority.routes[0].pathPrefix",
            ),
            (
                json!({"priority": {"routes": [{"pathPrefix": "/a", "priority": "critical"},
                                               {"pathPrefix": "/b", "priority": "urgent"}]}}),
                "admission.priority.routes[1].priority",
            ),
            (
                json!({"priority": {"routes": [{"pathPrefix": "/a"}]}}),
                "admission.priority.routes[0]",
            ),
            (
                json!({"reject": {"status": 500}}),
                "admission.reject.status",
            ),
            (
                json!({"reject": {"status": 200}}),
                "admission.reject.status",
            ),
            (
                json!({"reject": {"retryAfter": "61m"}}),
                "admission.reject.retryAfter",
            ),
            (
                json!({"rateLimit": {"enabled": true}}),
                "admission.rateLimit.requestsPerSecond",
            ),
            (
                json!({"rateLimit": {"enabled": true, "requestsPerSecond": 0}}),
                "admission.rateLimit.requestsPerSecond",
            ),
            (
                json!({"rateLimit": {"enabled": true, "requestsPerSecond": 1000001}}),
                "admission.rateLimit.requestsPerSecond",
            ),
            (
                json!({"rateLimit": {"enabled": true, "requestsPerSecond": 10, "burst": 0.5}}),
                "admission.rateLimit.burst",
            ),
            (json!({"clusters": {}}), "admission.clusters"),
            (json!({"enabled": "yes"}), "admission.enabled"),
            (json!({"initialLimit": 2.5}), "admission.initialLimit"),
            (json!({"initialLimit": -1}), "admission.initialLimit"),
        ];
        for (value, path) in cases {
            let e = err(value.clone());
            assert_eq!(e.path, path, "{value}: {e}");
        }
        // Validation failures (as opposed to type errors) state the rule.
        let e = err(json!({"reject": {"status": 500}}));
        assert!(e.rule.contains("must be 429 or 503"), "{e}");
        let e = err(json!({"minLimit": 30}));
        assert!(e.rule.contains("must be at least minLimit (30)"), "{e}");
    }

    #[test]
    fn too_many_routes_are_rejected() {
        let routes: Vec<Value> = (0..=MAX_ROUTES)
            .map(|i| json!({"pathPrefix": format!("/r{i}"), "priority": "default"}))
            .collect();
        let e = err(json!({"priority": {"routes": routes}}));
        assert_eq!(e.path, "admission.priority.routes");
        assert!(e.rule.contains("must"), "{e}");
        let ok: Vec<Value> = (0..MAX_ROUTES)
            .map(|i| json!({"pathPrefix": format!("/r{i}"), "priority": "default"}))
            .collect();
        let a = parse(Some(json!({"priority": {"routes": ok}}))).unwrap();
        assert_eq!(a.priority.routes.len(), MAX_ROUTES);
    }

    #[test]
    fn a_section_that_is_not_an_object_is_rejected() {
        for value in [json!([1]), json!(null), json!("on")] {
            let e = parse(Some(value)).unwrap_err();
            assert_eq!(e.path, "admission");
            assert!(e.rule.contains("must be an object"), "{e}");
        }
    }
}
