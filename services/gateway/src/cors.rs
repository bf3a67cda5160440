//! Which browser origins may call the API (`--cors-origins`).
//!
//! Entries are compared with the `Origin` header byte for byte, which browsers
//! send as `scheme://host[:port]` in lower case and without a path, so entries
//! are normalised to that (`https://App.example/` is `https://app.example`).
//! `*` allows every origin; browsers refuse credentials with a wildcard (and
//! tower-http panics at start when asked for both, or for `*` inside a list),
//! so a `*` entry means any origin without credentials.

use axum::http::{header, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<HeaderValue>),
}

impl CorsOrigins {
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let mut origins = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if entry == "*" {
                return Ok(Self::Any);
            }
            let origin = entry.trim_end_matches('/').to_ascii_lowercase();
            let value = HeaderValue::from_str(&origin).map_err(|_| anyhow::anyhow!("bad CORS origin {entry:?}"))?;
            if !origins.contains(&value) {
                origins.push(value);
            }
        }
        Ok(Self::List(origins))
    }

    pub fn layer(&self) -> CorsLayer {
        let layer = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
                header::HeaderName::from_static("x-correlation-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::HeaderName::from_static("idempotent-replayed"),
                header::HeaderName::from_static("x-correlation-id"),
                // The transaction list's next page, for browser clients paging by cursor.
                header::HeaderName::from_static("x-next-cursor"),
            ])
            .max_age(std::time::Duration::from_secs(600));
        match self {
            Self::Any => layer.allow_origin(AllowOrigin::any()),
            // Credentials stay allowed for listed origins: the API uses no cookies, but
            // clients of the older gateway may send `credentials: "include"` (or
            // `withCredentials`), and a browser refuses such an answer without this.
            Self::List(origins) => layer.allow_origin(AllowOrigin::list(origins.clone())).allow_credentials(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    fn origins(list: &[&str]) -> CorsOrigins {
        CorsOrigins::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// The `Access-Control-Allow-Origin` and `-Credentials` answered to `origin`.
    async fn answer(cors: &CorsOrigins, origin: &str) -> (Option<String>, Option<String>) {
        let app = Router::new().route("/", get(|| async { "ok" })).layer(cors.layer());
        let req = Request::builder().uri("/").header("origin", origin).body(Body::empty()).unwrap();
        let res = app.oneshot(req).await.unwrap();
        let h = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_string());
        (h("access-control-allow-origin"), h("access-control-allow-credentials"))
    }

    #[tokio::test]
    async fn a_wildcard_allows_any_origin_without_credentials_and_does_not_panic() {
        let cors = origins(&["http://localhost:3000", " * "]);
        assert_eq!(cors, CorsOrigins::Any);
        assert_eq!(answer(&cors, "https://anyone.example").await, (Some("*".into()), None));
    }

    #[tokio::test]
    async fn configured_origins_match_without_trailing_slash_or_case() {
        let cors = origins(&["http://localhost:3000/", "https://App.Example.com/", ""]);
        let yes = (Some("http://localhost:3000".to_string()), Some("true".to_string()));
        assert_eq!(answer(&cors, "http://localhost:3000").await, yes);
        assert_eq!(answer(&cors, "https://app.example.com").await.0.as_deref(), Some("https://app.example.com"));
        assert_eq!(answer(&cors, "http://evil.example").await.0, None);
    }

    #[test]
    fn an_unusable_origin_is_refused_at_start() {
        assert!(CorsOrigins::parse(&["http://a\nb".to_string()]).is_err());
    }
}
