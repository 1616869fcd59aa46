//! The embedded SQLite store: threadhost's [`ThreadStore`], so threads survive unload and
//! process restart (spec sections 8–10).
//!
//! # Role
//!
//! [`SqliteStore`] is the handle the host gives the runtime. It owns nothing but the address of
//! one `DbActor`, which owns the only connection to `<data_dir>/threadhost.db` and runs on an
//! actix [`SyncArbiter`] thread of its own: SQLite calls block, and a blocked actor arbiter
//! would stall every thread placed on it. Thread actors and the host talk to the store only
//! through the trait's futures.
//!
//! # State
//!
//! See the `///` on `DbActor`'s fields: a path (for error messages and reconnects) and the
//! connection, with its cache of prepared statements.
//!
//! # Messages
//!
//! One per trait method: `SaveTurn`, `SaveGoal`, `SaveStatus`, `Load`, `List`. Each
//! carries a oneshot sender for its reply; the handler runs the whole operation, in one
//! transaction, before it takes the next message, so operations never interleave.
//!
//! # Lifecycle
//!
//! [`SqliteStore::open`] opens and migrates the database on the calling thread (so a broken
//! file is reported at start-up, not at the first turn), then starts the arbiter with that
//! connection. Dropping the last [`SqliteStore`] closes the mailbox; the arbiter thread then
//! finishes the messages already queued, drops the connection (SQLite checkpoints the WAL) and
//! exits. Nothing is lost by a drop: every write was committed before its future resolved.
//!
//! # Guarantees
//!
//! - **Durable when `Ok`.** Writes commit with `synchronous=FULL` before they answer.
//! - **Atomic.** Each operation is one transaction; a failed one leaves nothing behind.
//! - **Call order.** Operations are applied in the order the trait methods are *called*, not
//!   the order their futures are polled: the message is queued when the method is called
//!   (`do_send`, which ignores mailbox capacity), and one thread handles the queue in order.
//!   So the status saved by an unload is on disk before a later cold resume's load runs.
//! - **Errors do not stop the store.** Every failure is answered as
//!   [`StoreError::Io`] with the file and what to do; the actor keeps serving.
//! - **Not guaranteed:** that another process is not using the same file. SQLite locking keeps
//!   the file consistent (writers wait up to [`BUSY_TIMEOUT`]), but two hosts on one data
//!   directory would list each other's threads.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use actix::{Actor, Addr, Handler, Message, SyncArbiter, SyncContext};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use threadhost_actors::{
    Goal, ListQuery, SortKey, StoreError, StoreFuture, StoredThread, ThreadId, ThreadMeta,
    ThreadPage, ThreadStatus, ThreadStore, Turn, TurnStatus, UsageRecord,
};
use tokio::sync::oneshot;

mod schema;
#[cfg(test)]
mod tests;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "threadhost.db";

/// How long a statement waits for another connection's lock before failing with "locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection: the fixed statements plus the eight `list`
/// variants, with room to spare.
const STATEMENT_CACHE: usize = 32;

/// threadhost's embedded SQLite [`ThreadStore`]. Cheap to share behind an `Arc`; see the
/// module docs for what it guarantees.
pub struct SqliteStore {
    /// The database actor. Every operation is a message to it, so callers never block.
    addr: Addr<DbActor>,
    /// `<data_dir>/threadhost.db`, for [`SqliteStore::path`] and `Debug`.
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens `<data_dir>/threadhost.db`, creating the directory and the file if missing and
    /// migrating an older schema, then starts the database actor.
    ///
    /// Must be called inside a running actix `System` (e.g. in `#[actix::main]`), because the
    /// actor runs on a [`SyncArbiter`]; outside one it returns an error instead. It blocks the
    /// calling thread while it opens and migrates the file, which is meant for start-up.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] naming the path and what to do when the directory cannot be created,
    /// the file cannot be opened or written, is not a threadhost database, or has a schema
    /// from a newer threadhost.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        if actix::System::try_current().is_none() {
            return Err(StoreError::Io(
                "SqliteStore::open needs a running actix system; open the store inside \
                 actix::System::new().block_on or #[actix::main]"
                    .to_owned(),
            ));
        }
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot create data directory {} ({e}); create it or choose another data \
                 directory",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        let conn = connect(&path).map_err(|e| e.describe(&path, "opening the database"))?;
        // The factory is `Fn` and may be called again if the arbiter restarts the actor; the
        // first call takes the connection opened above, a later one reconnects lazily.
        let first = Mutex::new(Some(conn));
        let actor_path = path.clone();
        let addr = SyncArbiter::start(1, move || DbActor {
            path: actor_path.clone(),
            conn: first.lock().unwrap_or_else(PoisonError::into_inner).take(),
        });
        Ok(Self { addr, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a message now and returns a future of its reply. A reply that never comes (the
    /// actor is gone) is [`StoreError::Closed`].
    fn call<M, T>(&self, message: impl FnOnce(Reply<T>) -> M) -> StoreFuture<T>
    where
        M: Message<Result = ()> + Send + 'static,
        DbActor: Handler<M>,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.addr.do_send(message(tx));
        Box::pin(async move { rx.await.unwrap_or(Err(StoreError::Closed)) })
    }
}

impl ThreadStore for SqliteStore {
    fn save_turn(
        &self,
        meta: ThreadMeta,
        turn: Turn,
        usage: Option<UsageRecord>,
    ) -> StoreFuture<()> {
        self.call(|reply| SaveTurn {
            meta,
            turn,
            usage,
            reply,
        })
    }

    fn save_goal(&self, meta: ThreadMeta, goal: Option<Goal>) -> StoreFuture<()> {
        self.call(|reply| SaveGoal { meta, goal, reply })
    }

    fn save_status(&self, id: ThreadId, status: ThreadStatus) -> StoreFuture<()> {
        self.call(|reply| SaveStatus { id, status, reply })
    }

    fn load(&self, id: ThreadId) -> StoreFuture<Option<StoredThread>> {
        self.call(|reply| Load { id, reply })
    }

    fn list(&self, query: ListQuery) -> StoreFuture<ThreadPage> {
        self.call(|reply| List { query, reply })
    }
}

/// Where a handler sends its answer.
type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Owns the connection and runs every operation on its [`SyncArbiter`] thread.
struct DbActor {
    /// The database file: named in every error message, and reopened if `conn` is missing.
    path: PathBuf,
    /// The connection, with its prepared-statement cache. `None` only if the arbiter rebuilt
    /// the actor; the next message reconnects.
    conn: Option<Connection>,
}

impl fmt::Debug for DbActor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbActor")
            .field("path", &self.path)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Actor for DbActor {
    type Context = SyncContext<Self>;
}

impl DbActor {
    /// Runs `op` on the connection (reconnecting if needed) and turns a failure into a
    /// [`StoreError`] that says what was being done.
    fn run<T>(
        &mut self,
        doing: &str,
        op: impl FnOnce(&mut Connection) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.path).map_err(|e| e.describe(&self.path, doing))?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Closed);
        };
        op(conn).map_err(|e| e.describe(&self.path, doing))
    }
}

/// Records a finished turn (see [`ThreadStore::save_turn`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct SaveTurn {
    /// Upserted into `threads`.
    meta: ThreadMeta,
    /// Replaces the stored turn with the same id, or is appended.
    turn: Turn,
    /// Replaces the stored usage when present.
    usage: Option<UsageRecord>,
    /// Answered once committed.
    reply: Reply<()>,
}

impl Handler<SaveTurn> for DbActor {
    type Result = ();

    fn handle(&mut self, msg: SaveTurn, _: &mut SyncContext<Self>) {
        let doing = format!("saving turn {} of thread {}", msg.turn.id, msg.meta.id);
        let result = self.run(&doing, |conn| {
            save_turn(conn, &msg.meta, &msg.turn, msg.usage.as_ref())
        });
        // A caller that gave up (timed out) no longer listens; the write stands anyway.
        let _ = msg.reply.send(result);
    }
}

/// Sets or clears a goal (see [`ThreadStore::save_goal`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct SaveGoal {
    /// Upserted into `threads`.
    meta: ThreadMeta,
    /// `None` deletes the goal.
    goal: Option<Goal>,
    /// Answered once committed.
    reply: Reply<()>,
}

impl Handler<SaveGoal> for DbActor {
    type Result = ();

    fn handle(&mut self, msg: SaveGoal, _: &mut SyncContext<Self>) {
        let doing = format!("saving the goal of thread {}", msg.meta.id);
        let result = self.run(&doing, |conn| save_goal(conn, &msg.meta, msg.goal.as_ref()));
        let _ = msg.reply.send(result);
    }
}

/// Records an unloaded thread's status (see [`ThreadStore::save_status`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct SaveStatus {
    /// Only an existing row is updated.
    id: ThreadId,
    /// Stored as JSON.
    status: ThreadStatus,
    /// Answered once committed.
    reply: Reply<()>,
}

impl Handler<SaveStatus> for DbActor {
    type Result = ();

    fn handle(&mut self, msg: SaveStatus, _: &mut SyncContext<Self>) {
        let doing = format!("saving the status of thread {}", msg.id);
        let result = self.run(&doing, |conn| {
            let status = encode(&msg.status, "thread status")?;
            conn.prepare_cached("UPDATE threads SET last_status = ?2 WHERE id = ?1")?
                .execute(params![msg.id.as_str(), status])?;
            Ok(())
        });
        let _ = msg.reply.send(result);
    }
}

/// Reads a whole thread (see [`ThreadStore::load`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Load {
    /// The thread.
    id: ThreadId,
    /// Gets the thread, or `None` if it has no row.
    reply: Reply<Option<StoredThread>>,
}

impl Handler<Load> for DbActor {
    type Result = ();

    fn handle(&mut self, msg: Load, _: &mut SyncContext<Self>) {
        if msg.reply.is_closed() {
            return; // Nobody waits for it; reading it would only delay the next message.
        }
        let doing = format!("loading thread {}", msg.id);
        let result = self.run(&doing, |conn| load(conn, &msg.id));
        let _ = msg.reply.send(result);
    }
}

/// Lists threads (see [`ThreadStore::list`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct List {
    /// Filters, order, page size and cursor.
    query: ListQuery,
    /// Gets one page.
    reply: Reply<ThreadPage>,
}

impl Handler<List> for DbActor {
    type Result = ();

    fn handle(&mut self, msg: List, _: &mut SyncContext<Self>) {
        if msg.reply.is_closed() {
            return;
        }
        let result = self.run("listing threads", |conn| list(conn, &msg.query));
        let _ = msg.reply.send(result);
    }
}

/// Runs raw SQL on the actor's connection, so tests can reach states (a full database) that a
/// test machine cannot produce for real.
#[cfg(test)]
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Exec {
    /// Statements to run.
    sql: String,
    /// Answered when they ran.
    reply: Reply<()>,
}

#[cfg(test)]
impl Handler<Exec> for DbActor {
    type Result = ();

    fn handle(&mut self, msg: Exec, _: &mut SyncContext<Self>) {
        let result = self.run("running test sql", |conn| Ok(conn.execute_batch(&msg.sql)?));
        let _ = msg.reply.send(result);
    }
}

/// What can go wrong inside the database actor. Turned into a [`StoreError`] with the path and
/// the operation by [`DbError::describe`], the one place that words store errors.
#[derive(Debug, thiserror::Error)]
enum DbError {
    /// SQLite refused or failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON value does not parse as the model type.
    #[error("unreadable {what}: {source}")]
    Decode {
        /// Which value.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// A model value did not serialize (a bug: the model types always do).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// Which value.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// A stored turn status this build does not know.
    #[error("unknown turn status {0:?}")]
    UnknownTurnStatus(String),
    /// The file was written by a newer threadhost.
    #[error("schema version {found} is newer than {supported}")]
    NewerSchema {
        /// `user_version` in the file.
        found: i64,
        /// What this build knows.
        supported: i64,
    },
    /// A `user_version` threadhost never writes.
    #[error("foreign schema version {0}")]
    ForeignSchema(i64),
    /// A `thread/list` cursor that this store did not hand out for this sort.
    #[error("invalid cursor {0:?}")]
    BadCursor(String),
    /// A sort key added to the runtime that this store does not know yet.
    #[error("unsupported sort key {0}")]
    UnsupportedSort(String),
}

impl DbError {
    /// The user-facing error: what failed, in which file, and what to do about it.
    fn describe(self, path: &Path, doing: &str) -> StoreError {
        let path = path.display();
        match self {
            Self::BadCursor(cursor) => {
                return StoreError::InvalidQuery(format!(
                    "cursor: invalid thread/list cursor {cursor:?}; pass the nextCursor of a \
                     previous page with the same sort, or no cursor to start over"
                ))
            }
            Self::UnsupportedSort(key) => {
                return StoreError::InvalidQuery(format!(
                    "sortKey: thread/list cannot sort by {key} yet; sort by createdAt or updatedAt"
                ))
            }
            _ => {}
        }
        StoreError::Io(match self {
            Self::Sqlite(e) => match e.sqlite_error_code() {
                Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => format!(
                    "database file {path} is not a valid threadhost database ({e}); move it \
                     away to start fresh"
                ),
                Some(ErrorCode::DiskFull) => format!(
                    "database {path} is full while {doing} ({e}); free disk space and retry"
                ),
                Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
                    format!(
                        "cannot open or write database {path} while {doing} ({e}); make the \
                         data directory and the file writable by this user, or choose another \
                         data directory"
                    )
                }
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
                    "database {path} is locked by another process while {doing} ({e}); stop \
                     the other program using this data directory and retry"
                ),
                _ => format!(
                    "database {path} failed while {doing} ({e}); check the disk and the file, \
                     then retry"
                ),
            },
            Self::Decode { .. } | Self::UnknownTurnStatus(_) => format!(
                "database {path} holds an {self} while {doing}; it was written by a newer \
                 threadhost or edited by hand: upgrade threadhost or move the file away"
            ),
            Self::Encode { .. } => {
                format!("{self} while {doing}; this is a threadhost bug, please report it")
            }
            Self::NewerSchema { found, supported } => format!(
                "database schema version {found} in {path} is newer than this threadhost \
                 supports ({supported}); upgrade threadhost"
            ),
            Self::ForeignSchema(version) => format!(
                "database file {path} is not a valid threadhost database (schema version \
                 {version}); move it away to start fresh"
            ),
            // Answered as invalid queries above; kept here so the match stays exhaustive.
            Self::BadCursor(cursor) => format!("invalid thread/list cursor {cursor:?}"),
            Self::UnsupportedSort(key) => format!("thread/list cannot sort by {key}"),
        })
    }
}

/// Opens the file and sets the connection up: WAL, durability, locking, foreign keys, schema.
fn connect(path: &Path) -> Result<Connection, DbError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The first statement that reads the file: a file that is not SQLite fails here (NOTADB).
    // WAL lets readers of other processes (backups, `sqlite3`) run beside our writer.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "sqlite refused WAL mode; the store works but readers block writers");
    }
    // FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and the
    // trait promises a save is durable when it answers Ok. The cost is one fsync per save,
    // which is small next to a turn.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    schema::migrate(&mut conn)?;
    Ok(conn)
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|source| DbError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(json: &str, what: &'static str) -> Result<T, DbError> {
    serde_json::from_str(json).map_err(|source| DbError::Decode { what, source })
}

/// Inserts the thread's row or refreshes its metadata; `last_status` is left as it is.
fn upsert_thread(conn: &Connection, meta: &ThreadMeta) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO threads (id, preview, created_at, updated_at, model, cwd, raw_events)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET
             preview = excluded.preview,
             created_at = excluded.created_at,
             updated_at = excluded.updated_at,
             model = excluded.model,
             cwd = excluded.cwd,
             raw_events = excluded.raw_events",
    )?
    .execute(params![
        meta.id.as_str(),
        meta.preview,
        meta.created_at,
        meta.updated_at,
        meta.model,
        meta.cwd,
        meta.raw_events,
    ])?;
    Ok(())
}

fn save_turn(
    conn: &mut Connection,
    meta: &ThreadMeta,
    turn: &Turn,
    usage: Option<&UsageRecord>,
) -> Result<(), DbError> {
    let id = meta.id.as_str();
    let error = turn
        .error
        .as_ref()
        .map(|e| encode(e, "turn error"))
        .transpose()?;
    let tx = conn.transaction()?;
    upsert_thread(&tx, meta)?;
    // A known id keeps its place (its seq); a new one goes after the last turn.
    tx.prepare_cached(
        "INSERT INTO turns (thread_id, seq, id, status, error, started_at, completed_at, duration_ms)
         VALUES (?1, (SELECT COALESCE(MAX(seq) + 1, 0) FROM turns WHERE thread_id = ?1),
                 ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (thread_id, id) DO UPDATE SET
             status = excluded.status,
             error = excluded.error,
             started_at = excluded.started_at,
             completed_at = excluded.completed_at,
             duration_ms = excluded.duration_ms",
    )?
    .execute(params![
        id,
        turn.id,
        turn.status.as_str(),
        error,
        turn.started_at,
        turn.completed_at,
        turn.duration_ms,
    ])?;
    tx.prepare_cached("DELETE FROM items WHERE thread_id = ?1 AND turn_id = ?2")?
        .execute(params![id, turn.id])?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO items (thread_id, turn_id, seq, item) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (seq, item) in (0_i64..).zip(&turn.items) {
            insert.execute(params![id, turn.id, seq, encode(item, "thread item")?])?;
        }
    }
    if let Some(usage) = usage {
        tx.prepare_cached(
            "INSERT INTO usage (thread_id, turn_id, usage) VALUES (?1, ?2, ?3)
             ON CONFLICT (thread_id) DO UPDATE SET
                 turn_id = excluded.turn_id, usage = excluded.usage",
        )?
        .execute(params![
            id,
            usage.turn_id,
            encode(&usage.usage, "token usage")?
        ])?;
    }
    tx.commit()?;
    Ok(())
}

fn save_goal(conn: &mut Connection, meta: &ThreadMeta, goal: Option<&Goal>) -> Result<(), DbError> {
    let id = meta.id.as_str();
    let tx = conn.transaction()?;
    upsert_thread(&tx, meta)?;
    match goal {
        Some(goal) => {
            tx.prepare_cached(
                "INSERT INTO goals (thread_id, goal) VALUES (?1, ?2)
                 ON CONFLICT (thread_id) DO UPDATE SET goal = excluded.goal",
            )?
            .execute(params![id, encode(goal, "goal")?])?;
        }
        None => {
            tx.prepare_cached("DELETE FROM goals WHERE thread_id = ?1")?
                .execute([id])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Reads the thread in one read transaction: its row, its turns in order, then every item of
/// the thread in one range scan of the items key, handed to their turns as they stream by.
fn load(conn: &mut Connection, id: &ThreadId) -> Result<Option<StoredThread>, DbError> {
    let tx = conn.transaction()?;
    let row = tx
        .prepare_cached(
            "SELECT preview, created_at, updated_at, model, cwd, raw_events, last_status
             FROM threads WHERE id = ?1",
        )?
        .query_row([id.as_str()], |r| {
            let meta = ThreadMeta {
                id: id.clone(),
                preview: r.get(0)?,
                created_at: r.get(1)?,
                updated_at: r.get(2)?,
                model: r.get(3)?,
                cwd: r.get(4)?,
                raw_events: r.get(5)?,
                ephemeral: false,
            };
            Ok((meta, r.get::<_, Option<String>>(6)?))
        })
        .optional()?;
    let Some((meta, last_status)) = row else {
        return Ok(None);
    };
    let last_status = last_status
        .map(|s| decode(&s, "thread status"))
        .transpose()?;

    let mut turns = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT id, status, error, started_at, completed_at, duration_ms
             FROM turns WHERE thread_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([id.as_str()])?;
        while let Some(r) = rows.next()? {
            let turn_id: String = r.get(0)?;
            let status: String = r.get(1)?;
            let error: Option<String> = r.get(2)?;
            position.insert(turn_id.clone(), turns.len());
            turns.push(Turn {
                id: turn_id,
                items: Vec::new(),
                status: TurnStatus::parse(&status).ok_or(DbError::UnknownTurnStatus(status))?,
                error: error.map(|e| decode(&e, "turn error")).transpose()?,
                started_at: r.get(3)?,
                completed_at: r.get(4)?,
                duration_ms: r.get(5)?,
            });
        }
    }
    {
        // Ordered by the primary key, so rows of one turn come together: look the turn up
        // only when the turn id changes.
        let mut stmt = tx.prepare_cached(
            "SELECT turn_id, item FROM items WHERE thread_id = ?1 ORDER BY turn_id, seq",
        )?;
        let mut rows = stmt.query([id.as_str()])?;
        let mut current: Option<(String, usize)> = None;
        while let Some(r) = rows.next()? {
            let turn_id = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            let index = match &current {
                Some((cur, index)) if cur == turn_id => *index,
                _ => {
                    // The foreign key guarantees the turn exists; skip rather than panic if a
                    // hand-edited file broke it.
                    let Some(&index) = position.get(turn_id) else {
                        continue;
                    };
                    current = Some((turn_id.to_owned(), index));
                    index
                }
            };
            let item = decode(
                r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?,
                "thread item",
            )?;
            if let Some(turn) = turns.get_mut(index) {
                turn.items.push(item);
            }
        }
    }
    let usage = tx
        .prepare_cached("SELECT turn_id, usage FROM usage WHERE thread_id = ?1")?
        .query_row([id.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?
        .map(|(turn_id, usage)| {
            Ok::<_, DbError>(UsageRecord {
                turn_id,
                usage: decode(&usage, "token usage")?,
            })
        })
        .transpose()?;
    let goal = tx
        .prepare_cached("SELECT goal FROM goals WHERE thread_id = ?1")?
        .query_row([id.as_str()], |r| r.get::<_, String>(0))
        .optional()?
        .map(|g| decode(&g, "goal"))
        .transpose()?;
    tx.commit()?;
    Ok(Some(StoredThread {
        meta,
        turns,
        usage,
        goal,
        last_status,
    }))
}

/// One page of threads that have at least one turn.
///
/// The order is `(sort key, id)`, both ascending or both descending, served by an index on
/// exactly that pair. The cursor is a keyset cursor: the sort key and id of the last row
/// handed out, plus the sort it belongs to (`<key><dir>:<value>:<id>`, e.g. `ud:1700000000:…`),
/// so a page never repeats or skips a thread however many threads are added before it. The
/// search term is matched in Rust with Unicode lowercasing (SQLite's `lower` is ASCII-only),
/// on rows streamed in order, stopping one row after the page is full.
fn list(conn: &Connection, query: &ListQuery) -> Result<ThreadPage, DbError> {
    let (column, key) = match query.sort_key {
        SortKey::CreatedAt => ("created_at", 'c'),
        SortKey::UpdatedAt => ("updated_at", 'u'),
        other => return Err(DbError::UnsupportedSort(format!("{other:?}"))),
    };
    let (order, cmp, dir) = if query.ascending {
        ("ASC", ">", 'a')
    } else {
        ("DESC", "<", 'd')
    };
    let after = query
        .cursor
        .as_deref()
        .map(|c| parse_cursor(c, key, dir))
        .transpose()?;
    if query.cwd.as_ref().is_some_and(Vec::is_empty) {
        return Ok(ThreadPage::default());
    }
    let cwds = query
        .cwd
        .as_ref()
        .map(|c| encode(c, "cwd filter"))
        .transpose()?;
    let term = query.search_term.as_deref().map(str::to_lowercase);
    let limit = query.limit.max(1);

    let keyset = if after.is_some() {
        format!("AND ({column}, id) {cmp} (?2, ?3)")
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT id, preview, created_at, updated_at, model, cwd, raw_events, {column}
         FROM threads
         WHERE EXISTS (SELECT 1 FROM turns WHERE turns.thread_id = threads.id)
           AND (?1 IS NULL OR cwd IN (SELECT value FROM json_each(?1)))
           {keyset}
         ORDER BY {column} {order}, id {order}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = match &after {
        Some((value, id)) => stmt.query(params![cwds, value, id])?,
        None => stmt.query(params![cwds])?,
    };
    // `limit` comes from the client: do not let it size an allocation.
    let mut data = Vec::with_capacity(limit.min(256));
    let mut last_key = 0_i64;
    let mut more = false;
    while let Some(r) = rows.next()? {
        let preview: String = r.get(1)?;
        if let Some(term) = &term {
            if !preview.to_lowercase().contains(term.as_str()) {
                continue;
            }
        }
        if data.len() == limit {
            more = true;
            break;
        }
        last_key = r.get(7)?;
        data.push(ThreadMeta {
            id: ThreadId::from(r.get::<_, String>(0)?),
            preview,
            created_at: r.get(2)?,
            updated_at: r.get(3)?,
            model: r.get(4)?,
            cwd: r.get(5)?,
            raw_events: r.get(6)?,
            ephemeral: false,
        });
    }
    let next_cursor = match data.last() {
        Some(last) if more => Some(format!("{key}{dir}:{last_key}:{}", last.id)),
        _ => None,
    };
    Ok(ThreadPage { data, next_cursor })
}

/// Splits a cursor made by [`list`] for the same sort into its sort value and id.
fn parse_cursor(cursor: &str, key: char, dir: char) -> Result<(i64, String), DbError> {
    let bad = || DbError::BadCursor(cursor.to_owned());
    let mut parts = cursor.splitn(3, ':');
    let (Some(sort), Some(value), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let mut sort = sort.chars();
    if sort.next() != Some(key) || sort.next() != Some(dir) || sort.next().is_some() {
        return Err(bad());
    }
    Ok((value.parse().map_err(|_| bad())?, id.to_owned()))
}
