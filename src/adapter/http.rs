//! The per-request context. In order: remove the steering header a client may have sent;
//! serve the status and control endpoints; apply the emergency switches (kill, shed); admit
//! the request to the local service (inbound admission); run the destination's guards
//! (breaker, throttling, bulkhead, retry budget); steer with power-of-two-choices and hand
//! Envoy's router the retry headers. When the request ends, every piece it took is given
//! back and its outcome recorded. Each decision is the core's; this file moves facts in and
//! answers out.

use super::host::{now, now_us, property, string_property, HostStore};
use super::metrics::Metrics;
use super::root::Worker;
use super::transitions;
use crate::config::{AllowFrom, Config, Role};
use crate::control::{self, ControlError};
use crate::core::emergency::{request_hash, RequestFacts, Switches};
use crate::core::latency_quantile::per_try_timeout;
use crate::core::outcome::{Observation, Outcome};
use crate::core::priority::Priority;
use crate::core::retry_policy::Eligibility;
use crate::core::rng::{Rng, SplitMix64};
use crate::core::time::Instant;
use crate::properties;
use crate::state::guard::{self, Finish, Policies, Refusal, Start};
use crate::state::table::Completion;
use crate::state::{admission, switchboard, Automation, EndpointTable, Recorded, TableError};
use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// Paths a `switches` instance never kills or sheds: the default status and control paths,
/// so an operator can check and undo a kill on the pod it hit.
const OPERATOR_PATHS: &str = "/.reflex/";

/// A control request waiting for its body.
struct PendingControl {
    method: String,
    action_path: String,
    peer: String,
}

pub struct ReflexHttp {
    config: Option<Rc<Config>>,
    metrics: Option<Metrics>,
    worker: Rc<Worker>,
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
    automation: Automation,
    /// Counted in flight by the admission limiter (must be finished once), and whether it
    /// met no queue (a no-load measurement).
    admitted: bool,
    quiet: bool,
    /// The destination's guard key, its name, and what its guards gave this request.
    guard: Option<(String, String, Start)>,
    control: Option<PendingControl>,
    started_us: u64,
    /// When the response headers arrived (time to first byte).
    answered_us: Option<u64>,
    /// The upstream's answer carried Retry-After.
    retry_after: bool,
    /// Refusals only counted (dry-run), for the decision header.
    would_refuse: Vec<&'static str>,
}

impl ReflexHttp {
    pub fn new(
        config: Option<Rc<Config>>,
        metrics: Option<Metrics>,
        worker: Rc<Worker>,
        context_id: u32,
    ) -> Self {
        ReflexHttp {
            config,
            metrics,
            worker,
            rng: SplitMix64::new(now_us() ^ (u64::from(context_id) << 32)),
            answered_locally: false,
            cluster: None,
            order: Vec::new(),
            counted_in_flight: false,
            enforce: false,
            automation: Automation::default(),
            admitted: false,
            quiet: false,
            guard: None,
            control: None,
            started_us: 0,
            answered_us: None,
            retry_after: false,
            would_refuse: Vec::new(),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.get_http_request_header(name)
    }

    /// Whether the request comes from where operator endpoints may be reached. With
    /// `use_remote_address: false` (the sidecar default) Envoy derives the peer address from
    /// x-forwarded-for, which a remote client can forge; a local operator's curl never sends
    /// one, so its presence alone disqualifies the request.
    fn is_local_operator(&self) -> bool {
        self.header("x-forwarded-for").is_none()
            && self
                .peer()
                .as_deref()
                .is_some_and(properties::is_loopback_peer)
    }

    fn peer(&self) -> Option<String> {
        string_property(&["source", "address"])
    }

    fn is_status_request(&self, config: &Config, path: &str) -> bool {
        config.status.enabled
            && path == config.status.path
            && (!config.status.loopback_only || self.is_local_operator())
    }

    /// Answers locally. Every reflex reply says why in `x-reflex-reason`.
    fn reply(&mut self, status: u16, reason: &str, headers: &[(String, String)], body: &str) {
        self.answered_locally = true;
        let mut all: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.push(("x-reflex-reason", reason));
        self.send_http_response(u32::from(status), all, Some(body.as_bytes()));
    }

    fn serve_status(&mut self, config: &Config) {
        let now = now();
        let table = EndpointTable::new(&HostStore, config).snapshot(now);
        let board = switchboard::read(&HostStore);
        let guards = self.worker.guard_values();
        let admission_state = crate::state::record::load(&HostStore, admission::KEY);
        let body = match (table, board, guards, admission_state) {
            (Ok(snapshot), Ok(board), Ok(guards), Ok(admission_state)) => {
                let mut extra = crate::status::guards(&guards, config, now);
                extra.insert(
                    "admission".into(),
                    crate::status::admission(&admission_state, config),
                );
                let pushed = crate::core::emergency::merge(
                    &self.worker.own_switches(),
                    &board.pushed_at(now),
                    now,
                );
                extra.insert(
                    "switches".into(),
                    control::status_value(&board.local, &pushed, now),
                );
                crate::status::render(&snapshot, now, extra)
            }
            _ => {
                warn!("reflex status: cannot read shared state");
                self.reply(503, "status-unavailable", &[], "shared state unavailable\n");
                return;
            }
        };
        self.reply(
            200,
            "status",
            &[
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            &body,
        );
    }

    /// A request for the control endpoint from an allowed source: checks the token and
    /// either answers or waits for the body. Requests from elsewhere are ordinary traffic
    /// (the endpoint does not exist for them).
    fn control_request(&mut self, config: &Config, path: &str, end_of_stream: bool) -> bool {
        let control = &config.control;
        let Some(rest) = path.strip_prefix(control.path_prefix.as_str()) else {
            return false;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return false;
        }
        let allowed = match control.allow_from {
            AllowFrom::Loopback => self.is_local_operator(),
            AllowFrom::Any => true,
        };
        if !allowed {
            return false;
        }
        let Some(metrics) = self.metrics else {
            return false;
        };
        Metrics::add(metrics.control_requests, 1);
        if !control::authorized(self.header("authorization").as_deref(), &control.token) {
            Metrics::add(metrics.control_unauthorized, 1);
            if self.worker.may_log_refusal(now()) {
                warn!(
                    "reflex control: refused a request without a valid token from {} (further refusals for a minute only counted: reflex_control_unauthorized_total)",
                    self.peer().unwrap_or_else(|| "unknown".into())
                );
            }
            self.reply(401, "control-unauthorized", &[], "");
            return true;
        }
        let pending = PendingControl {
            method: self.header(":method").unwrap_or_default(),
            action_path: rest.to_string(),
            peer: self.peer().unwrap_or_else(|| "unknown".into()),
        };
        if end_of_stream {
            self.answer_control(&pending, b"");
        } else {
            self.control = Some(pending);
        }
        true
    }

    fn answer_control(&mut self, pending: &PendingControl, body: &[u8]) {
        let Some(metrics) = self.metrics else {
            return;
        };
        let json = [("content-type".to_string(), "application/json".to_string())];
        let request = match control::parse_request(&pending.method, &pending.action_path, body) {
            Ok(request) => request,
            Err(err) => return self.control_error(&err),
        };
        let now = now();
        if !request.is_change() {
            let body = match switchboard::read(&HostStore) {
                Ok(board) => {
                    let pushed = crate::core::emergency::merge(
                        &self.worker.own_switches(),
                        &board.pushed_at(now),
                        now,
                    );
                    control::render_status(&board.local, &pushed, now)
                }
                Err(_) => return self.control_error(&unavailable()),
            };
            return self.reply(200, "control", &json, &body);
        }
        let set_by = format!("control {}", pending.peer);
        match switchboard::control(&HostStore, &request, &set_by, now) {
            Ok(Ok(change)) => {
                if change.changed {
                    Metrics::add(metrics.control_changes, 1);
                    warn!("reflex control: {change}");
                }
                if let Ok(board) = switchboard::read(&HostStore) {
                    metrics.switches(&board.effective(&self.worker.own_switches(), now), now);
                }
                let body = control::render_change(&change);
                self.reply(200, "control", &json, &body);
            }
            Ok(Err(err)) => self.control_error(&err),
            Err(_) => {
                Metrics::add(metrics.shared_state_errors, 1);
                self.control_error(&unavailable())
            }
        }
    }

    fn control_error(&mut self, err: &ControlError) {
        let json = [("content-type".to_string(), "application/json".to_string())];
        let body = control::render_error(err);
        self.reply(err.status, "control", &json, &body);
    }

    /// Kill and shed switches. Returns true when the request was answered.
    fn emergency(
        &mut self,
        switches: &Switches,
        path: &str,
        priority: Priority,
        metrics: &Metrics,
        now: Instant,
    ) -> bool {
        let header = |name: &str| self.get_http_request_header(name);
        let facts = RequestFacts {
            cluster: self.cluster.as_deref(),
            path,
            header: &header,
        };
        if let Some(rule) = switches.kill_for(now, &facts).cloned() {
            Metrics::add(metrics.killed, 1);
            self.reply(rule.status, "killed", &rule.headers, &rule.body);
            return true;
        }
        let hash = match self.header("x-request-id") {
            Some(id) => request_hash(&id),
            None => self.rng.next_u64(),
        };
        if switches.shed_decision(now, priority, hash) {
            Metrics::add(metrics.emergency_shed, 1);
            self.reply(
                503,
                "emergency-shed",
                &[("retry-after".into(), "1".into())],
                "shed by reflex emergency switch\n",
            );
            return true;
        }
        false
    }

    /// Admission to the local service. Returns true when the request was shed.
    fn admit(
        &mut self,
        config: &Config,
        priority: Priority,
        metrics: &Metrics,
        now: Instant,
    ) -> bool {
        let a = &config.admission;
        let decision = match admission::admit(&HostStore, a, now, priority, self.automation.dry_run)
        {
            Ok(decision) => decision,
            Err(_) => {
                // Fail open: an unreadable limiter must not turn into an outage.
                Metrics::add(metrics.shared_state_errors, 1);
                return false;
            }
        };
        Metrics::set(metrics.admission_limit, u64::from(decision.limit));
        Metrics::set(metrics.admission_in_flight, u64::from(decision.in_flight));
        self.admitted = decision.counted;
        self.quiet = decision.quiet;
        let class = Metrics::class(priority);
        if decision.would_shed.is_some() {
            Metrics::add(metrics.admission_dry_run_shed, 1);
            self.would_refuse.push("overloaded");
        }
        match decision.shed {
            None => {
                Metrics::add(metrics.admitted[class], 1);
                false
            }
            Some(shed) => {
                Metrics::add(metrics.shed[class], 1);
                let reason = match shed {
                    admission::Shed::RateLimited => {
                        Metrics::add(metrics.rate_limited, 1);
                        "rate-limited"
                    }
                    admission::Shed::OverLimit => "overloaded",
                };
                let headers: Vec<(String, String)> = a
                    .reject
                    .retry_after_header()
                    .map(|v| ("retry-after".to_string(), v))
                    .into_iter()
                    .collect();
                self.reply(
                    a.reject.status,
                    reason,
                    &headers,
                    "overloaded: request shed by reflex\n",
                );
                true
            }
        }
    }

    /// The destination's guards. Returns true when the request was refused.
    fn guard(
        &mut self,
        config: &Config,
        policies: &Policies,
        route: Option<&str>,
        eligibility: Eligibility,
        metrics: &Metrics,
        now: Instant,
    ) -> bool {
        let Some(cluster) = self.cluster.clone() else {
            return false;
        };
        let route = match policies.breaker.scope {
            crate::config::BreakerScope::Route => route,
            crate::config::BreakerScope::Cluster => None,
        };
        let destination = guard::destination(&cluster, route);
        let key = guard::key(&destination);
        self.worker
            .remember(&destination, config.endpoints.max_clusters);
        let wants_retries = eligibility == Eligibility::Eligible;
        let start = match guard::start(
            &HostStore,
            &key,
            policies,
            now,
            &mut self.rng,
            wants_retries,
            self.automation,
        ) {
            Ok(start) => start,
            Err(_) => {
                Metrics::add(metrics.shared_state_errors, 1);
                return false;
            }
        };
        if let Some(t) = &start.transition {
            transitions::breaker(metrics, &destination, t, policies.breaker.dry_run);
        }
        Metrics::add(
            metrics.guard_dry_run_rejections,
            start.would_refuse.len() as u64,
        );
        self.would_refuse
            .extend(start.would_refuse.iter().map(|r| r.name()));
        if policies.throttling.enabled {
            Metrics::set(
                metrics.throttle_probability_permille,
                (start.throttle_probability * 1_000.0).round() as u64,
            );
        }
        if wants_retries && policies.retries.enabled {
            Metrics::add(metrics.retries_allowed, u64::from(start.granted));
            Metrics::add(
                metrics.retries_denied_budget,
                u64::from(
                    policies.retries.max_retries - start.granted.min(policies.retries.max_retries),
                ),
            );
            Metrics::set(
                metrics.retry_budget_available,
                start.budget_level.floor() as u64,
            );
        }
        if let Some(refusal) = start.refused {
            match refusal {
                Refusal::BreakerOpen => {
                    Metrics::add(metrics.breaker_rejected, 1);
                    let r = &policies.breaker.local_reply;
                    self.reply(r.status, refusal.name(), &r.headers, &r.body);
                }
                Refusal::Throttled => {
                    Metrics::add(metrics.throttle_rejected, 1);
                    let status = policies.throttling.reject_status;
                    self.reply(
                        status,
                        refusal.name(),
                        &[],
                        "throttled by reflex: the destination keeps rejecting\n",
                    );
                }
                Refusal::BulkheadFull => {
                    Metrics::add(metrics.bulkhead_rejected, 1);
                    let status = policies.bulkhead.status;
                    self.reply(
                        status,
                        refusal.name(),
                        &[],
                        "bulkhead full: too many requests in flight to this destination\n",
                    );
                }
            }
            return true;
        }
        self.guard = Some((key, destination, start));
        false
    }

    /// Hands Envoy's router the retry decision: how many retries (always set, so a route's
    /// own retry count can never exceed the budget), on what, and the per-try timeout.
    fn set_retry_headers(&mut self, policies: &Policies, eligibility: Eligibility, now: Instant) {
        let retries = policies.retries;
        if !retries.enabled || retries.dry_run || self.automation.dry_run {
            return;
        }
        let granted = match (eligibility, &self.guard) {
            (Eligibility::Disabled, _) => return,
            (Eligibility::NonIdempotent, _) => 0,
            (Eligibility::Eligible, Some((_, _, start))) => start.granted,
            (Eligibility::Eligible, None) => 0,
        };
        self.set_http_request_header("x-envoy-max-retries", Some(&granted.to_string()));
        if granted == 0 {
            return;
        }
        self.set_http_request_header("x-envoy-retry-on", Some(&retries.retry_on_header()));
        if let Some(codes) = retries.status_codes_header() {
            self.set_http_request_header("x-envoy-retriable-status-codes", Some(&codes));
        }
        // A per-try timeout only where a retry can follow it: without one it would only cut
        // a slow but healthy request short.
        if let (Some(t), Some(cluster)) = (&retries.per_try_timeout, &self.cluster) {
            let estimate = self.worker.latency_quantile(cluster, t.quantile, now);
            let timeout = per_try_timeout(estimate, t.factor, t.min, t.max);
            self.set_http_request_header(
                "x-envoy-upstream-rq-per-try-timeout-ms",
                Some(&timeout.0.to_string()),
            );
        }
    }

    /// Chooses the endpoints for this request and writes them into the steering header.
    fn steer(&mut self, config: &Config, metrics: &Metrics) {
        let lb = &config.load_balancing;
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let table = EndpointTable::new(&HostStore, config);
        let typical = self.worker.typical_latency(&cluster);
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
        if lb.dry_run || self.automation.dry_run {
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

    /// Attempts Envoy made for this request: the upstream's own count when Envoy reports
    /// it, else the position of the serving endpoint in reflex's order.
    fn attempts(&self, served: Option<&str>) -> u32 {
        if let Some(n) = property(&["upstream", "request_attempt_count"])
            .as_deref()
            .and_then(properties::int64)
            .and_then(|n| u32::try_from(n).ok())
        {
            return n.max(1);
        }
        served
            .and_then(|s| self.order.iter().position(|o| o == s))
            .map_or(1, |i| i as u32 + 1)
    }
}

fn unavailable() -> ControlError {
    ControlError {
        status: 503,
        message: "shared state unavailable".into(),
    }
}

impl Context for ReflexHttp {}

impl HttpContext for ReflexHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let (Some(config), Some(metrics)) = (self.config.clone(), self.metrics) else {
            return Action::Continue;
        };
        let now = now();
        if config.role == Role::Switches {
            // Renew from the traffic (only the current filter chain sees any), then apply
            // this instance's own kill and shed at once.
            self.worker.renew_switches(now);
            let full_path = self.header(":path").unwrap_or_default();
            let path = properties::path_only(&full_path).to_string();
            // A switches instance may serve the control endpoint: e.g. on a loopback-only
            // control listener of its own, beside no traffic at all (istio/control-listener.yaml).
            if config.control.enabled && self.control_request(&config, &path, end_of_stream) {
                return Action::Pause;
            }
            // The operator's endpoints (at their default paths) stay reachable under a kill.
            if path.starts_with(OPERATOR_PATHS) {
                return Action::Continue;
            }
            self.cluster = string_property(&["xds", "cluster_name"]);
            let priority = config.admission.priority.classify(
                self.header(&config.admission.priority.header).as_deref(),
                &path,
            );
            let own = self.worker.own_switches();
            if self.emergency(&own, &path, priority, &metrics, now) {
                return Action::Pause;
            }
            return Action::Continue;
        }
        self.started_us = now_us();
        Metrics::add(metrics.requests, 1);
        // Only reflex may steer: a client-supplied endpoint choice is removed before anything
        // else reads it.
        if self.header(&config.steering.header).is_some() {
            self.set_http_request_header(&config.steering.header, None);
            Metrics::add(metrics.steering_header_stripped, 1);
        }
        let full_path = self.header(":path").unwrap_or_default();
        let path = properties::path_only(&full_path);
        if self.is_status_request(&config, path) {
            Metrics::add(metrics.status_requests, 1);
            self.serve_status(&config);
            return Action::Pause;
        }
        if config.control.enabled && self.control_request(&config, path, end_of_stream) {
            return Action::Pause;
        }
        self.cluster = string_property(&["xds", "cluster_name"]);
        let switches = match switchboard::read(&HostStore) {
            Ok(board) => board.effective(&self.worker.own_switches(), now),
            Err(_) => {
                Metrics::add(metrics.shared_state_errors, 1);
                self.worker.own_switches()
            }
        };
        self.automation = Automation {
            frozen: switches.frozen(now),
            dry_run: config.dry_run || switches.dry_run(now),
        };
        let priority = config.admission.priority.classify(
            self.header(&config.admission.priority.header).as_deref(),
            path,
        );
        if self.emergency(&switches, path, priority, &metrics, now) {
            return Action::Pause;
        }
        if config.admission.enabled && self.admit(&config, priority, &metrics, now) {
            return Action::Pause;
        }
        let cluster = self.cluster.clone().unwrap_or_default();
        let policies = Policies::for_cluster(&config, &cluster);
        let method = self.header(":method").unwrap_or_default();
        let route = string_property(&["xds", "route_name"]);
        let eligibility = policies.retries.plan(&method, path, route.as_deref());
        if self.cluster.is_some()
            && policies.any()
            && self.guard(
                &config,
                &policies,
                route.as_deref(),
                eligibility,
                &metrics,
                now,
            )
        {
            return Action::Pause;
        }
        if config.load_balancing.enabled {
            let steered = property(&properties::STEERING_MARK_PATH)
                .is_some_and(|mark| properties::is_steered_cluster(&mark));
            self.enforce = steered && !config.load_balancing.dry_run && !self.automation.dry_run;
            if steered {
                self.steer(&config, &metrics);
            } else {
                Metrics::add(metrics.unsteered, 1);
            }
        }
        self.set_retry_headers(&policies, eligibility, now);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(pending) = self.control.take() else {
            return Action::Continue;
        };
        let Some(config) = self.config.clone() else {
            return Action::Continue;
        };
        if body_size > config.control.max_body_bytes {
            self.control_error(&ControlError {
                status: 413,
                message: format!(
                    "request body must be at most {} bytes",
                    config.control.max_body_bytes
                ),
            });
            return Action::Pause;
        }
        if !end_of_stream {
            // Envoy buffers the body until the end of the stream.
            self.control = Some(pending);
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.answer_control(&pending, &body);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.answered_us = Some(now_us());
        if self.answered_locally {
            return Action::Continue;
        }
        self.retry_after = self.get_http_response_header("retry-after").is_some();
        if let Some(name) = self.config.as_ref().and_then(|c| c.decision_header.clone()) {
            if !self.would_refuse.is_empty() {
                let value = self.would_refuse.join(",");
                self.set_http_response_header(&name, Some(&format!("dry-run: {value}")));
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(config), Some(metrics)) = (self.config.clone(), self.metrics) else {
            return;
        };
        if config.role == Role::Switches {
            return;
        }
        let now = now();
        if self.answered_locally {
            // Admitted, then refused by a destination guard: give the slot back.
            if self.admitted {
                let frozen = self.automation.frozen;
                if admission::finish(&HostStore, &config.admission, now, None, false, frozen)
                    .is_err()
                {
                    Metrics::add(metrics.shared_state_errors, 1);
                }
            }
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
        let answer = Observation::from_response(code, flags, latency_us);
        // A 429 with Retry-After penalises its endpoint in scoring; the breaker and the
        // admission controller judge the answer as it is.
        let observation = answer.map(|o| o.with_retry_after(code, self.retry_after));
        let served = property(&["upstream", "address"]);
        let served = served.as_deref().and_then(properties::string);
        let attempts = self.attempts(served);
        if self.admitted {
            // A retried request's latency includes a failed attempt (a per-try timeout on a
            // hanging endpoint, say): it measures that endpoint, not the load.
            let sample = observation
                .filter(|o| o.outcome != Outcome::Abandoned && attempts == 1)
                .and(latency_us)
                .map(|us| us / 1_000.0);
            match admission::finish(
                &HostStore,
                &config.admission,
                now,
                sample,
                self.quiet,
                self.automation.frozen,
            ) {
                Ok(Some(change)) if change.changed() => {
                    Metrics::add(metrics.limit_changes, 1);
                    Metrics::set(metrics.admission_limit, u64::from(change.to.ceil() as u32));
                    self.worker.log_limit_change(&change, now);
                }
                Ok(_) => {}
                Err(_) => Metrics::add(metrics.shared_state_errors, 1),
            }
        }
        let Some(cluster) = self
            .cluster
            .clone()
            .or_else(|| string_property(&["xds", "cluster_name"]))
        else {
            return;
        };
        if let Some((key, destination, start)) = self.guard.take() {
            let policies = Policies::for_cluster(&config, &cluster);
            let done = Finish {
                outcome: answer.map(|o| o.outcome),
                status: code,
                attempts,
            };
            match guard::finish(
                &HostStore,
                &key,
                &policies,
                now,
                &start,
                &done,
                self.automation,
            ) {
                Ok(Some(t)) => {
                    transitions::breaker(&metrics, &destination, &t, policies.breaker.dry_run)
                }
                Ok(None) => {}
                Err(_) => Metrics::add(metrics.shared_state_errors, 1),
            }
            if policies.retries.enabled {
                Metrics::add(metrics.retries_used, u64::from(attempts.saturating_sub(1)));
            }
        }
        if served.is_none() && self.order.is_empty() {
            // No upstream was chosen (no route, no healthy host): nothing to learn.
            return;
        }
        if let (Some(us), Some(o)) = (latency_us, observation) {
            // Single-attempt successes only: retries and failures would skew the estimate
            // the per-try timeout is derived from.
            if attempts == 1 && o.outcome == Outcome::Success {
                self.worker.record_latency(&cluster, us, now, &config);
            }
        }
        let done = Completion {
            order: &self.order,
            counted_in_flight: self.counted_in_flight,
            served,
            observation,
            enforce: self.enforce,
        };
        let table = EndpointTable::new(&HostStore, &config).with_automation(self.automation);
        match table.complete(&cluster, &done, now, &mut self.rng) {
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
