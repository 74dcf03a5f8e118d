//! What every RPC checks in a request: ids, limits, the country, the deadline.

use std::time::Duration;

use recsys_shared::ids::{id_problem, quote};
use tokio::time::Instant;
use tonic::Request;

use super::RankError;
use crate::admission::RequestDeadline;

/// Request limits; a request beyond one is answered `INVALID_ARGUMENT` naming the field.
pub mod limits {
    pub const MAX_K: u64 = 1000;
    pub const DEFAULT_K: u64 = 20;
    pub const MAX_EXCLUDED: usize = 1000;
    pub const MAX_ROWS: u64 = 20;
    pub const DEFAULT_ROWS: u64 = 3;
    pub const MAX_ITEMS_PER_ROW: u64 = 100;
    pub const DEFAULT_ITEMS_PER_ROW: u64 = 10;
}

pub(crate) fn invalid(field: &'static str, problem: impl std::fmt::Display) -> RankError {
    RankError::Invalid {
        field,
        problem: problem.to_string(),
    }
}

pub(crate) fn check_id(field: &'static str, id: &str) -> Result<(), RankError> {
    match id_problem(id) {
        Some(problem) => Err(invalid(field, problem)),
        None => Ok(()),
    }
}

pub(crate) fn check_country(country: &str) -> Result<Option<String>, RankError> {
    if country.is_empty() {
        return Ok(None);
    }
    if country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(invalid(
            "country",
            format!(
                "{} is not an ISO 3166-1 alpha-2 code such as \"US\"",
                quote(country)
            ),
        ));
    }
    Ok(Some(country.to_ascii_uppercase()))
}

pub(crate) fn bounded(
    field: &'static str,
    value: u64,
    default: u64,
    max: u64,
) -> Result<usize, RankError> {
    match value {
        0 => Ok(default as usize),
        v if v > max => Err(invalid(
            field,
            format!("{v} is more than the limit of {max}"),
        )),
        v => Ok(v as usize),
    }
}

pub(crate) fn deadline_exceeded(deadline: Instant, step: &'static str) -> RankError {
    RankError::DeadlineExceeded {
        late_ms: Instant::now()
            .saturating_duration_since(deadline)
            .as_millis(),
        step,
    }
}

/// `DEADLINE_EXCEEDED` once `deadline` has passed: called before each costly step.
pub(crate) fn check_deadline(deadline: Instant, step: &'static str) -> Result<(), RankError> {
    if Instant::now() >= deadline {
        return Err(deadline_exceeded(deadline, step));
    }
    Ok(())
}

/// The deadline the admission layer stamped, or (a request that did not come through it) one
/// from now.
pub(crate) fn deadline_of<T>(request: &Request<T>, max: Duration) -> Instant {
    request
        .extensions()
        .get::<RequestDeadline>()
        .map_or_else(|| Instant::now() + max, |d| d.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn limits_name_the_field() {
        assert_eq!(bounded("k", 0, 20, 1000).unwrap(), 20);
        let e = Status::from(bounded("k", 1001, 20, 1000).unwrap_err());
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let huge = Status::from(bounded("k", (1 << 32) + 5, 20, 1000).unwrap_err());
        assert!(
            huge.message().starts_with("k: 4294967301 "),
            "{}",
            huge.message()
        );
        assert!(e.message().starts_with("k: "), "{}", e.message());
        assert_eq!(check_country("us").unwrap().as_deref(), Some("US"));
        assert!(Status::from(check_country("USA").unwrap_err())
            .message()
            .starts_with("country: "));
        assert!(Status::from(check_id("user_id", "").unwrap_err())
            .message()
            .starts_with("user_id: "));
    }
}
