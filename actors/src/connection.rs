//! `ConnectionActor`: one per client connection.
//!
//! **Role.** Receives everything the runtime sends to one client (thread-scoped events of the
//! threads it subscribed to, broadcasts, server requests, in-stream responses) and puts it on a
//! bounded outbound queue that the transport drains through an [`Outbox`].
//!
//! **State.** See the fields.
//!
//! **Messages.** [`Deliver`] (from threads, the registry and the host; never waits), the
//! bookkeeping messages [`Subscribed`] / [`Unsubscribed`], [`RouteAnswer`] (which thread a server
//! request came from) and [`Disconnect`].
//!
//! **Lifecycle.** Started by [`crate::ThreadHost::connect`]; registered for broadcasts when the
//! client initializes. Stops when the transport closes, when the client does not read (its queue
//! is full), or when the host shuts down; on stop it leaves every thread it had subscribed to.
//!
//! **Guarantees.** Messages from one sender arrive in the order sent. A full queue never blocks
//! the sender: the connection is cut off with `Outbound::Disconnected` as its last message,
//! and nobody else slows down.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::host::Shared;
use crate::ids::{ConnectionId, RequestId, ThreadId};
use crate::outbound::{Notification, Outbound, ServerRequest};
use crate::thread::{AnswerRequest, ConnectionClosed};

/// The receiving end of a connection's outbound queue. The transport owns it.
#[derive(Debug)]
pub struct Outbox {
    rx: mpsc::Receiver<Outbound>,
}

impl Outbox {
    /// The next message; `None` once the connection is closed and the queue drained.
    pub async fn recv(&mut self) -> Option<Outbound> {
        self.rx.recv().await
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }
}

pub(crate) struct ConnectionActor {
    /// This connection's id; subscribers are keyed by it.
    id: ConnectionId,
    /// The bounded queue to the transport. One slot is kept free for the disconnect reason.
    tx: mpsc::Sender<Outbound>,
    /// Notification methods the client opted out of in `initialize`.
    opt_out: HashSet<String>,
    /// Threads this connection is subscribed to, so it can leave them when it closes.
    threads: HashSet<ThreadId>,
    /// Server requests delivered here, and their thread: answers are routed by it, and an
    /// answer to anything else is ignored (spec section 8).
    requests: HashMap<RequestId, ThreadId>,
    /// Host-wide state: the directory, the broadcast list, metrics.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnectionActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionActor")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ConnectionActor {
    pub(crate) fn new(id: ConnectionId, capacity: usize, shared: Arc<Shared>) -> (Self, Outbox) {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        let actor = Self {
            id,
            tx,
            opt_out: HashSet::new(),
            threads: HashSet::new(),
            requests: HashMap::new(),
            shared,
        };
        (actor, Outbox { rx })
    }

    fn push(&mut self, msg: Outbound, ctx: &mut Context<Self>) {
        if self.tx.capacity() > 1 {
            if self.tx.try_send(msg).is_ok() {
                self.shared.metrics.delivered.inc();
            } else {
                // The receiver is gone: the transport closed.
                ctx.stop();
            }
        } else {
            self.shared.metrics.dropped.inc();
            let reason = format!(
                "outbound queue full ({} messages): the client is not reading; reconnect and resume",
                self.shared.config.outbound_capacity
            );
            tracing::warn!(connection = %self.id, "{reason}");
            let _ = self.tx.try_send(Outbound::Disconnected { reason });
            self.shared.metrics.slow_disconnects.inc();
            ctx.stop();
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        self.shared.metrics.connections.inc();
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared.metrics.connections.dec();
        self.shared.connections.remove(&self.id);
        for thread in self.threads.drain() {
            if let Some(addr) = self.shared.directory.get(&thread) {
                addr.do_send(ConnectionClosed { conn: self.id });
            }
        }
    }
}

/// Something for the client.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Deliver(pub(crate) Outbound);

impl Deliver {
    pub(crate) fn notification(n: Arc<Notification>) -> Self {
        Self(Outbound::Notification(n))
    }
}

impl Handler<Deliver> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, Deliver(msg): Deliver, ctx: &mut Context<Self>) {
        if let Outbound::Notification(n) = &msg {
            if self.opt_out.contains(n.method()) {
                return;
            }
            if let Notification::ServerRequestResolved { request_id, .. } = n.as_ref() {
                self.requests.remove(request_id);
            }
        }
        self.push(msg, ctx);
    }
}

/// A server request for this client, from thread `thread`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct DeliverRequest {
    pub(crate) thread: ThreadId,
    pub(crate) request: Arc<ServerRequest>,
}

impl Handler<DeliverRequest> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: DeliverRequest, ctx: &mut Context<Self>) {
        self.requests.insert(msg.request.id, msg.thread);
        self.push(Outbound::Request(msg.request), ctx);
    }
}

/// Sets the notification methods this client does not want.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SetOptOut(pub(crate) HashSet<String>);

impl Handler<SetOptOut> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: SetOptOut, _ctx: &mut Context<Self>) {
        self.opt_out = msg.0;
    }
}

/// The connection is now subscribed to `0`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Subscribed(pub(crate) ThreadId);

impl Handler<Subscribed> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribed, _ctx: &mut Context<Self>) {
        self.threads.insert(msg.0);
    }
}

/// The connection is no longer subscribed to `0` (unsubscribe or unload).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Unsubscribed(pub(crate) ThreadId);

impl Handler<Unsubscribed> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribed, _ctx: &mut Context<Self>) {
        self.threads.remove(&msg.0);
        self.requests.retain(|_, t| *t != msg.0);
    }
}

/// The client answered server request `id`. Routed to the thread it came from; `false` when
/// this connection was never sent that request (or it was resolved): the answer is ignored.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub(crate) struct RouteAnswer {
    pub(crate) id: RequestId,
    pub(crate) answer: serde_json::Value,
}

impl Handler<RouteAnswer> for ConnectionActor {
    type Result = bool;

    fn handle(&mut self, msg: RouteAnswer, _ctx: &mut Context<Self>) -> bool {
        let Some(thread) = self.requests.get(&msg.id) else {
            return false;
        };
        match self.shared.directory.get(thread) {
            Some(addr) => {
                addr.do_send(AnswerRequest {
                    conn: self.id,
                    id: msg.id,
                    answer: msg.answer,
                });
                true
            }
            None => false,
        }
    }
}

/// Closes the connection (transport gone, or the host shuts down).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Disconnect(pub(crate) Option<String>);

impl Handler<Disconnect> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        if let Some(reason) = msg.0 {
            let _ = self.tx.try_send(Outbound::Disconnected { reason });
        }
        ctx.stop();
    }
}
