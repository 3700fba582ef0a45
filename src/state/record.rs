//! One small value per key, read and updated with compare-and-swap: the shape of every
//! piece of shared state that is not the endpoint table (retry budgets, breakers, limiters,
//! emergency switches). A value that does not decode (another build's layout, corruption)
//! is replaced by the type's default instead of trusted.

use super::codec::{DecodeError, Reader, Writer};
use super::store::{SharedStore, StoreError, MAX_CAS_ATTEMPTS};

/// A value that lives under one shared-data key.
pub trait Record: Default + Sized {
    fn write(&self, w: &mut Writer);
    fn read(r: &mut Reader) -> Result<Self, DecodeError>;

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes)?;
        Self::read(&mut r)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Lost the CAS race [`MAX_CAS_ATTEMPTS`] times in a row; the update was dropped.
    Contended,
    Host(String),
}

impl From<StoreError> for RecordError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::CasMismatch => RecordError::Contended,
            StoreError::Host(message) => RecordError::Host(message),
        }
    }
}

/// The current value (the default when absent or unreadable).
pub fn load<T: Record>(store: &dyn SharedStore, key: &str) -> Result<T, RecordError> {
    Ok(match store.get(key)? {
        Some((bytes, _)) if !bytes.is_empty() => T::decode(&bytes).unwrap_or_default(),
        _ => T::default(),
    })
}

/// Applies `change` and writes the result back, re-reading on a lost race. `change` may run
/// more than once, so it must only modify the value and compute its answer from it. When it
/// returns `(answer, false)` nothing is written.
pub fn update<T: Record, A>(
    store: &dyn SharedStore,
    key: &str,
    mut change: impl FnMut(&mut T) -> (A, bool),
) -> Result<A, RecordError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (mut value, cas) = match store.get(key)? {
            Some((bytes, cas)) if !bytes.is_empty() => {
                (T::decode(&bytes).unwrap_or_default(), Some(cas))
            }
            Some((_, cas)) => (T::default(), Some(cas)),
            None => (T::default(), None),
        };
        let (answer, changed) = change(&mut value);
        if !changed {
            return Ok(answer);
        }
        match store.set(key, &value.encode(), cas) {
            Ok(()) => return Ok(answer),
            Err(StoreError::CasMismatch) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(RecordError::Contended)
}

/// Key of a per-destination value: `reflex.v2.<kind>.<len>.<name>` (the length keeps names
/// that contain dots from colliding).
pub fn keyed(kind: &str, name: &str) -> String {
    format!("reflex.v2.{kind}.{}.{name}", name.len())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::state::store::memory::MemoryStore;

    #[derive(Default, Debug, PartialEq)]
    struct Counter(u64);

    impl Record for Counter {
        fn write(&self, w: &mut Writer) {
            w.u64(self.0);
        }
        fn read(r: &mut Reader) -> Result<Self, DecodeError> {
            Ok(Counter(r.u64()?))
        }
    }

    #[test]
    fn absent_value_reads_as_default_and_updates_accumulate() {
        let store = MemoryStore::default();
        assert_eq!(load::<Counter>(&store, "k").unwrap(), Counter(0));
        for _ in 0..3 {
            update(&store, "k", |c: &mut Counter| {
                c.0 += 1;
                ((), true)
            })
            .unwrap();
        }
        assert_eq!(load::<Counter>(&store, "k").unwrap(), Counter(3));
    }

    #[test]
    fn lost_races_are_retried_and_unchanged_values_not_written() {
        let store = MemoryStore::default();
        update(&store, "k", |c: &mut Counter| {
            ((), {
                c.0 = 1;
                true
            })
        })
        .unwrap();
        store.fail_next_cas(3);
        update(&store, "k", |c: &mut Counter| {
            c.0 += 1;
            ((), true)
        })
        .unwrap();
        assert_eq!(load::<Counter>(&store, "k").unwrap(), Counter(2));
        let sets = store.sets();
        let seen = update(&store, "k", |c: &mut Counter| (c.0, false)).unwrap();
        assert_eq!((seen, store.sets()), (2, sets));
        store.fail_next_cas(100);
        assert_eq!(
            update(&store, "k", |c: &mut Counter| ((), {
                c.0 += 1;
                true
            })),
            Err(RecordError::Contended)
        );
    }

    #[test]
    fn unreadable_value_is_replaced_by_the_default() {
        let store = MemoryStore::default();
        store.set("k", &[99, 1, 2], None).unwrap();
        assert_eq!(load::<Counter>(&store, "k").unwrap(), Counter(0));
    }

    #[test]
    fn keys_carry_the_name_length() {
        assert_eq!(keyed("guard", "a.b"), "reflex.v2.guard.3.a.b");
    }
}
