//! The JSON document served at `status.path`: what reflex knows, as every worker sees it.

use crate::state::TableSnapshot;
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDocument<'a> {
    version: &'a str,
    git_sha: &'a str,
    clusters: Vec<ClusterStatus<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterStatus<'a> {
    name: &'a str,
    requests: u64,
    failures: u64,
    endpoints: Vec<EndpointStatus<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointStatus<'a> {
    address: &'a str,
    requests: u64,
    failures: u64,
    /// Unix time in milliseconds of the last response from this endpoint.
    last_seen_ms: u64,
}

/// Renders the status document; per-cluster totals are summed here, never stored.
pub fn render(snapshot: &TableSnapshot) -> String {
    let clusters = snapshot
        .clusters
        .iter()
        .map(|cluster| {
            let endpoints: Vec<EndpointStatus> = cluster
                .endpoints
                .iter()
                .map(|(address, record)| EndpointStatus {
                    address,
                    requests: record.requests,
                    failures: record.failures,
                    last_seen_ms: record.last_seen.0,
                })
                .collect();
            ClusterStatus {
                name: &cluster.name,
                requests: endpoints.iter().map(|e| e.requests).sum(),
                failures: endpoints.iter().map(|e| e.failures).sum(),
                endpoints,
            }
        })
        .collect();
    let document = StatusDocument {
        version: crate::VERSION,
        git_sha: crate::GIT_SHA,
        clusters,
    };
    // Serializing plain structs of strings and integers cannot fail; an empty object is
    // still valid JSON if it somehow did.
    serde_json::to_string_pretty(&document).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::core::time::Instant;
    use crate::state::codec::EndpointRecord;
    use crate::state::table::ClusterSnapshot;

    #[test]
    fn totals_per_cluster_are_the_sum_of_its_endpoints() {
        let snapshot = TableSnapshot {
            clusters: vec![ClusterSnapshot {
                name: "outbound|80||web".into(),
                endpoints: vec![
                    (
                        "10.0.0.1:80".into(),
                        EndpointRecord {
                            requests: 3,
                            failures: 1,
                            last_seen: Instant(7),
                        },
                    ),
                    (
                        "10.0.0.2:80".into(),
                        EndpointRecord {
                            requests: 4,
                            failures: 0,
                            last_seen: Instant(9),
                        },
                    ),
                ],
            }],
        };
        let doc: serde_json::Value = serde_json::from_str(&render(&snapshot)).unwrap();
        let cluster = &doc["clusters"][0];
        assert_eq!(cluster["name"], "outbound|80||web");
        assert_eq!(cluster["requests"], 7);
        assert_eq!(cluster["failures"], 1);
        assert_eq!(cluster["endpoints"][1]["address"], "10.0.0.2:80");
        assert_eq!(cluster["endpoints"][1]["lastSeenMs"], 9);
        assert_eq!(doc["version"], crate::VERSION);
    }
}
