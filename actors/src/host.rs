//! The public face of the runtime: [`ThreadHost`] (one per process) and [`ConnectionHandle`]
//! (one per client). A host service embeds threadhost through these two types; `Addr`s stay
//! inside the crate.
//!
//! Every call is bounded: waits on actors, the store and teardowns all have a deadline derived
//! from [`HostConfig`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::agent::{Agent, AgentFactory, LocalBoxFuture, ModelInfo, TurnContext, TurnInput};
use crate::connection::{ConnRef, ConnectionActor, Outbox};
use crate::error::{AgentError, HostError};
use crate::ids::{ClientRequestId, ConnectionId, Counter, RequestId, ThreadId};
use crate::metrics::Metrics;
use crate::model::{
    unix_seconds, Goal, GoalStatus, GoalUpdate, ThreadMeta, ThreadSnapshot, ThreadStatus, Turn,
    TurnError, UserInput,
};
use crate::outbound::{Notification, Outbound};
use crate::registry::{LoadFailed, Register, Release, Reservation, Reserve, ThreadRegistry};
use crate::store::{settle_turns, ListQuery, ThreadStore};
use crate::thread::{
    AnswerRequest, ClearGoal, Close, GetGoal, Interrupt, Read, ReplyTo, Resume, SetGoal, StartTurn,
    ThreadActor, ThreadInit, Unsubscribe, UnsubscribeStatus,
};

/// Settings of a host. `Default` gives the production defaults of the spec.
///
/// Build it with struct update syntax: `HostConfig { unload_delay, ..HostConfig::default() }`.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// How long a thread must be unsubscribed and inactive before it unloads (spec section 5).
    /// Zero unloads as soon as both hold. Default 30 minutes, as in Codex.
    pub unload_delay: Duration,
    /// Bound on an agent's shutdown during a teardown. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Extra time a resume waits for a teardown beyond the shutdown timeout. Default 5 s.
    pub resume_wait_margin: Duration,
    /// Bound on one store operation. Default 30 s.
    pub store_timeout: Duration,
    /// Restarts allowed within `restart_period` before a failing thread is unloaded. Default 3.
    pub max_restarts: u32,
    /// See `max_restarts`. Default 60 s.
    pub restart_period: Duration,
    /// Messages a connection's outbound queue holds before the client counts as not reading and
    /// is cut off. Default 4096. The last slot is kept for the reason of the cut-off.
    pub outbound_capacity: usize,
    /// Arbiters (OS threads) thread actors are spread over, placed by thread id. 0 runs every
    /// actor on the caller's arbiter (what paused-time tests need). Default: one per core.
    pub arbiters: usize,
    /// Working directory of threads started without one.
    pub default_cwd: String,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            unload_delay: Duration::from_secs(30 * 60),
            shutdown_timeout: Duration::from_secs(10),
            resume_wait_margin: Duration::from_secs(5),
            store_timeout: Duration::from_secs(30),
            max_restarts: 3,
            restart_period: Duration::from_secs(60),
            outbound_capacity: 4096,
            arbiters: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            default_cwd: std::env::current_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "/".to_owned()),
        }
    }
}

/// State shared by every actor of one host.
pub(crate) struct Shared {
    pub(crate) config: HostConfig,
    pub(crate) agents: Arc<dyn AgentFactory>,
    pub(crate) store: Arc<dyn ThreadStore>,
    /// Loaded threads. Read from every arbiter without a message; entries are added by the
    /// host (new threads) and the registry (loads) and removed only by the registry.
    pub(crate) directory: DashMap<ThreadId, Addr<ThreadActor>>,
    /// Initialized connections: the broadcast list.
    pub(crate) connections: DashMap<ConnectionId, ConnRef>,
    pub(crate) metrics: Arc<Metrics>,
    registry: OnceLock<Addr<ThreadRegistry>>,
    request_ids: AtomicI64,
    connection_ids: Counter,
    arbiters: Vec<ArbiterHandle>,
}

impl Shared {
    pub(crate) fn registry(&self) -> &Addr<ThreadRegistry> {
        self.registry
            .get()
            .expect("the registry is started before any other actor")
    }

    pub(crate) fn registry_opt(&self) -> Option<&Addr<ThreadRegistry>> {
        self.registry.get()
    }

    pub(crate) fn broadcast(&self, n: &Arc<Notification>) {
        crate::registry::broadcast_to(self, n);
    }

    /// Ids of the loaded threads (teardowns in flight included), sorted.
    pub(crate) fn loaded_ids(&self) -> Vec<ThreadId> {
        let mut ids: Vec<ThreadId> = self.directory.iter().map(|e| e.key().clone()).collect();
        ids.sort();
        ids
    }

    pub(crate) fn next_request_id(&self) -> i64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    fn arbiter_for(&self, id: &ThreadId) -> Option<&ArbiterHandle> {
        if self.arbiters.is_empty() {
            return None;
        }
        let n = self.arbiters.len() as u64;
        self.arbiters
            .get(usize::try_from(id.placement() % n).unwrap_or(0))
    }

    fn spawn_thread(&self, init: ThreadInit) -> Addr<ThreadActor> {
        match self.arbiter_for(&init.meta.id) {
            Some(arbiter) => {
                ThreadActor::start_in_arbiter(arbiter, move |_| ThreadActor::new(init))
            }
            None => ThreadActor::new(init).start(),
        }
    }
}

/// An agent whose creation failed: every turn fails with the reason, shutdown succeeds.
struct FailedAgent(String);

impl Agent for FailedAgent {
    fn run_turn(
        &mut self,
        _input: TurnInput,
        _ctx: TurnContext,
    ) -> LocalBoxFuture<'static, Result<(), TurnError>> {
        let msg = self.0.clone();
        Box::pin(async move { Err(TurnError::new(msg)) })
    }

    fn shutdown(&mut self) -> Result<LocalBoxFuture<'static, ()>, AgentError> {
        Ok(Box::pin(async {}))
    }
}

pub(crate) fn make_agent(shared: &Shared, meta: &ThreadMeta) -> Box<dyn Agent> {
    match shared.agents.create(&meta.id, &meta.model) {
        Ok(agent) => agent,
        Err(e) => {
            tracing::error!(thread = %meta.id, error = %e, "could not create the agent");
            Box::new(FailedAgent(format!("the agent could not be created: {e}")))
        }
    }
}

/// Applies a `thread/goal/set` to the current goal (spec section 10).
pub(crate) fn apply_goal(
    id: &ThreadId,
    current: Option<&Goal>,
    update: GoalUpdate,
) -> Result<Goal, HostError> {
    let now = unix_seconds();
    if update
        .objective
        .as_deref()
        .is_some_and(|o| o.trim().is_empty())
    {
        return Err(HostError::InvalidParams(
            "objective: must not be empty".into(),
        ));
    }
    if update.token_budget.is_some_and(|b| b < 0) {
        return Err(HostError::InvalidParams(
            "tokenBudget: must not be negative".into(),
        ));
    }
    match current {
        None => {
            let Some(objective) = update.objective else {
                return Err(HostError::NoGoal(id.clone()));
            };
            Ok(Goal {
                thread_id: id.clone(),
                objective,
                status: update.status.unwrap_or(GoalStatus::Active),
                token_budget: update.token_budget,
                tokens_used: 0,
                time_used_seconds: 0,
                created_at: now,
                updated_at: now,
            })
        }
        Some(goal) => {
            let mut goal = goal.clone();
            if let Some(o) = update.objective {
                goal.objective = o;
            }
            if let Some(s) = update.status {
                goal.status = s;
            }
            if update.token_budget.is_some() {
                goal.token_budget = update.token_budget;
            }
            goal.time_used_seconds = now - goal.created_at;
            goal.updated_at = now;
            Ok(goal)
        }
    }
}

/// The runtime of one process: threads, the registry, connections.
///
/// Must be created inside a running actix `System` (e.g. under `#[actix::test]` or
/// `actix_rt::System::new().block_on`).
#[derive(Clone)]
pub struct ThreadHost {
    shared: Arc<Shared>,
    arbiters: Arc<Mutex<Vec<Arbiter>>>,
}

impl std::fmt::Debug for ThreadHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadHost")
            .field("loaded", &self.shared.directory.len())
            .field("connections", &self.shared.connections.len())
            .finish_non_exhaustive()
    }
}

/// What `thread/start` asks for.
#[derive(Debug, Clone, Default)]
pub struct StartThread {
    /// Model (agent) to run; the factory's default when `None`.
    pub model: Option<String>,
    /// Working directory; the host's default when `None`.
    pub cwd: Option<String>,
    /// Forward raw events to subscribers (sticky; resume never turns it on).
    pub raw_events: bool,
    /// Keep nothing of the thread in the store (Codex's `ephemeral`).
    pub ephemeral: bool,
}

impl ThreadHost {
    /// Starts a host with its registry and arbiters.
    pub fn start(
        config: HostConfig,
        agents: Arc<dyn AgentFactory>,
        store: Arc<dyn ThreadStore>,
    ) -> Self {
        let mut arbiters = Vec::new();
        for _ in 0..config.arbiters {
            arbiters.push(Arbiter::new());
        }
        let shared = Arc::new(Shared {
            config,
            agents,
            store,
            directory: DashMap::new(),
            connections: DashMap::new(),
            metrics: Arc::new(Metrics::default()),
            registry: OnceLock::new(),
            request_ids: AtomicI64::new(0),
            connection_ids: Counter::default(),
            arbiters: arbiters.iter().map(Arbiter::handle).collect(),
        });
        let registry = ThreadRegistry::new(Arc::clone(&shared)).start();
        let _ = shared.registry.set(registry);
        Self {
            shared,
            arbiters: Arc::new(Mutex::new(arbiters)),
        }
    }

    /// Opens a connection. It receives broadcasts once [`ConnectionHandle::initialize`] ran.
    pub fn connect(&self) -> (ConnectionHandle, Outbox) {
        let id = ConnectionId(self.shared.connection_ids.next());
        let (conn, outbox) = ConnectionActor::start(
            id,
            self.shared.config.outbound_capacity,
            Arc::clone(&self.shared),
        );
        (
            ConnectionHandle {
                shared: Arc::clone(&self.shared),
                conn,
                id,
                reply: None,
            },
            outbox,
        )
    }

    /// Ids of the loaded threads (including those whose teardown is in flight), sorted.
    pub fn loaded_threads(&self) -> Vec<ThreadId> {
        self.shared.loaded_ids()
    }

    /// The host's counters and gauges.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }

    /// The models the agent factory can run.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.shared.agents.models()
    }

    /// Number of initialized connections.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.len()
    }

    /// Unloads every thread (each through its teardown, bounded by the shutdown timeout), then
    /// disconnects every connection and stops the arbiters. Returns how many threads closed.
    pub async fn shutdown(&self) -> usize {
        let addrs: Vec<Addr<ThreadActor>> = self
            .shared
            .directory
            .iter()
            .map(|e| e.value().clone())
            .collect();
        let bound = self.shared.config.shutdown_timeout + self.shared.config.resume_wait_margin;
        let tasks: Vec<_> = addrs
            .into_iter()
            .map(|a| {
                actix_rt::spawn(async move {
                    matches!(
                        tokio::time::timeout(bound, a.send(Close)).await,
                        Ok(Ok(Ok(())))
                    )
                })
            })
            .collect();
        let mut closed = 0;
        for t in tasks {
            if matches!(t.await, Ok(true)) {
                closed += 1;
            }
        }
        for c in self.shared.connections.iter() {
            c.value().close(Some("the server is shutting down".into()));
        }
        let arbiters = std::mem::take(
            &mut *self
                .arbiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for a in arbiters {
            a.stop();
        }
        closed
    }
}

/// One client's handle on the host. Cheap to clone.
///
/// With [`ConnectionHandle::responding_to`], a call also delivers its response in the
/// connection's stream as [`Outbound::Response`], at the point where it is ordered with the
/// events (a resume's response comes before its replays; a turn's response before
/// `turn/started`). Exactly one response is delivered per call, success or error. Without it,
/// the result is only returned.
#[derive(Clone)]
pub struct ConnectionHandle {
    shared: Arc<Shared>,
    conn: ConnRef,
    id: ConnectionId,
    reply: Option<ClientRequestId>,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id)
            .field("reply", &self.reply)
            .finish()
    }
}

fn unavailable(id: &ThreadId) -> impl FnOnce(MailboxError) -> HostError + '_ {
    move |_| HostError::ThreadUnavailable(id.clone())
}

impl ConnectionHandle {
    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// A handle whose next call delivers its response in-stream with the client's `id`.
    pub fn responding_to(&self, id: ClientRequestId) -> Self {
        Self {
            reply: Some(id),
            ..self.clone()
        }
    }

    fn reply_to(&self) -> Option<ReplyTo> {
        self.reply.clone().map(|id| ReplyTo {
            id,
            conn: self.conn.clone(),
        })
    }

    /// Puts a message on this connection's stream (the wire layer's own responses).
    pub fn deliver(&self, msg: Outbound) {
        self.conn.deliver(msg);
    }

    /// Delivers `result` in-stream when responding: `Ok` rendered by `render` unless the actor
    /// already delivered it (`render` is `None`), errors always.
    fn respond<T>(
        &self,
        result: Result<T, HostError>,
        render: Option<&dyn Fn(&T) -> serde_json::Value>,
    ) -> Result<T, HostError> {
        if let Some(id) = &self.reply {
            match (&result, render) {
                (Ok(v), Some(render)) => self.deliver(Outbound::Response {
                    id: id.clone(),
                    result: Ok(render(v)),
                }),
                (Ok(_), None) => {}
                (Err(e), _) => self.deliver(Outbound::Response {
                    id: id.clone(),
                    result: Err(e.clone()),
                }),
            }
        }
        result
    }

    /// Completes the handshake: the connection now receives broadcasts, minus the notification
    /// methods it opted out of.
    pub fn initialize(&self, opt_out: impl IntoIterator<Item = String>) {
        self.conn
            .set_opt_out(&opt_out.into_iter().collect::<HashSet<_>>());
        self.shared.connections.insert(self.id, self.conn.clone());
    }

    /// Closes the connection: it leaves every thread it subscribed to.
    pub fn disconnect(&self) {
        self.conn.close(None);
    }

    /// Starts a new thread with this connection subscribed. The response (if responding) comes
    /// before `thread/started`.
    pub async fn start_thread(&self, params: StartThread) -> Result<ThreadSnapshot, HostError> {
        let r = self.start_thread_inner(params).await;
        self.respond(r, None)
    }

    async fn start_thread_inner(&self, params: StartThread) -> Result<ThreadSnapshot, HostError> {
        let model = match params.model {
            Some(m) if !self.shared.agents.models().iter().any(|x| x.id == m) => {
                return Err(HostError::InvalidParams(format!(
                    "model: unknown model {m:?}; model/list names the models this server runs"
                )))
            }
            Some(m) => m,
            None => self.shared.agents.default_model(),
        };
        let cwd = params
            .cwd
            .unwrap_or_else(|| self.shared.config.default_cwd.clone());
        let mut meta = ThreadMeta::new(ThreadId::new(), model, cwd);
        meta.raw_events = params.raw_events;
        meta.ephemeral = params.ephemeral;
        let id = meta.id.clone();
        let (tx, rx) = oneshot::channel();
        let addr = self.shared.spawn_thread(ThreadInit {
            shared: Arc::clone(&self.shared),
            meta,
            stored: None,
            creator: Some((self.id, self.conn.clone(), self.reply.clone())),
            on_started: tx,
        });
        self.shared.directory.insert(id.clone(), addr);
        let bound = self.shared.config.store_timeout;
        match tokio::time::timeout(bound, rx).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => Err(HostError::ThreadUnavailable(id)),
            Err(_) => Err(HostError::Timeout(bound, "the new thread to start")),
        }
    }

    /// Resumes a thread: warm if loaded, cold from the store otherwise; waits (bounded) for a
    /// teardown in flight (spec sections 6 and 9).
    pub async fn resume(
        &self,
        id: &ThreadId,
        exclude_turns: bool,
    ) -> Result<ThreadSnapshot, HostError> {
        let r = self.resume_inner(id, exclude_turns).await;
        self.respond(r, None)
    }

    async fn resume_inner(
        &self,
        id: &ThreadId,
        exclude_turns: bool,
    ) -> Result<ThreadSnapshot, HostError> {
        let cfg = &self.shared.config;
        let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout + cfg.resume_wait_margin;
        // A loaded thread takes the resume straight away, without a reservation: its mailbox
        // orders the resume against its own unload (a claim holds the mailbox until the
        // registry answers, and a thread that is closing refuses). Refused or gone, the resume
        // goes the registry's way below, which waits out a teardown and loads cold.
        if let Some(addr) = self.loaded(id) {
            match tokio::time::timeout_at(deadline, addr.send(self.resume_msg(exclude_turns))).await
            {
                Ok(Ok(Err(HostError::Closing(_)))) | Ok(Err(_)) => {}
                Ok(Ok(r)) => return r,
                Err(_) => return Err(HostError::ClosingResume(id.clone())),
            }
        }
        let registry = self.shared.registry();
        loop {
            let reservation = tokio::time::timeout_at(deadline, registry.send(Reserve(id.clone())))
                .await
                .map_err(|_| HostError::ClosingResume(id.clone()))?
                .map_err(|_| HostError::ShuttingDown)?;
            let addr = match reservation {
                Reservation::Wait(rx) => {
                    if tokio::time::timeout_at(deadline, rx).await.is_err() {
                        return Err(HostError::ClosingResume(id.clone()));
                    }
                    continue;
                }
                Reservation::Loaded(addr) => addr,
                Reservation::MustLoad => match self.load_cold(id).await {
                    Ok(addr) => addr,
                    Err(e) => {
                        registry.do_send(LoadFailed(id.clone()));
                        return Err(e);
                    }
                },
            };
            let r =
                tokio::time::timeout_at(deadline, addr.send(self.resume_msg(exclude_turns))).await;
            registry.do_send(Release(id.clone()));
            match r {
                Ok(Ok(Err(HostError::Closing(_)))) | Ok(Err(_)) => {
                    // Closed under us (a forced teardown or a dead actor): wait and retry.
                    if tokio::time::Instant::now() >= deadline {
                        return Err(HostError::ClosingResume(id.clone()));
                    }
                    tokio::task::yield_now().await;
                }
                Ok(Ok(r)) => return r,
                Err(_) => return Err(HostError::ClosingResume(id.clone())),
            }
        }
    }

    /// Loads a thread from the store and starts its actor (the caller holds the load slot).
    async fn load_cold(&self, id: &ThreadId) -> Result<Addr<ThreadActor>, HostError> {
        let bound = self.shared.config.store_timeout;
        let stored = tokio::time::timeout(bound, self.shared.store.load(id.clone()))
            .await
            .map_err(|_| HostError::Timeout(bound, "the store"))??;
        let stored = match stored {
            Some(s) if !s.turns.is_empty() => s,
            _ => return Err(HostError::NoRollout(id.clone())),
        };
        let (tx, rx) = oneshot::channel();
        let addr = self.shared.spawn_thread(ThreadInit {
            shared: Arc::clone(&self.shared),
            meta: stored.meta.clone(),
            stored: Some(stored),
            creator: None,
            on_started: tx,
        });
        self.shared.registry().do_send(Register {
            id: id.clone(),
            addr: addr.clone(),
        });
        let _ = tokio::time::timeout(bound, rx).await;
        Ok(addr)
    }

    fn resume_msg(&self, exclude_turns: bool) -> Resume {
        Resume {
            conn: self.id,
            addr: self.conn.clone(),
            exclude_turns,
            reply: self.reply.clone(),
        }
    }

    fn loaded(&self, id: &ThreadId) -> Option<Addr<ThreadActor>> {
        self.shared.directory.get(id).map(|a| a.clone())
    }

    /// `thread/unsubscribe`: never unloads, never stops a turn.
    pub async fn unsubscribe(&self, id: &ThreadId) -> Result<UnsubscribeStatus, HostError> {
        let r = match self.loaded(id) {
            Some(addr) => addr
                .send(Unsubscribe(self.id))
                .await
                .map_err(unavailable(id)),
            None => Ok(UnsubscribeStatus::NotLoaded),
        };
        self.respond(r, Some(&|s| serde_json::json!({ "status": s })))
    }

    /// `thread/read`: the loaded thread's live snapshot, or the stored one (`notLoaded`).
    pub async fn read(
        &self,
        id: &ThreadId,
        include_turns: bool,
    ) -> Result<ThreadSnapshot, HostError> {
        let r = self.read_inner(id, include_turns).await;
        self.respond(r, Some(&|s| serde_json::json!({ "thread": s.to_json() })))
    }

    async fn read_inner(
        &self,
        id: &ThreadId,
        include_turns: bool,
    ) -> Result<ThreadSnapshot, HostError> {
        if let Some(addr) = self.loaded(id) {
            if let Ok(r) = addr.send(Read { include_turns }).await {
                return r;
            }
        }
        let bound = self.shared.config.store_timeout;
        let stored = tokio::time::timeout(bound, self.shared.store.load(id.clone()))
            .await
            .map_err(|_| HostError::Timeout(bound, "the store"))??
            .ok_or_else(|| HostError::ThreadNotFound(id.clone()))?;
        let mut turns = if include_turns {
            stored.turns
        } else {
            Vec::new()
        };
        settle_turns(&mut turns);
        Ok(ThreadSnapshot {
            meta: stored.meta,
            status: ThreadStatus::NotLoaded,
            turns,
        })
    }

    /// `thread/loaded/list`: loaded thread ids, sorted, paged by `cursor` (an id) and `limit`.
    pub async fn list_loaded(
        &self,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<ThreadId>, Option<String>), HostError> {
        let mut ids = self.shared.loaded_ids();
        if let Some(c) = cursor {
            ids.retain(|i| i.as_str() > c);
        }
        let limit = limit.unwrap_or(usize::MAX).max(1);
        let next = (ids.len() > limit).then(|| ids[limit - 1].to_string());
        ids.truncate(limit);
        let r = Ok((ids, next));
        self.respond(
            r,
            Some(&|(d, n)| serde_json::json!({ "data": d, "nextCursor": n })),
        )
    }

    /// `thread/list`: a page of stored threads; a loaded thread shows its live status and
    /// metadata, the others `notLoaded`. Returns the threads (without turns) and the cursor of
    /// the next page.
    pub async fn list_threads(
        &self,
        query: ListQuery,
    ) -> Result<(Vec<ThreadSnapshot>, Option<String>), HostError> {
        let r = self.list_threads_inner(query).await;
        self.respond(
            r,
            Some(&|(threads, next)| {
                let data: Vec<serde_json::Value> =
                    threads.iter().map(ThreadSnapshot::to_json).collect();
                serde_json::json!({ "data": data, "nextCursor": next })
            }),
        )
    }

    async fn list_threads_inner(
        &self,
        query: ListQuery,
    ) -> Result<(Vec<ThreadSnapshot>, Option<String>), HostError> {
        let bound = self.shared.config.store_timeout;
        let page = match tokio::time::timeout(bound, self.shared.store.list(query)).await {
            Ok(r) => r.map_err(HostError::from)?,
            Err(_) => return Err(HostError::Timeout(bound, "the store")),
        };
        let mut threads = Vec::with_capacity(page.data.len());
        for meta in page.data {
            let live = match self.loaded(&meta.id) {
                Some(addr) => addr
                    .send(Read {
                        include_turns: false,
                    })
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            threads.push(live.unwrap_or(ThreadSnapshot {
                meta,
                status: ThreadStatus::NotLoaded,
                turns: Vec::new(),
            }));
        }
        Ok((threads, page.next_cursor))
    }

    /// `turn/start` on a loaded thread. The response (if responding) comes before
    /// `turn/started`.
    pub async fn start_turn(
        &self,
        id: &ThreadId,
        input: Vec<UserInput>,
    ) -> Result<Turn, HostError> {
        let r = match self.loaded(id) {
            Some(addr) => addr
                .send(StartTurn {
                    input,
                    reply: self.reply_to(),
                })
                .await
                .map_err(unavailable(id))
                .and_then(|r| r),
            None => Err(HostError::ThreadNotLoaded(id.clone())),
        };
        self.respond(r, None)
    }

    /// `turn/interrupt`: the running turn ends `interrupted`.
    pub async fn interrupt(&self, id: &ThreadId, turn_id: &str) -> Result<(), HostError> {
        let r = match self.loaded(id) {
            Some(addr) => addr
                .send(Interrupt {
                    turn_id: turn_id.to_owned(),
                })
                .await
                .map_err(unavailable(id))
                .and_then(|r| r),
            None => Err(HostError::ThreadNotLoaded(id.clone())),
        };
        self.respond(r, Some(&|()| serde_json::json!({})))
    }

    /// Answers a server request sent to this connection. Returns whether it was routed to its
    /// thread; an answer to a request this connection was never sent, or that was already
    /// resolved, is ignored (logged and counted, never answered).
    pub async fn answer(&self, request: RequestId, answer: serde_json::Value) -> bool {
        let thread = self
            .conn
            .thread_of_request(request)
            .and_then(|t| self.shared.directory.get(&t).map(|a| a.clone()));
        let routed = match thread {
            Some(addr) => {
                addr.do_send(AnswerRequest {
                    conn: self.id,
                    id: request,
                    answer,
                });
                true
            }
            None => false,
        };
        if !routed {
            tracing::info!(connection = %self.id, request = %request, "ignored an answer to a server request that is not pending for this connection");
            self.shared.metrics.ignored_answers.inc();
        }
        routed
    }

    /// `thread/goal/set`.
    pub async fn set_goal(&self, id: &ThreadId, update: GoalUpdate) -> Result<Goal, HostError> {
        let r = self
            .goal_op(id, GoalOp::Set(update))
            .await
            .and_then(|g| match g {
                GoalReply::Set(g) => Ok(g),
                _ => Err(HostError::InvalidParams(
                    "internal: goal reply mismatch".into(),
                )),
            });
        self.respond(r, None)
    }

    /// `thread/goal/get`.
    pub async fn get_goal(&self, id: &ThreadId) -> Result<Option<Goal>, HostError> {
        let r = self.goal_op(id, GoalOp::Get).await.map(|g| match g {
            GoalReply::Get(g) => g,
            _ => None,
        });
        self.respond(r, Some(&|g| serde_json::json!({ "goal": g })))
    }

    /// `thread/goal/clear`: `true` if a goal was cleared.
    pub async fn clear_goal(&self, id: &ThreadId) -> Result<bool, HostError> {
        let r = self
            .goal_op(id, GoalOp::Clear)
            .await
            .map(|g| matches!(g, GoalReply::Cleared(true)));
        self.respond(r, None)
    }

    /// Goal operations go through the thread's mailbox when it is loaded (to keep order with its
    /// events) and to the store otherwise, holding the load slot so no load interleaves.
    async fn goal_op(&self, id: &ThreadId, op: GoalOp) -> Result<GoalReply, HostError> {
        let registry = self.shared.registry();
        let cfg = &self.shared.config;
        let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout + cfg.resume_wait_margin;
        loop {
            let reservation = tokio::time::timeout_at(deadline, registry.send(Reserve(id.clone())))
                .await
                .map_err(|_| HostError::Closing(id.clone()))?
                .map_err(|_| HostError::ShuttingDown)?;
            match reservation {
                Reservation::Wait(rx) => {
                    if tokio::time::timeout_at(deadline, rx).await.is_err() {
                        return Err(HostError::Closing(id.clone()));
                    }
                }
                Reservation::Loaded(addr) => {
                    registry.do_send(Release(id.clone()));
                    let reply = self.reply_to();
                    let r = match op {
                        GoalOp::Set(update) => addr
                            .send(SetGoal { update, reply })
                            .await
                            .map(|r| r.map(GoalReply::Set)),
                        GoalOp::Get => addr.send(GetGoal).await.map(|r| r.map(GoalReply::Get)),
                        GoalOp::Clear => addr
                            .send(ClearGoal { reply })
                            .await
                            .map(|r| r.map(GoalReply::Cleared)),
                    };
                    return r.map_err(unavailable(id)).and_then(|r| r);
                }
                Reservation::MustLoad => {
                    let r = self.goal_in_store(id, op).await;
                    registry.do_send(LoadFailed(id.clone()));
                    return r;
                }
            }
        }
    }

    async fn goal_in_store(&self, id: &ThreadId, op: GoalOp) -> Result<GoalReply, HostError> {
        let bound = self.shared.config.store_timeout;
        let store = &self.shared.store;
        let stored = tokio::time::timeout(bound, store.load(id.clone()))
            .await
            .map_err(|_| HostError::Timeout(bound, "the store"))??
            .ok_or_else(|| HostError::ThreadNotFound(id.clone()))?;
        let timeout = |_| HostError::Timeout(bound, "the store");
        match op {
            GoalOp::Get => Ok(GoalReply::Get(stored.goal)),
            GoalOp::Set(update) => {
                let goal = apply_goal(id, stored.goal.as_ref(), update)?;
                tokio::time::timeout(bound, store.save_goal(stored.meta, Some(goal.clone())))
                    .await
                    .map_err(timeout)??;
                crate::thread::announce_goal_set(&self.shared, self.reply_to(), &goal);
                Ok(GoalReply::Set(goal))
            }
            GoalOp::Clear => {
                let had = stored.goal.is_some();
                if had {
                    tokio::time::timeout(bound, store.save_goal(stored.meta, None))
                        .await
                        .map_err(timeout)??;
                }
                crate::thread::announce_goal_cleared(&self.shared, self.reply_to(), id, had);
                Ok(GoalReply::Cleared(had))
            }
        }
    }

    /// `thread/close`: interrupts a running turn and unloads now; resolves once the teardown
    /// ended (after `thread/closed` was broadcast). A thread that is not loaded is already
    /// closed.
    pub async fn close_thread(&self, id: &ThreadId) -> Result<(), HostError> {
        let r = match self.loaded(id) {
            Some(addr) => {
                let bound =
                    self.shared.config.shutdown_timeout + self.shared.config.resume_wait_margin;
                match tokio::time::timeout(bound, addr.send(Close)).await {
                    Ok(r) => r.map_err(unavailable(id)).and_then(|r| r),
                    Err(_) => Err(HostError::Timeout(bound, "the thread to close")),
                }
            }
            None => Ok(()),
        };
        self.respond(r, Some(&|()| serde_json::json!({})))
    }

    /// Test hook: makes the thread's actor panic inside a handler.
    #[cfg(any(test, feature = "testkit"))]
    pub async fn panic_thread_handler(&self, id: &ThreadId) -> Result<(), HostError> {
        match self.loaded(id) {
            Some(addr) => addr
                .send(crate::thread::PanicInHandler)
                .await
                .map_err(unavailable(id))
                .and_then(|r| r),
            None => Err(HostError::ThreadNotLoaded(id.clone())),
        }
    }
}

enum GoalOp {
    Set(GoalUpdate),
    Get,
    Clear,
}

enum GoalReply {
    Set(Goal),
    Get(Option<Goal>),
    Cleared(bool),
}
