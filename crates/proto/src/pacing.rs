//! Group-commit pacing, shared by the node's queue writer and the
//! processor's link: when a batch should wait for more before it commits.
//!
//! A commit (an fsync, hand-offs to the database thread) costs much the
//! same for 2 items as for 20, so under load a batch waits a short delay
//! after its first item; an idle stream of commits never waits.

use std::time::{Duration, Instant};

/// Commits less than this many delays apart count as busy.
pub const BUSY_WITHIN: u32 = 5;

#[derive(Debug, Clone)]
pub struct CommitPacer {
    delay: Duration,
    /// When the last batch was committed (or handed over): how busy we are.
    last: Option<Instant>,
}

impl CommitPacer {
    /// `delay` zero: batches never wait.
    pub fn new(delay: Duration) -> CommitPacer {
        CommitPacer { delay, last: None }
    }

    /// Until when a batch whose first item came at `now` waits for more:
    /// `None` unless the last commit was less than `BUSY_WITHIN` delays ago.
    pub fn gather_until(&self, now: Instant) -> Option<Instant> {
        let busy = self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.delay * BUSY_WITHIN);
        (busy && !self.delay.is_zero()).then(|| now + self.delay)
    }

    /// A batch went to commit at `now`.
    pub fn committed(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_right_after_a_commit() {
        let delay = Duration::from_millis(2);
        let t0 = Instant::now();
        let mut p = CommitPacer::new(delay);
        assert_eq!(p.gather_until(t0), None, "nothing committed yet");
        p.committed(t0);
        let t1 = t0 + delay;
        assert_eq!(p.gather_until(t1), Some(t1 + delay));
        assert_eq!(p.gather_until(t0 + delay * BUSY_WITHIN), None, "idle again");
    }

    #[test]
    fn a_zero_delay_never_waits() {
        let t0 = Instant::now();
        let mut p = CommitPacer::new(Duration::ZERO);
        p.committed(t0);
        assert_eq!(p.gather_until(t0), None);
    }
}
