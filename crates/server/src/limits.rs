//! Per-connection read rate limiting and the failed-login back-off.

use dashmap::DashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Token bucket over bytes read. The connection sleeps for the returned
/// duration before its next read, which pushes back on the sender through
/// TCP flow control instead of buffering.
#[derive(Debug)]
pub struct ReadRate {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl ReadRate {
    pub fn new(bytes_per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(bytes_per_second));
        ReadRate {
            rate: f64::from(bytes_per_second),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Accounts for `n` bytes read at `now`; returns how long to pause.
    pub fn consume(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Counts recent failed logins per account and per address; the delay
/// before answering a failure doubles with each one, up to a cap, and the
/// count is forgotten after a quiet period or a success.
#[derive(Debug)]
pub struct AuthFailures {
    by_account: DashMap<String, (u32, Instant)>,
    by_address: DashMap<IpAddr, (u32, Instant)>,
    base: Duration,
    max: Duration,
}

/// Failures older than this no longer count.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

impl AuthFailures {
    pub fn new(base: Duration, max: Duration) -> Self {
        AuthFailures {
            by_account: DashMap::new(),
            by_address: DashMap::new(),
            base,
            max,
        }
    }

    /// Records a failure and returns the delay to apply before answering.
    pub fn failed(&self, account: Option<&str>, addr: IpAddr, now: Instant) -> Duration {
        let bump = |entry: &mut (u32, Instant)| {
            if now.saturating_duration_since(entry.1) > FORGET_AFTER {
                entry.0 = 0;
            }
            entry.0 = entry.0.saturating_add(1);
            entry.1 = now;
            entry.0
        };
        let mut n = bump(&mut self.by_address.entry(addr).or_insert((0, now)));
        if let Some(a) = account {
            n = n.max(bump(
                &mut self.by_account.entry(a.to_owned()).or_insert((0, now)),
            ));
        }
        self.delay_for(n)
    }

    fn delay_for(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A successful login clears the account's record (not the address's:
    /// one good password must not reset a guesser on the same host).
    pub fn succeeded(&self, account: &str) {
        self.by_account.remove(account);
    }

    /// Drops stale entries; called periodically so the maps stay small.
    pub fn sweep(&self, now: Instant) {
        self.by_account
            .retain(|_, v| now.saturating_duration_since(v.1) <= FORGET_AFTER);
        self.by_address
            .retain(|_, v| now.saturating_duration_since(v.1) <= FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_paces() {
        let t0 = Instant::now();
        let mut r = ReadRate::new(1000, 2000);
        assert_eq!(r.consume(2000, t0), Duration::ZERO);
        let pause = r.consume(500, t0);
        assert!((pause.as_secs_f64() - 0.5).abs() < 1e-6, "{pause:?}");
        // After a second the bucket has refilled 1000 bytes.
        assert_eq!(r.consume(400, t0 + Duration::from_secs(2)), Duration::ZERO);
    }

    #[test]
    fn failures_double_per_account_and_address() {
        let f = AuthFailures::new(Duration::from_millis(100), Duration::from_millis(1000));
        let now = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        assert_eq!(f.failed(Some("alice"), a, now), Duration::from_millis(100));
        assert_eq!(f.failed(Some("alice"), a, now), Duration::from_millis(200));
        // Another address guessing the same account is slowed as well.
        assert_eq!(f.failed(Some("alice"), b, now), Duration::from_millis(400));
        for _ in 0..10 {
            f.failed(None, a, now);
        }
        assert_eq!(f.failed(None, a, now), Duration::from_millis(1000));
        f.succeeded("alice");
        assert_eq!(f.failed(Some("alice"), b, now), Duration::from_millis(200));
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(
            f.failed(Some("alice"), b, later),
            Duration::from_millis(100)
        );
    }
}
