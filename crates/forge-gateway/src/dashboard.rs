//! The operators' dashboard, served at `gateway.dashboard_path` when `gateway.dashboard` is on.
//!
//! The page is built from `packages/dashboard` (Svelte on `@forge/client`) into
//! `crates/forge-gateway/dashboard/`, committed, and compiled into this crate, so a node
//! serves it with nothing to deploy beside the binary (`./dev test` fails when the committed
//! build is stale). The files are public, as any page's scripts are: they hold no data. What
//! the dashboard shows comes from the runs API's admin calls, which answer only the admin
//! role (`auth.admin_role`), and the page shows nothing but a sign-in form until one has.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../dashboard/index.html"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../dashboard/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../dashboard/dashboard.css"),
    },
];

/// Scripts and styles from the dashboard's own origin only, calls to it only, and no framing:
/// an injected script or a clickjacking frame gets nothing from an admin's session. Styles
/// allow inline `style` attributes (Svelte sets bar heights with them); scripts do not.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The dashboard's routes under `path` (which starts and ends with `/`). Any path under it
/// that is not one of the files answers the page, whose routes are in the fragment.
pub(crate) fn routes(path: &str) -> Router {
    let bare = path.trim_end_matches('/').to_owned();
    let index = path.to_owned();
    Router::new()
        .route(
            &bare,
            get(move || {
                let to = index.clone();
                async move { Redirect::permanent(&to) }
            }),
        )
        .route(path, get(|headers: HeaderMap| async move { serve("", &headers) }))
        .route(
            &format!("{path}{{*file}}"),
            get(
                |axum::extract::Path(file): axum::extract::Path<String>, headers: HeaderMap| async move {
                    serve(&file, &headers)
                },
            ),
        )
}

fn serve(file: &str, headers: &HeaderMap) -> Response {
    let i = ASSETS.iter().position(|a| a.name == file).unwrap_or(0);
    let asset = &ASSETS[i];
    // Fixed file names, so no long caching: a browser revalidates and gets 304 until the
    // node runs another build.
    let etag = &ETAGS[i];
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, common(etag)).into_response();
    }
    let mut h = common(etag);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (h, asset.body).into_response()
}

fn common(etag: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h
}

/// Each asset's ETag, in [`ASSETS`]' order: hashed once, on the first request, not on each.
static ETAGS: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| ASSETS.iter().map(|a| etag(a.body)).collect());

/// A strong validator of the build: FNV-1a of the file (the bytes are the only input).
fn etag(body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}
