//! Bounded fuzzing of every parser of untrusted input, with proptest: the plugin
//! configuration, the control endpoint's requests and token check, the Envoy property
//! decoders, request headers (`x-reflex-priority`-style classes, `Retry-After`, request ids)
//! and every shared-data decoder (a value another worker, another build or a corruption may
//! have written).
//!
//! Each parser gets random inputs and structure-aware ones: JSON documents built from the
//! real field names with values of every type, mutated valid documents, and byte encodings
//! built field by field and then mutated (a length or count set huge, a field dropped or
//! duplicated, a bit flipped, the value truncated). The properties: no panic; every result
//! is well formed (errors name a path and a rule on one line; decoded values are within the
//! documented caps); decoding allocates no more than a constant plus a small multiple of its
//! input (a counting global allocator watches the decoding thread) and returns quickly;
//! `decode(encode(x)) == x`; parsing is deterministic.
//!
//! Bounded for CI: every property runs [`CASES`] cases (the whole file takes ~10 s in
//! debug mode on a 2-core machine). `PROPTEST_CASES` overrides the count (proptest's `proptest!`
//! macro re-reads the environment over the configuration given here). A long campaign:
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release --test fuzz_parsers
//! PROPTEST_CASES=20000 PROPTEST_RNG_SEED=7 cargo test --test fuzz_parsers config   # one area, reproducible
//! ```
//!
//! Failures are not persisted to `proptest-regressions` files: a CI run must not write into
//! the working tree, and a persisted seed stops reproducing as soon as a strategy changes.
//! proptest prints the shrunk failing input; turn it into a named unit test next to the
//! parser it broke.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant as WallClock};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Map, Value};

use reflex::config::Config;
use reflex::control::{self, ControlRequest, MAX_EXPIRES_IN, MAX_REQUEST_BODY};
use reflex::core::breaker::{Breaker, BreakerReason, BreakerState, RollingCounts, SLOTS};
use reflex::core::concurrency_limit::{ConcurrencyLimiter, MAX_NO_LOAD_WINDOWS};
use reflex::core::emergency::{
    request_hash, KillRule, KillScope, Shed, Switch, Switches, MAX_BODY_LEN, MAX_KILL_RULES,
    MAX_SET_BY_LEN,
};
use reflex::core::ewma::{MeanEwma, PeakEwma};
use reflex::core::outlier::{ActiveEjection, Detector, Ejection};
use reflex::core::priority::Priority;
use reflex::core::rate::DecayedCounts;
use reflex::core::retry_policy::{parse_retry_after, MAX_RETRY_AFTER};
use reflex::core::throttle::{Bulkhead, Throttle};
use reflex::core::time::Instant;
use reflex::core::token_bucket::TokenBucket;
use reflex::properties;
use reflex::state::admission::AdmissionState;
use reflex::state::codec::{
    decode_list, encode_list, DecodeError, EndpointRecord, Member, Writer, FORMAT,
    MAX_LIST_ENTRIES, MAX_NAME_LEN,
};
use reflex::state::guard::Guard;
use reflex::state::record::Record;
use reflex::state::switchboard::{Pushed, SwitchBoard, MAX_PUSHERS};

/// Cases per property in CI (`PROPTEST_CASES` overrides it).
const CASES: u32 = 512;

fn fuzz_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        // A failure is reported after at most this much shrinking, not after minutes.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

// ---- allocation and time watch -------------------------------------------------------------

/// Counts what the current thread allocates while armed (the test harness runs each test on
/// its own thread, so concurrent tests do not disturb each other's counts).
struct Watch;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            LARGEST.with(|l| l.set(l.get().max(size)));
            TOTAL.with(|t| t.set(t.get().saturating_add(size)));
        }
    });
}

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static WATCH: Watch = Watch;

/// What one call cost: its largest single allocation, all bytes it allocated, its duration.
struct Cost {
    largest: usize,
    total: usize,
    took: Duration,
}

fn watched<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|t| t.set(0));
    ARMED.with(|a| a.set(true));
    let start = WallClock::now();
    let out = f();
    let took = start.elapsed();
    ARMED.with(|a| a.set(false));
    let cost = Cost {
        largest: LARGEST.with(Cell::get),
        total: TOTAL.with(Cell::get),
        took,
    };
    (out, cost)
}

/// A decoder may pre-allocate up to its caps (a few KiB) before it has checked that the
/// input holds that much, and otherwise allocates in proportion to its input: a decoded list
/// of n entries needs at least 2n input bytes (an empty name) and may hold a `Vec` of 2n
/// slots of 24 bytes or more, hence the factors below.
const ALLOC_SLACK: usize = 64 * 1024;
/// Far above what any decoder takes in a loaded debug build; a runaway loop blows it.
const TIME_LIMIT: Duration = Duration::from_secs(2);

fn check_cost(what: &str, input_len: usize, cost: &Cost) -> Result<(), TestCaseError> {
    prop_assert!(
        cost.largest <= 32 * input_len + ALLOC_SLACK / 8,
        "{what}: one allocation of {} bytes for {input_len} input bytes",
        cost.largest
    );
    prop_assert!(
        cost.total <= 128 * input_len + ALLOC_SLACK,
        "{what}: allocated {} bytes for {input_len} input bytes",
        cost.total
    );
    prop_assert!(
        cost.took <= TIME_LIMIT,
        "{what}: took {:?} for {input_len} bytes",
        cost.took
    );
    Ok(())
}

// ---- configuration ---------------------------------------------------------------------------

/// A document with every section set to valid values (the shipped fixtures only use a few).
fn rich_document() -> Value {
    json!({
        "version": 1,
        "dryRun": false,
        "steering": {"header": "x-reflex-endpoint"},
        "endpoints": {"maxClusters": 64, "maxEndpointsPerCluster": 256, "forgetAfter": "5m"},
        "loadBalancing": {"enabled": true, "dryRun": false, "latencyDecay": "2s", "defaultRtt": "25ms",
                          "errorWindow": "10s", "errorWeight": 10, "slowStart": "10s", "fallbacks": 2,
                          "exploreRatio": 0.01},
        "outlierDetection": {
            "consecutive5xx": {"enabled": true, "threshold": 5},
            "consecutiveGatewayFailure": {"threshold": 3},
            "failurePercentage": {"threshold": 50, "minVolume": 20},
            "successRate": {"stdevFactor": 1.9, "minHosts": 3, "minVolume": 20},
            "latency": {"factor": 3, "minLatency": "20ms", "for": "2s", "minHosts": 3},
            "baseEjectionTime": "10s", "maxEjectionTime": "300s", "maxEjectionPercent": 50,
            "panicThresholdPercent": 50, "probes": 3
        },
        "status": {"enabled": true, "path": "/.reflex/status", "loopbackOnly": true},
        "tickInterval": "1s",
        "retries": {
            "enabled": true, "dryRun": true, "maxRetries": 3,
            "retryOn": ["5xx", "refused-stream", "retriable-status-codes"],
            "retriableStatusCodes": [409, 429],
            "budget": {"ratio": 0.1, "minPerSecond": 0, "window": "30s"},
            "perTryTimeout": {"enabled": true, "quantile": 0.99, "factor": 3, "min": "50ms",
                              "max": "5s", "halfLife": "1m"},
            "routes": [{"pathPrefix": "/orders", "methods": ["POST"]},
                       {"routeName": "payments", "methods": ["POST", "PATCH"]}],
            "clusters": {"outbound|80||pay.svc": {"maxRetries": 1, "routes": []}}
        },
        "circuitBreaker": {
            "enabled": true, "failureRate": 0.25, "minimumRequests": 50, "window": "30s",
            "consecutiveFailures": 5, "sleepWindow": "250ms", "halfOpenProbes": 1, "scope": "route",
            "localReply": {"status": 429, "body": "busy", "headers": {"retry-after": "5"}},
            "clusters": {"outbound|80||pay.svc": {"failureRate": 1}}
        },
        "bulkhead": {"enabled": true, "maxConcurrent": 64, "status": 429,
                     "clusters": {"db": {"maxConcurrent": 8}}},
        "clientThrottling": {"enabled": true, "k": 1.5, "window": "1m", "rejectStatus": 429,
                             "rejectionCodes": [503, 429], "clusters": {"api": {"k": 10}}},
        "admission": {
            "enabled": true, "controller": "aimd", "initialLimit": 50, "minLimit": 10,
            "maxLimit": 400, "maxConcurrency": 300, "window": "1s", "smoothing": 1, "tolerance": 2,
            "noLoadWindows": 64, "aimd": {"backoff": 0.5, "target": "250ms"},
            "priority": {"header": "x-prio", "defaultShare": 1, "sheddableShare": 0.5,
                         "routes": [{"pathPrefix": "/batch", "priority": "sheddable"}]},
            "reject": {"status": 429, "retryAfter": "1500ms"},
            "rateLimit": {"enabled": true, "requestsPerSecond": 250.5, "burst": 10}
        },
        "emergency": {
            "kill": [{"scope": {"cluster": "outbound|80||pay.svc"}},
                     {"scope": {"pathPrefix": "/admin", "header": {"name": "x-tenant", "value": "acme"}},
                      "status": 410, "body": "gone", "headers": {"retry-after": "60"}}],
            "shed": {"sheddablePercent": 50, "defaultPercent": 5},
            "freeze": false, "dryRun": false
        },
        "control": {"enabled": true, "pathPrefix": "/ops/reflex", "token": "0123456789abcdef-token",
                    "allowFrom": "loopback", "maxBodyBytes": 4096}
    })
}

/// Valid documents to mutate: the checked-in fixtures, the benchmark's every-feature
/// document and [`rich_document`].
fn seed_documents() -> Vec<Value> {
    let texts = [
        include_str!("fixtures/config/inbound.json"),
        include_str!("fixtures/config/istio-outbound.json"),
        include_str!("fixtures/config/standalone-outbound.json"),
        include_str!("../bench/configs/reflex-all.json"),
    ];
    let mut seeds: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).expect("seed documents are JSON"))
        .collect();
    seeds.push(rich_document());
    seeds.push(json!({"version": 1, "role": "switches",
                      "emergency": {"freeze": true, "kill": [{"scope": {"all": true}}]}}));
    seeds
}

/// Names that mean something somewhere in the schema, so random objects hit real fields.
const FIELD_NAMES: &[&str] = &[
    "version",
    "role",
    "dryRun",
    "enabled",
    "steering",
    "header",
    "endpoints",
    "maxClusters",
    "maxEndpointsPerCluster",
    "forgetAfter",
    "loadBalancing",
    "latencyDecay",
    "defaultRtt",
    "errorWindow",
    "errorWeight",
    "slowStart",
    "fallbacks",
    "exploreRatio",
    "outlierDetection",
    "consecutive5xx",
    "consecutiveGatewayFailure",
    "failurePercentage",
    "successRate",
    "latency",
    "threshold",
    "minVolume",
    "stdevFactor",
    "minHosts",
    "factor",
    "minLatency",
    "for",
    "baseEjectionTime",
    "maxEjectionTime",
    "maxEjectionPercent",
    "panicThresholdPercent",
    "probes",
    "status",
    "path",
    "loopbackOnly",
    "tickInterval",
    "retries",
    "maxRetries",
    "retryOn",
    "retriableStatusCodes",
    "budget",
    "ratio",
    "minPerSecond",
    "window",
    "perTryTimeout",
    "quantile",
    "min",
    "max",
    "halfLife",
    "routes",
    "pathPrefix",
    "routeName",
    "methods",
    "clusters",
    "circuitBreaker",
    "failureRate",
    "minimumRequests",
    "consecutiveFailures",
    "sleepWindow",
    "halfOpenProbes",
    "scope",
    "localReply",
    "body",
    "headers",
    "bulkhead",
    "maxConcurrent",
    "clientThrottling",
    "k",
    "rejectStatus",
    "rejectionCodes",
    "admission",
    "controller",
    "initialLimit",
    "minLimit",
    "maxLimit",
    "smoothing",
    "tolerance",
    "noLoadWindows",
    "aimd",
    "backoff",
    "target",
    "priority",
    "defaultShare",
    "sheddableShare",
    "reject",
    "retryAfter",
    "rateLimit",
    "requestsPerSecond",
    "burst",
    "maxConcurrency",
    "emergency",
    "kill",
    "shed",
    "sheddablePercent",
    "defaultPercent",
    "freeze",
    "control",
    "token",
    "allowFrom",
    "maxBodyBytes",
    "all",
    "cluster",
    "name",
    "value",
    "expiresIn",
];

/// Strings the schema gives meaning to, and near misses.
const WORDS: &[&str] = &[
    "",
    "x-reflex-endpoint",
    "X-Upper",
    ":authority",
    "/.reflex/status",
    "/.reflex/control",
    "/",
    "/api",
    "api",
    "/a b",
    "/a?b",
    "outbound|80||pay.svc",
    "switches",
    "filter",
    "aimd",
    "gradient",
    "loopback",
    "any",
    "route",
    "cluster",
    "critical",
    "default",
    "sheddable",
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-status-codes",
    "GET",
    "POST",
    "0123456789abcdef-token",
    "short",
    "retry-after",
    "content-length",
    "a\nb",
    "\u{0}",
    "é",
    "\u{2028}",
];

const DURATIONS: &[&str] = &[
    "0s",
    "0ms",
    "1ms",
    "9ms",
    "10ms",
    "25ms",
    "99ms",
    "100ms",
    "250ms",
    "1s",
    "1.5s",
    "2s",
    "10s",
    "30s",
    "59.999s",
    "60s",
    "61s",
    "1m",
    "5m",
    "10m",
    "15m",
    "1h",
    "24h",
    "25h",
    "169h",
    "0.0001s",
    "1.0001s",
    ".5s",
    "5.s",
    "5",
    "s",
    "1.2.3s",
    "1e3ms",
    "-1s",
    "1 s",
    "10 minutes",
    "99999999999999999999h",
    "18446744073709551615ms",
    "18446744073709551615h",
    "１s",
];

fn json_number() -> BoxedStrategy<Value> {
    prop_oneof![
        (-3i64..=1100).prop_map(Value::from),
        prop::sample::select(vec![
            0u64,
            1,
            2,
            3,
            8,
            9,
            16,
            64,
            100,
            101,
            199,
            200,
            429,
            503,
            599,
            600,
            1000,
            1001,
            4096,
            4097,
            65_535,
            65_536,
            100_000,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ])
        .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![
            0.0f64,
            -0.0,
            0.01,
            0.1,
            0.5,
            0.75,
            0.9,
            0.99,
            1.0,
            1.1,
            1.5,
            1.9,
            2.5,
            10.0,
            100.0,
            100.5,
            1000.0,
            1e6,
            1e7,
            -1.0,
            1e-300,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
        ])
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
    ]
    .boxed()
}

fn json_string() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(Value::from),
        3 => prop::sample::select(DURATIONS).prop_map(Value::from),
        1 => prop::sample::select(FIELD_NAMES).prop_map(Value::from),
        2 => any::<String>().prop_map(Value::from),
        1 => "[ -~]{0,40}".prop_map(Value::from),
    ]
    .boxed()
}

fn json_scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        2 => any::<bool>().prop_map(Value::from),
        4 => json_number(),
        4 => json_string(),
    ]
    .boxed()
}

fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(FIELD_NAMES).prop_map(str::to_string),
        1 => prop::sample::select(WORDS).prop_map(str::to_string),
        1 => any::<String>(),
    ]
    .boxed()
}

/// Any JSON value, with keys mostly taken from the schema.
fn json_any() -> BoxedStrategy<Value> {
    json_scalar()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((json_key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

/// Mostly a value of the expected kind, sometimes anything.
fn leaf(expected: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![5 => expected, 1 => json_scalar(), 1 => json_any()].boxed()
}

fn duration() -> BoxedStrategy<Value> {
    leaf(
        prop::sample::select(DURATIONS)
            .prop_map(Value::from)
            .boxed(),
    )
}
fn number() -> BoxedStrategy<Value> {
    leaf(json_number())
}
fn flag() -> BoxedStrategy<Value> {
    leaf(any::<bool>().prop_map(Value::from).boxed())
}
fn word() -> BoxedStrategy<Value> {
    leaf(json_string())
}
fn list_of(item: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    leaf(
        prop::collection::vec(item, 0..5)
            .prop_map(Value::Array)
            .boxed(),
    )
}

type Fields = Vec<(&'static str, BoxedStrategy<Value>)>;

/// An object with a random subset of `fields`, sometimes an unknown field too.
fn object(fields: Fields) -> BoxedStrategy<Value> {
    let parts: Vec<_> = fields
        .into_iter()
        .map(|(name, value)| prop::option::weighted(0.5, value.prop_map(move |v| (name, v))))
        .collect();
    let extra = prop::option::weighted(0.1, (json_key(), json_scalar()));
    leaf(
        (parts, extra)
            .prop_map(|(parts, extra)| {
                let mut map: Map<String, Value> = parts
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                if let Some((k, v)) = extra {
                    map.insert(k, v);
                }
                Value::Object(map)
            })
            .boxed(),
    )
}

/// A section that takes per-cluster overrides: `clusters` maps names to partial copies.
fn with_overrides(fields: impl Fn() -> Fields) -> BoxedStrategy<Value> {
    let clusters = prop::collection::vec(
        (
            prop_oneof![
                prop::sample::select(vec!["outbound|80||pay.svc", "db", "api", "", "a\nb"])
                    .prop_map(str::to_string),
                any::<String>(),
            ],
            object(fields()),
        ),
        0..3,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().collect()))
    .boxed();
    let mut all = fields();
    all.push(("clusters", leaf(clusters)));
    object(all)
}

fn detector() -> BoxedStrategy<Value> {
    object(vec![
        ("enabled", flag()),
        ("dryRun", flag()),
        ("threshold", number()),
        ("minVolume", number()),
        ("stdevFactor", number()),
        ("minHosts", number()),
        ("factor", number()),
        ("minLatency", duration()),
        ("for", duration()),
    ])
}

fn local_reply() -> BoxedStrategy<Value> {
    object(vec![
        ("status", number()),
        ("body", word()),
        ("headers", header_map()),
    ])
}

fn header_map() -> BoxedStrategy<Value> {
    leaf(
        prop::collection::vec(
            (
                prop_oneof![
                    prop::sample::select(vec![
                        "retry-after",
                        "x-reflex",
                        "content-length",
                        "X-Upper",
                        "",
                        "a b",
                    ])
                    .prop_map(str::to_string),
                    any::<String>(),
                ],
                word(),
            ),
            0..4,
        )
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
        .boxed(),
    )
}

fn kill_scope() -> BoxedStrategy<Value> {
    object(vec![
        ("all", flag()),
        ("cluster", word()),
        ("pathPrefix", word()),
        ("header", object(vec![("name", word()), ("value", word())])),
    ])
}

fn kill_rule() -> BoxedStrategy<Value> {
    object(vec![
        ("scope", kill_scope()),
        ("status", number()),
        ("body", word()),
        ("headers", header_map()),
        ("expiresIn", duration()),
    ])
}

fn retries_fields() -> Fields {
    vec![
        ("enabled", flag()),
        ("dryRun", flag()),
        ("maxRetries", number()),
        ("retryOn", list_of(word())),
        ("retriableStatusCodes", list_of(number())),
        (
            "budget",
            object(vec![
                ("ratio", number()),
                ("minPerSecond", number()),
                ("window", duration()),
            ]),
        ),
        (
            "perTryTimeout",
            object(vec![
                ("enabled", flag()),
                ("quantile", number()),
                ("factor", number()),
                ("min", duration()),
                ("max", duration()),
                ("halfLife", duration()),
            ]),
        ),
        (
            "routes",
            list_of(object(vec![
                ("pathPrefix", word()),
                ("routeName", word()),
                ("methods", list_of(word())),
            ])),
        ),
    ]
}

fn breaker_fields() -> Fields {
    vec![
        ("enabled", flag()),
        ("dryRun", flag()),
        ("failureRate", number()),
        ("minimumRequests", number()),
        ("window", duration()),
        ("consecutiveFailures", number()),
        ("sleepWindow", duration()),
        ("halfOpenProbes", number()),
        ("scope", word()),
        ("localReply", local_reply()),
    ]
}

fn bulkhead_fields() -> Fields {
    vec![
        ("enabled", flag()),
        ("dryRun", flag()),
        ("maxConcurrent", number()),
        ("status", number()),
    ]
}

fn throttling_fields() -> Fields {
    vec![
        ("enabled", flag()),
        ("dryRun", flag()),
        ("k", number()),
        ("window", duration()),
        ("rejectStatus", number()),
        ("rejectionCodes", list_of(number())),
    ]
}

fn admission() -> BoxedStrategy<Value> {
    object(vec![
        ("enabled", flag()),
        ("dryRun", flag()),
        ("controller", word()),
        ("initialLimit", number()),
        ("minLimit", number()),
        ("maxLimit", number()),
        ("window", duration()),
        ("smoothing", number()),
        ("tolerance", number()),
        ("noLoadWindows", number()),
        ("maxConcurrency", number()),
        (
            "aimd",
            object(vec![("backoff", number()), ("target", duration())]),
        ),
        (
            "priority",
            object(vec![
                ("header", word()),
                ("defaultShare", number()),
                ("sheddableShare", number()),
                (
                    "routes",
                    list_of(object(vec![("pathPrefix", word()), ("priority", word())])),
                ),
            ]),
        ),
        (
            "reject",
            object(vec![("status", number()), ("retryAfter", duration())]),
        ),
        (
            "rateLimit",
            object(vec![
                ("enabled", flag()),
                ("requestsPerSecond", number()),
                ("burst", number()),
            ]),
        ),
    ])
}

fn emergency() -> BoxedStrategy<Value> {
    object(vec![
        ("kill", list_of(kill_rule())),
        (
            "shed",
            object(vec![
                ("sheddablePercent", number()),
                ("defaultPercent", number()),
            ]),
        ),
        ("freeze", flag()),
        ("dryRun", flag()),
    ])
}

fn control_section() -> BoxedStrategy<Value> {
    object(vec![
        ("enabled", flag()),
        ("pathPrefix", word()),
        ("token", word()),
        ("allowFrom", word()),
        ("maxBodyBytes", number()),
    ])
}

/// A document shaped like the schema: every section, random subsets of the real fields,
/// values mostly of the expected kind.
fn shaped_document() -> BoxedStrategy<Value> {
    object(vec![
        (
            "version",
            prop_oneof![9 => Just(Value::from(1)), 1 => json_scalar()].boxed(),
        ),
        ("role", word()),
        ("dryRun", flag()),
        ("tickInterval", duration()),
        ("steering", object(vec![("header", word())])),
        (
            "endpoints",
            object(vec![
                ("maxClusters", number()),
                ("maxEndpointsPerCluster", number()),
                ("forgetAfter", duration()),
            ]),
        ),
        (
            "loadBalancing",
            object(vec![
                ("enabled", flag()),
                ("dryRun", flag()),
                ("latencyDecay", duration()),
                ("defaultRtt", duration()),
                ("errorWindow", duration()),
                ("errorWeight", number()),
                ("slowStart", duration()),
                ("fallbacks", number()),
                ("exploreRatio", number()),
            ]),
        ),
        (
            "outlierDetection",
            object(vec![
                ("consecutive5xx", detector()),
                ("consecutiveGatewayFailure", detector()),
                ("failurePercentage", detector()),
                ("successRate", detector()),
                ("latency", detector()),
                ("baseEjectionTime", duration()),
                ("maxEjectionTime", duration()),
                ("maxEjectionPercent", number()),
                ("panicThresholdPercent", number()),
                ("probes", number()),
            ]),
        ),
        (
            "status",
            object(vec![
                ("enabled", flag()),
                ("path", word()),
                ("loopbackOnly", flag()),
            ]),
        ),
        ("retries", with_overrides(retries_fields)),
        ("circuitBreaker", with_overrides(breaker_fields)),
        ("bulkhead", with_overrides(bulkhead_fields)),
        ("clientThrottling", with_overrides(throttling_fields)),
        ("admission", admission()),
        ("emergency", emergency()),
        ("control", control_section()),
    ])
}

/// A change to a JSON tree: the node reached by following `path` (indices taken modulo the
/// number of children) gets one child replaced, removed or added.
#[derive(Debug, Clone)]
enum Edit {
    Set(Value),
    Remove,
    Add(String, Value),
}

fn edit() -> impl Strategy<Value = (Vec<usize>, Edit)> {
    (
        prop::collection::vec(any::<usize>(), 0..5),
        prop_oneof![
            3 => json_any().prop_map(Edit::Set),
            1 => Just(Edit::Remove),
            2 => (json_key(), json_any()).prop_map(|(k, v)| Edit::Add(k, v)),
        ],
    )
}

fn apply_edit(node: &mut Value, path: &[usize], edit: &Edit) {
    let len = match node {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    };
    let Some((&at, rest)) = path.split_first() else {
        if let Edit::Set(v) = edit {
            *node = v.clone();
        }
        return;
    };
    if len > 0 && !rest.is_empty() {
        let child = match node {
            Value::Object(m) => m.values_mut().nth(at % len),
            Value::Array(a) => a.get_mut(at % len),
            _ => None,
        };
        if let Some(child) = child {
            apply_edit(child, rest, edit);
        }
        return;
    }
    match (node, edit) {
        (Value::Object(m), Edit::Add(k, v)) => {
            m.insert(k.clone(), v.clone());
        }
        (Value::Object(m), _) if len > 0 => {
            let key = m.keys().nth(at % len).cloned().unwrap_or_default();
            match edit {
                Edit::Set(v) => {
                    m.insert(key, v.clone());
                }
                _ => {
                    m.remove(&key);
                }
            }
        }
        (Value::Array(a), Edit::Add(_, v)) => a.push(v.clone()),
        (Value::Array(a), Edit::Set(v)) if len > 0 => a[at % len] = v.clone(),
        (Value::Array(a), Edit::Remove) if len > 0 => {
            a.remove(at % len);
        }
        (node, Edit::Set(v) | Edit::Add(_, v)) => *node = v.clone(),
        _ => {}
    }
}

/// A change to raw bytes (positions taken modulo the length).
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Insert(usize, &'static [u8]),
    Delete(usize, usize),
    Truncate(usize),
}

const JSON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"1e999",
    b"-0",
    b"-1",
    b"null",
    b"true",
    b"18446744073709551616",
    b"\"clusters\"",
    b"\n",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xa8",
    b" ",
    b"0.1e-400",
];

fn byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), 0u8..8).prop_map(|(at, bit)| ByteEdit::Flip(at, bit)),
            (any::<usize>(), prop::sample::select(JSON_TOKENS))
                .prop_map(|(at, t)| ByteEdit::Insert(at, t)),
            (any::<usize>(), 1usize..16).prop_map(|(at, n)| ByteEdit::Delete(at, n)),
            any::<usize>().prop_map(ByteEdit::Truncate),
        ],
        0..4,
    )
}

fn apply_byte_edits(bytes: &mut Vec<u8>, edits: &[ByteEdit]) {
    for e in edits {
        let len = bytes.len();
        match *e {
            ByteEdit::Flip(at, bit) if len > 0 => bytes[at % len] ^= 1 << bit,
            ByteEdit::Insert(at, token) => {
                let at = at % (len + 1);
                bytes.splice(at..at, token.iter().copied());
            }
            ByteEdit::Delete(at, n) if len > 0 => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            ByteEdit::Truncate(at) => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
}

fn check_config(bytes: &[u8]) -> Result<(), TestCaseError> {
    let first = Config::parse(bytes);
    let again = Config::parse(bytes);
    prop_assert_eq!(&first, &again, "parse is not deterministic");
    if let Err(e) = first {
        prop_assert!(!e.rule.is_empty(), "error without a rule: {:?}", e);
        prop_assert!(!e.path.is_empty(), "error without a path: {:?}", e);
        let line = e.to_string();
        prop_assert!(
            !line.contains(['\n', '\r']),
            "error is not one line: {:?}",
            line
        );
    }
    Ok(())
}

#[test]
fn an_empty_field_name_still_gives_a_path() {
    let e = Config::parse(br#"{"version": 1, "": 1}"#).unwrap_err();
    assert!(!e.path.is_empty(), "{e}");
}

#[test]
fn names_with_line_breaks_stay_on_one_error_line() {
    for doc in [
        r#"{"version": 1, "a\nb": 1}"#,
        r#"{"version": 1, "role": "a\nb"}"#,
        r#"{"version": 1, "retries": {"clusters": {"x\ny": {"bad": 1}}}}"#,
    ] {
        let line = Config::parse(doc.as_bytes()).unwrap_err().to_string();
        assert!(!line.contains('\n'), "{doc}: {line:?}");
    }
}

#[test]
fn config_seed_documents_are_valid() {
    for seed in seed_documents() {
        let bytes = serde_json::to_vec(&seed).unwrap();
        if let Err(e) = Config::parse(&bytes) {
            panic!("seed document no longer valid ({e}); update the fuzz seeds: {seed}");
        }
    }
}

proptest! {
    #![proptest_config(fuzz_config(CASES))]

    #[test]
    fn config_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_config(&bytes)?;
    }

    #[test]
    fn config_random_json(doc in json_any(), pretty in any::<bool>()) {
        let bytes = if pretty { serde_json::to_vec_pretty(&doc) } else { serde_json::to_vec(&doc) };
        check_config(&bytes.unwrap())?;
    }

    #[test]
    fn config_shaped_json(doc in shaped_document(), edits in byte_edits()) {
        let mut bytes = serde_json::to_vec(&doc).unwrap();
        check_config(&bytes)?;
        apply_byte_edits(&mut bytes, &edits);
        check_config(&bytes)?;
    }

    #[test]
    fn config_mutated_valid_documents(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..4),
        bytes_edits in byte_edits(),
    ) {
        let seeds = seed_documents();
        let mut doc = seed.get(&seeds).clone();
        for (path, e) in &edits {
            apply_edit(&mut doc, path, e);
        }
        let mut bytes = serde_json::to_vec_pretty(&doc).unwrap();
        check_config(&bytes)?;
        apply_byte_edits(&mut bytes, &bytes_edits);
        check_config(&bytes)?;
    }
}

// ---- control endpoint ------------------------------------------------------------------------

fn control_body() -> BoxedStrategy<Vec<u8>> {
    let shaped = object(vec![
        ("scope", kill_scope()),
        ("status", number()),
        ("body", word()),
        ("headers", header_map()),
        ("expiresIn", duration()),
        ("sheddablePercent", number()),
        ("defaultPercent", number()),
        ("enabled", flag()),
    ]);
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..128),
        1 => Just(Vec::new()),
        4 => (shaped, byte_edits()).prop_map(|(v, edits)| {
            let mut bytes = serde_json::to_vec(&v).unwrap();
            apply_byte_edits(&mut bytes, &edits);
            bytes
        }),
        1 => json_any().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
    .boxed()
}

const ACTIONS: &[&str] = &["status", "kill", "shed", "freeze", "dry-run", "normal"];

fn control_path() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(ACTIONS).prop_map(|a| format!("/{a}")),
        1 => (prop::sample::select(ACTIONS), any::<String>()).prop_map(|(a, q)| format!("/{a}?{q}")),
        1 => prop::sample::select(ACTIONS).prop_map(str::to_string),
        1 => (prop::sample::select(ACTIONS), "[/?#A-Z ]{1,2}").prop_map(|(a, s)| format!("/{a}{s}")),
        2 => any::<String>(),
    ]
    .boxed()
}

fn control_method() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec!["GET", "POST"]).prop_map(str::to_string),
        1 => prop::sample::select(vec!["PUT", "DELETE", "post", "", "POST "]).prop_map(str::to_string),
        1 => any::<String>(),
    ]
    .boxed()
}

/// A valid bearer token: what the configuration accepts (printable ASCII, no spaces).
fn token() -> impl Strategy<Value = String> {
    "[!-~]{1,64}"
}

proptest! {
    #![proptest_config(fuzz_config(CASES))]

    #[test]
    fn control_parse_request(method in control_method(), path in control_path(), body in control_body()) {
        let first = control::parse_request(&method, &path, &body);
        prop_assert_eq!(&first, &control::parse_request(&method, &path, &body));
        let name = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
        let name = name.strip_prefix('/').unwrap_or(name);
        match first {
            Err(e) => {
                prop_assert!([400, 404, 405, 413].contains(&e.status), "{:?}", e);
                prop_assert!(!e.message.is_empty());
                prop_assert_eq!(e.status == 404, !ACTIONS.contains(&name), "{:?}", e);
            }
            Ok(request) => {
                prop_assert_eq!(request.action().name(), name);
                prop_assert!(method == "POST" || (method == "GET" && name == "status"));
                match &request {
                    ControlRequest::Kill { rule, expires_in } => {
                        prop_assert!(rule.check().is_ok(), "{:?}", rule);
                        prop_assert!(expires_in.map_or(true, |d| d.0 > 0 && d <= MAX_EXPIRES_IN));
                    }
                    ControlRequest::Shed { shed, expires_in } => {
                        prop_assert!(shed.sheddable_percent <= 100 && shed.default_percent <= 100);
                        prop_assert!(expires_in.map_or(true, |d| d.0 > 0 && d <= MAX_EXPIRES_IN));
                    }
                    ControlRequest::Freeze { expires_in, .. } | ControlRequest::DryRun { expires_in, .. } => {
                        prop_assert!(expires_in.map_or(true, |d| d.0 > 0 && d <= MAX_EXPIRES_IN));
                    }
                    ControlRequest::Status | ControlRequest::Normal => {}
                }
                // What a request sets survives the shared-data encoding unchanged.
                let mut local = Switches::default();
                if control::apply(&mut local, &request, "control 127.0.0.1:1", Instant(1_000)).is_ok() {
                    let board = SwitchBoard { local, pushed: Vec::new() };
                    prop_assert_eq!(SwitchBoard::decode(&board.encode()), Ok(board));
                }
            }
        }
    }

    #[test]
    fn control_oversized_bodies_are_refused(action in prop::sample::select(&ACTIONS[1..]), extra in 1usize..64) {
        let body = vec![b' '; MAX_REQUEST_BODY + extra];
        prop_assert_eq!(control::parse_request("POST", &format!("/{action}"), &body).map_err(|e| e.status), Err(413));
    }

    #[test]
    fn control_authorized(header in prop::option::of(any::<String>()), t in token(), scheme in "[bB][eE][aA][rR][eE][rR]", pad in " {1,3}") {
        // Arbitrary headers never panic, and authorize only if they carry the token.
        if control::authorized(header.as_deref(), &t) {
            prop_assert!(header.as_deref().is_some_and(|h| h.contains(t.as_str())));
        }
        prop_assert!(!control::authorized(header.as_deref(), ""));
        let good = format!("{pad}{scheme}{pad}{t}{pad}");
        prop_assert!(control::authorized(Some(&good), &t), "{:?}", good);
        prop_assert!(!control::authorized(Some(&t), &t), "a token without a scheme");
        let basic = format!("Basic {t}");
        prop_assert!(!control::authorized(Some(&basic), &t));
        let longer = format!("{scheme} {t}x");
        prop_assert!(!control::authorized(Some(&longer), &t));
        let shorter = format!("{scheme} {}", &t[..t.len() - 1]);
        prop_assert!(!control::authorized(Some(&shorter), &t));
    }

    #[test]
    fn control_authorized_only_by_the_same_token(a in token(), b in token()) {
        prop_assert_eq!(control::authorized(Some(&format!("Bearer {a}")), &b), a == b);
    }

    #[test]
    fn control_constant_time_eq(
        a in prop::collection::vec(any::<u8>(), 0..48),
        b in prop::collection::vec(any::<u8>(), 0..48),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        extra in any::<u8>(),
    ) {
        prop_assert_eq!(control::constant_time_eq(&a, &b), a == b);
        prop_assert!(control::constant_time_eq(&a, &a));
        // Near misses: a prefix, an extension, one changed byte.
        if !a.is_empty() {
            let prefix = &a[..cut.index(a.len())];
            prop_assert!(!control::constant_time_eq(prefix, &a));
            prop_assert!(!control::constant_time_eq(&a, prefix));
            let mut changed = a.clone();
            changed[flip.index(a.len())] ^= extra | 1;
            prop_assert!(!control::constant_time_eq(&changed, &a));
        }
        let mut longer = a.clone();
        longer.push(extra);
        prop_assert!(!control::constant_time_eq(&longer, &a));
        prop_assert!(!control::constant_time_eq(&a, &longer));
    }
}

// ---- Envoy properties and request headers ----------------------------------------------------

/// Days since 1970-01-01 to (year, month, day): Hinnant's `civil_from_days`, the inverse of
/// what the parser uses, so the two are checked against each other.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for a time in whole seconds since the epoch.
fn imf_fixdate(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// FNV-1a 64 from its published parameters.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

proptest! {
    #![proptest_config(fuzz_config(CASES))]

    #[test]
    fn properties_int64_and_string(bytes in prop::collection::vec(any::<u8>(), 0..16), n in any::<i64>()) {
        prop_assert_eq!(properties::int64(&n.to_le_bytes()), Some(n));
        let expected = <[u8; 8]>::try_from(bytes.as_slice()).ok().map(i64::from_le_bytes);
        prop_assert_eq!(properties::int64(&bytes), expected);
        let s = properties::string(&bytes);
        prop_assert_eq!(s, std::str::from_utf8(&bytes).ok().filter(|s| !s.is_empty()));
        prop_assert_eq!(properties::is_steered_cluster(&bytes), bytes == b"override_host");
    }

    #[test]
    fn properties_loopback_peers(
        ip in any::<[u8; 4]>(),
        v6 in any::<[u16; 8]>(),
        port in any::<u16>(),
        junk in any::<String>(),
    ) {
        let v4 = std::net::Ipv4Addr::from(ip);
        prop_assert_eq!(properties::is_loopback_peer(&format!("{v4}:{port}")), ip[0] == 127);
        prop_assert!(!properties::is_loopback_peer(&v4.to_string()), "no port, no peer");
        prop_assert_eq!(properties::is_loopback_peer(&format!("[::ffff:{v4}]:{port}")), ip[0] == 127);
        let v6 = std::net::Ipv6Addr::from(v6);
        let loopback = v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback());
        prop_assert_eq!(properties::is_loopback_peer(&format!("[{v6}]:{port}")), loopback);
        if properties::is_loopback_peer(&junk) {
            let addr: std::net::SocketAddr = junk.parse().unwrap();
            let loopback = match addr.ip() {
                std::net::IpAddr::V4(v4) => v4.is_loopback(),
                std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
            };
            prop_assert!(loopback, "{:?}", junk);
        }
    }

    #[test]
    fn properties_path_only(path in prop_oneof![any::<String>(), "[/a?#=é]{0,12}"]) {
        let p = properties::path_only(&path);
        prop_assert!(path.starts_with(p));
        prop_assert!(!p.contains(['?', '#']));
        if !path.contains(['?', '#']) {
            prop_assert_eq!(p, path.as_str());
        } else {
            prop_assert!(path[p.len()..].starts_with(['?', '#']));
        }
    }

    #[test]
    fn priority_from_header(
        name in prop::sample::select(vec!["critical", "default", "sheddable"]),
        upper in prop::collection::vec(any::<bool>(), 9),
        pad in "[ \t]{0,2}",
        junk in any::<String>(),
    ) {
        let cased: String = name.chars().zip(upper.iter().cycle())
            .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
            .collect();
        let header = format!("{pad}{cased}{pad}");
        prop_assert_eq!(Priority::from_header(Some(&header)).as_str(), name);
        prop_assert_eq!(Priority::from_header(None), Priority::Default);
        let p = Priority::from_header(Some(&junk));
        let known = ["critical", "sheddable"].iter().any(|n| junk.trim().eq_ignore_ascii_case(n));
        prop_assert_eq!(p != Priority::Default, known);
    }

    #[test]
    fn retry_after(
        junk in any::<String>(),
        digits in "[0-9]{1,30}",
        at in 0i64..253_402_300_799,
        offset in -200_000i64..200_000_000,
        now in any::<u64>(),
        edit in (any::<prop::sample::Index>(), any::<char>()),
    ) {
        let cap = MAX_RETRY_AFTER;
        if let Some(wait) = parse_retry_after(&junk, Instant(now)) {
            prop_assert!(wait <= cap);
        }
        let secs: u128 = digits.parse().unwrap();
        let expected = (secs.min(u128::from(cap.0 / 1000)) * 1000) as u64;
        prop_assert_eq!(parse_retry_after(&format!(" {digits}\t"), Instant(now)).map(|m| m.0), Some(expected));
        // A date checked against an independent calendar conversion.
        let date = imf_fixdate(at);
        let now_ms = (at * 1000 + offset).max(0) as u64;
        let wait = (at * 1000 - now_ms as i64).clamp(0, cap.0 as i64) as u64;
        prop_assert_eq!(parse_retry_after(&date, Instant(now_ms)).map(|m| m.0), Some(wait), "{}", date);
        // One character changed: never a panic, never beyond the cap.
        let mut chars: Vec<char> = date.chars().collect();
        let i = edit.0.index(chars.len());
        chars[i] = edit.1;
        let changed: String = chars.into_iter().collect();
        if let Some(wait) = parse_retry_after(&changed, Instant(now)) {
            prop_assert!(wait <= cap, "{:?}", changed);
        }
    }

    #[test]
    fn request_hash_is_fnv1a(id in any::<String>()) {
        prop_assert_eq!(request_hash(&id), fnv1a64(id.as_bytes()));
    }
}

#[test]
fn request_hash_known_vectors() {
    assert_eq!(request_hash(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(request_hash("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(request_hash("foobar"), 0x8594_4171_f739_67e8);
}

// ---- shared-data decoders --------------------------------------------------------------------

/// One field of an encoding. Values are built as fields so that a mutation can hit exactly a
/// length, a count or a tag.
#[derive(Debug, Clone)]
enum Tok {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Raw(Vec<u8>),
}

fn render(toks: &[Tok]) -> Vec<u8> {
    let mut out = vec![FORMAT];
    for t in toks {
        match t {
            Tok::U8(v) => out.push(*v),
            Tok::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Tok::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Tok::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Tok::Raw(v) => out.extend_from_slice(v),
        }
    }
    out
}

type Toks = BoxedStrategy<Vec<Tok>>;

fn cat(parts: Vec<Toks>) -> Toks {
    parts
        .prop_map(|parts| parts.into_iter().flatten().collect())
        .boxed()
}

fn u8s(values: impl Strategy<Value = u8> + 'static) -> Toks {
    values.prop_map(|v| vec![Tok::U8(v)]).boxed()
}
fn u16s(values: impl Strategy<Value = u16> + 'static) -> Toks {
    values.prop_map(|v| vec![Tok::U16(v)]).boxed()
}
fn u32s() -> Toks {
    prop_oneof![any::<u32>(), 0u32..16]
        .prop_map(|v| vec![Tok::U32(v)])
        .boxed()
}
fn u64s() -> Toks {
    prop_oneof![
        any::<u64>(),
        0u64..100_000,
        1_700_000_000_000u64..1_800_000_000_000
    ]
    .prop_map(|v| vec![Tok::U64(v)])
    .boxed()
}
/// A finite float (`non_negative`: also not below zero, as the limiter and bucket require).
fn f64s(non_negative: bool) -> Toks {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        0.0f64..1e6,
        Just(-0.0),
    ]
    .prop_map(move |f| if non_negative { f.abs() } else { f })
    .prop_map(|f| vec![Tok::U64(f.to_bits())])
    .boxed()
}
/// A length-prefixed string of at most `max` bytes.
fn text(chars: impl Strategy<Value = String> + 'static, max: usize) -> Toks {
    chars
        .prop_map(move |s| {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            let bytes = s.as_bytes()[..end].to_vec();
            vec![Tok::U16(bytes.len() as u16), Tok::Raw(bytes)]
        })
        .boxed()
}
/// Any text of up to `chars` characters (cheaper to generate than a `\\PC` regex).
fn any_text(chars: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), chars).prop_map(String::from_iter)
}
fn repeat(item: impl Fn() -> Toks, count: std::ops::RangeInclusive<usize>, wide: bool) -> Toks {
    prop::collection::vec(item(), count)
        .prop_map(move |items| {
            let n = items.len();
            let mut toks = vec![if wide {
                Tok::U16(n as u16)
            } else {
                Tok::U8(n as u8)
            }];
            toks.extend(items.into_iter().flatten());
            toks
        })
        .boxed()
}
fn optional(item: impl Fn() -> Toks) -> Toks {
    prop_oneof![
        Just(vec![Tok::U8(0)]),
        item().prop_map(|t| {
            let mut toks = vec![Tok::U8(1)];
            toks.extend(t);
            toks
        }),
    ]
    .boxed()
}

fn rolling_counts() -> Toks {
    let mut parts = vec![u64s(), u64s()];
    parts.extend((0..2 * SLOTS).map(|_| u32s()));
    cat(parts)
}

fn breaker() -> Toks {
    let reason = prop_oneof![
        Just(vec![Tok::U8(0), Tok::U16(0), Tok::U32(0)]),
        (0u16..=1000, any::<u32>()).prop_map(|(p, v)| vec![Tok::U8(1), Tok::U16(p), Tok::U32(v)]),
        any::<u32>().prop_map(|n| vec![Tok::U8(2), Tok::U16(0), Tok::U32(n)]),
        Just(vec![Tok::U8(3), Tok::U16(0), Tok::U32(0)]),
    ]
    .boxed();
    cat(vec![
        u8s(0u8..3),
        u64s(),
        reason,
        rolling_counts(),
        u32s(),
        u32s(),
        u32s(),
        u32s(),
        u64s(),
    ])
}

/// Slots in the retry budget's encoding, read off an encoding rather than assumed.
fn budget_slots() -> usize {
    let mut w = Writer::new();
    Guard::default().budget.write(&mut w);
    (w.finish().len() - 1 - 8) / 16
}

fn guard_toks() -> Toks {
    let mut budget = vec![u64s()];
    budget.extend((0..budget_slots()).map(|_| cat(vec![u64s(), u32s(), u32s()])));
    cat(vec![
        cat(budget),
        breaker(),
        cat(vec![u32s(), u64s()]),
        rolling_counts(),
    ])
}

/// Mirrors `ConcurrencyLimiter::write` and `TokenBucket::write` field by field: if a pristine
/// encoding stops decoding, the layout changed and this must follow.
fn admission_toks() -> Toks {
    let limiter = cat(vec![
        f64s(true), // limit
        u32s(),     // in flight
        u64s(),     // in flight at
        u64s(),     // window start
        u32s(),     // window: samples
        f64s(true), // latency sum
        f64s(true), // min latency
        u32s(),     // max in flight
        u32s(),     // shed
        u32s(),     // quiet samples
        f64s(true), // quiet sum
        f64s(true), // last sample
        repeat(u32s, 0..=MAX_NO_LOAD_WINDOWS, false),
    ]);
    cat(vec![limiter, f64s(true), u64s()])
}

const GRAPHIC: &str = "[!-~]{1,40}";
const PATH: &str = "/[!-\"$-~]{0,30}";
const HEADER_NAME: &str = "[a-z0-9!#$%&'*+.^_`|~-]{1,20}";
const HEADER_VALUE: &str = "[ -~\t]{0,40}";

fn meta() -> Toks {
    cat(vec![
        text(any_text(0..40), MAX_SET_BY_LEN),
        u64s(),
        optional(u64s),
    ])
}

fn kill_rule_toks() -> Toks {
    let scope = prop_oneof![
        Just(vec![Tok::U8(0)]),
        text(GRAPHIC, 256).prop_map(|t| {
            let mut toks = vec![Tok::U8(1)];
            toks.extend(t);
            toks
        }),
        // A route names a path prefix, a header, or both.
        (
            prop_oneof![Just(0u8), Just(1), Just(2)],
            text(PATH, 256),
            text(HEADER_NAME, 128),
            text(HEADER_VALUE, 256),
        )
            .prop_map(|(which, path, name, value)| {
                let mut toks = vec![Tok::U8(2)];
                if which == 1 {
                    toks.push(Tok::U8(0));
                } else {
                    toks.push(Tok::U8(1));
                    toks.extend(path);
                }
                if which == 0 {
                    toks.push(Tok::U8(0));
                } else {
                    toks.push(Tok::U8(1));
                    toks.extend(name);
                    toks.extend(value);
                }
                toks
            }),
    ]
    .boxed();
    let header = || {
        cat(vec![
            text("x-[a-z0-9-]{0,12}", 128),
            text(HEADER_VALUE, 256),
        ])
    };
    cat(vec![
        scope,
        u16s(200u16..=599),
        text(any_text(0..60), MAX_BODY_LEN),
        repeat(header, 0..=3, false),
    ])
}

fn switches_toks() -> Toks {
    let shed = optional(|| cat(vec![meta(), u8s(0u8..=100), u8s(0u8..=100)]));
    cat(vec![
        u64s(),
        repeat(|| cat(vec![meta(), kill_rule_toks()]), 0..=3, false),
        shed,
        optional(meta),
        optional(meta),
    ])
}

fn switchboard_toks() -> Toks {
    cat(vec![
        switches_toks(),
        repeat(
            || {
                cat(vec![
                    text(any_text(0..20), MAX_NAME_LEN),
                    switches_toks(),
                    u64s(),
                    u64s(),
                ])
            },
            0..=3,
            false,
        ),
    ])
}

fn endpoint_toks() -> Toks {
    cat(vec![
        u64s(),
        u64s(),
        u64s(),
        u32s(),
        u64s(),
        f64s(false),
        u64s(),
        f64s(false),
        u64s(),
        f64s(false),
        f64s(false),
        u64s(),
        u32s(),
        u32s(),
        u8s(0u8..2),
    ])
}

fn member_toks() -> Toks {
    let active = prop_oneof![
        Just(vec![Tok::U8(0)]),
        (1u8..=5, u64s(), 0u8..2, u32s()).prop_map(|(d, until, dry, probes)| {
            let mut toks = vec![Tok::U8(d)];
            toks.extend(until);
            toks.push(Tok::U8(dry));
            toks.extend(probes);
            toks
        }),
    ]
    .boxed();
    cat(vec![
        text(any_text(0..30), MAX_NAME_LEN),
        u64s(),
        active,
        u32s(),
        u64s(),
        u64s(),
        u64s(),
        u8s(0u8..=5),
    ])
}

fn member_list_toks() -> Toks {
    repeat(member_toks, 0..=5, true)
}

fn string_list_toks() -> Toks {
    repeat(|| text(any_text(0..30), MAX_NAME_LEN), 0..=6, true)
}

/// A field-level corruption: a field replaced by an extreme or random value of its width
/// (lengths and counts set huge or just over a cap, tags unknown, floats NaN or negative),
/// dropped, or repeated.
#[derive(Debug, Clone)]
enum TokEdit {
    Extreme(usize, usize),
    Random(usize, u64),
    Drop(usize),
    Repeat(usize),
    Garble(usize, usize, u8),
}

fn tok_edit() -> impl Strategy<Value = TokEdit> {
    prop_oneof![
        3 => (any::<usize>(), any::<usize>()).prop_map(|(i, e)| TokEdit::Extreme(i, e)),
        2 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| TokEdit::Random(i, v)),
        1 => any::<usize>().prop_map(TokEdit::Drop),
        1 => any::<usize>().prop_map(TokEdit::Repeat),
        1 => (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(i, at, b)| TokEdit::Garble(i, at, b)),
    ]
}

const U8_EXTREMES: &[u8] = &[
    0, 1, 2, 3, 4, 5, 6, 8, 9, 32, 33, 64, 65, 100, 101, 127, 255,
];
const U16_EXTREMES: &[u16] = &[
    0, 1, 128, 129, 199, 256, 257, 512, 513, 600, 1024, 1025, 4096, 4097, 0x7fff, 0xffff,
];
const U32_EXTREMES: &[u32] = &[0, 1, 0x7fff_ffff, u32::MAX];

fn u64_extremes() -> [u64; 9] {
    [
        0,
        1,
        u64::MAX,
        f64::NAN.to_bits(),
        f64::INFINITY.to_bits(),
        f64::NEG_INFINITY.to_bits(),
        (-1.0f64).to_bits(),
        f64::MAX.to_bits(),
        (-0.0f64).to_bits(),
    ]
}

fn apply_tok_edits(toks: &mut Vec<Tok>, edits: &[TokEdit]) {
    for e in edits {
        if toks.is_empty() {
            return;
        }
        let n = toks.len();
        match *e {
            TokEdit::Extreme(i, k) => {
                let t = &mut toks[i % n];
                *t = match t {
                    Tok::U8(_) => Tok::U8(U8_EXTREMES[k % U8_EXTREMES.len()]),
                    Tok::U16(_) => Tok::U16(U16_EXTREMES[k % U16_EXTREMES.len()]),
                    Tok::U32(_) => Tok::U32(U32_EXTREMES[k % U32_EXTREMES.len()]),
                    Tok::U64(_) => Tok::U64(u64_extremes()[k % 9]),
                    Tok::Raw(r) => Tok::Raw(r[..k % (r.len() + 1)].to_vec()),
                };
            }
            TokEdit::Random(i, v) => {
                let t = &mut toks[i % n];
                *t = match t {
                    Tok::U8(_) => Tok::U8(v as u8),
                    Tok::U16(_) => Tok::U16(v as u16),
                    Tok::U32(_) => Tok::U32(v as u32),
                    Tok::U64(_) => Tok::U64(v),
                    Tok::Raw(r) => {
                        let mut r = r.clone();
                        r.extend_from_slice(&v.to_le_bytes()[..(v % 9) as usize]);
                        Tok::Raw(r)
                    }
                };
            }
            TokEdit::Drop(i) => {
                toks.remove(i % n);
            }
            TokEdit::Repeat(i) => {
                let t = toks[i % n].clone();
                toks.insert(i % n, t);
            }
            TokEdit::Garble(i, at, b) => {
                if let Tok::Raw(r) = &mut toks[i % n] {
                    if !r.is_empty() {
                        let len = r.len();
                        r[at % len] = b;
                    }
                }
            }
        }
    }
}

/// Bytes a decoder may see: random, or a valid encoding corrupted field by field and then
/// byte by byte (truncated, a bit flipped, garbage appended).
fn corrupted(valid: Toks) -> BoxedStrategy<(Vec<u8>, bool)> {
    let random = (prop::collection::vec(any::<u8>(), 0..300), any::<bool>()).prop_map(
        |(mut bytes, format)| {
            if format && !bytes.is_empty() {
                bytes[0] = FORMAT;
            }
            (bytes, false)
        },
    );
    let mutated = (
        valid,
        prop::collection::vec(tok_edit(), 0..4),
        prop::option::weighted(0.3, any::<usize>()),
        prop::option::weighted(0.2, (any::<usize>(), 0u8..8)),
        prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 1..8)),
    )
        .prop_map(|(mut toks, edits, cut, flip, tail)| {
            let pristine = edits.is_empty() && cut.is_none() && flip.is_none() && tail.is_none();
            apply_tok_edits(&mut toks, &edits);
            let mut bytes = render(&toks);
            if let Some((at, bit)) = flip {
                let len = bytes.len();
                bytes[at % len] ^= 1 << bit;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            if let Some(tail) = tail {
                bytes.extend(tail);
            }
            (bytes, pristine)
        });
    prop_oneof![1 => random, 4 => mutated].boxed()
}

/// The checks every decoder gets: bounded cost; a valid encoding decodes and re-encodes to
/// the same bytes; whatever decodes re-encodes to no more than its input and decodes back to
/// itself (and `within_caps` holds).
fn check_decoder<T: PartialEq + std::fmt::Debug>(
    what: &str,
    bytes: &[u8],
    pristine: bool,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    encode: impl Fn(&T) -> Vec<u8>,
    within_caps: impl Fn(&T) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let (decoded, cost) = watched(|| decode(bytes));
    check_cost(what, bytes.len(), &cost)?;
    match decoded {
        Ok(value) => {
            within_caps(&value)?;
            let again = encode(&value);
            if pristine {
                prop_assert_eq!(&again, &bytes.to_vec(), "{}: not canonical", what);
            }
            prop_assert!(
                again.len() <= bytes.len(),
                "{what}: {} bytes re-encode to {}",
                bytes.len(),
                again.len()
            );
            let back = decode(&again);
            prop_assert_eq!(back.as_ref(), Ok(&value), "{}", what);
        }
        Err(e) => {
            prop_assert!(!pristine, "{what}: a valid encoding was refused: {e:?}");
            if bytes.first().is_some_and(|&b| b != FORMAT) {
                prop_assert_eq!(e, DecodeError::UnknownFormat(bytes[0]));
            }
        }
    }
    Ok(())
}

fn switches_within_caps(s: &Switches) -> Result<(), TestCaseError> {
    prop_assert!(s.kill.len() <= MAX_KILL_RULES);
    let metas = s
        .kill
        .iter()
        .map(|k| &k.set_by)
        .chain(s.shed.iter().map(|s| &s.set_by))
        .chain(s.freeze.iter().chain(s.dry_run.iter()).map(|s| &s.set_by));
    for set_by in metas {
        prop_assert!(set_by.len() <= MAX_SET_BY_LEN);
    }
    for k in &s.kill {
        prop_assert!(
            k.value.check().is_ok(),
            "a decoded rule breaks a rule: {:?}",
            k.value
        );
    }
    if let Some(shed) = &s.shed {
        prop_assert!(shed.value.sheddable_percent <= 100 && shed.value.default_percent <= 100);
    }
    Ok(())
}

fn board_within_caps(b: &SwitchBoard) -> Result<(), TestCaseError> {
    prop_assert!(b.pushed.len() <= MAX_PUSHERS);
    switches_within_caps(&b.local)?;
    for p in &b.pushed {
        prop_assert!(p.name.len() <= MAX_NAME_LEN);
        switches_within_caps(&p.switches)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz_config(CASES))]

    #[test]
    fn decode_guard((bytes, pristine) in corrupted(guard_toks())) {
        let fixed = Guard::default().encode().len();
        check_decoder("Guard", &bytes, pristine, Guard::decode, Guard::encode, |g| {
            prop_assert_eq!(g.encode().len(), fixed);
            Ok(())
        })?;
    }

    #[test]
    fn decode_admission_state((bytes, pristine) in corrupted(admission_toks())) {
        let largest = AdmissionState::default().encode().len() + 4 * MAX_NO_LOAD_WINDOWS;
        check_decoder("AdmissionState", &bytes, pristine, AdmissionState::decode, AdmissionState::encode, |a| {
            prop_assert!(a.encode().len() <= largest);
            prop_assert!(a.limiter.limit_exact().is_finite() && a.limiter.limit_exact() >= 0.0);
            Ok(())
        })?;
    }

    #[test]
    fn decode_switchboard((bytes, pristine) in corrupted(switchboard_toks())) {
        check_decoder("SwitchBoard", &bytes, pristine, SwitchBoard::decode, SwitchBoard::encode, board_within_caps)?;
    }

    #[test]
    fn decode_endpoint_record((bytes, pristine) in corrupted(endpoint_toks())) {
        check_decoder("EndpointRecord", &bytes, pristine, EndpointRecord::decode, EndpointRecord::encode, |r| {
            let floats = [r.latency.value_us, r.mean_latency.value_us, r.counts.successes, r.counts.failures];
            prop_assert!(floats.iter().all(|f| f.is_finite()));
            Ok(())
        })?;
    }

    #[test]
    fn decode_member_list((bytes, pristine) in corrupted(member_list_toks())) {
        check_decoder("Vec<Member>", &bytes, pristine, decode_list::<Member>, |m| encode_list::<Member>(m), |list| {
            prop_assert!(list.len() <= MAX_LIST_ENTRIES);
            prop_assert!(list.iter().all(|m| m.address.len() <= MAX_NAME_LEN));
            Ok(())
        })?;
    }

    #[test]
    fn decode_string_list((bytes, pristine) in corrupted(string_list_toks())) {
        check_decoder("Vec<String>", &bytes, pristine, decode_list::<String>, |s| encode_list::<String>(s), |list| {
            prop_assert!(list.len() <= MAX_LIST_ENTRIES);
            prop_assert!(list.iter().all(|s| s.len() <= MAX_NAME_LEN));
            Ok(())
        })?;
    }

    #[test]
    fn decode_format_byte_is_checked_first(tail in prop::collection::vec(any::<u8>(), 0..64), format in any::<u8>()) {
        prop_assume!(format != FORMAT);
        let mut bytes = vec![format];
        bytes.extend(tail);
        let unknown = Err(DecodeError::UnknownFormat(format));
        prop_assert_eq!(Guard::decode(&bytes).map(|_| ()), unknown.clone());
        prop_assert_eq!(AdmissionState::decode(&bytes).map(|_| ()), unknown.clone());
        prop_assert_eq!(SwitchBoard::decode(&bytes).map(|_| ()), unknown.clone());
        prop_assert_eq!(EndpointRecord::decode(&bytes).map(|_| ()), unknown.clone());
        prop_assert_eq!(decode_list::<Member>(&bytes).map(|_| ()), unknown.clone());
        prop_assert_eq!(decode_list::<String>(&bytes).map(|_| ()), unknown);
        prop_assert_eq!(Guard::decode(&[]).map(|_| ()), Err(DecodeError::Truncated));
    }
}

#[test]
fn decode_caps_hold_at_the_edge() {
    // Exactly the cap decodes; one more is refused before anything is read.
    let names: Vec<String> = (0..MAX_LIST_ENTRIES).map(|i| i.to_string()).collect();
    assert_eq!(decode_list::<String>(&encode_list(&names)), Ok(names));
    let mut over = vec![FORMAT];
    over.extend_from_slice(&(MAX_LIST_ENTRIES as u16 + 1).to_le_bytes());
    assert_eq!(decode_list::<String>(&over), Err(DecodeError::TooLong));
    assert_eq!(
        decode_list::<Member>(&[FORMAT, 0xff, 0xff]),
        Err(DecodeError::TooLong)
    );
}

// ---- round trips of values built through the public API --------------------------------------

fn instant() -> impl Strategy<Value = Instant> {
    prop_oneof![any::<u64>(), 0u64..1_000_000].prop_map(Instant)
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        0.0f64..1e7
    ]
}

fn detector_value() -> impl Strategy<Value = Detector> {
    prop::sample::select(Detector::ALL.to_vec())
}

fn member() -> impl Strategy<Value = Member> {
    let active = prop::option::of((instant(), detector_value(), any::<bool>(), any::<u32>()))
        .prop_map(|a| {
            a.map(
                |(until, detector, dry_run, probe_successes)| ActiveEjection {
                    until,
                    detector,
                    dry_run,
                    probe_successes,
                },
            )
        });
    (
        any::<String>(),
        instant(),
        active,
        (any::<u32>(), instant(), instant(), instant()),
        prop::option::of(detector_value()),
    )
        .prop_map(
            |(address, added_at, active, (count, returned_at, blocked_at, slow_since), last)| {
                Member {
                    address,
                    added_at,
                    ejection: Ejection {
                        active,
                        count,
                        returned_at,
                        blocked_at,
                        slow_since,
                        last_detector: last,
                    },
                }
            },
        )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn switch_meta() -> impl Strategy<Value = (String, Instant, Option<Instant>)> {
    (
        any_text(0..40).prop_map(|s| cut(&s, MAX_SET_BY_LEN)),
        instant(),
        prop::option::of(instant()),
    )
}

fn valid_kill_rule() -> impl Strategy<Value = KillRule> {
    let scope = prop_oneof![
        Just(KillScope::All),
        GRAPHIC.prop_map(KillScope::Cluster),
        (
            prop::option::of(PATH),
            prop::option::of((HEADER_NAME, HEADER_VALUE))
        )
            .prop_filter("a route scope names something", |(p, h)| p.is_some()
                || h.is_some())
            .prop_map(|(path_prefix, header)| KillScope::Route {
                path_prefix,
                header
            }),
    ];
    (
        scope,
        200u16..=599,
        any_text(0..80),
        prop::collection::vec(("x-[a-z0-9-]{0,12}", HEADER_VALUE), 0..4),
    )
        .prop_map(|(scope, status, body, headers)| KillRule {
            scope,
            status,
            body,
            headers,
        })
}

fn switches() -> impl Strategy<Value = Switches> {
    let kill = prop::collection::vec(
        (valid_kill_rule(), switch_meta()).prop_map(|(value, (set_by, set_at, expires_at))| {
            Switch {
                value,
                set_by,
                set_at,
                expires_at,
            }
        }),
        0..4,
    );
    let shed = prop::option::of((0u64..=100, 0u64..=100, switch_meta()).prop_map(
        |(s, d, (set_by, set_at, expires_at))| Switch {
            value: Shed::from_percents(s, d).unwrap(),
            set_by,
            set_at,
            expires_at,
        },
    ));
    let flag = || {
        prop::option::of(
            switch_meta().prop_map(|(set_by, set_at, expires_at)| Switch {
                value: (),
                set_by,
                set_at,
                expires_at,
            }),
        )
    };
    (kill, shed, flag(), flag(), any::<u64>()).prop_map(
        |(kill, shed, freeze, dry_run, generation)| Switches {
            kill,
            shed,
            freeze,
            dry_run,
            generation,
        },
    )
}

fn rolling() -> impl Strategy<Value = RollingCounts> {
    (any::<u64>(), any::<u64>(), any::<[[u32; 2]; SLOTS]>()).prop_map(|(slot_ms, epoch, slots)| {
        RollingCounts {
            slot_ms,
            epoch,
            slots,
        }
    })
}

/// Policies as the configuration validates them.
fn policies() -> Config {
    Config::parse(
        br#"{"version": 1,
             "retries": {"enabled": true, "budget": {"ratio": 0.2, "minPerSecond": 1, "window": "10s"}},
             "admission": {"enabled": true, "rateLimit": {"enabled": true, "requestsPerSecond": 100, "burst": 10}}}"#,
    )
    .expect("the policy document is valid")
}

proptest! {
    #![proptest_config(fuzz_config(CASES))]

    #[test]
    fn roundtrip_endpoint_record(
        counters in (any::<u64>(), any::<u64>(), instant(), any::<u32>(), instant()),
        floats in (any::<f64>(), any::<f64>(), finite(), finite(), finite(), finite()),
        times in (instant(), instant(), instant()),
        tail in (any::<u32>(), any::<u32>(), any::<bool>()),
        use_any in any::<bool>(),
    ) {
        let (peak, mean) = if use_any { (floats.0, floats.1) } else { (floats.2, floats.3) };
        let record = EndpointRecord {
            requests: counters.0,
            failures: counters.1,
            last_seen: counters.2,
            in_flight: counters.3,
            in_flight_at: counters.4,
            latency: PeakEwma { value_us: peak, at: times.0 },
            mean_latency: MeanEwma { value_us: mean, at: times.1 },
            counts: DecayedCounts { successes: floats.4, failures: floats.5, at: times.2 },
            consecutive_5xx: tail.0,
            consecutive_gateway: tail.1,
            steered: tail.2,
        };
        if peak.is_finite() && mean.is_finite() {
            prop_assert_eq!(EndpointRecord::decode(&record.encode()), Ok(record));
        } else {
            prop_assert_eq!(EndpointRecord::decode(&record.encode()), Err(DecodeError::BadValue));
        }
    }

    #[test]
    fn roundtrip_lists(members in prop::collection::vec(member(), 0..8), names in prop::collection::vec(any::<String>(), 0..8)) {
        let mut expected = members.clone();
        for m in &mut expected {
            m.address = cut(&m.address, MAX_NAME_LEN);
        }
        prop_assert_eq!(decode_list::<Member>(&encode_list(&members)), Ok(expected));
        let expected: Vec<String> = names.iter().map(|n| cut(n, MAX_NAME_LEN)).collect();
        prop_assert_eq!(decode_list::<String>(&encode_list(&names)), Ok(expected));
    }

    #[test]
    fn roundtrip_long_names_are_cut(name in any_text(500..700)) {
        let decoded = decode_list::<String>(&encode_list(std::slice::from_ref(&name))).unwrap();
        prop_assert_eq!(&decoded[0], &cut(&name, MAX_NAME_LEN));
    }

    #[test]
    fn roundtrip_switchboard(
        local in switches(),
        pushed in prop::collection::vec((any_text(0..30), switches(), instant(), instant()), 0..=MAX_PUSHERS),
    ) {
        let board = SwitchBoard {
            local,
            pushed: pushed
                .into_iter()
                .map(|(name, switches, until, configured_at)| Pushed { name, switches, until, configured_at })
                .collect(),
        };
        prop_assert_eq!(SwitchBoard::decode(&board.encode()), Ok(board));
    }

    #[test]
    fn roundtrip_guard(
        state in prop::sample::select(vec![BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen]),
        reason in prop::option::of(prop_oneof![
            (0u16..=1000, any::<u32>()).prop_map(|(rate_permille, volume)| BreakerReason::ErrorRate { rate_permille, volume }),
            any::<u32>().prop_map(BreakerReason::ConsecutiveFailures),
            Just(BreakerReason::ProbeFailed),
        ]),
        window in rolling(),
        counters in any::<[u32; 4]>(),
        times in (instant(), instant(), instant()),
        bulkhead in any::<u32>(),
        throttle in rolling(),
        budget_ops in prop::collection::vec((0u64..100_000, 0u32..4), 0..20),
    ) {
        let config = policies();
        let policy = &config.retries.for_cluster("any").budget;
        let mut guard = Guard {
            breaker: Breaker {
                state,
                since: times.0,
                reason,
                window,
                consecutive_failures: counters[0],
                probes_admitted: counters[1],
                probes_completed: counters[2],
                probes_succeeded: counters[3],
                probe_at: times.1,
            },
            bulkhead: Bulkhead { in_flight: bulkhead, at: times.2 },
            throttle: Throttle { counts: throttle },
            ..Guard::default()
        };
        let mut now = 1_700_000_000_000u64;
        for (step, wanted) in budget_ops {
            now += step;
            guard.budget.deposit(Instant(now), policy);
            guard.budget.withdraw(Instant(now), policy, wanted);
        }
        prop_assert_eq!(Guard::decode(&guard.encode()), Ok(guard));
    }

    #[test]
    fn roundtrip_admission_state(ops in prop::collection::vec((0u64..5_000, 0u8..4, 0.0f64..500.0, any::<bool>()), 0..64)) {
        let config = policies();
        let admission = &config.admission;
        let rate = admission.rate_limit.as_ref().unwrap();
        let mut now = 1_700_000_000_000u64;
        let mut state = AdmissionState {
            limiter: ConcurrencyLimiter::new(&admission.limiter, Instant(now)),
            bucket: TokenBucket::default(),
        };
        for (step, op, latency, quiet) in ops {
            now += step;
            let at = Instant(now);
            match op {
                0 => { state.limiter.try_admit(at, 1.0, &admission.limiter); }
                1 => { state.limiter.complete(at, latency, quiet, &admission.limiter, false); }
                2 => state.limiter.release_without_sample(),
                _ => { state.bucket.try_take(at, rate.requests_per_second, rate.burst); }
            }
            prop_assert_eq!(AdmissionState::decode(&state.encode()), Ok(state.clone()));
        }
    }
}
