#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("serialization: {0}")]
    Serde(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The finalizer helper wraps what `apply` or `cleanup` returned; that inner error is the one
/// to report (and count by its kind). Only the helper's own failures stay `Finalizer`.
impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

impl Error {
    /// A short label for metrics.
    /// Every value of `metric_label`, to initialise the error counters.
    pub const METRIC_LABELS: [&'static str; 4] = ["kube", "finalizer", "serde", "other"];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Serde(_) => "serde",
            Error::Other(_) => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    fn kube_error() -> kube::Error {
        kube::Error::Api(kube::core::Status::failure("conflict", "Conflict").with_code(409).boxed())
    }

    #[test]
    fn reconcile_errors_are_counted_by_the_kind_of_what_failed() {
        let cases: [(F<Error>, &str); 6] = [
            (F::ApplyFailed(Error::Kube(kube_error())), "kube"),
            (F::ApplyFailed(Error::Other("x".into())), "other"),
            (F::ApplyFailed(Error::Serde(serde_json::from_str::<u8>("x").unwrap_err())), "serde"),
            (F::CleanupFailed(Error::Kube(kube_error())), "kube"),
            (F::AddFinalizer(kube_error()), "finalizer"),
            (F::RemoveFinalizer(kube_error()), "finalizer"),
        ];
        for (e, label) in cases {
            let shown = e.to_string();
            assert_eq!(Error::from(e).metric_label(), label, "{shown}");
        }
        assert_eq!(Error::from(F::<Error>::UnnamedObject).metric_label(), "finalizer");
    }
}
