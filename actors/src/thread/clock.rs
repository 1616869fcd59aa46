//! The idle clock of a thread (spec section 5), as plain data so it can be tested without
//! actors. Two instants, each changed only when its boolean flips.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleClock {
    /// Since when the thread has had no subscribers; `None` while it has some.
    no_subscribers_since: Option<Instant>,
    /// Since when the thread has been inactive; `None` while a turn runs or a request waits.
    inactive_since: Option<Instant>,
}

impl IdleClock {
    /// A clock for a thread that starts with the given facts at `now`.
    pub(crate) fn new(subscribed: bool, active: bool, now: Instant) -> Self {
        Self {
            no_subscribers_since: (!subscribed).then_some(now),
            inactive_since: (!active).then_some(now),
        }
    }

    /// Records whether the thread has subscribers; the instant moves only on a flip.
    pub(crate) fn set_subscribed(&mut self, subscribed: bool, now: Instant) {
        match (subscribed, self.no_subscribers_since) {
            (true, Some(_)) => self.no_subscribers_since = None,
            (false, None) => self.no_subscribers_since = Some(now),
            _ => {}
        }
    }

    /// Records whether the thread is active; the instant moves only on a flip.
    pub(crate) fn set_active(&mut self, active: bool, now: Instant) {
        match (active, self.inactive_since) {
            (true, Some(_)) => self.inactive_since = None,
            (false, None) => self.inactive_since = Some(now),
            _ => {}
        }
    }

    /// Starts a full new delay from `now` if the thread is inactive (new agent activity seen when
    /// the target passed, or a failed teardown to retry later).
    pub(crate) fn restart(&mut self, now: Instant) {
        if self.inactive_since.is_some() {
            self.inactive_since = Some(now);
        }
    }

    /// When the thread may unload: `max(no_subscribers_since, inactive_since) + delay`, or
    /// `None` while it is subscribed or active.
    pub(crate) fn target(&self, delay: Duration) -> Option<Instant> {
        Some(self.no_subscribers_since?.max(self.inactive_since?) + delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(60);

    #[test]
    fn target_is_the_later_of_the_two_instants_plus_the_delay() {
        let t0 = Instant::now();
        let mut c = IdleClock::new(true, false, t0);
        assert_eq!(c.target(D), None, "a subscribed thread has no target");
        c.set_subscribed(false, t0 + Duration::from_secs(5));
        assert_eq!(c.target(D), Some(t0 + Duration::from_secs(5) + D));
    }

    #[test]
    fn an_instant_moves_only_when_its_boolean_flips() {
        let t0 = Instant::now();
        let mut c = IdleClock::new(false, false, t0);
        c.set_subscribed(false, t0 + Duration::from_secs(9));
        c.set_active(false, t0 + Duration::from_secs(9));
        assert_eq!(c.target(D), Some(t0 + D));
    }

    #[test]
    fn activity_cancels_the_target_and_its_end_starts_a_full_delay() {
        let t0 = Instant::now();
        let mut c = IdleClock::new(false, false, t0);
        c.set_active(true, t0 + Duration::from_secs(1));
        assert_eq!(c.target(D), None);
        c.set_active(false, t0 + Duration::from_secs(100));
        assert_eq!(c.target(D), Some(t0 + Duration::from_secs(100) + D));
    }
}
