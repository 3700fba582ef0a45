//! The wire form of the configuration, exactly as operators write it, and its validation.
//! Defaults live here, next to the field they belong to, and are all safe: nothing is
//! exposed or enforced unless the document asks for it.

use super::{
    admission, emergency, guard, retries, Config, ConfigError, Consecutive, Detectors, Endpoints,
    FailurePercentage, Latency, LoadBalancing, Millis, OutlierDetection, Role, Status, Steering,
    SuccessRate, SCHEMA_VERSION,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    version: u32,
    #[serde(default)]
    steering: RawSteering,
    #[serde(default)]
    endpoints: RawEndpoints,
    #[serde(default)]
    load_balancing: RawLoadBalancing,
    #[serde(default)]
    outlier_detection: RawOutlierDetection,
    #[serde(default)]
    status: RawStatus,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default = "default_tick")]
    tick_interval: Millis,
    #[serde(default)]
    role: Role,
    #[serde(default)]
    dry_run: bool,
    decision_header: Option<String>,
    retries: Option<serde_json::Value>,
    circuit_breaker: Option<serde_json::Value>,
    bulkhead: Option<serde_json::Value>,
    client_throttling: Option<serde_json::Value>,
    admission: Option<serde_json::Value>,
    emergency: Option<serde_json::Value>,
    control: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawSteering {
    header: String,
}

impl Default for RawSteering {
    fn default() -> Self {
        RawSteering {
            header: "x-reflex-endpoint".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawEndpoints {
    max_clusters: u64,
    max_endpoints_per_cluster: u64,
    forget_after: Millis,
}

impl Default for RawEndpoints {
    fn default() -> Self {
        RawEndpoints {
            max_clusters: 64,
            max_endpoints_per_cluster: 256,
            forget_after: Millis::from_secs(300),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawMetrics {
    tags: std::collections::BTreeMap<String, String>,
}

/// Most tags a metric name carries: each one is a regex Envoy runs on every new stat name.
const MAX_METRIC_TAGS: usize = 4;

impl RawMetrics {
    /// Tag names are Prometheus label names in lowercase (`[a-z_][a-z0-9_]*`, not `__...`,
    /// which Prometheus reserves); values are `[A-Za-z0-9_-]`. Neither may hold the `=.=` /
    /// `;.;` delimiters the names are encoded with, nor a `.` (Envoy's stat separator).
    fn validate(self) -> Result<Vec<(String, String)>, ConfigError> {
        if self.tags.len() > MAX_METRIC_TAGS {
            return Err(ConfigError::new(
                "metrics.tags",
                format!("at most {MAX_METRIC_TAGS} tags (got {})", self.tags.len()),
            ));
        }
        self.tags
            .into_iter()
            .map(|(name, value)| {
                let path = format!("metrics.tags.{name}");
                let name_ok = name.len() <= 32
                    && !name.starts_with("__")
                    && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !name_ok {
                    return Err(ConfigError::new(
                        &path,
                        "a tag name must be a lowercase Prometheus label name ([a-z_][a-z0-9_]*, at most 32 long, not starting with __)",
                    ));
                }
                let value_ok = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !value_ok {
                    return Err(ConfigError::new(
                        &path,
                        format!("must be 1 to 64 characters of [A-Za-z0-9_-] (got {value:?})"),
                    ));
                }
                Ok((name, value))
            })
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawStatus {
    enabled: bool,
    path: String,
    loopback_only: bool,
}

impl Default for RawStatus {
    fn default() -> Self {
        RawStatus {
            enabled: false,
            path: "/.reflex/status".into(),
            loopback_only: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawLoadBalancing {
    enabled: bool,
    dry_run: bool,
    latency_decay: Millis,
    default_rtt: Millis,
    error_window: Millis,
    error_weight: f64,
    slow_start: Millis,
    fallbacks: u64,
    explore_ratio: f64,
}

impl Default for RawLoadBalancing {
    fn default() -> Self {
        RawLoadBalancing {
            enabled: true,
            dry_run: false,
            // Short enough that one scheduling hiccup on a healthy endpoint is forgiven within
            // a couple of seconds (peak-EWMA jumps to every spike), long enough that a slow
            // endpoint is re-tested only every few seconds.
            latency_decay: Millis::from_secs(2),
            default_rtt: Millis(25),
            error_window: Millis::from_secs(10),
            error_weight: 10.0,
            slow_start: Millis::from_secs(10),
            fallbacks: 2,
            explore_ratio: 0.01,
        }
    }
}

/// One detector as written: `enabled` and `dryRun` common to all; the other fields default
/// per detector (see [`RawOutlierDetection::validate`]), so they are optional here.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawDetector {
    enabled: Option<bool>,
    dry_run: bool,
    threshold: Option<f64>,
    min_volume: Option<f64>,
    stdev_factor: Option<f64>,
    min_hosts: Option<u64>,
    factor: Option<f64>,
    min_latency: Option<Millis>,
    #[serde(rename = "for")]
    sustain: Option<Millis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawOutlierDetection {
    #[serde(rename = "consecutive5xx")]
    consecutive_5xx: RawDetector,
    consecutive_gateway_failure: RawDetector,
    failure_percentage: RawDetector,
    success_rate: RawDetector,
    latency: RawDetector,
    base_ejection_time: Millis,
    max_ejection_time: Millis,
    max_ejection_percent: u64,
    panic_threshold_percent: u64,
    probes: u64,
}

impl Default for RawOutlierDetection {
    fn default() -> Self {
        RawOutlierDetection {
            consecutive_5xx: RawDetector::default(),
            consecutive_gateway_failure: RawDetector::default(),
            failure_percentage: RawDetector::default(),
            success_rate: RawDetector::default(),
            latency: RawDetector::default(),
            base_ejection_time: Millis::from_secs(10),
            max_ejection_time: Millis::from_secs(300),
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
            probes: 3,
        }
    }
}

impl RawDetector {
    fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// Rejects a field that the detector at `path` does not use, so a typo'd or misplaced
    /// setting never silently does nothing.
    fn only_uses(&self, path: &str, used: &[&str]) -> Result<(), ConfigError> {
        let set = [
            ("threshold", self.threshold.is_some()),
            ("minVolume", self.min_volume.is_some()),
            ("stdevFactor", self.stdev_factor.is_some()),
            ("minHosts", self.min_hosts.is_some()),
            ("factor", self.factor.is_some()),
            ("minLatency", self.min_latency.is_some()),
            ("for", self.sustain.is_some()),
        ];
        match set
            .iter()
            .find(|(name, is_set)| *is_set && !used.contains(name))
        {
            Some((name, _)) => Err(ConfigError::new(
                &format!("{path}.{name}"),
                "must not be set: this detector does not use it",
            )),
            None => Ok(()),
        }
    }

    fn consecutive(&self, path: &str, default: u32) -> Result<Option<Consecutive>, ConfigError> {
        self.only_uses(path, &["threshold"])?;
        let threshold = in_range(
            &format!("{path}.threshold"),
            self.threshold.unwrap_or(f64::from(default)),
            1.0,
            1000.0,
        )?;
        if threshold.fract() != 0.0 {
            return Err(ConfigError::new(
                &format!("{path}.threshold"),
                format!("must be a whole number (got {threshold})"),
            ));
        }
        Ok(self.enabled().then_some(Consecutive {
            threshold: threshold as u32,
            dry_run: self.dry_run,
        }))
    }

    fn failure_percentage(&self, path: &str) -> Result<Option<FailurePercentage>, ConfigError> {
        self.only_uses(path, &["threshold", "minVolume"])?;
        let threshold = in_range(
            &format!("{path}.threshold"),
            self.threshold.unwrap_or(50.0),
            1.0,
            100.0,
        )?;
        let min_volume = in_range(
            &format!("{path}.minVolume"),
            self.min_volume.unwrap_or(20.0),
            1.0,
            1e6,
        )?;
        Ok(self.enabled().then_some(FailurePercentage {
            threshold: threshold / 100.0,
            min_volume,
            dry_run: self.dry_run,
        }))
    }

    fn success_rate(&self, path: &str) -> Result<Option<SuccessRate>, ConfigError> {
        self.only_uses(path, &["stdevFactor", "minHosts", "minVolume"])?;
        Ok(self.enabled().then_some(SuccessRate {
            stdev_factor: in_range(
                &format!("{path}.stdevFactor"),
                self.stdev_factor.unwrap_or(1.9),
                0.1,
                10.0,
            )?,
            min_hosts: in_range(
                &format!("{path}.minHosts"),
                self.min_hosts.unwrap_or(3),
                2,
                4096,
            )? as usize,
            min_volume: in_range(
                &format!("{path}.minVolume"),
                self.min_volume.unwrap_or(20.0),
                1.0,
                1e6,
            )?,
            dry_run: self.dry_run,
        }))
    }

    fn latency(&self, path: &str) -> Result<Option<Latency>, ConfigError> {
        self.only_uses(path, &["factor", "minLatency", "for", "minHosts"])?;
        Ok(self.enabled().then_some(Latency {
            factor: in_range(
                &format!("{path}.factor"),
                self.factor.unwrap_or(3.0),
                1.1,
                1000.0,
            )?,
            min_latency: in_range(
                &format!("{path}.minLatency"),
                self.min_latency.unwrap_or(Millis(20)),
                Millis(0),
                Millis::from_secs(60),
            )?,
            sustain: in_range(
                &format!("{path}.for"),
                self.sustain.unwrap_or(Millis::from_secs(2)),
                Millis(0),
                Millis::from_secs(600),
            )?,
            min_hosts: in_range(
                &format!("{path}.minHosts"),
                self.min_hosts.unwrap_or(3),
                2,
                4096,
            )? as usize,
            dry_run: self.dry_run,
        }))
    }
}

impl RawLoadBalancing {
    fn validate(self) -> Result<LoadBalancing, ConfigError> {
        let p = "loadBalancing";
        Ok(LoadBalancing {
            enabled: self.enabled,
            dry_run: self.dry_run,
            latency_decay: in_range(
                &format!("{p}.latencyDecay"),
                self.latency_decay,
                Millis(100),
                Millis::from_secs(600),
            )?,
            default_rtt: in_range(
                &format!("{p}.defaultRtt"),
                self.default_rtt,
                Millis(1),
                Millis::from_secs(60),
            )?,
            error_window: in_range(
                &format!("{p}.errorWindow"),
                self.error_window,
                Millis(100),
                Millis::from_secs(600),
            )?,
            error_weight: in_range(&format!("{p}.errorWeight"), self.error_weight, 0.0, 1000.0)?,
            slow_start: in_range(
                &format!("{p}.slowStart"),
                self.slow_start,
                Millis(0),
                Millis::from_secs(600),
            )?,
            fallbacks: in_range(&format!("{p}.fallbacks"), self.fallbacks, 0, 8)? as usize,
            explore_ratio: in_range(&format!("{p}.exploreRatio"), self.explore_ratio, 0.0, 0.5)?,
        })
    }
}

impl RawOutlierDetection {
    fn validate(self) -> Result<OutlierDetection, ConfigError> {
        let p = "outlierDetection";
        let base = in_range(
            &format!("{p}.baseEjectionTime"),
            self.base_ejection_time,
            Millis(100),
            Millis::from_secs(3600),
        )?;
        let max = in_range(
            &format!("{p}.maxEjectionTime"),
            self.max_ejection_time,
            Millis(100),
            Millis::from_secs(24 * 3600),
        )?;
        if max < base {
            return Err(ConfigError::new(
                &format!("{p}.maxEjectionTime"),
                format!("must be at least baseEjectionTime ({base}) (got {max})"),
            ));
        }
        Ok(OutlierDetection {
            detectors: Detectors {
                consecutive_5xx: self
                    .consecutive_5xx
                    .consecutive(&format!("{p}.consecutive5xx"), 5)?,
                consecutive_gateway: self
                    .consecutive_gateway_failure
                    .consecutive(&format!("{p}.consecutiveGatewayFailure"), 3)?,
                failure_percentage: self
                    .failure_percentage
                    .failure_percentage(&format!("{p}.failurePercentage"))?,
                success_rate: self
                    .success_rate
                    .success_rate(&format!("{p}.successRate"))?,
                latency: self.latency.latency(&format!("{p}.latency"))?,
            },
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejection_percent: in_range(
                &format!("{p}.maxEjectionPercent"),
                self.max_ejection_percent,
                0,
                100,
            )? as u32,
            panic_threshold_percent: in_range(
                &format!("{p}.panicThresholdPercent"),
                self.panic_threshold_percent,
                0,
                100,
            )? as u32,
            probes: in_range(&format!("{p}.probes"), self.probes, 1, 100)? as u32,
        })
    }
}

fn default_tick() -> Millis {
    Millis(1_000)
}

/// Checks `min <= value <= max`, naming the path and the bounds when it is not.
pub(super) fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    path: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if min <= value && value <= max {
        Ok(value)
    } else {
        Err(ConfigError::new(
            path,
            format!("must be between {min} and {max} (got {value})"),
        ))
    }
}

/// Header names as Envoy stores them: lowercase HTTP tokens, no pseudo-headers.
pub(super) fn header_name(path: &str, name: String) -> Result<String, ConfigError> {
    let token =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(ConfigError::new(
            path,
            format!("must be a lowercase HTTP header name (got {name:?})"),
        ));
    }
    Ok(name)
}

/// A request path: absolute, printable, no spaces, no query.
pub(super) fn request_path(path: &str, value: String) -> Result<String, ConfigError> {
    let ok = value.starts_with('/')
        && value.len() <= 256
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '?' && c != '#');
    if !ok {
        return Err(ConfigError::new(
            path,
            format!("must be an absolute path of printable characters without query, at most 256 long (got {value:?})"),
        ));
    }
    Ok(value)
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        if self.version != SCHEMA_VERSION {
            return Err(ConfigError::new(
                "version",
                format!(
                    "must be {SCHEMA_VERSION}, the schema this build understands (got {})",
                    self.version
                ),
            ));
        }
        let endpoints = Endpoints {
            max_clusters: in_range(
                "endpoints.maxClusters",
                self.endpoints.max_clusters,
                1,
                4096,
            )? as usize,
            max_endpoints_per_cluster: in_range(
                "endpoints.maxEndpointsPerCluster",
                self.endpoints.max_endpoints_per_cluster,
                1,
                4096,
            )? as usize,
            forget_after: in_range(
                "endpoints.forgetAfter",
                self.endpoints.forget_after,
                Millis::from_secs(1),
                Millis::from_secs(24 * 3600),
            )?,
        };
        let status = Status {
            enabled: self.status.enabled,
            path: request_path("status.path", self.status.path)?,
            loopback_only: self.status.loopback_only,
        };
        let control = emergency::parse_control(self.control)?;
        if control.enabled
            && (status.path.starts_with(&control.path_prefix)
                || control.path_prefix.starts_with(&status.path))
        {
            return Err(ConfigError::new(
                "control.pathPrefix",
                format!(
                    "must not overlap status.path {:?}: one request would match both",
                    status.path
                ),
            ));
        }
        Ok(Config {
            role: self.role,
            dry_run: self.dry_run,
            decision_header: self
                .decision_header
                .map(|h| header_name("decisionHeader", h))
                .transpose()?,
            retries: retries::parse(self.retries)?,
            circuit_breaker: guard::parse_circuit_breaker(self.circuit_breaker)?,
            bulkhead: guard::parse_bulkhead(self.bulkhead)?,
            client_throttling: guard::parse_client_throttling(self.client_throttling)?,
            admission: admission::parse(self.admission)?,
            emergency: emergency::parse_emergency(self.emergency)?,
            control,
            load_balancing: self.load_balancing.validate()?,
            outlier_detection: self.outlier_detection.validate()?,
            steering: Steering {
                header: header_name("steering.header", self.steering.header)?,
            },
            endpoints,
            status,
            metric_tags: self.metrics.validate()?,
            tick_interval: in_range(
                "tickInterval",
                self.tick_interval,
                Millis(10),
                Millis::from_secs(60),
            )?,
        })
    }
}
