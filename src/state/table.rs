//! The endpoint table: which endpoints each destination cluster has, and their statistics,
//! in shared data so that every worker reads and updates the same numbers.
//!
//! Layout (three levels, each a separate key so one update copies a few bytes, not a table):
//! - `reflex.v1.clusters`: the list of cluster names;
//! - `reflex.v1.cluster.<len>.<cluster>`: the list of endpoint addresses of one cluster;
//! - `reflex.v1.endpoint.<len>.<cluster>.<address>`: one [`EndpointRecord`].
//!
//! (`<len>` is the cluster name's length, so that no two pairs of names share a key.)
//!
//! Updates are CAS loops. The host creates an absent key unconditionally, so two workers that
//! both find a key absent could each create it and one would lose its update. The rule that
//! prevents it: **only the worker whose CAS added a name to its parent list creates the
//! child key**; others that find the name listed but its key absent re-read until it appears.
//! The root list has no parent: at first use two workers may both create it empty, which
//! loses nothing unless a third write lands in those microseconds (then one cluster's listing
//! is lost and re-added on its next response). Forgetting runs in the opposite order (delete
//! the child with a CAS, then unlist it), so a concurrent update makes the deletion fail
//! instead of being lost.
//!
//! Bounded: at most `maxClusters` clusters and `maxEndpointsPerCluster` endpoints each; what
//! does not fit is reported to the caller (and counted by the adapter), never stored.

use super::codec::{decode_names, encode_names, EndpointRecord};
use super::store::{SharedStore, StoreError, MAX_CAS_ATTEMPTS};
use crate::config::Endpoints;
use crate::core::outcome::Outcome;
use crate::core::time::Instant;

const ROOT_KEY: &str = "reflex.v1.clusters";

fn cluster_key(cluster: &str) -> String {
    format!("reflex.v1.cluster.{}.{}", cluster.len(), cluster)
}

fn endpoint_key(cluster: &str, endpoint: &str) -> String {
    format!(
        "reflex.v1.endpoint.{}.{}.{}",
        cluster.len(),
        cluster,
        endpoint
    )
}

/// What happened to one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    /// Not stored: the table already tracks `maxClusters` clusters.
    ClusterCapReached,
    /// Not stored: the cluster already tracks `maxEndpointsPerCluster` endpoints.
    EndpointCapReached,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// Lost the CAS race [`MAX_CAS_ATTEMPTS`] times in a row; the update was dropped.
    Contended,
    Host(String),
}

impl From<StoreError> for TableError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::CasMismatch => TableError::Contended,
            StoreError::Host(msg) => TableError::Host(msg),
        }
    }
}

/// Everything the table holds at one moment (each key read once; keys are read one after
/// another, so the snapshot is per-endpoint consistent, not a global transaction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSnapshot {
    pub clusters: Vec<ClusterSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub name: String,
    pub endpoints: Vec<(String, EndpointRecord)>,
}

/// What a sweep did, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    pub forgotten: usize,
    pub clusters: usize,
    pub endpoints: usize,
}

enum Listing {
    Added,
    Present,
    Full,
    /// The list itself does not exist (or was deleted).
    Missing,
}

pub struct EndpointTable<'a, S: SharedStore> {
    store: &'a S,
    limits: &'a Endpoints,
}

impl<'a, S: SharedStore> EndpointTable<'a, S> {
    pub fn new(store: &'a S, limits: &'a Endpoints) -> Self {
        EndpointTable { store, limits }
    }

    /// Adds one finished exchange to the endpoint's statistics.
    pub fn record(
        &self,
        cluster: &str,
        endpoint: &str,
        outcome: Outcome,
        now: Instant,
    ) -> Result<Recorded, TableError> {
        let key = endpoint_key(cluster, endpoint);
        let observe = |mut record: EndpointRecord| {
            record.requests = record.requests.saturating_add(1);
            if outcome == Outcome::Failure {
                record.failures = record.failures.saturating_add(1);
            }
            record.last_seen = record.last_seen.max(now);
            record
        };
        let mut listed_but_absent = 0;
        for _ in 0..MAX_CAS_ATTEMPTS {
            if let Some((bytes, cas)) = self.present(&key)? {
                // A value this build cannot read is replaced rather than trusted.
                let record = observe(EndpointRecord::decode(&bytes).unwrap_or_default());
                match self.store.set(&key, &record.encode(), Some(cas)) {
                    Ok(()) => return Ok(Recorded::Counted),
                    Err(StoreError::CasMismatch) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
            let created = observe(EndpointRecord::default()).encode();
            match self.list(
                &cluster_key(cluster),
                endpoint,
                self.limits.max_endpoints_per_cluster,
            )? {
                Listing::Added => {
                    self.store.set(&key, &created, None)?;
                    return Ok(Recorded::Counted);
                }
                Listing::Full => return Ok(Recorded::EndpointCapReached),
                Listing::Present => {
                    // Its creator is about to write it. If it never does (a VM that trapped
                    // in between), stop waiting and create it: at worst one count is lost.
                    listed_but_absent += 1;
                    if listed_but_absent >= MAX_CAS_ATTEMPTS / 2 {
                        self.store.set(&key, &created, None)?;
                        return Ok(Recorded::Counted);
                    }
                }
                Listing::Missing => match self.list(ROOT_KEY, cluster, self.limits.max_clusters)? {
                    Listing::Added => {
                        self.store.set(
                            &cluster_key(cluster),
                            &encode_names(&[endpoint.to_string()]),
                            None,
                        )?;
                        self.store.set(&key, &created, None)?;
                        return Ok(Recorded::Counted);
                    }
                    Listing::Full => return Ok(Recorded::ClusterCapReached),
                    Listing::Present => {}
                    Listing::Missing => self.store.set(ROOT_KEY, &encode_names(&[]), None)?,
                },
            }
        }
        Err(TableError::Contended)
    }

    /// Reads every cluster and endpoint.
    pub fn snapshot(&self) -> Result<TableSnapshot, TableError> {
        let mut clusters = Vec::new();
        for name in self.names(ROOT_KEY)? {
            let mut endpoints = Vec::new();
            for address in self.names(&cluster_key(&name))? {
                if let Some((bytes, _)) = self.present(&endpoint_key(&name, &address))? {
                    if let Ok(record) = EndpointRecord::decode(&bytes) {
                        endpoints.push((address, record));
                    }
                }
            }
            clusters.push(ClusterSnapshot { name, endpoints });
        }
        Ok(TableSnapshot { clusters })
    }

    /// Forgets endpoints not seen for `forgetAfter` (and clusters left with none).
    pub fn sweep(&self, now: Instant) -> Result<Sweep, TableError> {
        let mut sweep = Sweep::default();
        for cluster in self.names(ROOT_KEY)? {
            let list_key = cluster_key(&cluster);
            let mut remaining = 0;
            for address in self.names(&list_key)? {
                let key = endpoint_key(&cluster, &address);
                let stale = match self.present(&key)? {
                    Some((bytes, cas)) => match EndpointRecord::decode(&bytes) {
                        Ok(r) if now.since(r.last_seen) <= self.limits.forget_after => None,
                        _ => Some(cas),
                    },
                    // Listed but not yet created: its creator is writing it now.
                    None => None,
                };
                // Deleting with the CAS of the stale read fails if a worker just updated it.
                let deleted = match stale {
                    Some(cas) => match self.store.set(&key, &[], Some(cas)) {
                        Ok(()) => true,
                        Err(StoreError::CasMismatch) => false,
                        Err(err) => return Err(err.into()),
                    },
                    None => false,
                };
                if deleted {
                    self.unlist(&list_key, &address)?;
                    sweep.forgotten += 1;
                } else {
                    remaining += 1;
                }
            }
            if remaining == 0 && self.present(&list_key)?.is_none() {
                self.unlist(ROOT_KEY, &cluster)?;
            } else {
                sweep.clusters += 1;
                sweep.endpoints += remaining;
            }
        }
        Ok(sweep)
    }

    /// The value at `key` if it exists and is not a deletion marker.
    fn present(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, TableError> {
        Ok(self.store.get(key)?.filter(|(bytes, _)| !bytes.is_empty()))
    }

    fn names(&self, key: &str) -> Result<Vec<String>, TableError> {
        Ok(match self.present(key)? {
            Some((bytes, _)) => decode_names(&bytes).unwrap_or_default(),
            None => Vec::new(),
        })
    }

    /// Adds `name` to the list at `key` unless present or full.
    fn list(&self, key: &str, name: &str, cap: usize) -> Result<Listing, TableError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((bytes, cas)) = self.present(key)? else {
                return Ok(Listing::Missing);
            };
            // A list this build cannot read is rebuilt from scratch.
            let mut names = decode_names(&bytes).unwrap_or_default();
            if names.iter().any(|n| n == name) {
                return Ok(Listing::Present);
            }
            if names.len() >= cap {
                return Ok(Listing::Full);
            }
            names.push(name.to_string());
            match self.store.set(key, &encode_names(&names), Some(cas)) {
                Ok(()) => return Ok(Listing::Added),
                Err(StoreError::CasMismatch) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(TableError::Contended)
    }

    /// Removes `name` from the list at `key`; a list left empty is deleted in the same CAS
    /// (except the root), so that "absent" and "empty" cannot disagree.
    fn unlist(&self, key: &str, name: &str) -> Result<(), TableError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((bytes, cas)) = self.present(key)? else {
                return Ok(());
            };
            let mut names = decode_names(&bytes).unwrap_or_default();
            names.retain(|n| n != name);
            let value = if names.is_empty() && key != ROOT_KEY {
                Vec::new()
            } else {
                encode_names(&names)
            };
            match self.store.set(key, &value, Some(cas)) {
                Ok(()) => return Ok(()),
                Err(StoreError::CasMismatch) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(TableError::Contended)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::Millis;
    use crate::state::store::memory::MemoryStore;

    fn limits(max_clusters: usize, max_endpoints: usize) -> Endpoints {
        Endpoints {
            max_clusters,
            max_endpoints_per_cluster: max_endpoints,
            forget_after: Millis(10_000),
        }
    }

    fn totals(snapshot: &TableSnapshot) -> Vec<(String, String, u64, u64)> {
        let mut rows: Vec<_> = snapshot
            .clusters
            .iter()
            .flat_map(|c| {
                c.endpoints
                    .iter()
                    .map(|(a, r)| (c.name.clone(), a.clone(), r.requests, r.failures))
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn first_observation_creates_cluster_and_endpoint() {
        let store = MemoryStore::default();
        let limits = limits(4, 4);
        let table = EndpointTable::new(&store, &limits);
        assert_eq!(
            table.record("c1", "10.0.0.1:80", Outcome::Success, Instant(1)),
            Ok(Recorded::Counted)
        );
        assert_eq!(
            table.record("c1", "10.0.0.1:80", Outcome::Failure, Instant(2)),
            Ok(Recorded::Counted)
        );
        let snapshot = table.snapshot().unwrap();
        assert_eq!(
            totals(&snapshot),
            vec![("c1".into(), "10.0.0.1:80".into(), 2, 1)]
        );
        assert_eq!(snapshot.clusters[0].endpoints[0].1.last_seen, Instant(2));
    }

    #[test]
    fn caps_are_enforced_and_reported() {
        let store = MemoryStore::default();
        let limits = limits(1, 2);
        let table = EndpointTable::new(&store, &limits);
        let now = Instant(1);
        assert_eq!(
            table.record("c1", "a", Outcome::Success, now),
            Ok(Recorded::Counted)
        );
        assert_eq!(
            table.record("c1", "b", Outcome::Success, now),
            Ok(Recorded::Counted)
        );
        assert_eq!(
            table.record("c1", "c", Outcome::Success, now),
            Ok(Recorded::EndpointCapReached)
        );
        assert_eq!(
            table.record("c2", "a", Outcome::Success, now),
            Ok(Recorded::ClusterCapReached)
        );
        // Already-tracked endpoints keep counting at the cap.
        assert_eq!(
            table.record("c1", "a", Outcome::Success, now),
            Ok(Recorded::Counted)
        );
        assert_eq!(store.keys(), 4, "root, one cluster list, two endpoints");
    }

    #[test]
    fn lost_cas_races_are_retried_without_losing_counts() {
        let store = MemoryStore::default();
        let limits = limits(4, 4);
        let table = EndpointTable::new(&store, &limits);
        table
            .record("c", "e", Outcome::Success, Instant(1))
            .unwrap();
        store.fail_next_cas(MAX_CAS_ATTEMPTS - 1);
        assert_eq!(
            table.record("c", "e", Outcome::Success, Instant(2)),
            Ok(Recorded::Counted)
        );
        assert_eq!(totals(&table.snapshot().unwrap())[0].2, 2);
    }

    #[test]
    fn endless_contention_gives_up_instead_of_spinning() {
        let store = MemoryStore::default();
        let limits = limits(4, 4);
        let table = EndpointTable::new(&store, &limits);
        table
            .record("c", "e", Outcome::Success, Instant(1))
            .unwrap();
        store.fail_next_cas(u32::MAX);
        let sets_before = store.sets();
        assert_eq!(
            table.record("c", "e", Outcome::Success, Instant(2)),
            Err(TableError::Contended)
        );
        assert_eq!(store.sets() - sets_before, u64::from(MAX_CAS_ATTEMPTS));
    }

    // Envoy's workers are threads sharing one host map; wasm32-unknown-unknown has no
    // threads, so this one runs on the host only.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn concurrent_workers_lose_no_updates() {
        let store = MemoryStore::default();
        let limits = limits(8, 8);
        let per_thread = 500;
        let counted: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|worker| {
                    let store = &store;
                    let limits = &limits;
                    scope.spawn(move || {
                        let table = EndpointTable::new(store, limits);
                        let mut counted = 0u64;
                        for i in 0..per_thread {
                            let cluster = if i % 2 == 0 { "c1" } else { "c2" };
                            let endpoint = format!("10.0.0.{}:80", (i + worker) % 3);
                            let outcome = if i % 5 == 0 {
                                Outcome::Failure
                            } else {
                                Outcome::Success
                            };
                            if table.record(cluster, &endpoint, outcome, Instant(i as u64))
                                == Ok(Recorded::Counted)
                            {
                                counted += 1;
                            }
                        }
                        counted
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let table = EndpointTable::new(&store, &limits);
        let rows = totals(&table.snapshot().unwrap());
        assert_eq!(rows.len(), 6, "{rows:?}");
        let requests: u64 = rows.iter().map(|r| r.2).sum();
        let failures: u64 = rows.iter().map(|r| r.3).sum();
        assert_eq!(requests, counted);
        assert!(
            counted >= 4 * per_thread as u64 * 99 / 100,
            "too many contended drops: {counted}"
        );
        assert!(failures > 0 && failures < requests);
    }

    #[test]
    fn sweep_forgets_idle_endpoints_and_empty_clusters() {
        let store = MemoryStore::default();
        let limits = limits(4, 4);
        let table = EndpointTable::new(&store, &limits);
        table
            .record("c1", "old", Outcome::Success, Instant(1_000))
            .unwrap();
        table
            .record("c1", "new", Outcome::Success, Instant(9_000))
            .unwrap();
        table
            .record("c2", "old", Outcome::Success, Instant(1_000))
            .unwrap();
        let sweep = table.sweep(Instant(12_000)).unwrap();
        assert_eq!(
            sweep,
            Sweep {
                forgotten: 2,
                clusters: 1,
                endpoints: 1
            }
        );
        assert_eq!(
            totals(&table.snapshot().unwrap()),
            vec![("c1".into(), "new".into(), 1, 0)]
        );
        // A forgotten endpoint that comes back starts from zero.
        table
            .record("c2", "old", Outcome::Failure, Instant(12_500))
            .unwrap();
        assert_eq!(
            totals(&table.snapshot().unwrap()),
            vec![
                ("c1".into(), "new".into(), 1, 0),
                ("c2".into(), "old".into(), 1, 1)
            ]
        );
    }

    #[test]
    fn sweep_keeps_an_endpoint_updated_during_the_sweep() {
        // The deletion is a CAS on the stale read: if another worker counts in between, the
        // deletion fails and the endpoint stays.
        let store = MemoryStore::default();
        let limits = limits(4, 4);
        let table = EndpointTable::new(&store, &limits);
        table
            .record("c", "e", Outcome::Success, Instant(0))
            .unwrap();
        store.fail_next_cas(1);
        let sweep = table.sweep(Instant(60_000)).unwrap();
        assert_eq!(sweep.forgotten, 0);
        assert_eq!(sweep.endpoints, 1);
    }

    #[test]
    fn clock_stepping_back_does_not_forget_or_rewind() {
        let store = MemoryStore::default();
        let limits = limits(4, 4);
        let table = EndpointTable::new(&store, &limits);
        table
            .record("c", "e", Outcome::Success, Instant(50_000))
            .unwrap();
        table
            .record("c", "e", Outcome::Success, Instant(40_000))
            .unwrap();
        let snapshot = table.snapshot().unwrap();
        assert_eq!(
            snapshot.clusters[0].endpoints[0].1.last_seen,
            Instant(50_000)
        );
        assert_eq!(table.sweep(Instant(45_000)).unwrap().forgotten, 0);
    }

    #[test]
    fn corrupt_values_are_replaced_not_trusted() {
        let store = MemoryStore::default();
        let limits = limits(4, 4);
        let table = EndpointTable::new(&store, &limits);
        table
            .record("c", "e", Outcome::Success, Instant(1))
            .unwrap();
        store
            .set(&endpoint_key("c", "e"), &[9, 9, 9], None)
            .unwrap();
        table
            .record("c", "e", Outcome::Success, Instant(2))
            .unwrap();
        assert_eq!(
            totals(&table.snapshot().unwrap()),
            vec![("c".into(), "e".into(), 1, 0)]
        );
        store.set(ROOT_KEY, &[1, 0xff], None).unwrap();
        assert_eq!(table.snapshot().unwrap().clusters.len(), 0);
    }

    #[test]
    fn names_that_could_collide_get_distinct_keys() {
        assert_ne!(endpoint_key("a.b", "c"), endpoint_key("a", "b.c"));
    }
}
