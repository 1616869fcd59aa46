use serde_json::{json, Value};

use crate::support::{methods, Server};

fn text(t: &str) -> Value {
    json!([{"type": "text", "text": t}])
}

#[tokio::test]
async fn thread_start_answers_the_thread_then_broadcasts_thread_started() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let r = c
        .call(
            "thread/start",
            json!({"cwd": "/srv/project", "model": "threadhost-scripted"}),
        )
        .await;
    assert_eq!(r["thread"]["status"]["type"], "idle");
    assert_eq!(r["cwd"], "/srv/project");
    assert_eq!(r["model"], "threadhost-scripted");
    let started = c.expect("thread/started").await;
    assert_eq!(started["params"]["thread"]["id"], r["thread"]["id"]);
    let (code, msg) = c.call_err("thread/start", json!({"model": "gpt-9"})).await;
    assert_eq!(code, -32602);
    assert!(msg.contains("model"), "{msg}");
}

#[tokio::test]
async fn turn_start_answers_before_turn_started_and_streams_the_agent_message() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let id = c.start_thread().await;
    c.expect("thread/started").await;
    let r = c
        .call(
            "turn/start",
            json!({"threadId": id, "input": text("hello there")}),
        )
        .await;
    assert_eq!(r["turn"]["status"], "inProgress");
    let started = c.expect("turn/started").await;
    assert_eq!(started["params"]["turn"]["id"], r["turn"]["id"]);
    let mut deltas = String::new();
    let done = loop {
        let m = c.next().await;
        match m["method"].as_str() {
            Some("item/agentMessage/delta") => {
                deltas.push_str(m["params"]["delta"].as_str().expect("a delta"))
            }
            Some("turn/completed") => break m,
            _ => {}
        }
    };
    assert_eq!(deltas, "hello there");
    assert_eq!(done["params"]["turn"]["status"], "completed");
}

#[tokio::test]
async fn turn_start_on_a_thread_that_is_not_loaded_is_refused() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let (code, msg) = c
        .call_err(
            "turn/start",
            json!({"threadId": "nope", "input": text("hi")}),
        )
        .await;
    assert_eq!(code, -32600);
    assert!(msg.contains("nope"), "{msg}");
}

#[tokio::test]
async fn turn_interrupt_ends_the_running_turn_as_interrupted() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let id = c.start_thread().await;
    let r = c
        .call(
            "turn/start",
            json!({"threadId": id, "input": text("/sleep 60000")}),
        )
        .await;
    let turn = r["turn"]["id"].as_str().expect("a turn id").to_owned();
    let (code, _) = c
        .call_err("turn/interrupt", json!({"threadId": id, "turnId": "other"}))
        .await;
    assert_eq!(code, -32600);
    assert_eq!(
        c.call("turn/interrupt", json!({"threadId": id, "turnId": turn}))
            .await,
        json!({})
    );
    let done = c.until("turn/completed").await;
    assert_eq!(done["params"]["turn"]["status"], "interrupted");
}

#[tokio::test]
async fn thread_read_includes_turns_only_when_asked() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let id = c.start_thread().await;
    c.turn(&id, "one").await;
    let r = c.call("thread/read", json!({"threadId": id})).await;
    assert_eq!(r["thread"]["turns"], json!([]));
    assert_eq!(r["thread"]["preview"], "one");
    let r = c
        .call("thread/read", json!({"threadId": id, "includeTurns": true}))
        .await;
    assert_eq!(r["thread"]["turns"].as_array().map(Vec::len), Some(1));
    let (code, _) = c
        .call_err("thread/read", json!({"threadId": "missing"}))
        .await;
    assert_eq!(code, -32600);
}

#[tokio::test]
async fn thread_loaded_list_pages_by_cursor_and_limit() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let mut ids = [
        c.start_thread().await,
        c.start_thread().await,
        c.start_thread().await,
    ];
    ids.sort();
    let first = c.call("thread/loaded/list", json!({"limit": 2})).await;
    assert_eq!(first["data"], json!(ids[..2]));
    let cursor = first["nextCursor"].clone();
    assert!(cursor.is_string(), "{first}");
    let second = c
        .call("thread/loaded/list", json!({"limit": 2, "cursor": cursor}))
        .await;
    assert_eq!(second, json!({"data": [ids[2]], "nextCursor": null}));
}

#[tokio::test]
async fn thread_list_shows_stored_threads_with_their_status_sorted_filtered_and_paged() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let a = c.start_thread().await;
    c.turn(&a, "alpha first").await;
    let b = c.start_thread().await;
    c.turn(&b, "beta second").await;
    let _never_ran_a_turn = c.start_thread().await;

    let r = c.call("thread/list", json!({})).await;
    let ids: Vec<&Value> = r["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "only threads with a stored turn are listed: {r}"
    );
    assert!(
        r["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|t| t["status"]["type"] == "idle"),
        "{r}"
    );

    let asc = c
        .call(
            "thread/list",
            json!({"sortKey": "created_at", "sortDirection": "asc", "limit": 1}),
        )
        .await;
    assert_eq!(asc["data"][0]["id"], a);
    let next = c
        .call(
            "thread/list",
            json!({"sortDirection": "asc", "limit": 1, "cursor": asc["nextCursor"]}),
        )
        .await;
    assert_eq!(next["data"][0]["id"], b);
    assert_eq!(next["nextCursor"], Value::Null);

    let found = c.call("thread/list", json!({"searchTerm": "BETA"})).await;
    assert_eq!(found["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(found["data"][0]["id"], b);

    // Filters no threadhost thread can match answer an empty page, as the Codex TUI expects.
    for filter in [
        json!({"sortKey": "section_position", "sectionId": "01984de2-8f74-7c91-a3b2-5c5e937cf318"}),
        json!({"archived": true}),
        json!({"sourceKinds": ["exec"]}),
        json!({"modelProviders": ["openai"]}),
        json!({"parentThreadId": a}),
    ] {
        let r = c.call("thread/list", filter.clone()).await;
        assert_eq!(r, json!({"data": [], "nextCursor": null}), "{filter}");
    }
    let ours = c
        .call(
            "thread/list",
            json!({"sourceKinds": ["exec", "appServer"], "modelProviders": [], "archived": false, "excludedThreadIds": [a]}),
        )
        .await;
    assert_eq!(ours["data"].as_array().map(Vec::len), Some(1), "{ours}");
    assert_eq!(ours["data"][0]["id"], b);

    let (code, msg) = c
        .call_err("thread/list", json!({"sortKey": "position"}))
        .await;
    assert_eq!(code, -32602);
    assert!(msg.contains("sortKey"), "{msg}");
}

#[tokio::test]
async fn goals_are_set_read_and_cleared_with_broadcasts() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let id = c.start_thread().await;
    c.expect("thread/started").await;
    assert_eq!(
        c.call("thread/goal/get", json!({"threadId": id})).await,
        json!({"goal": null})
    );
    let (code, msg) = c
        .call_err(
            "thread/goal/set",
            json!({"threadId": id, "status": "paused"}),
        )
        .await;
    assert_eq!(
        (code, msg),
        (
            -32600,
            format!("cannot update goal for thread {id}: no goal exists")
        )
    );

    let set = c
        .call(
            "thread/goal/set",
            json!({"threadId": id, "objective": "ship it", "tokenBudget": 1000}),
        )
        .await;
    assert_eq!(set["goal"]["objective"], "ship it");
    assert_eq!(set["goal"]["status"], "active");
    let updated = c.expect("thread/goal/updated").await;
    assert_eq!(updated["params"]["goal"], set["goal"]);
    assert_eq!(updated["params"]["turnId"], Value::Null);

    let paused = c
        .call(
            "thread/goal/set",
            json!({"threadId": id, "status": "paused"}),
        )
        .await;
    assert_eq!(paused["goal"]["status"], "paused");
    c.expect("thread/goal/updated").await;
    assert_eq!(
        c.call("thread/goal/get", json!({"threadId": id})).await["goal"]["status"],
        "paused"
    );

    assert_eq!(
        c.call("thread/goal/clear", json!({"threadId": id})).await,
        json!({"cleared": true})
    );
    assert_eq!(
        c.expect("thread/goal/cleared").await["params"]["threadId"],
        id
    );
    assert_eq!(
        c.call("thread/goal/clear", json!({"threadId": id})).await,
        json!({"cleared": false})
    );
    assert_eq!(
        methods(&c.barrier().await),
        Vec::<String>::new(),
        "nothing was cleared the second time"
    );

    let (code, msg) = c
        .call_err(
            "thread/goal/set",
            json!({"threadId": id, "status": "sleepy"}),
        )
        .await;
    assert_eq!(code, -32602);
    assert!(msg.contains("status"), "{msg}");
}

#[tokio::test]
async fn thread_close_interrupts_the_turn_and_answers_after_thread_closed() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let id = c.start_thread().await;
    c.call(
        "turn/start",
        json!({"threadId": id, "input": text("/sleep 60000")}),
    )
    .await;
    c.until("turn/started").await;
    assert_eq!(
        c.call("thread/close", json!({"threadId": id})).await,
        json!({})
    );
    let before: Vec<Value> = c.barrier().await;
    let order: Vec<String> = methods(&before)
        .into_iter()
        .filter(|m| {
            ["turn/completed", "thread/status/changed", "thread/closed"].contains(&m.as_str())
        })
        .collect();
    let order = order[order
        .iter()
        .position(|m| m == "turn/completed")
        .unwrap_or(0)..]
        .to_vec();
    assert_eq!(
        order.first().map(String::as_str),
        Some("turn/completed"),
        "{order:?}"
    );
    assert_eq!(
        order.last().map(String::as_str),
        Some("thread/closed"),
        "{order:?}"
    );
    let not_loaded = before
        .iter()
        .rev()
        .find(|m| m["method"] == "thread/status/changed")
        .expect("a status change");
    assert_eq!(not_loaded["params"]["status"]["type"], "notLoaded");
    let turn = before
        .iter()
        .find(|m| m["method"] == "turn/completed")
        .expect("turn/completed");
    assert_eq!(turn["params"]["turn"]["status"], "interrupted");
    assert_eq!(
        c.call("thread/loaded/list", json!({})).await["data"],
        json!([])
    );
    assert_eq!(
        c.call("thread/close", json!({"threadId": id})).await,
        json!({}),
        "closing a closed thread is a no-op"
    );
}

#[tokio::test]
async fn thread_unsubscribe_reports_unsubscribed_not_subscribed_and_not_loaded() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let id = c.start_thread().await;
    let call = |s: &str| json!({"threadId": s});
    assert_eq!(
        c.call("thread/unsubscribe", call(&id)).await,
        json!({"status": "unsubscribed"})
    );
    assert_eq!(
        c.call("thread/unsubscribe", call(&id)).await,
        json!({"status": "notSubscribed"})
    );
    assert_eq!(
        c.call("thread/unsubscribe", call("nope")).await,
        json!({"status": "notLoaded"})
    );
}

#[tokio::test]
async fn thread_resume_of_a_loaded_thread_answers_then_sends_usage_and_the_goal_snapshot() {
    let server = Server::ws(&[]).await;
    let mut a = server.client().await;
    let id = a.start_thread().await;
    a.turn(&id, "hello").await;
    let mut b = server.client().await;
    let r = b.call("thread/resume", json!({"threadId": id})).await;
    assert_eq!(r["thread"]["turns"].as_array().map(Vec::len), Some(1));
    assert_eq!(r["thread"]["status"]["type"], "idle");
    assert_eq!(
        methods(&b.barrier().await),
        ["thread/tokenUsage/updated", "thread/goal/cleared"]
    );
    let r = b
        .call(
            "thread/resume",
            json!({"threadId": id, "excludeTurns": true}),
        )
        .await;
    assert_eq!(r["thread"]["turns"], json!([]));
    assert_eq!(methods(&b.barrier().await), ["thread/goal/cleared"]);
}

#[tokio::test]
async fn resume_of_a_thread_that_never_ran_a_turn_has_no_rollout() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let (code, msg) = c
        .call_err("thread/resume", json!({"threadId": "0000-never"}))
        .await;
    assert_eq!(
        (code, msg.as_str()),
        (-32600, "no rollout found for thread id 0000-never")
    );
}
