//! Byte encodings of everything reflex keeps in shared data.
//!
//! Every value starts with a format byte so that a VM running another build (during a
//! rollout two builds share the host map if they share a `vm_id`) never misreads a layout it
//! does not know: an unknown format decodes as an error, and the table replaces the value
//! instead of trusting it. Integers are little-endian, fixed width; floats are IEEE bits;
//! lists carry their length and every length is bounded, so a corrupt value cannot make a
//! reader allocate without bound.

use crate::core::ewma::{MeanEwma, PeakEwma};
use crate::core::outlier::{ActiveEjection, Detector, Ejection};
use crate::core::rate::DecayedCounts;
use crate::core::time::Instant;

/// Format byte of every value this build writes.
pub const FORMAT: u8 = 2;

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
    BadValue,
}

/// Statistics of one endpoint, summed over all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EndpointRecord {
    /// Lifetime counters, for the status document.
    pub requests: u64,
    pub failures: u64,
    pub last_seen: Instant,
    /// Requests sent and not yet finished, across workers, and when that last changed.
    pub in_flight: u32,
    pub in_flight_at: Instant,
    /// Pessimistic latency for P2C.
    pub latency: PeakEwma,
    /// Typical latency for the latency detector and cold-endpoint scoring.
    pub mean_latency: MeanEwma,
    pub counts: DecayedCounts,
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    /// Whether reflex steered the last request it saw for this endpoint's cluster (the tick's
    /// detectors enforce ejections only on such clusters).
    pub steered: bool,
}

/// One endpoint of a cluster's member list: its name and ejection state. Kept in the
/// cluster's key (not the endpoint's) so that ejection limits are checked and applied in one
/// compare-and-swap over the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub address: String,
    pub added_at: Instant,
    pub ejection: Ejection,
}

/// A value that stands in a bounded list under its name.
pub trait Entry: Sized {
    fn name(&self) -> &str;
    fn write(&self, w: &mut Writer);
    fn read(r: &mut Reader) -> Result<Self, DecodeError>;
}

impl Entry for String {
    fn name(&self) -> &str {
        self
    }
    fn write(&self, w: &mut Writer) {
        w.str(self);
    }
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.str()
    }
}

impl Entry for Member {
    fn name(&self) -> &str {
        &self.address
    }
    fn write(&self, w: &mut Writer) {
        w.str(&self.address);
        w.u64(self.added_at.0);
        let e = &self.ejection;
        match e.active {
            Some(a) => {
                w.u8(a.detector as u8);
                w.u64(a.until.0);
                w.u8(u8::from(a.dry_run));
                w.u32(a.probe_successes);
            }
            None => w.u8(0),
        }
        w.u32(e.count);
        w.u64(e.returned_at.0);
        w.u64(e.blocked_at.0);
        w.u64(e.slow_since.0);
        w.u8(e.last_detector.map_or(0, |d| d as u8));
    }
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let address = r.str()?;
        let added_at = Instant(r.u64()?);
        let active = match r.u8()? {
            0 => None,
            code => Some(ActiveEjection {
                detector: Detector::from_code(code).ok_or(DecodeError::BadValue)?,
                until: Instant(r.u64()?),
                dry_run: r.u8()? != 0,
                probe_successes: r.u32()?,
            }),
        };
        let ejection = Ejection {
            active,
            count: r.u32()?,
            returned_at: Instant(r.u64()?),
            blocked_at: Instant(r.u64()?),
            slow_since: Instant(r.u64()?),
            last_detector: match r.u8()? {
                0 => None,
                code => Some(Detector::from_code(code).ok_or(DecodeError::BadValue)?),
            },
        };
        Ok(Member {
            address,
            added_at,
            ejection,
        })
    }
}

impl EndpointRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.requests);
        w.u64(self.failures);
        w.u64(self.last_seen.0);
        w.u32(self.in_flight);
        w.u64(self.in_flight_at.0);
        w.f64(self.latency.value_us);
        w.u64(self.latency.at.0);
        w.f64(self.mean_latency.value_us);
        w.u64(self.mean_latency.at.0);
        w.f64(self.counts.successes);
        w.f64(self.counts.failures);
        w.u64(self.counts.at.0);
        w.u32(self.consecutive_5xx);
        w.u32(self.consecutive_gateway);
        w.u8(u8::from(self.steered));
        w.out
    }

    pub fn decode(bytes: &[u8]) -> Result<EndpointRecord, DecodeError> {
        let mut r = Reader::new(bytes)?;
        Ok(EndpointRecord {
            requests: r.u64()?,
            failures: r.u64()?,
            last_seen: Instant(r.u64()?),
            in_flight: r.u32()?,
            in_flight_at: Instant(r.u64()?),
            latency: PeakEwma {
                value_us: r.f64()?,
                at: Instant(r.u64()?),
            },
            mean_latency: MeanEwma {
                value_us: r.f64()?,
                at: Instant(r.u64()?),
            },
            counts: DecayedCounts {
                successes: r.f64()?,
                failures: r.f64()?,
                at: Instant(r.u64()?),
            },
            consecutive_5xx: r.u32()?,
            consecutive_gateway: r.u32()?,
            steered: r.u8()? != 0,
        })
    }
}

/// Encodes a list of entries (the cluster names of the table, the members of a cluster).
pub fn encode_list<T: Entry>(entries: &[T]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(entries.len() as u16);
    for entry in entries {
        entry.write(&mut w);
    }
    w.out
}

pub fn decode_list<T: Entry>(bytes: &[u8]) -> Result<Vec<T>, DecodeError> {
    let mut r = Reader::new(bytes)?;
    let count = usize::from(r.u16()?);
    if count > MAX_LIST_ENTRIES {
        return Err(DecodeError::TooLong);
    }
    (0..count).map(|_| T::read(&mut r)).collect()
}

pub struct Writer {
    out: Vec<u8>,
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

impl Writer {
    pub fn new() -> Self {
        Writer { out: vec![FORMAT] }
    }
    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    /// Names longer than the decoder accepts are cut (they cannot occur: Envoy cluster names
    /// and addresses are far shorter) rather than written unreadable.
    pub fn str(&mut self, s: &str) {
        let mut end = s.len().min(MAX_NAME_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.out.extend_from_slice(&s.as_bytes()[..end]);
    }
}

/// A cursor over a value that checks the format byte first and every length after.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            Some((&FORMAT, rest)) => Ok(Reader { rest }),
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut buf = [0u8; N];
        buf.copy_from_slice(self.take(N)?);
        Ok(buf)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Non-finite floats are refused: they would poison every comparison downstream.
    pub fn f64(&mut self) -> Result<f64, DecodeError> {
        let v = f64::from_bits(self.u64()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(DecodeError::BadValue)
        }
    }
    pub fn str(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > MAX_NAME_LEN {
            return Err(DecodeError::TooLong);
        }
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|_| DecodeError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn record() -> EndpointRecord {
        EndpointRecord {
            requests: u64::MAX,
            failures: 7,
            last_seen: Instant(1_700_000_000_123),
            in_flight: 3,
            in_flight_at: Instant(9),
            latency: PeakEwma {
                value_us: 1234.5,
                at: Instant(8),
            },
            mean_latency: MeanEwma {
                value_us: 1000.25,
                at: Instant(8),
            },
            counts: DecayedCounts {
                successes: 9.5,
                failures: 0.25,
                at: Instant(7),
            },
            consecutive_5xx: 2,
            consecutive_gateway: 1,
            steered: true,
        }
    }

    fn member(active: bool) -> Member {
        Member {
            address: "10.0.0.1:8080".into(),
            added_at: Instant(5),
            ejection: Ejection {
                active: active.then_some(ActiveEjection {
                    until: Instant(99),
                    detector: Detector::Latency,
                    dry_run: true,
                    probe_successes: 2,
                }),
                count: 3,
                returned_at: Instant(4),
                blocked_at: Instant(3),
                slow_since: Instant(2),
                last_detector: Some(Detector::SuccessRate),
            },
        }
    }

    #[test]
    fn endpoint_record_round_trips() {
        assert_eq!(EndpointRecord::decode(&record().encode()), Ok(record()));
    }

    #[test]
    fn lists_round_trip_including_istio_cluster_names() {
        let names = vec![
            "outbound|80||reviews.default.svc.cluster.local".to_string(),
            "[2600:4040::1]:80".to_string(),
            String::new(),
        ];
        assert_eq!(decode_list::<String>(&encode_list(&names)), Ok(names));
        let members = vec![member(true), member(false)];
        assert_eq!(decode_list::<Member>(&encode_list(&members)), Ok(members));
        assert_eq!(
            decode_list::<String>(&encode_list::<String>(&[])),
            Ok(vec![])
        );
    }

    #[test]
    fn unknown_format_is_refused_not_misread() {
        let mut bytes = record().encode();
        bytes[0] = 1;
        assert_eq!(
            EndpointRecord::decode(&bytes),
            Err(DecodeError::UnknownFormat(1))
        );
    }

    #[test]
    fn truncated_and_empty_values_are_errors() {
        let bytes = record().encode();
        for n in 0..bytes.len() {
            assert!(EndpointRecord::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let list = encode_list(&[member(true), member(false)]);
        for n in 0..list.len() {
            assert!(decode_list::<Member>(&list[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn corrupt_values_cannot_force_large_allocations_or_nan() {
        assert_eq!(
            decode_list::<String>(&[FORMAT, 0xff, 0xff]),
            Err(DecodeError::TooLong)
        );
        assert_eq!(
            decode_list::<String>(&[FORMAT, 1, 0, 0xff, 0xff]),
            Err(DecodeError::TooLong)
        );
        assert_eq!(
            decode_list::<String>(&[FORMAT, 1, 0, 2, 0, 0xff, 0xfe]),
            Err(DecodeError::NotUtf8)
        );
        let mut r = record();
        r.latency.value_us = f64::NAN;
        assert_eq!(
            EndpointRecord::decode(&r.encode()),
            Err(DecodeError::BadValue)
        );
        let mut bytes = encode_list(&[member(true)]);
        let detector_at = 1 + 2 + 2 + "10.0.0.1:8080".len() + 8;
        bytes[detector_at] = 77;
        assert_eq!(decode_list::<Member>(&bytes), Err(DecodeError::BadValue));
    }

    #[test]
    fn overlong_names_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_NAME_LEN);
        let decoded = decode_list::<String>(&encode_list(&[long])).unwrap();
        assert!(decoded[0].len() <= MAX_NAME_LEN);
    }
}
