//! The per-connection dispatcher, independent of the transport.
//!
//! A transport opens a [`Session`] per client, feeds it every incoming text message with
//! [`Session::receive`], and writes whatever [`Outgoing::next`] yields, from one writer task.
//!
//! - `initialize` is handled at once, in the reader, so the next message already sees the
//!   connection initialized. Its response is put on the runtime's stream before the connection
//!   joins the broadcast list, so no broadcast can overtake it.
//! - Every other request is parsed in the reader (bad params are answered at once) and then
//!   run in a task of its own, so a slow call never blocks reading. The call goes through
//!   [`ConnectionHandle::responding_to`], so the runtime puts exactly one response in the
//!   connection's stream, ordered with the events (a resume's response before its replays, a
//!   turn's response before `turn/started`). The dispatcher never writes its own response for
//!   those calls.
//! - Answers to server requests go to [`ConnectionHandle::answer`]; they are never replied to,
//!   whether or not a request was pending under that id.
//! - Errors of the wire itself (parse errors, unknown methods, invalid params) do not involve the
//!   runtime: they go through a small bounded queue that [`Outgoing`] merges with the runtime's
//!   stream. The reader waits when that queue is full, so a client that floods the server with
//!   garbage only slows itself down.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use threadhost_actors::{
    ClientRequestId, ConnectionHandle, GoalStatus, GoalUpdate, ListQuery, Outbound, Outbox,
    RequestId, SortKey, StartThread, ThreadHost, ThreadId, UserInput,
};
use tokio::sync::mpsc;

use crate::wire::{self, field, Frame, Incoming, Params, RpcError, METHOD_NOT_FOUND};

/// What `initialize` reports about this server (Codex's `InitializeResponse`).
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// `userAgent`: `threadhost/<version> (<os>; <arch>)`.
    pub user_agent: String,
    /// `codexHome`: the server's data directory, absolute.
    pub codex_home: String,
    /// How clients reach this server (`stdio` or `ws://ADDR/`), for `config/read`.
    pub transport: String,
    /// How WebSocket clients authenticate (`none` or `bearer token`), for `config/read`.
    pub auth: String,
}

impl ServerInfo {
    /// Info of this build with `data_dir` as `codexHome`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            user_agent: format!(
                "threadhost/{} ({}; {})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
            codex_home: data_dir.display().to_string(),
            transport: "stdio".to_owned(),
            auth: "none".to_owned(),
        }
    }

    /// The same info, saying how clients reach the server and whether they need a token.
    pub fn serving(mut self, transport: impl Into<String>, token_required: bool) -> Self {
        self.transport = transport.into();
        if token_required {
            self.auth = "bearer token".to_owned();
        }
        self
    }

    fn initialize_response(&self) -> Value {
        json!({
            "userAgent": self.user_agent,
            "codexHome": self.codex_home,
            "platformFamily": std::env::consts::FAMILY,
            "platformOs": std::env::consts::OS,
        })
    }
}

/// Default page size of `thread/list` when the client gives none.
pub const DEFAULT_LIST_LIMIT: usize = 25;

/// Capacity of the queue of the wire's own error responses.
const WIRE_QUEUE: usize = 64;

/// The client methods this server implements (spec section 11).
pub const METHODS: [&str; 13] = [
    "initialize",
    "thread/start",
    "thread/resume",
    "thread/unsubscribe",
    "thread/loaded/list",
    "thread/read",
    "thread/list",
    "thread/close",
    "turn/start",
    "turn/interrupt",
    "thread/goal/set",
    "thread/goal/get",
    "thread/goal/clear",
];

/// One client connection's dispatcher. Lives in the transport's reader task; not `Send`.
#[derive(Debug)]
pub struct Session {
    /// The runtime, for the list of loaded threads (`thread/list` statuses).
    host: ThreadHost,
    /// This connection's handle; calls use `responding_to(id)` clones of it.
    conn: ConnectionHandle,
    /// What `initialize` answers.
    info: Arc<ServerInfo>,
    /// Set by `initialize`; every other request is refused until then.
    initialized: Cell<bool>,
    /// The wire's own responses (errors, and nothing the runtime orders), merged by `Outgoing`.
    wire: mpsc::Sender<String>,
    /// Cloned into every spawned call; [`Session::finish`] waits until all clones are dropped.
    in_flight: mpsc::Sender<()>,
    /// Closes (yields `None`) when the last call in flight ends.
    in_flight_done: mpsc::Receiver<()>,
}

/// The outgoing side of a connection: the runtime's stream merged with the wire's own
/// responses, as frames ready to write. Owned by the transport's single writer task.
#[derive(Debug)]
pub struct Outgoing {
    outbox: Outbox,
    wire: mpsc::Receiver<String>,
    /// The runtime's stream ended: only the wire's leftovers remain.
    outbox_done: bool,
}

impl Outgoing {
    /// The next frame to write; `None` once the connection is closed and everything queued
    /// was yielded.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.outbox_done {
                return self.wire.try_recv().ok().map(Frame::Text);
            }
            tokio::select! {
                m = self.outbox.recv() => match m {
                    Some(m) => match wire::encode(&m) {
                        Some(frame) => return Some(frame),
                        None => continue,
                    },
                    None => self.outbox_done = true,
                },
                Some(text) = self.wire.recv() => return Some(Frame::Text(text)),
            }
        }
    }
}

impl Session {
    /// Opens a connection on `host`.
    pub fn open(host: &ThreadHost, info: Arc<ServerInfo>) -> (Self, Outgoing) {
        let (conn, outbox) = host.connect();
        let (wire_tx, wire_rx) = mpsc::channel(WIRE_QUEUE);
        let (in_flight, in_flight_done) = mpsc::channel(1);
        let session = Self {
            host: host.clone(),
            conn,
            info,
            initialized: Cell::new(false),
            wire: wire_tx,
            in_flight,
            in_flight_done,
        };
        (
            session,
            Outgoing {
                outbox,
                wire: wire_rx,
                outbox_done: false,
            },
        )
    }

    /// Handles one incoming text message. Returns once the message is parsed and its call
    /// started (or its error queued); never fails and never panics on bad input.
    pub async fn receive(&self, text: &str) {
        match wire::parse(text) {
            Incoming::Request { id, method, params } => self.request(id, &method, params).await,
            Incoming::Notification { method } => {
                // `initialized` completes the handshake on the client's side; nothing to do.
                if method != "initialized" {
                    tracing::debug!(connection = %self.conn.id(), %method, "ignored a client notification");
                }
            }
            Incoming::Answer { id, result } => self.answer(&id, result),
            Incoming::Invalid { id, error } => self.reply_error(id.as_ref(), &error).await,
        }
    }

    /// Answers a message the transport could not even read (too large, not UTF-8) with `error`
    /// and a `null` id.
    pub async fn reject(&self, error: RpcError) {
        self.reply_error(None, &error).await;
    }

    /// Waits (at most `bound`) for the calls in flight to end, so their responses are queued,
    /// then closes the connection: it leaves every thread it subscribed to and its outgoing
    /// stream ends after what is queued.
    pub async fn finish(self, bound: Duration) {
        let Self {
            conn,
            in_flight,
            mut in_flight_done,
            ..
        } = self;
        drop(in_flight);
        if tokio::time::timeout(bound, in_flight_done.recv())
            .await
            .is_err()
        {
            tracing::warn!(connection = %conn.id(), "calls still in flight when the connection closed");
        }
        conn.disconnect();
    }

    /// Closes the connection at once (the client went away).
    pub fn close(&self) {
        self.conn.disconnect();
    }

    async fn reply_error(&self, id: Option<&ClientRequestId>, error: &RpcError) {
        // The receiver lives as long as the writer; if it is gone, the connection is closing.
        let _ = self.wire.send(wire::error_response(id, error)).await;
    }

    async fn request(&self, id: ClientRequestId, method: &str, params: Value) {
        let bootstrap = crate::bootstrap::METHODS.contains(&method);
        if !METHODS.contains(&method) && !bootstrap {
            let e = RpcError::new(METHOD_NOT_FOUND, format!("method not found: {method}"));
            return self.reply_error(Some(&id), &e).await;
        }
        if method == "initialize" {
            return self.initialize(id, params).await;
        }
        if !self.initialized.get() {
            return self
                .reply_error(Some(&id), &RpcError::not_initialized())
                .await;
        }
        if bootstrap {
            return self.bootstrap(id, method, params).await;
        }
        let call = match Params::new(params).and_then(|p| Call::parse(method, &p)) {
            Ok(call) => call,
            Err(e) => return self.reply_error(Some(&id), &e).await,
        };
        let conn = self.conn.clone();
        let token = self.in_flight.clone();
        actix_rt::spawn(async move {
            call.run(&conn, id).await;
            drop(token);
        });
    }

    /// The client-support methods of [`crate::bootstrap`]; their responses need no ordering
    /// with thread events, so they are delivered when ready.
    async fn bootstrap(&self, id: ClientRequestId, method: &str, params: Value) {
        let params = match Params::new(params) {
            Ok(p) => p,
            Err(e) => return self.reply_error(Some(&id), &e).await,
        };
        let (conn, host, info) = (self.conn.clone(), self.host.clone(), Arc::clone(&self.info));
        let (wire, token, method) = (self.wire.clone(), self.in_flight.clone(), method.to_owned());
        actix_rt::spawn(async move {
            match crate::bootstrap::call(&method, &params, &host, &conn, &info).await {
                Ok(result) => conn.deliver(Outbound::Response {
                    id,
                    result: Ok(result),
                }),
                Err(e) => drop(wire.send(wire::error_response(Some(&id), &e)).await),
            }
            drop(token);
        });
    }

    async fn initialize(&self, id: ClientRequestId, params: Value) {
        if self.initialized.get() {
            return self
                .reply_error(Some(&id), &RpcError::invalid_request("Already initialized"))
                .await;
        }
        let opt_out = match Params::new(params).and_then(|p| parse_initialize(&p)) {
            Ok(o) => o,
            Err(e) => return self.reply_error(Some(&id), &e).await,
        };
        // The response goes on the runtime's stream before the connection joins the broadcast
        // list, so no broadcast can arrive ahead of it.
        self.conn.deliver(Outbound::Response {
            id,
            result: Ok(self.info.initialize_response()),
        });
        self.conn.initialize(opt_out);
        self.initialized.set(true);
    }

    fn answer(&self, id: &ClientRequestId, result: Result<Value, Value>) {
        if !self.initialized.get() {
            return;
        }
        let &ClientRequestId::Int(n) = id else {
            // Server request ids are integers: a string id cannot answer one.
            tracing::info!(connection = %self.conn.id(), %id, "ignored an answer with a string id");
            return;
        };
        // An error answer is handed to the agent as `{"error": ...}`: it carries no decision,
        // so an approval counts as declined.
        let answer = result.unwrap_or_else(|error| json!({ "error": error }));
        let conn = self.conn.clone();
        let token = self.in_flight.clone();
        actix_rt::spawn(async move {
            conn.answer(RequestId(n), answer).await;
            drop(token);
        });
    }
}

#[derive(Deserialize)]
struct ClientInfo {
    name: String,
    version: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Capabilities {
    #[serde(default)]
    opt_out_notification_methods: Option<Vec<String>>,
}

/// Reads `initialize` params: checks `clientInfo`, returns the opted-out methods.
fn parse_initialize(p: &Params) -> Result<Vec<String>, RpcError> {
    let client: ClientInfo = p.required("clientInfo")?;
    tracing::info!(client = %client.name, version = %client.version, "client initialized");
    let caps: Option<Capabilities> = p.optional("capabilities")?;
    Ok(caps
        .and_then(|c| c.opt_out_notification_methods)
        .unwrap_or_default())
}

/// A parsed request, ready to run.
#[derive(Debug)]
enum Call {
    StartThread(StartThread),
    Resume {
        thread: ThreadId,
        exclude_turns: bool,
    },
    Unsubscribe(ThreadId),
    LoadedList {
        cursor: Option<String>,
        limit: Option<usize>,
    },
    Read {
        thread: ThreadId,
        include_turns: bool,
    },
    List {
        query: ListQuery,
        /// `excludedThreadIds`: left out of the page.
        excluded: Vec<String>,
        /// Filters no threadhost thread can match (a section, archived threads, another
        /// source or provider, sub-agent threads): the answer is an empty page.
        matches_nothing: bool,
    },
    Close(ThreadId),
    StartTurn {
        thread: ThreadId,
        input: Vec<UserInput>,
    },
    Interrupt {
        thread: ThreadId,
        turn: String,
    },
    SetGoal {
        thread: ThreadId,
        update: GoalUpdate,
    },
    GetGoal(ThreadId),
    ClearGoal(ThreadId),
}

/// `cwd` of `thread/list`: one path or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum CwdFilter {
    One(String),
    Many(Vec<String>),
}

impl Call {
    /// Maps Codex's params (`v2/<Method>Params.json`) to a call; unknown fields are ignored.
    fn parse(method: &str, p: &Params) -> Result<Self, RpcError> {
        let thread = || p.required::<String>("threadId").map(ThreadId::from);
        let flag = |name| p.optional::<bool>(name).map(Option::unwrap_or_default);
        Ok(match method {
            "thread/start" => Self::StartThread(StartThread {
                model: p.optional("model")?,
                cwd: p.optional("cwd")?,
                raw_events: flag("experimentalRawEvents")?,
                ephemeral: flag("ephemeral")?,
            }),
            "thread/resume" => Self::Resume {
                thread: thread()?,
                exclude_turns: flag("excludeTurns")?,
            },
            "thread/unsubscribe" => Self::Unsubscribe(thread()?),
            "thread/loaded/list" => Self::LoadedList {
                cursor: p.optional("cursor")?,
                limit: p.optional::<u32>("limit")?.map(|l| l as usize),
            },
            "thread/read" => Self::Read {
                thread: thread()?,
                include_turns: flag("includeTurns")?,
            },
            "thread/list" => Self::List {
                query: list_query(p)?,
                excluded: p.optional("excludedThreadIds")?.unwrap_or_default(),
                matches_nothing: list_matches_nothing(p)?,
            },
            "thread/close" => Self::Close(thread()?),
            "turn/start" => {
                let thread = thread()?;
                let raw: Vec<Value> = p.required("input")?;
                let input = raw
                    .iter()
                    .enumerate()
                    .map(|(i, v)| field::<UserInput>(&format!("input[{i}]"), v))
                    .collect::<Result<Vec<_>, _>>()?;
                Self::StartTurn { thread, input }
            }
            "turn/interrupt" => Self::Interrupt {
                thread: thread()?,
                turn: p.required("turnId")?,
            },
            "thread/goal/set" => {
                let update = GoalUpdate {
                    objective: p.optional("objective")?,
                    status: p.optional::<GoalStatus>("status")?,
                    token_budget: p.optional("tokenBudget")?,
                };
                Self::SetGoal {
                    thread: thread()?,
                    update,
                }
            }
            "thread/goal/get" => Self::GetGoal(thread()?),
            "thread/goal/clear" => Self::ClearGoal(thread()?),
            other => {
                return Err(RpcError::new(
                    METHOD_NOT_FOUND,
                    format!("method not found: {other}"),
                ))
            }
        })
    }

    /// Runs the call. Every runtime call responds in-stream through `responding_to`; results
    /// are only dropped here.
    async fn run(self, conn: &ConnectionHandle, id: ClientRequestId) {
        let r = conn.responding_to(id.clone());
        match self {
            Self::StartThread(p) => drop(r.start_thread(p).await),
            Self::Resume {
                thread,
                exclude_turns,
            } => drop(r.resume(&thread, exclude_turns).await),
            Self::Unsubscribe(thread) => drop(r.unsubscribe(&thread).await),
            Self::LoadedList { cursor, limit } => {
                drop(r.list_loaded(cursor.as_deref(), limit).await)
            }
            Self::Read {
                thread,
                include_turns,
            } => drop(r.read(&thread, include_turns).await),
            Self::List {
                query,
                excluded,
                matches_nothing,
            } => {
                let result = match matches_nothing {
                    true => Ok(json!({ "data": [], "nextCursor": null })),
                    false => conn.list_threads(query).await.map(|(threads, next)| {
                        let data: Vec<Value> = threads
                            .iter()
                            .filter(|t| !excluded.iter().any(|x| x == t.meta.id.as_str()))
                            .map(threadhost_actors::ThreadSnapshot::to_json)
                            .collect();
                        json!({ "data": data, "nextCursor": next })
                    }),
                };
                conn.deliver(Outbound::Response { id, result });
            }
            Self::Close(thread) => drop(r.close_thread(&thread).await),
            Self::StartTurn { thread, input } => drop(r.start_turn(&thread, input).await),
            Self::Interrupt { thread, turn } => drop(r.interrupt(&thread, &turn).await),
            Self::SetGoal { thread, update } => drop(r.set_goal(&thread, update).await),
            Self::GetGoal(thread) => drop(r.get_goal(&thread).await),
            Self::ClearGoal(thread) => drop(r.clear_goal(&thread).await),
        }
    }
}

/// Whether `thread/list`'s filters exclude every thread threadhost has: threadhost keeps no
/// sections, archives nothing, runs no sub-agents, and every thread has source `appServer`
/// and provider `threadhost`.
fn list_matches_nothing(p: &Params) -> Result<bool, RpcError> {
    let listed_without = |field: &str, ours: &str| -> Result<bool, RpcError> {
        Ok(p.optional::<Vec<String>>(field)?
            .is_some_and(|v| !v.is_empty() && !v.iter().any(|x| x == ours)))
    };
    Ok(p.optional::<String>("sectionId")?.is_some()
        || p.optional::<bool>("archived")?.unwrap_or(false)
        || p.optional::<String>("parentThreadId")?.is_some()
        || p.optional::<String>("ancestorThreadId")?.is_some()
        || p.optional::<String>("attachedToThreadId")?.is_some()
        || listed_without("sourceKinds", "appServer")?
        || listed_without("modelProviders", "threadhost")?)
}

fn list_query(p: &Params) -> Result<ListQuery, RpcError> {
    let sort_key = match p.optional::<String>("sortKey")?.as_deref() {
        None | Some("created_at") => SortKey::CreatedAt,
        // Recency is last activity, which is what `updated_at` records here.
        // Without sections, a section's order is recency too.
        Some("updated_at" | "recency_at" | "section_position") => SortKey::UpdatedAt,
        Some(other) => {
            return Err(RpcError::invalid_params(format!(
                "invalid params: field `sortKey`: unsupported sort key `{other}`; use created_at or updated_at"
            )))
        }
    };
    let ascending = p.sort_ascending()?;
    let cwd = p.optional::<CwdFilter>("cwd").map_err(|_| {
        RpcError::invalid_params(
            "invalid params: field `cwd`: expected a path or an array of paths",
        )
    })?;
    Ok(ListQuery {
        limit: p
            .optional::<u32>("limit")?
            .map_or(DEFAULT_LIST_LIMIT, |l| (l as usize).max(1)),
        cursor: p.optional("cursor")?,
        sort_key,
        ascending,
        search_term: p.optional("searchTerm")?,
        cwd: cwd.map(|c| match c {
            CwdFilter::One(one) => vec![one],
            CwdFilter::Many(many) => many,
        }),
    })
}
