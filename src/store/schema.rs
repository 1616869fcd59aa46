//! The database schema and its migrations.
//!
//! The schema version lives in `PRAGMA user_version`. [`MIGRATIONS`] is ordered: entry `i`
//! takes a database from version `i` to `i + 1`. A migration, once released, is never edited:
//! a change is a new entry at the end, so every database ever written can be brought forward.
//! A database whose version is higher than `MIGRATIONS.len()` was written by a newer threadhost
//! and is refused rather than misread.

use rusqlite::{Connection, TransactionBehavior};

use super::DbError;

/// Version 1: threads, their turns and items, the latest usage and the goal.
///
/// JSON columns hold the serde form of the `threadhost-actors` model types, so adding an
/// optional field to a model type needs no migration. Tables other than `threads` are
/// `WITHOUT ROWID`: their primary key is the order they are read in, so a load is one range
/// scan per table.
const V1: &str = "
CREATE TABLE threads (
    id          TEXT PRIMARY KEY NOT NULL,
    preview     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    model       TEXT NOT NULL,
    cwd         TEXT NOT NULL,
    raw_events  INTEGER NOT NULL,
    last_status TEXT
);
CREATE INDEX threads_by_created ON threads (created_at, id);
CREATE INDEX threads_by_updated ON threads (updated_at, id);

CREATE TABLE turns (
    thread_id    TEXT NOT NULL REFERENCES threads (id),
    seq          INTEGER NOT NULL,
    id           TEXT NOT NULL,
    status       TEXT NOT NULL,
    error        TEXT,
    started_at   INTEGER,
    completed_at INTEGER,
    duration_ms  INTEGER,
    PRIMARY KEY (thread_id, seq),
    UNIQUE (thread_id, id)
) WITHOUT ROWID;

CREATE TABLE items (
    thread_id TEXT NOT NULL,
    turn_id   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    item      TEXT NOT NULL,
    PRIMARY KEY (thread_id, turn_id, seq),
    FOREIGN KEY (thread_id, turn_id) REFERENCES turns (thread_id, id)
) WITHOUT ROWID;

CREATE TABLE usage (
    thread_id TEXT PRIMARY KEY NOT NULL REFERENCES threads (id),
    turn_id   TEXT NOT NULL,
    usage     TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE goals (
    thread_id TEXT PRIMARY KEY NOT NULL REFERENCES threads (id),
    goal      TEXT NOT NULL
) WITHOUT ROWID;
";

/// Every migration, oldest first. The schema version this build writes is its length.
pub(super) const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build reads and writes.
pub(super) fn supported_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Brings the database to [`supported_version`], or refuses a database from a newer threadhost.
///
/// The common case (already current) only reads the version. Otherwise the pending migrations
/// and the new version are applied in one `IMMEDIATE` transaction, so two processes opening the
/// same old file cannot both migrate it, and a crash leaves the old version intact.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let supported = supported_version();
    if check(user_version(conn)?, supported)? == supported {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = check(user_version(&tx)?, supported)?;
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
    }
    tx.commit()?;
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Passes a version this build can bring forward; refuses newer ones, and negative ones (which
/// threadhost never writes).
fn check(found: i64, supported: i64) -> Result<i64, DbError> {
    if found < 0 {
        return Err(DbError::ForeignSchema(found));
    }
    if found > supported {
        return Err(DbError::NewerSchema { found, supported });
    }
    Ok(found)
}
