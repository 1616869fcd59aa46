//! The `ThreadStore` trait: where threads go when they are not loaded. The actors crate never
//! does I/O itself; the host plugs in a store (threadhost's SQLite store lives in `src/`), and
//! tests use [`MemoryStore`].
//!
//! Futures are `Send` because real stores run their blocking work on other OS threads.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use crate::error::StoreError;
use crate::ids::ThreadId;
use crate::model::{Goal, ThreadMeta, ThreadStatus, TokenUsage, Turn, TurnStatus};

/// A store operation in flight.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Token usage as of one turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The turn that reported it.
    pub turn_id: String,
    /// Totals and last-turn breakdown.
    pub usage: TokenUsage,
}

/// Everything stored of one thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredThread {
    /// Metadata.
    pub meta: ThreadMeta,
    /// Turns, oldest first, with their items.
    pub turns: Vec<Turn>,
    /// Latest token usage.
    pub usage: Option<UsageRecord>,
    /// The goal, if one is set.
    pub goal: Option<Goal>,
    /// Status recorded when the thread last unloaded.
    pub last_status: Option<ThreadStatus>,
}

/// Which field `thread/list` sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SortKey {
    /// Creation time.
    CreatedAt,
    /// Last change.
    #[default]
    UpdatedAt,
}

/// A `thread/list` query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Page size (at least 1).
    pub limit: usize,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
    /// Sort field.
    pub sort_key: SortKey,
    /// Oldest first when true.
    pub ascending: bool,
    /// Substring that the preview must contain.
    pub search_term: Option<String>,
    /// Only threads whose cwd is one of these.
    pub cwd: Option<Vec<String>>,
}

/// A page of thread metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadPage {
    /// The threads.
    pub data: Vec<ThreadMeta>,
    /// Cursor of the next page, if any.
    pub next_cursor: Option<String>,
}

/// Persistent storage of threads.
pub trait ThreadStore: Send + Sync + 'static {
    /// Records a finished turn with its items and the thread's usage as of that turn, and
    /// upserts the metadata. Durable when the future resolves `Ok`.
    fn save_turn(
        &self,
        meta: ThreadMeta,
        turn: Turn,
        usage: Option<UsageRecord>,
    ) -> StoreFuture<()>;

    /// Sets (`Some`) or clears (`None`) the thread's goal, upserting the metadata.
    fn save_goal(&self, meta: ThreadMeta, goal: Option<Goal>) -> StoreFuture<()>;

    /// Records the status a thread had when it unloaded. A thread with no stored row is left
    /// alone (it has no rollout).
    fn save_status(&self, id: ThreadId, status: ThreadStatus) -> StoreFuture<()>;

    /// Loads a thread, or `None` if it was never stored.
    fn load(&self, id: ThreadId) -> StoreFuture<Option<StoredThread>>;

    /// Lists stored threads.
    fn list(&self, query: ListQuery) -> StoreFuture<ThreadPage>;
}

/// An in-memory store for tests and embedding experiments. Keeps everything until dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    threads: Mutex<HashMap<ThreadId, Row>>,
    /// When set, every write fails with this message (to test error paths).
    fail_writes: Mutex<Option<String>>,
}

/// One stored thread, with where each of its turns is: saving a turn is an upsert by id, and
/// must not cost a scan of a long thread's every turn.
#[derive(Debug)]
struct Row {
    thread: StoredThread,
    turn_at: HashMap<String, usize>,
}

impl Row {
    fn upsert_turn(&mut self, turn: Turn) {
        match self.turn_at.get(&turn.id) {
            Some(&i) => self.thread.turns[i] = turn,
            None => {
                self.turn_at
                    .insert(turn.id.clone(), self.thread.turns.len());
                self.thread.turns.push(turn);
            }
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later write fail with `message` (`None` heals it).
    pub fn fail_writes(&self, message: Option<&str>) {
        *lock(&self.fail_writes) = message.map(str::to_owned);
    }

    fn write(
        &self,
        id: &ThreadId,
        meta: Option<ThreadMeta>,
        f: impl FnOnce(&mut Row),
    ) -> Result<(), StoreError> {
        if let Some(msg) = lock(&self.fail_writes).clone() {
            return Err(StoreError::Io(msg));
        }
        let mut threads = lock(&self.threads);
        let entry = match (threads.get_mut(id), meta) {
            (Some(t), Some(meta)) => {
                t.thread.meta = meta;
                t
            }
            (Some(t), None) => t,
            (None, Some(meta)) => threads.entry(id.clone()).or_insert(Row {
                thread: StoredThread {
                    meta,
                    turns: Vec::new(),
                    usage: None,
                    goal: None,
                    last_status: None,
                },
                turn_at: HashMap::new(),
            }),
            (None, None) => return Ok(()),
        };
        f(entry);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ready<T: Send + 'static>(r: Result<T, StoreError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(r))
}

impl ThreadStore for MemoryStore {
    fn save_turn(
        &self,
        meta: ThreadMeta,
        turn: Turn,
        usage: Option<UsageRecord>,
    ) -> StoreFuture<()> {
        let id = meta.id.clone();
        ready(self.write(&id, Some(meta), |t| {
            t.upsert_turn(turn);
            if usage.is_some() {
                t.thread.usage = usage;
            }
        }))
    }

    fn save_goal(&self, meta: ThreadMeta, goal: Option<Goal>) -> StoreFuture<()> {
        let id = meta.id.clone();
        ready(self.write(&id, Some(meta), |t| t.thread.goal = goal))
    }

    fn save_status(&self, id: ThreadId, status: ThreadStatus) -> StoreFuture<()> {
        ready(self.write(&id, None, |t| t.thread.last_status = Some(status)))
    }

    fn load(&self, id: ThreadId) -> StoreFuture<Option<StoredThread>> {
        ready(Ok(lock(&self.threads).get(&id).map(|t| t.thread.clone())))
    }

    fn list(&self, query: ListQuery) -> StoreFuture<ThreadPage> {
        let threads = lock(&self.threads);
        let metas: Vec<ThreadMeta> = threads
            .values()
            .filter(|t| !t.thread.turns.is_empty())
            .map(|t| t.thread.meta.clone())
            .collect();
        drop(threads);
        ready(Ok(page(metas, &query)))
    }
}

/// Filters, sorts and pages metadata in memory; the cursor is the offset. Shared by stores that
/// have no better index.
pub fn page(mut metas: Vec<ThreadMeta>, query: &ListQuery) -> ThreadPage {
    if let Some(term) = &query.search_term {
        let term = term.to_lowercase();
        metas.retain(|m| m.preview.to_lowercase().contains(&term));
    }
    if let Some(cwds) = &query.cwd {
        metas.retain(|m| cwds.contains(&m.cwd));
    }
    let key = |m: &ThreadMeta| match query.sort_key {
        SortKey::CreatedAt => m.created_at,
        SortKey::UpdatedAt => m.updated_at,
    };
    metas.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id)));
    if !query.ascending {
        metas.reverse();
    }
    let start = query
        .cursor
        .as_deref()
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    let limit = query.limit.max(1);
    let data: Vec<ThreadMeta> = metas.iter().skip(start).take(limit).cloned().collect();
    let next = start + data.len();
    ThreadPage {
        next_cursor: (next < metas.len()).then(|| next.to_string()),
        data,
    }
}

/// Turns as a resume reports them: stale `inProgress` turns of a thread that is not active are
/// `interrupted` (spec section 9).
pub fn settle_turns(turns: &mut [Turn]) {
    for t in turns {
        if t.status == TurnStatus::InProgress {
            t.status = TurnStatus::Interrupted;
        }
    }
}
