//! The root context: one per worker VM. Owns the validated configuration, the metrics and
//! the worker's local state; runs the housekeeping tick; creates one HTTP context per
//! request. A `switches` instance (the Istio emergency manifests) decides nothing itself but
//! its own kill and shed, and publishes its switches while requests flow through it.

use super::host::{now, now_us, string_property, HostStore};
use super::http::ReflexHttp;
use super::metrics::Metrics;
use super::transitions;
use crate::config::{Config, Role};
use crate::core::concurrency_limit::LimitChange;
use crate::core::emergency::Switches;
use crate::core::latency_quantile::LatencyQuantile;
use crate::core::rng::SplitMix64;
use crate::core::time::Instant;
use crate::state::guard::{self, Destinations, Guard};
use crate::state::record::{load, RecordError};
use crate::state::{admission, switchboard, Automation, EndpointTable};
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// Ticks a published switch set outlives its last renewal (renewals come with requests).
const LEASE_TICKS: u64 = 4;
/// At most one admission-limit log line per worker per this many milliseconds.
const LIMIT_LOG_EVERY_MS: u64 = 5_000;

/// What one worker keeps for itself (shared by its root and HTTP contexts; wasm VMs are
/// single-threaded).
#[derive(Default)]
pub struct Worker {
    /// Per cluster, the latency cold endpoints are scored with (refreshed each tick).
    typical_latency: RefCell<Vec<(String, f64)>>,
    /// Per cluster, the latency distribution the per-try timeout is derived from. Each
    /// worker sees a fair sample of the traffic, so this needs no sharing.
    latency: RefCell<HashMap<String, LatencyQuantile>>,
    /// The emergency section of this instance's own configuration.
    own_switches: RefCell<Switches>,
    /// Destinations this worker has already listed in shared data.
    remembered: RefCell<HashSet<String>>,
    last_limit_log: Cell<u64>,
    last_refusal_log: Cell<u64>,
    /// A `switches` instance: its plugin name, when it was configured, its lease length
    /// and when it last renewed.
    plugin_name: RefCell<String>,
    configured_at: Cell<Instant>,
    lease: Cell<u64>,
    renewed_at: Cell<u64>,
}

impl Worker {
    pub fn typical_latency(&self, cluster: &str) -> Option<f64> {
        self.typical_latency
            .borrow()
            .iter()
            .find(|(c, _)| c == cluster)
            .map(|(_, l)| *l)
    }

    pub fn latency_quantile(&self, cluster: &str, q: f64, now: Instant) -> Option<f64> {
        self.latency
            .borrow()
            .get(cluster)
            .and_then(|h| h.quantile(q, now))
    }

    pub fn record_latency(&self, cluster: &str, latency_us: f64, now: Instant, config: &Config) {
        let half_life = config
            .retries
            .for_cluster(cluster)
            .per_try_timeout
            .as_ref()
            .map_or(crate::config::Millis::from_secs(10), |t| t.half_life);
        let mut map = self.latency.borrow_mut();
        if !map.contains_key(cluster) && map.len() >= config.endpoints.max_clusters {
            return;
        }
        map.entry(cluster.to_string())
            .or_insert_with(|| LatencyQuantile::new(half_life))
            .record(latency_us, now);
    }

    pub fn own_switches(&self) -> Switches {
        self.own_switches.borrow().clone()
    }

    /// Lists `destination` in shared data once per worker (for status and gauges).
    pub fn remember(&self, destination: &str, max: usize) {
        if self.remembered.borrow().contains(destination) {
            return;
        }
        if guard::remember(&HostStore, destination, max).is_ok() {
            let mut set = self.remembered.borrow_mut();
            if set.len() < max {
                set.insert(destination.to_string());
            }
        }
    }

    /// Every listed destination's guard value.
    pub fn guard_values(&self) -> Result<Vec<(String, Guard)>, RecordError> {
        let list: Destinations = load(&HostStore, guard::DESTINATIONS_KEY)?;
        list.0
            .into_iter()
            .map(|d| {
                let value: Guard = load(&HostStore, &guard::key(&d))?;
                Ok((d, value))
            })
            .collect()
    }

    /// A `switches` instance publishes its set, at most twice per lease (called for every
    /// request it sees, and once when configured).
    pub fn renew_switches(&self, now: Instant) {
        let lease = self.lease.get();
        if now.0.saturating_sub(self.renewed_at.get()) < lease / 2 {
            return;
        }
        self.renewed_at.set(now.0);
        let switches = self.own_switches();
        let name = self.plugin_name.borrow().clone();
        let until = Instant(now.0 + lease);
        match switchboard::push(
            &HostStore,
            &name,
            &switches,
            self.configured_at.get(),
            until,
            now,
        ) {
            // An instance with nothing to publish (e.g. one that only serves the control
            // endpoint) says so quietly: on-call reads the warn lines for switches in force.
            Ok(true) if switches.is_empty() => {
                info!("reflex switches {name:?} published: none (its emergency section is empty)")
            }
            Ok(true) => warn!(
                "reflex switches {name:?} published: {}",
                crate::control::status_value(&Switches::default(), &switches, now)["effective"]
            ),
            Ok(false) => {}
            Err(err) => warn!("reflex switches {name:?}: cannot publish: {err:?}"),
        }
    }

    /// Whether a refused control request may be logged now: at most once a minute per
    /// worker, so a flood of bad tokens cannot flood the log (the counter counts them all).
    pub fn may_log_refusal(&self, now: Instant) -> bool {
        let last = self.last_refusal_log.get();
        if last != 0 && now.0.saturating_sub(last) < 60_000 {
            return false;
        }
        self.last_refusal_log.set(now.0);
        true
    }

    /// Logs an admission-limit change, at most once per [`LIMIT_LOG_EVERY_MS`] per worker.
    pub fn log_limit_change(&self, change: &LimitChange, now: Instant) {
        if now.0.saturating_sub(self.last_limit_log.get()) < LIMIT_LOG_EVERY_MS {
            return;
        }
        self.last_limit_log.set(now.0);
        info!(
            "reflex admission limit {:.0} -> {:.0} (no-load latency {:.1}ms, window latency {:.1}ms)",
            change.from, change.to, change.no_load_ms, change.sample_ms
        );
    }
}

#[derive(Default)]
pub struct ReflexRoot {
    config: Option<Rc<Config>>,
    metrics: Option<Metrics>,
    worker: Rc<Worker>,
    /// Last tracked counts, to log changes once instead of every tick.
    tracked: (usize, usize),
    /// Clusters this worker last saw in panic, to log entering and leaving once.
    panicking: Vec<String>,
}

impl Context for ReflexRoot {}

impl ReflexRoot {
    fn sweep(&mut self, config: &Config, metrics: &Metrics) {
        let now = now();
        // The tick's detectors obey the switches like the per-request ones.
        let switches = match switchboard::read(&HostStore) {
            Ok(board) => board.effective(&self.worker.own_switches(), now),
            Err(_) => self.worker.own_switches(),
        };
        let automation = Automation {
            frozen: switches.frozen(now),
            dry_run: config.dry_run || switches.dry_run(now),
        };
        let table = EndpointTable::new(&HostStore, config).with_automation(automation);
        let mut rng = SplitMix64::new(now_us());
        match table.sweep(now, &mut rng) {
            Ok(sweep) => {
                Metrics::set(metrics.tracked_clusters, sweep.clusters as u64);
                Metrics::set(metrics.tracked_endpoints, sweep.endpoints as u64);
                Metrics::set(metrics.ejected_endpoints, sweep.ejected as u64);
                Metrics::set(metrics.panic_clusters, sweep.panicking.len() as u64);
                Metrics::add(metrics.endpoints_forgotten, sweep.forgotten as u64);
                transitions::report(metrics, &sweep.transitions);
                for cluster in sweep
                    .panicking
                    .iter()
                    .filter(|c| !self.panicking.contains(c))
                {
                    warn!("reflex panic in {cluster}: too few healthy endpoints, spreading load over all of them and ejecting no more");
                }
                for cluster in self
                    .panicking
                    .iter()
                    .filter(|c| !sweep.panicking.contains(c))
                {
                    info!("reflex panic over in {cluster}");
                }
                self.panicking = sweep.panicking;
                *self.worker.typical_latency.borrow_mut() = sweep.typical_latency_us;
                if sweep.forgotten > 0 {
                    info!(
                        "reflex forgot {} endpoint(s) idle for more than {}",
                        sweep.forgotten, config.endpoints.forget_after
                    );
                }
                let tracked = (sweep.clusters, sweep.endpoints);
                if tracked != self.tracked {
                    self.tracked = tracked;
                    info!(
                        "reflex tracks {} cluster(s), {} endpoint(s)",
                        tracked.0, tracked.1
                    );
                }
            }
            Err(err) => {
                Metrics::add(metrics.shared_state_errors, 1);
                warn!("reflex sweep failed: {err:?}");
            }
        }
    }

    /// Gauges of state other workers may have changed: switches, breakers, admission.
    fn gauges(&self, config: &Config, metrics: &Metrics) {
        let now = now();
        if let Ok(board) = switchboard::read(&HostStore) {
            metrics.switches(&board.effective(&self.worker.own_switches(), now), now);
        }
        if let Ok(guards) = self.worker.guard_values() {
            let open = guards
                .iter()
                .filter(|(_, g)| g.breaker.state != crate::core::breaker::BreakerState::Closed)
                .count();
            Metrics::set(metrics.breakers_open, open as u64);
        }
        if config.admission.enabled {
            if let Ok(state) = load::<admission::AdmissionState>(&HostStore, admission::KEY) {
                Metrics::set(metrics.admission_limit, u64::from(state.limiter.limit()));
                Metrics::set(
                    metrics.admission_in_flight,
                    u64::from(state.limiter.in_flight()),
                );
            }
        }
    }
}

impl RootContext for ReflexRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        info!("reflex {} ({}) starting", crate::VERSION, crate::GIT_SHA);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                // Defined here, not at VM start: the names carry the configured tags.
                match Metrics::define(&config.metric_tags) {
                    Ok(metrics) => self.metrics = Some(metrics),
                    Err(status) => {
                        error!("reflex: cannot define metrics: {status:?}");
                        return false;
                    }
                }
                let tick = Duration::from_millis(config.tick_interval.0);
                self.set_tick_period(tick);
                let now = now();
                *self.worker.plugin_name.borrow_mut() =
                    string_property(&["plugin_name"]).unwrap_or_else(|| "reflex".to_string());
                self.worker.configured_at.set(now);
                self.worker
                    .lease
                    .set(config.tick_interval.0.saturating_mul(LEASE_TICKS));
                self.worker.renewed_at.set(0);
                *self.worker.own_switches.borrow_mut() =
                    config.emergency.switches.clone().stamped(now);
                if config.role == Role::Switches {
                    info!(
                        "reflex switches instance {:?} configured: its emergency section applies while requests flow through it",
                        self.worker.plugin_name.borrow()
                    );
                    self.worker.renew_switches(now);
                } else {
                    info!(
                        "reflex configuration accepted: steering header {:?}, status endpoint {}, control endpoint {}",
                        config.steering.header,
                        if config.status.enabled {
                            config.status.path.as_str()
                        } else {
                            "off"
                        },
                        if config.control.enabled {
                            config.control.path_prefix.as_str()
                        } else {
                            "off"
                        }
                    );
                }
                self.config = Some(Rc::new(config));
                true
            }
            Err(err) => {
                // Returning false makes Envoy reject this configuration; a previous one (if
                // any) keeps serving.
                error!("{err}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let (Some(config), Some(metrics)) = (self.config.clone(), self.metrics) else {
            return;
        };
        if config.role == Role::Switches {
            return;
        }
        self.sweep(&config, &metrics);
        self.gauges(&config, &metrics);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates HTTP contexts only after a successful on_configure, but the SDK
        // aborts on None, so a context without configuration simply passes traffic through.
        let config = self.config.clone();
        Some(Box::new(ReflexHttp::new(
            config,
            self.metrics,
            self.worker.clone(),
            context_id,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
