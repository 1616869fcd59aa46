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
//! **State.** See the fields of [`ConnectionActor`] and [`Outlet`]. A notification is pushed
//! without taking a lock: a closed flag, an opt-out bit mask, the count of pushes and the
//! channel are all atomics. The reader counts what it took on a cache line of its own, which
//! senders read only when the queue looks full, so sender and reader do not pass the line of
//! the bound back and forth on every message.
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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::host::Shared;
use crate::ids::{ConnectionId, RequestId, ThreadId};
use crate::metrics::Metrics;
use crate::outbound::{Notification, Outbound, ServerRequest, METHODS};
use crate::thread::ConnectionClosed;

/// What the queue carries: notifications (nearly everything) as they are, the rest boxed.
///
/// `Outbound` is 64 bytes because of its response variant; the channel allocates its slots in
/// blocks of 32, and 32 x 64 bytes is past the size at which glibc's malloc consolidates its
/// free lists on every allocation. 16-byte items keep a block at 512 bytes.
#[derive(Debug)]
enum Item {
    Notification(Arc<Notification>),
    Other(Box<Outbound>),
    /// The queue was closed without a reason: the end of the stream.
    Closed,
}

impl Item {
    fn new(msg: Outbound) -> Self {
        match msg {
            Outbound::Notification(n) => Self::Notification(n),
            other => Self::Other(Box::new(other)),
        }
    }
}

/// The receiving end of a connection's outbound queue. The transport owns it.
#[derive(Debug)]
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Item>,
    /// Shared with the senders: messages taken out free slots of the bound.
    outlet: Arc<Outlet>,
    /// Messages taken out so far; published in `outlet.taken` after each.
    taken: usize,
    /// The end was seen (a close or a `Disconnected`): nothing more is returned.
    done: bool,
}

impl Outbox {
    /// The next message; `None` once the connection is closed and the queue drained.
    pub async fn recv(&mut self) -> Option<Outbound> {
        if self.done {
            return None;
        }
        let item = self.rx.recv().await?;
        self.took(item)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        if self.done {
            return None;
        }
        let item = self.rx.try_recv().ok()?;
        self.took(item)
    }

    fn took(&mut self, item: Item) -> Option<Outbound> {
        self.taken += 1;
        self.outlet.taken.0.store(self.taken, Ordering::Release);
        match item {
            Item::Notification(n) => Some(Outbound::Notification(n)),
            Item::Other(o) => {
                // A cut-off's reason is the last message, whatever raced in behind it.
                self.done = matches!(*o, Outbound::Disconnected { .. });
                Some(*o)
            }
            Item::Closed => {
                self.done = true;
                None
            }
        }
    }
}

/// The reader's count of messages taken out, alone on its cache line: the reader writes it on
/// every message, senders read it only when the queue looks full.
#[derive(Debug, Default)]
#[repr(align(128))]
struct ReaderCount(AtomicUsize);

/// The sending side of one connection's queue, shared by everyone who delivers to it.
///
/// The queue itself is an unbounded channel; the bound is kept here, by counting what is queued,
/// so that the reason for a cut-off always fits behind the last message. A notification is
/// pushed without a lock: two atomic loads (closed? opted out?), the count, the channel.
///
/// What is queued is `pushed - taken`. Senders compare against the last `taken` any of them
/// read (`taken_seen`, never more than the truth, so the estimate is never less than what is
/// queued) and read the reader's count again only when that estimate reaches the bound.
pub(crate) struct Outlet {
    /// For log lines.
    id: ConnectionId,
    /// Messages the queue holds before the client counts as not reading
    /// (`HostConfig::outbound_capacity`); one of them is kept for the disconnect reason.
    capacity: usize,
    /// Messages pushed so far, by every sender.
    pushed: AtomicUsize,
    /// The latest value of `taken` a sender read.
    taken_seen: AtomicUsize,
    /// Messages the [`Outbox`] took out so far (written by it alone).
    taken: ReaderCount,
    /// The queue was closed or the connection cut off: later pushes are dropped. Whoever sets
    /// it puts the last message on the queue.
    closed: AtomicBool,
    /// Bit `i` set: the client opted out of notification method `METHODS[i]`.
    opt_out: AtomicU32,
    /// The queue.
    tx: mpsc::UnboundedSender<Item>,
    /// Server requests delivered here, and their thread: answers are routed by it, and an
    /// answer to anything else is ignored (spec section 8). Recorded before the request is
    /// queued, so it is known here before the client can possibly read it.
    requests: Mutex<HashMap<RequestId, ThreadId>>,
    /// Counters (delivered, dropped, slow disconnects).
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet")
            .field("id", &self.id)
            .field("queued", &self.queued())
            .field("closed", &self.closed.load(Ordering::Relaxed))
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
    /// A new queue: its shared sending side and its receiving end.
    fn open(id: ConnectionId, capacity: usize, metrics: Arc<Metrics>) -> (Arc<Self>, Outbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = capacity.max(2);
        let outlet = Arc::new(Self {
            id,
            capacity,
            pushed: AtomicUsize::new(0),
            taken_seen: AtomicUsize::new(0),
            taken: ReaderCount::default(),
            closed: AtomicBool::new(false),
            opt_out: AtomicU32::new(0),
            tx,
            requests: Mutex::new(HashMap::new()),
            metrics,
        });
        let outbox = Outbox {
            rx,
            outlet: Arc::clone(&outlet),
            taken: 0,
            done: false,
        };
        (outlet, outbox)
    }

    /// Sets the notification methods this client does not want.
    fn set_opt_out(&self, methods: &HashSet<String>) {
        let mask = METHODS
            .iter()
            .enumerate()
            .filter(|(_, m)| methods.contains(**m))
            .fold(0u32, |mask, (i, _)| mask | 1 << i);
        self.opt_out.store(mask, Ordering::Relaxed);
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, ThreadId>> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, msg: Outbound) -> Pushed {
        if self.closed.load(Ordering::Acquire) {
            return Pushed::Dropped;
        }
        let mut resolved = None;
        if let Outbound::Notification(n) = &msg {
            if let Notification::ServerRequestResolved { request_id, .. } = n.as_ref() {
                resolved = Some(*request_id);
            }
            let bit = 1u32 << n.method_index();
            if self.opt_out.load(Ordering::Relaxed) & bit != 0 {
                // The request is over whether or not the client hears of it.
                if let Some(id) = resolved {
                    self.requests().remove(&id);
                }
                return Pushed::Queued;
            }
        }
        // One slot stays free for the reason of a cut-off.
        let before = self.pushed.fetch_add(1, Ordering::AcqRel);
        let seen = self.taken_seen.load(Ordering::Acquire);
        if before.saturating_sub(seen) + 2 > self.capacity && !self.room_after(before) {
            if self.closed.swap(true, Ordering::AcqRel) {
                return Pushed::Dropped; // someone else cut it off first
            }
            self.metrics.dropped.inc();
            self.metrics.slow_disconnects.inc();
            let reason = format!(
                "outbound queue full ({} messages): the client is not reading; reconnect and resume",
                self.capacity
            );
            tracing::warn!(connection = %self.id, "{reason}");
            let _ = self.tx.send(Item::new(Outbound::Disconnected { reason }));
            return Pushed::Ended;
        }
        if self.tx.send(Item::new(msg)).is_err() {
            // The receiver is gone: the transport closed.
            self.closed.store(true, Ordering::Release);
            return Pushed::Ended;
        }
        if let Some(id) = resolved {
            self.requests().remove(&id);
        }
        self.metrics.delivered.inc();
        Pushed::Queued
    }

    /// Whether the queue has room for the push that found `before` pushes ahead of it, by the
    /// reader's own count (read now, and shared with the other senders).
    fn room_after(&self, before: usize) -> bool {
        let taken = self.taken.0.load(Ordering::Acquire);
        self.taken_seen.fetch_max(taken, Ordering::AcqRel);
        before.saturating_sub(taken) + 2 <= self.capacity
    }

    /// Messages queued and not yet taken out (exact when nobody is pushing or taking).
    fn queued(&self) -> usize {
        self.pushed
            .load(Ordering::Acquire)
            .saturating_sub(self.taken.0.load(Ordering::Acquire))
    }

    /// Closes the queue, with `reason` as the last message if given. Idempotent.
    fn close(&self, reason: Option<String>) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let last = match reason {
            Some(reason) => Item::new(Outbound::Disconnected { reason }),
            None => Item::Closed,
        };
        let _ = self.tx.send(last);
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
        self.outlet.requests().insert(request.id, thread.clone());
        self.deliver(Outbound::Request(Arc::clone(request)));
    }

    /// The connection subscribed to `thread` (it leaves it when it closes).
    pub(crate) fn subscribed(&self, thread: &ThreadId) {
        self.addr.do_send(Subscribed(thread.clone()));
    }

    /// The connection is no longer subscribed to `thread`: it forgets the thread and the
    /// thread's requests (an answer to them is ignored from now on).
    pub(crate) fn unsubscribed(&self, thread: &ThreadId) {
        self.outlet.requests().retain(|_, t| t != thread);
        self.addr.do_send(Unsubscribed(thread.clone()));
    }

    /// Which thread server request `id` delivered here came from, if it is still pending here.
    pub(crate) fn thread_of_request(&self, id: RequestId) -> Option<ThreadId> {
        self.outlet.requests().get(&id).cloned()
    }

    /// Sets the notification methods this client does not want.
    pub(crate) fn set_opt_out(&self, methods: &HashSet<String>) {
        self.outlet.set_opt_out(methods);
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
        let (outlet, outbox) = Outlet::open(id, capacity, Arc::clone(&shared.metrics));
        let addr = Self {
            id,
            outlet: Arc::clone(&outlet),
            threads: HashSet::new(),
            shared,
        }
        .start();
        (ConnRef { addr, outlet }, outbox)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ThreadId;

    /// An outlet and its outbox, without an actor.
    fn queue(capacity: usize) -> (Arc<Outlet>, Outbox) {
        Outlet::open(ConnectionId(1), capacity, Arc::new(Metrics::default()))
    }

    fn closed_note() -> Outbound {
        Outbound::Notification(Arc::new(Notification::ThreadClosed {
            thread_id: ThreadId::from("t"),
        }))
    }

    #[test]
    fn a_reader_that_keeps_up_is_never_cut_off_and_the_count_returns_to_zero() {
        let (outlet, mut outbox) = queue(64);
        for _ in 0..100 {
            for _ in 0..60 {
                assert_eq!(outlet.push(closed_note()), Pushed::Queued);
            }
            for _ in 0..60 {
                assert!(outbox.try_recv().is_some());
            }
            assert!(outbox.try_recv().is_none());
            assert_eq!(outlet.queued(), 0);
        }
    }

    #[test]
    fn the_bound_is_exact_whatever_the_senders_saw_of_the_reader() {
        let (outlet, mut outbox) = queue(64);
        for _ in 0..63 {
            assert_eq!(outlet.push(closed_note()), Pushed::Queued);
        }
        assert_eq!(outlet.queued(), 63);
        for _ in 0..63 {
            assert!(outbox.try_recv().is_some());
        }
        // The senders last saw the reader at 0 taken: they look again and find all the room.
        for _ in 0..63 {
            assert_eq!(outlet.push(closed_note()), Pushed::Queued);
        }
        assert_eq!(
            outlet.push(closed_note()),
            Pushed::Ended,
            "63 queued and the reason make 64"
        );
        let got = std::iter::from_fn(|| outbox.try_recv()).count();
        assert_eq!(got, 64);
    }

    #[test]
    fn a_full_queue_ends_with_the_reason_and_nothing_after_it() {
        let (outlet, mut outbox) = queue(4);
        let pushed: Vec<Pushed> = (0..5).map(|_| outlet.push(closed_note())).collect();
        assert_eq!(
            pushed,
            [
                Pushed::Queued,
                Pushed::Queued,
                Pushed::Queued,
                Pushed::Ended,
                Pushed::Dropped
            ]
        );
        // A push that checked `closed` just before the cut-off lands behind the reason.
        let _ = outlet.tx.send(Item::new(closed_note()));
        let mut got = Vec::new();
        while let Some(m) = outbox.try_recv() {
            got.push(m);
        }
        assert_eq!(got.len(), 4);
        assert!(
            matches!(&got[3], Outbound::Disconnected { reason } if reason.contains("not reading"))
        );
        assert!(outbox.try_recv().is_none());
    }

    #[test]
    fn a_close_without_reason_ends_the_stream_after_what_was_queued() {
        let (outlet, mut outbox) = queue(8);
        outlet.push(closed_note());
        outlet.close(None);
        outlet.close(Some("twice".into()));
        assert_eq!(outlet.push(closed_note()), Pushed::Dropped);
        assert!(outbox.try_recv().is_some());
        assert!(outbox.try_recv().is_none());
        assert!(outbox.try_recv().is_none());
    }

    #[test]
    fn opted_out_methods_are_filtered_and_others_pass() {
        let (outlet, mut outbox) = queue(8);
        outlet.set_opt_out(&HashSet::from([
            "thread/closed".to_owned(),
            "no/such".to_owned(),
        ]));
        assert_eq!(outlet.push(closed_note()), Pushed::Queued);
        assert!(outbox.try_recv().is_none(), "thread/closed was opted out");
        let cleared = Outbound::Notification(Arc::new(Notification::GoalCleared {
            thread_id: ThreadId::from("t"),
        }));
        outlet.push(cleared);
        assert!(outbox.try_recv().is_some());
    }

    #[test]
    fn a_resolved_request_is_forgotten_also_by_a_client_that_opted_out_of_resolved() {
        let (outlet, mut outbox) = queue(8);
        outlet.set_opt_out(&HashSet::from(["serverRequest/resolved".to_owned()]));
        outlet.requests().insert(RequestId(7), ThreadId::from("t"));
        outlet.push(Outbound::Notification(Arc::new(
            Notification::ServerRequestResolved {
                thread_id: ThreadId::from("t"),
                request_id: RequestId(7),
            },
        )));
        assert!(outbox.try_recv().is_none(), "opted out");
        assert!(outlet.requests().is_empty(), "no stale record left behind");
    }

    #[test]
    fn every_method_has_its_own_bit() {
        assert!(METHODS.len() <= 32);
        let unique: HashSet<&str> = METHODS.iter().copied().collect();
        assert_eq!(unique.len(), METHODS.len());
    }
}
