//! threadhost: hosts long-lived AI-agent threads as supervised actix actors behind a Codex
//! app-server compatible JSON-RPC server. The runtime (thread, registry and connection actors)
//! lives in the `threadhost-actors` crate; this crate holds what touches the outside world:
//! the disk, the wire and the command line.
//!
//! - [`store`]: the embedded SQLite [`threadhost_actors::ThreadStore`].

pub mod store;
