//! # threadhost-actors
//!
//! The threadhost runtime: hosts long-lived AI-agent conversations ("threads") as supervised
//! actix actors, with the lifecycle of OpenAI Codex's app-server made race-free.
//!
//! - [`ThreadHost`] starts the runtime; [`ConnectionHandle`] is one client's view of it, and
//!   [`Outbox`] the stream of what that client receives.
//! - Each loaded thread is a `ThreadActor` that owns its agent ([`Agent`]), subscribers, status,
//!   idle clock and pending server requests. A `ThreadRegistry` serializes unload claims against
//!   attach/resume reservations. A `ConnectionActor` per client owns a bounded outbound queue.
//! - Threads survive unloads in a [`ThreadStore`]; [`MemoryStore`] is the in-memory one.
//! - [`ScriptedAgentFactory`] makes a deterministic agent that walks every lifecycle path.
//!
//! This crate does no I/O of its own: no sockets, no files. The `threadhost` crate adds the
//! JSON-RPC wire, the transports and the SQLite store.
//!
//! What is *not* guaranteed: a message in flight to a thread when it is torn down is answered
//! with an error, never silently applied; notifications to a connection that was cut off for
//! not reading are lost (the client resumes to catch up).

mod agent;
mod connection;
mod error;
mod host;
mod ids;
mod metrics;
mod model;
mod outbound;
mod registry;
mod scripted;
mod store;
mod supervision;
mod thread;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use agent::{
    Agent, AgentFactory, LocalBoxFuture, ModelInfo, RequestAnswer, RequestCancelled, TurnContext,
    TurnInput,
};
pub use connection::Outbox;
pub use error::{AgentError, HostError, StoreError};
pub use host::{ConnectionHandle, HostConfig, StartThread, ThreadHost};
pub use ids::{ClientRequestId, ConnectionId, RequestId, ThreadId};
pub use metrics::{CounterMetric, Gauge, Metrics};
pub use model::{
    preview_of, thread_response, unix_millis, unix_seconds, ActiveFlag, CommandExecutionStatus,
    Goal, GoalStatus, GoalUpdate, ThreadItem, ThreadMeta, ThreadSnapshot, ThreadStatus, TokenUsage,
    TokenUsageBreakdown, Turn, TurnError, TurnStatus, UserInput,
};
pub use outbound::{Notification, Outbound, ServerRequest, ThreadJson};
pub use registry::UnloadOutcome;
pub use scripted::{ScriptedAgent, ScriptedAgentFactory, ShutdownBehavior, SCRIPTED_MODEL};
pub use store::{
    page, settle_turns, ListQuery, MemoryStore, SortKey, StoreFuture, StoredThread, ThreadPage,
    ThreadStore, UsageRecord,
};
pub use thread::{UnsubscribeStatus, APPROVAL_METHOD, USER_INPUT_METHOD};
