//! End to end over WebSocket: the `threadhost serve` binary on 127.0.0.1 (port 0) and a load
//! generator in this process: 100 WebSocket clients, each starts one thread and streams turns of
//! the scripted agent (100 threads streaming at once) for a fixed time. Twice, each on a fresh
//! server:
//!
//! - `end-to-end`: turns back to back (a client starts the next when `turn/completed` arrives):
//!   the most the server and the machine sustain, and the latency at that saturation;
//! - `end-to-end-paced`: each client starts a turn on a fixed schedule, 2,600 turns/s in all
//!   (about 150,000 notifications/s, 1.5x the target rate), or as soon as its previous turn
//!   completed if that is later: the latency at a given load, below saturation.
//!
//! What it measures, exactly:
//! - notifications per second: JSON-RPC notifications received by all clients together, from
//!   the moment every client has its thread until the last client's last turn completed;
//! - latency from emit to client receive, on the notifications that carry the server's emit
//!   time: `item/started` (`startedAtMs`) and `item/completed` (`completedAtMs`), stamped by the
//!   thread actor when it emits them (4 per turn: the user message's and the agent message's).
//!   The server stamps whole milliseconds (truncated), so each value over-states the latency by
//!   less than 1 ms; client and server share the machine's clock;
//! - turn round trip: from sending `turn/start` to receiving its `turn/completed`.
//!
//! Clients opt out of `thread/status/changed` in `initialize` (a broadcast every client gets for
//! every turn of every thread; it would be 3/4 of the traffic and is not the turn stream).
//! The server and the load generator share the machine's 2 cores; the generator runs on one
//! OS thread.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{percentile, pick, record, say};

const CLIENTS: usize = 100;
const BOUND: Duration = Duration::from_secs(30);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `threadhost serve` on a free loopback port; returns it and its address.
fn start_server(data_dir: &std::path::Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_threadhost"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the threadhost binary starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("listening on ws://").nth(1) {
                    let _ = tx.send(rest.trim_end_matches('/').to_owned());
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(BOUND)
        .expect("the server prints its address within 30 s");
    (Server(child), addr)
}

#[derive(Default)]
struct ClientStats {
    notifications: u64,
    turns: u64,
    /// Emit-to-receive latencies, microseconds.
    latencies: Vec<u64>,
    /// The same, by position in the turn: user item started, completed, agent item started,
    /// completed.
    by_kind: [Vec<u64>; 4],
    /// turn/start to turn/completed, microseconds.
    round_trips: Vec<u64>,
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next text frame.
async fn next_text(ws: &mut Ws) -> tokio_tungstenite::tungstenite::Utf8Bytes {
    loop {
        match tokio::time::timeout(BOUND, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t,
            Ok(Some(Ok(_))) => {}
            other => panic!("loadgen: the connection ended: {other:?}"),
        }
    }
}

async fn next(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("the server sends JSON")
}

/// The string value of `"key":"..."` in compact JSON, without parsing the whole message: the
/// generator shares the machine's two cores with the server and must stay cheap.
fn str_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].strip_prefix(":\"")?;
    rest.split('"').next()
}

/// The integer value of `"key":123` in compact JSON.
fn int_field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].strip_prefix(':')?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Sends a request and waits for its response (counting nothing).
async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    send(ws, json!({"id": id, "method": method, "params": params})).await;
    loop {
        let m = next(ws).await;
        if m.get("id").and_then(Value::as_u64) == Some(id) && m.get("method").is_none() {
            assert!(m.get("error").is_none(), "{method} failed: {m}");
            return m["result"].clone();
        }
    }
}

/// Turns per second offered by all clients together in the paced run.
const PACED_TURNS_PER_S: u64 = 2_600;

async fn client(
    addr: String,
    words: usize,
    ready: std::sync::Arc<tokio::sync::Barrier>,
    deadline: std::sync::Arc<std::sync::OnceLock<Instant>>,
    pace: Option<(Duration, Duration)>,
) -> ClientStats {
    let (mut ws, _) = tokio::time::timeout(
        BOUND,
        tokio_tungstenite::connect_async(format!("ws://{addr}/")),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    call(
        &mut ws,
        1,
        "initialize",
        json!({
            "clientInfo": {"name": "threadhost-loadgen", "version": "0"},
            "capabilities": {"optOutNotificationMethods": ["thread/status/changed", "thread/started"]},
        }),
    )
    .await;
    send(&mut ws, json!({"method": "initialized"})).await;
    let thread = call(&mut ws, 2, "thread/start", json!({"cwd": null})).await["thread"]["id"]
        .as_str()
        .expect("a thread id")
        .to_owned();
    let text: Vec<String> = (0..words).map(|i| format!("w{i}")).collect();
    let params = json!({"threadId": thread, "input": [{"type": "text", "text": text.join(" ")}]});
    ready.wait().await;
    let deadline = *deadline.get().expect("set before the barrier opens");
    let mut st = ClientStats::default();
    let mut id = 10;
    // Paced: (interval, this client's offset in it), so clients do not start in step; kept
    // as (the next slot, interval).
    let mut pace = pace.map(|(interval, offset)| (tokio::time::Instant::now() + offset, interval));
    while Instant::now() < deadline {
        if let Some((at, interval)) = pace.as_mut() {
            tokio::time::sleep_until(*at).await;
            // The next slot; a client whose turn overran starts the next one at once, without
            // making up for the missed slots in a burst.
            *at = (*at + *interval).max(tokio::time::Instant::now());
            if Instant::now() >= deadline {
                break;
            }
        }
        id += 1;
        let sent = Instant::now();
        send(
            &mut ws,
            json!({"id": id, "method": "turn/start", "params": params}),
        )
        .await;
        loop {
            let text = next_text(&mut ws).await;
            let Some(method) = str_field(&text, "\"method\"") else {
                assert!(text.contains("\"result\""), "turn/start failed: {}", &*text);
                continue; // the turn/start response
            };
            st.notifications += 1;
            let agent = usize::from(!text.contains("\"type\":\"userMessage\""));
            let stamp = match method {
                "item/started" => int_field(&text, "\"startedAtMs\"").map(|t| (t, agent * 2)),
                "item/completed" => {
                    int_field(&text, "\"completedAtMs\"").map(|t| (t, 1 + agent * 2))
                }
                _ => None,
            };
            if let Some((ms, kind)) = stamp {
                let l = unix_micros().saturating_sub(ms * 1000);
                st.latencies.push(l);
                st.by_kind[kind].push(l);
            }
            if method == "turn/completed" {
                st.round_trips.push(sent.elapsed().as_micros() as u64);
                st.turns += 1;
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    st
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !common::benching() {
        return;
    }
    let words = pick(50, 20);
    let run = pick(Duration::from_secs(10), Duration::from_secs(3));
    if common::selected("end-to-end/threadhost") {
        say(&format!(
            "end to end: threadhost serve on 127.0.0.1, {CLIENTS} WebSocket clients each streaming turns of {words} words back to back on its own thread for {run:?}; notifications/s received by all clients, and emit-to-receive latency of the time-stamped notifications (item/started, item/completed; 1 ms resolution)"
        ));
        measure("end-to-end", words, run, None);
    }
    if common::selected("end-to-end-paced/threadhost") {
        say(&format!(
            "end to end, paced: the same, but every client starts a turn every {} ms ({PACED_TURNS_PER_S} turns/s offered in all), or at once when its previous turn ends later; latency below saturation",
            CLIENTS as u64 * 1000 / PACED_TURNS_PER_S
        ));
        let interval = Duration::from_nanos(CLIENTS as u64 * 1_000_000_000 / PACED_TURNS_PER_S);
        measure("end-to-end-paced", words, run, Some(interval));
    }
}

/// One run on a fresh server: prints and records rate, latency and turn round trip.
fn measure(workload: &str, words: usize, run: Duration, interval: Option<Duration>) {
    let data = tempfile::tempdir().expect("a temporary data directory");
    let (server, addr) = start_server(data.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (stats, elapsed) = rt.block_on(async {
        let ready = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
        let deadline = std::sync::Arc::new(std::sync::OnceLock::new());
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let pace = interval.map(|iv| (iv, iv * i as u32 / CLIENTS as u32));
                tokio::spawn(client(
                    addr.clone(),
                    words,
                    std::sync::Arc::clone(&ready),
                    std::sync::Arc::clone(&deadline),
                    pace,
                ))
            })
            .collect();
        let t0 = Instant::now();
        let _ = deadline.set(t0 + run);
        ready.wait().await;
        let t0 = Instant::now();
        let mut stats = Vec::new();
        for t in tasks {
            stats.push(t.await.expect("client task"));
        }
        (stats, t0.elapsed())
    });
    drop(server);
    let notifications: u64 = stats.iter().map(|s| s.notifications).sum();
    let turns: u64 = stats.iter().map(|s| s.turns).sum();
    let mut lat: Vec<u64> = stats
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    let mut rtt: Vec<u64> = stats
        .iter()
        .flat_map(|s| s.round_trips.iter().copied())
        .collect();
    let rate = notifications as f64 / elapsed.as_secs_f64();
    let (p50, p99, p999) = (
        percentile(&mut lat, 50.0) as f64 / 1e3,
        percentile(&mut lat, 99.0) as f64 / 1e3,
        percentile(&mut lat, 99.9) as f64 / 1e3,
    );
    let (r50, r99) = (
        percentile(&mut rtt, 50.0) as f64 / 1e3,
        percentile(&mut rtt, 99.0) as f64 / 1e3,
    );
    println!(
        "   {notifications} notifications in {:.2} s: {rate:.0} notifications/s ({turns} turns)",
        elapsed.as_secs_f64()
    );
    println!(
        "   emit-to-receive latency over {} samples: p50 {p50:.2} ms, p99 {p99:.2} ms, p999 {p999:.2} ms (each over-states by < 1 ms)",
        lat.len()
    );
    println!("   turn round trip (turn/start to turn/completed): p50 {r50:.2} ms, p99 {r99:.2} ms");
    // `LOADGEN_HIST=1` prints the latency histogram in whole milliseconds.
    if std::env::var("LOADGEN_HIST").is_ok() {
        let mut h = std::collections::BTreeMap::new();
        for l in &lat {
            *h.entry(l / 1000).or_insert(0u64) += 1;
        }
        println!("     histogram (ms: count): {h:?}");
    }
    let kinds = [
        "user item/started",
        "user item/completed",
        "agent item/started",
        "agent item/completed",
    ];
    for (k, name) in kinds.iter().enumerate() {
        let mut v: Vec<u64> = stats
            .iter()
            .flat_map(|s| s.by_kind[k].iter().copied())
            .collect();
        println!(
            "     {name}: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&mut v, 50.0) as f64 / 1e3,
            percentile(&mut v, 99.0) as f64 / 1e3
        );
    }
    record(
        workload,
        "threadhost",
        CLIENTS as u64,
        "notifications_per_s",
        rate,
        "1/s",
    );
    record(
        workload,
        "threadhost",
        CLIENTS as u64,
        "latency_p50",
        p50,
        "ms",
    );
    record(
        workload,
        "threadhost",
        CLIENTS as u64,
        "latency_p99",
        p99,
        "ms",
    );
    record(
        workload,
        "threadhost",
        CLIENTS as u64,
        "latency_p999",
        p999,
        "ms",
    );
    record(
        workload,
        "threadhost",
        CLIENTS as u64,
        "turn_rtt_p50",
        r50,
        "ms",
    );
    record(
        workload,
        "threadhost",
        CLIENTS as u64,
        "turn_rtt_p99",
        r99,
        "ms",
    );
}
