//! The shared-data interface the state layer needs from the host, and nothing more.
//!
//! It mirrors proxy-wasm's semantics exactly, because the algorithms above rely on them:
//! `get` returns the value and its version (`cas`); `set` with `Some(cas)` succeeds only if
//! the key still has that version; `set` on a key that does not exist yet always succeeds,
//! whatever `cas` says (the host keeps no version for absent keys). The table module is
//! written so that this last rule cannot lose updates outside a documented start-up window.

/// A key's version as the host reports it.
pub type Cas = u32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker changed the key since it was read.
    CasMismatch,
    /// The host refused the call (for example, shared data is unavailable).
    Host(String),
}

/// Shared data as proxy-wasm exposes it. `Ok(None)` from `get` means the key is absent;
/// an empty value is how reflex deletes (the ABI has no delete), and readers treat it as
/// absent too.
pub trait SharedStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError>;
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError>;
}

/// How many times a CAS update re-reads after losing a race before giving up. Contention is
/// between a handful of workers doing microsecond updates, so a few rounds always suffice
/// unless something is badly wrong; then the caller counts the loss instead of spinning.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

#[cfg(test)]
pub mod memory {
    //! An in-memory [`SharedStore`] with the host's exact semantics, that can be told to
    //! lose CAS races, for tests of the layers above.

    use super::{Cas, SharedStore, StoreError};
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct MemoryStore {
        inner: Mutex<Inner>,
    }

    #[derive(Default)]
    struct Inner {
        map: HashMap<String, (Vec<u8>, Cas)>,
        next_cas: Cas,
        /// Number of upcoming conditional sets to fail with CasMismatch.
        fail_cas: u32,
        /// Number of sets so far, successful or not.
        sets: u64,
    }

    impl MemoryStore {
        pub fn fail_next_cas(&self, n: u32) {
            self.inner.lock().unwrap().fail_cas = n;
        }

        pub fn sets(&self) -> u64 {
            self.inner.lock().unwrap().sets
        }

        pub fn keys(&self) -> usize {
            let inner = self.inner.lock().unwrap();
            inner.map.values().filter(|(v, _)| !v.is_empty()).count()
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
            Ok(self.inner.lock().unwrap().map.get(key).cloned())
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
            let mut inner = self.inner.lock().unwrap();
            inner.sets += 1;
            let current = inner.map.get(key).map(|(_, c)| *c);
            if let (Some(current), Some(expected)) = (current, cas) {
                if inner.fail_cas > 0 {
                    inner.fail_cas -= 1;
                    return Err(StoreError::CasMismatch);
                }
                if current != expected {
                    return Err(StoreError::CasMismatch);
                }
            }
            inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
            let version = inner.next_cas;
            inner.map.insert(key.to_string(), (value.to_vec(), version));
            Ok(())
        }
    }
}
