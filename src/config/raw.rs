//! The wire form of the configuration, exactly as operators write it, and its validation.
//! Defaults live here, next to the field they belong to, and are all safe: nothing is
//! exposed or enforced unless the document asks for it.

use super::{Config, ConfigError, Endpoints, Millis, Status, Steering, SCHEMA_VERSION};
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
    status: RawStatus,
    #[serde(default = "default_tick")]
    tick_interval: Millis,
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

fn default_tick() -> Millis {
    Millis(1_000)
}

/// Checks `min <= value <= max`, naming the path and the bounds when it is not.
fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
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
fn header_name(path: &str, name: String) -> Result<String, ConfigError> {
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
fn request_path(path: &str, value: String) -> Result<String, ConfigError> {
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
        Ok(Config {
            steering: Steering {
                header: header_name("steering.header", self.steering.header)?,
            },
            endpoints,
            status: Status {
                enabled: self.status.enabled,
                path: request_path("status.path", self.status.path)?,
                loopback_only: self.status.loopback_only,
            },
            tick_interval: in_range(
                "tickInterval",
                self.tick_interval,
                Millis(10),
                Millis::from_secs(60),
            )?,
        })
    }
}
