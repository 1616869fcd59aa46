use serde_json::json;
use tokio_tungstenite::tungstenite::Error;

use crate::support::{Server, TempDir};

#[tokio::test]
async fn healthz_is_ok_and_metrics_report_the_runtime_in_prometheus_text() {
    let server = Server::ws(&[]).await;
    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_owned()));
    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "threadhost_threads_loaded",
        "threadhost_connections",
        "threadhost_pending_server_requests",
        "threadhost_teardowns_in_flight",
        "threadhost_unloads_total{outcome=\"complete\"}",
        "threadhost_unloads_total{outcome=\"submit_failed\"}",
        "threadhost_unloads_total{outcome=\"timed_out\"}",
        "threadhost_thread_restarts_total",
        "threadhost_messages_delivered_total",
        "threadhost_messages_dropped_total",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(&format!("{name} "))),
            "no {name} in:\n{body}"
        );
    }
    assert!(
        body.contains("# TYPE threadhost_unloads_total counter"),
        "{body}"
    );
    assert_eq!(server.metric("threadhost_threads_loaded").await, 0);

    let mut c = server.client().await;
    c.start_thread().await;
    let asking = c.start_thread().await;
    c.call(
        "turn/start",
        json!({"threadId": asking, "input": [{"type": "text", "text": "/approve ls"}]}),
    )
    .await;
    c.until("item/commandExecution/requestApproval").await;
    assert_eq!(server.metric("threadhost_threads_loaded").await, 2);
    assert_eq!(server.metric("threadhost_connections").await, 1);
    assert_eq!(server.metric("threadhost_pending_server_requests").await, 1);
    assert!(server.metric("threadhost_messages_delivered_total").await > 0);
}

#[tokio::test]
async fn with_a_token_websocket_clients_must_send_it_as_a_bearer_token() {
    let server = Server::ws(&["--token", "s3cret"]).await;
    for token in [None, Some("wrong"), Some("s3cret-not")] {
        match server.connect_with(token).await {
            Err(Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401, "token {token:?}"),
            Err(e) => panic!("token {token:?}: expected HTTP 401, got {e}"),
            Ok(_) => panic!("token {token:?}: the connection was accepted"),
        }
    }
    let mut c = server
        .connect_with(Some("s3cret"))
        .await
        .expect("the right token is accepted");
    c.initialize().await;
    c.start_thread().await;
    assert_eq!(
        server.get("/healthz").await.0,
        200,
        "health checks need no token"
    );
}

#[tokio::test]
async fn a_plain_http_get_on_the_websocket_path_is_refused() {
    let server = Server::ws(&[]).await;
    let (status, _) = server.get("/").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_token_can_come_from_threadhost_token() {
    let data = std::sync::Arc::new(TempDir::new("env-token"));
    let server = Server::ws_with(&[], data, &[("THREADHOST_TOKEN", "from-env")]).await;
    assert!(matches!(server.connect_with(None).await, Err(Error::Http(r)) if r.status() == 401));
    let mut c = server
        .connect_with(Some("from-env"))
        .await
        .expect("the env token is accepted");
    c.initialize().await;
}
