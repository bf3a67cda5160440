//! Postgres access, one module per table group. Queries name the schema
//! (`auth.`) because the service's pool does not set a search path.

pub mod audit;
pub mod sessions;
pub mod throttle;
pub mod users;

/// Seconds as a Postgres interval argument (`make_interval(secs => $n)`).
pub(crate) fn secs(v: u64) -> f64 {
    // Config bounds every duration to ten years, far inside f64's exact range.
    v as f64
}
