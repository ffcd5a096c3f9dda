//! The status page at `/`: plain HTML, JS and CSS from `page/`, embedded in the binary with
//! `include_str!` (no CDN, no build step). The script polls `/api/locks`, `/api/sessions`
//! and `/metrics` every second and draws the hold- and wait-time histograms on a canvas.
//! When the API answers 401 (a broker whose API needs a token, `auth.rs`) it asks for an
//! admin token, keeps it in the tab's session storage and sends it as a bearer token.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/status.js");
const STYLE: &str = include_str!("page/status.css");

/// The page runs only its own script and may not be framed (its token form could be
/// overlaid by another site's page).
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(super) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        INDEX,
    )
}

pub(super) async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

pub(super) async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
