//! Measures how long [`SqliteStore`]'s `load` takes for a thread of 10,000 items (100 turns of
//! 100 items), as a cold `thread/resume` would do it.
//!
//! Run it in release: `cargo run --release --example cold_load`. It writes the thread into a
//! temporary directory, reopens the store (so the statement cache starts empty, as after a
//! process restart; the OS page cache stays warm), then loads the thread 20 times and prints
//! the first load and the min and median of all 20, in milliseconds.

use std::error::Error;
use std::time::{Duration, Instant};

use threadhost::store::SqliteStore;
use threadhost_actors::{
    CommandExecutionStatus, ThreadId, ThreadItem, ThreadMeta, ThreadStore, Turn, TurnStatus,
    UserInput,
};

const TURNS: usize = 100;
const ITEMS_PER_TURN: usize = 100;
const LOADS: usize = 20;

fn turn(t: usize) -> Turn {
    let items = (0..ITEMS_PER_TURN)
        .map(|i| match i {
            0 => ThreadItem::UserMessage {
                id: format!("turn-{t}-item-{i}"),
                content: vec![UserInput::text(format!(
                    "question {t}: what does this code do?"
                ))],
            },
            i if i % 2 == 1 => ThreadItem::AgentMessage {
                id: format!("turn-{t}-item-{i}"),
                text: format!(
                    "answer {i}: the function reads the file, parses each line and keeps the \
                     ones that match; here is why that matters for turn {t}"
                ),
            },
            i => ThreadItem::CommandExecution {
                id: format!("turn-{t}-item-{i}"),
                command: "rg -n ThreadStore src/".to_owned(),
                cwd: "/work".to_owned(),
                status: CommandExecutionStatus::Completed,
                command_actions: Vec::new(),
                aggregated_output: Some(
                    "src/store.rs:12: impl ThreadStore for SqliteStore".to_owned(),
                ),
                exit_code: Some(0),
                duration_ms: Some(7),
            },
        })
        .collect();
    Turn {
        id: format!("turn-{t:03}"),
        items,
        status: TurnStatus::Completed,
        error: None,
        started_at: Some(1_700_000_000),
        completed_at: Some(1_700_000_010),
        duration_ms: Some(10_000),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let id = ThreadId::from("cold-load");
    let meta = ThreadMeta::new(id.clone(), "scripted".to_owned(), "/work".to_owned());
    {
        let store = SqliteStore::open(dir.path())?;
        for t in 0..TURNS {
            store.save_turn(meta.clone(), turn(t), None).await?;
        }
    }
    let store = SqliteStore::open(dir.path())?;
    let mut times = Vec::with_capacity(LOADS);
    for _ in 0..LOADS {
        let start = Instant::now();
        let thread = store
            .load(id.clone())
            .await?
            .ok_or("the thread was not stored")?;
        times.push(start.elapsed());
        let items: usize = thread.turns.iter().map(|t| t.items.len()).sum();
        if items != TURNS * ITEMS_PER_TURN {
            return Err(
                format!("loaded {items} items, expected {}", TURNS * ITEMS_PER_TURN).into(),
            );
        }
    }
    let first = times[0];
    times.sort();
    println!(
        "load of {} items ({TURNS} turns x {ITEMS_PER_TURN}), {LOADS} runs: first {:.2} ms, \
         min {:.2} ms, median {:.2} ms",
        TURNS * ITEMS_PER_TURN,
        ms(first),
        ms(times[0]),
        ms(times[LOADS / 2]),
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    actix::System::new().block_on(run())
}
