use serde_json::{json, Value};

use crate::support::{Client, Server};

/// One bad message, the error it must get, and a word its message must contain.
struct Case {
    raw: String,
    code: i64,
    id: Value,
    needle: &'static str,
}

fn case(raw: &str, code: i64, id: Value, needle: &'static str) -> Case {
    Case {
        raw: raw.to_owned(),
        code,
        id,
        needle,
    }
}

fn cases() -> Vec<Case> {
    let big = format!(
        r#"{{"id":99,"method":"thread/list","params":{{"searchTerm":"{}"}}}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    vec![
        case("this is not json", -32700, Value::Null, "parse error"),
        case(
            r#"{"id":1,"method":"thread/list""#,
            -32700,
            Value::Null,
            "parse error",
        ),
        case("[1,2]", -32600, Value::Null, "batches"),
        case("42", -32600, Value::Null, "JSON object"),
        case(
            r#"{"id":{"a":1},"method":"thread/list"}"#,
            -32600,
            Value::Null,
            "id must be an integer or a string",
        ),
        case(
            r#"{"id":1.5,"method":"thread/list"}"#,
            -32600,
            Value::Null,
            "id must be",
        ),
        case(
            r#"{"id":[1],"method":"thread/list"}"#,
            -32600,
            Value::Null,
            "id must be",
        ),
        case(
            r#"{"id":3,"jsonrpc":"1.0","method":"thread/list"}"#,
            -32600,
            json!(3),
            "jsonrpc",
        ),
        case(
            r#"{"id":4,"method":7}"#,
            -32600,
            json!(4),
            "method must be a string",
        ),
        case(r#"{"id":5}"#, -32600, json!(5), "expected method"),
        case(
            r#"{"id":6,"method":"no/such/method"}"#,
            -32601,
            json!(6),
            "no/such/method",
        ),
        case(
            r#"{"id":"s7","method":"thread/read"}"#,
            -32602,
            json!("s7"),
            "threadId",
        ),
        case(
            r#"{"id":8,"method":"thread/read","params":{"threadId":5}}"#,
            -32602,
            json!(8),
            "threadId",
        ),
        case(
            r#"{"id":9,"method":"turn/start","params":{"threadId":"t"}}"#,
            -32602,
            json!(9),
            "input",
        ),
        case(
            r#"{"id":10,"method":"turn/start","params":{"threadId":"t","input":[{"type":"bogus"}]}}"#,
            -32602,
            json!(10),
            "input[0]",
        ),
        case(
            r#"{"id":11,"method":"thread/list","params":{"limit":"ten"}}"#,
            -32602,
            json!(11),
            "limit",
        ),
        case(
            r#"{"id":12,"method":"thread/list","params":{"limit":-1}}"#,
            -32602,
            json!(12),
            "limit",
        ),
        case(
            r#"{"id":13,"method":"thread/list","params":[1]}"#,
            -32602,
            json!(13),
            "params must be an object",
        ),
        case(
            r#"{"id":14,"method":"turn/interrupt","params":{"threadId":"t"}}"#,
            -32602,
            json!(14),
            "turnId",
        ),
        case(
            r#"{"id":15,"method":"thread/resume","params":{"threadId":"t","excludeTurns":"yes"}}"#,
            -32602,
            json!(15),
            "excludeTurns",
        ),
        Case {
            raw: big,
            code: -32600,
            id: Value::Null,
            needle: "message too large",
        },
    ]
}

/// Sends every bad case, checks its error, and after each one proves the connection still
/// works with a real call.
async fn every_bad_message_gets_its_error_and_the_connection_keeps_working(c: &mut Client) {
    c.initialize().await;
    let thread = c.start_thread().await;
    c.expect("thread/started").await;
    for Case {
        raw,
        code,
        id,
        needle,
    } in cases()
    {
        let shown: String = raw.chars().take(80).collect();
        c.send_raw(&raw).await;
        let m = c.next().await;
        assert_eq!(m["error"]["code"], code, "{shown}: {m}");
        assert_eq!(m["id"], id, "{shown}: {m}");
        let msg = m["error"]["message"].as_str().expect("a message");
        assert!(
            msg.contains(needle),
            "{shown}: {msg:?} should mention {needle:?}"
        );
        let r = c.call("thread/read", json!({"threadId": thread})).await;
        assert_eq!(r["thread"]["id"], thread.as_str(), "after {shown}");
    }
    // Client notifications nobody knows are ignored without a reply.
    c.send_raw(r#"{"method":"something/else","params":{}}"#)
        .await;
    assert_eq!(c.barrier().await, Vec::<Value>::new());
}

#[tokio::test]
async fn bad_input_over_websocket_gets_errors_and_the_connection_keeps_working() {
    let server = Server::ws(&[]).await;
    let mut c = server.connect().await;
    every_bad_message_gets_its_error_and_the_connection_keeps_working(&mut c).await;
}

#[tokio::test]
async fn bad_input_over_stdio_gets_errors_and_the_connection_keeps_working() {
    let (_server, mut c) = Server::stdio(&[]).await;
    every_bad_message_gets_its_error_and_the_connection_keeps_working(&mut c).await;
    c.send_raw("").await;
    c.send_raw("   ").await;
    assert_eq!(
        c.barrier().await,
        Vec::<Value>::new(),
        "blank lines are skipped"
    );
}

#[tokio::test]
async fn a_websocket_binary_frame_is_refused_and_the_connection_keeps_working() {
    let server = Server::ws(&[]).await;
    let mut c = server.client().await;
    c.send_binary(b"{\"id\":1,\"method\":\"thread/list\"}")
        .await;
    let m = c.next().await;
    assert_eq!(m["error"]["code"], -32600, "{m}");
    assert!(m["error"]["message"]
        .as_str()
        .expect("a message")
        .contains("text frame"));
    c.call("thread/loaded/list", json!({})).await;
}
