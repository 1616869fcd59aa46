//! Integration tests: the real `threadhost` binary, driven over real stdio pipes and real
//! WebSocket connections on 127.0.0.1:0. Every message a test receives is checked against the
//! JSON Schemas Codex publishes (`../shared/codex-schema`), see `support`.

mod support;

/// Bad input of every kind gets the right error and the connection keeps working.
mod bad_input;
/// The command line: help, version, argument errors.
mod cli;
/// `initialize`, `Not initialized`, opt-outs, id kinds.
mod handshake;
/// `/healthz`, `/metrics`, bearer tokens.
mod http;
/// Unsubscribe and idle unload, resume and its replays, answers to server requests.
mod lifecycle;
/// Each client method and its response.
mod methods;
/// Broadcasts versus thread-scoped events across connections.
mod routing;
/// SIGTERM and the end of stdin.
mod shutdown;
/// Replays of the real Codex TUI's sessions, and the client-support methods it calls.
mod tui;
