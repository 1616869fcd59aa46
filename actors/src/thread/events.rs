//! One turn's event queue: the agent's side ([`TurnSender`]) and the thread actor's side
//! ([`TurnEvents`], a stream of the actor's context).
//!
//! A `VecDeque` under a mutex, with the actor's waker. Not tokio's unbounded channel: that one
//! allocates its slots in blocks of 32, which for these items is a 2.3 KB block per turn (and
//! per 32 events), an allocation large enough that glibc consolidates its free lists on each;
//! opening the channel was 8% of the many-threads profile. Here the buffer grows only to the
//! largest backlog (the actor drains as the agent emits, so a few slots), and the lock is
//! uncontended: the agent's task and the actor run on the same arbiter.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use actix::prelude::Stream;

use super::{AgentEventKind, TurnEvent};

struct Queue {
    /// Events not yet taken by the actor.
    events: VecDeque<TurnEvent>,
    /// The actor's task, when it found the queue empty.
    waker: Option<Waker>,
    /// The actor dropped its side (the turn ended): later events are dropped at once.
    closed: bool,
    /// The id of the item the last delta went to, shared with the notifications: a stream of
    /// deltas to one item allocates its id once, not once per delta.
    last_item: Option<Arc<str>>,
}

type Shared = Arc<Mutex<Queue>>;

fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new queue for one turn; `stream` is the id the actor knows the turn's events by.
pub(crate) fn turn_queue() -> (TurnSender, TurnEvents) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let q: Shared = Arc::new(Mutex::new(Queue {
        events: VecDeque::new(),
        waker: None,
        closed: false,
        last_item: None,
    }));
    let stream = NEXT.fetch_add(1, Ordering::Relaxed);
    (TurnSender(Arc::clone(&q)), TurnEvents { queue: q, stream })
}

/// The agent's side: cloned into every `TurnContext` of the turn and into its task.
#[derive(Clone)]
pub(crate) struct TurnSender(Shared);

impl std::fmt::Debug for TurnSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSender")
    }
}

impl TurnSender {
    /// Queues `ev` for the actor; drops it if the turn already ended.
    pub(crate) fn send(&self, ev: TurnEvent) {
        let q = lock(&self.0);
        if q.closed {
            return; // `ev` drops after the lock is released (a request's answer sender, say)
        }
        Self::push(q, ev);
    }

    /// Queues a delta to `item_id`, sharing the id with the previous delta's if it is the same
    /// item (one lock for both).
    pub(crate) fn send_delta(&self, item_id: &str, delta: String) {
        let mut q = lock(&self.0);
        if q.closed {
            return;
        }
        let item_id = match &q.last_item {
            Some(known) if **known == *item_id => Arc::clone(known),
            _ => {
                let fresh: Arc<str> = Arc::from(item_id);
                q.last_item = Some(Arc::clone(&fresh));
                fresh
            }
        };
        Self::push(
            q,
            TurnEvent::Agent(AgentEventKind::Delta { item_id, delta }),
        );
    }

    fn push(mut q: MutexGuard<'_, Queue>, ev: TurnEvent) {
        q.events.push_back(ev);
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The actor's side: the turn's events, each tagged with the turn's stream id.
pub(crate) struct TurnEvents {
    queue: Shared,
    stream: u64,
}

impl TurnEvents {
    /// The id every event of this stream carries.
    pub(crate) fn id(&self) -> u64 {
        self.stream
    }
}

impl Stream for TurnEvents {
    type Item = (u64, TurnEvent);

    /// Never ends by itself: the turn's end arrives as an event, and the actor drops the stream.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut q = lock(&self.queue);
        if let Some(ev) = q.events.pop_front() {
            return Poll::Ready(Some((self.stream, ev)));
        }
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for TurnEvents {
    fn drop(&mut self) {
        let mut q = lock(&self.queue);
        q.closed = true;
        q.waker = None;
        let dropped = std::mem::take(&mut q.events);
        drop(q);
        drop(dropped); // outside the lock: dropping a request's answer sender wakes its agent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(text: &str) -> TurnEvent {
        TurnEvent::Agent(AgentEventKind::Delta {
            item_id: Arc::from("i"),
            delta: text.to_owned(),
        })
    }

    fn text(ev: Option<(u64, TurnEvent)>) -> String {
        match ev {
            Some((_, TurnEvent::Agent(AgentEventKind::Delta { delta, .. }))) => delta,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_come_out_in_order_and_a_send_wakes_the_waiting_actor() {
        let (tx, mut rx) = turn_queue();
        let waker = Arc::new(Woken::default());
        let w = Waker::from(Arc::clone(&waker));
        let mut cx = Context::from_waker(&w);
        assert!(Pin::new(&mut rx).poll_next(&mut cx).is_pending());
        let other = tx.clone();
        tx.send(delta("a"));
        other.send(delta("b"));
        assert_eq!(
            waker.0.load(Ordering::SeqCst),
            1,
            "woken once, by the first send"
        );
        let first = Pin::new(&mut rx).poll_next(&mut cx);
        let Poll::Ready(first) = first else {
            panic!("an event is queued")
        };
        assert_eq!(first.as_ref().map(|(s, _)| *s), Some(rx.id()));
        assert_eq!(text(first), "a");
        let Poll::Ready(second) = Pin::new(&mut rx).poll_next(&mut cx) else {
            panic!("an event is queued")
        };
        assert_eq!(text(second), "b");
        assert!(Pin::new(&mut rx).poll_next(&mut cx).is_pending());
    }

    #[test]
    fn after_the_actor_drops_its_side_events_are_dropped_and_requests_cancelled() {
        let (tx, rx) = turn_queue();
        let (answer, mut asked) = tokio::sync::oneshot::channel();
        tx.send(TurnEvent::Agent(AgentEventKind::Request {
            method: "m".into(),
            params: serde_json::Value::Null,
            answer,
        }));
        drop(rx);
        assert!(
            asked.try_recv().is_err(),
            "the queued request was cancelled"
        );
        let (answer, mut asked) = tokio::sync::oneshot::channel();
        tx.send(TurnEvent::Agent(AgentEventKind::Request {
            method: "m".into(),
            params: serde_json::Value::Null,
            answer,
        }));
        assert!(matches!(
            asked.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn deltas_to_one_item_share_its_id_and_a_new_item_gets_its_own() {
        let (tx, mut rx) = turn_queue();
        tx.send_delta("a", "1".into());
        tx.send_delta("a", "2".into());
        tx.send_delta("b", "3".into());
        let waker = Waker::from(Arc::new(Woken::default()));
        let mut cx = Context::from_waker(&waker);
        let mut ids = Vec::new();
        while let Poll::Ready(Some((_, ev))) = Pin::new(&mut rx).poll_next(&mut cx) {
            match ev {
                TurnEvent::Agent(AgentEventKind::Delta { item_id, .. }) => ids.push(item_id),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ids.len(), 3);
        assert!(Arc::ptr_eq(&ids[0], &ids[1]), "one allocation for item a");
        assert_eq!(&*ids[2], "b");
    }

    #[test]
    fn every_queue_has_its_own_stream_id() {
        let (_, a) = turn_queue();
        let (_, b) = turn_queue();
        assert_ne!(a.id(), b.id());
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
