use serde_json::json;

use crate::support::Server;

#[tokio::test]
async fn sigterm_unloads_threads_closes_connections_with_a_reason_and_exits_0() {
    let mut server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let id = c.start_thread().await;
    c.turn(&id, "persist me").await;
    server.signal_term();
    let closed = c.until("thread/closed").await;
    assert_eq!(closed["params"]["threadId"], id);
    let frame = c.closed().await;
    assert_eq!(
        frame,
        Some((1001, "the server is shutting down".to_owned()))
    );
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn the_end_of_stdin_answers_the_calls_in_flight_then_exits_0() {
    let (mut server, mut c) = Server::stdio(&[]).await;
    c.initialize().await;
    c.send(json!({"id": "last", "method": "thread/start", "params": {}}))
        .await;
    c.close().await;
    let r = c.response(&json!("last")).await;
    assert_eq!(r["result"]["thread"]["status"]["type"], "idle");
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn sigterm_stops_a_stdio_server_with_exit_0() {
    let (server, mut c) = Server::stdio(&[]).await;
    c.initialize().await;
    server.signal_term();
    let mut server = server;
    assert!(server.wait().await.success());
}
