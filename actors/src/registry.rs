//! `ThreadRegistry`: one per host.
//!
//! **Role.** Serializes the decisions that must never interleave: "claim the unload of thread
//! T" against "reserve T for an attach/resume", and the single-flight load of a thread from the
//! store. The directory of loaded threads itself is a `DashMap` in [`Shared`] that every arbiter
//! reads without a message; only the registry inserts or removes entries (plus a thread actor
//! that registers itself at creation).
//!
//! **State.** See the fields. Invariant: a thread id is in at most one of `teardowns` and
//! `loading`; a claim is granted only when the thread has no open reservation and no teardown.
//!
//! **Messages.** [`ClaimUnload`] (reply: granted or not), [`EndTeardown`], [`Reserve`] (reply:
//! the thread's address, "load it yourself", or a receiver to wait on), [`Release`],
//! [`Register`], [`LoadFailed`], [`ThreadGone`]. Every handler is synchronous: nothing
//! interleaves inside one.
//!
//! **Guarantees.** An admitted attach (a granted reservation) is never lost to an unload (the
//! race Codex PR 31392 fixed). A second unload of the same thread joins the first. Waiters are
//! always woken: when a teardown or load ends, or when the registry stops (their receivers then
//! fail, which callers treat as "retry").

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::connection::Deliver;
use crate::error::HostError;
use crate::host::Shared;
use crate::ids::ThreadId;
use crate::model::ThreadStatus;
use crate::outbound::Notification;
use crate::thread::ThreadActor;

pub(crate) struct ThreadRegistry {
    /// Host-wide state (directory, connections, metrics).
    shared: Arc<Shared>,
    /// Threads whose teardown is in flight, with the callers waiting for it to end.
    teardowns: HashMap<ThreadId, Vec<oneshot::Sender<()>>>,
    /// Open attach/resume reservations per thread: admitted, not yet subscribed.
    reservations: HashMap<ThreadId, usize>,
    /// Threads being loaded from the store, with the callers waiting for the load.
    loading: HashMap<ThreadId, Vec<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for ThreadRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadRegistry")
            .field("teardowns", &self.teardowns.len())
            .field("reservations", &self.reservations.len())
            .field("loading", &self.loading.len())
            .finish()
    }
}

impl ThreadRegistry {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            teardowns: HashMap::new(),
            reservations: HashMap::new(),
            loading: HashMap::new(),
        }
    }

    fn wake(waiters: Option<Vec<oneshot::Sender<()>>>) {
        for w in waiters.into_iter().flatten() {
            let _ = w.send(());
        }
    }

    /// Removes a thread from the directory and tells every connection, in order.
    fn close(&mut self, id: &ThreadId) {
        self.shared.directory.remove(id);
        self.shared
            .broadcast(&Arc::new(Notification::ThreadStatusChanged {
                thread_id: id.clone(),
                status: ThreadStatus::NotLoaded,
            }));
        self.shared.broadcast(&Arc::new(Notification::ThreadClosed {
            thread_id: id.clone(),
        }));
    }
}

impl Actor for ThreadRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Many threads may claim unloads at once (an unload sweep); do not make them wait on a
        // small mailbox.
        ctx.set_mailbox_capacity(usize::MAX >> 1);
    }
}

/// A thread asks to unload. Granted only if no teardown is in flight and no reservation is open
/// (unless `force`: a thread past its restart bound must go).
#[derive(Message, Debug)]
#[rtype(result = "Claim")]
pub(crate) struct ClaimUnload {
    pub(crate) id: ThreadId,
    pub(crate) force: bool,
}

/// The registry's answer to [`ClaimUnload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub(crate) enum Claim {
    Granted,
    /// An attach or resume is admitted and about to subscribe.
    Reserved,
    /// A teardown is already in flight: this request joined it.
    Joined,
}

impl Handler<ClaimUnload> for ThreadRegistry {
    type Result = Claim;

    fn handle(&mut self, msg: ClaimUnload, _ctx: &mut Context<Self>) -> Claim {
        if self.teardowns.contains_key(&msg.id) {
            return Claim::Joined;
        }
        if !msg.force && self.reservations.get(&msg.id).is_some_and(|n| *n > 0) {
            return Claim::Reserved;
        }
        self.teardowns.insert(msg.id, Vec::new());
        self.shared.metrics.teardowns_in_flight.inc();
        Claim::Granted
    }
}

/// How a teardown ended (spec section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadOutcome {
    /// The agent shut down; the thread is closed.
    Complete,
    /// The shutdown could not be submitted; the thread stays loaded.
    SubmitFailed,
    /// The shutdown did not finish in time; the thread stays loaded.
    TimedOut,
}

/// A teardown ended. On `Complete` the registry removes the thread, broadcasts `notLoaded` then
/// `thread/closed`, and only then wakes the waiters.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct EndTeardown {
    pub(crate) id: ThreadId,
    pub(crate) outcome: UnloadOutcome,
    /// Explicit `thread/close` callers and what to tell them, answered after the broadcasts.
    pub(crate) waiters: Vec<CloseWaiter>,
}

impl Handler<EndTeardown> for ThreadRegistry {
    type Result = ();

    fn handle(&mut self, msg: EndTeardown, _ctx: &mut Context<Self>) {
        if msg.outcome == UnloadOutcome::Complete {
            self.close(&msg.id);
        }
        self.shared.metrics.unloads(msg.outcome).inc();
        if let Some(waiters) = self.teardowns.remove(&msg.id) {
            self.shared.metrics.teardowns_in_flight.dec();
            Self::wake(Some(waiters));
        }
        for (w, result) in msg.waiters {
            let _ = w.send(result);
        }
    }
}

/// An explicit `thread/close` caller and the answer it gets when the teardown ends.
pub(crate) type CloseWaiter = (
    oneshot::Sender<Result<(), HostError>>,
    Result<(), HostError>,
);

/// Asks to attach to (or resume) a thread.
#[derive(Message, Debug)]
#[rtype(result = "Reservation")]
pub(crate) struct Reserve(pub(crate) ThreadId);

/// The registry's answer to [`Reserve`].
#[derive(Debug, MessageResponse)]
pub(crate) enum Reservation {
    /// Loaded: the caller holds a reservation and must [`Release`] it after subscribing.
    Loaded(Addr<ThreadActor>),
    /// Not loaded: the caller must load it and then [`Register`] it (or report
    /// [`LoadFailed`]); the caller holds a reservation on it.
    MustLoad,
    /// A teardown or a load is in flight: wait on the receiver, then ask again.
    Wait(oneshot::Receiver<()>),
}

impl Handler<Reserve> for ThreadRegistry {
    type Result = Reservation;

    fn handle(&mut self, Reserve(id): Reserve, _ctx: &mut Context<Self>) -> Reservation {
        if let Some(waiters) = self.teardowns.get_mut(&id).or(self.loading.get_mut(&id)) {
            let (tx, rx) = oneshot::channel();
            waiters.push(tx);
            return Reservation::Wait(rx);
        }
        let addr = self.shared.directory.get(&id).map(|a| a.clone());
        *self.reservations.entry(id.clone()).or_default() += 1;
        match addr {
            Some(addr) if addr.connected() => Reservation::Loaded(addr),
            _ => {
                self.shared.directory.remove(&id);
                self.loading.insert(id, Vec::new());
                Reservation::MustLoad
            }
        }
    }
}

/// Ends a reservation (the caller subscribed, or gave up).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Release(pub(crate) ThreadId);

impl Handler<Release> for ThreadRegistry {
    type Result = ();

    fn handle(&mut self, Release(id): Release, _ctx: &mut Context<Self>) {
        if let Some(n) = self.reservations.get_mut(&id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.reservations.remove(&id);
            }
        }
    }
}

/// A thread actor is running for `id` (a new thread, or a load that [`Reservation::MustLoad`]
/// asked for).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Register {
    pub(crate) id: ThreadId,
    pub(crate) addr: Addr<ThreadActor>,
}

impl Handler<Register> for ThreadRegistry {
    type Result = ();

    fn handle(&mut self, msg: Register, _ctx: &mut Context<Self>) {
        self.shared.directory.insert(msg.id.clone(), msg.addr);
        Self::wake(self.loading.remove(&msg.id));
    }
}

/// A load that [`Reservation::MustLoad`] asked for failed; waiters retry.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct LoadFailed(pub(crate) ThreadId);

impl Handler<LoadFailed> for ThreadRegistry {
    type Result = ();

    fn handle(&mut self, LoadFailed(id): LoadFailed, ctx: &mut Context<Self>) {
        Self::wake(self.loading.remove(&id));
        self.handle(Release(id), ctx);
    }
}

/// A thread actor died without a teardown (a panic outside every guard). The registry closes
/// the thread so nobody waits on a dead address; it stays resumable from the store.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ThreadGone(pub(crate) ThreadId);

impl Handler<ThreadGone> for ThreadRegistry {
    type Result = ();

    fn handle(&mut self, ThreadGone(id): ThreadGone, _ctx: &mut Context<Self>) {
        let dead = self
            .shared
            .directory
            .get(&id)
            .is_some_and(|a| !a.connected());
        if dead {
            self.close(&id);
        }
        if let Some(waiters) = self.teardowns.remove(&id) {
            self.shared.metrics.teardowns_in_flight.dec();
            Self::wake(Some(waiters));
        }
    }
}

/// Sends a notification to every initialized connection.
pub(crate) fn broadcast_to(shared: &Shared, n: &Arc<Notification>) {
    for conn in shared.connections.iter() {
        conn.value().do_send(Deliver::notification(Arc::clone(n)));
    }
}
