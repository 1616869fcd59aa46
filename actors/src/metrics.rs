//! Counters and gauges of one host, read by `/metrics` and by the leak checks in tests.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::registry::UnloadOutcome;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct CounterMetric(AtomicU64);

impl CounterMetric {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, n: usize) {
        self.0
            .fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Increments a gauge now and decrements it when dropped: counts live timers and tasks
/// exactly, whether they fire, finish, are cancelled or die with their actor.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Hands out [`GaugeGuard`]s.
pub(crate) trait GuardExt {
    fn guard(&self) -> GaugeGuard;
}

impl GuardExt for Arc<Gauge> {
    fn guard(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(Self::clone(self))
    }
}

/// Everything a host counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Live thread actors (loaded threads).
    pub threads: Gauge,
    /// Live connection actors.
    pub connections: Gauge,
    /// Armed idle timers.
    pub timers: Arc<Gauge>,
    /// Running agent turn tasks.
    pub agent_tasks: Arc<Gauge>,
    /// Pending server requests.
    pub pending_requests: Gauge,
    /// Teardowns in flight.
    pub teardowns_in_flight: Gauge,
    /// Unloads that completed.
    pub unloads_complete: CounterMetric,
    /// Unloads whose shutdown could not be submitted.
    pub unloads_submit_failed: CounterMetric,
    /// Unloads whose shutdown timed out.
    pub unloads_timed_out: CounterMetric,
    /// Thread restarts after panics.
    pub restarts: CounterMetric,
    /// Messages put on connection queues.
    pub delivered: CounterMetric,
    /// Messages dropped because a connection's queue was full.
    pub dropped: CounterMetric,
    /// Connections cut off for not reading.
    pub slow_disconnects: CounterMetric,
    /// Answers to server requests that were ignored (late, duplicate or foreign).
    pub ignored_answers: CounterMetric,
    /// Store writes that failed.
    pub store_errors: CounterMetric,
}

impl Metrics {
    pub(crate) fn unloads(&self, outcome: UnloadOutcome) -> &CounterMetric {
        match outcome {
            UnloadOutcome::Complete => &self.unloads_complete,
            UnloadOutcome::SubmitFailed => &self.unloads_submit_failed,
            UnloadOutcome::TimedOut => &self.unloads_timed_out,
        }
    }
}
