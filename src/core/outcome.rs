//! What a finished upstream exchange tells reflex about the endpoint that served it.

/// The verdict on one response, as the endpoint statistics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx answer, or no answer at all (reset, connect failure, timeout): Envoy reports
    /// those with response code 0 or with a locally generated 5xx.
    Failure,
    /// The client went away before any answer. Not a verdict on the endpoint, but the time
    /// waited is a latency sample: it is how an endpoint that hangs, behind a route without a
    /// timeout, shows up as the slowest of its peers.
    Abandoned,
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
    /// Deduced (an earlier attempt of a retried request) rather than seen.
    pub inferred: bool,
}

/// Envoy response flags (`response.flags`): the downstream went away (DC, DR), or Envoy refused
/// locally (UO, circuit breaker), which says nothing about the endpoint.
const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
const DOWNSTREAM_REMOTE_RESET: u64 = 0x1000_0000;
const UPSTREAM_OVERFLOW: u64 = 0x80;

impl Observation {
    /// Classifies by HTTP status and Envoy's response flags; `None` or `0` status means the
    /// upstream never answered. `None` when the exchange says nothing about the endpoint.
    pub fn from_response(
        status: Option<u64>,
        flags: u64,
        latency_us: Option<f64>,
    ) -> Option<Observation> {
        if flags & UPSTREAM_OVERFLOW != 0 {
            return None;
        }
        let answered = matches!(status, Some(code) if code != 0);
        if !answered && flags & (DOWNSTREAM_CONNECTION_TERMINATION | DOWNSTREAM_REMOTE_RESET) != 0 {
            return Some(Observation {
                outcome: Outcome::Abandoned,
                gateway_failure: false,
                latency_us,
                inferred: false,
            });
        }
        let outcome = match status {
            Some(100..=499) => Outcome::Success,
            _ => Outcome::Failure,
        };
        let gateway_failure =
            !matches!(status, Some(code) if (100..=501).contains(&code) || code >= 505);
        Some(Observation {
            outcome,
            gateway_failure,
            latency_us,
            inferred: false,
        })
    }

    /// A 429 that carried `Retry-After` is the endpoint asking to be left alone: scored as a
    /// failure, so P2C and the detectors steer away from it (a 503 already is one; other
    /// statuses with `Retry-After`, a 202 to poll later say, are not refusals).
    pub fn with_retry_after(mut self, status: Option<u64>, retry_after: bool) -> Observation {
        if retry_after && status == Some(429) && self.outcome == Outcome::Success {
            self.outcome = Outcome::Failure;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn outcome(status: Option<u64>) -> Outcome {
        Observation::from_response(status, 0, None).unwrap().outcome
    }

    fn gateway(status: Option<u64>) -> bool {
        Observation::from_response(status, 0, None)
            .unwrap()
            .gateway_failure
    }

    #[test]
    fn a_client_that_left_is_no_verdict_and_a_local_refusal_says_nothing() {
        let left = Observation::from_response(None, 0x4000, Some(900_000.0)).unwrap();
        assert_eq!(left.outcome, Outcome::Abandoned);
        assert_eq!(
            left.latency_us,
            Some(900_000.0),
            "the wait is a latency sample"
        );
        assert!(!left.gateway_failure);
        let reset = Observation::from_response(Some(0), 0x1000_0000, None).unwrap();
        assert_eq!(reset.outcome, Outcome::Abandoned);
        assert_eq!(Observation::from_response(Some(503), 0x80, None), None);
        // The client leaving after the answer does not erase the answer.
        assert!(Observation::from_response(Some(200), 0x4000, None).is_some());
        // An upstream reset is the endpoint's failure.
        let reset = Observation::from_response(None, 0x10, None).unwrap();
        assert!(reset.gateway_failure && reset.outcome == Outcome::Failure);
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

    #[test]
    fn retry_after_turns_an_answer_into_a_failure() {
        let ok = Observation::from_response(Some(429), 0, Some(1.0)).unwrap();
        assert_eq!(ok.outcome, Outcome::Success);
        assert_eq!(
            ok.with_retry_after(Some(429), true).outcome,
            Outcome::Failure
        );
        assert_eq!(
            ok.with_retry_after(Some(429), false).outcome,
            Outcome::Success
        );
        let accepted = Observation::from_response(Some(202), 0, Some(1.0)).unwrap();
        assert_eq!(
            accepted.with_retry_after(Some(202), true).outcome,
            Outcome::Success
        );
    }
}
