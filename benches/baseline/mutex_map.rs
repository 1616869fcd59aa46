//! BASELINE, not threadhost: a small re-implementation of the "mutex-map" design of Codex's
//! app-server, so the benches can compare threadhost with the usual design of this system on the
//! same machine, in the same run, with the same workloads.
//!
//! What it keeps from Codex (`codex-rs/app-server`, `thread_state.rs` and the thread lifecycle
//! around it):
//! - shared managers behind `Arc<tokio::sync::Mutex<..>>` (Codex uses tokio's mutex): the
//!   thread-state map, the subscription map (thread -> connection ids), the connection map
//!   (connection id -> an unbounded outgoing channel), and the set of pending unloads;
//! - one tokio task per thread listener that receives the agent's events from an mpsc and, for
//!   each event, locks the thread state to track the turn, locks the subscription map to collect
//!   the subscribers, and sends to each subscriber's unbounded channel;
//! - the same unload rule as threadhost (unsubscribed and idle for the delay), checked by a
//!   watcher task that sleeps for the delay and re-checks; resume refuses a thread whose unload
//!   is pending ("is closing; retry"), as Codex does. The check and the removal take separate
//!   locks, as in Codex before PR 31392, so the race that PR fixed is possible here; the churn
//!   bench counts it.
//!
//! What it leaves out: JSON-RPC, approvals, goals, supervision. It runs on a tokio multi-thread
//! runtime (all cores). It uses threadhost's domain types and `MemoryStore` so that the bytes
//! moved and stored are the same as threadhost's.

#![allow(dead_code, unreachable_pub)] // each bench binary uses a different part of the baseline

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use threadhost_actors::{
    settle_turns, MemoryStore, Notification, ThreadId, ThreadItem, ThreadMeta, ThreadStatus,
    ThreadStore, TokenUsage, TokenUsageBreakdown, Turn, TurnStatus, UsageRecord, UserInput,
    SCRIPTED_MODEL,
};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A connection id.
pub type ConnId = u64;

/// What a connection receives.
pub type Outgoing = mpsc::UnboundedReceiver<Arc<Notification>>;

/// The mutex-map host. Cheap to clone (every field is an `Arc`).
#[derive(Clone)]
pub struct MutexMapHost {
    /// Loaded threads: their state and listener.
    threads: Arc<Mutex<HashMap<ThreadId, ThreadEntry>>>,
    /// Thread -> subscribed connections.
    subscriptions: Arc<Mutex<HashMap<ThreadId, HashSet<ConnId>>>>,
    /// Connection -> its unbounded outgoing channel.
    connections: Arc<Mutex<HashMap<ConnId, Connection>>>,
    /// Initialized connections: the broadcast list (kept apart, as threadhost keeps its own, so
    /// a broadcast costs what there is to send, not a scan of every connection).
    initialized: Arc<Mutex<HashSet<ConnId>>>,
    /// Threads whose unload is in flight.
    pending_unloads: Arc<Mutex<HashSet<ThreadId>>>,
    store: Arc<MemoryStore>,
    unload_delay: Duration,
    next_conn: Arc<AtomicU64>,
}

struct Connection {
    tx: mpsc::UnboundedSender<Arc<Notification>>,
}

struct ThreadEntry {
    state: Arc<Mutex<ThreadState>>,
    /// The agent's event stream into the listener.
    events: mpsc::UnboundedSender<AgentEvent>,
    listener: JoinHandle<()>,
}

struct ThreadState {
    meta: ThreadMeta,
    history: Vec<Turn>,
    /// The turn in flight, its open items, and its id as the notifications share it.
    active: Option<(Turn, Vec<ThreadItem>, Arc<str>)>,
    usage: Option<UsageRecord>,
    no_subscribers_since: Option<Instant>,
    inactive_since: Option<Instant>,
    /// Moves on whenever an unload watcher is started, so an older watcher does nothing.
    unload_generation: u64,
}

enum AgentEvent {
    TurnStarted(Turn),
    ItemStarted(ThreadItem),
    Delta { item_id: Arc<str>, delta: String },
    ItemCompleted(ThreadItem),
    TokenUsage(TokenUsageBreakdown),
    TurnComplete,
}

impl MutexMapHost {
    /// A host over `store` with the given unload delay. Call inside a tokio runtime.
    pub fn new(store: Arc<MemoryStore>, unload_delay: Duration) -> Self {
        Self {
            threads: Arc::default(),
            subscriptions: Arc::default(),
            connections: Arc::default(),
            initialized: Arc::default(),
            pending_unloads: Arc::default(),
            store,
            unload_delay,
            next_conn: Arc::default(),
        }
    }

    /// Opens a connection; `initialized` connections receive broadcasts.
    pub async fn connect(&self, initialized: bool) -> (ConnId, Outgoing) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.connections.lock().await.insert(id, Connection { tx });
        if initialized {
            self.initialized.lock().await.insert(id);
        }
        (id, rx)
    }

    /// Loaded threads.
    pub async fn loaded(&self) -> usize {
        self.threads.lock().await.len()
    }

    /// Closes a connection: it leaves every thread; threads left without subscribers start
    /// their unload countdown.
    pub async fn disconnect(&self, conn: ConnId) {
        self.connections.lock().await.remove(&conn);
        self.initialized.lock().await.remove(&conn);
        let mut orphaned = Vec::new();
        {
            let mut subs = self.subscriptions.lock().await;
            for (thread, set) in subs.iter_mut() {
                if set.remove(&conn) && set.is_empty() {
                    orphaned.push(thread.clone());
                }
            }
        }
        for t in orphaned {
            self.lost_last_subscriber(&t).await;
        }
    }

    async fn broadcast(&self, n: Notification) {
        let ids: Vec<ConnId> = self.initialized.lock().await.iter().copied().collect();
        if ids.is_empty() {
            return;
        }
        let n = Arc::new(n);
        let conns = self.connections.lock().await;
        for id in ids {
            if let Some(c) = conns.get(&id) {
                let _ = c.tx.send(Arc::clone(&n));
            }
        }
    }

    async fn fan_out(
        subscriptions: &Mutex<HashMap<ThreadId, HashSet<ConnId>>>,
        connections: &Mutex<HashMap<ConnId, Connection>>,
        thread: &ThreadId,
        n: Notification,
    ) {
        let ids: Vec<ConnId> = subscriptions
            .lock()
            .await
            .get(thread)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return;
        }
        let n = Arc::new(n);
        let conns = connections.lock().await;
        for id in ids {
            if let Some(c) = conns.get(&id) {
                let _ = c.tx.send(Arc::clone(&n));
            }
        }
    }

    /// Starts a thread with `conn` subscribed.
    pub async fn start_thread(&self, conn: ConnId) -> ThreadId {
        let meta = ThreadMeta::new(ThreadId::new(), SCRIPTED_MODEL.to_owned(), "/work".into());
        let id = meta.id.clone();
        let entry = self.spawn_listener(meta, Vec::new(), None);
        self.threads.lock().await.insert(id.clone(), entry);
        self.subscriptions
            .lock()
            .await
            .entry(id.clone())
            .or_default()
            .insert(conn);
        id
    }

    fn spawn_listener(
        &self,
        meta: ThreadMeta,
        history: Vec<Turn>,
        usage: Option<UsageRecord>,
    ) -> ThreadEntry {
        let id = meta.id.clone();
        let state = Arc::new(Mutex::new(ThreadState {
            meta,
            history,
            active: None,
            usage,
            no_subscribers_since: None,
            inactive_since: Some(Instant::now()),
            unload_generation: 0,
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = tokio::spawn(self.clone().listen(id, Arc::clone(&state), rx));
        ThreadEntry {
            state,
            events: tx,
            listener,
        }
    }

    /// The listener task of one thread.
    async fn listen(
        self,
        id: ThreadId,
        state: Arc<Mutex<ThreadState>>,
        mut rx: mpsc::UnboundedReceiver<AgentEvent>,
    ) {
        while let Some(ev) = rx.recv().await {
            let n = {
                let mut st = state.lock().await;
                let Some((turn, open, shared_id)) = st.active.as_mut() else {
                    continue;
                };
                let turn_id = Arc::clone(shared_id);
                match ev {
                    AgentEvent::TurnStarted(t) => Notification::TurnStarted {
                        thread_id: id.clone(),
                        turn: Box::new(t),
                    },
                    AgentEvent::ItemStarted(item) => {
                        open.push(item.clone());
                        Notification::ItemStarted {
                            thread_id: id.clone(),
                            turn_id,
                            item: Box::new(item),
                            started_at_ms: threadhost_actors::unix_millis(),
                        }
                    }
                    AgentEvent::Delta { item_id, delta } => {
                        if let Some(ThreadItem::AgentMessage { text, .. }) =
                            open.iter_mut().find(|i| i.id() == &*item_id)
                        {
                            text.push_str(&delta);
                        }
                        Notification::AgentMessageDelta {
                            thread_id: id.clone(),
                            turn_id,
                            item_id,
                            delta,
                        }
                    }
                    AgentEvent::ItemCompleted(item) => {
                        open.retain(|i| i.id() != item.id());
                        turn.items.push(item.clone());
                        Notification::ItemCompleted {
                            thread_id: id.clone(),
                            turn_id,
                            item: Box::new(item),
                            completed_at_ms: threadhost_actors::unix_millis(),
                        }
                    }
                    AgentEvent::TokenUsage(last) => {
                        let total = st
                            .usage
                            .as_ref()
                            .map(|u| u.usage.total)
                            .unwrap_or_default()
                            .plus(last);
                        let usage = TokenUsage {
                            total,
                            last,
                            model_context_window: Some(128_000),
                        };
                        st.usage = Some(UsageRecord {
                            turn_id: turn_id.to_string(),
                            usage,
                        });
                        Notification::TokenUsageUpdated {
                            thread_id: id.clone(),
                            turn_id,
                            token_usage: Box::new(usage),
                        }
                    }
                    AgentEvent::TurnComplete => {
                        let Some((mut turn, open, _)) = st.active.take() else {
                            continue;
                        };
                        turn.items.extend(open);
                        turn.status = TurnStatus::Completed;
                        turn.completed_at = Some(threadhost_actors::unix_seconds());
                        st.history.push(turn.clone());
                        st.inactive_since = Some(Instant::now());
                        let usage = st.usage.clone().filter(|u| u.turn_id == turn.id);
                        let meta = st.meta.clone();
                        drop(st);
                        // Durable before turn/completed, as in threadhost.
                        let _ = self.store.save_turn(meta, turn.clone(), usage).await;
                        let done = Notification::TurnCompleted {
                            thread_id: id.clone(),
                            turn: Box::new(turn),
                        };
                        Self::fan_out(&self.subscriptions, &self.connections, &id, done).await;
                        self.broadcast(Notification::ThreadStatusChanged {
                            thread_id: id.clone(),
                            status: ThreadStatus::Idle,
                        })
                        .await;
                        let orphan = self
                            .subscriptions
                            .lock()
                            .await
                            .get(&id)
                            .is_none_or(HashSet::is_empty);
                        if orphan {
                            self.schedule_unload(&id).await;
                        }
                        continue;
                    }
                }
            };
            Self::fan_out(&self.subscriptions, &self.connections, &id, n).await;
        }
    }

    /// `turn/start`: the agent streams `words` deltas.
    pub async fn start_turn(&self, thread: &ThreadId, input: Vec<UserInput>) -> Result<(), String> {
        let (state, events) = {
            let threads = self.threads.lock().await;
            let e = threads
                .get(thread)
                .ok_or_else(|| format!("thread not loaded: {thread}"))?;
            (Arc::clone(&e.state), e.events.clone())
        };
        let n = super::common::word_count(&input);
        let turn_id = uuid_like();
        let turn = Turn::started(turn_id.clone());
        {
            let mut st = state.lock().await;
            if st.active.is_some() {
                return Err(format!("a turn is already running on {thread}"));
            }
            let user = ThreadItem::UserMessage {
                id: format!("{turn_id}-user"),
                content: input,
            };
            st.active = Some((turn.clone(), Vec::new(), Arc::from(turn.id.as_str())));
            st.inactive_since = None;
            st.unload_generation += 1;
            let _ = events.send(AgentEvent::TurnStarted(turn));
            let _ = events.send(AgentEvent::ItemStarted(user.clone()));
            let _ = events.send(AgentEvent::ItemCompleted(user));
        }
        self.broadcast(Notification::ThreadStatusChanged {
            thread_id: thread.clone(),
            status: ThreadStatus::Active {
                active_flags: Vec::new(),
            },
        })
        .await;
        // The agent: the same events as threadhost's scripted agent, deltas stamped.
        tokio::spawn(async move {
            let item_id = format!("{turn_id}-msg");
            let _ = events.send(AgentEvent::ItemStarted(ThreadItem::AgentMessage {
                id: item_id.clone(),
                text: String::new(),
            }));
            for _ in 0..n {
                // One id allocation per delta, as Codex's `String` ids have.
                let _ = events.send(AgentEvent::Delta {
                    item_id: Arc::from(item_id.as_str()),
                    delta: super::common::now_ns().to_string(),
                });
                tokio::task::yield_now().await;
            }
            let _ = events.send(AgentEvent::ItemCompleted(ThreadItem::AgentMessage {
                id: item_id,
                text: String::new(),
            }));
            let _ = events.send(AgentEvent::TokenUsage(super::common::usage(n)));
            let _ = events.send(AgentEvent::TurnComplete);
        });
        Ok(())
    }

    /// `thread/resume`: warm if loaded, cold from the store otherwise. Refused while an unload
    /// of the thread is pending (Codex's behaviour). Returns the turns.
    pub async fn resume(&self, conn: ConnId, thread: &ThreadId) -> Result<Vec<Turn>, String> {
        if self.pending_unloads.lock().await.contains(thread) {
            return Err(format!(
                "thread {thread} is closing; retry thread/resume after the thread is closed"
            ));
        }
        let loaded = self
            .threads
            .lock()
            .await
            .get(thread)
            .map(|e| Arc::clone(&e.state));
        let (state, cold) = match loaded {
            Some(state) => (state, false),
            None => {
                let stored = self
                    .store
                    .load(thread.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .filter(|s| !s.turns.is_empty())
                    .ok_or_else(|| format!("no rollout found for thread id {thread}"))?;
                let mut turns = stored.turns;
                settle_turns(&mut turns);
                let entry = self.spawn_listener(stored.meta, turns, stored.usage);
                let mut threads = self.threads.lock().await;
                match threads.get(thread) {
                    // Loaded by somebody else meanwhile: use theirs.
                    Some(e) => {
                        entry.listener.abort();
                        (Arc::clone(&e.state), false)
                    }
                    None => {
                        let state = Arc::clone(&entry.state);
                        threads.insert(thread.clone(), entry);
                        (state, true)
                    }
                }
            }
        };
        let turns = {
            let mut st = state.lock().await;
            st.no_subscribers_since = None;
            st.unload_generation += 1;
            st.history.clone()
        };
        self.subscriptions
            .lock()
            .await
            .entry(thread.clone())
            .or_default()
            .insert(conn);
        if cold {
            self.broadcast(Notification::ThreadStatusChanged {
                thread_id: thread.clone(),
                status: ThreadStatus::Idle,
            })
            .await;
        }
        if let Some(c) = self.connections.lock().await.get(&conn) {
            let _ = c.tx.send(Arc::new(Notification::GoalCleared {
                thread_id: thread.clone(),
            }));
        }
        Ok(turns)
    }

    /// `thread/unsubscribe`: `true` if `conn` was subscribed. Never unloads by itself.
    pub async fn unsubscribe(&self, conn: ConnId, thread: &ThreadId) -> bool {
        let (was, now_empty) = {
            let mut subs = self.subscriptions.lock().await;
            match subs.get_mut(thread) {
                Some(set) => {
                    let was = set.remove(&conn);
                    (was, set.is_empty())
                }
                None => (false, false),
            }
        };
        if was && now_empty {
            self.lost_last_subscriber(thread).await;
        }
        was
    }

    async fn lost_last_subscriber(&self, thread: &ThreadId) {
        let state = self
            .threads
            .lock()
            .await
            .get(thread)
            .map(|e| Arc::clone(&e.state));
        if let Some(state) = state {
            state.lock().await.no_subscribers_since = Some(Instant::now());
            self.schedule_unload(thread).await;
        }
    }

    /// Starts a watcher that unloads the thread once it has been unsubscribed and idle for the
    /// delay.
    async fn schedule_unload(&self, thread: &ThreadId) {
        let Some(state) = self
            .threads
            .lock()
            .await
            .get(thread)
            .map(|e| Arc::clone(&e.state))
        else {
            return;
        };
        let generation = {
            let mut st = state.lock().await;
            st.unload_generation += 1;
            st.unload_generation
        };
        let host = self.clone();
        let thread = thread.clone();
        tokio::spawn(async move {
            loop {
                let target = {
                    let st = state.lock().await;
                    if st.unload_generation != generation {
                        return;
                    }
                    match (st.no_subscribers_since, st.inactive_since) {
                        (Some(a), Some(b)) => a.max(b) + host.unload_delay,
                        _ => return,
                    }
                };
                if Instant::now() < target {
                    tokio::time::sleep_until(target).await;
                    continue;
                }
                // Check ...
                let subscribed = host
                    .subscriptions
                    .lock()
                    .await
                    .get(&thread)
                    .is_some_and(|s| !s.is_empty());
                if subscribed {
                    return;
                }
                // ... then act, under other locks (the window Codex PR 31392 closed).
                host.pending_unloads.lock().await.insert(thread.clone());
                let entry = host.threads.lock().await.remove(&thread);
                host.subscriptions.lock().await.remove(&thread);
                if let Some(e) = entry {
                    e.listener.abort();
                }
                host.broadcast(Notification::ThreadStatusChanged {
                    thread_id: thread.clone(),
                    status: ThreadStatus::NotLoaded,
                })
                .await;
                host.broadcast(Notification::ThreadClosed {
                    thread_id: thread.clone(),
                })
                .await;
                host.pending_unloads.lock().await.remove(&thread);
                return;
            }
        });
    }
}

fn uuid_like() -> String {
    ThreadId::new().to_string()
}
