use serde_json::{json, Value};

use crate::support::{eventually, methods, Server};

#[tokio::test]
async fn an_unsubscribed_idle_thread_unloads_after_the_delay_and_a_subscribed_one_stays() {
    let server = Server::ws(&["--unload-delay", "300ms"]).await;
    let mut c = server.client().await;
    let kept = c.start_thread().await;
    let id = c.start_thread().await;
    c.turn(&id, "work").await;
    let started = std::time::Instant::now();
    assert_eq!(
        c.call("thread/unsubscribe", json!({"threadId": id})).await,
        json!({"status": "unsubscribed"})
    );
    let status = loop {
        let m = c.until("thread/status/changed").await;
        if m["params"]["threadId"] == id && m["params"]["status"]["type"] != "idle" {
            break m;
        }
    };
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "unloaded before the delay"
    );
    assert_eq!(status["params"]["status"], json!({"type": "notLoaded"}));
    assert_eq!(c.expect("thread/closed").await["params"]["threadId"], id);
    assert_eq!(
        c.call("thread/loaded/list", json!({})).await["data"],
        json!([kept])
    );
    assert_eq!(
        server
            .metric("threadhost_unloads_total{outcome=\"complete\"}")
            .await,
        1
    );

    // Cold resume from the store: status idle is broadcast, the history comes back.
    let r = c.call("thread/resume", json!({"threadId": id})).await;
    assert_eq!(r["thread"]["turns"][0]["status"], "completed");
    let seen = c.barrier().await;
    let idle = seen
        .iter()
        .find(|m| m["method"] == "thread/status/changed")
        .expect("a status change");
    assert_eq!(
        idle["params"],
        json!({"threadId": id, "status": {"type": "idle"}})
    );
}

#[tokio::test]
async fn resume_replays_a_pending_approval_with_its_original_id_and_the_first_answer_wins() {
    let server = Server::ws(&["--unload-delay", "200ms"]).await;
    let mut a = server.client().await;
    let id = a.start_thread().await;
    a.call(
        "turn/start",
        json!({"threadId": id, "input": [{"type": "text", "text": "/approve ls"}]}),
    )
    .await;
    let original = a.until("item/commandExecution/requestApproval").await;
    assert_eq!(original["params"]["command"], "ls");
    // The client goes away; the pending approval keeps the thread active and loaded.
    a.close().await;
    a.closed().await;

    let mut b = server.client().await;
    let r = b.call("thread/resume", json!({"threadId": id})).await;
    assert_eq!(
        r["thread"]["status"],
        json!({"type": "active", "activeFlags": ["waitingOnApproval"]})
    );
    let replay = b.until("item/commandExecution/requestApproval").await;
    assert_eq!(replay["id"], original["id"]);
    assert_eq!(replay["params"], original["params"]);

    b.send(json!({"id": original["id"], "result": {"decision": "accept"}}))
        .await;
    let resolved = b.until("serverRequest/resolved").await;
    assert_eq!(
        resolved["params"],
        json!({"threadId": id, "requestId": original["id"]})
    );
    let done = b.until("turn/completed").await;
    assert_eq!(done["params"]["turn"]["status"], "completed");
    let items = done["params"]["turn"]["items"].as_array().expect("items");
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "agentMessage" && i["text"] == "approved: ls"),
        "{done}"
    );

    // A second answer to the same id, and one to an id never sent, change nothing and get
    // no reply.
    b.send(json!({"id": original["id"], "result": {"decision": "decline"}}))
        .await;
    b.send(json!({"id": 424_242, "result": {"decision": "accept"}}))
        .await;
    b.send(json!({"id": "not-a-server-id", "error": {"code": 1, "message": "no"}}))
        .await;
    let after: Vec<Value> = b.barrier().await;
    assert!(
        after.iter().all(|m| m.get("method").is_some()),
        "answers are never replied to: {after:?}"
    );
    assert!(
        !methods(&after).contains(&"serverRequest/resolved".to_owned()),
        "{after:?}"
    );
    eventually("two ignored answers counted", || async {
        server.metric("threadhost_ignored_answers_total").await >= 2
    })
    .await;
    let r = b
        .call("thread/read", json!({"threadId": id, "includeTurns": true}))
        .await;
    assert_eq!(
        r["thread"]["turns"].as_array().map(Vec::len),
        Some(1),
        "the declined answer started nothing"
    );
}

#[tokio::test]
async fn a_thread_waiting_on_approval_never_unloads_even_without_subscribers() {
    let server = Server::ws(&["--unload-delay", "100ms"]).await;
    let mut a = server.client().await;
    let id = a.start_thread().await;
    a.call(
        "turn/start",
        json!({"threadId": id, "input": [{"type": "text", "text": "/approve rm -rf /"}]}),
    )
    .await;
    let req = a.until("item/commandExecution/requestApproval").await;
    a.call("thread/unsubscribe", json!({"threadId": id})).await;
    // Several unload delays pass; the pending approval keeps the thread loaded.
    let mut b = server.client().await;
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            b.call("thread/loaded/list", json!({})).await["data"],
            json!([id])
        );
    }
    b.call(
        "thread/resume",
        json!({"threadId": id, "excludeTurns": true}),
    )
    .await;
    let replay = b.until("item/commandExecution/requestApproval").await;
    assert_eq!(replay["id"], req["id"]);
    b.send(json!({"id": req["id"], "result": {"decision": "decline"}}))
        .await;
    let done = b.until("turn/completed").await;
    let items = done["params"]["turn"]["items"].as_array().expect("items");
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "commandExecution" && i["status"] == "declined"),
        "{done}"
    );
}

#[tokio::test]
async fn after_kill_9_a_restarted_server_lists_and_resumes_the_thread_from_the_data_dir() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let id = c.start_thread().await;
    c.turn(&id, "remember me").await;
    c.call(
        "thread/goal/set",
        json!({"threadId": id, "objective": "survive a crash"}),
    )
    .await;
    let data_dir = server.kill().await;

    let server = Server::ws_in(&[], data_dir).await;
    let mut c = server.client().await;
    let listed = c.call("thread/list", json!({})).await;
    assert_eq!(listed["data"][0]["id"], id, "{listed}");
    assert_eq!(listed["data"][0]["status"], json!({"type": "notLoaded"}));
    assert_eq!(listed["data"][0]["preview"], "remember me");

    let r = c.call("thread/resume", json!({"threadId": id})).await;
    assert_eq!(r["thread"]["status"], json!({"type": "idle"}));
    let items = r["thread"]["turns"][0]["items"]
        .as_array()
        .expect("the stored turn");
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "agentMessage" && i["text"] == "remember me"),
        "{r}"
    );
    let after = c.barrier().await;
    assert_eq!(
        methods(&after),
        [
            "thread/status/changed",
            "thread/tokenUsage/updated",
            "thread/goal/updated"
        ],
        "{after:?}"
    );
    assert_eq!(after[2]["params"]["goal"]["objective"], "survive a crash");
    c.turn(&id, "and carry on").await;
}
