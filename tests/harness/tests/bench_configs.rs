//! The protection benchmark's Envoy configurations (bench/configs/*.yaml) must stay valid:
//! each passes `envoy --mode validate` (which also loads reflex and runs its configuration
//! check), and the reflex one embeds bench/configs/reflex-all.json unchanged. The benchmark
//! checks the same before it runs; this keeps a broken config from waiting for the next run.
//! Set `REFLEX_SKIP_ENVOY=1` to skip where no Envoy is installed.

use std::fs;
use std::path::PathBuf;

use reflex_harness::envoy::{built_filter, skip_envoy_tests, workspace_root};
use reflex_harness::Envoy;
use serde_json::Value;

fn configs() -> Vec<PathBuf> {
    let dir = workspace_root().join("bench/configs");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_protection_config_passes_envoy_validate() {
    if skip_envoy_tests() {
        return;
    }
    let files = configs();
    assert!(
        files.len() >= 4,
        "expected the four configurations: {files:?}"
    );
    let wasm = built_filter();
    for file in files {
        let text = fs::read_to_string(&file).unwrap().replace(
            "filename: out/reflex.wasm",
            &format!("filename: {}", wasm.display()),
        );
        if let Err(e) = Envoy::validate(&text) {
            panic!("{} fails envoy --mode validate:\n{e}", file.display());
        }
    }
}

#[test]
fn reflex_config_embeds_reflex_all_json() {
    let dir = workspace_root().join("bench/configs");
    let yaml = fs::read_to_string(dir.join("protection-reflex.yaml")).unwrap();
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let start = lines.iter().position(|l| l.trim() == "value: |").unwrap();
    let block: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > indent(lines[start]))
        .copied()
        .collect();
    let embedded: Value = serde_json::from_str(&block.join("\n")).unwrap();
    let file: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("reflex-all.json")).unwrap()).unwrap();
    assert_eq!(
        embedded, file,
        "protection-reflex.yaml must embed reflex-all.json"
    );
}

/// The YAML block that starts at the first line equal to `head` (trimmed) and whose next
/// line is `next` (trimmed), without comment lines, each line stripped of the block's
/// indentation. Enough to compare two hand-written configs where the block is written alike.
fn block(yaml: &str, head: &str, next: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let start = lines
        .windows(2)
        .position(|w| w[0].trim() == head && w[1].trim() == next)
        .unwrap_or_else(|| panic!("no `{head}` block followed by `{next}`"));
    let base = indent(lines[start]);
    std::iter::once(lines[start])
        .chain(
            lines[start + 1..]
                .iter()
                .copied()
                .filter(|l| !l.trim().is_empty())
                .take_while(|l| indent(l) > base),
        )
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l[base..].to_string())
        .collect()
}

/// The benchmark's reflex column must measure reflex as it ships: the same route (timeout,
/// retry policy that supplies back-off and host selection, hedging on per-try timeout) and
/// the same cap on concurrent retries as envoy/outbound.yaml. A route that drifted once
/// (no hedging) turned per-try timeouts of queued requests into 504s in the overload run.
#[test]
fn reflex_config_routes_like_the_shipped_outbound_config() {
    let root = workspace_root();
    let shipped = fs::read_to_string(root.join("envoy/outbound.yaml")).unwrap();
    let bench = fs::read_to_string(root.join("bench/configs/protection-reflex.yaml")).unwrap();
    for (head, next) in [
        ("route:", "cluster: backend"),
        ("circuit_breakers:", "thresholds:"),
    ] {
        assert_eq!(
            block(&bench, head, next),
            block(&shipped, head, next),
            "bench/configs/protection-reflex.yaml's `{head}` differs from envoy/outbound.yaml's"
        );
    }
}
