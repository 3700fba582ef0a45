//! The per-request context: removes the steering header a client may have sent, serves the
//! status endpoint, steers the request with power-of-two-choices, and records the upstream
//! outcome (and any ejection it triggers) in the shared endpoint table.

use super::host::{now, now_us, property, HostStore};
use super::metrics::Metrics;
use super::transitions;
use crate::config::Config;
use crate::core::outcome::Observation;
use crate::core::rng::{Rng, SplitMix64};
use crate::properties;
use crate::state::table::Completion;
use crate::state::{EndpointTable, Recorded, TableError};
use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct ReflexHttp {
    config: Option<Rc<Config>>,
    metrics: Option<Metrics>,
    typical_latency: Rc<Vec<(String, f64)>>,
    rng: SplitMix64,
    /// Set when reflex answered the request itself: there is no upstream outcome to record.
    answered_locally: bool,
    /// The destination cluster, from the route (known before the router runs).
    cluster: Option<String>,
    /// The endpoints written into the steering header, in order (the first is counted as in
    /// flight); empty when reflex did not steer this request.
    order: Vec<String>,
    /// Whether `order[0]` was counted in flight (so that only a count taken is released).
    counted_in_flight: bool,
    /// The cluster is marked for steering and steering enforces: ejections take effect.
    enforce: bool,
    started_us: u64,
    /// When the response headers arrived (time to first byte).
    answered_us: Option<u64>,
}

impl ReflexHttp {
    pub fn new(
        config: Option<Rc<Config>>,
        metrics: Option<Metrics>,
        typical_latency: Rc<Vec<(String, f64)>>,
        context_id: u32,
    ) -> Self {
        ReflexHttp {
            config,
            metrics,
            typical_latency,
            rng: SplitMix64::new(now_us() ^ (u64::from(context_id) << 32)),
            answered_locally: false,
            cluster: None,
            order: Vec::new(),
            counted_in_flight: false,
            enforce: false,
            started_us: 0,
            answered_us: None,
        }
    }

    fn is_status_request(&self, config: &Config) -> bool {
        if !config.status.enabled {
            return false;
        }
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if properties::path_only(&path) != config.status.path {
            return false;
        }
        // With `use_remote_address: false` (the sidecar default) Envoy derives the peer
        // address from x-forwarded-for, which a remote client can forge; a local operator's
        // curl never sends one, so its presence alone disqualifies the request.
        !config.status.loopback_only
            || (self.get_http_request_header("x-forwarded-for").is_none()
                && property(&["source", "address"])
                    .as_deref()
                    .and_then(properties::string)
                    .is_some_and(properties::is_loopback_peer))
    }

    fn serve_status(&mut self, config: &Config) {
        let now = now();
        let body = match EndpointTable::new(&HostStore, config).snapshot(now) {
            Ok(snapshot) => crate::status::render(&snapshot, now),
            Err(err) => {
                warn!("reflex status: cannot read shared state: {err:?}");
                self.send_http_response(
                    503,
                    vec![("content-type", "text/plain")],
                    Some(b"shared state unavailable\n"),
                );
                return;
            }
        };
        self.send_http_response(
            200,
            vec![
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            Some(body.as_bytes()),
        );
    }

    /// Chooses the endpoints for this request and writes them into the steering header.
    fn steer(&mut self, config: &Config, metrics: &Metrics) {
        let lb = &config.load_balancing;
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let table = EndpointTable::new(&HostStore, config);
        let typical = self
            .typical_latency
            .iter()
            .find(|(c, _)| *c == cluster)
            .map(|(_, l)| *l);
        let pick = match table.pick(&cluster, now(), &mut self.rng, typical) {
            Ok(Some(pick)) => pick,
            Ok(None) => {
                Metrics::add(metrics.unsteered, 1);
                return;
            }
            Err(_) => {
                Metrics::add(metrics.shared_state_errors, 1);
                return;
            }
        };
        if self.rng.unit() < pick.explore {
            Metrics::add(metrics.explored, 1);
            return;
        }
        if lb.dry_run {
            Metrics::add(metrics.dry_run_picks, 1);
            return;
        }
        let Some(first) = pick.order.first() else {
            return;
        };
        self.set_http_request_header(&config.steering.header, Some(&pick.order.join(",")));
        Metrics::add(metrics.picks, 1);
        match table.begin(&cluster, first, now()) {
            Ok(()) => self.counted_in_flight = true,
            Err(_) => Metrics::add(metrics.shared_state_errors, 1),
        }
        self.order = pick.order;
    }
}

impl Context for ReflexHttp {}

impl HttpContext for ReflexHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(config), Some(metrics)) = (self.config.clone(), self.metrics) else {
            return Action::Continue;
        };
        self.started_us = now_us();
        Metrics::add(metrics.requests, 1);
        // Only reflex may steer: a client-supplied endpoint choice is removed before anything
        // else reads it.
        if self
            .get_http_request_header(&config.steering.header)
            .is_some()
        {
            self.set_http_request_header(&config.steering.header, None);
            Metrics::add(metrics.steering_header_stripped, 1);
        }
        if self.is_status_request(&config) {
            Metrics::add(metrics.status_requests, 1);
            self.answered_locally = true;
            self.serve_status(&config);
            return Action::Pause;
        }
        self.cluster = property(&["xds", "cluster_name"])
            .as_deref()
            .and_then(properties::string)
            .map(str::to_string);
        if config.load_balancing.enabled {
            let steered = property(&properties::STEERING_MARK_PATH)
                .is_some_and(|mark| properties::is_steered_cluster(&mark));
            self.enforce = steered && !config.load_balancing.dry_run;
            if steered {
                self.steer(&config, &metrics);
            } else {
                Metrics::add(metrics.unsteered, 1);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.answered_us = Some(now_us());
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(config), Some(metrics)) = (self.config.clone(), self.metrics) else {
            return;
        };
        if self.answered_locally {
            return;
        }
        let Some(cluster) = self.cluster.clone().or_else(|| {
            property(&["xds", "cluster_name"])
                .as_deref()
                .and_then(properties::string)
                .map(str::to_string)
        }) else {
            return;
        };
        let served = property(&["upstream", "address"]);
        let served = served.as_deref().and_then(properties::string);
        if served.is_none() && self.order.is_empty() {
            // No upstream was chosen (no route, no healthy host): nothing to learn.
            return;
        }
        let code = property(&["response", "code"])
            .as_deref()
            .and_then(properties::int64)
            .and_then(|c| u64::try_from(c).ok());
        let end_us = self.answered_us.unwrap_or_else(now_us);
        let latency_us = (self.started_us > 0 && end_us >= self.started_us)
            .then(|| (end_us - self.started_us) as f64);
        let flags = property(&["response", "flags"])
            .as_deref()
            .and_then(properties::int64)
            .and_then(|f| u64::try_from(f).ok())
            .unwrap_or(0);
        let done = Completion {
            order: &self.order,
            counted_in_flight: self.counted_in_flight,
            served,
            observation: Observation::from_response(code, flags, latency_us),
            enforce: self.enforce,
        };
        let table = EndpointTable::new(&HostStore, &config);
        match table.complete(&cluster, &done, now(), &mut self.rng) {
            Ok((recorded, transitions)) => {
                // Transitions of earlier attempts count even if the last one was not stored.
                transitions::report(&metrics, &transitions);
                match recorded {
                    Recorded::Counted if done.observation.is_some() && served.is_some() => {
                        Metrics::add(metrics.endpoint_observations, 1)
                    }
                    Recorded::Counted => {}
                    Recorded::ClusterCapReached
                    | Recorded::EndpointCapReached
                    | Recorded::NameTooLong => Metrics::add(metrics.endpoint_table_overflow, 1),
                }
            }
            Err(TableError::Contended | TableError::Host(_)) => {
                Metrics::add(metrics.shared_state_errors, 1)
            }
        }
    }
}
