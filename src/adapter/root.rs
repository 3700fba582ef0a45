//! The root context: one per worker VM. Owns the validated configuration and the metrics,
//! runs the housekeeping tick, and creates one HTTP context per request.

use super::host::{now, now_us, HostStore};
use super::http::ReflexHttp;
use super::metrics::Metrics;
use super::transitions;
use crate::config::Config;
use crate::core::rng::SplitMix64;
use crate::state::EndpointTable;
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;
use std::time::Duration;

#[derive(Default)]
pub struct ReflexRoot {
    config: Option<Rc<Config>>,
    metrics: Option<Metrics>,
    /// Last tracked counts, to log changes once instead of every tick.
    tracked: (usize, usize),
    /// Clusters this worker last saw in panic, to log entering and leaving once.
    panicking: Vec<String>,
    /// Per cluster, the latency cold endpoints are scored with (refreshed each tick, handed
    /// to every HTTP context).
    typical_latency: Rc<Vec<(String, f64)>>,
}

impl Context for ReflexRoot {}

impl RootContext for ReflexRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        info!("reflex {} ({}) starting", crate::VERSION, crate::GIT_SHA);
        match Metrics::define() {
            Ok(metrics) => {
                self.metrics = Some(metrics);
                true
            }
            Err(status) => {
                error!("reflex: cannot define metrics: {status:?}");
                false
            }
        }
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                let tick = Duration::from_millis(config.tick_interval.0);
                self.set_tick_period(tick);
                info!(
                    "reflex configuration accepted: steering header {:?}, status endpoint {}",
                    config.steering.header,
                    if config.status.enabled {
                        config.status.path.as_str()
                    } else {
                        "off"
                    }
                );
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
        let (Some(config), Some(metrics)) = (&self.config, &self.metrics) else {
            return;
        };
        let table = EndpointTable::new(&HostStore, config);
        let mut rng = SplitMix64::new(now_us());
        match table.sweep(now(), &mut rng) {
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
                self.typical_latency = Rc::new(sweep.typical_latency_us);
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

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates HTTP contexts only after a successful on_configure, but the SDK
        // aborts on None, so a context without configuration simply passes traffic through.
        Some(Box::new(ReflexHttp::new(
            self.config.clone(),
            self.metrics,
            self.typical_latency.clone(),
            context_id,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
