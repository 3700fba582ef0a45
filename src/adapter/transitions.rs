//! Reporting of endpoint state transitions: one log line and the matching counters. Only the
//! worker whose compare-and-swap made a transition receives it, so each is reported once.

use super::metrics::Metrics;
use crate::core::breaker::{BreakerState, BreakerTransition};
use crate::core::outlier::Detector;
use crate::state::table::Transition;
use log::{info, warn};

pub fn report(metrics: &Metrics, transitions: &[Transition]) {
    for t in transitions {
        match t {
            Transition::Ejected {
                cluster,
                endpoint,
                detector,
                until,
                dry_run: false,
            } => {
                Metrics::add(metrics.ejections, 1);
                Metrics::add(metrics.ejections_by[detector_index(*detector)], 1);
                warn!(
                    "reflex ejected {endpoint} of {cluster}: {} (until {}ms)",
                    detector.name(),
                    until.0
                );
            }
            Transition::Ejected {
                cluster,
                endpoint,
                detector,
                dry_run: true,
                ..
            } => {
                Metrics::add(metrics.dry_run_ejections, 1);
                info!(
                    "reflex dry-run: would eject {endpoint} of {cluster}: {}",
                    detector.name()
                );
            }
            Transition::Blocked {
                cluster,
                endpoint,
                detector,
            } => {
                Metrics::add(metrics.ejections_blocked, 1);
                warn!(
                    "reflex kept {endpoint} of {cluster} in service although {} fired: maxEjectionPercent or panic threshold reached",
                    detector.name()
                );
            }
            Transition::Returned {
                cluster,
                endpoint,
                dry_run: false,
            } => {
                Metrics::add(metrics.endpoint_returns, 1);
                info!(
                    "reflex returned {endpoint} of {cluster} to service after its probes succeeded"
                );
            }
            Transition::Reejected {
                cluster,
                endpoint,
                until,
                dry_run: false,
            } => {
                Metrics::add(metrics.probe_failures, 1);
                warn!(
                    "reflex re-ejected {endpoint} of {cluster}: failed a probe (until {}ms)",
                    until.0
                );
            }
            // The dry-run lifecycle's later steps: the decision was already reported once.
            Transition::Returned {
                cluster,
                endpoint,
                dry_run: true,
            } => {
                info!("reflex dry-run: {endpoint} of {cluster} would return to service");
            }
            Transition::Reejected {
                cluster,
                endpoint,
                dry_run: true,
                ..
            } => {
                Metrics::add(metrics.dry_run_ejections, 1);
                info!("reflex dry-run: would eject {endpoint} of {cluster} again");
            }
        }
    }
}

fn detector_index(detector: Detector) -> usize {
    Detector::ALL
        .iter()
        .position(|d| *d == detector)
        .unwrap_or(0)
}

/// A breaker transition of `destination`: one log line and the matching counter.
pub fn breaker(metrics: &Metrics, destination: &str, t: &BreakerTransition, dry_run: bool) {
    let destination = crate::state::guard::display(destination);
    let reason = t
        .reason
        .map_or(String::new(), |r| format!(" ({})", r.name()));
    let note = if dry_run {
        " [dry-run: not enforced]"
    } else {
        ""
    };
    match t.to {
        BreakerState::Open => {
            Metrics::add(metrics.breaker_opened, 1);
            warn!(
                "reflex circuit breaker {destination}: {} -> open{reason}{note}",
                t.from.name()
            );
        }
        BreakerState::Closed => {
            Metrics::add(metrics.breaker_closed, 1);
            info!(
                "reflex circuit breaker {destination}: {} -> closed",
                t.from.name()
            );
        }
        BreakerState::HalfOpen => info!(
            "reflex circuit breaker {destination}: {} -> half-open, probing",
            t.from.name()
        ),
    }
}
