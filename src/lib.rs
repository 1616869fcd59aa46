//! threadhost: hosts long-lived AI-agent threads as supervised actix actors behind a Codex
//! app-server compatible JSON-RPC server. The runtime (thread, registry and connection actors)
//! lives in the `threadhost-actors` crate; this crate holds what touches the outside world:
//! the disk, the wire and the command line.
//!
//! - [`store`]: the embedded SQLite [`threadhost_actors::ThreadStore`].
//! - [`wire`]: the JSON-RPC envelope, error codes and outbound serialization.
//! - [`rpc`]: the per-connection dispatcher, independent of the transport.
//! - [`bootstrap`]: the client-support methods Codex clients call around the lifecycle
//!   (`model/list`, `config/read`, `thread/turns/list`, ...).
//! - [`stdio`], [`ws`]: the transports.
//! - [`tour`]: `threadhost tour`, a narrated walk through the lifecycle.
//! - [`server`]: configuration, startup, signals and shutdown of `threadhost serve`.

pub mod bootstrap;
pub mod rpc;
pub mod server;
pub mod stdio;
pub mod store;
pub mod tour;
pub mod wire;
pub mod ws;

/// The README's Rust examples, compiled as doc tests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
