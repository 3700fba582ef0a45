//! The per-request context: removes the steering header a client may have sent, serves the
//! status endpoint, and records each upstream outcome in the shared endpoint table.

use super::host::{now, property, HostStore};
use super::metrics::Metrics;
use crate::config::Config;
use crate::core::outcome::Outcome;
use crate::properties;
use crate::state::{EndpointTable, Recorded, TableError};
use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct ReflexHttp {
    config: Option<Rc<Config>>,
    metrics: Option<Metrics>,
    /// Set when reflex answered the request itself: there is no upstream outcome to record.
    answered_locally: bool,
}

impl ReflexHttp {
    pub fn new(config: Option<Rc<Config>>, metrics: Option<Metrics>) -> Self {
        ReflexHttp {
            config,
            metrics,
            answered_locally: false,
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
        let body = match EndpointTable::new(&HostStore, &config.endpoints).snapshot() {
            Ok(snapshot) => crate::status::render(&snapshot),
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
}

impl Context for ReflexHttp {}

impl HttpContext for ReflexHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(config), Some(metrics)) = (self.config.clone(), self.metrics) else {
            return Action::Continue;
        };
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
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(config), Some(metrics)) = (&self.config, self.metrics) else {
            return;
        };
        if self.answered_locally {
            return;
        }
        let cluster = property(&["xds", "cluster_name"]);
        let endpoint = property(&["upstream", "address"]);
        let (Some(cluster), Some(endpoint)) = (
            cluster.as_deref().and_then(properties::string),
            endpoint.as_deref().and_then(properties::string),
        ) else {
            // No upstream was chosen (no route, no healthy host): nothing to learn about an
            // endpoint.
            return;
        };
        let code = property(&["response", "code"])
            .as_deref()
            .and_then(properties::int64)
            .and_then(|c| u64::try_from(c).ok());
        let table = EndpointTable::new(&HostStore, &config.endpoints);
        match table.record(cluster, endpoint, Outcome::from_status(code), now()) {
            Ok(Recorded::Counted) => Metrics::add(metrics.endpoint_observations, 1),
            Ok(Recorded::ClusterCapReached | Recorded::EndpointCapReached) => {
                Metrics::add(metrics.endpoint_table_overflow, 1)
            }
            Err(TableError::Contended | TableError::Host(_)) => {
                Metrics::add(metrics.shared_state_errors, 1)
            }
        }
    }
}
