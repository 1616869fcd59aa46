//! The JSON-RPC envelope: how incoming text becomes a request, a notification or an answer to a
//! server request; the error codes; the one place where a [`HostError`] becomes a code; and
//! how each [`Outbound`] is written on the wire.
//!
//! Like Codex's app-server, threadhost accepts messages with or without `"jsonrpc":"2.0"` and
//! always writes it. Nothing here does I/O; the transports call [`parse`] and [`encode`].

use serde::Serialize;
use serde_json::{Map, Value};
use threadhost_actors::{ClientRequestId, HostError, Outbound};

/// The text was not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON is not a valid JSON-RPC message (or came before `initialize`).
pub const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// The params are missing, of the wrong type or out of range; the message names the field.
pub const INVALID_PARAMS: i64 = -32602;
/// The server failed (store, agent, a crashed thread, a bounded wait that ran out).
pub const INTERNAL_ERROR: i64 = -32603;

/// Largest message accepted, in bytes. A larger one is answered with [`INVALID_REQUEST`]
/// `message too large` and the connection keeps working.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// A JSON-RPC error object (`{"code", "message"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RpcError {
    /// One of the codes above.
    pub code: i64,
    /// Lowercase, no trailing period, says what to do.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `-32600` with `message`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(INVALID_REQUEST, message)
    }

    /// `-32602` with `message` (which names the field).
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    /// The error of a message longer than [`MAX_MESSAGE_BYTES`].
    pub fn too_large(len: usize) -> Self {
        Self::invalid_request(format!(
            "message too large: {len} bytes, the limit is {MAX_MESSAGE_BYTES} bytes; split the \
             input into smaller messages"
        ))
    }

    /// `Not initialized` (Codex's text and code): a request other than `initialize` came first.
    pub fn not_initialized() -> Self {
        Self::invalid_request("Not initialized")
    }
}

/// Maps a runtime error to its JSON-RPC error. The only place that chooses a code for a
/// [`HostError`]: invalid params `-32602`, other client mistakes `-32600`, server faults
/// `-32603`. The message is the error's own text.
pub fn host_error(e: &HostError) -> RpcError {
    let code = match e {
        HostError::InvalidParams(_) => INVALID_PARAMS,
        HostError::Store(_)
        | HostError::Agent(_)
        | HostError::ThreadRestarted(_)
        | HostError::ThreadUnavailable(_)
        | HostError::Timeout(..)
        | HostError::ShuttingDown => INTERNAL_ERROR,
        e if e.is_client_error() => INVALID_REQUEST,
        _ => INTERNAL_ERROR,
    };
    RpcError::new(code, e.to_string())
}

/// One incoming message, classified.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// A client request: must be answered exactly once.
    Request {
        /// The client's id, echoed on the response.
        id: ClientRequestId,
        /// The method.
        method: String,
        /// The params (`Null` when absent).
        params: Value,
    },
    /// A client notification (`initialized`); never answered.
    Notification {
        /// The method.
        method: String,
    },
    /// An answer to a server request (approval, user input).
    Answer {
        /// The id as the client sent it; only integers can match a server request.
        id: ClientRequestId,
        /// `Ok(result)` or `Err(error object)`.
        result: Result<Value, Value>,
    },
    /// Something that must be answered with an error.
    Invalid {
        /// The request's id when it could be read, else `null` on the wire.
        id: Option<ClientRequestId>,
        /// What was wrong.
        error: RpcError,
    },
}

/// Classifies one incoming text message. Never fails: a bad message becomes
/// [`Incoming::Invalid`].
pub fn parse(text: &str) -> Incoming {
    if text.len() > MAX_MESSAGE_BYTES {
        return Incoming::Invalid {
            id: None,
            error: RpcError::too_large(text.len()),
        };
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Incoming::Invalid {
                id: None,
                error: RpcError::new(
                    PARSE_ERROR,
                    format!("parse error: {e}; send one JSON object per message"),
                ),
            }
        }
    };
    let Value::Object(mut obj) = value else {
        let what = if value.is_array() {
            "batches are not supported"
        } else {
            "a message must be a JSON object"
        };
        return Incoming::Invalid {
            id: None,
            error: RpcError::invalid_request(format!("invalid request: {what}")),
        };
    };
    let id = match obj.get("id") {
        None => None,
        Some(raw) => match request_id(raw) {
            Some(id) => Some(id),
            None => {
                return Incoming::Invalid {
                    id: None,
                    error: RpcError::invalid_request(format!(
                        "invalid request: id must be an integer or a string, got {}",
                        kind(raw)
                    )),
                }
            }
        },
    };
    let invalid = |id: Option<ClientRequestId>, msg: String| Incoming::Invalid {
        id,
        error: RpcError::invalid_request(msg),
    };
    match obj.get("jsonrpc") {
        None => {}
        Some(Value::String(v)) if v == "2.0" => {}
        Some(other) => {
            return invalid(
                id,
                format!("invalid request: jsonrpc must be \"2.0\", got {other}"),
            )
        }
    }
    match obj.remove("method") {
        Some(Value::String(method)) => {
            let params = obj.remove("params").unwrap_or(Value::Null);
            match id {
                Some(id) => Incoming::Request { id, method, params },
                None => Incoming::Notification { method },
            }
        }
        Some(other) => invalid(
            id,
            format!(
                "invalid request: method must be a string, got {}",
                kind(&other)
            ),
        ),
        None => {
            let result = match (obj.remove("result"), obj.remove("error")) {
                (Some(r), None) => Ok(r),
                (None, Some(e)) => Err(e),
                (Some(_), Some(_)) => return invalid(id, "invalid request: a response has either result or error, not both".into()),
                (None, None) => {
                    return invalid(id, "invalid request: expected method (a request or notification) or result/error (a response)".into())
                }
            };
            match id {
                Some(id) => Incoming::Answer { id, result },
                None => invalid(
                    None,
                    "invalid request: a response needs the id of the request it answers".into(),
                ),
            }
        }
    }
}

/// A JSON-RPC id: an integer (that fits `i64`) or a string.
fn request_id(v: &Value) -> Option<ClientRequestId> {
    match v {
        Value::Number(n) => n.as_i64().map(ClientRequestId::Int),
        Value::String(s) => Some(ClientRequestId::Str(s.clone())),
        _ => None,
    }
}

/// A short name of a JSON value's type, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a transport writes for one outbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// One JSON-RPC message.
    Text(String),
    /// Close the connection, telling the client why.
    Close(String),
}

/// Serializes one runtime message for the wire; `None` for a kind of message this version
/// does not know (`Outbound` is non-exhaustive), which is not sent.
pub fn encode(msg: &Outbound) -> Option<Frame> {
    Some(match msg {
        Outbound::Notification(n) => Frame::Text(with_jsonrpc(n.as_ref())),
        Outbound::Request(r) => Frame::Text(with_jsonrpc(r.as_ref())),
        Outbound::Response {
            id,
            result: Ok(result),
        } => Frame::Text(response(id, result)),
        Outbound::Response { id, result: Err(e) } => {
            Frame::Text(error_response(Some(id), &host_error(e)))
        }
        Outbound::Disconnected { reason } => Frame::Close(reason.clone()),
        _ => return None,
    })
}

/// `{"jsonrpc":"2.0", ...fields of v}` for a value that serializes as an object.
fn with_jsonrpc<T: Serialize>(v: &T) -> String {
    let body =
        serde_json::to_string(v).expect("outbound messages are plain data and always serialize");
    match body.strip_prefix('{') {
        Some("}") => "{\"jsonrpc\":\"2.0\"}".to_owned(),
        Some(rest) => format!("{{\"jsonrpc\":\"2.0\",{rest}"),
        None => body,
    }
}

/// A success response.
pub fn response(id: &ClientRequestId, result: &Value) -> String {
    #[derive(Serialize)]
    struct Response<'a> {
        jsonrpc: &'static str,
        id: &'a ClientRequestId,
        result: &'a Value,
    }
    serde_json::to_string(&Response {
        jsonrpc: "2.0",
        id,
        result,
    })
    .expect("a JSON value always serializes")
}

/// An error response; `id` is `null` when the request's id could not be read.
pub fn error_response(id: Option<&ClientRequestId>, error: &RpcError) -> String {
    #[derive(Serialize)]
    struct ErrorResponse<'a> {
        jsonrpc: &'static str,
        id: Option<&'a ClientRequestId>,
        error: &'a RpcError,
    }
    serde_json::to_string(&ErrorResponse {
        jsonrpc: "2.0",
        id,
        error,
    })
    .expect("an error always serializes")
}

/// Typed access to a request's params that names the offending field in every error.
#[derive(Debug)]
pub struct Params {
    map: Map<String, Value>,
}

impl Params {
    /// Params of a request: an object, or absent/`null` (read as `{}`).
    pub fn new(params: Value) -> Result<Self, RpcError> {
        match params {
            Value::Object(map) => Ok(Self { map }),
            Value::Null => Ok(Self { map: Map::new() }),
            other => Err(RpcError::invalid_params(format!(
                "invalid params: params must be an object, got {}",
                kind(&other)
            ))),
        }
    }

    /// A field that must be present and not `null`.
    pub fn required<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, RpcError> {
        self.optional(name)?.ok_or_else(|| {
            RpcError::invalid_params(format!("invalid params: missing field `{name}`"))
        })
    }

    /// A field that may be absent or `null`.
    pub fn optional<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, RpcError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => field(name, v).map(Some),
        }
    }

    /// Codex's `sortDirection` (`asc` or `desc`, descending when absent): `true` for ascending.
    pub fn sort_ascending(&self) -> Result<bool, RpcError> {
        match self.optional::<String>("sortDirection")?.as_deref() {
            None | Some("desc") => Ok(false),
            Some("asc") => Ok(true),
            Some(other) => Err(RpcError::invalid_params(format!(
                "invalid params: field `sortDirection`: unknown direction `{other}`; use asc or desc"
            ))),
        }
    }

    /// The raw value of a field, if present.
    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }
}

/// Deserializes `v` as the field `name`; the error names it and what was expected.
pub fn field<T: serde::de::DeserializeOwned>(name: &str, v: &Value) -> Result<T, RpcError> {
    T::deserialize(v)
        .map_err(|e| RpcError::invalid_params(format!("invalid params: field `{name}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_without_jsonrpc_and_with_a_string_id_is_accepted() {
        let m = parse(r#"{"id":"startup-1","method":"thread/start","params":{"cwd":null}}"#);
        assert_eq!(
            m,
            Incoming::Request {
                id: ClientRequestId::Str("startup-1".into()),
                method: "thread/start".into(),
                params: json!({"cwd": null})
            }
        );
    }

    #[test]
    fn text_that_is_not_json_is_a_parse_error_without_an_id() {
        let Incoming::Invalid { id, error } = parse("{nope") else {
            panic!("expected an error")
        };
        assert_eq!((id, error.code), (None, PARSE_ERROR));
    }

    #[test]
    fn an_object_id_is_an_invalid_request_without_an_id() {
        let Incoming::Invalid { id, error } = parse(r#"{"id":{"a":1},"method":"thread/list"}"#)
        else {
            panic!("expected an error")
        };
        assert_eq!((id, error.code), (None, INVALID_REQUEST));
        assert!(
            error.message.contains("id must be an integer or a string"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_wrong_jsonrpc_version_keeps_the_id_of_the_request() {
        let Incoming::Invalid { id, error } = parse(r#"{"jsonrpc":"1.0","id":7,"method":"x"}"#)
        else {
            panic!("expected an error")
        };
        assert_eq!(
            (id, error.code),
            (Some(ClientRequestId::Int(7)), INVALID_REQUEST)
        );
    }

    #[test]
    fn answers_carry_result_or_error() {
        assert_eq!(
            parse(r#"{"id":0,"result":{"decision":"accept"}}"#),
            Incoming::Answer {
                id: ClientRequestId::Int(0),
                result: Ok(json!({"decision":"accept"}))
            }
        );
        assert_eq!(
            parse(r#"{"id":3,"error":{"code":1,"message":"no"}}"#),
            Incoming::Answer {
                id: ClientRequestId::Int(3),
                result: Err(json!({"code":1,"message":"no"}))
            }
        );
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_parsing() {
        let big = format!("\"{}\"", "x".repeat(MAX_MESSAGE_BYTES));
        let Incoming::Invalid { error, .. } = parse(&big) else {
            panic!("expected an error")
        };
        assert_eq!(error.code, INVALID_REQUEST);
        assert!(
            error.message.starts_with("message too large"),
            "{}",
            error.message
        );
    }

    #[test]
    fn host_errors_map_client_mistakes_and_server_faults_apart() {
        let id = threadhost_actors::ThreadId::from("t");
        assert_eq!(
            host_error(&HostError::InvalidParams("x: bad".into())).code,
            INVALID_PARAMS
        );
        assert_eq!(
            host_error(&HostError::ThreadNotFound(id.clone())).code,
            INVALID_REQUEST
        );
        assert_eq!(
            host_error(&HostError::NoRollout(id.clone())).code,
            INVALID_REQUEST
        );
        assert_eq!(
            host_error(&HostError::Store("disk full".into())).code,
            INTERNAL_ERROR
        );
        assert_eq!(
            host_error(&HostError::ThreadRestarted(id)).code,
            INTERNAL_ERROR
        );
    }

    #[test]
    fn params_errors_name_the_field() {
        let p = Params::new(json!({"threadId": 5})).expect("an object");
        let e = p
            .required::<String>("threadId")
            .expect_err("a number is not a string");
        assert!(e.message.contains("`threadId`"), "{}", e.message);
        let e = p.required::<String>("turnId").expect_err("missing");
        assert_eq!(e.message, "invalid params: missing field `turnId`");
        assert_eq!(
            Params::new(json!([1])).expect_err("not an object").code,
            INVALID_PARAMS
        );
    }

    #[test]
    fn outbound_messages_get_the_jsonrpc_member_first() {
        let r = threadhost_actors::ServerRequest {
            id: threadhost_actors::RequestId(4),
            method: "item/tool/requestUserInput".into(),
            params: json!({}),
        };
        let Some(Frame::Text(t)) = encode(&Outbound::Request(std::sync::Arc::new(r))) else {
            panic!("text")
        };
        assert_eq!(
            t,
            r#"{"jsonrpc":"2.0","id":4,"method":"item/tool/requestUserInput","params":{}}"#
        );
        assert_eq!(
            error_response(None, &RpcError::new(PARSE_ERROR, "p")),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"p"}}"#
        );
    }
}
