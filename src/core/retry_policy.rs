//! What may be retried, on which conditions, and when a server asks to be left alone.
//!
//! - Eligibility ([`plan`]): a request is retried only if repeating it is safe. RFC 9110
//!   §9.2.2 defines the idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE); any
//!   other method (POST, PATCH, ...) is retried only when an operator rule names the route
//!   and the method, declaring that the application made it safe (e.g. with idempotency
//!   keys). Method names are case-sensitive (RFC 9110 §9.1), so `get` is not GET.
//! - Conditions ([`RetryCondition`]): the subset of Envoy's `x-envoy-retry-on` policies that
//!   reflex sets, by their Envoy names, joined by commas as Envoy reads the header.
//! - `Retry-After` ([`parse_retry_after`]): RFC 9110 §10.2.3, either delta-seconds (digits
//!   only) or an HTTP-date in the preferred IMF-fixdate form (§5.6.7). The obsolete RFC 850
//!   and asctime forms are not accepted (they are "anything else": `None`). The epoch day of
//!   a civil date is computed with Howard Hinnant's `days_from_civil` algorithm
//!   ("chrono-Compatible Low-Level Date Algorithms"). Waits are capped at one day so that a
//!   confused server cannot park a destination for longer.

use crate::config::Millis;
use crate::core::time::Instant;

/// Whether repeating the method is safe by definition (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// A failure Envoy may retry on (`x-envoy-retry-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCondition {
    /// Any 5xx response, and the gateway failures below.
    ServerError,
    /// 502, 503, 504, resets and connect failures.
    GatewayError,
    /// No response at all: disconnect, reset, read timeout.
    Reset,
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM: the endpoint did not process the request.
    RefusedStream,
    /// The codes listed in `x-envoy-retriable-status-codes`.
    RetriableStatusCodes,
}

impl RetryCondition {
    pub const ALL: [RetryCondition; 6] = [
        RetryCondition::ServerError,
        RetryCondition::GatewayError,
        RetryCondition::Reset,
        RetryCondition::ConnectFailure,
        RetryCondition::RefusedStream,
        RetryCondition::RetriableStatusCodes,
    ];

    /// The policy's name in Envoy's `x-envoy-retry-on`.
    pub fn envoy_name(self) -> &'static str {
        match self {
            RetryCondition::ServerError => "5xx",
            RetryCondition::GatewayError => "gateway-error",
            RetryCondition::Reset => "reset",
            RetryCondition::ConnectFailure => "connect-failure",
            RetryCondition::RefusedStream => "refused-stream",
            RetryCondition::RetriableStatusCodes => "retriable-status-codes",
        }
    }

    pub fn from_envoy_name(name: &str) -> Option<RetryCondition> {
        Self::ALL.into_iter().find(|c| c.envoy_name() == name)
    }
}

/// The value of `x-envoy-retry-on`: the Envoy names joined by commas.
pub fn retry_on_header(conditions: &[RetryCondition]) -> String {
    let names: Vec<&str> = conditions.iter().map(|c| c.envoy_name()).collect();
    names.join(",")
}

/// The value of `x-envoy-retriable-status-codes`: the codes joined by commas.
pub fn status_codes_header(codes: &[u16]) -> String {
    let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
    codes.join(",")
}

/// Which requests an operator rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// `:path` starts with this (a plain string prefix, as Envoy's route `prefix` match).
    PathPrefix(String),
    /// Envoy's route name (`xds.route_name`) equals this.
    RouteName(String),
}

/// Non-idempotent methods that may be retried on the requests a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub matcher: RouteMatch,
    pub methods: Vec<String>,
}

impl RouteRule {
    pub fn matches(&self, method: &str, path: &str, route_name: Option<&str>) -> bool {
        let hit = match &self.matcher {
            RouteMatch::PathPrefix(prefix) => path.starts_with(prefix.as_str()),
            RouteMatch::RouteName(name) => route_name == Some(name.as_str()),
        };
        hit && self.methods.iter().any(|m| m == method)
    }
}

/// Whether a request may be retried at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// Idempotent, or allowed by a route rule: reserve retries and set the headers.
    Eligible,
    /// Not safe to repeat: allow no retries (`x-envoy-max-retries: 0`).
    NonIdempotent,
    /// Retries are off for the destination: leave Envoy's route policy alone.
    Disabled,
}

/// Decides eligibility from the method, the request path, Envoy's route name (when known),
/// whether retries are enabled for the destination, and its route rules.
pub fn plan(
    method: &str,
    path: &str,
    route_name: Option<&str>,
    enabled: bool,
    routes: &[RouteRule],
) -> Eligibility {
    if !enabled {
        Eligibility::Disabled
    } else if is_idempotent(method) || routes.iter().any(|r| r.matches(method, path, route_name)) {
        Eligibility::Eligible
    } else {
        Eligibility::NonIdempotent
    }
}

/// Longest wait a `Retry-After` may ask for.
pub const MAX_RETRY_AFTER: Millis = Millis(24 * 3600 * 1000);

/// Parses a `Retry-After` value into the wait from `now`: delta-seconds or an IMF-fixdate
/// (a date in the past is a wait of zero), capped at [`MAX_RETRY_AFTER`]; `None` for
/// anything else.
pub fn parse_retry_after(value: &str, now: Instant) -> Option<Millis> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Only overflow can make the parse fail, and that is beyond the cap anyway.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Millis(
            secs.min(MAX_RETRY_AFTER.0 / 1000).saturating_mul(1000),
        ));
    }
    let at = imf_fixdate_ms(value)?;
    let now = i64::try_from(now.0).unwrap_or(i64::MAX);
    let wait = at.saturating_sub(now).max(0);
    Some(Millis((wait as u64).min(MAX_RETRY_AFTER.0)))
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A fixed-width run of ASCII digits.
fn digits(s: &str, at: usize, len: usize) -> Option<i64> {
    let part = s.get(at..at + len)?;
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` as milliseconds since the epoch. The day name must be a
/// day name but is not checked against the date: it carries no information.
fn imf_fixdate_ms(s: &str) -> Option<i64> {
    if s.len() != 29 {
        return None;
    }
    let day_name = s.get(0..3)?;
    let punctuation = [(3, ","), (4, " "), (7, " "), (11, " "), (16, " ")]
        .into_iter()
        .chain([(19, ":"), (22, ":"), (25, " ")]);
    for (at, want) in punctuation {
        if s.get(at..at + 1)? != want {
            return None;
        }
    }
    if !DAY_NAMES.contains(&day_name) || s.get(26..29)? != "GMT" {
        return None;
    }
    let month_name = s.get(8..11)?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as i64 + 1;
    let day = digits(s, 5, 2)?;
    let year = digits(s, 12, 4)?;
    let (hour, minute, second) = (digits(s, 17, 2)?, digits(s, 20, 2)?, digits(s, 23, 2)?);
    // Second 60 is a leap second (RFC 9110 allows it).
    if day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn idempotent_methods_are_the_rfc_ones_case_sensitive() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get", "Put", "", "GET "] {
            assert!(!is_idempotent(m), "{m}");
        }
    }

    #[test]
    fn conditions_use_envoy_names() {
        for c in RetryCondition::ALL {
            assert_eq!(RetryCondition::from_envoy_name(c.envoy_name()), Some(c));
        }
        assert_eq!(RetryCondition::from_envoy_name("5XX"), None);
        assert_eq!(
            retry_on_header(&[
                RetryCondition::GatewayError,
                RetryCondition::Reset,
                RetryCondition::ConnectFailure
            ]),
            "gateway-error,reset,connect-failure"
        );
        assert_eq!(
            retry_on_header(&[
                RetryCondition::ServerError,
                RetryCondition::RefusedStream,
                RetryCondition::RetriableStatusCodes
            ]),
            "5xx,refused-stream,retriable-status-codes"
        );
        assert_eq!(retry_on_header(&[]), "");
        assert_eq!(status_codes_header(&[503, 429]), "503,429");
        assert_eq!(status_codes_header(&[409]), "409");
    }

    fn rules() -> Vec<RouteRule> {
        vec![
            RouteRule {
                matcher: RouteMatch::PathPrefix("/orders".into()),
                methods: vec!["POST".into()],
            },
            RouteRule {
                matcher: RouteMatch::RouteName("payments".into()),
                methods: vec!["POST".into(), "PATCH".into()],
            },
        ]
    }

    #[test]
    fn plan_allows_idempotent_and_ruled_requests_only() {
        let r = rules();
        let plan_of = |m, p, n| plan(m, p, n, true, &r);
        assert_eq!(plan_of("GET", "/anything", None), Eligibility::Eligible);
        assert_eq!(plan_of("DELETE", "/x", Some("y")), Eligibility::Eligible);
        assert_eq!(plan_of("POST", "/cart", None), Eligibility::NonIdempotent);
        assert_eq!(
            plan_of("POST", "/orders/7?x=1", None),
            Eligibility::Eligible
        );
        assert_eq!(plan_of("POST", "/orders", None), Eligibility::Eligible);
        assert_eq!(
            plan_of("PATCH", "/orders/7", None),
            Eligibility::NonIdempotent
        );
        assert_eq!(
            plan_of("post", "/orders/7", None),
            Eligibility::NonIdempotent
        );
        assert_eq!(plan_of("POST", "/order", None), Eligibility::NonIdempotent);
        assert_eq!(
            plan_of("PATCH", "/v1/pay", Some("payments")),
            Eligibility::Eligible
        );
        assert_eq!(
            plan_of("PATCH", "/v1/pay", Some("payments-v2")),
            Eligibility::NonIdempotent
        );
        assert_eq!(
            plan_of("PATCH", "/v1/pay", None),
            Eligibility::NonIdempotent
        );
        assert_eq!(plan("GET", "/", None, false, &r), Eligibility::Disabled);
        assert_eq!(
            plan("POST", "/", None, true, &[]),
            Eligibility::NonIdempotent
        );
    }

    const NOW: Instant = Instant(784_111_777_000); // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn retry_after_delta_seconds() {
        assert_eq!(parse_retry_after("120", NOW), Some(Millis(120_000)));
        assert_eq!(parse_retry_after("0", NOW), Some(Millis(0)));
        assert_eq!(parse_retry_after(" 5 ", NOW), Some(Millis(5_000)));
        assert_eq!(parse_retry_after("86401", NOW), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", NOW),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", " ", "-1", "+5", "1.5", "5s", "1e3", "0x10", "１"] {
            assert_eq!(parse_retry_after(bad, NOW), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_imf_fixdate() {
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOW),
            Some(Millis(0))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", NOW),
            Some(Millis(30_000))
        );
        assert_eq!(
            parse_retry_after(" Sun, 06 Nov 1994 08:50:07 GMT\t", NOW),
            Some(Millis(30_000))
        );
        // Across a month, a year and a leap day.
        assert_eq!(
            parse_retry_after("Thu, 01 Dec 1994 00:00:00 GMT", NOW),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(imf_fixdate_ms("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            imf_fixdate_ms("Thu, 29 Feb 2024 12:00:00 GMT"),
            Some(1_709_208_000_000)
        );
        assert_eq!(
            imf_fixdate_ms("Fri, 31 Dec 1999 23:59:60 GMT"),
            Some(946_684_800_000)
        );
        assert_eq!(
            imf_fixdate_ms("Wed, 01 Mar 2000 00:00:00 GMT"),
            Some(951_868_800_000)
        );
        // In the past: no wait, even before the epoch.
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", NOW),
            Some(Millis(0))
        );
        assert_eq!(
            parse_retry_after("Mon, 01 Jan 1900 00:00:00 GMT", NOW),
            Some(Millis(0))
        );
        assert_eq!(
            parse_retry_after("Sat, 01 Jan 0000 00:00:00 GMT", Instant(0)),
            Some(Millis(0))
        );
        // A wait from a clock far in the future is still zero, and the cap holds.
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", Instant(0)),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", Instant(u64::MAX)),
            Some(Millis(0))
        );
    }

    #[test]
    fn retry_after_rejects_other_forms() {
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "sun, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMTX",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08-49-37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:60:37 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Nov +994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:é GMT",
            "Sun, 06 Nov 1994 08:49é7 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, NOW), None, "{bad:?}");
        }
    }
}
