//! Errors the runtime returns to callers. The wire layer maps each kind to a JSON-RPC code in
//! one place (`src/`); messages are lowercase and say what to do.

use crate::ids::{RequestId, ThreadId};

/// Everything a [`crate::ThreadHost`] or [`crate::ConnectionHandle`] call can fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The thread is neither loaded nor in the store.
    #[error("thread not found: {0}")]
    ThreadNotFound(ThreadId),
    /// The thread is not loaded (for calls that need a loaded thread).
    #[error("thread not loaded: {0}")]
    ThreadNotLoaded(ThreadId),
    /// Cold resume of a thread that never completed a turn.
    #[error("no rollout found for thread id {0}")]
    NoRollout(ThreadId),
    /// A resume that waited for a teardown longer than its bound.
    #[error("thread {0} is closing; retry thread/resume after the thread is closed")]
    ClosingResume(ThreadId),
    /// A turn or goal request reached a thread whose teardown is in flight.
    #[error("thread {0} is closing; retry after the thread is closed")]
    Closing(ThreadId),
    /// `turn/start` while a turn is already running.
    #[error("thread {0} already has a turn in progress; interrupt it or wait for turn/completed")]
    TurnInProgress(ThreadId),
    /// `turn/interrupt` for a turn that is not running.
    #[error("no active turn {turn_id} on thread {thread_id}")]
    NoActiveTurn {
        /// The thread.
        thread_id: ThreadId,
        /// The turn the client named.
        turn_id: String,
    },
    /// `thread/goal/set` without an objective when no goal exists.
    #[error("cannot update goal for thread {0}: no goal exists")]
    NoGoal(ThreadId),
    /// The client sent something the runtime cannot accept (the message says which field).
    #[error("{0}")]
    InvalidParams(String),
    /// The thread's actor failed while handling the call; it was restarted.
    #[error("thread {0} failed while handling the request and was restarted; retry the request")]
    ThreadRestarted(ThreadId),
    /// The thread's actor is gone (a bug or a crash beyond the restart bound).
    #[error("thread {0} is unavailable; resume it to load it again")]
    ThreadUnavailable(ThreadId),
    /// The store failed.
    #[error("store error: {0}")]
    Store(String),
    /// The agent refused the request.
    #[error("agent error: {0}")]
    Agent(String),
    /// The connection was closed.
    #[error("connection closed")]
    ConnectionClosed,
    /// An answer to a server request that is not pending for this connection.
    #[error("server request {0} is not pending for this connection")]
    UnknownServerRequest(RequestId),
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// A bounded wait ran out.
    #[error("timed out after {0:?} waiting for {1}; retry the request")]
    Timeout(std::time::Duration, &'static str),
}

impl HostError {
    /// Whether the error is the caller's fault (invalid request) rather than the server's.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            Self::Store(_)
                | Self::Agent(_)
                | Self::ThreadRestarted(_)
                | Self::ThreadUnavailable(_)
                | Self::Timeout(..)
                | Self::ShuttingDown
                | Self::ConnectionClosed
        )
    }
}

/// Errors of a [`crate::ThreadStore`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be written or read (I/O, full disk, read-only directory, corruption).
    #[error("{0}")]
    Io(String),
    /// The store is closed.
    #[error("store is closed")]
    Closed,
    /// The query cannot be answered as asked (a cursor from another sort, an unsupported
    /// sort): the caller's mistake, not the store's.
    #[error("{0}")]
    InvalidQuery(String),
}

impl From<StoreError> for HostError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidQuery(msg) => Self::InvalidParams(msg),
            other => Self::Store(other.to_string()),
        }
    }
}

/// Errors an [`crate::Agent`] reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The agent refused the operation (e.g. the shutdown submission failed).
    #[error("agent refused: {0}")]
    Refused(String),
}
