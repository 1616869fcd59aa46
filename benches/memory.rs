//! Memory: resident bytes per loaded idle thread with one subscriber.
//!
//! Each measurement runs in a child process of its own (this binary re-run with `--child`), so
//! nothing else allocated by the benches pollutes it: the child starts the peer, reads VmRSS,
//! loads N idle threads (one subscriber each; one connection per 1,000 threads), waits for them
//! to settle, reads VmRSS again and prints the delta divided by N.
//!
//! Peers: `raw-actix` (one trivial actor per thread holding its subscriber's address: the floor),
//! `mutex-map` (the baseline's thread entry, state and listener task), `threadhost` (public API).

#[path = "baseline/mutex_map.rs"]
mod baseline;
#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use threadhost_actors::{HostConfig, MemoryStore, StartThread, ThreadHost, ThreadId};

use common::{pick, record, rss_bytes, say, StampAgents};

const PER_CONNECTION: usize = 1000;
const BATCH: usize = 1000;

/// `--features bench-mimalloc`: allocate with mimalloc, as the server binary does.
#[cfg(feature = "bench-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let peer = args[i + 1].clone();
        let n: usize = args[i + 2].parse().expect("thread count");
        child(&peer, n);
        return;
    }
    if args.iter().any(|a| a == "--list") || !common::benching() {
        return;
    }
    // `cargo bench -- FILTER` passes a filter; this bench has one group and ignores it.
    let sizes: Vec<usize> = pick(vec![100_000, 1_000_000], vec![20_000]);
    say(&format!(
        "memory: resident bytes per loaded idle thread with one subscriber (RSS delta / threads), at {sizes:?} threads, each in a fresh child process"
    ));
    let exe = std::env::current_exe().expect("own path");
    for &n in &sizes {
        for peer in ["raw-actix", "mutex-map", "threadhost"] {
            let out = Command::new(&exe)
                .args(["--child", peer, &n.to_string()])
                .output()
                .expect("run the child");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
                println!(
                    "   {peer} {n}: child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            };
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let (per_thread, total_mib, secs) = (f[0], f[1], f[2]);
            println!(
                "   {peer} {n} threads: {per_thread:.0} B per thread ({total_mib:.0} MiB in all), loaded in {secs:.2} s ({:.0} threads/s)",
                n as f64 / secs
            );
            record(
                "memory",
                peer,
                n as u64,
                "bytes_per_thread",
                per_thread,
                "B",
            );
            record("memory", peer, n as u64, "rss_delta_mib", total_mib, "MiB");
            record(
                "memory",
                peer,
                n as u64,
                "load_threads_per_s",
                n as f64 / secs,
                "1/s",
            );
        }
    }
}

fn report(n: usize, before: u64, took: Duration) {
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_bytes();
    let delta = after.saturating_sub(before);
    println!(
        "RESULT {} {} {}",
        delta as f64 / n as f64,
        delta as f64 / (1024.0 * 1024.0),
        took.as_secs_f64()
    );
}

fn child(peer: &str, n: usize) {
    match peer {
        "threadhost" => threadhost(n),
        "mutex-map" => mutex_map(n),
        "raw-actix" => raw(n),
        other => panic!("unknown peer {other}"),
    }
}

fn threadhost(n: usize) {
    let sys = System::new();
    sys.block_on(async {
        let host = ThreadHost::start(
            HostConfig {
                arbiters: 2,
                default_cwd: "/work".to_owned(),
                ..HostConfig::default()
            },
            Arc::new(StampAgents),
            Arc::new(MemoryStore::new()),
        );
        let conns: Vec<_> = (0..n.div_ceil(PER_CONNECTION))
            .map(|_| host.connect())
            .collect();
        // Warm up the arbiters and allocator with one thread, then measure from here.
        let warm = conns[0]
            .0
            .start_thread(StartThread::default())
            .await
            .expect("start");
        conns[0].0.close_thread(&warm.meta.id).await.expect("close");
        let before = rss_bytes();
        let t0 = Instant::now();
        let mut started = 0;
        while started < n {
            let mut set = tokio::task::JoinSet::new();
            for i in started..(started + BATCH).min(n) {
                let conn = conns[i / PER_CONNECTION].0.clone();
                set.spawn_local(async move {
                    conn.start_thread(StartThread::default())
                        .await
                        .expect("start");
                });
            }
            while set.join_next().await.is_some() {}
            started = (started + BATCH).min(n);
        }
        let took = t0.elapsed();
        assert_eq!(host.loaded_threads().len(), n);
        report(n, before, took);
        std::process::exit(0);
    });
}

fn mutex_map(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let host =
            baseline::MutexMapHost::new(Arc::new(MemoryStore::new()), Duration::from_secs(1800));
        let mut conns = Vec::new();
        for _ in 0..n.div_ceil(PER_CONNECTION) {
            conns.push(host.connect(false).await);
        }
        let _warm = host.start_thread(conns[0].0).await;
        let before = rss_bytes();
        let t0 = Instant::now();
        for i in 0..n {
            host.start_thread(conns[i / PER_CONNECTION].0).await;
        }
        let took = t0.elapsed();
        assert_eq!(host.loaded().await, n + 1);
        report(n, before, took);
        std::process::exit(0);
    });
}

/// The floor: one actor per thread that holds its subscriber's address and nothing else.
struct Idle {
    _id: ThreadId,
    _subscriber: Addr<Subscriber>,
}
impl Actor for Idle {
    type Context = Context<Self>;
}
struct Subscriber;
impl Actor for Subscriber {
    type Context = Context<Self>;
}

fn raw(n: usize) {
    let sys = System::new();
    sys.block_on(async {
        let arbiters: Vec<Arbiter> = (0..2).map(|_| Arbiter::new()).collect();
        let subs: Vec<Addr<Subscriber>> = (0..n.div_ceil(PER_CONNECTION))
            .map(|_| Subscriber.start())
            .collect();
        let before = rss_bytes();
        let t0 = Instant::now();
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let s = subs[i / PER_CONNECTION].clone();
            let id = ThreadId::new();
            addrs.push(Idle::start_in_arbiter(
                &arbiters[i % 2].handle(),
                move |_| Idle {
                    _id: id,
                    _subscriber: s,
                },
            ));
        }
        // Let the arbiters start them all.
        while addrs.iter().any(|a| !a.connected()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let took = t0.elapsed();
        report(n, before, took);
        std::process::exit(0);
    });
}
