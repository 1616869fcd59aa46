//! Throughput and warm-resume latency, criterion, three peers in the same run:
//!
//! - `raw-actix`: the floor. The same actor graph with bare `do_send` of one notification `Arc`
//!   per event to trivial counting actors (sources on 2 arbiters, recipients on the system
//!   arbiter, as threadhost places threads and connections).
//! - `mutex-map`: the baseline in `benches/baseline/mutex_map.rs` (Codex's design) on a tokio
//!   multi-thread runtime with 2 workers.
//! - `threadhost`: the public API in-process (`ThreadHost` with 2 arbiters, `ConnectionHandle`,
//!   `Outbox`), turns of the stamp agent (the scripted agent's text path with time-stamped
//!   deltas), one drain task per connection.
//!
//! Workloads: fan-out (one thread, S subscribers), many-threads (T threads, one subscriber
//! each, turns on all at once), warm resume (resume of a loaded thread with history).
//! Deliveries are turn-stream notifications taken out of a subscriber's queue.

#[path = "baseline/mutex_map.rs"]
mod baseline;
#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput};
use threadhost_actors::{
    ConnectionHandle, HostConfig, MemoryStore, Notification, Outbox, StartThread, ThreadHost,
    ThreadId, UserInput,
};

use common::{per_turn, pick, record, say, words, Counter, Sink, StampAgents};

/// How long a round may take before the bench gives up with a message.
const ROUND_BOUND: Duration = Duration::from_secs(120);

/// One prepared workload of one peer: runs rounds.
trait Rig {
    /// Runs one round and returns how long it took.
    fn round(&mut self) -> Duration;
    /// Deliveries in one round.
    fn per_round(&self) -> u64;
    fn sink(&self) -> &Arc<Sink>;
    /// Tears down (off the clock).
    fn finish(self: Box<Self>);
}

fn host_config() -> HostConfig {
    HostConfig {
        arbiters: 2,
        outbound_capacity: 1 << 20,
        default_cwd: "/work".to_owned(),
        ..HostConfig::default()
    }
}

fn spawn_drain(mut outbox: Outbox, sink: Arc<Sink>, per_round: u64) {
    actix_rt::spawn(async move {
        let mut counter = Counter::new(sink, per_round);
        while let Some(m) = outbox.recv().await {
            if let threadhost_actors::Outbound::Notification(n) = &m {
                counter.notification(n);
            }
        }
    });
}

// ---- threadhost ------------------------------------------------------------------------------

struct HostRig<'s> {
    sys: &'s SystemRunner,
    host: ThreadHost,
    /// (connection that starts turns, its thread)
    drivers: Vec<(ConnectionHandle, ThreadId)>,
    /// The other subscribers, closed at the end.
    others: Vec<ConnectionHandle>,
    input: Vec<UserInput>,
    per_round: u64,
    sink: Arc<Sink>,
}

impl<'s> HostRig<'s> {
    /// `threads` threads with `subs` subscribers each; turns of `n` words.
    fn new(sys: &'s SystemRunner, threads: usize, subs: usize, n: usize) -> Self {
        let sink = Arc::new(Sink::default());
        let per_sub = per_turn(n);
        let (host, drivers, others) = sys.block_on(async {
            let host = ThreadHost::start(
                host_config(),
                Arc::new(StampAgents),
                Arc::new(MemoryStore::new()),
            );
            let mut drivers = Vec::with_capacity(threads);
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..threads {
                let (conn, outbox) = host.connect();
                spawn_drain(outbox, Arc::clone(&sink), per_sub);
                set.spawn_local(async move {
                    let id = conn
                        .start_thread(StartThread::default())
                        .await
                        .expect("thread/start")
                        .meta
                        .id;
                    (conn, id)
                });
            }
            while let Some(r) = set.join_next().await {
                drivers.push(r.expect("start task"));
            }
            let mut others = Vec::new();
            for (_, id) in &drivers {
                for _ in 1..subs {
                    let (conn, outbox) = host.connect();
                    spawn_drain(outbox, Arc::clone(&sink), per_sub);
                    conn.resume(id, true).await.expect("thread/resume");
                    others.push(conn);
                }
            }
            (host, drivers, others)
        });
        Self {
            sys,
            host,
            drivers,
            others,
            input: words(n),
            per_round: per_sub * (threads * subs) as u64,
            sink,
        }
    }
}

impl Rig for HostRig<'_> {
    fn round(&mut self) -> Duration {
        self.sys.block_on(async {
            let target = self.sink.count() + self.per_round;
            let t0 = Instant::now();
            for (conn, id) in &self.drivers {
                let (conn, id, input) = (conn.clone(), id.clone(), self.input.clone());
                actix_rt::spawn(async move {
                    conn.start_turn(&id, input).await.expect("turn/start");
                });
            }
            self.sink.wait_for(target, ROUND_BOUND).await;
            t0.elapsed()
        })
    }
    fn per_round(&self) -> u64 {
        self.per_round
    }
    fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }
    fn finish(self: Box<Self>) {
        let host = self.host.clone();
        self.sys.block_on(async move {
            host.shutdown().await;
            // Bench connections never initialized, so shutdown does not know them: close them
            // here, which ends their drain tasks.
            for c in self.drivers.iter().map(|(c, _)| c).chain(&self.others) {
                c.disconnect();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
    }
}

// ---- mutex-map baseline ------------------------------------------------------------------------

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

struct MapRig {
    rt: tokio::runtime::Runtime,
    host: baseline::MutexMapHost,
    threads: Arc<Vec<ThreadId>>,
    input: Vec<UserInput>,
    per_round: u64,
    sink: Arc<Sink>,
}

impl MapRig {
    fn new(threads: usize, subs: usize, n: usize) -> Self {
        let rt = tokio_rt();
        let sink = Arc::new(Sink::default());
        let per_sub = per_turn(n);
        let (host, ids) = rt.block_on(async {
            let host = baseline::MutexMapHost::new(
                Arc::new(MemoryStore::new()),
                Duration::from_secs(30 * 60),
            );
            let mut ids = Vec::with_capacity(threads);
            for _ in 0..threads {
                let (conn, rx) = host.connect(false).await;
                spawn_map_drain(rx, Arc::clone(&sink), per_sub);
                ids.push(host.start_thread(conn).await);
            }
            for id in &ids {
                for _ in 1..subs {
                    let (conn, rx) = host.connect(false).await;
                    spawn_map_drain(rx, Arc::clone(&sink), per_sub);
                    host.resume(conn, id).await.expect("resume");
                }
            }
            (host, ids)
        });
        Self {
            rt,
            host,
            threads: Arc::new(ids),
            input: words(n),
            per_round: per_sub * (threads * subs) as u64,
            sink,
        }
    }
}

fn spawn_map_drain(mut rx: baseline::Outgoing, sink: Arc<Sink>, per_round: u64) {
    tokio::spawn(async move {
        let mut counter = Counter::new(sink, per_round);
        while let Some(n) = rx.recv().await {
            counter.notification(&n);
        }
    });
}

impl Rig for MapRig {
    fn round(&mut self) -> Duration {
        self.rt.block_on(async {
            let target = self.sink.count() + self.per_round;
            let t0 = Instant::now();
            for id in self.threads.iter() {
                let (host, id, input) = (self.host.clone(), id.clone(), self.input.clone());
                tokio::spawn(async move {
                    host.start_turn(&id, input).await.expect("turn/start");
                });
            }
            self.sink.wait_for(target, ROUND_BOUND).await;
            t0.elapsed()
        })
    }
    fn per_round(&self) -> u64 {
        self.per_round
    }
    fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }
    fn finish(self: Box<Self>) {
        self.rt.shutdown_background();
    }
}

// ---- raw actix ---------------------------------------------------------------------------------

/// A trivial recipient: counts.
struct Tally(Counter);

impl Actor for Tally {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Delivery {
    _n: Arc<Notification>,
    emitted: u64,
}

impl Handler<Delivery> for Tally {
    type Result = ();
    fn handle(&mut self, msg: Delivery, _ctx: &mut Context<Self>) {
        self.0.stamped(msg.emitted);
    }
}

/// A trivial thread stand-in: forwards each event to its recipients.
struct Source {
    id: ThreadId,
    recipients: Vec<Addr<Tally>>,
}

impl Actor for Source {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Burst(u64);

#[derive(Message)]
#[rtype(result = "()")]
struct Emit(u64);

impl Handler<Burst> for Source {
    type Result = ();
    fn handle(&mut self, Burst(m): Burst, ctx: &mut Context<Self>) {
        // The emitter runs as a task on this arbiter, as an agent's turn does.
        let addr = ctx.address();
        actix_rt::spawn(async move {
            for _ in 0..m {
                addr.do_send(Emit(common::now_ns()));
                tokio::task::yield_now().await;
            }
        });
    }
}

impl Handler<Emit> for Source {
    type Result = ();
    fn handle(&mut self, Emit(t): Emit, _ctx: &mut Context<Self>) {
        let n = Arc::new(Notification::ThreadClosed {
            thread_id: self.id.clone(),
        });
        for r in &self.recipients {
            r.do_send(Delivery {
                _n: Arc::clone(&n),
                emitted: t,
            });
        }
    }
}

struct RawRig<'s> {
    sys: &'s SystemRunner,
    arbiters: Vec<Arbiter>,
    sources: Vec<Addr<Source>>,
    events: u64,
    per_round: u64,
    sink: Arc<Sink>,
}

impl<'s> RawRig<'s> {
    fn new(sys: &'s SystemRunner, threads: usize, subs: usize, n: usize) -> Self {
        let sink = Arc::new(Sink::default());
        let events = per_turn(n);
        let arbiters: Vec<Arbiter> =
            sys.block_on(async { (0..2).map(|_| Arbiter::new()).collect() });
        let sources = sys.block_on(async {
            (0..threads)
                .map(|i| {
                    let recipients: Vec<Addr<Tally>> = (0..subs)
                        .map(|_| Tally(Counter::new(Arc::clone(&sink), events)).start())
                        .collect();
                    let id = ThreadId::new();
                    Source::start_in_arbiter(&arbiters[i % 2].handle(), move |_| Source {
                        id,
                        recipients,
                    })
                })
                .collect()
        });
        Self {
            sys,
            arbiters,
            sources,
            events,
            per_round: events * (threads * subs) as u64,
            sink,
        }
    }
}

impl Rig for RawRig<'_> {
    fn round(&mut self) -> Duration {
        self.sys.block_on(async {
            let target = self.sink.count() + self.per_round;
            let t0 = Instant::now();
            for s in &self.sources {
                s.do_send(Burst(self.events));
            }
            self.sink.wait_for(target, ROUND_BOUND).await;
            t0.elapsed()
        })
    }
    fn per_round(&self) -> u64 {
        self.per_round
    }
    fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }
    fn finish(self: Box<Self>) {
        drop(self.sources);
        for a in self.arbiters {
            a.stop();
        }
    }
}

// ---- running -----------------------------------------------------------------------------------

/// Benchmarks one rig; records median deliveries/s and delta latency percentiles.
fn measure<'a>(
    c: &mut Criterion,
    group: &str,
    workload: &str,
    peer: &str,
    param: usize,
    rig: impl FnOnce() -> Box<dyn Rig + 'a>,
) {
    if !common::selected(&format!("{group}/{peer}/{param}")) {
        return;
    }
    let mut rig = rig();
    let mut rates: Vec<f64> = Vec::new();
    let (mut cpu, mut delivered) = (Duration::ZERO, 0u64);
    let mut g = c.benchmark_group(group);
    g.sampling_mode(criterion::SamplingMode::Flat);
    g.throughput(Throughput::Elements(rig.per_round()));
    g.bench_function(BenchmarkId::new(peer, param), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let c0 = common::cpu_time();
                let d = rig.round();
                cpu += common::cpu_time().saturating_sub(c0);
                delivered += rig.per_round();
                rates.push(rig.per_round() as f64 / d.as_secs_f64());
                total += d;
            }
            total
        });
    });
    g.finish();
    let rate = common::median(&mut rates);
    let mut lat = rig.sink().take_latencies();
    let (p50, p99) = (
        common::percentile(&mut lat, 50.0),
        common::percentile(&mut lat, 99.0),
    );
    let cpu_ns = cpu.as_nanos() as f64 / delivered.max(1) as f64;
    println!(
        "   {workload} {peer} {param}: {:.0} deliveries/s (median of {} rounds), {cpu_ns:.0} ns of CPU per delivery, emit-to-receive p50 {:.1} us, p99 {:.1} us",
        rate,
        rates.len(),
        p50 as f64 / 1e3,
        p99 as f64 / 1e3
    );
    record(
        workload,
        peer,
        param as u64,
        "cpu_ns_per_delivery",
        cpu_ns,
        "ns",
    );
    record(
        workload,
        peer,
        param as u64,
        "deliveries_per_s",
        rate,
        "1/s",
    );
    record(
        workload,
        peer,
        param as u64,
        "latency_p50",
        p50 as f64 / 1e3,
        "us",
    );
    record(
        workload,
        peer,
        param as u64,
        "latency_p99",
        p99 as f64 / 1e3,
        "us",
    );
    rig.finish();
}

fn fan_out(c: &mut Criterion, sys: &SystemRunner) {
    let n = pick(200, 40);
    let sizes = fan_out_sizes();
    for &s in &sizes {
        measure(c, "fan-out", "fan-out", "raw-actix", s, || {
            Box::new(RawRig::new(sys, 1, s, n))
        });
        measure(c, "fan-out", "fan-out", "mutex-map", s, || {
            Box::new(MapRig::new(1, s, n))
        });
        measure(c, "fan-out", "fan-out", "threadhost", s, || {
            Box::new(HostRig::new(sys, 1, s, n))
        });
    }
}

fn many_threads(c: &mut Criterion, sys: &SystemRunner) {
    let n = pick(40, 20);
    let sizes = many_threads_sizes();
    for &t in &sizes {
        measure(c, "many-threads", "many-threads", "raw-actix", t, || {
            Box::new(RawRig::new(sys, t, 1, n))
        });
        measure(c, "many-threads", "many-threads", "mutex-map", t, || {
            Box::new(MapRig::new(t, 1, n))
        });
        measure(c, "many-threads", "many-threads", "threadhost", t, || {
            Box::new(HostRig::new(sys, t, 1, n))
        });
    }
}

/// Warm resume: a second connection resumes (turns included) a loaded thread with `turns`
/// turns of history, then unsubscribes (off the clock). Records p50/p99 of the resume call.
fn warm_resume(c: &mut Criterion, sys: &SystemRunner) {
    let turns = 10;
    let mut g = c.benchmark_group("warm-resume");
    if common::selected(&format!("warm-resume/threadhost/{turns}")) {
        let sink = Arc::new(Sink::default());
        let (host, id, resumer) = sys.block_on(async {
            let host = ThreadHost::start(
                host_config(),
                Arc::new(StampAgents),
                Arc::new(MemoryStore::new()),
            );
            let (owner, outbox) = host.connect();
            spawn_drain(outbox, Arc::clone(&sink), per_turn(20));
            let id = owner
                .start_thread(StartThread::default())
                .await
                .expect("start")
                .meta
                .id;
            for i in 0..turns {
                owner.start_turn(&id, words(20)).await.expect("turn");
                sink.wait_for(per_turn(20) * (i + 1), ROUND_BOUND).await;
            }
            let (resumer, outbox) = host.connect();
            spawn_drain(outbox, Arc::new(Sink::default()), u64::MAX);
            std::mem::forget(owner);
            (host, id, resumer)
        });
        let mut samples: Vec<u64> = Vec::new();
        g.bench_function(BenchmarkId::new("threadhost", turns), |b| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = Instant::now();
                        let snap = resumer.resume(&id, false).await.expect("resume");
                        let d = t0.elapsed();
                        assert_eq!(snap.turns.len(), turns as usize);
                        total += d;
                        samples.push(d.as_nanos() as u64);
                        resumer.unsubscribe(&id).await.expect("unsubscribe");
                    }
                    total
                })
            });
        });
        report_resume("threadhost", turns, &mut samples);
        sys.block_on(async move {
            host.shutdown().await;
        });
    }
    if common::selected(&format!("warm-resume/mutex-map/{turns}")) {
        let rt = tokio_rt();
        let sink = Arc::new(Sink::default());
        let (host, id, resumer) = rt.block_on(async {
            let host = baseline::MutexMapHost::new(
                Arc::new(MemoryStore::new()),
                Duration::from_secs(1800),
            );
            let (owner, rx) = host.connect(false).await;
            spawn_map_drain(rx, Arc::clone(&sink), per_turn(20));
            let id = host.start_thread(owner).await;
            for i in 0..turns {
                host.start_turn(&id, words(20)).await.expect("turn");
                sink.wait_for(per_turn(20) * (i + 1), ROUND_BOUND).await;
            }
            let (resumer, rx) = host.connect(false).await;
            spawn_map_drain(rx, Arc::new(Sink::default()), u64::MAX);
            (host, id, resumer)
        });
        let mut samples: Vec<u64> = Vec::new();
        g.bench_function(BenchmarkId::new("mutex-map", turns), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = Instant::now();
                        let got = host.resume(resumer, &id).await.expect("resume");
                        let d = t0.elapsed();
                        assert_eq!(got.len(), turns as usize);
                        total += d;
                        samples.push(d.as_nanos() as u64);
                        host.unsubscribe(resumer, &id).await;
                    }
                    total
                })
            });
        });
        report_resume("mutex-map", turns, &mut samples);
        rt.shutdown_background();
    }
    if common::selected(&format!("warm-resume/raw-actix/{turns}")) {
        // The floor of any design that composes the resume on the thread's own arbiter: a
        // request to an actor on another arbiter and its answer, doing nothing (then a second
        // one off the clock, as the others unsubscribe).
        let arbiter = Arbiter::new();
        let echo = Echo::start_in_arbiter(&arbiter.handle(), |_| Echo);
        let mut samples: Vec<u64> = Vec::new();
        g.bench_function(BenchmarkId::new("raw-actix", turns), |b| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = Instant::now();
                        let got = echo.send(Ping(turns)).await.expect("echo");
                        let d = t0.elapsed();
                        assert_eq!(got, turns);
                        total += d;
                        samples.push(d.as_nanos() as u64);
                        echo.send(Ping(0)).await.expect("echo");
                    }
                    total
                })
            });
        });
        report_resume("raw-actix", turns, &mut samples);
        arbiter.stop();
    }
    g.finish();
}

/// Answers every [`Ping`] with its number: the round trip the warm-resume floor measures.
struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Ping(u64);

impl Handler<Ping> for Echo {
    type Result = u64;
    fn handle(&mut self, Ping(n): Ping, _ctx: &mut Context<Self>) -> u64 {
        n
    }
}

fn report_resume(peer: &str, turns: u64, samples: &mut [u64]) {
    let p50 = common::percentile(samples, 50.0) as f64 / 1e3;
    let p99 = common::percentile(samples, 99.0) as f64 / 1e3;
    println!(
        "   warm resume {peer}: p50 {p50:.1} us, p99 {p99:.1} us over {} resumes",
        samples.len()
    );
    record("warm-resume", peer, turns, "p50", p50, "us");
    record("warm-resume", peer, turns, "p99", p99, "us");
}

fn fan_out_sizes() -> Vec<usize> {
    pick(vec![10, 100, 1000], vec![1000])
}

fn many_threads_sizes() -> Vec<usize> {
    pick(vec![100, 1000, 10_000], vec![10_000])
}

const PEERS: [&str; 3] = ["raw-actix", "mutex-map", "threadhost"];

/// What each group measures, in words (printed once, before its first benchmark).
fn describe(group: &str) -> String {
    match group {
        "warm-resume" => "warm resume: resume (turns included) of a loaded thread with 10 turns of 20 deltas and one other subscriber; time of the resume call, in-process; raw-actix: a request to a do-nothing actor on another arbiter and its answer, the floor of any resume composed on the thread's arbiter".to_owned(),
        "fan-out" => {
            let n = pick(200, 40);
            format!(
                "fan-out: one thread, S subscribers, turns of {n} deltas ({} notifications per subscriber per turn); deliveries per second into subscribers' queues, CPU time per delivery, and emit-to-receive latency of deltas (queueing included: a round emits everything at once)",
                per_turn(n)
            )
        }
        _ => format!(
            "many-threads: T threads with one subscriber each, a turn of {} deltas on every thread at once; deliveries per second over all threads, CPU time per delivery, emit-to-receive latency of deltas",
            pick(40, 20)
        ),
    }
}

/// Every benchmark id, in the order they run.
fn all_ids() -> Vec<String> {
    let mut ids = vec![
        "warm-resume/threadhost/10".to_owned(),
        "warm-resume/mutex-map/10".to_owned(),
        "warm-resume/raw-actix/10".to_owned(),
    ];
    for (group, sizes) in [
        ("fan-out", fan_out_sizes()),
        ("many-threads", many_threads_sizes()),
    ] {
        for s in sizes {
            ids.extend(PEERS.iter().map(|p| format!("{group}/{p}/{s}")));
        }
    }
    ids
}

/// `--features bench-mimalloc`: every peer allocates with mimalloc, as the server binary does.
#[cfg(feature = "bench-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Each benchmark runs in a fresh process of its own (this binary, re-run with an exact
    // filter), so that no peer inherits another's heap, tasks or threads, and the order in
    // which they run does not favour anyone.
    if !common::benching() {
        return;
    }
    if std::env::var_os("THREADHOST_BENCH_CHILD").is_none() {
        let exe = std::env::current_exe().expect("own path");
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--list") {
            for id in all_ids() {
                println!("{id}: benchmark");
            }
            return;
        }
        let passthrough: Vec<&String> = args.iter().filter(|a| a.starts_with("--")).collect();
        let mut group = String::new();
        for id in all_ids().into_iter().filter(|id| common::selected(id)) {
            let g = id.split('/').next().unwrap_or_default();
            if g != group {
                group = g.to_owned();
                say(&describe(&group));
            }
            let status = std::process::Command::new(&exe)
                .env("THREADHOST_BENCH_CHILD", "1")
                .args(&passthrough)
                .args(["--exact", &id])
                .status()
                .expect("run a benchmark process");
            assert!(status.success(), "benchmark {id} failed: {status}");
        }
        return;
    }
    let mut c = common::criterion();
    let sys = System::new();
    warm_resume(&mut c, &sys);
    fan_out(&mut c, &sys);
    many_threads(&mut c, &sys);
    c.final_summary();
}
