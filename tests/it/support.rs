//! What every test module uses: a server process (WebSocket on 127.0.0.1:0, or stdio), a
//! client over a real WebSocket or real pipes, and the check of every received message
//! against the JSON Schemas that Codex publishes (`../shared/codex-schema`).
//!
//! Every wait is bounded by [`BOUND`] and fails with a message that says what was awaited.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on every wait of the tests.
pub(crate) const BOUND: Duration = Duration::from_secs(15);

const SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/codex-schema");

// ---- schemas ---------------------------------------------------------------------------------

/// Codex's schemas, compiled on first use.
pub(crate) struct Schemas {
    envelope: jsonschema::Validator,
    notifications: Value,
    requests: Value,
    compiled: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

fn load(path: &str) -> Value {
    let full = Path::new(SCHEMA_DIR).join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| {
        panic!(
            "cannot read schema {} (shared/ must sit beside the repository): {e}",
            full.display()
        )
    });
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("schema {} is not JSON: {e}", full.display()))
}

fn compile(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft7::new(schema).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

/// The v2 bundle's definition of the response of `method`, for the client-support methods that
/// have no file of their own.
fn bundle_response(method: &str) -> Option<&'static str> {
    Some(match method {
        "account/read" => "GetAccountResponse",
        "model/list" => "ModelListResponse",
        "config/read" => "ConfigReadResponse",
        "configRequirements/read" => "ConfigRequirementsReadResponse",
        "thread/turns/list" => "ThreadTurnsListResponse",
        "hooks/list" => "HooksListResponse",
        "skills/list" => "SkillsListResponse",
        "plugin/installed" => "PluginInstalledResponse",
        // `collaborationMode/list`, `thread/backgroundTerminals/list` and
        // `account/bedrock/checkGovCloudRequirements` are experimental: not in the schema.
        _ => return None,
    })
}

/// The file of the response schema of `method`, where Codex publishes one.
fn response_schema(method: &str) -> Option<&'static str> {
    Some(match method {
        "initialize" => "v1/InitializeResponse.json",
        "thread/start" => "v2/ThreadStartResponse.json",
        "thread/resume" => "v2/ThreadResumeResponse.json",
        "thread/unsubscribe" => "v2/ThreadUnsubscribeResponse.json",
        "thread/loaded/list" => "v2/ThreadLoadedListResponse.json",
        "thread/read" => "v2/ThreadReadResponse.json",
        "thread/list" => "v2/ThreadListResponse.json",
        "turn/start" => "v2/TurnStartResponse.json",
        "turn/interrupt" => "v2/TurnInterruptResponse.json",
        "thread/goal/set" => "v2/ThreadGoalSetResponse.json",
        "thread/goal/get" => "v2/ThreadGoalGetResponse.json",
        "thread/goal/clear" => "v2/ThreadGoalClearResponse.json",
        // `thread/close` is experimental in Codex: not in the stable schema.
        _ => return None,
    })
}

/// The schemas, loaded once per test binary.
pub(crate) fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| Schemas {
        envelope: compile(&load("JSONRPCMessage.json")),
        notifications: load("ServerNotification.json"),
        requests: load("ServerRequest.json"),
        compiled: Mutex::new(HashMap::new()),
    })
}

impl Schemas {
    /// The validator of one method of a union file (its `oneOf` branch plus the definitions).
    fn branch(
        &self,
        union: &Value,
        kind: &str,
        method: &str,
    ) -> Result<Arc<jsonschema::Validator>, String> {
        let key = format!("{kind}:{method}");
        if let Some(v) = self.compiled.lock().expect("not poisoned").get(&key) {
            return Ok(Arc::clone(v));
        }
        let branch = union["oneOf"]
            .as_array()
            .expect("a union file has oneOf")
            .iter()
            .find(|b| b["properties"]["method"]["enum"][0] == method)
            .ok_or_else(|| format!("{kind} method {method:?} is not in Codex's schema"))?;
        let mut schema = branch.clone();
        schema["definitions"] = union["definitions"].clone();
        schema["$schema"] = json!("http://json-schema.org/draft-07/schema#");
        let v = Arc::new(compile(&schema));
        self.compiled
            .lock()
            .expect("not poisoned")
            .insert(key, Arc::clone(&v));
        Ok(v)
    }

    fn response(&self, method: &str) -> Option<Arc<jsonschema::Validator>> {
        let schema = match (response_schema(method), bundle_response(method)) {
            (Some(file), _) => Either::File(file),
            (None, Some(def)) => Either::Bundle(def),
            (None, None) => return None,
        };
        let key = format!("response:{method}");
        let mut compiled = self.compiled.lock().expect("not poisoned");
        Some(Arc::clone(compiled.entry(key).or_insert_with(|| {
            Arc::new(compile(&match schema {
                Either::File(file) => load(file),
                Either::Bundle(def) => {
                    let bundle = load("codex_app_server_protocol.v2.schemas.json");
                    json!({
                        "$schema": "http://json-schema.org/draft-07/schema#",
                        "$ref": format!("#/definitions/{def}"),
                        "definitions": bundle["definitions"],
                    })
                }
            }))
        })))
    }

    /// Checks one message the server sent. `response_to` is the method of the request a
    /// response answers, when known.
    pub(crate) fn check(&self, msg: &Value, response_to: Option<&str>) -> Result<(), String> {
        let errors = |v: &jsonschema::Validator, instance: &Value| -> Result<(), String> {
            let errs: Vec<String> = v
                .iter_errors(instance)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            if errs.is_empty() {
                Ok(())
            } else {
                Err(errs.join("; "))
            }
        };
        if msg["jsonrpc"] != "2.0" {
            return Err("missing \"jsonrpc\":\"2.0\"".into());
        }
        if msg["id"].is_null() && msg.get("error").is_some() {
            // JSON-RPC's id null (parse errors) is outside Codex's RequestId type.
            let e = &msg["error"];
            return match (e["code"].as_i64(), e["message"].as_str()) {
                (Some(_), Some(_)) => Ok(()),
                _ => Err("error without an integer code and a string message".into()),
            };
        }
        errors(&self.envelope, msg).map_err(|e| format!("envelope: {e}"))?;
        match (msg.get("method").and_then(Value::as_str), msg.get("id")) {
            (Some(m), Some(_)) => errors(&*self.branch(&self.requests, "server request", m)?, msg),
            (Some(m), None) => errors(&*self.branch(&self.notifications, "notification", m)?, msg),
            (None, _) => match (
                msg.get("result"),
                response_to.and_then(|m| self.response(m)),
            ) {
                (Some(result), Some(v)) => errors(&v, result)
                    .map_err(|e| format!("{} response: {e}", response_to.unwrap_or_default())),
                _ => Ok(()),
            },
        }
    }
}

/// Where a response schema comes from.
enum Either {
    File(&'static str),
    Bundle(&'static str),
}

// ---- temporary directories -------------------------------------------------------------------

/// A directory removed when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system's temp dir.
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!(
            "threadhost-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("the temp dir is writable");
        Self(p)
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- server processes ------------------------------------------------------------------------

/// A `threadhost serve` child process.
pub(crate) struct Server {
    child: Child,
    /// The WebSocket address (WebSocket servers only).
    pub(crate) addr: Option<SocketAddr>,
    /// Everything the server wrote on stderr so far.
    pub(crate) stderr: Arc<Mutex<Vec<String>>>,
    /// The data directory (kept for restarts).
    pub(crate) data_dir: Arc<TempDir>,
}

fn command(args: &[&str], data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_threadhost"));
    cmd.arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env_remove("THREADHOST_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Collects the child's stderr; sends the first `listening on ws://ADDR/` address.
fn drain_stderr(
    child: &mut Child,
    log: Arc<Mutex<Vec<String>>>,
) -> tokio::sync::oneshot::Receiver<SocketAddr> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                if let (Some(tx), Ok(addr)) = (tx.take(), rest.trim_end_matches('/').parse()) {
                    let _ = tx.send(addr);
                }
            }
            log.lock().expect("not poisoned").push(line);
        }
    });
    rx
}

impl Server {
    /// Starts a WebSocket server on 127.0.0.1:0 with `args` (plus a fresh data dir) and waits
    /// until it listens.
    pub(crate) async fn ws(args: &[&str]) -> Self {
        Self::ws_in(args, Arc::new(TempDir::new("data"))).await
    }

    /// Like [`Server::ws`] on an existing data directory (for restarts).
    pub(crate) async fn ws_in(args: &[&str], data_dir: Arc<TempDir>) -> Self {
        Self::ws_with(args, data_dir, &[]).await
    }

    /// Like [`Server::ws_in`] with extra environment variables.
    pub(crate) async fn ws_with(
        args: &[&str],
        data_dir: Arc<TempDir>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut full = vec!["--listen", "127.0.0.1:0", "--shutdown-timeout", "2s"];
        full.extend_from_slice(args);
        let mut cmd = command(&full, data_dir.path());
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("the threadhost binary starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let rx = drain_stderr(&mut child, Arc::clone(&stderr));
        let Ok(Ok(addr)) = tokio::time::timeout(BOUND, rx).await else {
            panic!(
                "the server did not print its address; stderr: {:?}",
                stderr.lock().expect("not poisoned")
            )
        };
        Self {
            child,
            addr: Some(addr),
            stderr,
            data_dir,
        }
    }

    /// Starts `threadhost serve --stdio` with `args` and returns the server and its one client.
    pub(crate) async fn stdio(args: &[&str]) -> (Self, Client) {
        let data_dir = Arc::new(TempDir::new("data"));
        let mut full = vec!["--stdio", "--shutdown-timeout", "2s"];
        full.extend_from_slice(args);
        let mut cmd = command(&full, data_dir.path());
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("the threadhost binary starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        // Nobody waits for the address of a stdio server.
        drop(drain_stderr(&mut child, Arc::clone(&stderr)));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let client = Client::new(
            "stdio",
            Io::Stdio {
                stdin: Some(stdin),
                stdout,
            },
        );
        (
            Self {
                child,
                addr: None,
                stderr,
                data_dir,
            },
            client,
        )
    }

    /// `ws://ADDR/`.
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/", self.addr.expect("a WebSocket server"))
    }

    /// Opens a WebSocket connection (no token).
    pub(crate) async fn connect(&self) -> Client {
        self.connect_with(None)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect failed: {e}"))
    }

    /// Opens a WebSocket connection, sending `token` as a bearer token if given.
    pub(crate) async fn connect_with(
        &self,
        token: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut req = self.url().into_client_request()?;
        if let Some(t) = token {
            req.headers_mut().insert(
                "Authorization",
                format!("Bearer {t}").parse().expect("a valid header"),
            );
        }
        let (ws, _) = tokio::time::timeout(BOUND, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")?;
        Ok(Client::new("ws", Io::Ws(Box::new(ws))))
    }

    /// Opens a connection and completes the handshake.
    pub(crate) async fn client(&self) -> Client {
        let mut c = self.connect().await;
        c.initialize().await;
        c
    }

    /// A plain HTTP GET on the server's port: `(status, body)`.
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let addr = self.addr.expect("a WebSocket server");
        let fut = async {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let raw = tokio::time::timeout(BOUND, fut)
            .await
            .expect("HTTP answer in time");
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one sample of `/metrics` (e.g. `threadhost_threads_loaded`).
    pub(crate) async fn metric(&self, sample: &str) -> i64 {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|v| v.strip_prefix(' '))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{body}"))
    }

    /// Sends SIGTERM.
    pub(crate) fn signal_term(&self) {
        let pid = self.child.id().expect("the server is running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill -TERM {pid}");
    }

    /// Waits (bounded) for the process to exit.
    pub(crate) async fn wait(&mut self) -> ExitStatus {
        match tokio::time::timeout(BOUND, self.child.wait()).await {
            Ok(s) => s.expect("wait works"),
            Err(_) => panic!(
                "the server did not exit; stderr: {:?}",
                self.stderr.lock().expect("not poisoned")
            ),
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) async fn kill(mut self) -> Arc<TempDir> {
        self.child.start_kill().expect("kill works");
        let _ = self.wait().await;
        self.data_dir
    }
}

// ---- clients ---------------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a client talks to the server.
pub(crate) enum Io {
    /// A WebSocket.
    Ws(Box<Ws>),
    /// The server's stdin and stdout.
    Stdio {
        /// `None` once closed.
        stdin: Option<ChildStdin>,
        /// Lines of stdout.
        stdout: Lines<BufReader<ChildStdout>>,
    },
}

/// What arrived on the connection.
enum Received {
    Text(String),
    /// The connection closed: the close frame's code and reason, if any.
    Closed(Option<(u16, String)>),
}

/// A JSON-RPC client that checks every message it receives against Codex's schemas.
pub(crate) struct Client {
    name: &'static str,
    io: Io,
    next_id: i64,
    /// Method of each request sent, by id (as JSON text), to check responses.
    methods: HashMap<String, String>,
    /// Messages received but not consumed yet, in order.
    backlog: VecDeque<Value>,
}

impl Client {
    fn new(name: &'static str, io: Io) -> Self {
        Self {
            name,
            io,
            next_id: 1,
            methods: HashMap::new(),
            backlog: VecDeque::new(),
        }
    }

    /// Sends raw text as one message (a line on stdio, a text frame on WebSocket).
    pub(crate) async fn send_raw(&mut self, text: &str) {
        let fut = async {
            match &mut self.io {
                Io::Ws(ws) => ws
                    .send(Message::text(text))
                    .await
                    .map_err(|e| e.to_string()),
                Io::Stdio { stdin, .. } => {
                    let stdin = stdin.as_mut().expect("stdin is open");
                    stdin
                        .write_all(text.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    stdin.write_all(b"\n").await.map_err(|e| e.to_string())?;
                    stdin.flush().await.map_err(|e| e.to_string())
                }
            }
        };
        tokio::time::timeout(BOUND, fut)
            .await
            .expect("send in time")
            .expect("send works");
    }

    /// Sends a message, remembering the method of a request for checking its response.
    pub(crate) async fn send(&mut self, msg: Value) {
        if let (Some(id), Some(m)) = (msg.get("id"), msg.get("method").and_then(Value::as_str)) {
            self.methods.insert(id.to_string(), m.to_owned());
        }
        self.send_raw(&msg.to_string()).await;
    }

    /// Sends a binary frame (WebSocket only).
    pub(crate) async fn send_binary(&mut self, bytes: &[u8]) {
        let Io::Ws(ws) = &mut self.io else {
            panic!("binary frames need a WebSocket")
        };
        let fut = ws.send(Message::binary(bytes.to_vec()));
        tokio::time::timeout(BOUND, fut)
            .await
            .expect("send in time")
            .expect("send works");
    }

    /// Closes stdin (stdio) or sends a close frame (WebSocket).
    pub(crate) async fn close(&mut self) {
        match &mut self.io {
            Io::Ws(ws) => {
                let _ = ws.send(Message::Close(None)).await;
            }
            Io::Stdio { stdin, .. } => drop(stdin.take()),
        }
    }

    async fn receive(&mut self) -> Received {
        let fut = async {
            match &mut self.io {
                Io::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => return Received::Text(t.to_string()),
                        Some(Ok(Message::Close(f))) => {
                            return Received::Closed(
                                f.map(|f| (u16::from(f.code), f.reason.to_string())),
                            )
                        }
                        Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Received::Closed(None),
                    }
                },
                Io::Stdio { stdout, .. } => match stdout.next_line().await {
                    Ok(Some(line)) => Received::Text(line),
                    _ => Received::Closed(None),
                },
            }
        };
        match tokio::time::timeout(BOUND, fut).await {
            Ok(r) => r,
            Err(_) => panic!("{}: nothing received within {BOUND:?}", self.name),
        }
    }

    /// Parses and checks one message against the schemas.
    fn accept(&self, text: &str) -> Value {
        let msg: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{}: the server sent non-JSON {text:?}: {e}", self.name));
        let response_to = msg
            .get("id")
            .filter(|_| msg.get("method").is_none())
            .and_then(|id| self.methods.get(&id.to_string()));
        if let Err(e) = schemas().check(&msg, response_to.map(String::as_str)) {
            panic!(
                "{}: message does not match Codex's schema: {e}\nmessage: {msg}",
                self.name
            );
        }
        msg
    }

    /// The next message (schema-checked).
    pub(crate) async fn next(&mut self) -> Value {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        match self.receive().await {
            Received::Text(t) => self.accept(&t),
            Received::Closed(c) => panic!(
                "{}: the connection closed ({c:?}) while a message was expected",
                self.name
            ),
        }
    }

    /// Expects the connection to close within the bound, skipping (and checking) any messages
    /// before; returns the close frame's code and reason if there was one.
    pub(crate) async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            match self.receive().await {
                Received::Text(t) => {
                    self.accept(&t);
                }
                Received::Closed(c) => return c,
            }
        }
    }

    /// The next message, which must be the notification (or server request) `method`.
    pub(crate) async fn expect(&mut self, method: &str) -> Value {
        let m = self.next().await;
        assert_eq!(
            m["method"], method,
            "{}: expected {method}, got {m}",
            self.name
        );
        m
    }

    /// Skips messages until `method` arrives.
    pub(crate) async fn until(&mut self, method: &str) -> Value {
        loop {
            let m = self.next().await;
            if m["method"] == method {
                return m;
            }
        }
    }

    /// Sends a request and returns its response message (`result` or `error`); messages that
    /// arrive before it stay queued for [`Client::next`].
    pub(crate) async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.response(&json!(id)).await
    }

    /// Waits for the response to request `id`, queueing everything else.
    pub(crate) async fn response(&mut self, id: &Value) -> Value {
        if let Some(i) = self
            .backlog
            .iter()
            .position(|m| m.get("method").is_none() && &m["id"] == id)
        {
            return self.backlog.remove(i).expect("the index was just found");
        }
        let mut before = Vec::new();
        let found = loop {
            let m = self.next_unqueued().await;
            if m.get("method").is_none() && &m["id"] == id {
                break m;
            }
            before.push(m);
        };
        self.backlog.extend(before);
        found
    }

    async fn next_unqueued(&mut self) -> Value {
        match self.receive().await {
            Received::Text(t) => self.accept(&t),
            Received::Closed(c) => panic!(
                "{}: the connection closed ({c:?}) while a response was expected",
                self.name
            ),
        }
    }

    /// A request that must succeed: its `result`.
    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params).await;
        assert!(
            r.get("error").is_none(),
            "{}: {method} failed: {r}",
            self.name
        );
        r["result"].clone()
    }

    /// A request that must fail: its `(code, message)`.
    pub(crate) async fn call_err(&mut self, method: &str, params: Value) -> (i64, String) {
        let r = self.request(method, params).await;
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("{}: {method} should fail, got {r}", self.name));
        (
            e["code"].as_i64().expect("an integer code"),
            e["message"].as_str().expect("a message").to_owned(),
        )
    }

    /// `initialize` + `initialized`; returns the initialize result.
    pub(crate) async fn initialize(&mut self) -> Value {
        self.initialize_with(json!({"clientInfo": {"name": "threadhost-it", "version": "0.0.0"}}))
            .await
    }

    /// The handshake with the given `initialize` params.
    pub(crate) async fn initialize_with(&mut self, params: Value) -> Value {
        let r = self.call("initialize", params).await;
        self.send(json!({"method": "initialized"})).await;
        r
    }

    /// Everything that arrives before the answer to a round trip through the runtime (a
    /// `thread/loaded/list`). Events meant for this connection and produced before the call
    /// are queued ahead of its response, so an empty result proves none were sent.
    pub(crate) async fn barrier(&mut self) -> Vec<Value> {
        self.call("thread/loaded/list", json!({})).await;
        self.backlog.drain(..).collect()
    }

    /// Starts a thread; returns its id (the `thread/started` that follows stays queued).
    pub(crate) async fn start_thread(&mut self) -> String {
        let r = self.call("thread/start", json!({"cwd": null})).await;
        r["thread"]["id"].as_str().expect("a thread id").to_owned()
    }

    /// Runs a turn with `text` to its `turn/completed`; returns that notification's turn.
    pub(crate) async fn turn(&mut self, thread: &str, text: &str) -> Value {
        let r = self
            .call(
                "turn/start",
                json!({"threadId": thread, "input": [{"type": "text", "text": text}]}),
            )
            .await;
        let turn_id = r["turn"]["id"].clone();
        loop {
            let m = self.until("turn/completed").await;
            if m["params"]["turn"]["id"] == turn_id {
                return m["params"]["turn"].clone();
            }
        }
    }
}

/// Polls `f` every 20 ms until it returns `true`, for at most [`BOUND`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {BOUND:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The methods of `msgs`, for assertions on order.
pub(crate) fn methods(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["method"].as_str().unwrap_or("response").to_owned())
        .collect()
}
