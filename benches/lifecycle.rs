//! Lifecycle workloads, a custom harness printing a table: unload sweep, cold resume, churn.
//! Peers: `mutex-map` (the baseline in `benches/baseline/mutex_map.rs`, tokio with 2 workers)
//! and `threadhost` (public API in-process, 2 arbiters). Raw actix has no lifecycle to compare.

#[path = "baseline/mutex_map.rs"]
mod baseline;
#[path = "common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use threadhost_actors::{
    HostConfig, MemoryStore, Notification, Outbound, StartThread, ThreadHost, ThreadId, ThreadItem,
    ThreadMeta, ThreadStore, Turn, TurnStatus, SCRIPTED_MODEL,
};

use common::{percentile, pick, record, say, StampAgents};

fn config(unload_delay: Duration) -> HostConfig {
    HostConfig {
        unload_delay,
        arbiters: 2,
        outbound_capacity: 1 << 22,
        default_cwd: "/work".to_owned(),
        ..HostConfig::default()
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !common::benching() {
        return; // `cargo bench -- --list`, or `cargo test`
    }
    unload_sweep();
    cold_resume();
    churn();
}

// ---- unload sweep ------------------------------------------------------------------------------

fn unload_sweep() {
    let n: usize = pick(100_000, 10_000);
    let delay = Duration::from_secs(1);
    say(&format!(
        "unload sweep: {n} idle threads lose their only subscriber at once (its connection closes); unload delay {delay:?}; time from the end of the delay until a watching connection received every thread/closed"
    ));
    // threadhost
    let sys = System::new();
    let (total, sweep) = sys.block_on(async {
        let host = ThreadHost::start(
            config(delay),
            Arc::new(StampAgents),
            Arc::new(MemoryStore::new()),
        );
        let (probe, mut outbox) = host.connect();
        probe.initialize(Vec::new());
        let owners: Vec<_> = (0..n.div_ceil(1000)).map(|_| host.connect()).collect();
        let mut started = 0;
        while started < n {
            let mut set = tokio::task::JoinSet::new();
            for i in started..(started + 1000).min(n) {
                let conn = owners[i / 1000].0.clone();
                set.spawn_local(async move {
                    conn.start_thread(StartThread::default())
                        .await
                        .expect("start");
                });
            }
            while set.join_next().await.is_some() {}
            started = (started + 1000).min(n);
        }
        // Drop the thread/started broadcasts.
        while outbox.try_recv().is_some() {}
        let t0 = Instant::now();
        for (o, _) in &owners {
            o.disconnect();
        }
        let mut closed = 0;
        while closed < n {
            match tokio::time::timeout(Duration::from_secs(60), outbox.recv()).await {
                Ok(Some(Outbound::Notification(n))) if n.method() == "thread/closed" => closed += 1,
                Ok(Some(_)) => {}
                other => panic!("unload sweep: {closed} of {n} closed, then {other:?}"),
            }
        }
        let total = t0.elapsed();
        assert!(host.loaded_threads().is_empty());
        host.shutdown().await;
        (total, total.saturating_sub(delay))
    });
    report_sweep("threadhost", n, total, sweep);
    // mutex-map
    let rt = tokio_rt();
    let (total, sweep) = rt.block_on(async {
        let host = baseline::MutexMapHost::new(Arc::new(MemoryStore::new()), delay);
        let (_probe, mut rx) = host.connect(true).await;
        let mut owners = Vec::new();
        for _ in 0..n.div_ceil(1000) {
            owners.push(host.connect(false).await);
        }
        for i in 0..n {
            host.start_thread(owners[i / 1000].0).await;
        }
        let t0 = Instant::now();
        for (o, _) in &owners {
            host.disconnect(*o).await;
        }
        let mut closed = 0;
        while closed < n {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(n)) if n.method() == "thread/closed" => closed += 1,
                Ok(Some(_)) => {}
                other => panic!("unload sweep (mutex-map): {closed} of {n} closed, then {other:?}"),
            }
        }
        let total = t0.elapsed();
        (total, total.saturating_sub(delay))
    });
    rt.shutdown_background();
    report_sweep("mutex-map", n, total, sweep);
}

fn report_sweep(peer: &str, n: usize, total: Duration, sweep: Duration) {
    println!(
        "   {peer}: every thread/closed after {:.3} s from the last unsubscribe; {:.3} s after the delay ended",
        total.as_secs_f64(),
        sweep.as_secs_f64()
    );
    record(
        "unload-sweep",
        peer,
        n as u64,
        "after_delay_s",
        sweep.as_secs_f64(),
        "s",
    );
}

// ---- cold resume -------------------------------------------------------------------------------

/// A stored thread with `items` items: 100 turns of `items / 100` agent messages.
fn stored_thread(store: &MemoryStore, items: usize) -> ThreadId {
    let meta = ThreadMeta::new(
        ThreadId::new(),
        SCRIPTED_MODEL.to_owned(),
        "/work".to_owned(),
    );
    let per_turn = items / 100;
    for t in 0..100 {
        let mut turn = Turn::started(format!("turn-{t}"));
        turn.status = TurnStatus::Completed;
        turn.items = (0..per_turn)
            .map(|i| ThreadItem::AgentMessage {
                id: format!("turn-{t}-item-{i}"),
                text: "a stored agent message of about sixty characters of text....".to_owned(),
            })
            .collect();
        drop(store.save_turn(meta.clone(), turn, None));
    }
    meta.id
}

fn cold_resume() {
    let items = 10_000;
    let reps = pick(30, 5);
    say(&format!(
        "cold resume: resume (turns included) of a thread that is not loaded, with {items} stored items (100 turns), from the in-memory store; {reps} times, unloading in between"
    ));
    let sys = System::new();
    let mut samples = sys.block_on(async {
        let store = Arc::new(MemoryStore::new());
        let id = stored_thread(&store, items);
        let host = ThreadHost::start(
            config(Duration::from_secs(1800)),
            Arc::new(StampAgents),
            store,
        );
        let (conn, mut outbox) = host.connect();
        let mut samples = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            let snap = conn.resume(&id, false).await.expect("cold resume");
            samples.push(t0.elapsed().as_nanos() as u64);
            assert_eq!(
                snap.turns.iter().map(|t| t.items.len()).sum::<usize>(),
                items
            );
            conn.close_thread(&id).await.expect("close");
            while outbox.try_recv().is_some() {}
        }
        host.shutdown().await;
        samples
    });
    report_cold("threadhost", items, &mut samples);
    let rt = tokio_rt();
    let mut samples = rt.block_on(async {
        let store = Arc::new(MemoryStore::new());
        let id = stored_thread(&store, items);
        let host = baseline::MutexMapHost::new(store, Duration::ZERO);
        let (conn, _rx) = host.connect(false).await;
        let mut samples = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            let turns = host.resume(conn, &id).await.expect("cold resume");
            samples.push(t0.elapsed().as_nanos() as u64);
            assert_eq!(turns.iter().map(|t| t.items.len()).sum::<usize>(), items);
            host.unsubscribe(conn, &id).await;
            while host.loaded().await > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        samples
    });
    rt.shutdown_background();
    report_cold("mutex-map", items, &mut samples);
}

fn report_cold(peer: &str, items: usize, samples: &mut [u64]) {
    let p50 = percentile(samples, 50.0) as f64 / 1e6;
    let max = percentile(samples, 100.0) as f64 / 1e6;
    println!("   {peer}: cold resume of {items} items p50 {p50:.2} ms, max {max:.2} ms");
    record("cold-resume", peer, items as u64, "p50", p50, "ms");
    record("cold-resume", peer, items as u64, "max", max, "ms");
}

// ---- churn -------------------------------------------------------------------------------------

/// What one churning connection saw.
#[derive(Default, Debug)]
struct ChurnStats {
    ops: u64,
    refused: u64,
    errors: u64,
    violations: u64,
}

impl ChurnStats {
    fn add(&mut self, o: &Self) {
        self.ops += o.ops;
        self.refused += o.refused;
        self.errors += o.errors;
        self.violations += o.violations;
    }
}

/// Small deterministic generator (xorshift), one per connection.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Follows one connection's stream: `thread/closed` for a thread this connection is subscribed
/// to (after its resume's goal snapshot arrived, before it unsubscribed) is a lifecycle
/// violation: a subscribed thread must never unload.
#[derive(Default)]
struct Watch {
    subscribed: HashSet<ThreadId>,
    violations: u64,
}

impl Watch {
    /// Returns true when `n` is the goal snapshot of a resume of `marker`.
    fn see(&mut self, n: &Notification, marker: Option<&ThreadId>) -> bool {
        match n {
            Notification::ThreadClosed { thread_id } if self.subscribed.contains(thread_id) => {
                self.violations += 1;
                false
            }
            Notification::GoalCleared { thread_id } => marker == Some(thread_id),
            _ => false,
        }
    }
}

fn churn() {
    let threads = pick(1000, 200);
    let conns = pick(50, 20);
    let run = pick(Duration::from_secs(5), Duration::from_secs(1));
    // Zero: the last unsubscribe starts an unload at once, so nearly every resume is cold.
    let delay = Duration::ZERO;
    say(&format!(
        "churn: {conns} connections resume (attach) and unsubscribe random threads of {threads} for {run:?} while threads unload {delay:?} after their last subscriber leaves and reload cold; operations (resume + unsubscribe) per second, and lifecycle violations: thread/closed of a thread while subscribed, resume errors, closed without notLoaded before it, closed count != completed unloads"
    ));
    churn_threadhost(threads, conns, run, delay);
    churn_mutex_map(threads, conns, run, delay);
}

fn churn_threadhost(threads: usize, conns: usize, run: Duration, delay: Duration) {
    let sys = System::new();
    let (stats, elapsed, probe_violations) = sys.block_on(async {
        let host = ThreadHost::start(
            config(delay),
            Arc::new(StampAgents),
            Arc::new(MemoryStore::new()),
        );
        let (probe, mut probe_box) = host.connect();
        probe.initialize(Vec::new());
        // Threads with one stored turn each, then left to unload.
        let (maker, mut maker_box) = host.connect();
        let mut ids = Vec::new();
        for _ in 0..threads {
            let id = maker
                .start_thread(StartThread::default())
                .await
                .expect("start")
                .meta
                .id;
            maker.start_turn(&id, common::words(3)).await.expect("turn");
            loop {
                if let Some(Outbound::Notification(n)) = maker_box.recv().await {
                    if n.method() == "turn/completed" {
                        break;
                    }
                }
            }
            ids.push(id);
        }
        maker.disconnect();
        let ids = Arc::new(ids);
        let deadline = Instant::now() + run;
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for c in 0..conns {
            let (conn, mut outbox) = host.connect();
            conn.initialize(Vec::new());
            let ids = Arc::clone(&ids);
            set.spawn_local(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1));
                let mut st = ChurnStats::default();
                let mut watch = Watch::default();
                while Instant::now() < deadline {
                    let id = &ids[rng.below(ids.len())];
                    match conn.resume(id, true).await {
                        Ok(_) => {
                            // Everything queued before the goal snapshot predates the resume.
                            loop {
                                match tokio::time::timeout(Duration::from_secs(10), outbox.recv())
                                    .await
                                {
                                    Ok(Some(Outbound::Notification(n))) => {
                                        if watch.see(&n, Some(id)) {
                                            break;
                                        }
                                    }
                                    Ok(Some(_)) => {}
                                    _ => panic!("churn: no goal snapshot after a resume"),
                                }
                            }
                            watch.subscribed.insert(id.clone());
                        }
                        Err(threadhost_actors::HostError::ClosingResume(_)) => st.refused += 1,
                        Err(e) => {
                            eprintln!("churn: resume failed: {e}");
                            st.errors += 1;
                        }
                    }
                    st.ops += 1;
                    tokio::task::yield_now().await;
                    while let Some(m) = outbox.try_recv() {
                        if let Outbound::Notification(n) = m {
                            watch.see(&n, None);
                        }
                    }
                    watch.subscribed.remove(id);
                    conn.unsubscribe(id).await.expect("unsubscribe");
                    st.ops += 1;
                }
                st.violations += watch.violations;
                st
            });
        }
        let mut stats = ChurnStats::default();
        while let Some(r) = set.join_next().await {
            stats.add(&r.expect("churn task"));
        }
        let elapsed = t0.elapsed();
        // Let the last unloads finish, then check the watcher's stream.
        tokio::time::sleep(delay * 4 + Duration::from_millis(200)).await;
        let metrics = host.metrics();
        let mut not_loaded: HashMap<ThreadId, u64> = HashMap::new();
        let (mut closed, mut bad_order) = (0u64, 0u64);
        while let Some(m) = probe_box.try_recv() {
            if let Outbound::Notification(n) = m {
                match &*n {
                    Notification::ThreadStatusChanged { thread_id, status }
                        if *status == threadhost_actors::ThreadStatus::NotLoaded =>
                    {
                        *not_loaded.entry(thread_id.clone()).or_default() += 1;
                    }
                    Notification::ThreadClosed { thread_id } => {
                        closed += 1;
                        match not_loaded.get_mut(thread_id) {
                            Some(k) if *k > 0 => *k -= 1,
                            _ => bad_order += 1,
                        }
                    }
                    _ => {}
                }
            }
        }
        let unloads = metrics.unloads_complete.get();
        let mismatch = u64::from(closed != unloads);
        if mismatch > 0 {
            eprintln!("churn: {closed} thread/closed seen, {unloads} unloads completed");
        }
        println!("   threadhost: {unloads} unloads completed during the run");
        host.shutdown().await;
        (stats, elapsed, bad_order + mismatch)
    });
    report_churn("threadhost", &stats, elapsed, probe_violations);
}

fn churn_mutex_map(threads: usize, conns: usize, run: Duration, delay: Duration) {
    let rt = tokio_rt();
    let unloads = Arc::new(AtomicU64::new(0));
    let (stats, elapsed) = rt.block_on(async {
        let host = baseline::MutexMapHost::new(Arc::new(MemoryStore::new()), delay);
        let (maker, mut maker_rx) = host.connect(false).await;
        let mut ids = Vec::new();
        for _ in 0..threads {
            let id = host.start_thread(maker).await;
            host.start_turn(&id, common::words(3)).await.expect("turn");
            while let Some(n) = maker_rx.recv().await {
                if n.method() == "turn/completed" {
                    break;
                }
            }
            ids.push(id);
        }
        host.disconnect(maker).await;
        let (_probe, mut probe_rx) = host.connect(true).await;
        let counter = Arc::clone(&unloads);
        tokio::spawn(async move {
            while let Some(n) = probe_rx.recv().await {
                if n.method() == "thread/closed" {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let ids = Arc::new(ids);
        let deadline = Instant::now() + run;
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for c in 0..conns {
            let (conn, mut rx) = host.connect(true).await;
            let (host, ids) = (host.clone(), Arc::clone(&ids));
            set.spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1));
                let mut st = ChurnStats::default();
                let mut watch = Watch::default();
                while Instant::now() < deadline {
                    let id = &ids[rng.below(ids.len())];
                    match host.resume(conn, id).await {
                        Ok(_) => {
                            loop {
                                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await
                                {
                                    Ok(Some(n)) => {
                                        if watch.see(&n, Some(id)) {
                                            break;
                                        }
                                    }
                                    _ => {
                                        panic!("churn (mutex-map): no goal snapshot after a resume")
                                    }
                                }
                            }
                            watch.subscribed.insert(id.clone());
                        }
                        Err(e) if e.contains("is closing") => st.refused += 1,
                        Err(e) => {
                            eprintln!("churn (mutex-map): resume failed: {e}");
                            st.errors += 1;
                        }
                    }
                    st.ops += 1;
                    tokio::task::yield_now().await;
                    while let Ok(n) = rx.try_recv() {
                        watch.see(&n, None);
                    }
                    watch.subscribed.remove(id);
                    host.unsubscribe(conn, id).await;
                    st.ops += 1;
                }
                st.violations += watch.violations;
                st
            });
        }
        let mut stats = ChurnStats::default();
        while let Some(r) = set.join_next().await {
            stats.add(&r.expect("churn task"));
        }
        (stats, t0.elapsed())
    });
    rt.shutdown_background();
    println!(
        "   mutex-map: {} unloads completed during the run",
        unloads.load(Ordering::Relaxed)
    );
    report_churn("mutex-map", &stats, elapsed, 0);
}

fn report_churn(peer: &str, st: &ChurnStats, elapsed: Duration, stream_violations: u64) {
    let rate = st.ops as f64 / elapsed.as_secs_f64();
    let violations = st.violations + st.errors + stream_violations;
    println!(
        "   {peer}: {rate:.0} operations/s ({} operations), {} resumes refused as closing, {violations} lifecycle violations ({} closed-while-subscribed, {} resume errors, {stream_violations} stream-order or count)",
        st.ops, st.refused, st.violations, st.errors
    );
    record("churn", peer, 0, "ops_per_s", rate, "1/s");
    record("churn", peer, 0, "violations", violations as f64, "");
    record("churn", peer, 0, "refused", st.refused as f64, "");
}
