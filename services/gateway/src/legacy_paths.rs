//! Path matching as the older Node.js PayFlow (Express) did it: case-insensitive
//! and with an optional trailing slash, so `/api/transactions/` and
//! `/API/Transactions` still reach `/api/transactions` for existing clients.
//! Every public path segment is a fixed word or a UUID, so lower-casing is
//! lossless for them.

use axum::extract::Request;
use axum::http::Uri;

/// Rewrites the request's path to the form the route table uses; the query is kept as sent.
pub fn normalize(mut req: Request) -> Request {
    let path = req.uri().path();
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    if trimmed.len() == path.len() && !path.bytes().any(|b| b.is_ascii_uppercase()) {
        return req;
    }
    let mut path_and_query = trimmed.to_ascii_lowercase();
    if let Some(q) = req.uri().query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let mut parts = req.uri().clone().into_parts();
    // A path that parsed once still parses after trimming and lower-casing.
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn path_of(uri: &str) -> String {
        let req = Request::builder().uri(uri).body(Body::empty()).expect("request");
        normalize(req).uri().to_string()
    }

    #[test]
    fn trailing_slashes_and_case_are_ignored_and_the_query_kept() {
        assert_eq!(path_of("/api/transactions/"), "/api/transactions");
        assert_eq!(
            path_of("/API/Transactions//?status=PENDING&cursor=AB"),
            "/api/transactions?status=PENDING&cursor=AB"
        );
        assert_eq!(path_of("/"), "/");
        assert_eq!(path_of("/health"), "/health");
    }
}
