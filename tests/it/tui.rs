//! Replays of what the real Codex TUI (0.169.0) sends (`shared/codex-tui/*.jsonl`), against the
//! real server over WebSocket: a start-up with a turn, an approval and a question, then a
//! resume of the unloaded thread. Thread ids of the recording are replaced by the server's,
//! and server requests are answered as the recording answers them.

use std::collections::VecDeque;

use serde_json::{json, Value};

use crate::support::{Client, Server};

const RECORDINGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/codex-tui");
/// The thread the recorded session started.
const RECORDED_THREAD: &str = "8d2c7269-aec3-4d6f-8604-b538d6f69972";
/// A thread of an earlier session of the recording's server: a fresh server does not know it.
const FOREIGN_THREAD: &str = "0deb9dd5-312d-407a-a4ef-b622bf056f66";
/// Methods whose failure makes the TUI exit.
const FATAL: [&str; 5] = [
    "account/read",
    "model/list",
    "config/read",
    "configRequirements/read",
    "thread/start",
];

fn recording(name: &str) -> Vec<Value> {
    let path = format!("{RECORDINGS}/{name}");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} (shared/ must sit beside the repo): {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}: {l}")))
        .collect()
}

/// What one replayed turn produced.
#[derive(Debug, Default)]
struct TurnSeen {
    /// Methods of every notification and server request, in order.
    methods: Vec<String>,
    /// The final `turn/completed` turn.
    completed: Value,
    /// Every `item/completed` item.
    items: Vec<Value>,
}

/// Replays `lines`; returns the server's thread id (if the replay started one) and each turn.
async fn replay(
    client: &mut Client,
    lines: &[Value],
    mut thread: Option<String>,
) -> (Option<String>, Vec<TurnSeen>) {
    let mut answers: VecDeque<Value> = VecDeque::new();
    let mut turns = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let text = match &thread {
            Some(ours) => line.to_string().replace(RECORDED_THREAD, ours),
            None => line.to_string(),
        };
        let msg: Value = serde_json::from_str(&text).expect("still JSON");
        let method = msg.get("method").and_then(Value::as_str).map(str::to_owned);
        match (method, msg.get("id").cloned()) {
            (Some(method), Some(id)) => {
                client.send(msg.clone()).await;
                if method == "turn/start" {
                    // The answers the recording gives to this turn's server requests.
                    answers.extend(
                        lines[i + 1..]
                            .iter()
                            .take_while(|l| l.get("method").is_none())
                            .cloned(),
                    );
                }
                let response = client.response(&id).await;
                let foreign = text.contains(FOREIGN_THREAD);
                match (response.get("error"), foreign) {
                    (None, false) => {}
                    (Some(e), true) => assert!(
                        e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains(FOREIGN_THREAD)),
                        "an unknown thread is reported as such: {e}"
                    ),
                    (None, true) => panic!("{method} of an unknown thread succeeded: {response}"),
                    (Some(e), false) => panic!(
                        "{method} failed{}: {e}",
                        if FATAL.contains(&method.as_str()) {
                            " (fatal to the TUI)"
                        } else {
                            ""
                        }
                    ),
                }
                if method == "thread/start" {
                    thread = response["result"]["thread"]["id"]
                        .as_str()
                        .map(str::to_owned);
                }
                if method == "turn/start" {
                    turns.push(run_turn(client, &mut answers).await);
                }
            }
            (Some(_), None) => client.send(msg).await,
            // Answers to server requests are sent when the request arrives (see `run_turn`).
            (None, _) => {}
        }
    }
    (thread, turns)
}

/// Reads a turn's messages up to `turn/completed`, answering server requests in order with
/// the recording's answers.
async fn run_turn(client: &mut Client, answers: &mut VecDeque<Value>) -> TurnSeen {
    let mut seen = TurnSeen::default();
    loop {
        let m = client.next().await;
        let Some(method) = m.get("method").and_then(Value::as_str) else {
            continue; // a response to something else
        };
        seen.methods.push(method.to_owned());
        if m.get("id").is_some() {
            let recorded = answers
                .pop_front()
                .expect("the recording answers this request");
            client
                .send(json!({"id": m["id"], "result": recorded["result"]}))
                .await;
        }
        if method == "item/completed" {
            seen.items.push(m["params"]["item"].clone());
        }
        if method == "turn/completed" {
            seen.completed = m["params"]["turn"].clone();
            return seen;
        }
    }
}

fn position(methods: &[String], method: &str) -> usize {
    methods
        .iter()
        .position(|m| m == method)
        .unwrap_or_else(|| panic!("{method} missing from {methods:?}"))
}

#[tokio::test]
async fn the_codex_tui_recordings_replay_without_errors_and_walk_every_path() {
    let server = Server::ws(&["--unload-delay", "300ms"]).await;

    // Session 1: start-up, an approval, a question, quit.
    let mut tui = server.connect().await;
    let lines = recording("session-start-turn-approve-ask-quit.jsonl");
    let (thread, turns) = replay(&mut tui, &lines, None).await;
    let thread = thread.expect("the recording starts a thread");
    // The recording holds two turns (its README also mentions a "hello there" turn that the
    // file does not contain).
    assert_eq!(turns.len(), 2, "/approve, /ask");
    for t in &turns {
        let started = position(&t.methods, "turn/started");
        let first_item = position(&t.methods, "item/started");
        assert!(
            started < first_item,
            "turn events in order: {:?}",
            t.methods
        );
        assert_eq!(t.methods.last().map(String::as_str), Some("turn/completed"));
        assert_eq!(t.completed["status"], "completed", "{}", t.completed);
    }
    let said = |t: &TurnSeen| {
        t.items
            .iter()
            .filter(|i| i["type"] == "agentMessage")
            .map(|i| i["text"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let approve = &turns[0];
    let asked = position(&approve.methods, "item/commandExecution/requestApproval");
    let resolved = position(&approve.methods, "serverRequest/resolved");
    assert!(asked < resolved, "{:?}", approve.methods);
    let command = approve
        .items
        .iter()
        .find(|i| i["type"] == "commandExecution")
        .expect("a command item");
    assert_eq!(
        (&command["command"], &command["status"]),
        (&json!("ls -la"), &json!("completed"))
    );
    let ask = &turns[1];
    assert!(
        position(&ask.methods, "item/tool/requestUserInput")
            < position(&ask.methods, "serverRequest/resolved")
    );
    assert!(
        said(ask).iter().any(|t| t.contains("blue")),
        "{:?}",
        said(ask)
    );

    // Quit unsubscribes; the thread unloads after the delay.
    tui.until("thread/closed").await;
    tui.close().await;

    // Session 2: `codex --remote ... resume <id>` of the unloaded thread.
    let mut tui = server.connect().await;
    let lines = recording("session-resume.jsonl");
    let (_, turns) = replay(&mut tui, &lines, Some(thread.clone())).await;
    assert!(turns.is_empty());
    let read = tui
        .call(
            "thread/read",
            json!({"threadId": thread, "includeTurns": true}),
        )
        .await;
    let history = read["thread"]["turns"].as_array().expect("turns");
    assert_eq!(history.len(), 2, "the history survived the unload: {read}");
    assert!(history.iter().all(|t| t["status"] == "completed"));
    let loaded = tui.call("thread/loaded/list", json!({})).await;
    assert_eq!(
        loaded["data"],
        json!([thread]),
        "the resume loaded it again"
    );
}

#[tokio::test]
async fn the_client_support_methods_describe_this_server() {
    let server = Server::ws(&["--unload-delay", "5m"]).await;
    let mut c = server.client().await;
    let models = c.call("model/list", json!({"includeHidden": true})).await;
    let data = models["data"].as_array().expect("models");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], "threadhost-scripted");
    assert_eq!(data[0]["isDefault"], true);
    let config = c.call("config/read", json!({"includeLayers": true})).await;
    assert_eq!(config["config"]["model"], "threadhost-scripted");
    assert_eq!(config["config"]["threadhost"]["unload_delay_ms"], 300_000);
    assert_eq!(config["layers"][0]["name"]["type"], "sessionFlags");
    let account = c.call("account/read", json!({})).await;
    assert_eq!(
        account,
        json!({"account": null, "requiresOpenaiAuth": false})
    );
    let hooks = c.call("hooks/list", json!({"cwds": ["/a", "/b"]})).await;
    assert_eq!(hooks["data"].as_array().map(Vec::len), Some(2));

    // thread/turns/list pages newest first by default; cursors continue where a page ended.
    let id = c.start_thread().await;
    for text in ["one", "two", "three"] {
        c.call(
            "turn/start",
            json!({"threadId": id, "input": [{"type": "text", "text": text}]}),
        )
        .await;
        c.until("turn/completed").await;
    }
    let page = c
        .call("thread/turns/list", json!({"threadId": id, "limit": 2}))
        .await;
    let texts = |p: &Value| {
        p["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|t| {
                t["items"][1]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&page), vec!["three", "two"]);
    let rest = c
        .call(
            "thread/turns/list",
            json!({"threadId": id, "limit": 2, "cursor": page["nextCursor"]}),
        )
        .await;
    assert_eq!(texts(&rest), vec!["one"]);
    assert_eq!(rest["nextCursor"], Value::Null);
    let asc = c
        .call(
            "thread/turns/list",
            json!({"threadId": id, "sortDirection": "asc", "itemsView": "notLoaded"}),
        )
        .await;
    assert_eq!(asc["data"][0]["itemsView"], "notLoaded");
    assert_eq!(asc["data"][0]["items"], json!([]));
    let (code, msg) = c
        .call_err(
            "thread/turns/list",
            json!({"threadId": id, "cursor": "nope"}),
        )
        .await;
    assert_eq!(code, -32602, "{msg}");
}
