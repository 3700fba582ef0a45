//! Byte encodings of everything reflex keeps in shared data.
//!
//! Every value starts with a format byte so that a VM running a newer build (during a
//! rollout both builds share the host map only if they share a `vm_id`, but nothing forbids
//! it) never misreads an older layout: an unknown format decodes as an error, and the table
//! replaces it instead of trusting it. Integers are little-endian, fixed width; lists carry
//! their length and every length is bounded, so a corrupt value cannot make a reader allocate
//! without bound.

use crate::core::time::Instant;

/// Format byte of every value this build writes.
pub const FORMAT_V1: u8 = 1;

/// Upper bound of entries in one list (matches the largest cap the config allows).
pub const MAX_LIST_ENTRIES: usize = 4096;
/// Upper bound of one name (cluster name or endpoint address), in bytes.
pub const MAX_NAME_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    UnknownFormat(u8),
    Truncated,
    TooLong,
    NotUtf8,
}

/// Statistics of one endpoint, summed over all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointRecord {
    pub requests: u64,
    pub failures: u64,
    pub last_seen: Instant,
}

const RECORD_LEN: usize = 1 + 8 * 3;

impl EndpointRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.requests.to_le_bytes());
        out.extend_from_slice(&self.failures.to_le_bytes());
        out.extend_from_slice(&self.last_seen.0.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<EndpointRecord, DecodeError> {
        let mut reader = Reader::new(bytes)?;
        let record = EndpointRecord {
            requests: reader.u64()?,
            failures: reader.u64()?,
            last_seen: Instant(reader.u64()?),
        };
        Ok(record)
    }
}

/// Encodes a list of names (clusters of the table, endpoints of a cluster).
pub fn encode_names(names: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + names.iter().map(|n| n.len() + 2).sum::<usize>());
    out.push(FORMAT_V1);
    out.extend_from_slice(&(names.len() as u16).to_le_bytes());
    for name in names {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out
}

pub fn decode_names(bytes: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut reader = Reader::new(bytes)?;
    let count = usize::from(reader.u16()?);
    if count > MAX_LIST_ENTRIES {
        return Err(DecodeError::TooLong);
    }
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(reader.u16()?);
        if len > MAX_NAME_LEN {
            return Err(DecodeError::TooLong);
        }
        let raw = reader.take(len)?;
        let name = std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8)?;
        names.push(name.to_string());
    }
    Ok(names)
}

/// A cursor over a value that checks the format byte first and every length after.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            Some((&FORMAT_V1, rest)) => Ok(Reader { rest }),
            Some((&other, _)) => Err(DecodeError::UnknownFormat(other)),
            None => Err(DecodeError::Truncated),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let mut buf = [0u8; 2];
        buf.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(buf))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buf))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn endpoint_record_round_trips() {
        let record = EndpointRecord {
            requests: u64::MAX,
            failures: 7,
            last_seen: Instant(1_700_000_000_123),
        };
        assert_eq!(EndpointRecord::decode(&record.encode()), Ok(record));
    }

    #[test]
    fn names_round_trip_including_istio_cluster_names() {
        let names = vec![
            "outbound|80||reviews.default.svc.cluster.local".to_string(),
            "[2600:4040::1]:80".to_string(),
            String::new(),
        ];
        assert_eq!(decode_names(&encode_names(&names)), Ok(names));
        assert_eq!(decode_names(&encode_names(&[])), Ok(vec![]));
    }

    #[test]
    fn unknown_format_is_refused_not_misread() {
        let mut bytes = EndpointRecord::default().encode();
        bytes[0] = 2;
        assert_eq!(
            EndpointRecord::decode(&bytes),
            Err(DecodeError::UnknownFormat(2))
        );
    }

    #[test]
    fn truncated_and_empty_values_are_errors() {
        let bytes = EndpointRecord::default().encode();
        for n in 0..bytes.len() {
            assert!(EndpointRecord::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let names = encode_names(&["a".into(), "bb".into()]);
        for n in 0..names.len() {
            assert!(decode_names(&names[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn corrupt_lengths_cannot_force_large_allocations() {
        // Claims 65535 entries in three bytes.
        assert_eq!(
            decode_names(&[FORMAT_V1, 0xff, 0xff]),
            Err(DecodeError::TooLong)
        );
        // One entry claiming a 65535-byte name.
        assert_eq!(
            decode_names(&[FORMAT_V1, 1, 0, 0xff, 0xff]),
            Err(DecodeError::TooLong)
        );
        assert_eq!(
            decode_names(&[FORMAT_V1, 1, 0, 2, 0, 0xff, 0xfe]),
            Err(DecodeError::NotUtf8)
        );
    }
}
