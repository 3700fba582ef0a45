//! Host-call probe for the cost benchmark. The plugin configuration is a plain string of
//! `kind=count` pairs, e.g. `metrics=3,headers=1,hset=1,props=5,reads=4,updates=2,time=6`, read
//! once at configuration time. Per request it then makes exactly that many host calls of each
//! kind, where reflex makes them:
//!
//! - `metrics`: counter increments, the first on request headers, the rest at `on_log`;
//! - `headers`: request-header reads on request headers (`x-reflex-endpoint`, `:path`, ...);
//! - `hset`: request-header writes on request headers (`x-reflex-endpoint`);
//! - `props`: property reads, the first half on request headers, the rest at `on_log`
//!   (cycling through `xds.cluster_name`, the cluster's `filter_metadata.reflex.steering`,
//!   `upstream.address`, `response.code`, `response.flags`);
//! - `reads`: `get_shared_data` of a 64-byte value (reflex reads member lists and endpoint
//!   records this way to score candidates), on request headers;
//! - `updates`: one `get_shared_data` plus one compare-and-swap `set_shared_data` of a 64-byte
//!   value (an endpoint-record update), the first on request headers, the rest at `on_log`;
//! - `time`: clock reads, spread over request headers, response headers and `on_log`.
//!
//! Nothing is decided and nothing is logged: the difference between a probe shape and the
//! no-op filter is the cost of those host calls (plus the SDK's copies of what they return).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::<ProbeRoot>::default());
}}

const HEADERS: [&str; 3] = ["x-reflex-endpoint", ":path", "x-reflex-priority"];
const PROPS: [&[&str]; 5] = [
    &["xds", "cluster_name"],
    &[
        "xds",
        "cluster_metadata",
        "filter_metadata",
        "reflex",
        "steering",
    ],
    &["upstream", "address"],
    &["response", "code"],
    &["response", "flags"],
];
const SHARED_KEYS: [&str; 3] = [
    "probe.v1.endpoint.7.backend.127.0.0.1:9001",
    "probe.v1.endpoint.7.backend.127.0.0.1:9002",
    "probe.v1.cluster.7.backend",
];
const VALUE_BYTES: usize = 64;

#[derive(Default, Clone, Copy)]
struct Shape {
    metrics: u32,
    headers: u32,
    hset: u32,
    props: u32,
    reads: u32,
    updates: u32,
    time: u32,
}

impl Shape {
    fn parse(text: &str) -> Option<Shape> {
        let mut shape = Shape::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, count) = pair.split_once('=')?;
            let count: u32 = count.trim().parse().ok()?;
            match kind.trim() {
                "metrics" => shape.metrics = count,
                "headers" => shape.headers = count,
                "hset" => shape.hset = count,
                "props" => shape.props = count,
                "reads" => shape.reads = count,
                "updates" => shape.updates = count,
                "time" => shape.time = count,
                _ => return None,
            }
        }
        Some(shape)
    }
}

#[derive(Default)]
struct ProbeRoot {
    shape: Rc<Shape>,
    metric: u32,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let Some(shape) = std::str::from_utf8(&bytes).ok().and_then(Shape::parse) else {
            return false;
        };
        if shape.metrics > 0 {
            match hostcalls::define_metric(MetricType::Counter, "reflex_probe_total") {
                Ok(id) => self.metric = id,
                Err(_) => return false,
            }
        }
        self.shape = Rc::new(shape);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp {
            shape: Rc::clone(&self.shape),
            metric: self.metric,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ProbeHttp {
    shape: Rc<Shape>,
    metric: u32,
}

impl ProbeHttp {
    fn props(&self, range: std::ops::Range<u32>) -> usize {
        range
            .filter_map(|i| hostcalls::get_property(PROPS[i as usize % PROPS.len()].to_vec()).ok())
            .flatten()
            .map(|v| v.len())
            .sum()
    }

    fn update(&self, i: u32, seen: usize) {
        let key = SHARED_KEYS[i as usize % SHARED_KEYS.len()];
        let (old, cas) = match hostcalls::get_shared_data(key) {
            Ok((data, cas)) => (data.unwrap_or_default(), cas),
            Err(_) => (Vec::new(), None),
        };
        let mut value = [0u8; VALUE_BYTES];
        value[0] = 1;
        value[1] = old.get(1).copied().unwrap_or(0).wrapping_add(1);
        value[2] = (seen & 0xff) as u8;
        let _ = hostcalls::set_shared_data(key, Some(&value), cas);
    }

    fn clock(&self, n: u32) {
        for _ in 0..n {
            let _ = hostcalls::get_current_time();
        }
    }
}

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let s = *self.shape;
        if s.metrics > 0 {
            let _ = hostcalls::increment_metric(self.metric, 1);
        }
        for i in 0..s.headers as usize {
            let _ = self.get_http_request_header(HEADERS[i % HEADERS.len()]);
        }
        let seen = self.props(0..s.props / 2);
        for i in 0..s.reads {
            let _ = hostcalls::get_shared_data(SHARED_KEYS[i as usize % SHARED_KEYS.len()]);
        }
        if s.updates > 0 {
            self.update(0, seen);
        }
        for _ in 0..s.hset {
            self.set_http_request_header(HEADERS[0], Some("127.0.0.1:9001,127.0.0.1:9002"));
        }
        self.clock(s.time.div_ceil(2));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.clock(u32::from(self.shape.time > 2));
        Action::Continue
    }

    fn on_log(&mut self) {
        let s = *self.shape;
        let seen = self.props(s.props / 2..s.props);
        for i in 1..s.updates {
            self.update(i, seen);
        }
        self.clock((s.time / 2).saturating_sub(u32::from(s.time > 2)));
        for _ in 1..s.metrics {
            let _ = hostcalls::increment_metric(self.metric, 1);
        }
    }
}
