//! Shared by every bench binary: short mode, the timestamping agent, the delivery sink, result
//! records and small measurement helpers. Included with `#[path]`, not a bench of its own.

#![allow(dead_code, unreachable_pub)] // each bench binary uses a different part of it

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use threadhost_actors::{
    Agent, AgentError, AgentFactory, LocalBoxFuture, ModelInfo, Notification, ThreadId, ThreadItem,
    TokenUsageBreakdown, TurnContext, TurnError, TurnInput, UserInput, SCRIPTED_MODEL,
};
use tokio::sync::Notify;

/// `THREADHOST_BENCH_SHORT=1`: smaller sizes and short criterion windows, for the CI smoke run.
pub fn short() -> bool {
    std::env::var("THREADHOST_BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether this process was started by `cargo bench` (which passes `--bench`). `cargo test
/// --all-targets` also runs `harness = false` benches, without it, in the debug profile: they
/// then only say so and return (CI measures them with `cargo bench` in short mode instead).
pub fn benching() -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        println!("skipped: this is a benchmark; run it with `cargo bench` (THREADHOST_BENCH_SHORT=1 for a smoke run)");
    }
    yes
}

/// Picks the full-mode or the short-mode value.
pub fn pick<T>(full: T, short_value: T) -> T {
    if short() {
        short_value
    } else {
        full
    }
}

/// Criterion configured for these benches: flat sampling (every iteration is a whole round of
/// work, 10 ms to 1 s), windows from the mode, then whatever the command line says.
pub fn criterion() -> criterion::Criterion {
    let c = criterion::Criterion::default().sample_size(10);
    let c = if short() {
        c.warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(500))
    } else {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
    };
    c.configure_from_args()
}

/// Whether benchmark `id` passes the command line's filter (criterion's positional argument),
/// so a filtered run does not even set up what it will not measure.
pub fn selected(id: &str) -> bool {
    const WITH_VALUE: &[&str] = &[
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--measurement-time",
        "--warm-up-time",
        "--sample-size",
        "--profile-time",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filter = None;
    let mut i = 0;
    while i < args.len() {
        if WITH_VALUE.contains(&args[i].as_str()) {
            i += 2;
            continue;
        }
        if !args[i].starts_with('-') {
            filter = Some(args[i].clone());
        }
        i += 1;
    }
    let exact = args.iter().any(|a| a == "--exact");
    filter.is_none_or(|f| if exact { id == f } else { id.contains(&f) })
}

// ---- time stamps ---------------------------------------------------------------------------

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since this process's bench epoch: what agents write into each delta, so a
/// receiver can tell how long the delta took from emit to receipt.
pub fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A turn input of `n` words: the scripted agent and the stamp agent emit one delta per word.
pub fn words(n: usize) -> Vec<UserInput> {
    let text: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    vec![UserInput::text(text.join(" "))]
}

/// Notifications a subscriber receives per turn of `n` words, without broadcasts: turn/started,
/// the user item's started and completed, the agent message's started, `n` deltas and
/// completed, token usage, turn/completed.
pub fn per_turn(n: usize) -> u64 {
    n as u64 + 7
}

// ---- the stamp agent -----------------------------------------------------------------------

/// The scripted agent's plain-text path (item started, one delta per input word with a yield
/// between deltas as a model stream would, item completed, token usage), except that each
/// delta's text is the emit time from [`now_ns`]. Used through the public `AgentFactory` trait.
#[derive(Debug, Default)]
pub struct StampAgents;

impl AgentFactory for StampAgents {
    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: SCRIPTED_MODEL.to_owned(),
            display_name: "bench stamp agent".to_owned(),
            description: "deltas carry their emit time".to_owned(),
            is_default: true,
        }]
    }

    fn create(&self, _thread_id: &ThreadId, _model: &str) -> Result<Box<dyn Agent>, AgentError> {
        Ok(Box::new(StampAgent))
    }
}

struct StampAgent;

/// Words in the first text input.
pub fn word_count(input: &[UserInput]) -> usize {
    input
        .iter()
        .find_map(|i| match i {
            UserInput::Text { text, .. } => Some(text.split_whitespace().count()),
            _ => None,
        })
        .unwrap_or(0)
}

impl Agent for StampAgent {
    fn run_turn(
        &mut self,
        input: TurnInput,
        ctx: TurnContext,
    ) -> LocalBoxFuture<'static, Result<(), TurnError>> {
        let n = word_count(&input.input);
        Box::pin(async move {
            let id = format!("{}-msg", ctx.turn_id());
            ctx.item_started(ThreadItem::AgentMessage {
                id: id.clone(),
                text: String::new(),
            });
            for _ in 0..n {
                ctx.agent_message_delta(&id, now_ns().to_string());
                tokio::task::yield_now().await;
            }
            ctx.item_completed(ThreadItem::AgentMessage {
                id,
                text: String::new(),
            });
            ctx.token_usage(usage(n), Some(128_000));
            Ok(())
        })
    }

    fn shutdown(&mut self) -> Result<LocalBoxFuture<'static, ()>, AgentError> {
        Ok(Box::pin(async {}))
    }
}

/// Token usage of a turn of `n` words (as the scripted agent reports it).
pub fn usage(n: usize) -> TokenUsageBreakdown {
    let n = n as i64;
    TokenUsageBreakdown {
        total_tokens: 2 * n,
        input_tokens: n,
        cached_input_tokens: 0,
        output_tokens: n,
        reasoning_output_tokens: 0,
    }
}

// ---- counting deliveries -------------------------------------------------------------------

/// One latency sample is kept per this many deltas received.
pub const SAMPLE_EVERY: u64 = 8;

/// Where consumers report what they received. Each consumer counts locally and reports once
/// per round (when it has received its share), so the count costs nothing per delivery.
#[derive(Debug, Default)]
pub struct Sink {
    count: AtomicU64,
    notify: Notify,
    latencies: Mutex<Vec<u64>>,
}

impl Sink {
    /// A consumer received `n` more deliveries, with latency samples (ns).
    pub fn add(&self, n: u64, samples: &mut Vec<u64>) {
        if !samples.is_empty() {
            lock(&self.latencies).append(samples);
        }
        self.count.fetch_add(n, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Deliveries so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until `target` deliveries were reported; panics after `bound` with what is missing.
    pub async fn wait_for(&self, target: u64, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self.count();
            if n >= target {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("bench: only {n} of {target} deliveries arrived within {bound:?}");
            }
        }
    }

    /// Takes the latency samples collected so far.
    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.latencies))
    }
}

/// Per-consumer counting: counts turn-stream notifications, samples delta latencies, reports to
/// the sink every `per_round` deliveries.
#[derive(Debug)]
pub struct Counter {
    sink: Arc<Sink>,
    per_round: u64,
    local: u64,
    deltas: u64,
    samples: Vec<u64>,
}

impl Counter {
    pub fn new(sink: Arc<Sink>, per_round: u64) -> Self {
        Self {
            sink,
            per_round,
            local: 0,
            deltas: 0,
            samples: Vec::new(),
        }
    }

    /// Counts one received notification (broadcasts and setup messages are not counted).
    pub fn notification(&mut self, n: &Notification) {
        match n {
            Notification::AgentMessageDelta { delta, .. } => {
                self.deltas += 1;
                if self.deltas % SAMPLE_EVERY == 0 {
                    if let Ok(t) = delta.parse::<u64>() {
                        self.samples.push(now_ns().saturating_sub(t));
                    }
                }
            }
            Notification::TurnStarted { .. }
            | Notification::ItemStarted { .. }
            | Notification::ItemCompleted { .. }
            | Notification::TokenUsageUpdated { .. }
            | Notification::TurnCompleted { .. } => {}
            _ => return,
        }
        self.bump();
    }

    /// Counts one delivery that carries its emit time directly (raw actix).
    pub fn stamped(&mut self, emitted_ns: u64) {
        self.deltas += 1;
        if self.deltas % SAMPLE_EVERY == 0 {
            self.samples.push(now_ns().saturating_sub(emitted_ns));
        }
        self.bump();
    }

    fn bump(&mut self) {
        self.local += 1;
        if self.local == self.per_round {
            self.sink.add(self.local, &mut self.samples);
            self.local = 0;
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- statistics ----------------------------------------------------------------------------

/// The `p`-th percentile (0..=100) of `v` (sorted in place); 0 when empty.
pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Median of `v` (sorted in place); 0 when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ---- machine facts and result records ------------------------------------------------------

/// The 1-minute load average, from /proc/loadavg.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Resident set size of this process in bytes, from /proc/self/status (VmRSS).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time (user + system) this process has used so far, all threads, from /proc/self/stat
/// (clock ticks of 10 ms). On a shared 2-core machine, CPU time per delivery is steadier than
/// wall-clock throughput: it does not count the time other processes held the cores.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11) // state is field 3; utime is field 14
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    Duration::from_millis(ticks * 10)
}

/// `target/threadhost-bench/`, found from this executable's path (`target/release/deps/...`).
pub fn results_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let target = exe
        .ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let dir = target.join("threadhost-bench");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// One measured value, appended as a JSON line to `target/threadhost-bench/results.jsonl`
/// (read by `benches/plot.py` and copied into BENCHMARKS.md).
pub fn record(workload: &str, peer: &str, param: u64, metric: &str, value: f64, unit: &str) {
    let line = serde_json::json!({
        "workload": workload,
        "peer": peer,
        "param": param,
        "metric": metric,
        "value": value,
        "unit": unit,
        "short": short(),
        "allocator": if cfg!(feature = "bench-mimalloc") { "mimalloc" } else { "system" },
        "load": load_average(),
        "unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let path = results_dir().join("results.jsonl");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Prints what a bench measures, in words, before it runs.
pub fn say(what: &str) {
    println!("\n== {what}");
    println!(
        "   (load average {:.2}{})",
        load_average(),
        if short() { ", short mode" } else { "" }
    );
}
