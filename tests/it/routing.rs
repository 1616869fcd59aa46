use serde_json::json;

use crate::support::{methods, Server};

/// Broadcast methods every initialized connection gets (spec section 11).
const BROADCAST: [&str; 5] = [
    "thread/started",
    "thread/status/changed",
    "thread/closed",
    "thread/goal/updated",
    "thread/goal/cleared",
];

#[tokio::test]
async fn broadcasts_reach_every_connection_and_thread_events_only_its_subscribers() {
    let server = Server::ws(&[]).await;
    let mut a = server.client().await;
    let mut b = server.client().await;

    let id = a.start_thread().await;
    a.expect("thread/started").await;
    assert_eq!(
        b.expect("thread/started").await["params"]["thread"]["id"],
        id
    );

    a.turn(&id, "only for a").await;
    let seen_by_b = methods(&b.barrier().await);
    assert!(
        seen_by_b.iter().all(|m| BROADCAST.contains(&m.as_str())),
        "b is not subscribed yet: {seen_by_b:?}"
    );
    assert!(
        seen_by_b.contains(&"thread/status/changed".to_owned()),
        "status changes are broadcast: {seen_by_b:?}"
    );

    b.call(
        "thread/resume",
        json!({"threadId": id, "excludeTurns": true}),
    )
    .await;
    b.barrier().await;
    a.barrier().await;
    a.turn(&id, "for both").await;
    let done = b.until("turn/completed").await;
    assert_eq!(done["params"]["threadId"], id);

    b.call("thread/unsubscribe", json!({"threadId": id})).await;
    a.turn(&id, "for a again").await;
    let seen_by_b = methods(&b.barrier().await);
    assert!(
        seen_by_b.iter().all(|m| BROADCAST.contains(&m.as_str())),
        "b unsubscribed: {seen_by_b:?}"
    );

    b.call(
        "thread/goal/set",
        json!({"threadId": id, "objective": "shared"}),
    )
    .await;
    assert_eq!(
        a.until("thread/goal/updated").await["params"]["goal"]["objective"],
        "shared"
    );
    assert_eq!(
        b.until("thread/goal/updated").await["params"]["goal"]["objective"],
        "shared"
    );
}

#[tokio::test]
async fn server_requests_go_to_subscribers_only() {
    let server = Server::ws(&[]).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let id = a.start_thread().await;
    a.call(
        "turn/start",
        json!({"threadId": id, "input": [{"type": "text", "text": "/ask what colour?"}]}),
    )
    .await;
    let req = a.until("item/tool/requestUserInput").await;
    assert_eq!(req["params"]["questions"][0]["question"], "what colour?");
    let seen_by_b = methods(&b.barrier().await);
    assert!(
        !seen_by_b.contains(&"item/tool/requestUserInput".to_owned()),
        "{seen_by_b:?}"
    );
    a.send(json!({"id": req["id"], "result": {"answers": {"answer": {"answers": ["blue"]}}}}))
        .await;
    let done = a.until("turn/completed").await;
    let items = done["params"]["turn"]["items"].as_array().expect("items");
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "agentMessage" && i["text"] == "blue"),
        "{done}"
    );
}
