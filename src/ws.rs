//! JSON-RPC over WebSocket (one message per text frame) at `/`, plus `GET /healthz` and
//! `GET /metrics` on the same port, with actix-web and actix-ws.
//!
//! Each connection has a reader task (feeds [`Session::receive`]) and a writer task (drains
//! [`Outgoing`]), both on the worker's arbiter. With a token configured, the upgrade needs
//! `Authorization: Bearer TOKEN`, else HTTP 401. A text frame over
//! [`crate::wire::MAX_MESSAGE_BYTES`] is answered with `message too large`
//! and the connection keeps working; a frame over [`FRAME_LIMIT`] cannot be skipped without
//! reading it, so the connection is closed with code 1009 (message too big).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use threadhost_actors::ThreadHost;

use crate::rpc::{Outgoing, ServerInfo, Session};
use crate::wire::{Frame, RpcError, MAX_MESSAGE_BYTES};

/// Largest frame (or message of continuation frames) read at all: four times the message
/// limit, so an oversized message up to this size gets an error and the connection lives on.
pub const FRAME_LIMIT: usize = 4 * MAX_MESSAGE_BYTES;

/// Longest close reason a close frame can carry (125 bytes of payload minus the code).
const CLOSE_REASON_MAX: usize = 123;

/// What the HTTP handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The runtime.
    pub host: ThreadHost,
    /// What `initialize` answers.
    pub info: Arc<ServerInfo>,
    /// Bearer token WebSocket clients must send, if any.
    pub token: Option<String>,
    /// True from startup until shutdown begins; `/healthz` reports it and new WebSocket
    /// connections are refused once it is false.
    pub ready: Arc<AtomicBool>,
}

/// Registers the routes on an actix-web `App`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(connect))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.ready.load(Ordering::Acquire) {
        HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("ok\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("shutting down\n")
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::server::metrics_text(&state.host))
}

/// Whether the request carries the configured bearer token (always true without one).
fn authorized(req: &HttpRequest, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if !authorized(&req, state.token.as_deref()) {
        return Ok(HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .content_type("text/plain; charset=utf-8")
            .body("missing or wrong bearer token: send Authorization: Bearer <token>\n"));
    }
    if !state.ready.load(Ordering::Acquire) {
        return Ok(HttpResponse::ServiceUnavailable().body("shutting down\n"));
    }
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(FRAME_LIMIT)
        .aggregate_continuations()
        .max_continuation_size(FRAME_LIMIT);
    let (session, outgoing) = Session::open(&state.host, Arc::clone(&state.info));
    actix_web::rt::spawn(write(outgoing, ws.clone()));
    actix_web::rt::spawn(read(session, stream, ws));
    Ok(response)
}

/// The connection's reader: frames in, until the client closes or the socket ends.
async fn read(session: Session, mut stream: AggregatedMessageStream, mut ws: actix_ws::Session) {
    loop {
        match stream.recv().await {
            Some(Ok(AggregatedMessage::Text(text))) => session.receive(&text).await,
            Some(Ok(AggregatedMessage::Binary(_))) => {
                let e = RpcError::invalid_request(
                    "binary frames are not supported; send each message as a text frame",
                );
                session.reject(e).await;
            }
            Some(Ok(AggregatedMessage::Ping(bytes))) => {
                if ws.pong(&bytes).await.is_err() {
                    break;
                }
            }
            Some(Ok(AggregatedMessage::Pong(_))) => {}
            Some(Ok(AggregatedMessage::Close(_))) | None => break,
            Some(Err(e)) => {
                tracing::info!(error = %e, "closing a WebSocket connection after a protocol error");
                let code = match e {
                    ProtocolError::Overflow => CloseCode::Size,
                    _ => CloseCode::Protocol,
                };
                session.close();
                let _ = ws.close(Some(close_reason(code, &e.to_string()))).await;
                return;
            }
        }
    }
    session.close();
}

/// How long one frame may wait for a client whose TCP window stays shut. Past it the client is
/// not reading: the writer gives up, which drops the connection's queue and cuts it off.
const WRITE_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

/// The connection's writer: the one place that writes frames. Every write is bounded.
async fn write(mut outgoing: Outgoing, mut ws: actix_ws::Session) {
    while let Some(frame) = outgoing.next().await {
        match frame {
            Frame::Text(text) => match tokio::time::timeout(WRITE_BOUND, ws.text(text)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        "a WebSocket client did not read for {WRITE_BOUND:?}; dropping it"
                    );
                    return;
                }
            },
            Frame::Close(reason) => {
                let _ = ws.close(Some(close_reason(CloseCode::Away, &reason))).await;
                return;
            }
        }
    }
    let _ = ws.close(Some(CloseCode::Normal.into())).await;
}

fn close_reason(code: CloseCode, reason: &str) -> CloseReason {
    let mut end = reason.len().min(CLOSE_REASON_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseReason {
        code,
        description: Some(reason[..end].to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_to_what_a_close_frame_holds_on_a_char_boundary() {
        let long = "é".repeat(100);
        let r = close_reason(CloseCode::Away, &long);
        let d = r.description.expect("a description");
        assert!(
            d.len() <= CLOSE_REASON_MAX && d.len() >= CLOSE_REASON_MAX - 1,
            "{}",
            d.len()
        );
    }

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
