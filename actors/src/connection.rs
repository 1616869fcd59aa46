//! `ConnectionActor`: one per client connection, and [`ConnRef`], what senders hold to reach it.
//!
//! **Role.** Everything the runtime sends to one client (thread-scoped events of the threads it
//! subscribed to, broadcasts, server requests, in-stream responses) goes onto one outbound queue
//! that the transport drains through an [`Outbox`]. Senders put messages on that queue
//! themselves, through the connection's [`Outlet`], at the moment they send: a thread actor that
//! fans an event out to a thousand subscribers does a thousand queue pushes, not a thousand
//! actor messages that each wake a connection actor only to push. The actor keeps what must
//! outlive a single message: which threads the connection subscribed to, so it can leave them
//! when it closes.
//!
//! **State.** See the fields of [`ConnectionActor`] and [`Outlet`].
//!
//! **Messages.** [`Subscribed`] / [`Unsubscribed`] (bookkeeping of the thread set) and
//! [`Disconnect`]. Deliveries are not messages: see [`ConnRef::deliver`], [`ConnRef::notify`]
//! and [`ConnRef::request`].
//!
//! **Lifecycle.** Started by [`crate::ThreadHost::connect`]; registered for broadcasts when the
//! client initializes. Stops when the transport closes (its `Outbox` is dropped, or
//! `disconnect`), when the client does not read (its queue is full), or when the host shuts
//! down; on stop it closes the queue and leaves every thread it had subscribed to.
//!
//! **Guarantees.** Messages from one sender arrive in the order sent, and a message sent after
//! another (in any sender, as far as one can tell: the push happens inside the send) is queued
//! after it. A full queue never blocks a sender: the connection is cut off with
//! `Outbound::Disconnected` as its last message, and nobody else slows down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::host::Shared;
use crate::ids::{ConnectionId, RequestId, ThreadId};
use crate::metrics::Metrics;
use crate::outbound::{Notification, Outbound, ServerRequest};
use crate::thread::ConnectionClosed;

/// What the queue carries: notifications (nearly everything) as they are, the rest boxed.
///
/// `Outbound` is 72 bytes because of its response variant; the channel allocates its slots in
/// blocks of 32, and 32 x 72 bytes is past the size at which glibc's malloc consolidates its
/// free lists on every allocation. 16-byte items keep a block at 512 bytes.
#[derive(Debug)]
enum Item {
    Notification(Arc<Notification>),
    Other(Box<Outbound>),
}

impl Item {
    fn new(msg: Outbound) -> Self {
        match msg {
            Outbound::Notification(n) => Self::Notification(n),
            other => Self::Other(Box::new(other)),
        }
    }

    fn into_outbound(self) -> Outbound {
        match self {
            Self::Notification(n) => Outbound::Notification(n),
            Self::Other(o) => *o,
        }
    }
}

/// The receiving end of a connection's outbound queue. The transport owns it.
#[derive(Debug)]
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Item>,
    /// Shared with the senders: each message taken out frees one slot of the bound.
    outlet: Arc<Outlet>,
}

impl Outbox {
    /// The next message; `None` once the connection is closed and the queue drained.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let m = self.rx.recv().await?;
        self.outlet.queued.fetch_sub(1, Ordering::AcqRel);
        Some(m.into_outbound())
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let m = self.rx.try_recv().ok()?;
        self.outlet.queued.fetch_sub(1, Ordering::AcqRel);
        Some(m.into_outbound())
    }
}

/// The sending side of one connection's queue, shared by everyone who delivers to it.
///
/// The queue itself is an unbounded channel; the bound is kept here, by counting what is queued,
/// so that the reason for a cut-off always fits behind the last message.
pub(crate) struct Outlet {
    /// For log lines.
    id: ConnectionId,
    /// Messages the queue holds before the client counts as not reading
    /// (`HostConfig::outbound_capacity`); one of them is kept for the disconnect reason.
    capacity: usize,
    /// Messages pushed and not yet taken out by the [`Outbox`].
    queued: AtomicUsize,
    /// Everything a push must see and change at once. Held only for one push: a few hundred
    /// nanoseconds, never across an `.await`.
    state: Mutex<OutletState>,
    /// Counters (delivered, dropped, slow disconnects).
    metrics: Arc<Metrics>,
}

struct OutletState {
    /// The queue; `None` once the connection was cut off or closed: later pushes are dropped.
    tx: Option<mpsc::UnboundedSender<Item>>,
    /// Notification methods the client opted out of in `initialize`.
    opt_out: HashSet<String>,
    /// Server requests delivered here, and their thread: answers are routed by it, and an
    /// answer to anything else is ignored (spec section 8). Kept with the queue so a request is
    /// known here before the client can possibly read it.
    requests: HashMap<RequestId, ThreadId>,
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet")
            .field("id", &self.id)
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    /// On the queue (or filtered out by an opt-out).
    Queued,
    /// The connection was already closed or cut off: dropped.
    Dropped,
    /// This push ended the connection (queue full, or the transport went away): its actor must
    /// stop.
    Ended,
}

impl Outlet {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutletState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, msg: Outbound) -> Pushed {
        let mut st = self.lock();
        let Some(tx) = &st.tx else {
            return Pushed::Dropped;
        };
        if let Outbound::Notification(n) = &msg {
            if !st.opt_out.is_empty() && st.opt_out.contains(n.method()) {
                return Pushed::Queued;
            }
        }
        // One slot stays free for the reason of a cut-off.
        if self.queued.load(Ordering::Acquire) + 1 >= self.capacity {
            self.metrics.dropped.inc();
            self.metrics.slow_disconnects.inc();
            let reason = format!(
                "outbound queue full ({} messages): the client is not reading; reconnect and resume",
                self.capacity
            );
            tracing::warn!(connection = %self.id, "{reason}");
            self.queued.fetch_add(1, Ordering::AcqRel);
            let _ = tx.send(Item::new(Outbound::Disconnected { reason }));
            st.tx = None;
            return Pushed::Ended;
        }
        let resolved = match &msg {
            Outbound::Notification(n) => match n.as_ref() {
                Notification::ServerRequestResolved { request_id, .. } => Some(*request_id),
                _ => None,
            },
            _ => None,
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        if tx.send(Item::new(msg)).is_err() {
            // The receiver is gone: the transport closed.
            self.queued.fetch_sub(1, Ordering::AcqRel);
            st.tx = None;
            return Pushed::Ended;
        }
        if let Some(id) = resolved {
            st.requests.remove(&id);
        }
        self.metrics.delivered.inc();
        Pushed::Queued
    }

    /// Closes the queue, with `reason` as the last message if given. Idempotent.
    fn close(&self, reason: Option<String>) {
        let mut st = self.lock();
        if let (Some(tx), Some(reason)) = (&st.tx, reason) {
            self.queued.fetch_add(1, Ordering::AcqRel);
            if tx
                .send(Item::new(Outbound::Disconnected { reason }))
                .is_err()
            {
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
        st.tx = None;
    }
}

/// A cheap handle on one connection: its queue for deliveries and its actor for bookkeeping.
/// Held by the threads it subscribed to, the broadcast list, and the in-stream replies.
#[derive(Clone, Debug)]
pub(crate) struct ConnRef {
    addr: Addr<ConnectionActor>,
    outlet: Arc<Outlet>,
}

impl ConnRef {
    /// Puts `msg` on the connection's queue now.
    pub(crate) fn deliver(&self, msg: Outbound) {
        if self.outlet.push(msg) == Pushed::Ended {
            self.addr.do_send(Disconnect(None));
        }
    }

    /// Puts a notification on the queue (unless the client opted out of its method).
    pub(crate) fn notify(&self, n: &Arc<Notification>) {
        self.deliver(Outbound::Notification(Arc::clone(n)));
    }

    /// Puts a server request from `thread` on the queue, remembering it for the answer.
    pub(crate) fn request(&self, thread: &ThreadId, request: &Arc<ServerRequest>) {
        self.outlet
            .lock()
            .requests
            .insert(request.id, thread.clone());
        self.deliver(Outbound::Request(Arc::clone(request)));
    }

    /// The connection subscribed to `thread` (it leaves it when it closes).
    pub(crate) fn subscribed(&self, thread: &ThreadId) {
        self.addr.do_send(Subscribed(thread.clone()));
    }

    /// The connection is no longer subscribed to `thread`: it forgets the thread and the
    /// thread's requests (an answer to them is ignored from now on).
    pub(crate) fn unsubscribed(&self, thread: &ThreadId) {
        self.outlet.lock().requests.retain(|_, t| t != thread);
        self.addr.do_send(Unsubscribed(thread.clone()));
    }

    /// Which thread server request `id` delivered here came from, if it is still pending here.
    pub(crate) fn thread_of_request(&self, id: RequestId) -> Option<ThreadId> {
        self.outlet.lock().requests.get(&id).cloned()
    }

    /// Sets the notification methods this client does not want.
    pub(crate) fn set_opt_out(&self, methods: HashSet<String>) {
        self.outlet.lock().opt_out = methods;
    }

    /// Closes the connection, with `reason` as its last message if given.
    pub(crate) fn close(&self, reason: Option<String>) {
        self.outlet.close(reason);
        self.addr.do_send(Disconnect(None));
    }
}

pub(crate) struct ConnectionActor {
    /// This connection's id; subscribers are keyed by it.
    id: ConnectionId,
    /// The queue senders push to; closed when the actor stops.
    outlet: Arc<Outlet>,
    /// Threads this connection is subscribed to, so it can leave them when it closes.
    threads: HashSet<ThreadId>,
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
    /// Starts a connection on the current arbiter; returns its handle and its outbox.
    pub(crate) fn start(
        id: ConnectionId,
        capacity: usize,
        shared: Arc<Shared>,
    ) -> (ConnRef, Outbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outlet = Arc::new(Outlet {
            id,
            capacity: capacity.max(2),
            queued: AtomicUsize::new(0),
            state: Mutex::new(OutletState {
                tx: Some(tx),
                opt_out: HashSet::new(),
                requests: HashMap::new(),
            }),
            metrics: Arc::clone(&shared.metrics),
        });
        let addr = Self {
            id,
            outlet: Arc::clone(&outlet),
            threads: HashSet::new(),
            shared,
        }
        .start();
        (
            ConnRef {
                addr,
                outlet: Arc::clone(&outlet),
            },
            Outbox { rx, outlet },
        )
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        self.shared.metrics.connections.inc();
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.outlet.close(None);
        self.shared.metrics.connections.dec();
        self.shared.connections.remove(&self.id);
        for thread in self.threads.drain() {
            if let Some(addr) = self.shared.directory.get(&thread) {
                addr.do_send(ConnectionClosed { conn: self.id });
            }
        }
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
    }
}

/// Stops the connection actor (transport gone, cut off, or the host shuts down). The queue is
/// closed by whoever sends this, before sending it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Disconnect(pub(crate) Option<String>);

impl Handler<Disconnect> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        self.outlet.close(msg.0);
        ctx.stop();
    }
}
