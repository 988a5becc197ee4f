//! HTTP answers of `volley serve`: the page (`index.html` at `/` for browsers, every file of
//! `crates/volley-cli/assets/` at `/assets/<name>`, embedded in the binary), `/healthz`, and
//! the plain-text answers shared by the other services.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The page served when `assets/` has no `index.html` (a build without the page).
const PLACEHOLDER: &str = include_str!("placeholder.html");

/// The response body of every HTTP service of `volley serve`.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// The Content-Security-Policy of the page and its files: its own scripts, styles and images
/// only, connections (WebSocket, SSE, Socket.IO polling) to its own origin only, no inline
/// code, no framing.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// A body of `bytes`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `405 Method Not Allowed` for what is not GET or HEAD.
pub(crate) fn only_get<B>(request: &Request<B>) -> Option<Response<Body>> {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    (response.headers_mut()).insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(response)
}

/// A path as shown in an answer: at most 200 characters.
pub(crate) fn shown(path: &str) -> String {
    let mut shown: String = path.chars().take(200).collect();
    if shown.len() < path.len() {
        shown.push('…');
    }
    shown
}

/// One embedded file.
struct Asset {
    bytes: Bytes,
    content_type: &'static str,
    etag: HeaderValue,
}

/// The page's files, embedded in the binary.
pub(crate) struct Assets {
    files: HashMap<&'static str, Asset>,
}

/// The content type of a file, by its extension.
pub(crate) fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// FNV-1a: a stable hash of a file's bytes for its ETag.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Assets {
    /// The files of `assets/`, and the placeholder page if it has no `index.html`.
    pub(crate) fn embedded() -> Self {
        let mut files = HashMap::new();
        let all = ASSETS.iter().map(|&(name, bytes)| (name, bytes));
        let placeholder = ("index.html", PLACEHOLDER.as_bytes());
        for (name, bytes) in std::iter::once(placeholder).chain(all) {
            let etag = format!("\"{:016x}\"", fnv1a(bytes));
            let asset = Asset {
                bytes: Bytes::from_static(bytes),
                content_type: content_type(name),
                etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            };
            files.insert(name, asset);
        }
        Self { files }
    }

    /// The names of the files.
    #[cfg(test)]
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.files.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The answer for file `name` to `request` (GET or HEAD): the file with its type, ETag and
    /// caching headers, 304 if the client has it, or 404.
    fn answer<B>(&self, name: &str, request: &Request<B>) -> Response<Body> {
        let Some(asset) = self.files.get(name) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("404 Not Found: no file {}", shown(name)),
            );
        };
        let cached = (request.headers().get_all(header::IF_NONE_MATCH).iter())
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim() == "*" || tag.trim().as_bytes() == asset.etag.as_bytes());
        let (status, body) = if cached {
            (StatusCode::NOT_MODIFIED, full(Bytes::new()))
        } else if request.method() == Method::HEAD {
            (StatusCode::OK, full(Bytes::new()))
        } else {
            (StatusCode::OK, full(asset.bytes.clone()))
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if request.method() == Method::HEAD && !cached {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.bytes.len()));
        }
        headers.insert(header::ETAG, asset.etag.clone());
        // Revalidated each time (the ETag makes that a 304): the files change with the binary.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    }
}

/// What the page service needs.
pub(crate) struct Page {
    pub(crate) assets: Assets,
    /// The plain-text answer at `/` for clients that do not ask for HTML.
    pub(crate) overview: String,
}

/// Whether a request asks for HTML (a browser navigating).
fn wants_html<B>(request: &Request<B>) -> bool {
    (request.headers().get_all(header::ACCEPT).iter())
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

impl Page {
    /// `GET /`: the page for browsers (`Accept: text/html`), else a short overview of the
    /// endpoints.
    pub(crate) fn root<B>(&self, request: &Request<B>) -> Response<Body> {
        if let Some(refused) = only_get(request) {
            return refused;
        }
        let mut response = if wants_html(request) {
            self.assets.answer("index.html", request)
        } else {
            text(StatusCode::OK, self.overview.clone())
        };
        (response.headers_mut()).insert(header::VARY, HeaderValue::from_static("Accept"));
        response
    }

    /// `GET /assets/<name>`.
    pub(crate) fn asset<B>(&self, request: &Request<B>) -> Response<Body> {
        if let Some(refused) = only_get(request) {
            return refused;
        }
        let path = request.uri().path();
        let name = path.strip_prefix("/assets/").unwrap_or("");
        self.assets.answer(name, request)
    }
}

/// `GET /healthz`.
pub(crate) fn healthz<B>(request: &Request<B>) -> Response<Body> {
    only_get(request).unwrap_or_else(|| text(StatusCode::OK, "ok"))
}

/// The answer to HTTP requests (not WebSocket upgrades) on paths no endpoint serves, where
/// every WebSocket path echoes.
pub(crate) fn not_found<B>(request: &Request<B>) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "404 Not Found: no page at {} (WebSocket clients get the echo on any path)",
            shown(request.uri().path())
        ),
    )
}

/// Wraps an answer function into what [`volley::Endpoint::service`] takes.
pub(crate) fn service<S, F>(
    state: Arc<S>,
    answer: F,
) -> impl Fn(Request<hyper::body::Incoming>) -> std::future::Ready<Response<Body>> + Send + Sync + 'static
where
    S: Send + Sync + 'static,
    F: Fn(&S, &Request<hyper::body::Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    move |request| std::future::ready(answer(&state, &request))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, accept: Option<&str>) -> Request<()> {
        let mut request = Request::get(path);
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        request.body(()).unwrap()
    }

    fn page() -> Page {
        Page {
            assets: Assets::embedded(),
            overview: "endpoints".into(),
        }
    }

    #[test]
    fn browsers_get_the_page_others_the_overview() {
        let page = page();
        let html = page.root(&get("/", Some("text/html,application/xhtml+xml")));
        assert_eq!(html.status(), StatusCode::OK);
        assert_eq!(
            html.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(html.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(html.headers()[header::VARY], "Accept");
        let plain = page.root(&get("/", None));
        assert_eq!(
            plain.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_revalidated_by_etag() {
        let page = page();
        for name in page.assets.names() {
            let response = page.asset(&get(&format!("/assets/{name}"), None));
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], content_type(name));
            assert_ne!(content_type(name), "application/octet-stream", "{name}");
            let etag = response.headers()[header::ETAG].clone();
            let mut again = get(&format!("/assets/{name}"), None);
            again.headers_mut().insert(header::IF_NONE_MATCH, etag);
            assert_eq!(page.asset(&again).status(), StatusCode::NOT_MODIFIED);
        }
        let missing = page.asset(&get("/assets/../Cargo.toml", None));
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let post = Request::post("/assets/index.html").body(()).unwrap();
        assert_eq!(page.asset(&post).status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
