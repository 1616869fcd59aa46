//! Domain types of a thread, shaped like Codex's app-server v2 types (`Thread`, `Turn`,
//! `ThreadItem`, `ThreadStatus`, `ThreadTokenUsage`, `ThreadGoal`) so the wire layer serializes
//! them as they are. They carry no behaviour beyond small constructors and derivations.

use serde::{Deserialize, Serialize};

use crate::ids::ThreadId;

/// Seconds since the Unix epoch, as Codex puts on the wire.
pub fn unix_seconds() -> i64 {
    unix_millis() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Why a thread is waiting while active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ActiveFlag {
    /// A command approval is pending.
    WaitingOnApproval,
    /// A user-input request is pending.
    WaitingOnUserInput,
}

/// A thread's status as clients see it (spec section 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum ThreadStatus {
    /// No actor: the thread is only in the store.
    NotLoaded,
    /// Loaded, nothing running, nothing pending.
    Idle,
    /// Loaded; the last turn failed with a system error. Cleared by the next turn start.
    SystemError,
    /// A turn is running or a server request is pending.
    #[serde(rename_all = "camelCase")]
    Active {
        /// What the thread waits on, approvals first.
        active_flags: Vec<ActiveFlag>,
    },
}

/// Terminal and non-terminal states of a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TurnStatus {
    /// The agent finished the turn.
    Completed,
    /// The turn was interrupted by a client, a close or a restart.
    Interrupted,
    /// The turn failed (model error, agent panic).
    Failed,
    /// The turn is running.
    InProgress,
}

impl TurnStatus {
    /// Stable lowercase name, used by the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Interrupted => "interrupted",
            Self::Failed => "failed",
            Self::InProgress => "inProgress",
        }
    }

    /// Inverse of [`TurnStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "completed" => Self::Completed,
            "interrupted" => Self::Interrupted,
            "failed" => Self::Failed,
            "inProgress" => Self::InProgress,
            _ => return None,
        })
    }
}

/// The error attached to a failed turn and carried by the `error` notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnError {
    /// Human-readable message.
    pub message: String,
    /// Extra detail, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_details: Option<String>,
}

impl TurnError {
    /// An error with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            additional_details: None,
        }
    }
}

/// One user input element. Only text is interpreted by the scripted agent; images are kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum UserInput {
    /// Plain text.
    Text {
        /// The text.
        text: String,
        /// UI spans within `text` (kept verbatim).
        #[serde(default)]
        text_elements: Vec<serde_json::Value>,
    },
    /// An image by URL.
    Image {
        /// The image URL.
        url: String,
    },
    /// An image on the client's disk.
    LocalImage {
        /// The path.
        path: String,
    },
}

impl UserInput {
    /// A text input.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            text_elements: Vec::new(),
        }
    }
}

/// Status of a command execution item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CommandExecutionStatus {
    /// Waiting for approval or running.
    InProgress,
    /// Ran to completion.
    Completed,
    /// Failed to run.
    Failed,
    /// The user declined it.
    Declined,
}

/// One unit of a turn (Codex's `ThreadItem`, the variants threadhost produces).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum ThreadItem {
    /// What the user sent.
    UserMessage {
        /// Item id.
        id: String,
        /// The inputs.
        content: Vec<UserInput>,
    },
    /// What the agent answered (streamed as deltas while in progress).
    AgentMessage {
        /// Item id.
        id: String,
        /// The text so far (complete in `item/completed`).
        text: String,
    },
    /// A command the agent ran or asked to run.
    #[serde(rename_all = "camelCase")]
    CommandExecution {
        /// Item id.
        id: String,
        /// The command line.
        command: String,
        /// Working directory.
        cwd: String,
        /// Its state.
        status: CommandExecutionStatus,
        /// Parsed actions (threadhost reports none).
        command_actions: Vec<serde_json::Value>,
        /// Output, once it ran.
        aggregated_output: Option<String>,
        /// Exit code, once it ran.
        exit_code: Option<i32>,
        /// Duration, once it ran.
        duration_ms: Option<i64>,
    },
}

impl ThreadItem {
    /// The item's id.
    pub fn id(&self) -> &str {
        match self {
            Self::UserMessage { id, .. }
            | Self::AgentMessage { id, .. }
            | Self::CommandExecution { id, .. } => id,
        }
    }
}

/// One turn: a user input and the agent's work on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Turn {
    /// Turn id (UUIDv7).
    pub id: String,
    /// Items in order.
    pub items: Vec<ThreadItem>,
    /// Where the turn is.
    pub status: TurnStatus,
    /// Why it failed, if it did.
    pub error: Option<TurnError>,
    /// Unix seconds when it started.
    pub started_at: Option<i64>,
    /// Unix seconds when it ended.
    pub completed_at: Option<i64>,
    /// How long it ran.
    pub duration_ms: Option<i64>,
}

impl Turn {
    /// A new in-progress turn.
    pub fn started(id: String) -> Self {
        Self {
            id,
            items: Vec::new(),
            status: TurnStatus::InProgress,
            error: None,
            started_at: Some(unix_seconds()),
            completed_at: None,
            duration_ms: None,
        }
    }

    /// The same turn without its items (for `excludeTurns`-style summaries and notifications).
    pub fn without_items(&self) -> Self {
        Self {
            items: Vec::new(),
            ..self.clone()
        }
    }
}

/// Token counts of one turn or of the whole thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsageBreakdown {
    /// Sum of the others' billable tokens.
    pub total_tokens: i64,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Prompt tokens served from cache.
    pub cached_input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_output_tokens: i64,
}

impl TokenUsageBreakdown {
    /// Field-wise sum.
    pub fn plus(self, o: Self) -> Self {
        Self {
            total_tokens: self.total_tokens + o.total_tokens,
            input_tokens: self.input_tokens + o.input_tokens,
            cached_input_tokens: self.cached_input_tokens + o.cached_input_tokens,
            output_tokens: self.output_tokens + o.output_tokens,
            reasoning_output_tokens: self.reasoning_output_tokens + o.reasoning_output_tokens,
        }
    }
}

/// A thread's token usage: the running total and the last turn's share (Codex's
/// `ThreadTokenUsage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// Since the thread started.
    pub total: TokenUsageBreakdown,
    /// Of the latest turn that reported usage.
    pub last: TokenUsageBreakdown,
    /// The model's context window, when known.
    pub model_context_window: Option<i64>,
}

/// Status of a goal (spec section 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GoalStatus {
    /// Being worked on.
    Active,
    /// Paused by the user.
    Paused,
    /// Blocked on something.
    Blocked,
    /// Hit a usage limit.
    UsageLimited,
    /// Hit its token budget.
    BudgetLimited,
    /// Done.
    Complete,
}

/// A thread's goal (Codex's `ThreadGoal`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Goal {
    /// The thread it belongs to.
    pub thread_id: ThreadId,
    /// What to achieve.
    pub objective: String,
    /// Where it is.
    pub status: GoalStatus,
    /// Optional token budget.
    pub token_budget: Option<i64>,
    /// Tokens used since the goal was set.
    pub tokens_used: i64,
    /// Seconds spent.
    pub time_used_seconds: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A requested change to a goal (`thread/goal/set`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoalUpdate {
    /// New objective; required to create a goal.
    pub objective: Option<String>,
    /// New status.
    pub status: Option<GoalStatus>,
    /// New budget.
    pub token_budget: Option<i64>,
}

/// The persisted, client-visible facts of a thread (everything but turns and status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadMeta {
    /// Thread id.
    pub id: ThreadId,
    /// The first user message, shortened.
    pub preview: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// Model (agent) the thread runs.
    pub model: String,
    /// Working directory.
    pub cwd: String,
    /// Whether raw events were requested at start (sticky, spec section 4).
    pub raw_events: bool,
    /// Not materialized in the store (Codex's `ephemeral`): nothing of the thread is saved, so
    /// it cannot be resumed once unloaded and is never listed. Not persisted itself.
    #[serde(default)]
    pub ephemeral: bool,
}

impl ThreadMeta {
    /// Metadata for a brand-new thread.
    pub fn new(id: ThreadId, model: String, cwd: String) -> Self {
        let now = unix_seconds();
        Self {
            id,
            preview: String::new(),
            created_at: now,
            updated_at: now,
            model,
            cwd,
            raw_events: false,
            ephemeral: false,
        }
    }
}

/// A thread as answered to clients: metadata, status and (optionally) turns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadSnapshot {
    /// Persisted facts.
    pub meta: ThreadMeta,
    /// Current status.
    pub status: ThreadStatus,
    /// Turns, oldest first (empty when excluded).
    pub turns: Vec<Turn>,
}

/// Shortens a user message into a thread preview.
pub fn preview_of(inputs: &[UserInput]) -> String {
    let text = inputs
        .iter()
        .find_map(|i| match i {
            UserInput::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .unwrap_or_default();
    text.chars().take(120).collect()
}

impl ThreadSnapshot {
    /// Renders the snapshot as Codex's `Thread` object (the wire shape of `thread/started`,
    /// `thread/start`, `thread/resume` and `thread/read`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.meta.id,
            "sessionId": self.meta.id,
            "projectId": null,
            "preview": self.meta.preview,
            "ephemeral": self.meta.ephemeral,
            "modelProvider": "threadhost",
            "model": self.meta.model,
            "createdAt": self.meta.created_at,
            "updatedAt": self.meta.updated_at,
            "status": self.status,
            "path": null,
            "cwd": self.meta.cwd,
            "cliVersion": env!("CARGO_PKG_VERSION"),
            "source": "appServer",
            "gitInfo": null,
            "name": null,
            "turns": self.turns,
        })
    }
}

/// The response of `thread/start` and `thread/resume` (Codex's `ThreadStartResponse` /
/// `ThreadResumeResponse`): the thread and the configuration it runs with. threadhost's agents
/// run no sandboxed commands and route approvals to the user.
pub fn thread_response(snapshot: &ThreadSnapshot) -> serde_json::Value {
    serde_json::json!({
        "thread": snapshot.to_json(),
        "model": snapshot.meta.model,
        "modelProvider": "threadhost",
        "cwd": snapshot.meta.cwd,
        "approvalPolicy": "on-request",
        "approvalsReviewer": "user",
        "sandbox": { "type": "readOnly", "networkAccess": false },
        "reasoningEffort": null,
        "serviceTier": null,
        "instructionSources": [],
    })
}
