//! What a finished upstream exchange tells reflex about the endpoint that served it.

/// The verdict on one response, as the endpoint statistics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx answer, or no answer at all (reset, connect failure, timeout): Envoy reports
    /// those with response code 0 or with a locally generated 5xx.
    Failure,
}

/// One finished exchange with one endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub outcome: Outcome,
    /// 502, 503, 504 or no answer: the failures that say the endpoint (or the path to it) is
    /// down rather than that it answered with an application error.
    pub gateway_failure: bool,
    /// Time to the response headers (or to the end, without any), in microseconds.
    pub latency_us: Option<f64>,
}

impl Observation {
    /// Classifies by HTTP status; `None` or `0` means the upstream never answered.
    pub fn from_response(status: Option<u64>, latency_us: Option<f64>) -> Observation {
        let outcome = match status {
            Some(100..=499) => Outcome::Success,
            _ => Outcome::Failure,
        };
        let gateway_failure =
            !matches!(status, Some(code) if (100..=501).contains(&code) || code >= 505);
        Observation {
            outcome,
            gateway_failure,
            latency_us,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn outcome(status: Option<u64>) -> Outcome {
        Observation::from_response(status, None).outcome
    }

    fn gateway(status: Option<u64>) -> bool {
        Observation::from_response(status, None).gateway_failure
    }

    #[test]
    fn client_errors_are_the_endpoint_doing_its_job() {
        assert_eq!(outcome(Some(200)), Outcome::Success);
        assert_eq!(outcome(Some(404)), Outcome::Success);
        assert_eq!(outcome(Some(429)), Outcome::Success);
    }

    #[test]
    fn server_errors_and_silence_are_failures() {
        for status in [
            Some(500),
            Some(503),
            Some(0),
            None,
            Some(99),
            Some(u64::MAX),
        ] {
            assert_eq!(outcome(status), Outcome::Failure, "{status:?}");
        }
    }

    #[test]
    fn gateway_failures_are_502_503_504_and_silence() {
        for status in [Some(502), Some(503), Some(504), Some(0), None] {
            assert!(gateway(status), "{status:?}");
        }
        for status in [Some(200), Some(500), Some(501), Some(505), Some(429)] {
            assert!(!gateway(status), "{status:?}");
        }
    }
}
