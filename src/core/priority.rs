//! Priority classes of inbound requests: who is shed first when the local service is at its
//! concurrency limit.
//!
//! Three classes, after the criticality levels of Google's request propagation ("Handling
//! Overload", Site Reliability Engineering, ch. 21: CRITICAL / SHEDDABLE) and Envoy's
//! `RoutingPriority`: `critical` (user-facing, must not fail), `default`, and `sheddable`
//! (batch, prefetch, retries of background work).
//!
//! A class does not get a queue of its own; it gets a *share of the limit*. A request is
//! admitted while the requests in flight (of any class) are fewer than `ceil(limit x share)`,
//! with shares `critical = 1 >= default >= sheddable`. As load rises the in-flight count
//! reaches the sheddable share first, so sheddable requests are refused while default and
//! critical ones still get in, then default ones, and critical requests are refused only
//! when the whole limit is in use. This costs nothing per request (one comparison against the
//! shared limit) and needs no per-class state.
//!
//! Classification: the request header (default `x-reflex-priority`) wins when it names a
//! known class; otherwise the longest matching route prefix decides; otherwise `default`.
//! The header wins because the caller knows what a request is for: the same path is
//! critical when a user waits for it and sheddable when it is a prefetch, which is why Google
//! propagates criticality with the request rather than deriving it from the method. Trust
//! model: the header is trusted as set by callers *inside* the mesh. Clients outside the
//! mesh must not be able to set it, so the edge gateway has to strip or overwrite it (as
//! Envoy does with `x-envoy-*` headers from untrusted clients); otherwise any client could
//! mark all of its requests critical and only lose the protection of sheddable traffic, never
//! the limit itself (critical requests are still bounded by the full limit).

/// A request's class, from most to least important.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    Critical,
    #[default]
    Default,
    Sheddable,
}

impl Priority {
    /// The class a name stands for (trimmed, ASCII case-insensitive), `None` if unknown.
    pub fn parse(value: &str) -> Option<Priority> {
        let value = value.trim();
        [Priority::Critical, Priority::Default, Priority::Sheddable]
            .into_iter()
            .find(|p| value.eq_ignore_ascii_case(p.as_str()))
    }

    /// The class named by a header value; absent or unknown values are `Default` (a typo in a
    /// caller must neither promote nor demote its traffic).
    pub fn from_header(value: Option<&str>) -> Priority {
        value.and_then(Priority::parse).unwrap_or_default()
    }

    /// The name used in configuration, headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Default => "default",
            Priority::Sheddable => "sheddable",
        }
    }
}

/// The share of the concurrency limit each class may use. Lower classes stop short of the
/// limit so that the slots above them stay free for more important traffic; critical may
/// overdraw it (share above 1): the limit keeps latency low for the bulk of the traffic,
/// and critical traffic, a small part of it by definition, is still admitted while the
/// service has any capacity, instead of competing for the last slot with its own bursts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorityShares {
    pub critical: f64,
    pub default: f64,
    pub sheddable: f64,
}

impl Default for PriorityShares {
    fn default() -> Self {
        PriorityShares {
            critical: 2.0,
            default: 0.9,
            sheddable: 0.75,
        }
    }
}

impl PriorityShares {
    /// The share for `priority` (`[0, 1]` below critical, `[1, 4]` for critical); a class
    /// never gets more than a more important one, whatever the values (config validates
    /// this; the clamps keep the order anyway).
    pub fn share(&self, priority: Priority) -> f64 {
        let unit = |v: f64| {
            if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                1.0
            }
        };
        let default = unit(self.default);
        match priority {
            Priority::Critical if self.critical.is_finite() => self.critical.clamp(1.0, 4.0),
            Priority::Critical => 1.0,
            Priority::Default => default,
            Priority::Sheddable => unit(self.sheddable).min(default),
        }
    }
}

/// Requests whose path starts with `path_prefix` get `priority` (unless the header says
/// otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityRoute {
    pub path_prefix: String,
    pub priority: Priority,
}

/// The class of one request: a header naming a known class wins; otherwise the route with
/// the longest prefix of `path` (the first of equally long ones), so the order of the rules
/// does not matter; otherwise `Default`. `path` is the request's `:path` as received (a
/// prefix never contains a query, so the query does not get in the way).
pub fn classify(header: Option<&str>, path: &str, routes: &[PriorityRoute]) -> Priority {
    if let Some(p) = header.and_then(Priority::parse) {
        return p;
    }
    let mut best: Option<&PriorityRoute> = None;
    for route in routes {
        let longer = match best {
            Some(b) => route.path_prefix.len() > b.path_prefix.len(),
            None => true,
        };
        if longer && path.starts_with(route.path_prefix.as_str()) {
            best = Some(route);
        }
    }
    best.map_or(Priority::Default, |r| r.priority)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn route(prefix: &str, priority: Priority) -> PriorityRoute {
        PriorityRoute {
            path_prefix: prefix.into(),
            priority,
        }
    }

    #[test]
    fn header_values_are_trimmed_and_case_insensitive() {
        assert_eq!(
            Priority::from_header(Some(" Critical ")),
            Priority::Critical
        );
        assert_eq!(
            Priority::from_header(Some("SHEDDABLE")),
            Priority::Sheddable
        );
        assert_eq!(Priority::from_header(Some("default")), Priority::Default);
        assert_eq!(Priority::from_header(Some("urgent")), Priority::Default);
        assert_eq!(Priority::from_header(Some("")), Priority::Default);
        assert_eq!(
            Priority::from_header(Some("critical-ish")),
            Priority::Default
        );
        assert_eq!(Priority::from_header(None), Priority::Default);
        // Non-ASCII case folding is not applied: "crİtical" is not a class.
        assert_eq!(Priority::from_header(Some("crİtical")), Priority::Default);
        for p in [Priority::Critical, Priority::Default, Priority::Sheddable] {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn shares_keep_critical_whole_and_the_order() {
        let s = PriorityShares::default();
        assert_eq!(s.share(Priority::Critical), 2.0);
        assert_eq!(s.share(Priority::Default), 0.9);
        assert_eq!(s.share(Priority::Sheddable), 0.75);
        let odd = PriorityShares {
            critical: f64::NAN,
            default: 0.5,
            sheddable: 0.8,
        };
        assert_eq!(odd.share(Priority::Sheddable), 0.5);
        assert_eq!(odd.share(Priority::Critical), 1.0);
        let broken = PriorityShares {
            critical: 9.0,
            default: f64::NAN,
            sheddable: -3.0,
        };
        assert_eq!(broken.share(Priority::Critical), 4.0);
        assert_eq!(broken.share(Priority::Default), 1.0);
        assert_eq!(broken.share(Priority::Sheddable), 0.0);
        let over = PriorityShares {
            critical: 0.5,
            default: 7.0,
            sheddable: 2.0,
        };
        assert_eq!(over.share(Priority::Default), 1.0);
        assert_eq!(over.share(Priority::Sheddable), 1.0);
        assert_eq!(over.share(Priority::Critical), 1.0);
    }

    #[test]
    fn longest_route_prefix_wins_regardless_of_order() {
        let routes = [
            route("/", Priority::Sheddable),
            route("/api/checkout", Priority::Critical),
            route("/api", Priority::Default),
            route("/api/checkout", Priority::Sheddable),
        ];
        assert_eq!(
            classify(None, "/api/checkout/pay?x=1", &routes),
            Priority::Critical
        );
        assert_eq!(classify(None, "/api/items", &routes), Priority::Default);
        assert_eq!(
            classify(None, "/static/a.css", &routes),
            Priority::Sheddable
        );
        assert_eq!(classify(None, "/x", &[]), Priority::Default);
        assert_eq!(
            classify(None, "/other", &[route("/api", Priority::Critical)]),
            Priority::Default
        );
    }

    #[test]
    fn a_known_header_wins_over_the_route_and_an_unknown_one_does_not() {
        let routes = [route("/api/checkout", Priority::Critical)];
        assert_eq!(
            classify(Some("sheddable"), "/api/checkout", &routes),
            Priority::Sheddable
        );
        assert_eq!(
            classify(Some("critical"), "/batch", &routes),
            Priority::Critical
        );
        assert_eq!(
            classify(Some("bogus"), "/api/checkout", &routes),
            Priority::Critical
        );
        assert_eq!(
            classify(Some("default"), "/api/checkout", &routes),
            Priority::Default
        );
    }
}
