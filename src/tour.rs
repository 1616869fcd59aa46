//! `threadhost tour`: a narrated walk through the lifecycle for newcomers.
//!
//! It starts an embedded server (the real runtime, the real SQLite store in a temporary data
//! directory, the real JSON-RPC dispatcher) with a short unload delay, connects two clients,
//! and prints what each one sends and receives while a thread is started, streams a turn,
//! asks for an approval, is unsubscribed, unloads when its delay ends, and is resumed cold
//! from the store. Clients talk through the same `Session` the transports use, without a
//! socket, so every line printed is a real protocol message.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use threadhost_actors::{HostConfig, ScriptedAgentFactory, ThreadHost};

use crate::rpc::{Outgoing, ServerInfo, Session};
use crate::store::SqliteStore;
use crate::wire::Frame;

/// Bound on every wait of the tour.
const BOUND: Duration = Duration::from_secs(10);

/// Why the tour stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TourError {
    /// The temporary data directory or the store could not be set up.
    #[error("cannot set up the tour's data directory {}: {message}", path.display())]
    Setup {
        /// The directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The server did not answer as expected.
    #[error("the tour stopped: {0}")]
    Unexpected(String),
}

/// One client of the tour: its session, its outgoing stream, and its name for the narration.
struct Client {
    name: &'static str,
    session: Session,
    out: Outgoing,
    next_id: i64,
}

impl Client {
    fn open(name: &'static str, host: &ThreadHost, info: &Arc<ServerInfo>) -> Self {
        let (session, out) = Session::open(host, Arc::clone(info));
        Self {
            name,
            session,
            out,
            next_id: 1,
        }
    }

    async fn send(&mut self, msg: Value) {
        println!("  {:<5} → {}", self.name, summary(&msg));
        self.session.receive(&msg.to_string()).await;
    }

    /// Sends a request and returns its result, printing everything received meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, TourError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, "method": method, "params": params}))
            .await;
        loop {
            let m = self.recv().await?;
            if m.get("method").is_none() && m["id"] == id {
                return match m.get("error") {
                    Some(e) => Err(TourError::Unexpected(format!("{method} failed: {e}"))),
                    None => Ok(m["result"].clone()),
                };
            }
        }
    }

    /// The next message, printed.
    async fn recv(&mut self) -> Result<Value, TourError> {
        let frame = tokio::time::timeout(BOUND, self.out.next())
            .await
            .map_err(|_| {
                TourError::Unexpected(format!("{} received nothing within {BOUND:?}", self.name))
            })?;
        match frame {
            Some(Frame::Text(text)) => {
                let m: Value = serde_json::from_str(&text)
                    .map_err(|e| TourError::Unexpected(format!("not JSON: {e}")))?;
                println!("  {:<5} ← {}", self.name, summary(&m));
                Ok(m)
            }
            Some(Frame::Close(reason)) => Err(TourError::Unexpected(format!(
                "{} was disconnected: {reason}",
                self.name
            ))),
            None => Err(TourError::Unexpected(format!(
                "{}'s connection closed",
                self.name
            ))),
        }
    }

    /// Receives (and prints) until `method` arrives.
    async fn until(&mut self, method: &str) -> Result<Value, TourError> {
        loop {
            let m = self.recv().await?;
            if m["method"] == method {
                return Ok(m);
            }
        }
    }
}

/// One line for a message: its method (or `response`) and the fields a person cares about.
fn summary(m: &Value) -> String {
    let p = &m["params"];
    let method = m["method"].as_str();
    let detail = match method {
        Some("initialize") => format!("client {}", p["clientInfo"]["name"]),
        Some("thread/status/changed") => match p["status"]["activeFlags"].as_array() {
            Some(flags) if !flags.is_empty() => {
                format!("{} {}", p["status"]["type"], p["status"]["activeFlags"])
            }
            _ => format!("{}", p["status"]["type"]),
        },
        Some("item/agentMessage/delta") => format!("{:?}", p["delta"].as_str().unwrap_or_default()),
        Some("item/started" | "item/completed") => {
            let item = &p["item"];
            match item["type"].as_str() {
                Some("agentMessage") => format!(
                    "agentMessage {:?}",
                    item["text"].as_str().unwrap_or_default()
                ),
                Some("userMessage") => format!(
                    "userMessage {:?}",
                    item["content"][0]["text"].as_str().unwrap_or_default()
                ),
                Some("commandExecution") => format!(
                    "commandExecution `{}` {}",
                    item["command"].as_str().unwrap_or_default(),
                    item["status"]
                ),
                other => format!("{other:?}"),
            }
        }
        Some("turn/started" | "turn/completed") => format!("turn {}", p["turn"]["status"]),
        Some("turn/start") => format!("{:?}", p["input"][0]["text"].as_str().unwrap_or_default()),
        Some("thread/tokenUsage/updated") => format!(
            "{} tokens in total",
            p["tokenUsage"]["total"]["totalTokens"]
        ),
        Some("item/commandExecution/requestApproval") => format!(
            "(server request id {}) may I run `{}`?",
            m["id"],
            p["command"].as_str().unwrap_or_default()
        ),
        Some("serverRequest/resolved") => format!("request {}", p["requestId"]),
        Some(_) => String::new(),
        None if m.get("error").is_some() => format!("error {}", m["error"]["message"]),
        None if m.get("result").is_some()
            && m.get("method").is_none()
            && m["result"].get("decision").is_some() =>
        {
            format!("answer to request {}: {}", m["id"], m["result"]["decision"])
        }
        None => {
            let r = &m["result"];
            if let Some(t) = r.get("thread") {
                let turns = t["turns"].as_array().map_or(0, Vec::len);
                format!(
                    "thread {} ({}, {turns} turns)",
                    t["id"].as_str().unwrap_or_default(),
                    t["status"]["type"]
                )
            } else if let Some(s) = r.get("status") {
                format!("{s}")
            } else {
                String::new()
            }
        }
    };
    let name = method.unwrap_or(if m.get("result").is_some() && m.get("id").is_some() {
        "response"
    } else {
        "message"
    });
    format!("{name} {detail}").trim_end().to_owned()
}

fn section(title: &str) {
    println!("\n== {title}");
    let _ = std::io::stdout().flush();
}

/// Runs the tour. Must run inside an actix `System`.
pub async fn tour(unload_delay: Duration) -> Result<(), TourError> {
    let dir = std::env::temp_dir().join(format!("threadhost-tour-{}", std::process::id()));
    let setup = |message: String| TourError::Setup {
        path: dir.clone(),
        message,
    };
    std::fs::create_dir_all(&dir).map_err(|e| setup(e.to_string()))?;
    let store = SqliteStore::open(&dir).map_err(|e| setup(e.to_string()))?;
    let config = HostConfig {
        unload_delay,
        shutdown_timeout: Duration::from_secs(2),
        ..HostConfig::default()
    };
    let host = ThreadHost::start(
        config,
        Arc::new(ScriptedAgentFactory::default()),
        Arc::new(store),
    );
    let info = Arc::new(ServerInfo::new(&dir));
    let result = walk(&host, &info, unload_delay).await;
    host.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn walk(host: &ThreadHost, info: &Arc<ServerInfo>, delay: Duration) -> Result<(), TourError> {
    println!(
        "threadhost tour: an embedded server, the scripted agent, two clients (alice and bob)."
    );
    println!(
        "Data directory: {} (removed at the end). Unload delay: {delay:?}.",
        info.codex_home
    );

    section("1. Both clients connect and complete the handshake");
    let mut alice = Client::open("alice", host, info);
    let mut bob = Client::open("bob", host, info);
    for c in [&mut alice, &mut bob] {
        c.call(
            "initialize",
            json!({"clientInfo": {"name": c.name, "version": "1"}}),
        )
        .await?;
        c.send(json!({"method": "initialized"})).await;
    }

    section("2. alice starts a thread: she is subscribed; thread/started is broadcast to everyone");
    let started = alice.call("thread/start", json!({})).await?;
    let thread = started["thread"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    alice.until("thread/started").await?;
    bob.until("thread/started").await?;

    section("3. A streamed turn: thread events go to subscribers only; status changes to everyone");
    alice
        .call(
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": "hello from the tour"}]}),
        )
        .await?;
    alice.until("turn/completed").await?;
    alice.until("thread/status/changed").await?;
    bob.until("thread/status/changed").await?;
    bob.until("thread/status/changed").await?;
    println!("  (bob saw only the two status changes: he is not subscribed)");

    section("4. The agent asks for an approval; alice answers; the turn goes on");
    alice
        .call(
            "turn/start",
            json!({"threadId": thread, "input": [{"type": "text", "text": "/approve cargo test"}]}),
        )
        .await?;
    let request = alice.until("item/commandExecution/requestApproval").await?;
    alice
        .send(json!({"id": request["id"], "result": {"decision": "accept"}}))
        .await;
    alice.until("turn/completed").await?;
    alice.until("thread/status/changed").await?;

    section("5. alice unsubscribes: the thread stays loaded until it has been idle and unsubscribed for the delay");
    alice
        .call("thread/unsubscribe", json!({"threadId": thread}))
        .await?;
    let loaded = bob.call("thread/loaded/list", json!({})).await?;
    println!(
        "  loaded threads right after the unsubscribe: {}",
        loaded["data"]
    );
    let mut left = delay;
    let tick = Duration::from_secs(1).min(delay);
    while !left.is_zero() && !tick.is_zero() {
        println!("  ... unloads in {left:?}");
        tokio::time::sleep(tick).await;
        left = left.saturating_sub(tick);
    }
    bob.until("thread/closed").await?;
    let loaded = bob.call("thread/loaded/list", json!({})).await?;
    println!("  loaded threads now: {}", loaded["data"]);

    section("6. bob resumes the thread cold: its turns come back from the store");
    let resumed = bob
        .call("thread/resume", json!({"threadId": thread}))
        .await?;
    for t in resumed["thread"]["turns"].as_array().into_iter().flatten() {
        let said: Vec<&str> = t["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["type"] == "agentMessage")
            .filter_map(|i| i["text"].as_str())
            .collect();
        println!(
            "  stored turn {} ({}): {:?}",
            t["id"].as_str().unwrap_or_default(),
            t["status"],
            said
        );
    }
    println!("\nThat is the lifecycle. Run `threadhost serve` and point any Codex app-server client at it.");
    Ok(())
}
