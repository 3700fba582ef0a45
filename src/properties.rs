//! Decoding of the values Envoy hands the filter as properties. Pure, so it is tested (and
//! fuzzed) on the host; the adapter only fetches the bytes.
//!
//! Envoy encodes integer properties (`response.code`) as 8 little-endian bytes and string
//! properties (`xds.cluster_name`, `upstream.address`, `source.address`) as raw UTF-8.

use std::net::SocketAddr;

/// An int64 property. Anything but exactly 8 bytes is not an integer.
pub fn int64(bytes: &[u8]) -> Option<i64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(i64::from_le_bytes(array))
}

/// A string property; empty or non-UTF-8 values count as absent.
pub fn string(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// Whether an `ip:port` address (as in `source.address`) is a loopback peer. Anything that
/// does not parse (a pipe path, garbage) is not loopback: the check guards a door.
pub fn is_loopback_peer(address: &str) -> bool {
    match address.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(v4)) => v4.ip().is_loopback(),
        Ok(SocketAddr::V6(v6)) => {
            v6.ip().is_loopback() || v6.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Cluster metadata `filter_metadata.reflex.steering` that marks a cluster whose load
/// balancer honours reflex's steering header (set by the same patch that installs the
/// override_host policy).
pub const STEERING_MARK_PATH: [&str; 5] = [
    "xds",
    "cluster_metadata",
    "filter_metadata",
    "reflex",
    "steering",
];

/// Whether the value at [`STEERING_MARK_PATH`] says the cluster uses override_host. Only then
/// does reflex write the header and infer failed attempts from its order: on any other
/// cluster the header would be ignored and the inference wrong.
pub fn is_steered_cluster(mark: &[u8]) -> bool {
    mark == b"override_host"
}

/// The path of a `:path` header without its query string or fragment.
pub fn path_only(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn int64_needs_exactly_eight_bytes() {
        assert_eq!(int64(&503i64.to_le_bytes()), Some(503));
        assert_eq!(int64(&[1, 0, 0, 0]), None);
        assert_eq!(int64(&[]), None);
        assert_eq!(int64(&[0; 9]), None);
    }

    #[test]
    fn strings_must_be_utf8_and_non_empty() {
        assert_eq!(string(b"outbound|80||web"), Some("outbound|80||web"));
        assert_eq!(string(b""), None);
        assert_eq!(string(&[0xff, 0x00]), None);
    }

    #[test]
    fn only_loopback_peers_are_loopback() {
        assert!(is_loopback_peer("127.0.0.1:4000"));
        assert!(is_loopback_peer("127.9.9.9:1"));
        assert!(is_loopback_peer("[::1]:80"));
        assert!(is_loopback_peer("[::ffff:127.0.0.1]:80"));
        assert!(!is_loopback_peer("10.0.0.1:80"));
        assert!(!is_loopback_peer("[::ffff:10.0.0.1]:80"));
        assert!(!is_loopback_peer("127.0.0.1"));
        assert!(!is_loopback_peer("/var/run/sock"));
        assert!(!is_loopback_peer(""));
    }

    #[test]
    fn only_the_exact_mark_enables_steering() {
        assert!(is_steered_cluster(b"override_host"));
        assert!(!is_steered_cluster(b"OVERRIDE_HOST"));
        assert!(!is_steered_cluster(&[1]));
        assert!(!is_steered_cluster(b""));
    }

    #[test]
    fn path_only_drops_query_and_fragment() {
        assert_eq!(path_only("/.reflex/status?x=1"), "/.reflex/status");
        assert_eq!(path_only("/a#b"), "/a");
        assert_eq!(path_only("/a"), "/a");
        assert_eq!(path_only(""), "");
    }
}
