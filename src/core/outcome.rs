//! What a finished upstream exchange tells reflex about the endpoint that served it.

/// The verdict on one response, as the endpoint statistics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx answer, or no answer at all (reset, connect failure, timeout): Envoy reports
    /// those with response code 0 or with a locally generated 5xx.
    Failure,
}

impl Outcome {
    /// Classifies by HTTP status; `None` or `0` means the upstream never answered.
    pub fn from_status(status: Option<u64>) -> Outcome {
        match status {
            Some(100..=499) => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn client_errors_are_the_endpoint_doing_its_job() {
        assert_eq!(Outcome::from_status(Some(200)), Outcome::Success);
        assert_eq!(Outcome::from_status(Some(404)), Outcome::Success);
        assert_eq!(Outcome::from_status(Some(429)), Outcome::Success);
    }

    #[test]
    fn server_errors_and_silence_are_failures() {
        assert_eq!(Outcome::from_status(Some(500)), Outcome::Failure);
        assert_eq!(Outcome::from_status(Some(503)), Outcome::Failure);
        assert_eq!(Outcome::from_status(Some(0)), Outcome::Failure);
        assert_eq!(Outcome::from_status(None), Outcome::Failure);
        assert_eq!(Outcome::from_status(Some(99)), Outcome::Failure);
        assert_eq!(Outcome::from_status(Some(u64::MAX)), Outcome::Failure);
    }
}
