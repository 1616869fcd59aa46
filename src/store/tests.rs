//! Tests of the SQLite store against real database files in temporary directories.

use std::path::Path;

use rusqlite::Connection;
use tempfile::TempDir;
use threadhost_actors::{
    page, ActiveFlag, CommandExecutionStatus, GoalStatus, ThreadItem, TokenUsage,
    TokenUsageBreakdown, TurnError, UserInput,
};

use super::*;

// ---- helpers ---------------------------------------------------------------------------------

fn tmp() -> TempDir {
    tempfile::tempdir().expect("a temporary directory can be created")
}

fn open(dir: &Path) -> SqliteStore {
    match SqliteStore::open(dir) {
        Ok(store) => store,
        Err(e) => panic!("store in {} should open: {e}", dir.display()),
    }
}

fn open_err(dir: &Path) -> String {
    match SqliteStore::open(dir) {
        Ok(store) => panic!("opening {} should fail, got {store:?}", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn db_path(dir: &Path) -> String {
    dir.join(DB_FILE).display().to_string()
}

fn meta(id: &str, preview: &str, cwd: &str, created_at: i64, updated_at: i64) -> ThreadMeta {
    ThreadMeta {
        id: ThreadId::from(id),
        preview: preview.to_owned(),
        created_at,
        updated_at,
        model: "scripted".to_owned(),
        cwd: cwd.to_owned(),
        raw_events: false,
        ephemeral: false,
    }
}

/// A completed turn: one user message, then `n - 1` items alternating agent messages and
/// command executions.
fn turn(id: &str, n: usize) -> Turn {
    let items = (0..n)
        .map(|i| match i {
            0 => ThreadItem::UserMessage {
                id: format!("{id}-item-0"),
                content: vec![UserInput::text(format!("question of {id}"))],
            },
            i if i % 2 == 1 => ThreadItem::AgentMessage {
                id: format!("{id}-item-{i}"),
                text: format!("answer {i} of {id}, long enough to look like real prose"),
            },
            i => ThreadItem::CommandExecution {
                id: format!("{id}-item-{i}"),
                command: "ls -la".to_owned(),
                cwd: "/work".to_owned(),
                status: CommandExecutionStatus::Completed,
                command_actions: Vec::new(),
                aggregated_output: Some(format!("output {i}")),
                exit_code: Some(0),
                duration_ms: Some(12),
            },
        })
        .collect();
    Turn {
        id: id.to_owned(),
        items,
        status: TurnStatus::Completed,
        error: None,
        started_at: Some(100),
        completed_at: Some(103),
        duration_ms: Some(3000),
    }
}

fn usage(turn_id: &str, total_tokens: i64) -> UsageRecord {
    let b = TokenUsageBreakdown {
        total_tokens,
        input_tokens: total_tokens,
        ..Default::default()
    };
    UsageRecord {
        turn_id: turn_id.to_owned(),
        usage: TokenUsage {
            total: b,
            last: b,
            model_context_window: Some(128_000),
        },
    }
}

fn goal(thread: &str, objective: &str) -> Goal {
    Goal {
        thread_id: ThreadId::from(thread),
        objective: objective.to_owned(),
        status: GoalStatus::Active,
        token_budget: Some(5000),
        tokens_used: 10,
        time_used_seconds: 2,
        created_at: 100,
        updated_at: 101,
    }
}

async fn load(store: &SqliteStore, id: &str) -> Option<StoredThread> {
    match store.load(ThreadId::from(id)).await {
        Ok(t) => t,
        Err(e) => panic!("loading {id} should work: {e}"),
    }
}

async fn save_turn(
    store: &SqliteStore,
    meta: &ThreadMeta,
    turn: &Turn,
    usage: Option<UsageRecord>,
) {
    if let Err(e) = store.save_turn(meta.clone(), turn.clone(), usage).await {
        panic!("saving turn {} should work: {e}", turn.id);
    }
}

async fn list(store: &SqliteStore, query: ListQuery) -> ThreadPage {
    match store.list(query.clone()).await {
        Ok(p) => p,
        Err(e) => panic!("listing with {query:?} should work: {e}"),
    }
}

fn ids(metas: &[ThreadMeta]) -> Vec<String> {
    metas.iter().map(|m| m.id.to_string()).collect()
}

/// Runs SQL on the store thread's own connection (per-connection settings such as
/// `max_page_count`).
async fn exec(store: &SqliteStore, sql: &str) -> Result<(), StoreError> {
    store
        .call(|reply| Op::Exec {
            sql: sql.to_owned(),
            reply,
        })
        .await
}

fn user_version(dir: &Path) -> i64 {
    let conn = Connection::open(dir.join(DB_FILE)).expect("the database file opens");
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version reads")
}

// ---- saving and loading ----------------------------------------------------------------------

#[actix::test]
async fn a_thread_round_trips_with_its_turns_items_usage_goal_and_status() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("t1", "hello there", "/work", 100, 200);
    let first = turn("turn-1", 5);
    let mut failed = turn("turn-2", 2);
    failed.status = TurnStatus::Failed;
    failed.error = Some(TurnError {
        message: "model error".to_owned(),
        additional_details: Some("rate limited".to_owned()),
    });
    save_turn(&store, &m, &first, Some(usage("turn-1", 40))).await;
    save_turn(&store, &m, &failed, Some(usage("turn-2", 90))).await;
    store
        .save_goal(m.clone(), Some(goal("t1", "ship it")))
        .await
        .expect("goal saves");
    let status = ThreadStatus::Active {
        active_flags: vec![ActiveFlag::WaitingOnApproval],
    };
    store
        .save_status(ThreadId::from("t1"), status.clone())
        .await
        .expect("status saves");

    let expected = StoredThread {
        meta: m,
        turns: vec![first, failed],
        usage: Some(usage("turn-2", 90)),
        goal: Some(goal("t1", "ship it")),
        last_status: Some(status),
    };
    assert_eq!(load(&store, "t1").await, Some(expected));
}

#[actix::test]
async fn a_reopened_store_shows_what_was_saved_before_it_was_dropped() {
    let dir = tmp();
    let m = meta("t1", "persist me", "/work", 100, 200);
    let store = open(dir.path());
    save_turn(&store, &m, &turn("turn-1", 3), Some(usage("turn-1", 7))).await;
    store
        .save_goal(m.clone(), Some(goal("t1", "survive")))
        .await
        .expect("goal saves");
    store
        .save_status(ThreadId::from("t1"), ThreadStatus::Idle)
        .await
        .expect("status saves");
    let before = load(&store, "t1").await;
    drop(store);

    let store = open(dir.path());
    let after = load(&store, "t1").await;
    assert!(
        after.is_some(),
        "the thread is still stored after reopening"
    );
    assert_eq!(after, before);
    let listed = list(
        &store,
        ListQuery {
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&listed.data), ["t1"]);
}

#[actix::test]
async fn saving_a_turn_with_a_known_id_replaces_it_in_place() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("t1", "p", "/work", 100, 200);
    let mut running = turn("turn-1", 4);
    running.status = TurnStatus::InProgress;
    save_turn(&store, &m, &running, None).await;
    save_turn(&store, &m, &turn("turn-2", 2), None).await;
    let done = turn("turn-1", 1);
    let m2 = meta("t1", "new preview", "/work", 100, 300);
    save_turn(&store, &m2, &done, None).await;

    let t = load(&store, "t1").await.expect("thread is stored");
    assert_eq!(
        t.turns,
        vec![done, turn("turn-2", 2)],
        "turn-1 keeps its place, with one item"
    );
    assert_eq!(t.meta, m2, "the metadata is the latest saved");
}

#[actix::test]
async fn usage_stays_with_the_latest_turn_that_reported_it() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("t1", "p", "/work", 100, 200);
    save_turn(&store, &m, &turn("turn-1", 1), Some(usage("turn-1", 5))).await;
    let mut interrupted = turn("turn-2", 1);
    interrupted.status = TurnStatus::Interrupted;
    save_turn(&store, &m, &interrupted, None).await;

    let t = load(&store, "t1").await.expect("thread is stored");
    assert_eq!(t.usage, Some(usage("turn-1", 5)));
}

#[actix::test]
async fn a_cleared_goal_is_gone_and_a_goal_alone_does_not_list_the_thread() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("t1", "p", "/work", 100, 200);
    store
        .save_goal(m.clone(), Some(goal("t1", "first")))
        .await
        .expect("goal saves");
    store
        .save_goal(m.clone(), Some(goal("t1", "second")))
        .await
        .expect("goal saves");
    assert_eq!(
        load(&store, "t1").await.and_then(|t| t.goal),
        Some(goal("t1", "second"))
    );
    let listed = list(
        &store,
        ListQuery {
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        listed,
        ThreadPage::default(),
        "a thread without turns has no rollout to list"
    );

    store.save_goal(m.clone(), None).await.expect("goal clears");
    let t = load(&store, "t1").await.expect("the thread row stays");
    assert_eq!(t.goal, None);
    assert_eq!(t.meta, m);
}

#[actix::test]
async fn save_status_for_an_unknown_thread_stores_nothing() {
    let dir = tmp();
    let store = open(dir.path());
    store
        .save_status(ThreadId::from("ghost"), ThreadStatus::Idle)
        .await
        .expect("no error");
    assert_eq!(load(&store, "ghost").await, None);
    let listed = list(
        &store,
        ListQuery {
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed, ThreadPage::default());
}

#[actix::test]
async fn a_thread_with_10000_items_loads_them_all_in_order() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("big", "p", "/work", 100, 200);
    for t in 0..100 {
        save_turn(&store, &m, &turn(&format!("turn-{t:03}"), 100), None).await;
    }
    let t = load(&store, "big").await.expect("thread is stored");
    assert_eq!(t.turns.len(), 100);
    assert_eq!(t.turns.iter().map(|t| t.items.len()).sum::<usize>(), 10_000);
    assert_eq!(
        t.turns[42],
        turn("turn-042", 100),
        "turn 42 has its own items in order"
    );
}

// ---- listing ---------------------------------------------------------------------------------

/// Eleven threads with repeated timestamps (so the id tiebreak matters), two cwds, and
/// previews where every third one mentions "Rust" in some case.
fn eleven() -> Vec<ThreadMeta> {
    (0..11)
        .map(|i| {
            let preview = if i % 3 == 0 {
                format!("Thread {i} about RUST")
            } else {
                format!("thread {i}")
            };
            let cwd = if i % 2 == 0 { "/a" } else { "/b" };
            meta(
                &format!("t{i:02}"),
                &preview,
                cwd,
                1000 + i / 2,
                2000 - i / 3,
            )
        })
        .collect()
}

async fn store_with(dir: &Path, metas: &[ThreadMeta]) -> SqliteStore {
    let store = open(dir);
    for m in metas {
        save_turn(&store, m, &turn(&format!("{}-turn", m.id), 1), None).await;
    }
    store
}

/// Pages through with `limit` and returns every id seen, checking each page's size.
async fn all_pages(store: &SqliteStore, mut query: ListQuery) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..20 {
        let p = list(store, query.clone()).await;
        seen.extend(ids(&p.data));
        match p.next_cursor {
            Some(c) => {
                assert_eq!(p.data.len(), query.limit, "only the last page may be short");
                query.cursor = Some(c);
            }
            None => return seen,
        }
    }
    panic!("paging with {query:?} did not end after 20 pages");
}

#[actix::test]
async fn list_pages_cover_every_thread_once_in_the_reference_order_for_every_sort() {
    let dir = tmp();
    let metas = eleven();
    let store = store_with(dir.path(), &metas).await;
    store
        .save_goal(meta("no-turns", "rust", "/a", 1, 1), None)
        .await
        .expect("goal saves");

    for sort_key in [SortKey::CreatedAt, SortKey::UpdatedAt] {
        for ascending in [true, false] {
            for search_term in [None, Some("rust".to_owned())] {
                let query = ListQuery {
                    limit: 3,
                    sort_key,
                    ascending,
                    search_term,
                    ..Default::default()
                };
                let reference = page(
                    metas.clone(),
                    &ListQuery {
                        limit: 100,
                        ..query.clone()
                    },
                );
                let expected = ids(&reference.data);
                assert!(expected.len() >= 4, "the reference spans several pages");
                assert_eq!(
                    all_pages(&store, query.clone()).await,
                    expected,
                    "{query:?}"
                );
            }
        }
    }
}

#[actix::test]
async fn list_filters_by_search_term_case_insensitively_and_by_cwd() {
    let dir = tmp();
    let store = store_with(dir.path(), &eleven()).await;
    let all = |search_term: Option<&str>, cwd: Option<Vec<&str>>| ListQuery {
        limit: 100,
        sort_key: SortKey::CreatedAt,
        ascending: true,
        search_term: search_term.map(str::to_owned),
        cwd: cwd.map(|c| c.into_iter().map(str::to_owned).collect()),
        ..Default::default()
    };
    let rust = list(&store, all(Some("rUsT"), None)).await;
    assert_eq!(ids(&rust.data), ["t00", "t03", "t06", "t09"]);
    assert_eq!(rust.next_cursor, None);

    let in_b = list(&store, all(None, Some(vec!["/b"]))).await;
    assert_eq!(ids(&in_b.data), ["t01", "t03", "t05", "t07", "t09"]);
    let both = list(&store, all(Some("rust"), Some(vec!["/b", "/elsewhere"]))).await;
    assert_eq!(ids(&both.data), ["t03", "t09"]);
    let none = list(&store, all(None, Some(Vec::new()))).await;
    assert_eq!(
        none,
        ThreadPage::default(),
        "an empty cwd list matches nothing"
    );
}

#[actix::test]
async fn a_huge_limit_returns_every_thread_on_one_page() {
    let dir = tmp();
    let store = store_with(dir.path(), &eleven()).await;
    let p = list(
        &store,
        ListQuery {
            limit: usize::MAX,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(p.data.len(), 11);
    assert_eq!(p.next_cursor, None);
}

#[actix::test]
async fn a_thread_added_between_pages_causes_no_duplicate_or_gap() {
    let dir = tmp();
    let metas = eleven();
    let store = store_with(dir.path(), &metas).await;
    let query = ListQuery {
        limit: 4,
        sort_key: SortKey::CreatedAt,
        ascending: true,
        ..Default::default()
    };
    let first = list(&store, query.clone()).await;
    // Sorts first; with an offset cursor it would shift the next page back by one.
    save_turn(
        &store,
        &meta("t-early", "p", "/a", 1, 1),
        &turn("x", 1),
        None,
    )
    .await;
    let rest = all_pages(
        &store,
        ListQuery {
            cursor: first.next_cursor,
            ..query.clone()
        },
    )
    .await;
    let mut seen = ids(&first.data);
    seen.extend(rest);
    assert_eq!(
        seen,
        ids(&page(
            metas,
            &ListQuery {
                limit: 100,
                ..query
            }
        )
        .data)
    );
}

#[actix::test]
async fn a_cursor_from_another_sort_is_refused_and_the_store_keeps_working() {
    let dir = tmp();
    let store = store_with(dir.path(), &eleven()).await;
    let first = list(
        &store,
        ListQuery {
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    let cursor = first.next_cursor.expect("more than one page");
    for bad in [
        ListQuery {
            limit: 2,
            ascending: true,
            cursor: Some(cursor.clone()),
            ..Default::default()
        },
        ListQuery {
            limit: 2,
            cursor: Some("garbage".to_owned()),
            ..Default::default()
        },
    ] {
        let err = store
            .list(bad.clone())
            .await
            .expect_err("a foreign cursor is refused");
        assert!(
            matches!(&err, StoreError::InvalidQuery(m) if m.starts_with("cursor: invalid thread/list cursor")),
            "{err}"
        );
        assert!(err.to_string().contains("no cursor to start over"), "{err}");
    }
    let second = list(
        &store,
        ListQuery {
            limit: 2,
            cursor: Some(cursor),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        second.data.len(),
        2,
        "the store still answers after refusing a cursor"
    );
}

// ---- schema versions -------------------------------------------------------------------------

#[actix::test]
async fn an_empty_file_with_schema_version_0_is_migrated_on_open() {
    let dir = tmp();
    std::fs::write(dir.path().join(DB_FILE), b"").expect("empty file is written");
    let store = open(dir.path());
    assert_eq!(user_version(dir.path()), schema::supported_version());
    let m = meta("t1", "p", "/w", 1, 2);
    save_turn(&store, &m, &turn("turn-1", 2), None).await;
    assert_eq!(
        load(&store, "t1").await.map(|t| t.turns),
        Some(vec![turn("turn-1", 2)])
    );
}

/// The version-1 schema as released, frozen here: if someone edits migration 1 in place
/// instead of adding migration 2, databases written by the released version stop loading and
/// this test says so.
const RELEASED_V1: &str = "
CREATE TABLE threads (id TEXT PRIMARY KEY NOT NULL, preview TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, model TEXT NOT NULL,
    cwd TEXT NOT NULL, raw_events INTEGER NOT NULL, last_status TEXT);
CREATE INDEX threads_by_created ON threads (created_at, id);
CREATE INDEX threads_by_updated ON threads (updated_at, id);
CREATE TABLE turns (thread_id TEXT NOT NULL REFERENCES threads (id), seq INTEGER NOT NULL,
    id TEXT NOT NULL, status TEXT NOT NULL, error TEXT, started_at INTEGER,
    completed_at INTEGER, duration_ms INTEGER, PRIMARY KEY (thread_id, seq),
    UNIQUE (thread_id, id)) WITHOUT ROWID;
CREATE TABLE items (thread_id TEXT NOT NULL, turn_id TEXT NOT NULL, seq INTEGER NOT NULL,
    item TEXT NOT NULL, PRIMARY KEY (thread_id, turn_id, seq),
    FOREIGN KEY (thread_id, turn_id) REFERENCES turns (thread_id, id)) WITHOUT ROWID;
CREATE TABLE usage (thread_id TEXT PRIMARY KEY NOT NULL REFERENCES threads (id),
    turn_id TEXT NOT NULL, usage TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE goals (thread_id TEXT PRIMARY KEY NOT NULL REFERENCES threads (id),
    goal TEXT NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 1;
INSERT INTO threads VALUES ('t1', 'old preview', 10, 20, 'scripted', '/old', 1, '{\"type\":\"idle\"}');
INSERT INTO turns VALUES ('t1', 0, 'turn-1', 'interrupted', '{\"message\":\"stopped\"}', 10, 11, 1000);
INSERT INTO items VALUES ('t1', 'turn-1', 0, '{\"type\":\"agentMessage\",\"id\":\"i0\",\"text\":\"hi\"}');
INSERT INTO items VALUES ('t1', 'turn-1', 1, '{\"type\":\"agentMessage\",\"id\":\"i1\",\"text\":\"there\"}');
INSERT INTO usage VALUES ('t1', 'turn-1', '{\"total\":{\"totalTokens\":3,\"inputTokens\":2,\"cachedInputTokens\":0,\"outputTokens\":1,\"reasoningOutputTokens\":0},\"last\":{\"totalTokens\":3,\"inputTokens\":2,\"cachedInputTokens\":0,\"outputTokens\":1,\"reasoningOutputTokens\":0},\"modelContextWindow\":null}');
INSERT INTO goals VALUES ('t1', '{\"threadId\":\"t1\",\"objective\":\"old goal\",\"status\":\"paused\",\"tokenBudget\":null,\"tokensUsed\":0,\"timeUsedSeconds\":0,\"createdAt\":10,\"updatedAt\":20}');
";

#[actix::test]
async fn a_version_1_database_opens_and_loads_what_it_holds() {
    let dir = tmp();
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("the file is created");
        conn.execute_batch(RELEASED_V1)
            .expect("the released schema applies");
    }
    let store = open(dir.path());
    let t = load(&store, "t1").await.expect("the old thread is there");
    assert_eq!(
        t.meta,
        ThreadMeta {
            raw_events: true,
            ephemeral: false,
            ..meta("t1", "old preview", "/old", 10, 20)
        }
    );
    assert_eq!(t.last_status, Some(ThreadStatus::Idle));
    assert_eq!(t.turns.len(), 1);
    assert_eq!(t.turns[0].status, TurnStatus::Interrupted);
    assert_eq!(t.turns[0].error, Some(TurnError::new("stopped")));
    let texts: Vec<&str> = t.turns[0]
        .items
        .iter()
        .map(|i| match i {
            ThreadItem::AgentMessage { text, .. } => text.as_str(),
            _ => "not an agent message",
        })
        .collect();
    assert_eq!(texts, ["hi", "there"]);
    assert_eq!(t.usage.map(|u| u.usage.total.total_tokens), Some(3));
    assert_eq!(
        t.goal.map(|g| (g.objective, g.status)),
        Some(("old goal".to_owned(), GoalStatus::Paused))
    );
    assert_eq!(user_version(dir.path()), schema::supported_version());
}

#[actix::test]
async fn a_database_from_a_newer_threadhost_is_refused_with_both_versions() {
    let dir = tmp();
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("the file is created");
        conn.pragma_update(None, "user_version", 99)
            .expect("version is set");
    }
    let err = open_err(dir.path());
    assert_eq!(
        err,
        format!(
            "database schema version 99 in {} is newer than this threadhost supports ({}); \
             upgrade threadhost",
            db_path(dir.path()),
            schema::supported_version()
        )
    );
    assert_eq!(user_version(dir.path()), 99, "the newer file is left alone");
}

// ---- failures --------------------------------------------------------------------------------

#[actix::test]
async fn a_corrupt_database_file_is_refused_and_left_alone() {
    let dir = tmp();
    let garbage: Vec<u8> = (0..4096_u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join(DB_FILE), &garbage).expect("garbage is written");
    let err = open_err(dir.path());
    let prefix = format!(
        "database file {} is not a valid threadhost database (",
        db_path(dir.path())
    );
    assert!(err.starts_with(&prefix), "{err}");
    assert!(err.ends_with("); move it away to start fresh"), "{err}");
    let after = std::fs::read(dir.path().join(DB_FILE)).expect("file still there");
    assert_eq!(
        after, garbage,
        "a file that is not ours is never overwritten"
    );
}

#[actix::test]
async fn a_read_only_data_directory_gives_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let data = dir.path().join("ro");
    std::fs::create_dir(&data).expect("directory is created");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).expect("chmod works");
    // Root (CAP_DAC_OVERRIDE) writes through any mode bits, so chmod cannot make a directory
    // read-only for it; detect that by trying, and skip only then.
    if std::fs::File::create(data.join("probe")).is_ok() {
        eprintln!("skipped: this user can write to a 0o555 directory (root), chmod proves nothing");
        return;
    }
    let err = open_err(&data);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
    assert!(
        err.starts_with(&format!("cannot open or write database {}", db_path(&data))),
        "{err}"
    );
    assert!(err.contains("writable by this user"), "{err}");
}

#[actix::test]
async fn a_data_directory_that_is_a_file_gives_a_clear_error() {
    let dir = tmp();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("file is written");
    let err = open_err(&file.join("data"));
    let prefix = format!(
        "cannot create data directory {}",
        file.join("data").display()
    );
    assert!(err.starts_with(&prefix), "{err}");
    assert!(
        err.ends_with("create it or choose another data directory"),
        "{err}"
    );
}

#[actix::test]
async fn a_full_database_fails_the_save_whole_and_the_store_keeps_working() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("t1", "p", "/w", 1, 2);
    save_turn(&store, &m, &turn("turn-1", 2), Some(usage("turn-1", 1))).await;
    let before = load(&store, "t1").await;
    // SQLITE_FULL for real: cap the file at the pages it has now.
    exec(&store, "PRAGMA max_page_count = 1")
        .await
        .expect("pragma runs");

    let big = turn("turn-2", 500);
    let err = store
        .save_turn(m.clone(), big.clone(), Some(usage("turn-2", 9)))
        .await
        .expect_err("a full database refuses the write");
    let err = err.to_string();
    assert!(
        err.starts_with(&format!(
            "database {} is full while saving turn turn-2 of thread t1",
            db_path(dir.path())
        )),
        "{err}"
    );
    assert!(err.ends_with("free disk space and retry"), "{err}");
    assert_eq!(
        load(&store, "t1").await,
        before,
        "nothing of the failed save was kept"
    );

    exec(&store, "PRAGMA max_page_count = 1000000")
        .await
        .expect("pragma runs");
    save_turn(&store, &m, &big, Some(usage("turn-2", 9))).await;
    let t = load(&store, "t1").await.expect("thread is stored");
    assert_eq!(t.turns.len(), 2);
    assert_eq!(t.turns[1], big);
}

#[test]
fn the_store_needs_no_actix_system_and_answers_any_executor() {
    let dir = tmp();
    let store = open(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let m = meta("t1", "p", "/w", 1, 2);
    rt.block_on(save_turn(&store, &m, &turn("turn-1", 2), None));
    let t = rt.block_on(load(&store, "t1")).expect("thread is stored");
    assert_eq!(t.turns.len(), 1);
}

// ---- group commit -------------------------------------------------------------------------------

/// A write for [`group_commit`] and [`Db::write`], with the receiver of its answer.
fn queued(write: Write) -> (Queued, oneshot::Receiver<Result<(), StoreError>>) {
    let (tx, rx) = oneshot::channel();
    ((write, tx), rx)
}

fn turn_write(thread: &str, turn_id: &str, items: usize) -> Write {
    Write::Turn {
        meta: meta(thread, "p", "/w", 1, 2),
        turn: turn(turn_id, items),
        usage: None,
    }
}

/// Keeps the store thread busy for a while (a query over two million generated rows), so that
/// what a test queues behind it is queued together when the thread comes back.
fn hold(store: &SqliteStore) -> StoreFuture<()> {
    store.call(|reply| Op::Exec {
        sql: "CREATE TEMP TABLE IF NOT EXISTS held AS WITH RECURSIVE c(x) AS \
              (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT count(*) AS n FROM c; \
              DROP TABLE held;"
            .to_owned(),
        reply,
    })
}

#[actix::test]
async fn writes_queued_together_are_answered_in_call_order_and_all_kept() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("t1", "p", "/w", 1, 2);
    let held = hold(&store);
    // Queued behind the busy thread: it takes them in groups, in call order.
    let saves: Vec<_> = (0..200)
        .map(|i| store.save_turn(m.clone(), turn(&format!("turn-{i}"), 3), None))
        .collect();
    held.await.expect("the busy query runs");
    for (i, save) in saves.into_iter().enumerate() {
        if let Err(e) = save.await {
            panic!("save {i} should work: {e}");
        }
    }
    let t = load(&store, "t1").await.expect("thread is stored");
    let ids: Vec<String> = t.turns.iter().map(|t| t.id.clone()).collect();
    let expected: Vec<String> = (0..200).map(|i| format!("turn-{i}")).collect();
    assert_eq!(ids, expected);
}

#[actix::test]
async fn a_read_queued_between_writes_sees_the_writes_before_it_and_not_after() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("t1", "p", "/w", 1, 2);
    let held = hold(&store);
    let first = store.save_turn(m.clone(), turn("turn-1", 2), None);
    let read = store.load(ThreadId::from("t1"));
    let second = store.save_turn(m.clone(), turn("turn-2", 2), None);
    held.await.expect("the busy query runs");
    first.await.expect("saved");
    let seen = read
        .await
        .expect("loads")
        .expect("the first write is there");
    second.await.expect("saved");
    let ids: Vec<&str> = seen.turns.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        ["turn-1"],
        "the read ended the group: it came after turn-1 only"
    );
    assert_eq!(load(&store, "t1").await.expect("stored").turns.len(), 2);
}

#[actix::test]
async fn a_panic_on_the_store_thread_answers_closed_and_the_store_keeps_serving() {
    let dir = tmp();
    let store = open(dir.path());
    let m = meta("t1", "p", "/w", 1, 2);
    save_turn(&store, &m, &turn("turn-1", 2), None).await;
    let err = store
        .call(Op::Panic)
        .await
        .expect_err("the panicking operation is not answered");
    assert!(matches!(err, StoreError::Closed), "{err}");
    save_turn(&store, &m, &turn("turn-2", 2), None).await;
    let t = load(&store, "t1").await.expect("stored");
    assert_eq!(t.turns.len(), 2, "it reconnected and kept everything");
}

#[test]
fn a_write_that_fails_in_a_group_is_undone_alone() {
    let dir = tmp();
    let path = dir.path().join(DB_FILE);
    let conn = connect(&path).expect("opens");
    conn.execute_batch(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON turns WHEN NEW.id = 'bad'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .expect("trigger");
    let (a, _) = queued(turn_write("t1", "good-1", 2));
    let (b, _) = queued(turn_write("t2", "bad", 2));
    let (c, _) = queued(turn_write("t3", "good-2", 2));
    let results = group_commit(&conn, &[a, b, c]).expect("the group commits");
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let (err, doing) = results[1].as_ref().expect_err("the bad write fails");
    assert!(err.to_string().contains("refused by the test"), "{err}");
    assert_eq!(doing, "saving turn bad of thread t2");
    let mut conn = conn;
    assert!(super::load(&mut conn, &ThreadId::from("t1"))
        .expect("reads")
        .is_some());
    assert!(
        super::load(&mut conn, &ThreadId::from("t2"))
            .expect("reads")
            .is_none(),
        "the failed write's thread row was rolled back with it"
    );
    assert!(super::load(&mut conn, &ThreadId::from("t3"))
        .expect("reads")
        .is_some());
}

#[actix::test]
async fn a_group_on_a_full_disk_answers_each_write_as_if_it_were_alone() {
    let dir = tmp();
    let path = dir.path().join(DB_FILE);
    let mut db = Db {
        path: path.clone(),
        conn: Some(connect(&path).expect("opens")),
    };
    let (first, first_rx) = queued(turn_write("t1", "small-1", 2));
    db.write(vec![first]);
    first_rx.await.expect("answered").expect("saved");
    // SQLITE_FULL for real: a few pages of room, enough for small writes only.
    let pages: i64 = db
        .conn
        .as_ref()
        .expect("connected")
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .expect("page_count");
    db.conn
        .as_ref()
        .expect("connected")
        .execute_batch(&format!("PRAGMA max_page_count = {}", pages + 4))
        .expect("pragma");
    let (a, a_rx) = queued(turn_write("t1", "small-2", 2));
    let (b, b_rx) = queued(turn_write("t1", "big", 2000));
    let (c, c_rx) = queued(turn_write("t1", "small-3", 2));
    db.write(vec![a, b, c]);
    a_rx.await
        .expect("answered")
        .expect("the small write before is kept");
    let err = b_rx
        .await
        .expect("answered")
        .expect_err("the big write does not fit");
    assert!(
        err.to_string().contains("is full while saving turn big"),
        "{err}"
    );
    c_rx.await
        .expect("answered")
        .expect("the small write after is kept");
    let mut conn = db.conn.take().expect("connected");
    let t = super::load(&mut conn, &ThreadId::from("t1"))
        .expect("reads")
        .expect("stored");
    let ids: Vec<&str> = t.turns.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["small-1", "small-2", "small-3"]);
}

// ---- the runtime on the SQLite store ------------------------------------------------------------

/// A host on the SQLite store in `dir`, every actor on the test's arbiter.
fn sqlite_host(dir: &Path) -> threadhost_actors::ThreadHost {
    let config = threadhost_actors::HostConfig {
        arbiters: 0,
        unload_delay: std::time::Duration::from_secs(60),
        ..Default::default()
    };
    threadhost_actors::ThreadHost::start(
        config,
        std::sync::Arc::new(threadhost_actors::ScriptedAgentFactory::default()),
        std::sync::Arc::new(open(dir)),
    )
}

#[actix::test]
async fn a_thread_resumed_cold_after_a_host_restart_shows_exactly_its_turns_and_usage() {
    use threadhost_actors::testkit::Probe;
    let dir = tmp();
    let host = sqlite_host(dir.path());
    let mut a = Probe::connect(&host);
    let id = a.start_thread().await;
    for text in ["first words here", "/approve ls -la", "/fail"] {
        a.turn(&id, text).await;
        if text.starts_with("/approve") {
            let threadhost_actors::Outbound::Request(r) =
                a.until("item/commandExecution/requestApproval").await
            else {
                panic!("expected the approval request");
            };
            a.handle
                .answer(r.id, serde_json::json!({"decision": "accept"}))
                .await;
        }
        a.until_turn_completed().await;
    }
    a.handle
        .set_goal(
            &id,
            threadhost_actors::GoalUpdate {
                objective: Some("persist me".into()),
                ..Default::default()
            },
        )
        .await
        .expect("goal set");
    let before = a.handle.read(&id, true).await.expect("read");
    assert_eq!(before.turns.len(), 3);
    host.shutdown().await;

    // A new host on the same file: the process restarted.
    let host = sqlite_host(dir.path());
    let mut b = Probe::connect(&host);
    let after = b.handle.resume(&id, false).await.expect("cold resume");
    assert_eq!(
        after.turns, before.turns,
        "same turns, items, statuses and errors"
    );
    assert_eq!(after.meta.preview, "first words here");
    let msgs = b.drain_messages().await;
    let usage = msgs.iter().find_map(|m| match m {
        threadhost_actors::Outbound::Notification(n) => match n.as_ref() {
            threadhost_actors::Notification::TokenUsageUpdated {
                token_usage,
                turn_id,
                ..
            } => Some((turn_id.clone(), **token_usage)),
            _ => None,
        },
        _ => None,
    });
    let (turn_id, usage) = usage.expect("usage is sent after a cold resume");
    assert_eq!(
        &*turn_id,
        before.turns[1].id.as_str(),
        "the failed last turn reported no usage"
    );
    assert_eq!(usage.total.total_tokens, 6 + usage.last.total_tokens);
    let goal = b.handle.get_goal(&id).await.expect("goal");
    assert_eq!(goal.map(|g| g.objective), Some("persist me".to_owned()));
}
