//! `emergency` (switches set by the configuration, so an Istio push flips them mesh-wide) and
//! `control` (the local control endpoint that sets switches on one Envoy).
//!
//! ```json
//! "emergency": {
//!   "kill": [{"scope": {"cluster": "outbound|80||pay.svc"}, "status": 503,
//!             "body": "...", "headers": {"retry-after": "30"}}],
//!   "shed": {"sheddablePercent": 50, "defaultPercent": 0},
//!   "freeze": false,
//!   "dryRun": false
//! },
//! "control": {"enabled": true, "token": "<16+ printable characters>",
//!             "pathPrefix": "/.reflex/control", "allowFrom": "loopback", "maxBodyBytes": 4096}
//! ```
//!
//! Kill scopes and replies have the shapes and bounds of the control endpoint's `kill` body
//! (`crate::control`), so a rule can move from an incident command into the mesh config
//! unchanged. Config switches have no expiry: they hold while the configuration says so.

use super::raw::request_path;
use super::{from_value, ConfigError};
use crate::control::{kill_rule, RawScope};
use crate::core::emergency::{FieldError, KillRule, Shed, Switch, Switches, MAX_KILL_RULES};
use crate::core::time::Instant;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// The switches the configuration sets (`set_by` = `config`, `set_at` = 0 until the adapter
/// stamps them with [`Switches::stamped`] at configure time).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Emergency {
    pub switches: Switches,
}

/// Who may use the control endpoint, besides holding the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowFrom {
    /// Only a loopback downstream peer (`kubectl exec`/`port-forward`, a node agent) without
    /// `x-forwarded-for`.
    Loopback,
    /// Any peer. Only for a listener that ordinary traffic cannot reach (a dedicated admin
    /// listener): on a sidecar's inbound listener, every caller of the service could try
    /// tokens.
    Any,
}

/// The local control endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Control {
    pub enabled: bool,
    /// Requests are `<pathPrefix>/<action>`.
    pub path_prefix: String,
    /// The bearer token (empty when disabled and not set). Never printed: `Debug` redacts it.
    pub token: String,
    pub allow_from: AllowFrom,
    /// Larger request bodies are refused (413) before parsing.
    pub max_body_bytes: usize,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.token.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        };
        f.debug_struct("Control")
            .field("enabled", &self.enabled)
            .field("path_prefix", &self.path_prefix)
            .field("token", &token)
            .field("allow_from", &self.allow_from)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

pub const MIN_TOKEN_LEN: usize = 16;
pub const MAX_TOKEN_LEN: usize = 256;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawEmergency {
    kill: Vec<RawKill>,
    shed: Option<RawShed>,
    freeze: bool,
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKill {
    scope: RawScope,
    status: Option<u64>,
    body: Option<String>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawShed {
    sheddable_percent: u64,
    #[serde(default)]
    default_percent: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct RawControl {
    enabled: bool,
    path_prefix: String,
    /// Read as any JSON value so that a wrong type is reported without serde echoing it.
    token: Option<Value>,
    allow_from: String,
    max_body_bytes: u64,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            enabled: false,
            path_prefix: "/.reflex/control".to_string(),
            token: None,
            allow_from: "loopback".to_string(),
            max_body_bytes: 4096,
        }
    }
}

fn config_switch<T>(value: T) -> Switch<T> {
    Switch {
        value,
        set_by: "config".to_string(),
        set_at: Instant(0),
        expires_at: None,
    }
}

/// serde reads a struct from a JSON array too; sections are objects only.
fn object(path: &str, value: Value) -> Result<Value, ConfigError> {
    if value.is_object() {
        Ok(value)
    } else {
        Err(ConfigError::new(path, "must be an object"))
    }
}

fn at(path: &str, e: FieldError) -> ConfigError {
    ConfigError::new(&format!("{path}.{}", e.field), e.rule)
}

pub(super) fn parse_emergency(value: Option<Value>) -> Result<Emergency, ConfigError> {
    let p = "emergency";
    let raw: RawEmergency = match value {
        None => RawEmergency::default(),
        Some(v) => from_value(p, object(p, v)?)?,
    };
    if raw.kill.len() > MAX_KILL_RULES {
        return Err(ConfigError::new(
            &format!("{p}.kill"),
            format!(
                "must hold at most {MAX_KILL_RULES} rules (got {})",
                raw.kill.len()
            ),
        ));
    }
    let mut kill: Vec<Switch<KillRule>> = Vec::with_capacity(raw.kill.len());
    for (i, k) in raw.kill.into_iter().enumerate() {
        let path = format!("{p}.kill[{i}]");
        let rule = kill_rule(k.scope, k.status, k.body, k.headers).map_err(|e| at(&path, e))?;
        if kill.iter().any(|s| s.value.scope == rule.scope) {
            return Err(ConfigError::new(
                &format!("{path}.scope"),
                "must differ from the scope of every other rule",
            ));
        }
        kill.push(config_switch(rule));
    }
    let shed = match raw.shed {
        None => None,
        Some(s) => Some(config_switch(
            Shed::from_percents(s.sheddable_percent, s.default_percent)
                .map_err(|e| at(&format!("{p}.shed"), e))?,
        )),
    };
    Ok(Emergency {
        switches: Switches {
            kill,
            shed,
            freeze: raw.freeze.then(|| config_switch(())),
            dry_run: raw.dry_run.then(|| config_switch(())),
            generation: 0,
        },
    })
}

pub(super) fn parse_control(value: Option<Value>) -> Result<Control, ConfigError> {
    let p = "control";
    let raw: RawControl = match value {
        None => RawControl::default(),
        Some(v) => from_value(p, object(p, v)?)?,
    };
    let path_prefix = request_path(&format!("{p}.pathPrefix"), raw.path_prefix)?;
    if path_prefix.len() < 2 || path_prefix.ends_with('/') {
        return Err(ConfigError::new(
            &format!("{p}.pathPrefix"),
            format!("must not be `/` nor end with `/`: actions are appended as `/<action>` (got {path_prefix:?})"),
        ));
    }
    let token_path = format!("{p}.token");
    // Rules never quote the token: a config error is logged.
    let token = match raw.token {
        // An empty string is "not set", so a template can ship the field empty and off.
        None | Some(Value::Null) => String::new(),
        Some(Value::String(token)) if token.is_empty() => String::new(),
        Some(Value::String(token)) => {
            let printable = token.chars().all(|c| c.is_ascii_graphic());
            if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN || !printable {
                return Err(ConfigError::new(
                    &token_path,
                    format!("must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} printable ASCII characters without spaces (the value is not shown)"),
                ));
            }
            token
        }
        Some(_) => {
            return Err(ConfigError::new(
                &token_path,
                "must be a string (the value is not shown)",
            ))
        }
    };
    if raw.enabled && token.is_empty() {
        return Err(ConfigError::new(
            &token_path,
            "must be set when the control endpoint is enabled",
        ));
    }
    let allow_from = match raw.allow_from.as_str() {
        "loopback" => AllowFrom::Loopback,
        "any" => AllowFrom::Any,
        other => {
            return Err(ConfigError::new(
                &format!("{p}.allowFrom"),
                format!("must be \"loopback\" or \"any\" (got {other:?})"),
            ))
        }
    };
    let max_body_bytes = super::raw::in_range(
        &format!("{p}.maxBodyBytes"),
        raw.max_body_bytes,
        16,
        crate::control::MAX_REQUEST_BODY as u64,
    )? as usize;
    Ok(Control {
        enabled: raw.enabled,
        path_prefix,
        token,
        allow_from,
        max_body_bytes,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::core::emergency::KillScope;
    use serde_json::json;

    const TOKEN: &str = "0123456789abcdef-secret";

    fn emergency_err(value: Value) -> ConfigError {
        parse_emergency(Some(value)).unwrap_err()
    }

    fn control_err(value: Value) -> ConfigError {
        parse_control(Some(value)).unwrap_err()
    }

    #[test]
    fn absent_sections_set_nothing_and_disable_the_endpoint() {
        let e = parse_emergency(None).unwrap();
        assert_eq!(e.switches, Switches::default());
        assert_eq!(parse_emergency(Some(json!({}))).unwrap(), e);
        let c = parse_control(None).unwrap();
        assert_eq!(
            c,
            Control {
                enabled: false,
                path_prefix: "/.reflex/control".into(),
                token: String::new(),
                allow_from: AllowFrom::Loopback,
                max_body_bytes: 4096,
            }
        );
    }

    #[test]
    fn full_emergency_section() {
        let e = parse_emergency(Some(json!({
            "kill": [
                {"scope": {"cluster": "outbound|80||pay.svc"}},
                {"scope": {"pathPrefix": "/admin", "header": {"name": "x-tenant", "value": "acme"}},
                 "status": 410, "body": "gone", "headers": {"retry-after": "60"}},
            ],
            "shed": {"sheddablePercent": 50, "defaultPercent": 5},
            "freeze": true,
            "dryRun": true,
        })))
        .unwrap();
        let s = &e.switches;
        assert_eq!(s.kill.len(), 2);
        assert_eq!(
            s.kill[0].value,
            KillRule::new(KillScope::Cluster("outbound|80||pay.svc".into()))
        );
        assert_eq!(
            s.kill[1].value,
            KillRule {
                scope: KillScope::Route {
                    path_prefix: Some("/admin".into()),
                    header: Some(("x-tenant".into(), "acme".into())),
                },
                status: 410,
                body: "gone".into(),
                headers: vec![("retry-after".into(), "60".into())],
            }
        );
        assert!(s
            .kill
            .iter()
            .all(|k| k.set_by == "config" && k.expires_at.is_none()));
        assert_eq!(
            s.shed.as_ref().map(|x| x.value),
            Some(Shed {
                sheddable_percent: 50,
                default_percent: 5
            })
        );
        assert!(s.frozen(Instant(0)) && s.dry_run(Instant(u64::MAX)));
        let plain = parse_emergency(Some(json!({"freeze": false, "dryRun": false}))).unwrap();
        assert!(plain.switches.freeze.is_none() && plain.switches.dry_run.is_none());
    }

    #[test]
    fn invalid_emergency_values_are_named() {
        let cases = [
            (json!({"kill": {}}), "emergency.kill"),
            (json!({"kill": [{"status": 503}]}), "emergency.kill[0]"),
            (
                json!({"kill": [{"scope": {"all": true}, "expiresIn": "1m"}]}),
                "emergency.kill[0].expiresIn",
            ),
            (
                json!({"kill": [{"scope": {"all": true}}, {"scope": {"all": false}}]}),
                "emergency.kill[1].scope.all",
            ),
            (
                json!({"kill": [{"scope": {"cluster": "a", "all": true}}]}),
                "emergency.kill[0].scope",
            ),
            (
                json!({"kill": [{"scope": {"all": true}, "status": 99}]}),
                "emergency.kill[0].status",
            ),
            (
                json!({"kill": [{"scope": {"all": true}, "headers": {"Bad": "x"}}]}),
                "emergency.kill[0].headers.Bad",
            ),
            (
                json!({"kill": [{"scope": {"all": true}}, {"scope": {"all": true}}]}),
                "emergency.kill[1].scope",
            ),
            (
                json!({"shed": {"sheddablePercent": 101}}),
                "emergency.shed.sheddablePercent",
            ),
            (
                json!({"shed": {"sheddablePercent": 1, "defaultPercent": 300}}),
                "emergency.shed.defaultPercent",
            ),
            (json!({"shed": {"defaultPercent": 3}}), "emergency.shed"),
            (json!({"freeze": "yes"}), "emergency.freeze"),
            (json!({"killswitch": true}), "emergency.killswitch"),
            (json!([true]), "emergency"),
        ];
        for (value, path) in cases {
            let e = emergency_err(value.clone());
            assert_eq!(e.path, path, "{value}: {e}");
            assert!(!e.rule.is_empty(), "{e}");
        }
        let too_many: Vec<Value> = (0..33)
            .map(|i| json!({"scope": {"cluster": format!("c{i}")}}))
            .collect();
        let e = emergency_err(json!({ "kill": too_many }));
        assert_eq!(e.path, "emergency.kill");
        assert!(e.rule.contains("must hold at most 32"), "{e}");
        // Our own rules say "must".
        let e = emergency_err(json!({"shed": {"sheddablePercent": 101}}));
        assert!(e.rule.contains("must"), "{e}");
    }

    #[test]
    fn full_control_section() {
        let c = parse_control(Some(json!({
            "enabled": true,
            "pathPrefix": "/ops/reflex",
            "token": TOKEN,
            "allowFrom": "any",
            "maxBodyBytes": 16,
        })))
        .unwrap();
        assert_eq!(
            c,
            Control {
                enabled: true,
                path_prefix: "/ops/reflex".into(),
                token: TOKEN.into(),
                allow_from: AllowFrom::Any,
                max_body_bytes: 16,
            }
        );
        // A token may be set ahead of enabling.
        let c = parse_control(Some(json!({"token": TOKEN}))).unwrap();
        assert!(!c.enabled);
        assert_eq!(c.token, TOKEN);
    }

    #[test]
    fn invalid_control_values_are_named() {
        let cases = [
            (json!({"enabled": true}), "control.token"),
            (json!({"enabled": true, "token": null}), "control.token"),
            (json!({"enabled": true, "token": "short"}), "control.token"),
            (
                json!({"enabled": true, "token": "0123456789abcdef with space"}),
                "control.token",
            ),
            (json!({"token": "0123456789abcdef\u{e9}"}), "control.token"),
            (
                json!({"token": "x".repeat(MAX_TOKEN_LEN + 1)}),
                "control.token",
            ),
            (
                json!({"enabled": true, "token": 1234567890123456789u64}),
                "control.token",
            ),
            (json!({"enabled": "true"}), "control.enabled"),
            (json!({"pathPrefix": "ops"}), "control.pathPrefix"),
            (json!({"pathPrefix": "/"}), "control.pathPrefix"),
            (json!({"pathPrefix": "/ops/"}), "control.pathPrefix"),
            (json!({"pathPrefix": "/ops?x"}), "control.pathPrefix"),
            (json!({"allowFrom": "everyone"}), "control.allowFrom"),
            (json!({"maxBodyBytes": 15}), "control.maxBodyBytes"),
            (json!({"maxBodyBytes": 65537}), "control.maxBodyBytes"),
            (json!({"maxBodyBytes": -1}), "control.maxBodyBytes"),
            (json!({"tokenFile": "/x"}), "control.tokenFile"),
            (json!([]), "control"),
        ];
        for (value, path) in cases {
            let e = control_err(value.clone());
            assert_eq!(e.path, path, "{value}: {e}");
        }
        let e = control_err(json!({"enabled": true}));
        assert!(e.rule.contains("must be set"), "{e}");
    }

    #[test]
    fn the_token_never_shows() {
        let secret = "s3cr3t-but-too short";
        let numeric = 9_876_543_210_123_456u64;
        for value in [
            json!({"enabled": true, "token": secret}),
            json!({"token": numeric}),
            json!({"token": [secret]}),
        ] {
            let e = control_err(value);
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
            assert!(!e.to_string().contains("9876543210"), "{e}");
        }
        let c = parse_control(Some(json!({"enabled": true, "token": TOKEN}))).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(TOKEN), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(format!("{:?}", parse_control(None).unwrap()).contains("<unset>"));
    }
}
