//! The configs in `envoy/` are the ones users run: each passes `envoy --mode validate`, runs
//! with the built filter, and embeds exactly the JSON kept in `tests/fixtures/config/`.

use crate::support::*;
use reflex::config::Config;
use reflex_harness::envoy::workspace_root;
use reflex_harness::{Client, Envoy};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = workspace_root().join("tests/fixtures/config").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    Config::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Asserts that every reflex plugin configuration Envoy loaded (its config dump lists the
/// listener twice: as configured and as active) is the fixture `name`.
fn assert_loaded_config_is(envoy: &Envoy, name: &str) {
    let dump: Value = envoy.admin_get("/config_dump").unwrap().json().unwrap();
    let mut found = Vec::new();
    collect_configs(&dump, &mut found);
    let expected = fixture(name);
    assert!(!found.is_empty(), "no reflex filter in the config dump");
    assert!(
        found.iter().all(|c| c == &expected),
        "{found:?} is not {name}"
    );
}

fn collect_configs(value: &Value, found: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            if map.get("root_id").and_then(Value::as_str) == Some("reflex") {
                if let Some(text) = map["configuration"]["value"].as_str() {
                    found.push(serde_json::from_str(text).unwrap());
                }
            }
            map.values().for_each(|v| collect_configs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_configs(v, found)),
        _ => {}
    }
}

#[test]
fn outbound_config_validates_runs_and_embeds_its_fixture() {
    let ups = upstreams(3);
    let ports = [
        (10000, 0),
        (9901, 0),
        (9001, ups[0].port()),
        (9002, ups[1].port()),
        (9003, ups[2].port()),
    ];
    let yaml = shipped_config("outbound.yaml", &ports);
    Envoy::validate(&yaml).unwrap();
    let envoy = start(yaml, 2);
    assert_loaded_config_is(&envoy, "standalone-outbound.json");
    let addr = envoy.listener_addr("outbound").unwrap();
    for _ in 0..6 {
        assert_eq!(Client::new(addr).get("/", &[]).unwrap().status, 200);
    }
    let doc = status(addr, "/.reflex/status");
    assert_eq!(doc["clusters"][0]["name"], "backend");
    assert_eq!(doc["clusters"][0]["requests"], 6);
    // The control endpoint is off in the shipped config: its path is ordinary traffic,
    // answered by the upstream, whatever the request carries.
    let r = Client::new(addr)
        .request(
            "POST",
            "/.reflex/control/kill",
            &[("authorization", "Bearer guessed-token-0123456789")],
            br#"{"scope": {"all": true}}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.upstream_id().is_some(),
        "answered by reflex, not the upstream"
    );
    assert_eq!(Client::new(addr).get("/", &[]).unwrap().status, 200);
}

#[test]
fn inbound_config_validates_runs_and_embeds_its_fixture() {
    let ups = upstreams(1);
    let yaml = shipped_config(
        "inbound.yaml",
        &[(15006, 0), (9902, 0), (8080, ups[0].port())],
    );
    Envoy::validate(&yaml).unwrap();
    let envoy = start(yaml, 2);
    assert_loaded_config_is(&envoy, "inbound.json");
    let addr = envoy.listener_addr("inbound").unwrap();
    assert_eq!(
        Client::new(addr).get("/", &[]).unwrap().upstream_id(),
        Some("u0")
    );
}

#[test]
fn every_fixture_is_a_valid_configuration() {
    let dir = workspace_root().join("tests/fixtures/config");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            fixture(&path.file_name().unwrap().to_string_lossy());
            count += 1;
        }
    }
    assert!(
        count >= 4,
        "expected the shipped fixtures in {}",
        dir.display()
    );
}
