//! Helpers for actor-level tests of code that embeds threadhost (cargo feature `testkit`).
//!
//! - [`test_host`]: a host on the caller's arbiter (so `tokio::time::pause` governs every
//!   timer), with an in-memory store and the scripted agent.
//! - [`Probe`]: a connection that records what it receives, with a bounded `recv`.
//! - [`settle`] and [`advance`]: let actors run, and move paused time.
//!
//! ```no_run
//! # async fn demo() {
//! use threadhost_actors::testkit::{test_host, Probe};
//! tokio::time::pause();
//! let (host, _store, _agents) = test_host(std::time::Duration::from_secs(60));
//! let mut probe = Probe::connect(&host);
//! let thread = probe.handle.start_thread(Default::default()).await.unwrap();
//! assert_eq!(probe.next_method().await, "thread/started");
//! # let _ = thread; }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::connection::Outbox;
use crate::host::{ConnectionHandle, HostConfig, ThreadHost};
use crate::outbound::{Notification, Outbound, ServerRequest};
use crate::scripted::{ScriptedAgentFactory, ShutdownBehavior};
use crate::store::MemoryStore;

/// A host for paused-time tests: every actor on the current arbiter, the given unload delay,
/// short shutdown timeout (1 s), an in-memory store and the scripted agent.
pub fn test_host(
    unload_delay: Duration,
) -> (ThreadHost, Arc<MemoryStore>, Arc<ScriptedAgentFactory>) {
    test_host_with(HostConfig {
        unload_delay,
        shutdown_timeout: Duration::from_secs(1),
        arbiters: 0,
        outbound_capacity: 64,
        default_cwd: "/work".to_owned(),
        ..HostConfig::default()
    })
}

/// Like [`test_host`] with a configuration of your own (keep `arbiters = 0` for paused time).
pub fn test_host_with(
    config: HostConfig,
) -> (ThreadHost, Arc<MemoryStore>, Arc<ScriptedAgentFactory>) {
    let store = Arc::new(MemoryStore::new());
    let agents = Arc::new(ScriptedAgentFactory::new(ShutdownBehavior::Complete));
    let host = ThreadHost::start(config, agents.clone(), store.clone());
    (host, store, agents)
}

/// Lets every actor process what is in its mailbox, without moving time.
pub async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// Moves paused time forward by `d`, letting actors run before and after.
pub async fn advance(d: Duration) {
    settle().await;
    tokio::time::advance(d).await;
    settle().await;
}

/// How long [`Probe::recv`] waits (in paused time this passes instantly when nothing is left
/// to run).
pub const RECV_BOUND: Duration = Duration::from_secs(5);

/// A connection that records what it receives.
#[derive(Debug)]
pub struct Probe {
    /// The connection's handle.
    pub handle: ConnectionHandle,
    outbox: Outbox,
}

impl Probe {
    /// Connects and initializes (no opt-outs).
    pub fn connect(host: &ThreadHost) -> Self {
        Self::connect_opting_out(host, &[])
    }

    /// Connects and initializes, opting out of `methods`.
    pub fn connect_opting_out(host: &ThreadHost, methods: &[&str]) -> Self {
        let (handle, outbox) = host.connect();
        handle.initialize(methods.iter().map(|m| (*m).to_owned()));
        Self { handle, outbox }
    }

    /// Starts a thread with this connection subscribed and consumes its `thread/started`.
    pub async fn start_thread(&mut self) -> crate::ThreadId {
        let snapshot = self
            .handle
            .start_thread(crate::StartThread::default())
            .await
            .expect("thread/start");
        let got = self.next_method().await;
        assert_eq!(
            got, "thread/started",
            "thread/start is followed by thread/started"
        );
        snapshot.meta.id
    }

    /// Starts a turn with one text input.
    pub async fn turn(&self, thread: &crate::ThreadId, text: &str) -> crate::Turn {
        self.handle
            .start_turn(thread, vec![crate::UserInput::text(text)])
            .await
            .expect("turn/start")
    }

    /// Whether the next messages, up to and including `turn/completed`, were received; returns
    /// the methods seen on the way.
    pub async fn until_turn_completed(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let m = self.next_method().await;
            let done = m == "turn/completed";
            seen.push(m);
            if done {
                return seen;
            }
        }
    }

    /// The next message; panics with a clear message if none comes within [`RECV_BOUND`].
    pub async fn recv(&mut self) -> Outbound {
        match tokio::time::timeout(RECV_BOUND, self.outbox.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!("probe {}: the connection closed", self.handle.id()),
            Err(_) => panic!(
                "probe {}: nothing received within {RECV_BOUND:?}",
                self.handle.id()
            ),
        }
    }

    /// The next message's method (`response` for responses, `disconnected` for a cut-off).
    pub async fn next_method(&mut self) -> String {
        describe(&self.recv().await)
    }

    /// The next notification; panics if the next message is something else.
    pub async fn notification(&mut self) -> Arc<Notification> {
        match self.recv().await {
            Outbound::Notification(n) => n,
            other => panic!("expected a notification, got {other:?}"),
        }
    }

    /// The next server request; panics if the next message is something else.
    pub async fn request(&mut self) -> Arc<ServerRequest> {
        match self.recv().await {
            Outbound::Request(r) => r,
            other => panic!("expected a server request, got {other:?}"),
        }
    }

    /// Skips messages until one with `method` arrives, and returns it.
    pub async fn until(&mut self, method: &str) -> Outbound {
        loop {
            let m = self.recv().await;
            if describe(&m) == method {
                return m;
            }
        }
    }

    /// Everything queued right now (after letting actors settle), as method names.
    pub async fn drain(&mut self) -> Vec<String> {
        settle().await;
        let mut out = Vec::new();
        while let Some(m) = self.outbox.try_recv() {
            out.push(describe(&m));
        }
        out
    }

    /// Everything queued right now, as messages.
    pub async fn drain_messages(&mut self) -> Vec<Outbound> {
        settle().await;
        let mut out = Vec::new();
        while let Some(m) = self.outbox.try_recv() {
            out.push(m);
        }
        out
    }
}

/// A one-word description of a message: its method, `response`, or `disconnected`.
pub fn describe(m: &Outbound) -> String {
    match m {
        Outbound::Notification(n) => n.method().to_owned(),
        Outbound::Request(r) => r.method.clone(),
        Outbound::Response { .. } => "response".to_owned(),
        Outbound::Disconnected { .. } => "disconnected".to_owned(),
    }
}
