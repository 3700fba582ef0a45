//! Emergency switches: the operator's hand on the brake, on every worker within seconds.
//!
//! Four switches, each set from the plugin configuration (an Istio push flips it mesh-wide)
//! or from the local control endpoint (`crate::control`, stored in shared data so every
//! worker of this Envoy sees it):
//! - **kill**: requests in a scope (everything, one destination cluster, or a route given by
//!   a path prefix and/or an exact header value) get a local reply instead of going upstream;
//! - **shed**: a share of the requests of each priority class is refused (critical never);
//! - **freeze**: automation stops changing things (no new ejections, trips, limit changes);
//! - **dry-run**: every reflex mechanism decides and counts but does not enforce.
//!
//! Every switch carries who set it (`config`, `control <peer>`), when, and an optional
//! expiry, so that a forgotten switch turns itself off and the status document can say why
//! traffic is refused. Decisions ([`Switches::kill_for`], [`Switches::shed_decision`],
//! [`Switches::frozen`], [`Switches::dry_run`]) ignore expired switches, so nothing has to
//! run at the expiry instant.
//!
//! Shedding is deterministic per request: `fnv1a64(x-request-id) mod 100 < percent`
//! ([`request_hash`]). FNV-1a (Fowler, Noll, Vo; the 64-bit offset basis and prime of the
//! reference) needs no key and no state, so every worker and every build gives the same
//! request id the same answer: a client retrying with the same id is not shed on one attempt
//! and admitted on the next, and a request retried across sidecars of one trace meets the
//! same fate. With ids that are unique (UUIDs), the shed share converges on `percent`.
//!
//! Combining the two sources ([`merge`]): union of kill rules (control rules first, so the
//! operator's latest reply wins when both match), the larger shed percent of each class,
//! freeze and dry-run when either source sets them. A switch never weakens another source's.
//!
//! Shared-data encoding ([`Switches::write`] / [`Switches::read`]) is bounded: at most
//! [`MAX_KILL_RULES`] rules, [`MAX_REPLY_HEADERS`] reply headers per rule, every string capped
//! (see the `MAX_*` constants), and a decoded rule is re-validated, so a corrupt value cannot
//! make a worker allocate without bound or send a malformed reply.

use crate::core::priority::Priority;
use crate::core::time::Instant;
use crate::state::codec::{DecodeError, Reader, Writer};

/// Kill rules one source may hold (the control endpoint enforces it when adding).
pub const MAX_KILL_RULES: usize = 32;
/// Bytes of a kill reply body.
pub const MAX_BODY_LEN: usize = 1024;
/// Headers added to one kill reply.
pub const MAX_REPLY_HEADERS: usize = 8;
pub const MAX_HEADER_NAME_LEN: usize = 128;
pub const MAX_HEADER_VALUE_LEN: usize = 256;
/// Cluster names and path prefixes.
pub const MAX_MATCH_LEN: usize = 256;
/// The `set_by` note (`control [2001:db8::1]:54321` fits many times over).
pub const MAX_SET_BY_LEN: usize = 128;

pub const DEFAULT_KILL_STATUS: u16 = 503;
pub const DEFAULT_KILL_BODY: &str = "killed by reflex emergency switch\n";

/// Which requests a kill rule answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillScope {
    All,
    /// The destination cluster (`xds.cluster_name`), compared exactly.
    Cluster(String),
    /// Both given conditions hold (at least one is set). The prefix is a plain string prefix
    /// of `:path` as Envoy's `prefix` route match does (`/api` also matches `/apix`); the
    /// header value is compared exactly.
    Route {
        path_prefix: Option<String>,
        header: Option<(String, String)>,
    },
}

/// A kill switch: its scope and the local reply it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRule {
    pub scope: KillScope,
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

/// A value with its provenance and lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch<T> {
    pub value: T,
    /// `config`, or `control <peer address>`.
    pub set_by: String,
    pub set_at: Instant,
    /// `None`: until cleared (or, for config, until the configuration changes).
    pub expires_at: Option<Instant>,
}

impl<T> Switch<T> {
    pub fn is_active(&self, now: Instant) -> bool {
        self.expires_at.map_or(true, |at| now < at)
    }
}

/// Shares of each class refused while shedding, in percent (0..=100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shed {
    pub sheddable_percent: u8,
    pub default_percent: u8,
}

impl Shed {
    /// The share of a class refused; critical requests are never shed.
    pub fn percent(&self, class: Priority) -> u8 {
        match class {
            Priority::Critical => 0,
            Priority::Default => self.default_percent.min(100),
            Priority::Sheddable => self.sheddable_percent.min(100),
        }
    }

    /// Validates percents given as wide integers (as JSON carries them).
    pub fn from_percents(sheddable: u64, default: u64) -> Result<Shed, FieldError> {
        let check = |field: &str, value: u64| {
            u8::try_from(value)
                .ok()
                .filter(|v| *v <= 100)
                .ok_or_else(|| {
                    FieldError::new(field, format!("must be between 0 and 100 (got {value})"))
                })
        };
        Ok(Shed {
            sheddable_percent: check("sheddablePercent", sheddable)?,
            default_percent: check("defaultPercent", default)?,
        })
    }
}

/// Every switch of one source (the configuration, or the control endpoint's shared value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Switches {
    pub kill: Vec<Switch<KillRule>>,
    pub shed: Option<Switch<Shed>>,
    pub freeze: Option<Switch<()>>,
    pub dry_run: Option<Switch<()>>,
    /// Bumped on every change through the control endpoint, so a worker can tell a new
    /// value from the one it already decoded.
    pub generation: u64,
}

/// What a kill rule is matched against. `header` looks a request header up by its
/// lowercase name (the adapter passes a closure over the host call), so only rules that
/// name a header cost a lookup.
pub struct RequestFacts<'a> {
    /// The destination cluster, when the route resolved one.
    pub cluster: Option<&'a str>,
    /// `:path`, query included.
    pub path: &'a str,
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

impl KillScope {
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        match self {
            KillScope::All => true,
            KillScope::Cluster(name) => facts.cluster == Some(name.as_str()),
            KillScope::Route {
                path_prefix,
                header,
            } => {
                if path_prefix.is_none() && header.is_none() {
                    // Not constructible through validation; never a kill-everything by accident.
                    return false;
                }
                let path_ok = path_prefix
                    .as_deref()
                    .map_or(true, |prefix| facts.path.starts_with(prefix));
                // The path first: it is free, the header costs a host call.
                path_ok
                    && header.as_ref().map_or(true, |(name, value)| {
                        (facts.header)(name).as_deref() == Some(value.as_str())
                    })
            }
        }
    }

    /// One line for logs and answers: `all`, `cluster=<name>`, `pathPrefix=/x header=k:v`.
    pub fn describe(&self) -> String {
        match self {
            KillScope::All => "all".to_string(),
            KillScope::Cluster(name) => format!("cluster={name}"),
            KillScope::Route {
                path_prefix,
                header,
            } => {
                let mut parts = Vec::new();
                if let Some(prefix) = path_prefix {
                    parts.push(format!("pathPrefix={prefix}"));
                }
                if let Some((name, value)) = header {
                    parts.push(format!("header={name}:{value}"));
                }
                parts.join(" ")
            }
        }
    }

    pub fn check(&self) -> Result<(), FieldError> {
        match self {
            KillScope::All => Ok(()),
            KillScope::Cluster(name) => {
                if name.is_empty()
                    || name.len() > MAX_MATCH_LEN
                    || !name.chars().all(|c| c.is_ascii_graphic())
                {
                    return Err(FieldError::new(
                        "scope.cluster",
                        format!("must be a cluster name of 1 to {MAX_MATCH_LEN} printable ASCII characters (got {name:?})"),
                    ));
                }
                Ok(())
            }
            KillScope::Route {
                path_prefix,
                header,
            } => {
                if path_prefix.is_none() && header.is_none() {
                    return Err(FieldError::new(
                        "scope",
                        "must set `pathPrefix`, `header`, or both for a route scope",
                    ));
                }
                if let Some(prefix) = path_prefix {
                    let ok = prefix.starts_with('/')
                        && prefix.len() <= MAX_MATCH_LEN
                        && prefix.chars().all(|c| c.is_ascii_graphic() && c != '#');
                    if !ok {
                        return Err(FieldError::new(
                            "scope.pathPrefix",
                            format!("must start with `/` and be at most {MAX_MATCH_LEN} printable characters (got {prefix:?})"),
                        ));
                    }
                }
                if let Some((name, value)) = header {
                    check_header_name("scope.header.name", name)?;
                    check_header_value("scope.header.value", value)?;
                }
                Ok(())
            }
        }
    }
}

/// Headers Envoy computes for a local reply; setting them would corrupt the framing.
const RESERVED_HEADERS: [&str; 3] = ["content-length", "transfer-encoding", "connection"];

fn check_header_name(field: &str, name: &str) -> Result<(), FieldError> {
    let token =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.chars().all(token) {
        return Err(FieldError::new(
            field,
            format!("must be a lowercase HTTP header name of at most {MAX_HEADER_NAME_LEN} characters (got {name:?})"),
        ));
    }
    Ok(())
}

fn check_header_value(field: &str, value: &str) -> Result<(), FieldError> {
    // No CR, LF or NUL: a header value must never split into another header.
    let visible = |c: char| c == '\t' || (' '..='~').contains(&c);
    if value.len() > MAX_HEADER_VALUE_LEN || !value.chars().all(visible) {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_HEADER_VALUE_LEN} printable ASCII characters"),
        ));
    }
    Ok(())
}

impl KillRule {
    /// A rule with the default reply (503, [`DEFAULT_KILL_BODY`], no extra headers).
    pub fn new(scope: KillScope) -> Self {
        KillRule {
            scope,
            status: DEFAULT_KILL_STATUS,
            body: DEFAULT_KILL_BODY.to_string(),
            headers: Vec::new(),
        }
    }

    /// Checks every bound; the field in the error is relative to the rule's JSON object.
    pub fn check(&self) -> Result<(), FieldError> {
        self.scope.check()?;
        if !(200..=599).contains(&self.status) {
            return Err(FieldError::new(
                "status",
                format!(
                    "must be an HTTP status between 200 and 599 (got {})",
                    self.status
                ),
            ));
        }
        if self.body.len() > MAX_BODY_LEN {
            return Err(FieldError::new(
                "body",
                format!(
                    "must be at most {MAX_BODY_LEN} bytes (got {})",
                    self.body.len()
                ),
            ));
        }
        if self.headers.len() > MAX_REPLY_HEADERS {
            return Err(FieldError::new(
                "headers",
                format!(
                    "must hold at most {MAX_REPLY_HEADERS} headers (got {})",
                    self.headers.len()
                ),
            ));
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            check_header_name(&field, name)?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(FieldError::new(
                    &field,
                    "must not be set: Envoy computes it for the local reply",
                ));
            }
            check_header_value(&field, value)?;
        }
        Ok(())
    }
}

/// A rejected value: the field (relative to the object being checked, e.g. `scope.cluster`)
/// and the rule it broke (containing "must"). The config and the control endpoint prefix the
/// field with their own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub rule: String,
}

impl FieldError {
    pub fn new(field: &str, rule: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            rule: rule.into(),
        }
    }
}

/// FNV-1a 64 of the request id: stable across workers, builds and architectures.
pub fn request_hash(id: &str) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    id.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// Whether a request with this hash falls in the shed share `percent` (0..=100).
pub fn shed_by_percent(percent: u8, request_hash: u64) -> bool {
    request_hash % 100 < u64::from(percent.min(100))
}

impl Switches {
    /// The switches still in force at `now` (generation kept).
    pub fn active(&self, now: Instant) -> Switches {
        Switches {
            kill: self
                .kill
                .iter()
                .filter(|s| s.is_active(now))
                .cloned()
                .collect(),
            shed: self.shed.clone().filter(|s| s.is_active(now)),
            freeze: self.freeze.clone().filter(|s| s.is_active(now)),
            dry_run: self.dry_run.clone().filter(|s| s.is_active(now)),
            generation: self.generation,
        }
    }

    /// Nothing set (or everything expired at `now`).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.kill_rules(now).next().is_none()
            && self.shed_at(now).is_none()
            && !self.frozen(now)
            && !self.dry_run(now)
    }

    fn kill_rules(&self, now: Instant) -> impl Iterator<Item = &KillRule> {
        self.kill
            .iter()
            .filter(move |s| s.is_active(now))
            .map(|s| &s.value)
    }

    /// The first active rule whose scope matches the request (list order).
    pub fn kill_for(&self, now: Instant, facts: &RequestFacts<'_>) -> Option<&KillRule> {
        self.kill_rules(now).find(|rule| rule.scope.matches(facts))
    }

    /// The shed percents in force, if any.
    pub fn shed_at(&self, now: Instant) -> Option<Shed> {
        self.shed
            .as_ref()
            .filter(|s| s.is_active(now))
            .map(|s| s.value)
    }

    /// Whether to refuse this request: `request_hash % 100 < percent of its class`.
    pub fn shed_decision(&self, now: Instant, class: Priority, request_hash: u64) -> bool {
        self.shed_at(now)
            .is_some_and(|shed| shed_by_percent(shed.percent(class), request_hash))
    }

    pub fn frozen(&self, now: Instant) -> bool {
        self.freeze.as_ref().is_some_and(|s| s.is_active(now))
    }

    pub fn dry_run(&self, now: Instant) -> bool {
        self.dry_run.as_ref().is_some_and(|s| s.is_active(now))
    }

    /// No switch at all (whatever the generation).
    pub fn is_empty(&self) -> bool {
        self.kill.is_empty()
            && self.shed.is_none()
            && self.freeze.is_none()
            && self.dry_run.is_none()
    }

    /// Sets `set_at` of every switch (the config's switches are parsed without a clock; the
    /// adapter stamps them with the configure time).
    pub fn stamped(mut self, at: Instant) -> Switches {
        for s in &mut self.kill {
            s.set_at = at;
        }
        if let Some(s) = &mut self.shed {
            s.set_at = at;
        }
        if let Some(s) = &mut self.freeze {
            s.set_at = at;
        }
        if let Some(s) = &mut self.dry_run {
            s.set_at = at;
        }
        self
    }

    /// Shared-data encoding. At most [`MAX_KILL_RULES`] rules are written (a merged value may
    /// hold more; it is never stored).
    pub fn write(&self, w: &mut Writer) {
        w.u64(self.generation);
        let rules: Vec<_> = self.kill.iter().take(MAX_KILL_RULES).collect();
        w.u8(rules.len() as u8);
        for s in rules {
            write_meta(w, s);
            write_rule(w, &s.value);
        }
        match &self.shed {
            Some(s) => {
                w.u8(1);
                write_meta(w, s);
                w.u8(s.value.sheddable_percent);
                w.u8(s.value.default_percent);
            }
            None => w.u8(0),
        }
        for flag in [&self.freeze, &self.dry_run] {
            match flag {
                Some(s) => {
                    w.u8(1);
                    write_meta(w, s);
                }
                None => w.u8(0),
            }
        }
    }

    pub fn read(r: &mut Reader) -> Result<Switches, DecodeError> {
        let generation = r.u64()?;
        let count = usize::from(r.u8()?);
        if count > MAX_KILL_RULES {
            return Err(DecodeError::TooLong);
        }
        let mut kill = Vec::with_capacity(count);
        for _ in 0..count {
            let (set_by, set_at, expires_at) = read_meta(r)?;
            let value = read_rule(r)?;
            kill.push(Switch {
                value,
                set_by,
                set_at,
                expires_at,
            });
        }
        let shed = match r.u8()? {
            0 => None,
            1 => {
                let (set_by, set_at, expires_at) = read_meta(r)?;
                let value = Shed::from_percents(u64::from(r.u8()?), u64::from(r.u8()?))
                    .map_err(|_| DecodeError::BadValue)?;
                Some(Switch {
                    value,
                    set_by,
                    set_at,
                    expires_at,
                })
            }
            _ => return Err(DecodeError::BadValue),
        };
        let mut flag = || -> Result<Option<Switch<()>>, DecodeError> {
            match r.u8()? {
                0 => Ok(None),
                1 => {
                    let (set_by, set_at, expires_at) = read_meta(r)?;
                    Ok(Some(Switch {
                        value: (),
                        set_by,
                        set_at,
                        expires_at,
                    }))
                }
                _ => Err(DecodeError::BadValue),
            }
        };
        let freeze = flag()?;
        let dry_run = flag()?;
        Ok(Switches {
            kill,
            shed,
            freeze,
            dry_run,
            generation,
        })
    }
}

/// Combines the configuration's switches with the control endpoint's, as they stand at `now`
/// (expired switches of either side are dropped first, so the result is a snapshot for
/// decisions at `now`; the adapter merges again on each request, which is cheap):
/// - kill: the union, control rules first (the first match decides the reply);
/// - shed: the larger percent of each class; the metadata is the control switch's when it
///   contributes (it is the operator's latest word), and the earliest expiry of the two;
/// - freeze, dry-run: on when either source sets them (control's switch shown when both);
/// - generation: the control value's.
///
/// A source can only add restrictions: an operator cannot lift a config kill from the
/// control endpoint (`normal` clears control switches only), and a config push cannot
/// undo what the operator set locally.
pub fn merge(config: &Switches, local: &Switches, now: Instant) -> Switches {
    let config = config.active(now);
    let local = local.active(now);
    let mut kill = local.kill;
    kill.extend(config.kill);
    let shed = match (local.shed, config.shed) {
        (Some(l), Some(c)) => Some(Switch {
            value: Shed {
                sheddable_percent: l.value.sheddable_percent.max(c.value.sheddable_percent),
                default_percent: l.value.default_percent.max(c.value.default_percent),
            },
            expires_at: match (l.expires_at, c.expires_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            set_by: l.set_by,
            set_at: l.set_at,
        }),
        (l, c) => l.or(c),
    };
    Switches {
        kill,
        shed,
        freeze: local.freeze.or(config.freeze),
        dry_run: local.dry_run.or(config.dry_run),
        generation: local.generation,
    }
}

fn write_text(w: &mut Writer, text: &str, max: usize) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = text.as_bytes().get(..end).unwrap_or_default();
    w.u16(bytes.len() as u16);
    for &b in bytes {
        w.u8(b);
    }
}

fn read_text(r: &mut Reader, max: usize) -> Result<String, DecodeError> {
    let len = usize::from(r.u16()?);
    if len > max {
        return Err(DecodeError::TooLong);
    }
    let mut bytes = Vec::with_capacity(len);
    for _ in 0..len {
        bytes.push(r.u8()?);
    }
    String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)
}

fn write_meta<T>(w: &mut Writer, s: &Switch<T>) {
    write_text(w, &s.set_by, MAX_SET_BY_LEN);
    w.u64(s.set_at.0);
    match s.expires_at {
        Some(at) => {
            w.u8(1);
            w.u64(at.0);
        }
        None => w.u8(0),
    }
}

fn read_meta(r: &mut Reader) -> Result<(String, Instant, Option<Instant>), DecodeError> {
    let set_by = read_text(r, MAX_SET_BY_LEN)?;
    let set_at = Instant(r.u64()?);
    let expires_at = match r.u8()? {
        0 => None,
        1 => Some(Instant(r.u64()?)),
        _ => return Err(DecodeError::BadValue),
    };
    Ok((set_by, set_at, expires_at))
}

fn write_opt_text(w: &mut Writer, text: Option<&str>, max: usize) {
    match text {
        Some(t) => {
            w.u8(1);
            write_text(w, t, max);
        }
        None => w.u8(0),
    }
}

fn read_opt_text(r: &mut Reader, max: usize) -> Result<Option<String>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => read_text(r, max).map(Some),
        _ => Err(DecodeError::BadValue),
    }
}

fn write_rule(w: &mut Writer, rule: &KillRule) {
    match &rule.scope {
        KillScope::All => w.u8(0),
        KillScope::Cluster(name) => {
            w.u8(1);
            write_text(w, name, MAX_MATCH_LEN);
        }
        KillScope::Route {
            path_prefix,
            header,
        } => {
            w.u8(2);
            write_opt_text(w, path_prefix.as_deref(), MAX_MATCH_LEN);
            match header {
                Some((name, value)) => {
                    w.u8(1);
                    write_text(w, name, MAX_HEADER_NAME_LEN);
                    write_text(w, value, MAX_HEADER_VALUE_LEN);
                }
                None => w.u8(0),
            }
        }
    }
    w.u16(rule.status);
    write_text(w, &rule.body, MAX_BODY_LEN);
    let headers: Vec<_> = rule.headers.iter().take(MAX_REPLY_HEADERS).collect();
    w.u8(headers.len() as u8);
    for (name, value) in headers {
        write_text(w, name, MAX_HEADER_NAME_LEN);
        write_text(w, value, MAX_HEADER_VALUE_LEN);
    }
}

fn read_rule(r: &mut Reader) -> Result<KillRule, DecodeError> {
    let scope = match r.u8()? {
        0 => KillScope::All,
        1 => KillScope::Cluster(read_text(r, MAX_MATCH_LEN)?),
        2 => {
            let path_prefix = read_opt_text(r, MAX_MATCH_LEN)?;
            let header = match r.u8()? {
                0 => None,
                1 => Some((
                    read_text(r, MAX_HEADER_NAME_LEN)?,
                    read_text(r, MAX_HEADER_VALUE_LEN)?,
                )),
                _ => return Err(DecodeError::BadValue),
            };
            KillScope::Route {
                path_prefix,
                header,
            }
        }
        _ => return Err(DecodeError::BadValue),
    };
    let status = r.u16()?;
    let body = read_text(r, MAX_BODY_LEN)?;
    let count = usize::from(r.u8()?);
    if count > MAX_REPLY_HEADERS {
        return Err(DecodeError::TooLong);
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        headers.push((
            read_text(r, MAX_HEADER_NAME_LEN)?,
            read_text(r, MAX_HEADER_VALUE_LEN)?,
        ));
    }
    let rule = KillRule {
        scope,
        status,
        body,
        headers,
    };
    // A value that decodes but breaks a rule (another build, corruption) must not become a
    // malformed local reply.
    rule.check().map_err(|_| DecodeError::BadValue)?;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn switch<T>(value: T, expires_at: Option<u64>) -> Switch<T> {
        Switch {
            value,
            set_by: "control 127.0.0.1:5432".to_string(),
            set_at: Instant(1_000),
            expires_at: expires_at.map(Instant),
        }
    }

    fn no_headers(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_means_no_switch_whatever_the_generation() {
        let mut s = Switches {
            generation: 7,
            ..Switches::default()
        };
        assert!(s.is_empty());
        s.freeze = Some(switch((), None));
        assert!(!s.is_empty());
    }

    fn facts<'a>(
        cluster: Option<&'a str>,
        path: &'a str,
        header: &'a dyn Fn(&str) -> Option<String>,
    ) -> RequestFacts<'a> {
        RequestFacts {
            cluster,
            path,
            header,
        }
    }

    fn route(prefix: Option<&str>, header: Option<(&str, &str)>) -> KillScope {
        KillScope::Route {
            path_prefix: prefix.map(str::to_string),
            header: header.map(|(n, v)| (n.to_string(), v.to_string())),
        }
    }

    fn full() -> Switches {
        let mut rule = KillRule::new(route(Some("/api"), Some(("x-tenant", "acme"))));
        rule.status = 429;
        rule.body = "slow down é\n".to_string();
        rule.headers = vec![("retry-after".into(), "30".into())];
        Switches {
            kill: vec![
                switch(KillRule::new(KillScope::All), Some(9_000)),
                switch(
                    KillRule::new(KillScope::Cluster("outbound|80||a".into())),
                    None,
                ),
                switch(rule, None),
            ],
            shed: Some(switch(
                Shed {
                    sheddable_percent: 50,
                    default_percent: 10,
                },
                Some(5_000),
            )),
            freeze: Some(switch((), None)),
            dry_run: Some(switch((), Some(7_000))),
            generation: 42,
        }
    }

    fn encode(s: &Switches) -> Vec<u8> {
        let mut w = Writer::new();
        s.write(&mut w);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Switches, DecodeError> {
        Switches::read(&mut Reader::new(bytes)?)
    }

    #[test]
    fn scopes_match_what_they_name() {
        let tenant = |name: &str| (name == "x-tenant").then(|| "acme".to_string());
        let other = |name: &str| (name == "x-tenant").then(|| "acme2".to_string());
        let req = facts(Some("outbound|80||a"), "/api/v1?q=1", &tenant);
        assert!(KillScope::All.matches(&req));
        assert!(KillScope::Cluster("outbound|80||a".into()).matches(&req));
        assert!(!KillScope::Cluster("outbound|80||b".into()).matches(&req));
        assert!(!KillScope::Cluster("outbound|80||a".into()).matches(&facts(
            None,
            "/",
            &no_headers
        )));
        assert!(route(Some("/api"), None).matches(&req));
        assert!(!route(Some("/apx"), None).matches(&req));
        assert!(route(None, Some(("x-tenant", "acme"))).matches(&req));
        assert!(route(Some("/api"), Some(("x-tenant", "acme"))).matches(&req));
        // Both conditions must hold; header values compare exactly.
        assert!(!route(Some("/other"), Some(("x-tenant", "acme"))).matches(&req));
        assert!(!route(None, Some(("x-tenant", "acme"))).matches(&facts(None, "/api", &other)));
        assert!(!route(None, Some(("x-tenant", "acme"))).matches(&facts(
            None,
            "/api",
            &no_headers
        )));
        // An empty route scope never matches (and never validates).
        assert!(!route(None, None).matches(&req));
        assert!(route(None, None).check().is_err());
    }

    #[test]
    fn the_header_is_not_looked_up_when_the_path_already_fails() {
        let calls = std::cell::Cell::new(0);
        let counting = |_: &str| {
            calls.set(calls.get() + 1);
            Some("acme".to_string())
        };
        let scope = route(Some("/api"), Some(("x-tenant", "acme")));
        assert!(!scope.matches(&facts(None, "/web", &counting)));
        assert_eq!(calls.get(), 0);
        assert!(scope.matches(&facts(None, "/api", &counting)));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn kill_for_takes_the_first_active_match() {
        let s = full();
        let req = facts(Some("outbound|80||a"), "/api", &no_headers);
        // The `all` rule expires at 9 000: before, it answers; at 9 000 the cluster rule does.
        assert_eq!(
            s.kill_for(Instant(8_999), &req).map(|r| &r.scope),
            Some(&KillScope::All)
        );
        assert_eq!(
            s.kill_for(Instant(9_000), &req).map(|r| &r.scope),
            Some(&KillScope::Cluster("outbound|80||a".into()))
        );
        let elsewhere = facts(Some("outbound|80||z"), "/web", &no_headers);
        assert!(s.kill_for(Instant(9_000), &elsewhere).is_none());
    }

    #[test]
    fn expired_switches_are_inert_and_dropped() {
        let s = full();
        assert!(s.frozen(Instant(1_000_000)));
        assert!(s.dry_run(Instant(6_999)));
        assert!(!s.dry_run(Instant(7_000)));
        assert_eq!(
            s.shed_at(Instant(4_999)).map(|x| x.sheddable_percent),
            Some(50)
        );
        assert_eq!(s.shed_at(Instant(5_000)), None);
        let later = s.active(Instant(9_000));
        assert_eq!(later.kill.len(), 2);
        assert!(later.shed.is_none() && later.dry_run.is_none());
        assert!(later.freeze.is_some());
        assert_eq!(later.generation, 42);
        assert!(!later.is_idle(Instant(9_000)));
        assert!(Switches::default().is_idle(Instant(0)));
    }

    #[test]
    fn shedding_spares_critical_and_follows_the_class_percent() {
        let s = full();
        let now = Instant(1_000);
        for hash in [0u64, 9, 10, 49, 50, 99, u64::MAX] {
            assert!(!s.shed_decision(now, Priority::Critical, hash));
            assert_eq!(
                s.shed_decision(now, Priority::Default, hash),
                hash % 100 < 10,
                "{hash}"
            );
            assert_eq!(
                s.shed_decision(now, Priority::Sheddable, hash),
                hash % 100 < 50,
                "{hash}"
            );
        }
        assert!(!s.shed_decision(Instant(5_000), Priority::Sheddable, 0));
        assert!(shed_by_percent(100, 99));
        assert!(!shed_by_percent(0, 0));
        assert!(shed_by_percent(200, 99), "percent is clamped, not wrapped");
    }

    #[test]
    fn request_hash_is_fnv1a_64() {
        // Reference vectors of the FNV specification.
        assert_eq!(request_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(request_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(request_hash("foobar"), 0x8594_4171_f739_67e8);
        let id = "9b2c1e7a-4f0d-4b8e-a1c3-5d6e7f809a1b";
        assert_eq!(request_hash(id), request_hash(id));
        assert_ne!(
            request_hash(id),
            request_hash("9b2c1e7a-4f0d-4b8e-a1c3-5d6e7f809a1c")
        );
    }

    #[test]
    fn hash_share_converges_on_the_percent() {
        // UUID-shaped ids from a fixed generator, and plain sequential ids.
        let mut rng = crate::core::rng::SplitMix64::new(7);
        use crate::core::rng::Rng;
        let uuids: Vec<String> = (0..10_000)
            .map(|_| {
                let a = rng.next_u64();
                let b = rng.next_u64();
                format!(
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    b >> 52,
                    b & 0xffff_ffff_ffff
                )
            })
            .collect();
        let sequential: Vec<String> = (0..10_000).map(|i| format!("req-{i}")).collect();
        for ids in [&uuids, &sequential] {
            for percent in [10u8, 50, 90] {
                let shed = ids
                    .iter()
                    .filter(|id| shed_by_percent(percent, request_hash(id)))
                    .count();
                let expected = usize::from(percent) * 100;
                assert!(
                    shed.abs_diff(expected) <= 300,
                    "{percent}%: {shed} of 10000"
                );
            }
        }
    }

    #[test]
    fn merge_adds_restrictions_from_both_sources() {
        let now = Instant(1_000);
        let config = Switches {
            kill: vec![switch(KillRule::new(KillScope::Cluster("c".into())), None)],
            shed: Some(Switch {
                set_by: "config".into(),
                ..switch(
                    Shed {
                        sheddable_percent: 20,
                        default_percent: 30,
                    },
                    None,
                )
            }),
            freeze: None,
            dry_run: Some(switch((), None)),
            generation: 0,
        };
        let mut local = full();
        local.kill.truncate(1);
        let merged = merge(&config, &local, now);
        assert_eq!(merged.kill.len(), 2);
        assert_eq!(
            merged.kill[0].value.scope,
            KillScope::All,
            "control rules first"
        );
        assert_eq!(
            merged.shed_at(now),
            Some(Shed {
                sheddable_percent: 50,
                default_percent: 30
            })
        );
        assert_eq!(
            merged.shed.as_ref().unwrap().expires_at,
            Some(Instant(5_000))
        );
        assert!(merged.frozen(now) && merged.dry_run(now));
        assert_eq!(merged.generation, 42);
        // After the control switches expire, the config ones remain in force.
        let later = merge(&config, &local, Instant(9_000));
        assert_eq!(later.kill.len(), 1);
        assert_eq!(
            later.shed_at(Instant(9_000)).map(|s| s.default_percent),
            Some(30)
        );
        assert_eq!(later.shed.as_ref().unwrap().set_by, "config");
        assert!(later.dry_run(Instant(9_000)));
        // Nothing on either side: nothing merged.
        let none = merge(&Switches::default(), &Switches::default(), now);
        assert!(none.is_idle(now));
    }

    #[test]
    fn switches_round_trip() {
        for s in [Switches::default(), full()] {
            assert_eq!(decode(&encode(&s)), Ok(s));
        }
    }

    #[test]
    fn decoding_is_bounded_and_checked() {
        let bytes = encode(&full());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        // A rule count above the cap is refused before anything is allocated.
        let mut w = Writer::new();
        w.u64(1);
        w.u8(33);
        assert_eq!(decode(&w.finish()), Err(DecodeError::TooLong));
        // A body length above the cap.
        let mut w = Writer::new();
        w.u64(1);
        w.u8(1);
        write_meta(&mut w, &switch((), None));
        w.u8(0);
        w.u16(503);
        w.u16(u16::MAX);
        assert_eq!(decode(&w.finish()), Err(DecodeError::TooLong));
        // A percent above 100 and a status outside 200..=599 decode as bad values.
        let mut s = full();
        s.shed.as_mut().unwrap().value.default_percent = 101;
        assert_eq!(decode(&encode(&s)), Err(DecodeError::BadValue));
        let mut s = full();
        s.kill[0].value.status = 700;
        assert_eq!(decode(&encode(&s)), Err(DecodeError::BadValue));
    }

    #[test]
    fn writing_caps_the_rule_list_and_long_strings() {
        let mut s = Switches::default();
        for i in 0..40 {
            s.kill.push(switch(
                KillRule::new(KillScope::Cluster(format!("c{i}"))),
                None,
            ));
        }
        s.kill[0].set_by = "é".repeat(MAX_SET_BY_LEN);
        let decoded = decode(&encode(&s)).unwrap();
        assert_eq!(decoded.kill.len(), MAX_KILL_RULES);
        assert!(decoded.kill[0].set_by.len() <= MAX_SET_BY_LEN);
        assert_eq!(
            decoded.kill[31].value.scope,
            KillScope::Cluster("c31".into())
        );
    }

    #[test]
    fn rule_checks_name_the_field() {
        let field = |rule: KillRule| rule.check().unwrap_err().field;
        let mut r = KillRule::new(KillScope::All);
        assert_eq!(r.check(), Ok(()));
        r.status = 199;
        assert_eq!(field(r.clone()), "status");
        r.status = 200;
        r.body = "x".repeat(MAX_BODY_LEN + 1);
        assert_eq!(field(r.clone()), "body");
        r.body.clear();
        r.headers = vec![("content-length".into(), "3".into())];
        assert_eq!(field(r.clone()), "headers.content-length");
        r.headers = vec![("X-Up".into(), "1".into())];
        assert_eq!(field(r.clone()), "headers.X-Up");
        r.headers = vec![("x-a".into(), "1\r\nx-b: 2".into())];
        assert_eq!(field(r.clone()), "headers.x-a");
        r.headers = (0..9).map(|i| (format!("x-{i}"), String::new())).collect();
        assert_eq!(field(r), "headers");
        assert_eq!(
            field(KillRule::new(KillScope::Cluster(String::new()))),
            "scope.cluster"
        );
        assert_eq!(
            field(KillRule::new(route(Some("api"), None))),
            "scope.pathPrefix"
        );
        assert_eq!(
            field(KillRule::new(route(None, Some(("X", "v"))))),
            "scope.header.name"
        );
        assert!(KillRule::new(route(Some("/a"), Some(("x", ""))))
            .check()
            .is_ok());
        let e = Shed::from_percents(101, 0).unwrap_err();
        assert_eq!(e.field, "sheddablePercent");
        assert!(e.rule.contains("must"));
        assert_eq!(
            Shed::from_percents(0, 1 << 40).unwrap_err().field,
            "defaultPercent"
        );
    }

    #[test]
    fn config_switches_are_stamped_at_configure_time() {
        let s = full().stamped(Instant(77));
        assert!(s.kill.iter().all(|k| k.set_at == Instant(77)));
        assert_eq!(s.freeze.unwrap().set_at, Instant(77));
    }
}
