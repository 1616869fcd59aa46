//! The embedded SQLite store: threadhost's [`ThreadStore`], so threads survive unload and
//! process restart (spec sections 8–10).
//!
//! # Role
//!
//! [`SqliteStore`] is the handle the host gives the runtime. It owns nothing but the sending
//! end of a queue to the store thread, which owns the only connection to
//! `<data_dir>/threadhost.db`: SQLite calls block, and a blocked actor arbiter would stall
//! every thread placed on it. Thread actors and the host talk to the store only through the
//! trait's futures.
//!
//! # State
//!
//! See the `///` on `Db`'s fields: a path (for error messages and reconnects) and the
//! connection, with its cache of prepared statements.
//!
//! # Messages
//!
//! One `Op` per trait method: the writes (`save_turn`, `save_goal`, `save_status`), `Load` and
//! `List`. Each carries a oneshot sender for its reply. The thread takes them in order; each
//! read runs in a transaction of its own, after the writes queued before it are committed.
//!
//! **Group commit.** Writes queued behind each other (up to `MAX_GROUP`) are committed in one
//! transaction, each in a savepoint of its own: one fsync for the group instead of one per
//! write. A write that fails is rolled back to its savepoint and answered with its error; the
//! others are kept. If the group cannot be kept as one (the commit fails, or an error such as a
//! full disk rolls the whole transaction back), nothing of it is kept and each write is tried
//! again alone, so every caller gets the answer it would have had without grouping. When the
//! store keeps up, groups are of one write and nothing changes; when turns finish faster than
//! one fsync each, they share the fsyncs.
//!
//! # Lifecycle
//!
//! [`SqliteStore::open`] opens and migrates the database on the calling thread (so a broken
//! file is reported at start-up, not at the first turn), then starts the store thread with that
//! connection. Dropping the last [`SqliteStore`] closes the queue; the thread then finishes the
//! operations already queued, drops the connection (SQLite checkpoints the WAL) and exits.
//! Nothing is lost by a drop: every write was committed before its future resolved. A panic
//! on the store thread (a bug) drops the replies of the operation at hand (`Closed`) and
//! reconnects; the thread keeps serving.
//!
//! # Guarantees
//!
//! - **Durable when `Ok`.** Writes commit with `synchronous=FULL` before they answer; a write
//!   of a group answers after the group's commit.
//! - **Atomic.** Each write is kept whole or not at all (its own transaction, or its own
//!   savepoint in a group's); a failed one leaves nothing behind.
//! - **Call order.** Operations are applied in the order the trait methods are *called*, not
//!   the order their futures are polled: the operation is queued when the method is called,
//!   and one thread takes the queue in order. So the status saved by an unload is on disk
//!   before a later cold resume's load runs.
//! - **Errors do not stop the store.** Every failure is answered as
//!   [`StoreError::Io`] with the file and what to do; the thread keeps serving.
//! - **Not guaranteed:** that another process is not using the same file. SQLite locking keeps
//!   the file consistent (writers wait up to [`BUSY_TIMEOUT`]), but two hosts on one data
//!   directory would list each other's threads.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

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
    /// The store thread's queue. Every operation is a message on it, so callers never block.
    ops: mpsc::Sender<Op>,
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
    /// migrating an older schema, then starts the store thread.
    ///
    /// It blocks the calling thread while it opens and migrates the file, which is meant for
    /// start-up. It needs no runtime: the store runs on a thread of its own.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] naming the path and what to do when the directory cannot be created,
    /// the file cannot be opened or written, is not a threadhost database, or has a schema
    /// from a newer threadhost, or when the store thread cannot be started.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot create data directory {} ({e}); create it or choose another data \
                 directory",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        let conn = connect(&path).map_err(|e| e.describe(&path, "opening the database"))?;
        let (ops, queue) = mpsc::channel();
        let db = Db {
            path: path.clone(),
            conn: Some(conn),
        };
        std::thread::Builder::new()
            .name("threadhost-store".to_owned())
            .spawn(move || db.serve(&queue))
            .map_err(|e| {
                StoreError::Io(format!(
                    "cannot start the store thread for {} ({e}); the system is out of threads \
                     or memory",
                    path.display()
                ))
            })?;
        Ok(Self { ops, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues an operation now and returns a future of its reply. A reply that never comes
    /// (the store thread is gone) is [`StoreError::Closed`].
    fn call<T: Send + 'static>(&self, op: impl FnOnce(Reply<T>) -> Op) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        // A send fails only when the thread is gone; the dropped reply then says Closed.
        let _ = self.ops.send(op(tx));
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
        self.call(|reply| Op::Write(Box::new(Write::Turn { meta, turn, usage }), reply))
    }

    fn save_goal(&self, meta: ThreadMeta, goal: Option<Goal>) -> StoreFuture<()> {
        self.call(|reply| Op::Write(Box::new(Write::Goal { meta, goal }), reply))
    }

    fn save_status(&self, id: ThreadId, status: ThreadStatus) -> StoreFuture<()> {
        self.call(|reply| Op::Write(Box::new(Write::Status { id, status }), reply))
    }

    fn load(&self, id: ThreadId) -> StoreFuture<Option<StoredThread>> {
        self.call(|reply| Op::Load { id, reply })
    }

    fn list(&self, query: ListQuery) -> StoreFuture<ThreadPage> {
        self.call(|reply| Op::List { query, reply })
    }
}

/// Where the store thread sends an answer.
type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Writes the store thread may commit together (one per trait method that writes).
#[derive(Debug)]
enum Write {
    /// A finished turn (see [`ThreadStore::save_turn`]): the thread's row is upserted, the
    /// turn replaces the stored one with its id or is appended, the usage replaces the
    /// stored one when present.
    Turn {
        meta: ThreadMeta,
        turn: Turn,
        usage: Option<UsageRecord>,
    },
    /// A goal set, or cleared with `None` (see [`ThreadStore::save_goal`]).
    Goal {
        meta: ThreadMeta,
        goal: Option<Goal>,
    },
    /// An unloaded thread's status (see [`ThreadStore::save_status`]); only an existing row
    /// is updated.
    Status { id: ThreadId, status: ThreadStatus },
}

impl Write {
    /// What it does, for error messages.
    fn doing(&self) -> String {
        match self {
            Self::Turn { meta, turn, .. } => {
                format!("saving turn {} of thread {}", turn.id, meta.id)
            }
            Self::Goal { meta, .. } => format!("saving the goal of thread {}", meta.id),
            Self::Status { id, .. } => format!("saving the status of thread {id}"),
        }
    }

    /// Applies it inside the caller's transaction.
    fn apply(&self, conn: &Connection) -> Result<(), DbError> {
        match self {
            Self::Turn { meta, turn, usage } => save_turn(conn, meta, turn, usage.as_ref()),
            Self::Goal { meta, goal } => save_goal(conn, meta, goal.as_ref()),
            Self::Status { id, status } => {
                let status = encode(status, "thread status")?;
                conn.prepare_cached("UPDATE threads SET last_status = ?2 WHERE id = ?1")?
                    .execute(params![id.as_str(), status])?;
                Ok(())
            }
        }
    }
}

/// What the store thread is asked to do.
#[derive(Debug)]
enum Op {
    /// A write, answered once it is committed (boxed: a turn is large, a read is small).
    Write(Box<Write>, Reply<()>),
    /// Reads a whole thread (see [`ThreadStore::load`]).
    Load {
        id: ThreadId,
        reply: Reply<Option<StoredThread>>,
    },
    /// Lists threads (see [`ThreadStore::list`]).
    List {
        query: ListQuery,
        reply: Reply<ThreadPage>,
    },
    /// Runs raw SQL on the connection, alone, so tests can reach states (a full database)
    /// that a test machine cannot produce for real.
    #[cfg(test)]
    Exec { sql: String, reply: Reply<()> },
    /// Panics on the store thread, so tests can see it recover.
    #[cfg(test)]
    Panic(Reply<()>),
}

/// The most writes one commit takes: a bound on how long the first of them waits.
const MAX_GROUP: usize = 32;

/// A write and where its answer goes.
type Queued = (Write, Reply<()>);

/// Owns the connection; runs on the store thread.
struct Db {
    /// The database file: named in every error message, and reopened if `conn` is missing.
    path: PathBuf,
    /// The connection, with its prepared-statement cache. `None` after a failed reconnect or
    /// a panic; the next operation reconnects.
    conn: Option<Connection>,
}

impl Db {
    /// The store thread: takes operations in call order until every [`SqliteStore`] handle is
    /// dropped and the queue is empty, then drops the connection (SQLite checkpoints the WAL).
    ///
    /// Writes queued behind each other are committed together: one transaction and one fsync
    /// for the group, each write in a savepoint of its own, so a write that fails is undone
    /// alone and answered with its error. Every write of a group is answered after the
    /// commit, so `Ok` still means durable. A read ends a group (it runs after the writes
    /// queued before it are committed), and so does a test's `Exec`.
    fn serve(mut self, queue: &mpsc::Receiver<Op>) {
        let mut next = None;
        loop {
            let op = match next.take() {
                Some(op) => op,
                None => match queue.recv() {
                    Ok(op) => op,
                    Err(_) => return, // every handle dropped, everything answered
                },
            };
            let run = std::panic::AssertUnwindSafe(|| match op {
                Op::Write(write, reply) => {
                    let mut group = vec![(*write, reply)];
                    while group.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(Op::Write(write, reply)) => group.push((*write, reply)),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write(group);
                }
                Op::Load { id, reply } => {
                    if reply.is_closed() {
                        return; // nobody waits for it; reading it would only delay the rest
                    }
                    let doing = format!("loading thread {id}");
                    let _ = reply.send(self.run(&doing, |conn| load(conn, &id)));
                }
                Op::List { query, reply } => {
                    if reply.is_closed() {
                        return;
                    }
                    let _ = reply.send(self.run("listing threads", |conn| list(conn, &query)));
                }
                #[cfg(test)]
                Op::Exec { sql, reply } => {
                    let result = self.run("running test sql", |conn| Ok(conn.execute_batch(&sql)?));
                    let _ = reply.send(result);
                }
                #[cfg(test)]
                Op::Panic(_reply) => panic!("test: a panic on the store thread"),
            });
            if std::panic::catch_unwind(run).is_err() {
                // A bug; the callers of the operation get `Closed` (their replies dropped).
                // Start over on a fresh connection rather than trust the old one's state.
                tracing::error!(path = %self.path.display(), "the store thread panicked; reconnecting");
                self.conn = None;
            }
        }
    }

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

    /// Commits a group of writes and answers each. If the group cannot be committed as one
    /// (the commit fails, or a failing write takes the whole transaction down with it, as
    /// SQLite does on a full disk), nothing of it is kept and each write is tried alone.
    fn write(&mut self, group: Vec<Queued>) {
        if group.len() > 1 {
            if let Ok(Some(results)) =
                self.run("committing writes", |conn| Ok(group_commit(conn, &group)))
            {
                for ((_, reply), result) in group.into_iter().zip(results) {
                    let _ = reply.send(result.map_err(|(e, doing)| e.describe(&self.path, &doing)));
                }
                return;
            }
        }
        for (write, reply) in group {
            let result = self.run(&write.doing(), |conn| {
                let tx = conn.transaction()?;
                write.apply(&tx)?;
                tx.commit()?;
                Ok(())
            });
            // A caller that gave up (timed out) no longer listens; the write stands anyway.
            let _ = reply.send(result);
        }
    }
}

/// The outcome of one write of a group: its error and what it was doing.
type GroupResult = Result<(), (DbError, String)>;

/// Applies `group` in one transaction, each write in a savepoint, and commits. `None` when the
/// group could not be kept as one: the transaction is then rolled back, nothing is kept.
fn group_commit(conn: &Connection, group: &[Queued]) -> Option<Vec<GroupResult>> {
    conn.execute_batch("BEGIN IMMEDIATE").ok()?;
    let mut results = Vec::with_capacity(group.len());
    for (write, _) in group {
        let applied = conn
            .execute_batch("SAVEPOINT write")
            .map_err(DbError::from)
            .and_then(|()| write.apply(conn));
        let undone = match &applied {
            Ok(()) => conn.execute_batch("RELEASE write"),
            // Some errors (a full disk, I/O) roll the whole transaction back by themselves.
            Err(_) if conn.is_autocommit() => return None,
            Err(_) => conn.execute_batch("ROLLBACK TO write; RELEASE write"),
        };
        if undone.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            return None;
        }
        results.push(applied.map_err(|e| (e, write.doing())));
    }
    if conn.execute_batch("COMMIT").is_err() {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return None;
    }
    Some(results)
}

/// What can go wrong on the store thread. Turned into a [`StoreError`] with the path and
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

/// Writes a finished turn; inside the caller's transaction.
fn save_turn(
    conn: &Connection,
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
    upsert_thread(conn, meta)?;
    // A known id keeps its place (its seq); a new one goes after the last turn.
    conn.prepare_cached(
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
    conn.prepare_cached("DELETE FROM items WHERE thread_id = ?1 AND turn_id = ?2")?
        .execute(params![id, turn.id])?;
    {
        let mut insert = conn.prepare_cached(
            "INSERT INTO items (thread_id, turn_id, seq, item) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (seq, item) in (0_i64..).zip(&turn.items) {
            insert.execute(params![id, turn.id, seq, encode(item, "thread item")?])?;
        }
    }
    if let Some(usage) = usage {
        conn.prepare_cached(
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
    Ok(())
}

/// Sets or clears a goal; inside the caller's transaction.
fn save_goal(conn: &Connection, meta: &ThreadMeta, goal: Option<&Goal>) -> Result<(), DbError> {
    let id = meta.id.as_str();
    upsert_thread(conn, meta)?;
    match goal {
        Some(goal) => {
            conn.prepare_cached(
                "INSERT INTO goals (thread_id, goal) VALUES (?1, ?2)
                 ON CONFLICT (thread_id) DO UPDATE SET goal = excluded.goal",
            )?
            .execute(params![id, encode(goal, "goal")?])?;
        }
        None => {
            conn.prepare_cached("DELETE FROM goals WHERE thread_id = ?1")?
                .execute([id])?;
        }
    }
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
