//! Outlier ejection: which endpoints stop receiving traffic, for how long, and how they come
//! back. Pure: the table calls these with the shared state it read and writes back what they
//! return.
//!
//! Detectors (each optional, each with its own dry-run):
//! - **consecutive 5xx** and **consecutive gateway failures** (502/503/504, resets, connect
//!   failures, timeouts): inline, on the response that reaches the threshold;
//! - **failure percentage**: inline, decayed failure share above a threshold with enough volume;
//! - **success rate**: on the tick, success rate below `mean - stdevFactor × stdev` of the
//!   endpoints that have enough volume (Envoy's statistical detector);
//! - **latency**: on the tick, typical (mean EWMA) latency above `factor ×` the median of its peers and
//!   above `minLatency`, sustained for `for`: the gray failure (slow, no errors) that no
//!   native Envoy detector ejects.
//!
//! Lifecycle: an ejection lasts `base × n` (n = the endpoint's ejection count, capped at
//! `maxEjectionTime`, ±10% jitter so that endpoints ejected together do not return together).
//! When it expires the endpoint is *probing*: it is a candidate again, with slow start, and its
//! next `probes` outcomes decide: all successes return it to healthy, one failure re-ejects it
//! for longer. The ejection count resets after `maxEjectionTime` of health, so an endpoint that
//! failed once long ago starts over at `base`.
//!
//! Limits: at most `maxEjectionPercent` of a cluster is ejected (always at least one endpoint
//! when the cluster has two or more). When fewer than `panicThresholdPercent` of the endpoints
//! are healthy (neither ejected nor tripping a detector that the limit blocked), the cluster is
//! in **panic**: reflex stops ejecting and spreads load over every endpoint, ejected ones
//! included, as Envoy's panic threshold does; detection this widespread is more likely a
//! problem on the caller's side than on most of the endpoints.

use crate::config::{Millis, OutlierDetection};
use crate::core::rng::Rng;
use crate::core::time::Instant;

/// Which detector fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    Consecutive5xx = 1,
    ConsecutiveGateway = 2,
    FailurePercentage = 3,
    SuccessRate = 4,
    Latency = 5,
}

impl Detector {
    pub const ALL: [Detector; 5] = [
        Detector::Consecutive5xx,
        Detector::ConsecutiveGateway,
        Detector::FailurePercentage,
        Detector::SuccessRate,
        Detector::Latency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::Consecutive5xx => "consecutive5xx",
            Detector::ConsecutiveGateway => "consecutiveGatewayFailure",
            Detector::FailurePercentage => "failurePercentage",
            Detector::SuccessRate => "successRate",
            Detector::Latency => "latency",
        }
    }

    pub fn from_code(code: u8) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| *d as u8 == code)
    }

    /// Whether this detector only reports (dry-run) under `config`.
    pub fn dry_run(self, config: &OutlierDetection) -> bool {
        let d = &config.detectors;
        match self {
            Detector::Consecutive5xx => d.consecutive_5xx.as_ref().is_some_and(|c| c.dry_run),
            Detector::ConsecutiveGateway => {
                d.consecutive_gateway.as_ref().is_some_and(|c| c.dry_run)
            }
            Detector::FailurePercentage => d.failure_percentage.as_ref().is_some_and(|c| c.dry_run),
            Detector::SuccessRate => d.success_rate.as_ref().is_some_and(|c| c.dry_run),
            Detector::Latency => d.latency.as_ref().is_some_and(|c| c.dry_run),
        }
    }
}

/// An endpoint's ejection state, as the cluster's member list stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ejection {
    /// Set while ejected or probing; cleared when the endpoint returns.
    pub active: Option<ActiveEjection>,
    /// Ejections so far (the multiplier of the next ejection time).
    pub count: u32,
    /// When the endpoint last returned to healthy (slow start; resetting `count`).
    pub returned_at: Instant,
    /// Last time a detector fired but the ejection limit blocked it.
    pub blocked_at: Instant,
    /// Start of the current latency-outlier streak (zero when none).
    pub slow_since: Instant,
    /// The detector of the most recent ejection, kept after the endpoint returns.
    pub last_detector: Option<Detector>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveEjection {
    pub until: Instant,
    pub detector: Detector,
    /// A dry-run ejection runs the whole lifecycle but never removes the endpoint.
    pub dry_run: bool,
    /// Successful outcomes while probing.
    pub probe_successes: u32,
}

/// How long a blocked trip keeps an endpoint out of the healthy count for the panic check.
const BLOCKED_MEMORY: Millis = Millis(2_000);

impl Ejection {
    /// Ejected and not yet allowed back, for P2C: a dry-run ejection never excludes.
    pub fn excludes(&self, now: Instant) -> bool {
        self.active.is_some_and(|a| !a.dry_run && now < a.until)
    }

    pub fn is_probing(&self, now: Instant) -> bool {
        self.active.is_some_and(|a| now >= a.until)
    }

    /// Counts against `maxEjectionPercent` (probing included, dry-run not).
    fn counts_as_ejected(&self) -> bool {
        self.active.is_some_and(|a| !a.dry_run)
    }

    fn healthy(&self, now: Instant) -> bool {
        let recently_blocked =
            self.blocked_at != Instant(0) && now.since(self.blocked_at) <= BLOCKED_MEMORY;
        !self.counts_as_ejected() && !recently_blocked
    }
}

/// What an attempt to eject decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ejected {
        until: Instant,
        dry_run: bool,
    },
    /// Already ejected or probing, or a block already reported: nothing to report.
    AlreadyEjected,
    /// Over `maxEjectionPercent`, or below the panic floor: reported once per streak (a trip
    /// more than `BLOCKED_MEMORY` after the last one).
    Blocked,
    /// Still blocked: the streak is refreshed (it keeps the endpoint out of the healthy count)
    /// but not reported again.
    StillBlocked,
}

/// A detector that fired, and whether reflex may act on it: ejections on a cluster reflex does
/// not steer, or with steering in dry-run, are dry-run ejections whatever the detector says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trip {
    pub detector: Detector,
    pub enforce: bool,
}

impl Trip {
    fn dry_run(self, config: &OutlierDetection) -> bool {
        !self.enforce || self.detector.dry_run(config)
    }
}

/// Whether the cluster whose members are `members` is in panic.
pub fn in_panic(members: &[Ejection], now: Instant, config: &OutlierDetection) -> bool {
    if members.is_empty() {
        return false;
    }
    let healthy = members.iter().filter(|m| m.healthy(now)).count();
    healthy * 100 < members.len() * config.panic_threshold_percent as usize
}

/// Ejects member `index` for `trip` if the limits allow.
pub fn eject(
    members: &mut [Ejection],
    index: usize,
    trip: Trip,
    now: Instant,
    config: &OutlierDetection,
    rng: &mut impl Rng,
) -> Verdict {
    apply(members, index, trip, false, now, config, rng)
}

/// `escalate`: a failed probe, whose ejection count must grow whatever `returned_at` says.
fn apply(
    members: &mut [Ejection],
    index: usize,
    trip: Trip,
    escalate: bool,
    now: Instant,
    config: &OutlierDetection,
    rng: &mut impl Rng,
) -> Verdict {
    let Some(member) = members.get(index) else {
        return Verdict::AlreadyEjected;
    };
    let dry_run = trip.dry_run(config);
    // A dry-run ejection never shields an endpoint from an enforcing detector.
    if member.active.is_some_and(|a| !a.dry_run || dry_run) {
        return Verdict::AlreadyEjected;
    }
    if !dry_run {
        if members.len() < 2 {
            // Nothing to fail over to: not an ejection, and not news either.
            return Verdict::AlreadyEjected;
        }
        let ejected = members.iter().filter(|m| m.counts_as_ejected()).count();
        let allowed = (members.len() * config.max_ejection_percent as usize / 100).max(1);
        // The panic floor: never eject an endpoint if that leaves too few healthy ones.
        let healthy_after = members
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != index && m.healthy(now))
            .count();
        let below_floor =
            healthy_after * 100 < members.len() * config.panic_threshold_percent as usize;
        if ejected + 1 > allowed || below_floor {
            let member = &mut members[index];
            let since = now.since(member.blocked_at);
            let streaking = member.blocked_at != Instant(0) && since <= BLOCKED_MEMORY;
            if streaking && since.0 < BLOCKED_MEMORY.0 / 2 {
                return Verdict::AlreadyEjected;
            }
            member.blocked_at = now;
            return if streaking {
                Verdict::StillBlocked
            } else {
                Verdict::Blocked
            };
        }
    }
    let member = &mut members[index];
    let long_healthy = member.returned_at != Instant(0)
        && now.since(member.returned_at) > config.max_ejection_time;
    if long_healthy && !escalate {
        member.count = 0;
    }
    member.count = member.count.saturating_add(1);
    let base = config
        .base_ejection_time
        .0
        .saturating_mul(u64::from(member.count));
    let capped = base.min(config.max_ejection_time.0);
    // ±10% jitter.
    let jitter = (capped as f64 * 0.2 * (rng.unit() - 0.5)) as i64;
    let duration = (capped as i64 + jitter).max(1) as u64;
    let until = Instant(now.0.saturating_add(duration));
    member.active = Some(ActiveEjection {
        until,
        detector: trip.detector,
        dry_run,
        probe_successes: 0,
    });
    member.last_detector = Some(trip.detector);
    Verdict::Ejected { until, dry_run }
}

/// What an outcome did to an ejected (probing) member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// Not probing: nothing to do.
    NotProbing,
    Counted,
    Returned {
        dry_run: bool,
    },
    /// Failed a probe: ejected again for longer.
    Reejected {
        until: Instant,
        dry_run: bool,
    },
    /// Failed a probe but the limits no longer allow an ejection: back in service.
    Released,
}

/// Applies one outcome of member `index` to its ejection state.
pub fn probe(
    members: &mut [Ejection],
    index: usize,
    success: bool,
    enforce: bool,
    now: Instant,
    config: &OutlierDetection,
    rng: &mut impl Rng,
) -> ProbeResult {
    let Some(member) = members.get_mut(index) else {
        return ProbeResult::NotProbing;
    };
    let Some(active) = member.active.as_mut().filter(|a| now >= a.until) else {
        return ProbeResult::NotProbing;
    };
    let was_dry_run = active.dry_run;
    if success {
        active.probe_successes = active.probe_successes.saturating_add(1);
        if active.probe_successes >= config.probes {
            member.active = None;
            member.returned_at = now;
            member.slow_since = Instant(0);
            return ProbeResult::Returned {
                dry_run: was_dry_run,
            };
        }
        return ProbeResult::Counted;
    }
    let trip = Trip {
        detector: active.detector,
        enforce,
    };
    member.active = None;
    match apply(members, index, trip, true, now, config, rng) {
        Verdict::Ejected { until, dry_run } => ProbeResult::Reejected { until, dry_run },
        Verdict::AlreadyEjected | Verdict::Blocked | Verdict::StillBlocked => {
            if let Some(member) = members.get_mut(index) {
                member.returned_at = now;
            }
            ProbeResult::Released
        }
    }
}

/// Indices of the members whose success rate is below `mean - factor × stdev` among members
/// with at least `min_volume` decayed requests, when at least `min_hosts` qualify.
pub fn success_rate_outliers(
    rates: &[(f64, f64)],
    factor: f64,
    min_hosts: usize,
    min_volume: f64,
) -> Vec<usize> {
    let qualified: Vec<(usize, f64)> = rates
        .iter()
        .enumerate()
        .filter(|(_, (_, volume))| *volume >= min_volume)
        .map(|(i, (rate, _))| (i, *rate))
        .collect();
    if qualified.len() < min_hosts.max(2) {
        return Vec::new();
    }
    let n = qualified.len() as f64;
    let mean = qualified.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = qualified
        .iter()
        .map(|(_, r)| (r - mean).powi(2))
        .sum::<f64>()
        / n;
    let limit = mean - factor * variance.sqrt();
    qualified
        .into_iter()
        .filter(|(_, r)| *r < limit)
        .map(|(i, _)| i)
        .collect()
}

/// Indices of the members whose latency exceeds `factor ×` the median of the *other* members
/// and `min_latency_us`. `latencies` holds `None` for members without samples.
pub fn latency_outliers(
    latencies: &[Option<f64>],
    factor: f64,
    min_hosts: usize,
    min_latency_us: f64,
) -> Vec<usize> {
    let measured: Vec<(usize, f64)> = latencies
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (i, l)))
        .collect();
    if measured.len() < min_hosts.max(2) {
        return Vec::new();
    }
    measured
        .iter()
        .filter(|(i, latency)| {
            let mut peers: Vec<f64> = measured
                .iter()
                .filter(|(j, _)| j != i)
                .map(|(_, l)| *l)
                .collect();
            peers.sort_by(f64::total_cmp);
            let median = peers[peers.len() / 2];
            *latency > min_latency_us && *latency > factor * median
        })
        .map(|(i, _)| *i)
        .collect()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::Config;
    use crate::core::rng::SplitMix64;

    fn config(extra: &str) -> OutlierDetection {
        let json = format!(
            r#"{{"version": 1, "outlierDetection": {{"baseEjectionTime": "10s", "maxEjectionTime": "60s" {extra}}}}}"#
        );
        Config::parse(json.as_bytes()).unwrap().outlier_detection
    }

    fn enforced(detector: Detector) -> Trip {
        Trip {
            detector,
            enforce: true,
        }
    }

    fn members(n: usize) -> Vec<Ejection> {
        vec![Ejection::default(); n]
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap_with_jitter() {
        let config = config("");
        let mut rng = SplitMix64::new(1);
        let mut m = members(4);
        let mut now = Instant(1_000_000);
        for (n, expected) in [(1u64, 10_000u64), (2, 20_000), (3, 30_000), (7, 60_000)] {
            m[0].count = n as u32 - 1;
            m[0].returned_at = now;
            let Verdict::Ejected { until, dry_run } = eject(
                &mut m,
                0,
                enforced(Detector::Consecutive5xx),
                now,
                &config,
                &mut rng,
            ) else {
                panic!("not ejected");
            };
            assert!(!dry_run);
            let took = until.0 - now.0;
            assert!(
                took >= expected * 9 / 10 && took <= expected * 11 / 10,
                "n={n}: {took}"
            );
            m[0].active = None;
            now = Instant(now.0 + 1);
        }
    }

    #[test]
    fn ejection_count_resets_after_a_long_healthy_spell() {
        let config = config("");
        let mut rng = SplitMix64::new(2);
        let mut m = members(4);
        m[0].count = 5;
        m[0].returned_at = Instant(1);
        let Verdict::Ejected { until, .. } = eject(
            &mut m,
            0,
            enforced(Detector::Latency),
            Instant(120_000),
            &config,
            &mut rng,
        ) else {
            panic!("not ejected");
        };
        assert!(
            until.0 - 120_000 <= 11_000,
            "started over at base: {}",
            until.0 - 120_000
        );
        assert_eq!(m[0].count, 1);
        assert_eq!(m[0].last_detector, Some(Detector::Latency));
    }

    #[test]
    fn max_ejection_percent_allows_at_least_one_and_blocks_beyond() {
        let config = config(r#", "maxEjectionPercent": 20, "panicThresholdPercent": 0"#);
        let mut rng = SplitMix64::new(3);
        let mut m = members(4);
        let now = Instant(5_000);
        assert!(matches!(
            eject(
                &mut m,
                0,
                enforced(Detector::Consecutive5xx),
                now,
                &config,
                &mut rng
            ),
            Verdict::Ejected { .. }
        ));
        assert_eq!(
            eject(
                &mut m,
                1,
                enforced(Detector::Consecutive5xx),
                now,
                &config,
                &mut rng
            ),
            Verdict::Blocked
        );
        // Reported once, not on every failing response.
        assert_eq!(
            eject(
                &mut m,
                1,
                enforced(Detector::Consecutive5xx),
                Instant(5_100),
                &config,
                &mut rng
            ),
            Verdict::AlreadyEjected
        );
        assert_eq!(
            eject(
                &mut m,
                0,
                enforced(Detector::Consecutive5xx),
                now,
                &config,
                &mut rng
            ),
            Verdict::AlreadyEjected
        );
        // A lone endpoint has nothing to fail over to: no ejection, and no report.
        let mut single = members(1);
        assert_eq!(
            eject(
                &mut single,
                0,
                enforced(Detector::Consecutive5xx),
                now,
                &config,
                &mut rng
            ),
            Verdict::AlreadyEjected
        );
    }

    #[test]
    fn panic_when_too_few_endpoints_are_healthy() {
        let config = config(r#", "maxEjectionPercent": 100, "panicThresholdPercent": 50"#);
        let mut rng = SplitMix64::new(4);
        let mut m = members(4);
        let now = Instant(1_000);
        assert!(!in_panic(&m, now, &config));
        assert!(matches!(
            eject(
                &mut m,
                0,
                enforced(Detector::Consecutive5xx),
                now,
                &config,
                &mut rng
            ),
            Verdict::Ejected { .. }
        ));
        assert!(matches!(
            eject(
                &mut m,
                1,
                enforced(Detector::Consecutive5xx),
                now,
                &config,
                &mut rng
            ),
            Verdict::Ejected { .. }
        ));
        assert!(
            !in_panic(&m, now, &config),
            "2 of 4 healthy is exactly the threshold"
        );
        assert_eq!(
            eject(
                &mut m,
                2,
                enforced(Detector::Consecutive5xx),
                now,
                &config,
                &mut rng
            ),
            Verdict::Blocked
        );
        assert!(
            in_panic(&m, now, &config),
            "a blocked trip counts as unhealthy"
        );
        assert!(!in_panic(&m, Instant(now.0 + 2_001), &config) || m[0].counts_as_ejected());
    }

    #[test]
    fn probes_return_an_endpoint_or_re_eject_it_for_longer() {
        let config = config(r#", "probes": 2"#);
        let mut rng = SplitMix64::new(5);
        let mut m = members(3);
        let Verdict::Ejected { until, .. } = eject(
            &mut m,
            0,
            enforced(Detector::SuccessRate),
            Instant(0),
            &config,
            &mut rng,
        ) else {
            panic!("not ejected");
        };
        assert!(m[0].excludes(Instant(until.0 - 1)));
        assert_eq!(
            probe(
                &mut m,
                0,
                true,
                true,
                Instant(until.0 - 1),
                &config,
                &mut rng
            ),
            ProbeResult::NotProbing
        );
        assert!(m[0].is_probing(until) && !m[0].excludes(until));
        assert_eq!(
            probe(&mut m, 0, true, true, until, &config, &mut rng),
            ProbeResult::Counted
        );
        let ProbeResult::Reejected {
            until: again,
            dry_run: false,
        } = probe(&mut m, 0, false, true, until, &config, &mut rng)
        else {
            panic!("a failed probe must re-eject");
        };
        assert!(
            again.0 - until.0 >= 18_000,
            "second ejection is longer: {}",
            again.0 - until.0
        );
        assert_eq!(
            probe(&mut m, 0, true, true, again, &config, &mut rng),
            ProbeResult::Counted
        );
        assert_eq!(
            probe(&mut m, 0, true, true, again, &config, &mut rng),
            ProbeResult::Returned { dry_run: false }
        );
        assert_eq!(m[0].active, None);
        assert_eq!(m[0].returned_at, again);
    }

    #[test]
    fn dry_run_ejection_runs_the_lifecycle_without_excluding() {
        let config = config(r#", "consecutive5xx": {"dryRun": true}, "maxEjectionPercent": 0"#);
        let mut rng = SplitMix64::new(6);
        let mut m = members(2);
        let verdict = eject(
            &mut m,
            0,
            enforced(Detector::Consecutive5xx),
            Instant(0),
            &config,
            &mut rng,
        );
        assert!(
            matches!(verdict, Verdict::Ejected { dry_run: true, .. }),
            "{verdict:?}"
        );
        assert!(!m[0].excludes(Instant(1)));
        // A dry-run ejection is not limited by maxEjectionPercent, and does not count against it.
        assert!(!m[0].counts_as_ejected());
    }

    #[test]
    fn success_rate_outliers_follow_mean_minus_k_stdev() {
        let perfect = (1.0, 100.0);
        let rates = [perfect, perfect, perfect, perfect, (0.7, 100.0)];
        assert_eq!(success_rate_outliers(&rates, 1.9, 3, 20.0), vec![4]);
        // Not enough volume: not judged, and too few hosts left to judge the rest.
        let rates = [perfect, (0.99, 100.0), (0.2, 5.0)];
        assert!(success_rate_outliers(&rates, 1.9, 3, 20.0).is_empty());
        // All equal: no outlier.
        assert!(success_rate_outliers(&[perfect; 5], 1.9, 3, 20.0).is_empty());
    }

    #[test]
    fn latency_outliers_compare_with_the_median_of_peers() {
        let l = |ms: f64| Some(ms * 1_000.0);
        let latencies = [l(5.0), l(6.0), l(5.5), l(50.0), None];
        assert_eq!(latency_outliers(&latencies, 3.0, 3, 10_000.0), vec![3]);
        // Below the absolute floor: not an outlier however relatively slow.
        let fast = [l(0.1), l(0.1), l(0.1), l(2.0)];
        assert!(latency_outliers(&fast, 3.0, 3, 10_000.0).is_empty());
        // Too few measured endpoints.
        assert!(latency_outliers(&[l(5.0), l(50.0), None], 3.0, 3, 1.0).is_empty());
    }

    #[test]
    fn detector_codes_round_trip() {
        for d in Detector::ALL {
            assert_eq!(Detector::from_code(d as u8), Some(d));
        }
        assert_eq!(Detector::from_code(0), None);
        assert_eq!(Detector::from_code(99), None);
    }

    const REAL_NOW: u64 = 1_763_000_000_000;

    #[test]
    fn a_failed_probe_lengthens_the_next_ejection_at_real_timestamps() {
        let config = config("");
        let mut rng = SplitMix64::new(7);
        let mut m = members(4);
        let now = Instant(REAL_NOW);
        let Verdict::Ejected { until, .. } = eject(
            &mut m,
            0,
            enforced(Detector::Consecutive5xx),
            now,
            &config,
            &mut rng,
        ) else {
            panic!("not ejected");
        };
        let ProbeResult::Reejected { until: again, .. } =
            probe(&mut m, 0, false, true, until, &config, &mut rng)
        else {
            panic!("not re-ejected");
        };
        assert_eq!(m[0].count, 2);
        assert!(again.0 - until.0 >= 18_000, "{}", again.0 - until.0);
    }

    #[test]
    fn a_dry_run_ejection_does_not_shield_from_an_enforcing_detector() {
        let config = config(r#", "consecutive5xx": {"dryRun": true}"#);
        let mut rng = SplitMix64::new(8);
        let mut m = members(4);
        let now = Instant(REAL_NOW);
        let dry = eject(
            &mut m,
            0,
            enforced(Detector::Consecutive5xx),
            now,
            &config,
            &mut rng,
        );
        assert!(matches!(dry, Verdict::Ejected { dry_run: true, .. }));
        let real = eject(
            &mut m,
            0,
            enforced(Detector::FailurePercentage),
            now,
            &config,
            &mut rng,
        );
        assert!(
            matches!(real, Verdict::Ejected { dry_run: false, .. }),
            "{real:?}"
        );
        assert!(m[0].excludes(Instant(now.0 + 1)));
        // And a dry-run trip does not downgrade an enforced ejection.
        let again = eject(
            &mut m,
            0,
            enforced(Detector::Consecutive5xx),
            now,
            &config,
            &mut rng,
        );
        assert_eq!(again, Verdict::AlreadyEjected);
    }

    #[test]
    fn ejections_that_cannot_be_enforced_are_dry_run() {
        let config = config("");
        let mut rng = SplitMix64::new(9);
        let mut m = members(4);
        let trip = Trip {
            detector: Detector::Latency,
            enforce: false,
        };
        let verdict = eject(&mut m, 0, trip, Instant(REAL_NOW), &config, &mut rng);
        assert!(matches!(verdict, Verdict::Ejected { dry_run: true, .. }));
        assert!(!m[0].excludes(Instant(REAL_NOW + 1)));
    }

    #[test]
    fn a_blocked_streak_is_reported_once() {
        let config = config(r#", "maxEjectionPercent": 25, "panicThresholdPercent": 0"#);
        let mut rng = SplitMix64::new(10);
        let mut m = members(4);
        let t = |ms: u64| Instant(REAL_NOW + ms);
        assert!(matches!(
            eject(
                &mut m,
                0,
                enforced(Detector::Consecutive5xx),
                t(0),
                &config,
                &mut rng
            ),
            Verdict::Ejected { .. }
        ));
        let mut reports = 0;
        for ms in (0..10_000).step_by(100) {
            if eject(
                &mut m,
                1,
                enforced(Detector::Consecutive5xx),
                t(ms),
                &config,
                &mut rng,
            ) == Verdict::Blocked
            {
                reports += 1;
            }
        }
        assert_eq!(reports, 1);
    }
}
