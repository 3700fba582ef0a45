//! Durations as operators write them: `"250ms"`, `"2s"`, `"1.5s"`, `"10m"`, `"1h"`.
//!
//! Kept as whole milliseconds: every timer in reflex is coarser than that, and an integer
//! cannot be NaN or negative.

use serde::de::{self, Deserialize, Deserializer};
use std::fmt;

/// A non-negative duration in whole milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl Millis {
    pub const fn from_secs(secs: u64) -> Self {
        Millis(secs * 1000)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}s", self.0 / 1000)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

/// Parses `<number><unit>` with unit one of `ms`, `s`, `m`, `h`; fractions allowed for the
/// larger units as long as the result is a whole number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    const RULE: &str = "expected a duration such as \"250ms\", \"2s\", \"1.5s\", \"10m\" or \"1h\"";
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{RULE}, got {text:?} (missing unit)"))?;
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{RULE}, got {text:?} (unknown unit)")),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(format!("{RULE}, got {text:?}"));
    }
    let whole: u64 = whole
        .parse()
        .map_err(|_| format!("{RULE}, got {text:?} (number too large)"))?;
    let mut millis = whole
        .checked_mul(scale)
        .ok_or_else(|| format!("{RULE}, got {text:?} (too large)"))?;
    // Each fractional digit is worth a tenth of the previous one.
    let mut place = scale;
    for digit in fraction.bytes() {
        place /= 10;
        let d = u64::from(digit - b'0');
        if place == 0 {
            if d != 0 {
                return Err(format!("{text:?} is finer than a millisecond"));
            }
            continue;
        }
        millis = millis
            .checked_add(d * place)
            .ok_or_else(|| format!("{RULE}, got {text:?} (too large)"))?;
    }
    Ok(Millis(millis))
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Millis(2_000)));
        assert_eq!(parse_duration("10m"), Ok(Millis(600_000)));
        assert_eq!(parse_duration("1h"), Ok(Millis(3_600_000)));
        assert_eq!(parse_duration("0s"), Ok(Millis(0)));
    }

    #[test]
    fn parses_fractions_down_to_the_millisecond() {
        assert_eq!(parse_duration("1.5s"), Ok(Millis(1_500)));
        assert_eq!(parse_duration("0.25s"), Ok(Millis(250)));
        assert_eq!(parse_duration("0.001s"), Ok(Millis(1)));
        assert_eq!(parse_duration("1.500s"), Ok(Millis(1_500)));
        assert!(parse_duration("0.0005s").is_err());
        assert!(parse_duration("1.5ms").is_err());
    }

    #[test]
    fn rejects_malformed_text_with_the_rule() {
        for bad in [
            "", "ms", "5", "5 s", "-1s", "1.s", ".5s", "1..5s", "5d", "1e3ms", "s5",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_overflow_instead_of_wrapping() {
        assert!(parse_duration("99999999999999999999ms").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
    }

    #[test]
    fn displays_in_the_unit_it_was_likely_written_in() {
        assert_eq!(Millis(2_000).to_string(), "2s");
        assert_eq!(Millis(250).to_string(), "250ms");
    }
}
