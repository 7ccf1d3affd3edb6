//! Who may call: every request passes [`guard`] before its handler.
//!
//! - **Host.** On a loopback address, the `Host` header must name this machine (`localhost`,
//!   `127.x.y.z`, `[::1]`): a page that rebinds its own DNS name to 127.0.0.1 is refused, so it
//!   cannot read results or the model list.
//! - **Origin.** A write (any method but GET, HEAD, OPTIONS) from a browser page is refused
//!   with 403 unless `--cors-origin` allows its origin (the server serves no pages, so every
//!   browser write comes from some other page). A browser says where a
//!   request comes from in `Origin` and `Sec-Fetch-Site`; a simple cross-origin POST (e.g.
//!   `Content-Type: text/plain`) needs no preflight, so CORS alone would not stop it. Clients
//!   that are not browsers send neither header and pass. (ComfyUI's fix for CVE-2024-10481
//!   compares Origin and Host the same way.)
//! - **API key.** With `--api-key`, every route but `/health` needs
//!   `Authorization: Bearer <key>`; the key is compared in constant time.
//!
//! The allowed origins get CORS answers from tower-http's `CorsLayer`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::ServerError;
use crate::routes::ApiError;

/// Who may call, as the server was started.
#[derive(Debug)]
pub struct Access {
    api_key: Option<String>,
    /// Allowed origins, as `scheme://host[:port]` in lower case.
    origins: Vec<String>,
    /// The server listens on a loopback address only.
    loopback: bool,
}

/// What the guard learned of the caller, for the handlers (an extension of the request).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The request carried the server's API key.
    pub authenticated: bool,
}

impl Access {
    /// Checks the allowed origins (`scheme://host[:port]`, no path).
    pub fn new(
        api_key: Option<String>,
        origins: &[String],
        loopback: bool,
    ) -> Result<Self, ServerError> {
        let origins = origins
            .iter()
            .map(|origin| {
                let trimmed = origin.trim().trim_end_matches('/').to_ascii_lowercase();
                // Browsers leave a scheme's default port out of `Origin`.
                let trimmed = match (trimmed.strip_suffix(":443"), trimmed.strip_suffix(":80")) {
                    (Some(bare), _) if trimmed.starts_with("https://") => bare.to_owned(),
                    (_, Some(bare)) if trimmed.starts_with("http://") => bare.to_owned(),
                    _ => trimmed,
                };
                let valid = trimmed.split_once("://").is_some_and(|(scheme, rest)| {
                    matches!(scheme, "http" | "https")
                        && !rest.is_empty()
                        && !rest.contains(['/', '?', '#', ' '])
                });
                if valid && HeaderValue::from_str(&trimmed).is_ok() {
                    Ok(trimmed)
                } else {
                    Err(ServerError::Config(format!(
                        "--cors-origin {origin:?}: expected an origin such as \
                         https://app.example or http://localhost:3000 (scheme, host, port; no path)"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(key) = &api_key {
            if key.trim().is_empty() {
                return Err(ServerError::Config(
                    "--api-key: the key is empty; give a secret, or leave the option out".into(),
                ));
            }
            // A client sends it in a header, trimmed: only visible ASCII can ever match.
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ServerError::Config(
                    "--api-key: the key must be visible ASCII characters, without spaces".into(),
                ));
            }
        }
        Ok(Self {
            api_key,
            origins,
            loopback,
        })
    }

    /// tower-http's CORS answers for the allowed origins, if any are.
    pub fn cors(&self) -> Option<CorsLayer> {
        if self.origins.is_empty() {
            return None;
        }
        let origins: Vec<HeaderValue> = self
            .origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
                .expose_headers([header::RETRY_AFTER]),
        )
    }

    fn allows_origin(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if !self.loopback {
            return Ok(());
        }
        let Some(host) = headers.get(header::HOST) else {
            return Ok(()); // HTTP/1.0 without Host
        };
        let host = String::from_utf8_lossy(host.as_bytes());
        if names_this_machine(&host) {
            return Ok(());
        }
        Err(Refusal::forbidden(format!(
            "Host {host:?} does not name this machine: the server listens on a loopback \
             address and answers requests to localhost, 127.0.0.1 or [::1] only"
        )))
    }

    fn check_origin(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        let text = |name| {
            headers
                .get(name)
                .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let forbidden = |from: &str| {
            Err(Refusal::forbidden(format!(
                "a write from another origin ({from}) is refused; start the server with \
                 --cors-origin <origin> to allow a web page to call it"
            )))
        };
        // No page is served from here, so a browser write always comes from some other
        // page: even an `Origin` equal to `Host` is what a DNS-rebinding page sends.
        if let Some(origin) = text(header::ORIGIN) {
            let origin = origin.trim().to_ascii_lowercase();
            if self.allows_origin(&origin) {
                return Ok(());
            }
            return forbidden(&origin);
        }
        match text(header::HeaderName::from_static("sec-fetch-site")).as_deref() {
            Some(site @ ("cross-site" | "same-site")) => {
                forbidden(&format!("Sec-Fetch-Site: {site}"))
            }
            _ => Ok(()),
        }
    }

    fn check_key(&self, path: &str, headers: &HeaderMap) -> Result<bool, Refusal> {
        let Some(key) = &self.api_key else {
            return Ok(false);
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        if given.is_some_and(|token| same_secret(token.as_bytes(), key.as_bytes())) {
            return Ok(true);
        }
        if path == "/health" {
            return Ok(false);
        }
        let message = if given.is_some() {
            "the API key is wrong"
        } else {
            "this server needs an API key: send `Authorization: Bearer <key>`"
        };
        Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            code: "UNAUTHORIZED",
            message: message.into(),
        })
    }
}

/// A request the guard turns away.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn forbidden(message: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "FORBIDDEN",
            message,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = ApiError::new(self.status, self.code, self.message).into_response();
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Whether a `Host` header (with or without a port) names the loopback interface.
fn names_this_machine(host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host.as_str(), |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host.as_str()
            }
        })
    };
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: Host, then Origin, then the API key; the handler sees a [`Caller`].
pub async fn guard(
    State(access): State<Arc<Access>>,
    mut request: Request,
    next: Next,
) -> Response {
    let checked = access
        .check_host(request.headers())
        .and_then(|()| access.check_origin(request.method(), request.headers()))
        .and_then(|()| access.check_key(request.uri().path(), request.headers()));
    match checked {
        Ok(authenticated) => {
            request.extensions_mut().insert(Caller { authenticated });
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:8081",
            "127.0.0.1:8081",
            "127.1.2.3",
            "[::1]:8081",
            "app.localhost:3000",
        ] {
            assert!(names_this_machine(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8081",
            "10.0.0.1:8081",
            "[::2]:80",
            "",
        ] {
            assert!(!names_this_machine(host), "{host}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn origins_must_be_origins() {
        let ok = Access::new(None, &["https://App.Example/".into()], true).expect("an origin");
        assert!(ok.allows_origin("https://app.example"));
        let port = Access::new(None, &["https://app.example:443".into()], true).expect("an origin");
        assert!(port.allows_origin("https://app.example"));
        for bad in ["app.example", "https://app.example/path", "ftp://x", "*"] {
            Access::new(None, &[bad.into()], true).expect_err(bad);
        }
        Access::new(Some(" ".into()), &[], true).expect_err("an empty key");
        Access::new(Some("two words".into()), &[], true).expect_err("a space");
    }
}
