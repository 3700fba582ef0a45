//! The local control endpoint's protocol: requests, answers and the token check. Pure: the
//! adapter does the HTTP part (path prefix, source address, body size) and stores the
//! switches in shared data, so every worker of this Envoy sees a change at its next request.
//!
//! ```text
//! GET  <prefix>/status                      the switches in force, with who set them and when
//! POST <prefix>/kill     {"scope": {"all": true} | {"cluster": "outbound|80||pay"}
//!                                 | {"pathPrefix": "/api", "header": {"name": "x-t", "value": "a"}},
//!                         "status": 503, "body": "...", "headers": {"retry-after": "30"},
//!                         "expiresIn": "10m"}   adds a rule, or replaces the one with this scope
//! POST <prefix>/shed     {"sheddablePercent": 50, "defaultPercent": 0, "expiresIn": "5m"}
//! POST <prefix>/freeze   {"enabled": true, "expiresIn": "15m"}     (body optional)
//! POST <prefix>/dry-run  {"enabled": true|false, "expiresIn": "1h"} (body optional)
//! POST <prefix>/normal   {} or empty: clears every switch set through this endpoint
//! ```
//!
//! Every request needs `Authorization: Bearer <token>`. Bodies are strict (unknown fields are
//! errors, as in the configuration), every error names the field, and `expiresIn` is at
//! most 7 days so a forgotten switch ends by itself; without it a switch holds until
//! `normal` (or until Envoy restarts: shared data lives in memory). Switches from the
//! plugin configuration are shown but cannot be cleared here: they belong to the mesh's
//! configuration, and `normal` only undoes what an operator did on this host.
//!
//! The token is compared in constant time ([`constant_time_eq`]): how long the comparison
//! takes does not tell a caller how many leading bytes it guessed right.

use crate::config::Millis;
use crate::core::emergency::{
    merge, FieldError, KillRule, KillScope, Shed, Switch, Switches, DEFAULT_KILL_BODY,
    DEFAULT_KILL_STATUS, MAX_KILL_RULES, MAX_SET_BY_LEN,
};
use crate::core::time::Instant;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Longest `expiresIn`.
pub const MAX_EXPIRES_IN: Millis = Millis::from_secs(7 * 24 * 3600);
/// Hard limit of a request body, whatever the configuration says (`control.maxBodyBytes`
/// is checked by the adapter while reading, and is at most this).
pub const MAX_REQUEST_BODY: usize = 65_536;

/// What a control request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Status,
    Kill,
    Shed,
    Freeze,
    DryRun,
    Normal,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Status,
        Action::Kill,
        Action::Shed,
        Action::Freeze,
        Action::DryRun,
        Action::Normal,
    ];

    /// The path segment, also used in logs and answers.
    pub fn name(self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::Kill => "kill",
            Action::Shed => "shed",
            Action::Freeze => "freeze",
            Action::DryRun => "dry-run",
            Action::Normal => "normal",
        }
    }

    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A parsed, validated control request.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlRequest {
    Status,
    Kill {
        rule: KillRule,
        expires_in: Option<Millis>,
    },
    Shed {
        shed: Shed,
        expires_in: Option<Millis>,
    },
    Freeze {
        enabled: bool,
        expires_in: Option<Millis>,
    },
    DryRun {
        enabled: bool,
        expires_in: Option<Millis>,
    },
    Normal,
}

impl ControlRequest {
    pub fn action(&self) -> Action {
        match self {
            ControlRequest::Status => Action::Status,
            ControlRequest::Kill { .. } => Action::Kill,
            ControlRequest::Shed { .. } => Action::Shed,
            ControlRequest::Freeze { .. } => Action::Freeze,
            ControlRequest::DryRun { .. } => Action::DryRun,
            ControlRequest::Normal => Action::Normal,
        }
    }

    /// Whether the request changes switches (the adapter writes shared data only then).
    pub fn is_change(&self) -> bool {
        !matches!(self, ControlRequest::Status)
    }
}

/// A refused request: the HTTP status to answer with and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    pub status: u16,
    pub message: String,
}

impl ControlError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        ControlError {
            status,
            message: message.into(),
        }
    }

    fn field(field: &str, rule: &str) -> Self {
        ControlError::new(400, format!("`{field}` {rule}"))
    }
}

impl From<FieldError> for ControlError {
    fn from(e: FieldError) -> Self {
        ControlError::field(&e.field, &e.rule)
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

/// Whether the `Authorization` header carries `Bearer <token>`. The scheme is matched
/// case-insensitively (RFC 7235); an empty configured token authorizes nothing.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let presented = header
        .map(str::trim)
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, credentials)| credentials.trim_start_matches(' '));
    constant_time_eq(presented.as_bytes(), token.as_bytes())
}

/// Compares `presented` with the secret `expected` in time that depends only on the
/// secret's length: every byte of `expected` is compared, differences are OR-ed together,
/// and the answer is read once at the end, so a guess with a right prefix takes as long as
/// one with none. A length difference is folded into the same accumulator instead of
/// returning early; the loop always runs over the whole configured token. What leaks is the
/// token's length (by the loop count), which a 16-character minimum makes worthless.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, &byte) in expected.iter().enumerate() {
        let got = presented.get(i).copied().unwrap_or(0);
        // black_box: keeps the optimizer from turning the loop into an early exit.
        diff = std::hint::black_box(diff | (got ^ byte));
    }
    diff == 0
}

/// The JSON form of a kill scope, shared with the `emergency.kill[].scope` config section:
/// exactly one of `{"all": true}`, `{"cluster": name}`, or `pathPrefix` and/or `header`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawScope {
    pub all: Option<bool>,
    pub cluster: Option<String>,
    pub path_prefix: Option<String>,
    pub header: Option<RawHeaderMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    pub value: String,
}

impl RawScope {
    pub fn validate(self) -> Result<KillScope, FieldError> {
        let route = self.path_prefix.is_some() || self.header.is_some();
        let kinds = usize::from(self.all.is_some())
            + usize::from(self.cluster.is_some())
            + usize::from(route);
        if kinds != 1 {
            return Err(FieldError::new(
                "scope",
                "must set exactly one of `all`, `cluster`, or `pathPrefix`/`header`",
            ));
        }
        let scope = match (self.all, self.cluster) {
            (Some(true), _) => KillScope::All,
            (Some(false), _) => {
                return Err(FieldError::new(
                    "scope.all",
                    "must be true (to kill nothing, leave the rule out)",
                ))
            }
            (None, Some(cluster)) => KillScope::Cluster(cluster),
            (None, None) => KillScope::Route {
                path_prefix: self.path_prefix,
                header: self.header.map(|h| (h.name, h.value)),
            },
        };
        scope.check()?;
        Ok(scope)
    }
}

/// Builds and checks a kill rule from its JSON fields (defaults: 503, [`DEFAULT_KILL_BODY`],
/// no headers). Fields in the error are relative to the rule object.
pub fn kill_rule(
    scope: RawScope,
    status: Option<u64>,
    body: Option<String>,
    headers: Option<BTreeMap<String, String>>,
) -> Result<KillRule, FieldError> {
    let scope = scope.validate()?;
    let status = match status {
        None => DEFAULT_KILL_STATUS,
        Some(code) => u16::try_from(code)
            .ok()
            .filter(|c| (200..=599).contains(c))
            .ok_or_else(|| {
                FieldError::new(
                    "status",
                    format!("must be an HTTP status between 200 and 599 (got {code})"),
                )
            })?,
    };
    let rule = KillRule {
        scope,
        status,
        body: body.unwrap_or_else(|| DEFAULT_KILL_BODY.to_string()),
        headers: headers.unwrap_or_default().into_iter().collect(),
    };
    rule.check()?;
    Ok(rule)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KillBody {
    scope: RawScope,
    status: Option<u64>,
    body: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    expires_in: Option<Millis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ShedBody {
    sheddable_percent: u64,
    #[serde(default)]
    default_percent: u64,
    expires_in: Option<Millis>,
}

/// Body of `freeze` and `dry-run`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlagBody {
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    expires_in: Option<Millis>,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

/// Parses a request from the method, the path after the configured prefix (`/kill`; a
/// query string is ignored) and the body.
pub fn parse_request(
    method: &str,
    path_after_prefix: &str,
    body: &[u8],
) -> Result<ControlRequest, ControlError> {
    let path = path_after_prefix
        .split_once('?')
        .map_or(path_after_prefix, |(path, _)| path);
    let name = path.strip_prefix('/').unwrap_or(path);
    let action = Action::from_name(name).ok_or_else(|| {
        let shown: String = name.chars().take(64).collect();
        let known: Vec<_> = Action::ALL.iter().map(|a| a.name()).collect();
        ControlError::new(
            404,
            format!(
                "unknown control action {shown:?}: the path must end in one of /{}",
                known.join(", /")
            ),
        )
    })?;
    match (action, method) {
        (Action::Status, "GET" | "POST") => return Ok(ControlRequest::Status),
        (Action::Status, _) => {
            return Err(ControlError::new(
                405,
                format!("`status` must be requested with GET or POST (got {method})"),
            ))
        }
        (_, "POST") => {}
        (_, _) => {
            return Err(ControlError::new(
                405,
                format!(
                    "`{}` must be requested with POST (got {method})",
                    action.name()
                ),
            ))
        }
    }
    if body.len() > MAX_REQUEST_BODY {
        return Err(ControlError::new(
            413,
            format!("the body must be at most {MAX_REQUEST_BODY} bytes"),
        ));
    }
    Ok(match action {
        Action::Status => ControlRequest::Status,
        Action::Kill => {
            let b: KillBody = parse_body(body, false)?;
            ControlRequest::Kill {
                expires_in: expires_in(b.expires_in)?,
                rule: kill_rule(b.scope, b.status, b.body, b.headers)?,
            }
        }
        Action::Shed => {
            let b: ShedBody = parse_body(body, false)?;
            ControlRequest::Shed {
                shed: Shed::from_percents(b.sheddable_percent, b.default_percent)?,
                expires_in: expires_in(b.expires_in)?,
            }
        }
        Action::Freeze | Action::DryRun => {
            let b: FlagBody = parse_body(body, true)?;
            if !b.enabled && b.expires_in.is_some() {
                return Err(ControlError::field(
                    "expiresIn",
                    "must not be set when `enabled` is false",
                ));
            }
            let expires_in = expires_in(b.expires_in)?;
            if action == Action::Freeze {
                ControlRequest::Freeze {
                    enabled: b.enabled,
                    expires_in,
                }
            } else {
                ControlRequest::DryRun {
                    enabled: b.enabled,
                    expires_in,
                }
            }
        }
        Action::Normal => {
            let _: EmptyBody = parse_body(body, true)?;
            ControlRequest::Normal
        }
    })
}

fn expires_in(value: Option<Millis>) -> Result<Option<Millis>, ControlError> {
    match value {
        Some(d) if d.0 == 0 || d > MAX_EXPIRES_IN => Err(ControlError::field(
            "expiresIn",
            &format!("must be more than 0 and at most 7 days ({MAX_EXPIRES_IN}) (got {d})"),
        )),
        other => Ok(other),
    }
}

/// Strict JSON: one object, no trailing bytes, unknown fields and wrong types named by path.
fn parse_body<T: DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<T, ControlError> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let bytes: &[u8] = if blank && empty_ok { b"{}" } else { body };
    // serde would also read a struct from a JSON array; the protocol is objects only.
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !object {
        return Err(ControlError::new(400, "the body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let message = strip_position(&err.into_inner().to_string());
        // `?`: a syntax error before any field was reached.
        if path == "." || path == "?" {
            ControlError::new(400, format!("the body: {message}"))
        } else {
            ControlError::new(400, format!("`{path}`: {message}"))
        }
    })?;
    de.end().map_err(|err| {
        ControlError::new(
            400,
            format!(
                "the body must hold one JSON object: {}",
                strip_position(&err.to_string())
            ),
        )
    })?;
    Ok(value)
}

/// serde_json appends "at line L column C"; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message.get(..i).unwrap_or(message).to_string(),
        None => message.to_string(),
    }
}

/// What a request changed: the log line and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub action: Action,
    /// The kill rule's scope (`all`, `cluster=<name>`, `pathPrefix=/x header=k:v`).
    pub scope: Option<String>,
    /// What was set: `added, status 503`, `sheddable 50%, default 0%`, `on`, `cleared 3`...
    pub detail: String,
    pub set_by: String,
    pub at: Instant,
    pub expires_at: Option<Instant>,
    /// The generation after the change (unchanged for `status`).
    pub generation: u64,
    /// False for `status`: nothing to store or log.
    pub changed: bool,
}

impl fmt::Display for Change {
    /// One log line: `reflex emergency switch kill scope=cluster=x: added, status 503;
    /// by control 127.0.0.1:5432 at 1700000000000 ms, expires at 1700000600000 ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reflex emergency switch {}", self.action.name())?;
        if let Some(scope) = &self.scope {
            write!(f, " scope={scope}")?;
        }
        write!(
            f,
            ": {}; by {} at {} ms",
            self.detail, self.set_by, self.at.0
        )?;
        match self.expires_at {
            Some(at) => write!(f, ", expires at {} ms", at.0),
            None => write!(f, ", no expiry"),
        }
    }
}

/// Applies a request to the control endpoint's switches (the value in shared data). Expired
/// switches are dropped first, so they neither count towards [`MAX_KILL_RULES`] nor linger.
/// On error `switches` is left as it was.
///
/// - `kill` adds a rule, or replaces the rule with the same scope (keeping its place);
/// - `shed` sets both percents; `freeze`/`dry-run` set the flag, or clear it when
///   `enabled` is false;
/// - `normal` clears every switch (of this source: config switches are untouched);
/// - `status` changes nothing.
pub fn apply(
    switches: &mut Switches,
    request: &ControlRequest,
    set_by: &str,
    now: Instant,
) -> Result<Change, ControlError> {
    let set_by = truncate(set_by, MAX_SET_BY_LEN);
    let mut change = Change {
        action: request.action(),
        scope: None,
        detail: String::new(),
        set_by: set_by.to_string(),
        at: now,
        expires_at: None,
        generation: switches.generation,
        changed: false,
    };
    let expiry = |d: &Option<Millis>| d.map(|d| Instant(now.0.saturating_add(d.0)));
    let meta = |expires_at: Option<Instant>| (set_by.to_string(), now, expires_at);
    let mut next = switches.active(now);
    match request {
        ControlRequest::Status => {
            change.detail = "read".to_string();
            return Ok(change);
        }
        ControlRequest::Kill { rule, expires_in } => {
            change.expires_at = expiry(expires_in);
            change.scope = Some(rule.scope.describe());
            let (set_by, set_at, expires_at) = meta(change.expires_at);
            let entry = Switch {
                value: rule.clone(),
                set_by,
                set_at,
                expires_at,
            };
            let full = next.kill.len() >= MAX_KILL_RULES;
            match next.kill.iter_mut().find(|s| s.value.scope == rule.scope) {
                Some(existing) => {
                    *existing = entry;
                    change.detail = format!("replaced, status {}", rule.status);
                }
                None if full => {
                    return Err(ControlError::new(
                        409,
                        format!(
                            "at most {MAX_KILL_RULES} kill rules may be active: the rule must replace one with the same scope, or wait for one to expire, or clear them with `normal`"
                        ),
                    ));
                }
                None => {
                    next.kill.push(entry);
                    change.detail = format!("added, status {}", rule.status);
                }
            }
        }
        ControlRequest::Shed { shed, expires_in } => {
            change.expires_at = expiry(expires_in);
            let (set_by, set_at, expires_at) = meta(change.expires_at);
            next.shed = Some(Switch {
                value: *shed,
                set_by,
                set_at,
                expires_at,
            });
            change.detail = format!(
                "sheddable {}%, default {}%",
                shed.sheddable_percent, shed.default_percent
            );
        }
        ControlRequest::Freeze {
            enabled,
            expires_in,
        }
        | ControlRequest::DryRun {
            enabled,
            expires_in,
        } => {
            change.expires_at = expiry(expires_in);
            let (set_by, set_at, expires_at) = meta(change.expires_at);
            let value = enabled.then_some(Switch {
                value: (),
                set_by,
                set_at,
                expires_at,
            });
            if matches!(request, ControlRequest::Freeze { .. }) {
                next.freeze = value;
            } else {
                next.dry_run = value;
            }
            change.detail = if *enabled { "on" } else { "off" }.to_string();
        }
        ControlRequest::Normal => {
            let count = next.kill.len()
                + usize::from(next.shed.is_some())
                + usize::from(next.freeze.is_some())
                + usize::from(next.dry_run.is_some());
            next = Switches {
                generation: next.generation,
                ..Switches::default()
            };
            change.detail = format!("cleared {count} switches");
        }
    }
    next.generation = switches.generation.wrapping_add(1);
    change.generation = next.generation;
    change.changed = true;
    *switches = next;
    Ok(change)
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

fn ms(at: Option<Instant>) -> Value {
    at.map_or(Value::Null, |at| json!(at.0))
}

fn scope_value(scope: &KillScope) -> Value {
    match scope {
        KillScope::All => json!({ "all": true }),
        KillScope::Cluster(name) => json!({ "cluster": name }),
        KillScope::Route {
            path_prefix,
            header,
        } => {
            let mut map = Map::new();
            if let Some(prefix) = path_prefix {
                map.insert("pathPrefix".into(), json!(prefix));
            }
            if let Some((name, value)) = header {
                map.insert("header".into(), json!({ "name": name, "value": value }));
            }
            Value::Object(map)
        }
    }
}

fn with_meta<T>(mut fields: Map<String, Value>, s: &Switch<T>, source: &str) -> Value {
    fields.insert("source".into(), json!(source));
    fields.insert("setBy".into(), json!(s.set_by));
    fields.insert("setAtMs".into(), json!(s.set_at.0));
    fields.insert("expiresAtMs".into(), ms(s.expires_at));
    Value::Object(fields)
}

fn kill_value(s: &Switch<KillRule>, source: &str) -> Value {
    let rule = &s.value;
    let headers: Map<String, Value> = rule
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    let mut fields = Map::new();
    fields.insert("scope".into(), scope_value(&rule.scope));
    fields.insert("status".into(), json!(rule.status));
    fields.insert("body".into(), json!(rule.body));
    fields.insert("headers".into(), Value::Object(headers));
    with_meta(fields, s, source)
}

fn shed_value(shed: &Shed) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("sheddablePercent".into(), json!(shed.sheddable_percent));
    fields.insert("defaultPercent".into(), json!(shed.default_percent));
    fields
}

/// The switches in force at `now`, each with its source (`config` or `control`), who set it,
/// when (Unix ms) and until when (`null`: no expiry), and the `effective` combination the
/// filter applies ([`merge`]). The status document can embed this value.
pub fn status_value(local: &Switches, config: &Switches, now: Instant) -> Value {
    let local = local.active(now);
    let config = config.active(now);
    let sources = [("control", &local), ("config", &config)];
    let kill: Vec<Value> = sources
        .iter()
        .flat_map(|(source, s)| s.kill.iter().map(move |k| kill_value(k, source)))
        .collect();
    let shed: Vec<Value> = sources
        .iter()
        .filter_map(|(source, s)| {
            s.shed
                .as_ref()
                .map(|x| with_meta(shed_value(&x.value), x, source))
        })
        .collect();
    let flag = |pick: fn(&Switches) -> &Option<Switch<()>>| -> Vec<Value> {
        sources
            .iter()
            .filter_map(|(source, s)| pick(s).as_ref().map(|x| with_meta(Map::new(), x, source)))
            .collect()
    };
    let merged = merge(&config, &local, now);
    json!({
        "nowMs": now.0,
        "generation": local.generation,
        "effective": {
            "killRules": merged.kill.len(),
            "shed": merged.shed_at(now).map(|s| Value::Object(shed_value(&s))),
            "frozen": merged.frozen(now),
            "dryRun": merged.dry_run(now),
        },
        "kill": kill,
        "shed": shed,
        "freeze": flag(|s| &s.freeze),
        "dryRun": flag(|s| &s.dry_run),
    })
}

/// The answer to `status`: [`status_value`] as JSON text.
pub fn render_status(local: &Switches, config: &Switches, now: Instant) -> String {
    status_value(local, config, now).to_string()
}

/// The answer to a change.
pub fn render_change(change: &Change) -> String {
    json!({
        "ok": true,
        "action": change.action.name(),
        "scope": change.scope,
        "detail": change.detail,
        "setBy": change.set_by,
        "atMs": change.at.0,
        "expiresAtMs": ms(change.expires_at),
        "generation": change.generation,
    })
    .to_string()
}

/// The answer to a refused request (with `error.status` as the HTTP status).
pub fn render_error(error: &ControlError) -> String {
    json!({ "error": error.message }).to_string()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const BY: &str = "control 127.0.0.1:5432";

    fn post(action: &str, body: &str) -> Result<ControlRequest, ControlError> {
        parse_request("POST", &format!("/{action}"), body.as_bytes())
    }

    fn error(action: &str, body: &str) -> ControlError {
        post(action, body).unwrap_err()
    }

    fn run(switches: &mut Switches, action: &str, body: &str, now: u64) -> Change {
        let request = post(action, body).unwrap();
        apply(switches, &request, BY, Instant(now)).unwrap()
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"X123456789abcdef", b"0123456789abcdef"));
        // Prefixes and extensions differ in length only.
        assert!(!constant_time_eq(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef0", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"x", b""));
        assert!(constant_time_eq(b"", b""));
        // A zero byte past the end must not pass for a missing one.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"ab", b"ab\0"));
    }

    #[test]
    fn authorization_needs_the_bearer_scheme_and_the_exact_token() {
        let token = "s3cr3t-t0ken-0123456789";
        assert!(authorized(Some("Bearer s3cr3t-t0ken-0123456789"), token));
        assert!(authorized(Some("bearer  s3cr3t-t0ken-0123456789"), token));
        assert!(!authorized(Some("Bearer s3cr3t-t0ken-012345678"), token));
        assert!(!authorized(Some("Basic s3cr3t-t0ken-0123456789"), token));
        assert!(!authorized(Some("s3cr3t-t0ken-0123456789"), token));
        assert!(!authorized(Some("Bearer"), token));
        assert!(!authorized(Some(""), token));
        assert!(!authorized(None, token));
        assert!(
            !authorized(Some("Bearer "), ""),
            "an empty token opens nothing"
        );
    }

    #[test]
    fn routing_by_action_and_method() {
        assert_eq!(
            parse_request("GET", "/status", b""),
            Ok(ControlRequest::Status)
        );
        assert_eq!(
            parse_request("GET", "/status?pretty", b""),
            Ok(ControlRequest::Status)
        );
        assert_eq!(
            parse_request("POST", "/status", b"{}"),
            Ok(ControlRequest::Status)
        );
        assert_eq!(
            parse_request("DELETE", "/status", b"").unwrap_err().status,
            405
        );
        assert_eq!(parse_request("GET", "/kill", b"").unwrap_err().status, 405);
        let e = parse_request("POST", "/explode", b"{}").unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.message.contains("/dry-run"), "{}", e.message);
        assert_eq!(parse_request("POST", "", b"{}").unwrap_err().status, 404);
        assert_eq!(
            parse_request("POST", "/kill/", b"{}").unwrap_err().status,
            404
        );
        let big = vec![b' '; MAX_REQUEST_BODY + 1];
        assert_eq!(
            parse_request("POST", "/normal", &big).unwrap_err().status,
            413
        );
    }

    #[test]
    fn kill_parses_every_scope_with_defaults() {
        let ControlRequest::Kill { rule, expires_in } =
            post("kill", r#"{"scope": {"all": true}}"#).unwrap()
        else {
            panic!("not a kill")
        };
        assert_eq!(rule, KillRule::new(KillScope::All));
        assert_eq!(expires_in, None);
        let request = post(
            "kill",
            r#"{"scope": {"pathPrefix": "/api", "header": {"name": "x-tenant", "value": "acme"}},
                "status": 429, "body": "later", "headers": {"retry-after": "30"}, "expiresIn": "10m"}"#,
        )
        .unwrap();
        assert_eq!(
            request,
            ControlRequest::Kill {
                rule: KillRule {
                    scope: KillScope::Route {
                        path_prefix: Some("/api".into()),
                        header: Some(("x-tenant".into(), "acme".into())),
                    },
                    status: 429,
                    body: "later".into(),
                    headers: vec![("retry-after".into(), "30".into())],
                },
                expires_in: Some(Millis(600_000)),
            }
        );
        let ControlRequest::Kill { rule, .. } =
            post("kill", r#"{"scope": {"cluster": "outbound|80||pay"}}"#).unwrap()
        else {
            panic!("not a kill")
        };
        assert_eq!(rule.scope, KillScope::Cluster("outbound|80||pay".into()));
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let cases = [
            ("kill", "", "body must be a JSON object"),
            ("kill", "[]", "body must be a JSON object"),
            ("kill", "{", "the body: EOF while parsing"),
            ("kill", "{}", "missing field `scope`"),
            (
                "kill",
                r#"{"scope": {"all": true}, "colour": 1}"#,
                "`colour`: unknown field",
            ),
            (
                "kill",
                r#"{"scope": {"all": true, "cluster": "a"}}"#,
                "`scope` must set exactly one",
            ),
            ("kill", r#"{"scope": {}}"#, "`scope` must set exactly one"),
            (
                "kill",
                r#"{"scope": {"all": false}}"#,
                "`scope.all` must be true",
            ),
            (
                "kill",
                r#"{"scope": {"cluster": "a b"}}"#,
                "`scope.cluster` must",
            ),
            (
                "kill",
                r#"{"scope": {"pathPrefix": "api"}}"#,
                "`scope.pathPrefix` must",
            ),
            (
                "kill",
                r#"{"scope": {"header": {"name": "x"}}}"#,
                "`scope.header`: missing field `value`",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}, "status": 70000}"#,
                "`status` must be an HTTP status",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}, "status": "503"}"#,
                "`status`: invalid type",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}, "status": -1}"#,
                "`status`: invalid value",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}, "headers": {"Retry-After": "1"}}"#,
                "`headers.Retry-After` must",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}, "headers": {"x": 1}}"#,
                "`headers.x`: invalid type",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}, "expiresIn": "10 minutes"}"#,
                "`expiresIn`: expected a duration",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}, "expiresIn": "169h"}"#,
                "`expiresIn` must be more than 0 and at most 7 days",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}, "expiresIn": "0s"}"#,
                "`expiresIn` must be more than 0",
            ),
            (
                "kill",
                r#"{"scope": {"all": true}} {}"#,
                "must hold one JSON object",
            ),
            (
                "shed",
                r#"{"defaultPercent": 5}"#,
                "missing field `sheddablePercent`",
            ),
            (
                "shed",
                r#"{"sheddablePercent": 101}"#,
                "`sheddablePercent` must be between 0 and 100 (got 101)",
            ),
            (
                "shed",
                r#"{"sheddablePercent": 18446744073709551616}"#,
                "`sheddablePercent`",
            ),
            (
                "shed",
                r#"{"sheddablePercent": 50.5}"#,
                "`sheddablePercent`: invalid type",
            ),
            ("freeze", r#"{"enabled": "yes"}"#, "`enabled`: invalid type"),
            (
                "dry-run",
                r#"{"enabled": false, "expiresIn": "1m"}"#,
                "`expiresIn` must not be set",
            ),
            ("normal", r#"{"all": true}"#, "`all`: unknown field"),
        ];
        for (action, body, expected) in cases {
            let e = error(action, body);
            assert_eq!(e.status, 400, "{action} {body}: {e}");
            assert!(
                e.message.contains(expected),
                "{action} {body}: {}",
                e.message
            );
            assert!(!e.message.contains(" at line "), "{}", e.message);
        }
        let long = format!(
            r#"{{"scope": {{"all": true}}, "body": "{}"}}"#,
            "x".repeat(2_000)
        );
        assert!(error("kill", &long)
            .message
            .contains("`body` must be at most"));
    }

    #[test]
    fn kill_adds_replaces_and_is_bounded() {
        let mut s = Switches::default();
        let c = run(
            &mut s,
            "kill",
            r#"{"scope": {"cluster": "a"}, "expiresIn": "1s"}"#,
            1_000,
        );
        assert_eq!(
            (
                c.scope.as_deref(),
                c.detail.as_str(),
                c.expires_at,
                c.generation,
                c.changed
            ),
            (
                Some("cluster=a"),
                "added, status 503",
                Some(Instant(2_000)),
                1,
                true
            )
        );
        assert_eq!(s.kill[0].set_by, BY);
        assert_eq!(s.kill[0].set_at, Instant(1_000));
        run(&mut s, "kill", r#"{"scope": {"all": true}}"#, 1_100);
        let c = run(
            &mut s,
            "kill",
            r#"{"scope": {"cluster": "a"}, "status": 500}"#,
            1_200,
        );
        assert_eq!(c.detail, "replaced, status 500");
        assert_eq!(s.kill.len(), 2);
        assert_eq!((s.kill[0].value.status, s.kill[0].expires_at), (500, None));
        assert_eq!(s.generation, 3);
        // Up to the cap, then refused without touching the switches.
        for i in 2..MAX_KILL_RULES {
            run(
                &mut s,
                "kill",
                &format!(r#"{{"scope": {{"cluster": "c{i}"}}, "expiresIn": "1s"}}"#),
                2_000,
            );
        }
        assert_eq!(s.kill.len(), MAX_KILL_RULES);
        let before = s.clone();
        let request = post("kill", r#"{"scope": {"cluster": "one-too-many"}}"#).unwrap();
        let e = apply(&mut s, &request, BY, Instant(2_500)).unwrap_err();
        assert_eq!(e.status, 409);
        assert_eq!(s, before);
        // Replacing is still allowed at the cap, and expired rules free their slots.
        run(
            &mut s,
            "kill",
            r#"{"scope": {"all": true}, "status": 502}"#,
            2_500,
        );
        run(
            &mut s,
            "kill",
            r#"{"scope": {"cluster": "one-too-many"}}"#,
            3_000,
        );
        assert_eq!(s.kill.len(), 3);
    }

    #[test]
    fn shed_freeze_dry_run_and_normal() {
        let mut s = Switches::default();
        let c = run(
            &mut s,
            "shed",
            r#"{"sheddablePercent": 50, "expiresIn": "5m"}"#,
            1_000,
        );
        assert_eq!(c.detail, "sheddable 50%, default 0%");
        assert_eq!(
            s.shed_at(Instant(1_000)),
            Some(Shed {
                sheddable_percent: 50,
                default_percent: 0
            })
        );
        assert_eq!(s.shed.as_ref().unwrap().expires_at, Some(Instant(301_000)));
        run(&mut s, "freeze", "", 1_000);
        assert!(s.frozen(Instant(u64::MAX)));
        run(&mut s, "freeze", r#"{"expiresIn": "15m"}"#, 1_000);
        assert!(s.frozen(Instant(900_999)) && !s.frozen(Instant(901_000)));
        let c = run(&mut s, "dry-run", r#"{"enabled": true}"#, 1_000);
        assert_eq!(c.detail, "on");
        assert!(s.dry_run(Instant(1_000)));
        let c = run(&mut s, "dry-run", r#"{"enabled": false}"#, 1_000);
        assert_eq!(c.detail, "off");
        assert!(s.dry_run.is_none());
        run(&mut s, "kill", r#"{"scope": {"all": true}}"#, 1_000);
        let c = run(&mut s, "normal", "", 2_000);
        assert_eq!(c.detail, "cleared 3 switches");
        assert!(s.is_idle(Instant(2_000)));
        assert_eq!(s.generation, 7);
        run(&mut s, "normal", "{}", 2_000);
        assert_eq!(s.generation, 8, "every change bumps the generation");
    }

    #[test]
    fn status_changes_nothing() {
        let mut s = Switches::default();
        run(&mut s, "freeze", "", 1_000);
        let before = s.clone();
        let c = apply(&mut s, &ControlRequest::Status, BY, Instant(5)).unwrap();
        assert!(!c.changed);
        assert_eq!(s, before);
        assert!(!ControlRequest::Status.is_change());
    }

    #[test]
    fn set_by_is_bounded() {
        let mut s = Switches::default();
        let long = "é".repeat(200);
        let request = post("freeze", "").unwrap();
        let c = apply(&mut s, &request, &long, Instant(1)).unwrap();
        assert!(c.set_by.len() <= MAX_SET_BY_LEN);
        assert_eq!(s.freeze.unwrap().set_by, c.set_by);
    }

    #[test]
    fn change_renders_as_a_log_line_and_json() {
        let mut s = Switches::default();
        let c = run(
            &mut s,
            "kill",
            r#"{"scope": {"cluster": "a"}, "expiresIn": "10m"}"#,
            1_000,
        );
        assert_eq!(
            c.to_string(),
            "reflex emergency switch kill scope=cluster=a: added, status 503; by control 127.0.0.1:5432 at 1000 ms, expires at 601000 ms"
        );
        let json: Value = serde_json::from_str(&render_change(&c)).unwrap();
        assert_eq!(
            json,
            json!({"ok": true, "action": "kill", "scope": "cluster=a", "detail": "added, status 503",
                   "setBy": BY, "atMs": 1000, "expiresAtMs": 601000, "generation": 1})
        );
        let c = run(&mut s, "normal", "", 2_000);
        assert!(c.to_string().ends_with("at 2000 ms, no expiry"), "{c}");
        let e = error("shed", r#"{"sheddablePercent": 101}"#);
        let json: Value = serde_json::from_str(&render_error(&e)).unwrap();
        assert_eq!(json, json!({"error": e.message}));
    }

    #[test]
    fn status_shows_both_sources_with_provenance() {
        let mut local = Switches::default();
        run(
            &mut local,
            "kill",
            r#"{"scope": {"pathPrefix": "/api", "header": {"name": "x-t", "value": "a"}}, "headers": {"retry-after": "5"}}"#,
            1_000,
        );
        run(
            &mut local,
            "shed",
            r#"{"sheddablePercent": 40, "expiresIn": "1s"}"#,
            1_000,
        );
        let config = Switches {
            shed: Some(Switch {
                value: Shed {
                    sheddable_percent: 10,
                    default_percent: 20,
                },
                set_by: "config".into(),
                set_at: Instant(500),
                expires_at: None,
            }),
            dry_run: Some(Switch {
                value: (),
                set_by: "config".into(),
                set_at: Instant(500),
                expires_at: None,
            }),
            ..Switches::default()
        };
        let doc: Value =
            serde_json::from_str(&render_status(&local, &config, Instant(1_500))).unwrap();
        assert_eq!(
            doc,
            json!({
                "nowMs": 1500,
                "generation": 2,
                "effective": {
                    "killRules": 1,
                    "shed": {"sheddablePercent": 40, "defaultPercent": 20},
                    "frozen": false,
                    "dryRun": true,
                },
                "kill": [{
                    "scope": {"pathPrefix": "/api", "header": {"name": "x-t", "value": "a"}},
                    "status": 503, "body": DEFAULT_KILL_BODY, "headers": {"retry-after": "5"},
                    "source": "control", "setBy": BY, "setAtMs": 1000, "expiresAtMs": null,
                }],
                "shed": [
                    {"sheddablePercent": 40, "defaultPercent": 0, "source": "control",
                     "setBy": BY, "setAtMs": 1000, "expiresAtMs": 2000},
                    {"sheddablePercent": 10, "defaultPercent": 20, "source": "config",
                     "setBy": "config", "setAtMs": 500, "expiresAtMs": null},
                ],
                "freeze": [],
                "dryRun": [{"source": "config", "setBy": "config", "setAtMs": 500, "expiresAtMs": null}],
            })
        );
        // Once the control shed expires, only the config's is shown and in force.
        let doc = status_value(&local, &config, Instant(2_000));
        assert_eq!(doc["shed"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            doc["effective"]["shed"],
            json!({"sheddablePercent": 10, "defaultPercent": 20})
        );
    }
}
