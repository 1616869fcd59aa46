//! What the runtime delivers to a connection: notifications, server requests, responses that
//! must keep their place in the stream, and the reason a connection was cut off.
//!
//! Notifications serialize as `{"method": ..., "params": ...}` with Codex's method names and
//! field names, so the wire layer only adds the JSON-RPC envelope.

use std::sync::Arc;

use serde::Serialize;

use crate::error::HostError;
use crate::ids::{ClientRequestId, RequestId, ThreadId};
use crate::model::{Goal, ThreadItem, ThreadStatus, TokenUsage, Turn, TurnError};

/// The `Thread` object of notifications and responses, already rendered to JSON by the wire's
/// rules (see [`crate::ThreadSnapshot`]); kept opaque here so the actors do not depend on every
/// optional Codex field.
pub type ThreadJson = serde_json::Value;

/// A server-to-client notification (spec section 11).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "method", content = "params")]
#[non_exhaustive]
pub enum Notification {
    /// A thread was created (broadcast).
    #[serde(rename = "thread/started")]
    ThreadStarted {
        /// The new thread.
        thread: ThreadJson,
    },
    /// A thread's derived status changed (broadcast).
    #[serde(rename = "thread/status/changed", rename_all = "camelCase")]
    ThreadStatusChanged {
        /// Which thread.
        thread_id: ThreadId,
        /// Its new status.
        status: ThreadStatus,
    },
    /// A thread unloaded (broadcast, after `notLoaded`).
    #[serde(rename = "thread/closed", rename_all = "camelCase")]
    ThreadClosed {
        /// Which thread.
        thread_id: ThreadId,
    },
    /// A turn began.
    #[serde(rename = "turn/started", rename_all = "camelCase")]
    TurnStarted {
        /// Which thread.
        thread_id: ThreadId,
        /// The turn (without items).
        turn: Box<Turn>,
    },
    /// A turn ended; its items and usage are already durable.
    #[serde(rename = "turn/completed", rename_all = "camelCase")]
    TurnCompleted {
        /// Which thread.
        thread_id: ThreadId,
        /// The turn with its final status.
        turn: Box<Turn>,
    },
    /// An item began.
    #[serde(rename = "item/started", rename_all = "camelCase")]
    ItemStarted {
        /// Which thread.
        thread_id: ThreadId,
        /// Which turn.
        turn_id: Arc<str>,
        /// The item as it starts.
        item: Box<ThreadItem>,
        /// Unix milliseconds.
        started_at_ms: i64,
    },
    /// An item ended.
    #[serde(rename = "item/completed", rename_all = "camelCase")]
    ItemCompleted {
        /// Which thread.
        thread_id: ThreadId,
        /// Which turn.
        turn_id: Arc<str>,
        /// The final item.
        item: Box<ThreadItem>,
        /// Unix milliseconds.
        completed_at_ms: i64,
    },
    /// A piece of an agent message.
    #[serde(rename = "item/agentMessage/delta", rename_all = "camelCase")]
    AgentMessageDelta {
        /// Which thread.
        thread_id: ThreadId,
        /// Which turn.
        turn_id: Arc<str>,
        /// Which item.
        item_id: Arc<str>,
        /// The new text.
        delta: String,
    },
    /// A server request was answered or cleared.
    #[serde(rename = "serverRequest/resolved", rename_all = "camelCase")]
    ServerRequestResolved {
        /// Which thread.
        thread_id: ThreadId,
        /// The request's id.
        request_id: RequestId,
    },
    /// A goal was set or changed (broadcast).
    #[serde(rename = "thread/goal/updated", rename_all = "camelCase")]
    GoalUpdated {
        /// Which thread.
        thread_id: ThreadId,
        /// The turn that changed it; `null` for client changes and snapshots.
        turn_id: Option<String>,
        /// The goal.
        goal: Box<Goal>,
    },
    /// A goal was cleared (broadcast).
    #[serde(rename = "thread/goal/cleared", rename_all = "camelCase")]
    GoalCleared {
        /// Which thread.
        thread_id: ThreadId,
    },
    /// The thread's token usage changed.
    #[serde(rename = "thread/tokenUsage/updated", rename_all = "camelCase")]
    TokenUsageUpdated {
        /// Which thread.
        thread_id: ThreadId,
        /// The turn it belongs to.
        turn_id: Arc<str>,
        /// Totals and last turn.
        token_usage: Box<TokenUsage>,
    },
    /// A raw model response item (experimental in Codex); only for threads started with
    /// raw events on.
    #[serde(rename = "rawResponseItem/completed", rename_all = "camelCase")]
    RawResponseItemCompleted {
        /// Which thread.
        thread_id: ThreadId,
        /// Which turn.
        turn_id: Arc<str>,
        /// The item as the model produced it.
        item: serde_json::Value,
    },
    /// A turn hit an error.
    #[serde(rename = "error", rename_all = "camelCase")]
    Error {
        /// Which thread.
        thread_id: ThreadId,
        /// Which turn.
        turn_id: Arc<str>,
        /// What went wrong.
        error: TurnError,
        /// Whether the agent retries by itself.
        will_retry: bool,
    },
}

// A notification is allocated once per event (in an `Arc`, 16 bytes more) and usually freed by
// another OS thread (the connection's). glibc frees chunks of up to 128 bytes to lock-free fast
// bins; larger ones take the allocating thread's arena lock, which a thread emitting events then
// waits on. So the big payloads are boxed and the common variants stay small.
const _: () = assert!(std::mem::size_of::<Notification>() + 16 <= 120);

/// Every notification method, in the order of [`Notification::method_index`].
pub(crate) const METHODS: [&str; 14] = [
    "thread/started",
    "thread/status/changed",
    "thread/closed",
    "turn/started",
    "turn/completed",
    "item/started",
    "item/completed",
    "item/agentMessage/delta",
    "serverRequest/resolved",
    "thread/goal/updated",
    "thread/goal/cleared",
    "thread/tokenUsage/updated",
    "rawResponseItem/completed",
    "error",
];

impl Notification {
    /// The JSON-RPC method name, used for per-connection opt-outs.
    pub fn method(&self) -> &'static str {
        METHODS[self.method_index()]
    }

    /// The method's place in [`METHODS`]: opt-outs are kept as a bit mask of these.
    pub(crate) fn method_index(&self) -> usize {
        match self {
            Self::ThreadStarted { .. } => 0,
            Self::ThreadStatusChanged { .. } => 1,
            Self::ThreadClosed { .. } => 2,
            Self::TurnStarted { .. } => 3,
            Self::TurnCompleted { .. } => 4,
            Self::ItemStarted { .. } => 5,
            Self::ItemCompleted { .. } => 6,
            Self::AgentMessageDelta { .. } => 7,
            Self::ServerRequestResolved { .. } => 8,
            Self::GoalUpdated { .. } => 9,
            Self::GoalCleared { .. } => 10,
            Self::TokenUsageUpdated { .. } => 11,
            Self::RawResponseItemCompleted { .. } => 12,
            Self::Error { .. } => 13,
        }
    }
}

/// A request from the server to a client (approval, user input). Params are the agent's, kept
/// verbatim so a replay after resume is byte-for-byte the original.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServerRequest {
    /// Host-wide id.
    pub id: RequestId,
    /// Method, e.g. `item/commandExecution/requestApproval`.
    pub method: String,
    /// Params as the agent built them.
    pub params: serde_json::Value,
}

/// One message for a connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Outbound {
    /// A notification.
    Notification(Arc<Notification>),
    /// A server request the client must answer with [`crate::ConnectionHandle::answer`].
    Request(Arc<ServerRequest>),
    /// The response to a client request whose answer must keep its place among the events
    /// (it was made with a [`ClientRequestId`]).
    Response {
        /// The client's id.
        id: ClientRequestId,
        /// The result, already in its wire shape, or the error.
        result: Result<serde_json::Value, HostError>,
    },
    /// The connection was cut off; nothing follows.
    Disconnected {
        /// Why, in words for the client.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GoalStatus;

    /// One notification of every method, in the order of [`METHODS`].
    fn one_of_each() -> Vec<Notification> {
        let thread_id = ThreadId::from("t");
        let turn_id: Arc<str> = Arc::from("u");
        let item = ThreadItem::AgentMessage {
            id: "i".into(),
            text: String::new(),
        };
        let goal = Goal {
            thread_id: thread_id.clone(),
            objective: "o".into(),
            status: GoalStatus::Active,
            token_budget: None,
            tokens_used: 0,
            time_used_seconds: 0,
            created_at: 0,
            updated_at: 0,
        };
        vec![
            Notification::ThreadStarted {
                thread: serde_json::json!({}),
            },
            Notification::ThreadStatusChanged {
                thread_id: thread_id.clone(),
                status: ThreadStatus::Idle,
            },
            Notification::ThreadClosed {
                thread_id: thread_id.clone(),
            },
            Notification::TurnStarted {
                thread_id: thread_id.clone(),
                turn: Box::new(Turn::started("u".into())),
            },
            Notification::TurnCompleted {
                thread_id: thread_id.clone(),
                turn: Box::new(Turn::started("u".into())),
            },
            Notification::ItemStarted {
                thread_id: thread_id.clone(),
                turn_id: Arc::clone(&turn_id),
                item: Box::new(item.clone()),
                started_at_ms: 0,
            },
            Notification::ItemCompleted {
                thread_id: thread_id.clone(),
                turn_id: Arc::clone(&turn_id),
                item: Box::new(item),
                completed_at_ms: 0,
            },
            Notification::AgentMessageDelta {
                thread_id: thread_id.clone(),
                turn_id: Arc::clone(&turn_id),
                item_id: Arc::from("i"),
                delta: "d".into(),
            },
            Notification::ServerRequestResolved {
                thread_id: thread_id.clone(),
                request_id: RequestId(1),
            },
            Notification::GoalUpdated {
                thread_id: thread_id.clone(),
                turn_id: None,
                goal: Box::new(goal),
            },
            Notification::GoalCleared {
                thread_id: thread_id.clone(),
            },
            Notification::TokenUsageUpdated {
                thread_id: thread_id.clone(),
                turn_id: Arc::clone(&turn_id),
                token_usage: Box::default(),
            },
            Notification::RawResponseItemCompleted {
                thread_id: thread_id.clone(),
                turn_id: Arc::clone(&turn_id),
                item: serde_json::json!({}),
            },
            Notification::Error {
                thread_id,
                turn_id,
                error: TurnError::new("e"),
                will_retry: false,
            },
        ]
    }

    #[test]
    fn the_method_table_names_what_each_notification_serializes_as() {
        let all = one_of_each();
        assert_eq!(all.len(), METHODS.len(), "one of each method");
        for (i, n) in all.iter().enumerate() {
            let wire = serde_json::to_value(n).unwrap();
            assert_eq!(wire["method"], n.method(), "{n:?}");
            assert_eq!(n.method_index(), i, "{n:?}");
        }
    }
}
