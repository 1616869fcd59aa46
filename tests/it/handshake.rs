use serde_json::json;

use crate::support::{methods, Server};

#[tokio::test]
async fn initialize_over_stdio_answers_codex_initialize_response_with_the_data_dir() {
    let (server, mut c) = Server::stdio(&[]).await;
    let r = c.initialize().await;
    assert!(
        r["userAgent"]
            .as_str()
            .expect("a string")
            .starts_with("threadhost/"),
        "{r}"
    );
    assert_eq!(r["platformOs"], std::env::consts::OS);
    assert_eq!(r["platformFamily"], std::env::consts::FAMILY);
    let home = std::fs::canonicalize(server.data_dir.path()).expect("the data dir exists");
    assert_eq!(r["codexHome"], home.display().to_string());
}

#[tokio::test]
async fn requests_before_initialize_get_not_initialized_and_the_handshake_still_works() {
    let server = Server::ws(&[]).await;
    let mut c = server.connect().await;
    for method in ["thread/start", "thread/list", "thread/loaded/list"] {
        assert_eq!(
            c.call_err(method, json!({})).await,
            (-32600, "Not initialized".to_owned())
        );
    }
    c.initialize().await;
    let id = c.start_thread().await;
    assert_eq!(
        c.expect("thread/started").await["params"]["thread"]["id"],
        id
    );
}

#[tokio::test]
async fn a_second_initialize_is_refused_and_changes_nothing() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    let (code, msg) = c
        .call_err(
            "initialize",
            json!({"clientInfo": {"name": "x", "version": "1"}}),
        )
        .await;
    assert_eq!((code, msg.as_str()), (-32600, "Already initialized"));
    c.start_thread().await;
    c.expect("thread/started").await;
}

#[tokio::test]
async fn initialize_without_client_info_names_the_field() {
    let server = Server::ws(&[]).await;
    let mut c = server.connect().await;
    let (code, msg) = c.call_err("initialize", json!({})).await;
    assert_eq!(code, -32602);
    assert!(msg.contains("clientInfo"), "{msg}");
    let (code, msg) = c
        .call_err("initialize", json!({"clientInfo": {"name": "x"}}))
        .await;
    assert_eq!(code, -32602);
    assert!(
        msg.contains("clientInfo") && msg.contains("version"),
        "{msg}"
    );
    c.initialize().await;
}

#[tokio::test]
async fn string_ids_and_messages_without_jsonrpc_are_accepted() {
    let server = Server::ws(&[]).await;
    let mut c = server.connect().await;
    c.send(json!({"id": "initialize", "method": "initialize", "params": {"clientInfo": {"name": "tui", "version": "0.169.0"}}}))
        .await;
    let r = c.response(&json!("initialize")).await;
    assert!(r["result"]["userAgent"].is_string(), "{r}");
    c.send(json!({"method": "initialized"})).await;
    c.send(
        json!({"id": "startup-thread-start-1", "method": "thread/start", "params": {"cwd": null}}),
    )
    .await;
    let r = c.response(&json!("startup-thread-start-1")).await;
    assert_eq!(r["result"]["thread"]["status"]["type"], "idle");
}

#[tokio::test]
async fn notifications_a_connection_opted_out_of_are_not_sent_to_it() {
    let server = Server::ws(&[]).await;
    let mut quiet = server.connect().await;
    quiet
        .initialize_with(json!({
            "clientInfo": {"name": "quiet", "version": "1"},
            "capabilities": {"optOutNotificationMethods": ["thread/started"]}
        }))
        .await;
    let mut loud = server.client().await;
    let id = loud.start_thread().await;
    assert_eq!(
        loud.expect("thread/started").await["params"]["thread"]["id"],
        id
    );
    assert_eq!(methods(&quiet.barrier().await), Vec::<String>::new());
}

#[tokio::test]
async fn a_connection_that_never_initialized_receives_no_broadcasts() {
    let server = Server::ws(&[]).await;
    let mut late = server.connect().await;
    let mut a = server.client().await;
    a.start_thread().await;
    a.expect("thread/started").await;
    // Had `late` been on the broadcast list, thread/started would be queued before this.
    late.initialize().await;
    assert_eq!(methods(&late.barrier().await), Vec::<String>::new());
}
