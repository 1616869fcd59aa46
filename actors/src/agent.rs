//! The `Agent` trait: what a thread actor needs from the agent runtime of one thread.
//!
//! A thread actor owns exactly one agent. It asks the agent to run a turn and receives the
//! turn's events through a [`TurnContext`]; the turn's future is run on the thread's arbiter as a
//! task of its own, so a panic in the agent can never take the actor down with it (the actor sees
//! the panic as the turn's outcome and restarts the thread, spec section 7).
//!
//! Dropping a turn's future interrupts the turn: agents must not rely on running to completion.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::AgentError;
use crate::ids::ThreadId;
use crate::model::{ThreadItem, TokenUsageBreakdown, TurnError, UserInput};
use crate::thread::{AgentEventKind, TurnEvent, TurnSender};

/// A boxed future that stays on the thread's arbiter (agents need not be `Send`).
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// What the agent is asked to work on.
#[derive(Clone, Debug)]
pub struct TurnInput {
    /// The thread.
    pub thread_id: ThreadId,
    /// The new turn's id.
    pub turn_id: String,
    /// What the user sent.
    pub input: Vec<UserInput>,
    /// The thread's working directory.
    pub cwd: String,
}

/// The agent runtime of one thread.
pub trait Agent: 'static {
    /// Runs one turn. The returned future ends when the turn ends: `Ok` for a completed turn,
    /// `Err` for a failed one. It is dropped when the turn is interrupted. A panic, here or in
    /// the future, fails the turn and restarts the thread.
    fn run_turn(
        &mut self,
        input: TurnInput,
        ctx: TurnContext,
    ) -> LocalBoxFuture<'static, Result<(), TurnError>>;

    /// Whether the agent still runs work of its own outside any turn (background tasks). The
    /// idle clock treats that as activity when its target passes (spec section 5).
    fn has_running_work(&self) -> bool {
        false
    }

    /// Starts the agent's shutdown. `Err` means the shutdown could not even be submitted; the
    /// returned future completes when the agent has released everything. The thread actor
    /// bounds the wait by the shutdown timeout.
    fn shutdown(&mut self) -> Result<LocalBoxFuture<'static, ()>, AgentError>;
}

/// One model the host can run, for `model/list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// Model id (what `thread/start {model}` names).
    pub id: String,
    /// Name to show.
    pub display_name: String,
    /// One line on what it does.
    pub description: String,
    /// Whether this is the default model.
    pub is_default: bool,
}

/// Makes agents. One factory per host; called on the thread's arbiter whenever a thread loads or
/// restarts.
pub trait AgentFactory: Send + Sync + 'static {
    /// The models this factory can run; the first default one is used when a client names none.
    fn models(&self) -> Vec<ModelInfo>;

    /// Creates the agent of one thread.
    fn create(&self, thread_id: &ThreadId, model: &str) -> Result<Box<dyn Agent>, AgentError>;

    /// The default model's id.
    fn default_model(&self) -> String {
        let models = self.models();
        models
            .iter()
            .find(|m| m.is_default)
            .or(models.first())
            .map(|m| m.id.clone())
            .unwrap_or_default()
    }
}

/// The agent's side of a running turn. Every call puts an event on the turn's own channel,
/// which the thread actor drains in order (spec section 4: events keep the order the agent
/// emitted them in); a call after the turn ended is dropped. Cheap to clone and `Send`, so an
/// agent may hand it to tasks of its own.
#[derive(Clone, Debug)]
pub struct TurnContext {
    tx: TurnSender,
    turn_id: Arc<str>,
}

/// The answer a client gave to a server request.
pub type RequestAnswer = serde_json::Value;

/// A server request ended without an answer (turn interrupted, thread unloaded or restarted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the server request was cancelled before it was answered")]
pub struct RequestCancelled;

impl TurnContext {
    /// A context whose events go to `tx`.
    pub(crate) fn new(turn_id: Arc<str>, tx: TurnSender) -> Self {
        Self { tx, turn_id }
    }

    /// The turn's id.
    pub fn turn_id(&self) -> &str {
        &self.turn_id
    }

    fn emit(&self, kind: AgentEventKind) {
        // Dropped if the turn already ended: the event is stale.
        self.tx.send(TurnEvent::Agent(kind));
    }

    /// An item began (`item/started`).
    pub fn item_started(&self, item: ThreadItem) {
        self.emit(AgentEventKind::ItemStarted(Box::new(item)));
    }

    /// Streams text into an agent-message item (`item/agentMessage/delta`). Takes the delta by
    /// value when the agent owns it (a model stream's chunk usually is a `String`), so it is
    /// moved into the notification rather than copied; `&str` works too.
    pub fn agent_message_delta(&self, item_id: &str, delta: impl Into<String>) {
        self.tx.send_delta(item_id, delta.into());
    }

    /// An item ended (`item/completed`); the final item is what is stored.
    pub fn item_completed(&self, item: ThreadItem) {
        self.emit(AgentEventKind::ItemCompleted(Box::new(item)));
    }

    /// The turn used tokens (`thread/tokenUsage/updated`).
    pub fn token_usage(&self, last: TokenUsageBreakdown, model_context_window: Option<i64>) {
        self.emit(AgentEventKind::TokenUsage {
            last,
            model_context_window,
        });
    }

    /// A raw model response item. Forwarded (as `rawResponseItem/completed`) only if the
    /// thread was started with raw events on; never stored.
    pub fn raw_response_item(&self, item: serde_json::Value) {
        self.emit(AgentEventKind::RawItem(item));
    }

    /// Sends a server request to the thread's subscribers and waits for the first answer.
    /// `method` is the JSON-RPC method; `params` are sent (and replayed after a resume) as they
    /// are. Approvals must use `item/commandExecution/requestApproval` and user-input requests
    /// `item/tool/requestUserInput`, which set the thread's active flags.
    pub async fn request(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<RequestAnswer, RequestCancelled> {
        let (tx, rx) = oneshot::channel();
        self.emit(AgentEventKind::Request {
            method: method.to_owned(),
            params,
            answer: tx,
        });
        rx.await.map_err(|_| RequestCancelled)
    }
}
