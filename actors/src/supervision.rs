//! Panic containment and restart intensity (spec section 7).
//!
//! actix's `Supervisor` restarts an actor only when it stops; a panic in a handler kills the
//! actor's task and closes its mailbox (see `shared/notes/actix-facts.md`). threadhost therefore
//! contains panics where they happen: every thread-actor handler body runs under
//! [`std::panic::catch_unwind`], and agent futures run as tasks of their own wrapped in
//! [`CatchUnwind`]. A contained panic restarts the thread in place (same id, same subscribers,
//! fresh agent, new generation). [`RestartWindow`] bounds how often that may happen.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// A future that turns a panic while polling into `Err(message)`.
#[derive(Debug)]
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = Pin::new(&mut self.0);
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic_message(panic.as_ref()))),
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// OTP-style restart intensity: at most `max` restarts within `period`.
#[derive(Debug, Clone)]
pub(crate) struct RestartWindow {
    /// Instants of the restarts still inside the period, oldest first.
    recent: VecDeque<Instant>,
}

impl RestartWindow {
    pub(crate) fn new() -> Self {
        Self {
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; `false` when that exceeds `max` within `period`.
    pub(crate) fn allow(&mut self, now: Instant, max: u32, period: Duration) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= period)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() <= max as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fourth_restart_within_the_period_exceeds_the_default_bound() {
        let t0 = Instant::now();
        let mut w = RestartWindow::new();
        let p = Duration::from_secs(60);
        assert!(w.allow(t0, 3, p));
        assert!(w.allow(t0 + Duration::from_secs(1), 3, p));
        assert!(w.allow(t0 + Duration::from_secs(2), 3, p));
        assert!(!w.allow(t0 + Duration::from_secs(3), 3, p));
    }

    #[test]
    fn restarts_older_than_the_period_do_not_count() {
        let t0 = Instant::now();
        let mut w = RestartWindow::new();
        let p = Duration::from_secs(60);
        for i in 0..3 {
            assert!(w.allow(t0 + Duration::from_secs(i), 3, p));
        }
        assert!(w.allow(t0 + Duration::from_secs(61), 3, p));
    }

    #[test]
    fn a_panicking_future_yields_its_message() {
        let fut = CatchUnwind(Box::pin(async {
            if true {
                panic!("boom");
            }
        }));
        let out = futures_lite_block_on(fut);
        assert_eq!(out, Err("boom".to_owned()));
    }

    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}
