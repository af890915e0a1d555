//! What to do with an answer, and how long to wait before the next attempt.
//!
//! The decisions follow the OTLP specification's lists of retryable gRPC codes and HTTP
//! statuses; they are pure functions of what the receiver said.
//!
//! | answer | decision |
//! |---|---|
//! | gRPC `OK`, HTTP 2xx | delivered (partial success counted in `points_rejected`) |
//! | gRPC `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED`, `CANCELLED`, `OUT_OF_RANGE`, `DATA_LOSS` | retry; a `RetryInfo` delay is honoured |
//! | gRPC `RESOURCE_EXHAUSTED` with `RetryInfo` | retry after its delay |
//! | gRPC `RESOURCE_EXHAUSTED` without `RetryInfo`, any other code | drop |
//! | HTTP 429, 502, 503, 504 | retry; `Retry-After` (seconds or HTTP-date) is honoured |
//! | HTTP 3xx (redirects are not followed) | drop, logged with the `Location` |
//! | any other HTTP status | drop |
//! | no answer: connection refused or reset, TLS failure, timeout | retry |
//!
//! Without a delay from the receiver the wait is exponential (`initial_interval` times
//! `multiplier` per attempt, capped at `max_interval`) with full or decorrelated jitter. A
//! delay the receiver asks for is used as given up to `max_requested_delay` (by default
//! `max_interval`), and capped there.

use std::time::{Duration, SystemTime};

use tonic::Code;

use super::config::{Jitter, RetryConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delivered; the batch leaves the queue.
    Done,
    /// Try the same batch again; `after` is the receiver's requested delay, if it gave one.
    Retry { after: Option<Duration> },
    /// The receiver will never take this batch; it leaves the queue, counted as dropped.
    /// `kind` keys the rate-limited warning.
    Drop { kind: &'static str },
}

/// gRPC status code (plus the delay of a `google.rpc.RetryInfo` detail, if any) to decision.
pub fn grpc_decision(code: Code, retry_info: Option<Duration>) -> Decision {
    match code {
        Code::Ok => Decision::Done,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::OutOfRange
        | Code::DataLoss => Decision::Retry { after: retry_info },
        // The spec: retryable only when the server says when to come back; otherwise the
        // exhaustion is not expected to recover (a quota, a too-large message).
        Code::ResourceExhausted => match retry_info {
            Some(after) => Decision::Retry { after: Some(after) },
            None => Decision::Drop { kind: "grpc_resource_exhausted" },
        },
        Code::InvalidArgument => Decision::Drop { kind: "grpc_invalid_argument" },
        Code::Unauthenticated => Decision::Drop { kind: "grpc_unauthenticated" },
        Code::PermissionDenied => Decision::Drop { kind: "grpc_permission_denied" },
        Code::NotFound => Decision::Drop { kind: "grpc_not_found" },
        Code::Unimplemented => Decision::Drop { kind: "grpc_unimplemented" },
        Code::Internal => Decision::Drop { kind: "grpc_internal" },
        Code::FailedPrecondition => Decision::Drop { kind: "grpc_failed_precondition" },
        Code::AlreadyExists => Decision::Drop { kind: "grpc_already_exists" },
        Code::Unknown => Decision::Drop { kind: "grpc_unknown" },
    }
}

/// The decision for a `tonic::Status`, reading its `RetryInfo` detail.
pub fn grpc_status_decision(status: &tonic::Status) -> Decision {
    use tonic_types::StatusExt;
    // A status tonic made from a local error (it carries that error as its source: a reset or
    // refused connection, an HTTP/2 protocol error on a garbage answer, a timeout) is no answer
    // of the receiver's, whatever code tonic gave it (`Internal` for a protocol error): the
    // batch is retried, as over HTTP.
    if std::error::Error::source(status).is_some() {
        return Decision::Retry { after: None };
    }
    let delay = status.get_details_retry_info().and_then(|info| info.retry_delay);
    grpc_decision(status.code(), delay)
}

/// HTTP status (plus its `Retry-After` header, if any) to decision. `now` turns an HTTP-date
/// into a delay.
pub fn http_decision(status: u16, retry_after: Option<&str>, now: SystemTime) -> Decision {
    match status {
        200..=299 => Decision::Done,
        429 | 502 | 503 | 504 => {
            Decision::Retry { after: retry_after.and_then(|v| parse_retry_after(v, now)) }
        }
        // A moved endpoint is a configuration error: retrying the same URL cannot succeed.
        300..=399 => Decision::Drop { kind: "http_redirect" },
        400 => Decision::Drop { kind: "http_400" },
        401 | 403 => Decision::Drop { kind: "http_unauthorized" },
        404 => Decision::Drop { kind: "http_404" },
        413 => Decision::Drop { kind: "http_413" },
        s if (400..500).contains(&s) => Decision::Drop { kind: "http_4xx" },
        s if (500..600).contains(&s) => Decision::Drop { kind: "http_5xx" },
        _ => Decision::Drop { kind: "http_unexpected_status" },
    }
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>`; a date in the past means now.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential backoff for one batch; a new batch starts a new `Backoff`.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: RetryConfig,
    attempt: u32,
    previous: Duration,
}

impl Backoff {
    pub fn new(config: &RetryConfig) -> Backoff {
        Backoff { config: config.clone(), attempt: 0, previous: config.initial_interval }
    }

    /// The delay before the next attempt, drawn with `rng`.
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let c = &self.config;
        let cap = c.max_interval.as_secs_f64();
        let initial = c.initial_interval.as_secs_f64();
        let exp = (initial * c.multiplier.powi(self.attempt.min(64) as i32)).min(cap);
        self.attempt = self.attempt.saturating_add(1);
        let secs = match c.jitter {
            Jitter::None => exp,
            Jitter::Full => exp * rng.f64(),
            Jitter::Decorrelated => {
                let high = (self.previous.as_secs_f64() * c.multiplier.max(1.0)).min(cap).max(initial);
                initial + (high - initial) * rng.f64()
            }
        };
        let delay = Duration::from_secs_f64(secs.clamp(0.0, cap));
        self.previous = delay;
        delay
    }

    /// The delay to wait: the receiver's when it named one, else the next backoff step.
    pub fn delay_for(&mut self, requested: Option<Duration>, rng: &mut fastrand::Rng) -> Duration {
        match requested {
            Some(d) => {
                // Keep the exponential schedule moving so a receiver that keeps asking for
                // zero does not make us spin.
                let own = self.next_delay(rng);
                if d.is_zero() {
                    own
                } else {
                    d.min(self.config.requested_delay_cap())
                }
            }
            None => self.next_delay(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_follow_the_otlp_spec() {
        let retry = Decision::Retry { after: None };
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Cancelled,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert_eq!(grpc_decision(code, None), retry, "{code:?}");
        }
        assert_eq!(grpc_decision(Code::Ok, None), Decision::Done);
        assert!(matches!(grpc_decision(Code::ResourceExhausted, None), Decision::Drop { .. }));
        assert_eq!(
            grpc_decision(Code::ResourceExhausted, Some(Duration::from_secs(3))),
            Decision::Retry { after: Some(Duration::from_secs(3)) }
        );
        assert_eq!(
            grpc_decision(Code::Unavailable, Some(Duration::from_millis(700))),
            Decision::Retry { after: Some(Duration::from_millis(700)) }
        );
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
            Code::Unimplemented,
            Code::Internal,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::Unknown,
        ] {
            assert!(matches!(grpc_decision(code, None), Decision::Drop { .. }), "{code:?}");
        }
    }

    #[test]
    fn a_status_made_from_a_local_error_is_retried_whatever_its_code() {
        // What tonic gives for a garbage answer: Internal, with the HTTP/2 error as its source.
        let local = tonic::Status::from_error(Box::new(std::io::Error::other("h2 protocol error")));
        assert!(matches!(grpc_status_decision(&local), Decision::Retry { after: None }), "{local:?}");
        // The same code sent by a receiver is its answer, and is not retried (OTLP spec).
        let answered = tonic::Status::internal("h2 protocol error");
        assert!(matches!(grpc_status_decision(&answered), Decision::Drop { .. }), "{answered:?}");
    }

    #[test]
    fn grpc_status_retry_info_is_read_from_the_details() {
        use tonic_types::{ErrorDetails, StatusExt};
        let status = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
        );
        assert_eq!(
            grpc_status_decision(&status),
            Decision::Retry { after: Some(Duration::from_millis(1500)) }
        );
        let bare = tonic::Status::resource_exhausted("quota");
        assert!(matches!(grpc_status_decision(&bare), Decision::Drop { .. }));
    }

    #[test]
    fn http_statuses_follow_the_otlp_spec() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        for s in [429, 502, 503, 504] {
            assert_eq!(http_decision(s, None, now), Decision::Retry { after: None }, "{s}");
        }
        assert_eq!(
            http_decision(503, Some("7"), now),
            Decision::Retry { after: Some(Duration::from_secs(7)) }
        );
        assert_eq!(http_decision(200, None, now), Decision::Done);
        assert_eq!(http_decision(204, None, now), Decision::Done);
        for s in [400, 401, 403, 404, 413, 415, 500, 501, 505, 302] {
            assert!(matches!(http_decision(s, None, now), Decision::Drop { .. }), "{s}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    fn config(jitter: Jitter) -> RetryConfig {
        RetryConfig {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(2),
            max_requested_delay: Some(Duration::from_secs(10)),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_grows_exponentially_to_the_cap() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut b = Backoff::new(&config(Jitter::None));
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay(&mut rng).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn jittered_backoff_stays_within_its_bounds() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut full = Backoff::new(&config(Jitter::Full));
        let mut spread = std::collections::HashSet::new();
        for i in 0..50u32 {
            let d = full.next_delay(&mut rng);
            let bound = Duration::from_millis(100 * 2u64.pow(i.min(5))).min(Duration::from_secs(2));
            assert!(d <= bound, "attempt {i}: {d:?} > {bound:?}");
            spread.insert(d.as_millis());
        }
        assert!(spread.len() > 10, "full jitter varies the delay: {spread:?}");
        let mut deco = Backoff::new(&config(Jitter::Decorrelated));
        for _ in 0..50 {
            let d = deco.next_delay(&mut rng);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_secs(2), "{d:?}");
        }
    }

    #[test]
    fn a_requested_delay_wins_over_the_backoff() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut b = Backoff::new(&config(Jitter::None));
        assert_eq!(b.delay_for(Some(Duration::from_secs(9)), &mut rng), Duration::from_secs(9));
        assert_eq!(b.delay_for(None, &mut rng), Duration::from_millis(200));
        assert_eq!(b.delay_for(Some(Duration::ZERO), &mut rng), Duration::from_millis(400));
    }

    #[test]
    fn a_requested_delay_is_capped() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut b = Backoff::new(&config(Jitter::None));
        let day = Duration::from_secs(86_400);
        assert_eq!(b.delay_for(Some(day), &mut rng), Duration::from_secs(10), "max_requested_delay");
        let default_cap = RetryConfig { max_requested_delay: None, ..config(Jitter::None) };
        let mut b = Backoff::new(&default_cap);
        assert_eq!(b.delay_for(Some(day), &mut rng), Duration::from_secs(2), "max_interval by default");
    }
}
