//! # threadhost
//!
//! The host around the [`threadhost_actors`] runtime: the JSON-RPC wire of OpenAI Codex's
//! app-server ([`wire`]), the per-connection dispatcher ([`rpc`]), the stdio and WebSocket
//! transports ([`stdio`], [`ws`]) and the server's startup and shutdown ([`server`]).
//! Only this crate knows JSON-RPC, sockets and disks.

pub mod rpc;
pub mod server;
pub mod stdio;
pub mod wire;
pub mod ws;
