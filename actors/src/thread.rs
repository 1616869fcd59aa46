//! `ThreadActor`: one per loaded thread.
//!
//! **Role.** Owns everything about one loaded thread: its agent, subscribers, listener
//! generation, turn tracker, pending server requests, goal, token usage, status facts and idle
//! clock. Connections, the registry and the host talk to it only through its mailbox, which
//! orders commands and resume responses; the running turn's agent talks to it through the
//! turn's event channel. One task processes both, one item at a time: nothing is locked.
//!
//! **Messages.** Client commands ([`Resume`], [`Unsubscribe`], [`Read`], [`StartTurn`],
//! [`Interrupt`], [`AnswerRequest`], [`SetGoal`], [`GetGoal`], [`ClearGoal`], [`Close`]) and
//! bookkeeping ([`ConnectionClosed`]). The agent's events arrive on a channel of the turn's own
//! ([`TurnEvent`]), drained as a stream of the actor's context.
//! Handlers are synchronous; the two waits that must hold the mailbox (the registry's answer to
//! an unload claim, and the store write that makes a turn durable before `turn/completed`) use
//! `ctx.wait`, bounded.
//!
//! **Lifecycle.** Created by the host on an arbiter chosen by thread id (a new thread, or a
//! cold load from the store). The idle clock (spec section 5) arms one timer at the current
//! target; when it fires the actor re-checks its generation and target and asks the registry
//! to claim the unload. The teardown (section 6) ends in one of three outcomes; only `Complete`
//! stops the actor. A panic in a handler or in the agent restarts the thread in place
//! (section 7): subscribers, history, goal and usage are kept; the turn in flight fails; the
//! agent is rebuilt; the generation moves on so stale timers do nothing, and the failed turn's
//! event stream is dropped so its late events reach nobody.
//!
//! **Guarantees.** Subscribers see thread events in the order the actor processed them. A warm
//! resume's response, usage, goal snapshot and request replays reach the resuming connection
//! before any later live event. A turn's items and usage are stored before `turn/completed` is
//! sent. Callers in flight when the actor restarts get [`HostError::ThreadRestarted`]; if the
//! actor ever dies outside a guard, callers get a mailbox error and the registry closes the
//! thread.

mod clock;
mod events;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::agent::{Agent, TurnContext, TurnInput};
use crate::connection::ConnRef;
use crate::error::HostError;
use crate::host::Shared;
use crate::ids::{ClientRequestId, ConnectionId, RequestId, ThreadId};
use crate::metrics::GuardExt;
use crate::model::{
    preview_of, unix_millis, unix_seconds, Goal, GoalUpdate, ThreadItem, ThreadMeta,
    ThreadSnapshot, ThreadStatus, TokenUsage, TokenUsageBreakdown, Turn, TurnError, TurnStatus,
    UserInput,
};
use crate::outbound::{Notification, Outbound, ServerRequest};
use crate::registry::{Claim, ClaimUnload, CloseWaiter, EndTeardown, ThreadGone, UnloadOutcome};
use crate::store::{settle_turns, StoredThread, UsageRecord};
use crate::supervision::{panic_message, CatchUnwind, RestartWindow};

use clock::IdleClock;
use events::turn_queue;
pub(crate) use events::TurnSender;
use status::StatusFacts;

/// Method of a command-approval server request; it sets `waitingOnApproval`.
pub const APPROVAL_METHOD: &str = "item/commandExecution/requestApproval";
/// Method of a user-input server request; it sets `waitingOnUserInput`.
pub const USER_INPUT_METHOD: &str = "item/tool/requestUserInput";

/// What `thread/unsubscribe` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, MessageResponse)]
#[serde(rename_all = "camelCase")]
pub enum UnsubscribeStatus {
    /// The connection was subscribed and is not any more.
    Unsubscribed,
    /// The connection was not subscribed.
    NotSubscribed,
    /// The thread is not loaded.
    NotLoaded,
}

/// Where an in-stream response goes: the requesting connection and the client's request id.
#[derive(Debug, Clone)]
pub(crate) struct ReplyTo {
    pub(crate) id: ClientRequestId,
    pub(crate) conn: ConnRef,
}

impl ReplyTo {
    fn send(self, result: serde_json::Value) {
        self.conn.deliver(Outbound::Response {
            id: self.id,
            result: Ok(result),
        });
    }
}

/// The turn in flight.
#[derive(Debug)]
struct ActiveTurn {
    /// The turn as it stands: completed items so far.
    turn: Turn,
    /// `turn.id`, shared by every notification of the turn.
    id: Arc<str>,
    /// Items started but not completed (agent messages accumulate their deltas here).
    open: Vec<ThreadItem>,
    /// The agent's task; aborting it interrupts the turn.
    task: tokio::task::JoinHandle<()>,
    /// Which `TurnEvents` stream is this turn's: events of any other are stale.
    stream: u64,
    /// That stream in the actor's context; cancelled when the turn ends.
    events: SpawnHandle,
}

/// A server request waiting for its first answer.
#[derive(Debug)]
struct Pending {
    request: Arc<ServerRequest>,
    /// Wakes the agent with the answer. Dropping it cancels the request.
    answer: oneshot::Sender<serde_json::Value>,
    /// Connections that were sent the request (live or replayed); only they may answer.
    sent_to: HashSet<ConnectionId>,
}

pub(crate) struct ThreadActor {
    /// Host-wide state: configuration, store, agents, directory, connections, metrics.
    shared: Arc<Shared>,
    /// The thread's persisted facts (id, preview, model, cwd, times).
    meta: ThreadMeta,
    /// The agent runtime; rebuilt on restart.
    agent: Box<dyn Agent>,
    /// Connections subscribed to thread events.
    subscribers: HashMap<ConnectionId, ConnRef>,
    /// Listener generation: moves on at every restart. Timers carry the generation they were
    /// made in and do nothing when it is stale (agent events carry their turn's stream id).
    generation: u64,
    /// Completed turns, oldest first (what the store has).
    history: Vec<Turn>,
    /// The turn in flight, if any. Boxed, like the other fields that most idle threads do not
    /// use, to keep the actor small: a million idle threads must fit in 2 GiB.
    active: Option<Box<ActiveTurn>>,
    /// Pending server requests, in id order (the replay order).
    pending: BTreeMap<RequestId, Pending>,
    /// The last turn failed with a system error; cleared by the next turn start.
    system_error: bool,
    /// Token usage as of the latest turn that reported any (boxed: see `active`).
    usage: Option<Box<UsageRecord>>,
    /// The thread's goal (boxed: see `active`).
    goal: Option<Box<Goal>>,
    /// The status last broadcast, to emit `thread/status/changed` only on real changes.
    status: ThreadStatus,
    /// Idle clock (spec section 5).
    clock: IdleClock,
    /// The armed idle timer: its handle, its deadline and its sequence number.
    timer: Option<(SpawnHandle, Instant, u64)>,
    /// Sequence number of the last armed timer, so a cancelled timer that still fires is
    /// recognized (actix issue 284).
    timer_seq: u64,
    /// A teardown is in flight; holds the explicit `thread/close` callers waiting for it.
    closing: Option<Vec<oneshot::Sender<Result<(), HostError>>>>,
    /// Recent restarts, for the restart bound.
    restarts: RestartWindow,
    /// Set when the actor stops after a completed teardown; otherwise its drop reports a death.
    finished: bool,
    /// Sends the first snapshot to whoever created the thread (start or cold load).
    on_started: Option<oneshot::Sender<ThreadSnapshot>>,
    /// The first subscriber and its in-stream reply (`thread/start`); taken when started
    /// (boxed: see `active`).
    creator: Option<Box<(ConnectionId, ConnRef, Option<ClientRequestId>)>>,
    /// Loaded from the store (a cold resume): broadcast `idle` when started.
    cold: bool,
}

impl std::fmt::Debug for ThreadActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadActor")
            .field("id", &self.meta.id)
            .field("generation", &self.generation)
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

/// How to build a thread actor.
pub(crate) struct ThreadInit {
    pub(crate) shared: Arc<Shared>,
    pub(crate) meta: ThreadMeta,
    pub(crate) stored: Option<StoredThread>,
    pub(crate) creator: Option<(ConnectionId, ConnRef, Option<ClientRequestId>)>,
    pub(crate) on_started: oneshot::Sender<ThreadSnapshot>,
}

impl ThreadActor {
    /// Builds the actor; runs on the thread's arbiter, where the agent is created.
    pub(crate) fn new(init: ThreadInit) -> Self {
        let ThreadInit {
            shared,
            meta,
            stored,
            creator,
            on_started,
        } = init;
        let agent = crate::host::make_agent(&shared, &meta);
        let cold = stored.is_some();
        let (history, usage, goal) = match stored {
            Some(s) => {
                let mut turns = s.turns;
                settle_turns(&mut turns);
                (turns, s.usage.map(Box::new), s.goal.map(Box::new))
            }
            None => (Vec::new(), None, None),
        };
        let now = Instant::now();
        Self {
            clock: IdleClock::new(creator.is_some(), false, now),
            shared,
            meta,
            agent,
            subscribers: HashMap::new(),
            generation: 0,
            history,
            active: None,
            pending: BTreeMap::new(),
            system_error: false,
            usage,
            goal,
            status: if cold {
                ThreadStatus::NotLoaded
            } else {
                ThreadStatus::Idle
            },
            timer: None,
            timer_seq: 0,
            closing: None,
            restarts: RestartWindow::new(),
            finished: false,
            on_started: Some(on_started),
            creator: creator.map(Box::new),
            cold,
        }
    }

    fn id(&self) -> &ThreadId {
        &self.meta.id
    }

    // ---- facts, status and delivery ------------------------------------------------------

    fn facts(&self) -> StatusFacts {
        let mut f = StatusFacts {
            running: self.active.is_some(),
            system_error: self.system_error,
            ..StatusFacts::default()
        };
        for p in self.pending.values() {
            match p.request.method.as_str() {
                APPROVAL_METHOD => f.approvals += 1,
                USER_INPUT_METHOD => f.user_inputs += 1,
                _ => {}
            }
        }
        f
    }

    /// Re-derives the status; broadcasts it if it changed; feeds the idle clock; re-arms.
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let facts = self.facts();
        let status = facts.derive();
        if status != self.status {
            self.status = status.clone();
            self.shared
                .broadcast(&Arc::new(Notification::ThreadStatusChanged {
                    thread_id: self.id().clone(),
                    status,
                }));
        }
        let now = Instant::now();
        self.clock.set_active(facts.active(), now);
        self.clock.set_subscribed(!self.subscribers.is_empty(), now);
        self.rearm(ctx);
    }

    fn to_subscribers(&self, n: Notification) {
        let n = Arc::new(n);
        for conn in self.subscribers.values() {
            conn.notify(&n);
        }
    }

    fn snapshot(&self, include_turns: bool) -> ThreadSnapshot {
        let status = self.facts().derive();
        let mut turns = Vec::new();
        if include_turns {
            turns.extend(self.history.iter().cloned());
            if let Some(active) = &self.active {
                turns.retain(|t| t.id != active.turn.id);
                let mut t = active.turn.clone();
                t.items.extend(active.open.iter().cloned());
                turns.push(t);
            }
            if !matches!(status, ThreadStatus::Active { .. }) {
                settle_turns(&mut turns);
            }
        }
        ThreadSnapshot {
            meta: self.meta.clone(),
            status,
            turns,
        }
    }

    fn subscribe(&mut self, conn: ConnectionId, addr: ConnRef) {
        if !self.subscribers.contains_key(&conn) {
            addr.subscribed(self.id());
            self.subscribers.insert(conn, addr);
        }
    }

    // ---- idle clock ----------------------------------------------------------------------

    /// Keeps one timer armed at (or before) the current target (actix-facts: cheaper than
    /// re-arming on every change). A timer that fires early re-arms.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        if self.closing.is_some() {
            return;
        }
        let Some(target) = self.clock.target(self.shared.config.unload_delay) else {
            return;
        };
        if self.timer.is_some_and(|(_, at, _)| at <= target) {
            return;
        }
        if let Some((h, _, _)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        self.timer_seq += 1;
        let (generation, seq) = (self.generation, self.timer_seq);
        let guard = self.shared.metrics.timers.guard();
        let delay = target.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, move |act, ctx| {
            drop(guard);
            act.on_timer(generation, seq, ctx);
        });
        self.timer = Some((handle, target, seq));
    }

    fn on_timer(&mut self, generation: u64, seq: u64, ctx: &mut Context<Self>) {
        if self.timer.is_some_and(|(_, _, s)| s == seq) {
            self.timer = None;
        }
        if generation != self.generation || self.closing.is_some() {
            return;
        }
        let now = Instant::now();
        match self.clock.target(self.shared.config.unload_delay) {
            None => {}
            Some(target) if target > now => self.rearm(ctx),
            Some(_) => {
                let busy = catch_unwind(AssertUnwindSafe(|| self.agent.has_running_work()));
                match busy {
                    Ok(false) => self.claim_unload(false, ctx),
                    Ok(true) => {
                        tracing::debug!(thread = %self.id(), "agent still running at unload target; restarting the delay");
                        self.clock.restart(now);
                        self.rearm(ctx);
                    }
                    Err(p) => self.restart(&panic_message(p.as_ref()), ctx),
                }
            }
        }
    }

    /// Asks the registry for the unload; holds the mailbox until it answers.
    fn claim_unload(&mut self, force: bool, ctx: &mut Context<Self>) {
        let msg = ClaimUnload {
            id: self.id().clone(),
            force,
        };
        let wait = self.shared.config.shutdown_timeout;
        let reply = tokio::time::timeout(wait, self.shared.registry().send(msg));
        ctx.wait(reply.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Ok(Claim::Granted)) => act.teardown(ctx),
            Ok(Ok(Claim::Joined)) => {}
            other => {
                tracing::debug!(thread = %act.id(), ?other, "unload refused; trying again after a full delay");
                act.clock.restart(Instant::now());
                act.rearm(ctx);
            }
        }));
    }

    // ---- teardown ------------------------------------------------------------------------

    fn teardown(&mut self, ctx: &mut Context<Self>) {
        if self.closing.is_none() {
            self.closing = Some(Vec::new());
        }
        if let Some((h, _, _)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        // 1. Pending requests are dropped without `serverRequest/resolved`.
        self.take_pending();
        // 2. Subscribers stop receiving (nothing is emitted while closing); they are detached
        //    for good when the shutdown completes, and kept if the thread stays loaded.
        // 3. Shut the agent down, bounded.
        let timeout = self.shared.config.shutdown_timeout;
        let started = catch_unwind(AssertUnwindSafe(|| self.agent.shutdown()));
        let shutdown = match started {
            Ok(Ok(fut)) => fut,
            Ok(Err(e)) => {
                tracing::warn!(thread = %self.id(), error = %e, "agent shutdown could not be submitted");
                return self.end_teardown(UnloadOutcome::SubmitFailed, ctx);
            }
            Err(p) => {
                tracing::warn!(thread = %self.id(), panic = %panic_message(p.as_ref()), "agent shutdown panicked");
                return self.end_teardown(UnloadOutcome::SubmitFailed, ctx);
            }
        };
        let fut = async move {
            match tokio::time::timeout(timeout, CatchUnwind(shutdown)).await {
                Ok(Ok(())) => UnloadOutcome::Complete,
                Ok(Err(_panic)) => UnloadOutcome::SubmitFailed,
                Err(_elapsed) => UnloadOutcome::TimedOut,
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|outcome, act, ctx| act.end_teardown(outcome, ctx)),
        );
    }

    fn end_teardown(&mut self, outcome: UnloadOutcome, ctx: &mut Context<Self>) {
        let waiters = self.closing.take().unwrap_or_default();
        let id = self.id().clone();
        if outcome == UnloadOutcome::Complete {
            for conn in self.subscribers.values() {
                conn.unsubscribed(&id);
            }
            self.subscribers.clear();
            let status = self.facts().derive();
            let save = self.persist(|store| store.save_status(id.clone(), status));
            actix_rt::spawn(async move {
                if let Err(e) = save.await {
                    tracing::warn!(error = %e, "could not record the status of an unloaded thread");
                }
            });
            self.shared.registry().do_send(EndTeardown {
                id,
                outcome,
                waiters: waiters_ok(waiters),
            });
            self.finished = true;
            ctx.stop();
        } else {
            tracing::warn!(thread = %id, ?outcome, "thread shutdown did not complete; the thread stays loaded and will try again after the unload delay");
            let err = HostError::Agent(format!(
                "thread {id} could not be shut down ({outcome:?}); it stays loaded"
            ));
            let waiters = waiters.into_iter().map(|w| (w, Err(err.clone()))).collect();
            self.shared.registry().do_send(EndTeardown {
                id,
                outcome,
                waiters,
            });
            self.clock.restart(Instant::now());
            self.refresh(ctx);
        }
    }

    // ---- turns ---------------------------------------------------------------------------

    fn start_turn(
        &mut self,
        input: Vec<UserInput>,
        reply: Option<ReplyTo>,
        ctx: &mut Context<Self>,
    ) -> Result<Turn, HostError> {
        if self.closing.is_some() {
            return Err(HostError::Closing(self.id().clone()));
        }
        if self.active.is_some() {
            return Err(HostError::TurnInProgress(self.id().clone()));
        }
        if input.is_empty() {
            return Err(HostError::InvalidParams(
                "input: must contain at least one item".into(),
            ));
        }
        let turn_id = uuid::Uuid::now_v7().to_string();
        let turn = Turn::started(turn_id.clone());
        if self.meta.preview.is_empty() {
            self.meta.preview = preview_of(&input);
        }
        self.meta.updated_at = unix_seconds();
        self.system_error = false;
        if let Some(reply) = reply {
            reply.send(serde_json::json!({ "turn": turn }));
        }
        self.to_subscribers(Notification::TurnStarted {
            thread_id: self.id().clone(),
            turn: Box::new(turn.clone()),
        });
        let user = ThreadItem::UserMessage {
            id: format!("{turn_id}-user"),
            content: input.clone(),
        };
        let now_ms = unix_millis();
        let shared_id: Arc<str> = Arc::from(turn_id.as_str());
        self.to_subscribers(Notification::ItemStarted {
            thread_id: self.id().clone(),
            turn_id: Arc::clone(&shared_id),
            item: Box::new(user.clone()),
            started_at_ms: now_ms,
        });
        self.to_subscribers(Notification::ItemCompleted {
            thread_id: self.id().clone(),
            turn_id: Arc::clone(&shared_id),
            item: Box::new(user.clone()),
            completed_at_ms: now_ms,
        });
        let mut active_turn = turn.clone();
        active_turn.items.push(user);

        // The agent's events, and the end of its task, come back on a channel of this turn's
        // own, drained by the actor as a stream: no actor message per event.
        let (tx, rx) = turn_queue();
        let stream = rx.id();
        let tctx = TurnContext::new(Arc::clone(&shared_id), tx.clone());
        let tinput = TurnInput {
            thread_id: self.id().clone(),
            turn_id,
            input,
            cwd: self.meta.cwd.clone(),
        };
        // A panic here is a panic in this handler: the guard around it restarts the thread.
        let fut = self.agent.run_turn(tinput, tctx);
        let task_guard = self.shared.metrics.agent_tasks.guard();
        let task = actix_rt::spawn(async move {
            let outcome = CatchUnwind(fut).await;
            drop(task_guard);
            // After every event the future emitted: the channel keeps the order.
            tx.send(TurnEvent::Finished(outcome));
        });
        let events = ctx.add_stream(rx);
        self.active = Some(Box::new(ActiveTurn {
            turn: active_turn,
            id: shared_id,
            open: Vec::new(),
            task,
            stream,
            events,
        }));
        self.refresh(ctx);
        Ok(turn)
    }

    /// Ends the active turn: clears its requests (with `serverRequest/resolved`), stores it, and
    /// only then sends `turn/completed`. Holds the mailbox until the store answers (bounded).
    fn complete_turn(
        &mut self,
        status: TurnStatus,
        error: Option<&TurnError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(active) = self.active.take() else {
            return;
        };
        active.task.abort();
        ctx.cancel_future(active.events);
        let mut turn = active.turn;
        turn.items.extend(active.open);
        turn.status = status;
        turn.completed_at = Some(unix_seconds());
        turn.duration_ms = turn.started_at.map(|s| (unix_seconds() - s) * 1000);
        turn.error = error.cloned();
        let thread_id = self.id().clone();
        for request_id in self.take_pending() {
            self.to_subscribers(Notification::ServerRequestResolved {
                thread_id: thread_id.clone(),
                request_id,
            });
        }
        if let (TurnStatus::Failed, Some(error)) = (status, error) {
            self.system_error = true;
            self.to_subscribers(Notification::Error {
                thread_id: thread_id.clone(),
                turn_id: Arc::clone(&active.id),
                error: error.clone(),
                will_retry: false,
            });
        }
        self.meta.updated_at = unix_seconds();
        let usage = self
            .usage
            .as_deref()
            .filter(|u| u.turn_id == turn.id)
            .cloned();
        // Turn ids are fresh per turn: only the latest entry can be this turn (a long thread
        // must not pay a scan of its history per turn).
        match self.history.last_mut().filter(|t| t.id == turn.id) {
            Some(old) => *old = turn.clone(),
            None => self.history.push(turn.clone()),
        }
        let save = self.persist(|store| store.save_turn(self.meta.clone(), turn.clone(), usage));
        let bound = self.shared.config.store_timeout;
        let save = async move {
            match tokio::time::timeout(bound, save).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("the store did not answer within {bound:?}")),
            }
        };
        ctx.wait(save.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = res {
                tracing::error!(thread = %thread_id, turn = %turn.id, error = %e, "turn could not be stored");
                act.shared.metrics.store_errors.inc();
                act.to_subscribers(Notification::Error {
                    thread_id: thread_id.clone(),
                    turn_id: Arc::from(turn.id.as_str()),
                    error: TurnError::new(format!("store error: {e}; this turn is not saved and will be lost when the thread unloads")),
                    will_retry: false,
                });
            }
            act.to_subscribers(Notification::TurnCompleted {
                thread_id,
                turn: Box::new(turn),
            });
            act.refresh(ctx);
        }));
    }

    fn on_agent_event(&mut self, kind: AgentEventKind, ctx: &mut Context<Self>) {
        if self.closing.is_some() {
            return; // nothing is emitted while closing (a request's sender drops)
        }
        let thread_id = self.id().clone();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let turn_id = Arc::clone(&active.id);
        match kind {
            AgentEventKind::ItemStarted(item) => {
                active.open.push(ThreadItem::clone(&item));
                self.to_subscribers(Notification::ItemStarted {
                    thread_id,
                    turn_id,
                    item,
                    started_at_ms: unix_millis(),
                });
            }
            AgentEventKind::Delta { item_id, delta } => {
                if let Some(ThreadItem::AgentMessage { text, .. }) =
                    active.open.iter_mut().find(|i| i.id() == &*item_id)
                {
                    text.push_str(&delta);
                }
                self.to_subscribers(Notification::AgentMessageDelta {
                    thread_id,
                    turn_id,
                    item_id,
                    delta,
                });
            }
            AgentEventKind::ItemCompleted(item) => {
                active.open.retain(|i| i.id() != item.id());
                active.turn.items.push(ThreadItem::clone(&item));
                self.to_subscribers(Notification::ItemCompleted {
                    thread_id,
                    turn_id,
                    item,
                    completed_at_ms: unix_millis(),
                });
            }
            AgentEventKind::TokenUsage {
                last,
                model_context_window,
            } => {
                let total = self
                    .usage
                    .as_ref()
                    .map(|u| u.usage.total)
                    .unwrap_or_default()
                    .plus(last);
                let usage = TokenUsage {
                    total,
                    last,
                    model_context_window,
                };
                self.usage = Some(Box::new(UsageRecord {
                    turn_id: turn_id.to_string(),
                    usage,
                }));
                if let Some(goal) = self.goal.as_mut() {
                    goal.tokens_used += last.total_tokens;
                }
                self.to_subscribers(Notification::TokenUsageUpdated {
                    thread_id,
                    turn_id,
                    token_usage: Box::new(usage),
                });
            }
            AgentEventKind::RawItem(item) => {
                // Sticky per-thread opt-in, set at thread/start only (spec section 4).
                if self.meta.raw_events {
                    self.to_subscribers(Notification::RawResponseItemCompleted {
                        thread_id,
                        turn_id,
                        item,
                    });
                }
            }
            AgentEventKind::Request {
                method,
                params,
                answer,
            } => {
                let id = RequestId(self.shared.next_request_id());
                let request = Arc::new(ServerRequest { id, method, params });
                let mut sent_to = HashSet::new();
                for (conn_id, conn) in &self.subscribers {
                    conn.request(&thread_id, &request);
                    sent_to.insert(*conn_id);
                }
                self.pending.insert(
                    id,
                    Pending {
                        request,
                        answer,
                        sent_to,
                    },
                );
                self.shared.metrics.pending_requests.inc();
                self.refresh(ctx);
            }
        }
    }

    fn on_answer(&mut self, msg: AnswerRequest, ctx: &mut Context<Self>) {
        let allowed = self
            .pending
            .get(&msg.id)
            .is_some_and(|p| p.sent_to.contains(&msg.conn));
        if !allowed {
            tracing::info!(thread = %self.id(), request = %msg.id, connection = %msg.conn, "ignored an answer to a server request that is not pending for that connection");
            self.shared.metrics.ignored_answers.inc();
            return;
        }
        if let Some(p) = self.pending.remove(&msg.id) {
            self.shared.metrics.pending_requests.dec();
            let _ = p.answer.send(msg.answer);
            self.to_subscribers(Notification::ServerRequestResolved {
                thread_id: self.id().clone(),
                request_id: msg.id,
            });
            self.refresh(ctx);
        }
    }

    // ---- supervision ---------------------------------------------------------------------

    /// Runs a handler body with panics contained: a panic restarts the thread and the caller
    /// gets [`HostError::ThreadRestarted`].
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut Self, &mut Context<Self>) -> Result<R, HostError>,
    ) -> Result<R, HostError> {
        match catch_unwind(AssertUnwindSafe(|| f(&mut *self, &mut *ctx))) {
            Ok(r) => r,
            Err(p) => {
                self.restart(&panic_message(p.as_ref()), ctx);
                Err(HostError::ThreadRestarted(self.id().clone()))
            }
        }
    }

    /// Restarts the thread in place after a panic (spec section 7).
    fn restart(&mut self, reason: &str, ctx: &mut Context<Self>) {
        let id = self.id().clone();
        self.shared.metrics.restarts.inc();
        let cfg = &self.shared.config;
        let within_bound =
            self.restarts
                .allow(Instant::now(), cfg.max_restarts, cfg.restart_period);
        tracing::error!(thread = %id, reason, within_bound, "thread failed; restarting");
        self.generation += 1;
        if let Some((h, _, _)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let error = TurnError::new(format!(
            "the agent of thread {id} failed ({reason}); the thread was restarted"
        ));
        if self.active.is_some() {
            self.complete_turn(TurnStatus::Failed, Some(&error), ctx);
        } else {
            self.system_error = true;
        }
        self.take_pending();
        self.agent = crate::host::make_agent(&self.shared, &self.meta);
        if within_bound {
            self.refresh(ctx);
        } else {
            tracing::warn!(thread = %id, "restart bound exceeded; unloading the thread");
            self.claim_unload(true, ctx);
        }
    }

    /// Runs a store write, or nothing for an ephemeral thread (which keeps nothing in the
    /// store, by the client's request).
    fn persist(
        &self,
        write: impl FnOnce(&dyn crate::store::ThreadStore) -> crate::store::StoreFuture<()>,
    ) -> crate::store::StoreFuture<()> {
        if self.meta.ephemeral {
            Box::pin(std::future::ready(Ok(())))
        } else {
            write(self.shared.store.as_ref())
        }
    }

    /// Removes every pending request (their agents see the request cancelled) and returns
    /// their ids in order.
    fn take_pending(&mut self) -> Vec<RequestId> {
        let ids: Vec<RequestId> = std::mem::take(&mut self.pending).into_keys().collect();
        self.shared.metrics.pending_requests.sub(ids.len());
        ids
    }

    fn new_waiter(&mut self) -> oneshot::Receiver<Result<(), HostError>> {
        let (tx, rx) = oneshot::channel();
        self.closing.get_or_insert_with(Vec::new).push(tx);
        rx
    }
}

fn waiters_ok(waiters: Vec<oneshot::Sender<Result<(), HostError>>>) -> Vec<CloseWaiter> {
    waiters.into_iter().map(|w| (w, Ok(()))).collect()
}

impl Actor for ThreadActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared.metrics.threads.inc();
        if self.cold {
            self.status = ThreadStatus::Idle;
            self.shared
                .broadcast(&Arc::new(Notification::ThreadStatusChanged {
                    thread_id: self.id().clone(),
                    status: ThreadStatus::Idle,
                }));
        }
        let creator = self.creator.take().map(|c| *c);
        if let Some((conn, addr, _)) = &creator {
            self.subscribe(*conn, addr.clone());
        }
        let snapshot = self.snapshot(true);
        if let Some((_, addr, Some(id))) = creator {
            ReplyTo { id, conn: addr }.send(crate::model::thread_response(&snapshot));
        }
        if !self.cold {
            self.shared
                .broadcast(&Arc::new(Notification::ThreadStarted {
                    thread: snapshot.to_json(),
                }));
        }
        if let Some(tx) = self.on_started.take() {
            let _ = tx.send(snapshot);
        }
        self.refresh(ctx);
    }
}

impl Drop for ThreadActor {
    fn drop(&mut self) {
        self.shared.metrics.threads.dec();
        self.shared.metrics.pending_requests.sub(self.pending.len());
        if !self.finished {
            // Died outside every guard (or the system is stopping): let the registry close it
            // so nobody waits on a dead address.
            if let Some(registry) = self.shared.registry_opt() {
                registry.do_send(ThreadGone(self.meta.id.clone()));
            }
        }
    }
}

// ---- messages ----------------------------------------------------------------------------

/// Resumes (attaches to) the thread: subscribes the connection and sends it, in this order, the
/// response (in-stream if `reply` is set), the token usage (unless turns are excluded), the goal
/// snapshot, and every pending server request with its original id (spec section 9).
#[derive(Message, Debug)]
#[rtype(result = "Result<ThreadSnapshot, HostError>")]
pub(crate) struct Resume {
    pub(crate) conn: ConnectionId,
    pub(crate) addr: ConnRef,
    pub(crate) exclude_turns: bool,
    pub(crate) reply: Option<ClientRequestId>,
}

impl Handler<Resume> for ThreadActor {
    type Result = Result<ThreadSnapshot, HostError>;

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, |this, ctx| {
            if this.closing.is_some() {
                return Err(HostError::Closing(this.id().clone()));
            }
            this.subscribe(msg.conn, msg.addr.clone());
            let snapshot = this.snapshot(!msg.exclude_turns);
            let id = this.id().clone();
            let mut out = Vec::new();
            if let Some(reply) = msg.reply {
                out.push(Outbound::Response {
                    id: reply,
                    result: Ok(crate::model::thread_response(&snapshot)),
                });
            }
            if let (false, Some(u)) = (msg.exclude_turns, &this.usage) {
                out.push(Outbound::Notification(Arc::new(
                    Notification::TokenUsageUpdated {
                        thread_id: id.clone(),
                        turn_id: Arc::from(u.turn_id.as_str()),
                        token_usage: Box::new(u.usage),
                    },
                )));
            }
            let goal = match &this.goal {
                Some(goal) => Notification::GoalUpdated {
                    thread_id: id.clone(),
                    turn_id: None,
                    goal: Box::new(Goal::clone(goal)),
                },
                None => Notification::GoalCleared {
                    thread_id: id.clone(),
                },
            };
            out.push(Outbound::Notification(Arc::new(goal)));
            for m in out {
                msg.addr.deliver(m);
            }
            for p in this.pending.values_mut() {
                p.sent_to.insert(msg.conn);
                msg.addr.request(&id, &p.request);
            }
            this.refresh(ctx);
            Ok(snapshot)
        })
    }
}

/// Removes a subscriber. Never unloads and never stops a turn (spec section 4).
#[derive(Message, Debug)]
#[rtype(result = "UnsubscribeStatus")]
pub(crate) struct Unsubscribe(pub(crate) ConnectionId);

impl Handler<Unsubscribe> for ThreadActor {
    type Result = UnsubscribeStatus;

    fn handle(
        &mut self,
        Unsubscribe(conn): Unsubscribe,
        ctx: &mut Context<Self>,
    ) -> UnsubscribeStatus {
        let Some(addr) = self.subscribers.remove(&conn) else {
            return UnsubscribeStatus::NotSubscribed;
        };
        addr.unsubscribed(self.id());
        self.refresh(ctx);
        UnsubscribeStatus::Unsubscribed
    }
}

/// A connection closed: drop it from the subscribers.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ConnectionClosed {
    pub(crate) conn: ConnectionId,
}

impl Handler<ConnectionClosed> for ThreadActor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionClosed, ctx: &mut Context<Self>) {
        if self.subscribers.remove(&msg.conn).is_some() {
            self.refresh(ctx);
        }
    }
}

/// Reads the thread's snapshot.
#[derive(Message, Debug)]
#[rtype(result = "Result<ThreadSnapshot, HostError>")]
pub(crate) struct Read {
    pub(crate) include_turns: bool,
}

impl Handler<Read> for ThreadActor {
    type Result = Result<ThreadSnapshot, HostError>;

    fn handle(&mut self, msg: Read, _ctx: &mut Context<Self>) -> Self::Result {
        Ok(self.snapshot(msg.include_turns))
    }
}

/// Starts a turn; the response (`{turn}`) goes in-stream before `turn/started` when `reply` is
/// set.
#[derive(Message, Debug)]
#[rtype(result = "Result<Turn, HostError>")]
pub(crate) struct StartTurn {
    pub(crate) input: Vec<UserInput>,
    pub(crate) reply: Option<ReplyTo>,
}

impl Handler<StartTurn> for ThreadActor {
    type Result = Result<Turn, HostError>;

    fn handle(&mut self, msg: StartTurn, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, |this, ctx| this.start_turn(msg.input, msg.reply, ctx))
    }
}

/// Interrupts the running turn `turn_id`: it ends `interrupted`, its requests are resolved.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), HostError>")]
pub(crate) struct Interrupt {
    pub(crate) turn_id: String,
}

impl Handler<Interrupt> for ThreadActor {
    type Result = Result<(), HostError>;

    fn handle(&mut self, msg: Interrupt, ctx: &mut Context<Self>) -> Self::Result {
        if self.closing.is_some() {
            return Err(HostError::Closing(self.id().clone()));
        }
        if self
            .active
            .as_ref()
            .is_none_or(|a| a.turn.id != msg.turn_id)
        {
            return Err(HostError::NoActiveTurn {
                thread_id: self.id().clone(),
                turn_id: msg.turn_id,
            });
        }
        self.complete_turn(TurnStatus::Interrupted, None, ctx);
        Ok(())
    }
}

/// A client's answer to a server request (routed by its connection).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct AnswerRequest {
    pub(crate) conn: ConnectionId,
    pub(crate) id: RequestId,
    pub(crate) answer: serde_json::Value,
}

impl Handler<AnswerRequest> for ThreadActor {
    type Result = ();

    fn handle(&mut self, msg: AnswerRequest, ctx: &mut Context<Self>) {
        let _ = self.guarded(ctx, |this, ctx| {
            this.on_answer(msg, ctx);
            Ok(())
        });
    }
}

/// Sets or updates the goal; answers `{goal}` in-stream, then broadcasts `thread/goal/updated`.
#[derive(Message, Debug)]
#[rtype(result = "Result<Goal, HostError>")]
pub(crate) struct SetGoal {
    pub(crate) update: GoalUpdate,
    pub(crate) reply: Option<ReplyTo>,
}

impl Handler<SetGoal> for ThreadActor {
    type Result = ResponseActFuture<Self, Result<Goal, HostError>>;

    fn handle(&mut self, msg: SetGoal, _ctx: &mut Context<Self>) -> Self::Result {
        let result = if self.closing.is_some() {
            Err(HostError::Closing(self.id().clone()))
        } else {
            crate::host::apply_goal(self.id(), self.goal.as_deref(), msg.update)
        };
        let goal = match result {
            Ok(g) => g,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let save = self.persist(|store| store.save_goal(self.meta.clone(), Some(goal.clone())));
        let save = bounded(save, self.shared.config.store_timeout);
        Box::pin(save.into_actor(self).map(move |res, act, _ctx| {
            res?;
            act.goal = Some(Box::new(goal.clone()));
            announce_goal_set(&act.shared, msg.reply, &goal);
            Ok(goal)
        }))
    }
}

/// Reads the goal.
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<Goal>, HostError>")]
pub(crate) struct GetGoal;

impl Handler<GetGoal> for ThreadActor {
    type Result = Result<Option<Goal>, HostError>;

    fn handle(&mut self, _msg: GetGoal, _ctx: &mut Context<Self>) -> Self::Result {
        Ok(self.goal.as_deref().cloned())
    }
}

/// Clears the goal; answers `{cleared}` in-stream, then broadcasts `thread/goal/cleared` if
/// there was one.
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, HostError>")]
pub(crate) struct ClearGoal {
    pub(crate) reply: Option<ReplyTo>,
}

impl Handler<ClearGoal> for ThreadActor {
    type Result = ResponseActFuture<Self, Result<bool, HostError>>;

    fn handle(&mut self, msg: ClearGoal, _ctx: &mut Context<Self>) -> Self::Result {
        if self.closing.is_some() {
            return Box::pin(fut::ready(Err(HostError::Closing(self.id().clone()))));
        }
        let had = self.goal.is_some();
        let save = self.persist(|store| store.save_goal(self.meta.clone(), None));
        let save = bounded(save, self.shared.config.store_timeout);
        Box::pin(save.into_actor(self).map(move |res, act, _ctx| {
            if had {
                res?;
            }
            act.goal = None;
            announce_goal_cleared(&act.shared, msg.reply, act.id(), had);
            Ok(had)
        }))
    }
}

/// After a goal was set and stored: the response (if responding), then the broadcast, in that
/// order (spec section 10). Shared by loaded threads and the store path of unloaded ones.
pub(crate) fn announce_goal_set(shared: &Shared, reply: Option<ReplyTo>, goal: &Goal) {
    if let Some(r) = reply {
        r.send(serde_json::json!({ "goal": goal }));
    }
    shared.broadcast(&Arc::new(Notification::GoalUpdated {
        thread_id: goal.thread_id.clone(),
        turn_id: None,
        goal: Box::new(goal.clone()),
    }));
}

/// After a goal clear: `{cleared}` (if responding), then `thread/goal/cleared` if there was one.
pub(crate) fn announce_goal_cleared(
    shared: &Shared,
    reply: Option<ReplyTo>,
    thread_id: &ThreadId,
    cleared: bool,
) {
    if let Some(r) = reply {
        r.send(serde_json::json!({ "cleared": cleared }));
    }
    if cleared {
        shared.broadcast(&Arc::new(Notification::GoalCleared {
            thread_id: thread_id.clone(),
        }));
    }
}

/// Waits for a store write, bounded.
async fn bounded(
    save: crate::store::StoreFuture<()>,
    bound: std::time::Duration,
) -> Result<(), HostError> {
    match tokio::time::timeout(bound, save).await {
        Ok(r) => r.map_err(HostError::from),
        Err(_) => Err(HostError::Timeout(bound, "the store")),
    }
}

/// Unloads the thread now (`thread/close`, or the host shutting down): interrupts a running
/// turn, then tears down through the single-flight path. Resolves when the teardown ended.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), HostError>")]
pub(crate) struct Close;

impl Handler<Close> for ThreadActor {
    type Result = ResponseFuture<Result<(), HostError>>;

    fn handle(&mut self, _msg: Close, ctx: &mut Context<Self>) -> Self::Result {
        let already = self.closing.is_some();
        let rx = self.new_waiter();
        if !already {
            if self.active.is_some() {
                self.complete_turn(TurnStatus::Interrupted, None, ctx);
            }
            self.claim_unload(true, ctx);
        }
        let id = self.id().clone();
        Box::pin(async move { rx.await.unwrap_or(Err(HostError::ThreadUnavailable(id))) })
    }
}

/// What the agent's side of a turn sends its thread, in the order it happened.
#[derive(Debug)]
pub(crate) enum TurnEvent {
    /// An item, delta, usage report or server request.
    Agent(AgentEventKind),
    /// The turn's future ended, or panicked (with the panic's message). Sent by the turn's
    /// task after everything the future emitted.
    Finished(Result<Result<(), TurnError>, String>),
}

/// What the agent reported. Items are boxed: a delta is the common event, and every event is
/// moved on its way into the actor, so the enum is kept to the size of a delta's two strings
/// rather than that of the largest item.
#[derive(Debug)]
pub(crate) enum AgentEventKind {
    ItemStarted(Box<ThreadItem>),
    Delta {
        item_id: Arc<str>,
        delta: String,
    },
    ItemCompleted(Box<ThreadItem>),
    TokenUsage {
        last: TokenUsageBreakdown,
        model_context_window: Option<i64>,
    },
    RawItem(serde_json::Value),
    Request {
        method: String,
        params: serde_json::Value,
        answer: oneshot::Sender<serde_json::Value>,
    },
}

// A turn's events reach the actor as a stream of its context (`events::TurnEvents`), each tagged with
// the stream's id. The tag is what makes events of an ended turn stale: cancelling a stream
// takes effect when the context next cleans up, which may be after it was polled once more, by
// which time another turn may have started.
impl StreamHandler<(u64, TurnEvent)> for ThreadActor {
    fn handle(&mut self, (stream, ev): (u64, TurnEvent), ctx: &mut Context<Self>) {
        if self.active.as_ref().is_none_or(|a| a.stream != stream) {
            return; // stale: an ended turn, or one from before a restart
        }
        let _ = self.guarded(ctx, |this, ctx| {
            match ev {
                TurnEvent::Agent(kind) => this.on_agent_event(kind, ctx),
                TurnEvent::Finished(Ok(Ok(()))) => {
                    this.complete_turn(TurnStatus::Completed, None, ctx);
                }
                TurnEvent::Finished(Ok(Err(e))) => {
                    this.complete_turn(TurnStatus::Failed, Some(&e), ctx);
                }
                TurnEvent::Finished(Err(panic)) => this.restart(&panic, ctx),
            }
            Ok(())
        });
    }

    /// A turn's stream ends when every sender is gone, which is no news: the turn's end
    /// arrives as [`TurnEvent::Finished`]. (The default would stop the actor.)
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

/// Test hook: panics inside a handler, to exercise supervision.
#[cfg(any(test, feature = "testkit"))]
#[derive(Message, Debug)]
#[rtype(result = "Result<(), HostError>")]
pub(crate) struct PanicInHandler;

#[cfg(any(test, feature = "testkit"))]
impl Handler<PanicInHandler> for ThreadActor {
    type Result = Result<(), HostError>;

    fn handle(&mut self, _msg: PanicInHandler, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, |_, _| panic!("test: a panic inside a thread handler"))
    }
}
