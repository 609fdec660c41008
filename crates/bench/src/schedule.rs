//! The open-loop schedule: when each stanza (or login) is due, fixed in
//! advance and independent of how fast the server answers.
//!
//! Events are numbered globally: event `n` is due `n / rate` seconds after
//! the common start, plus a dither of less than a millisecond (see
//! [`Schedule::at_ns`]). With `clients` clients, client `k` owns the events
//! `n = j * clients + k` (its `j`-th), so the total rate is spread evenly
//! over the clients. Events due before `warmup` are sent but not measured;
//! the schedule ends at `warmup + duration` (events due at or after the end
//! are not sent).

use std::time::Duration;

/// Why a schedule cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("--clients must be at least 1")]
    NoClients,
    #[error("--rate must be a positive number, not {0}")]
    BadRate(f64),
    #[error("--duration and --warmup must be finite and not negative")]
    BadWindow,
}

/// The whole run's schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    clients: u64,
    rate: f64,
    /// First measured event.
    first_measured: u64,
    /// One past the last event.
    end: u64,
    warmup: Duration,
    duration: Duration,
}

/// One scheduled event of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Global event number.
    pub n: u64,
    /// The client's own sequence number (`j`).
    pub seq: u64,
    /// Due time, in nanoseconds since the common start.
    pub at_ns: u64,
    /// Outside the warm-up: its latency is recorded.
    pub measured: bool,
}

/// The span of the dither added to due times: tokio's timer tick.
const DITHER_NS: u64 = 1_000_000;

/// 1/φ: its multiples modulo 1 fill [0, 1) evenly for any run of
/// consecutive `n` (the golden-ratio, or Weyl, sequence).
const INV_PHI: f64 = 0.618_033_988_749_894_9;

/// The count of events due strictly before `secs` at `rate`: the least `n`
/// with `n / rate >= secs`. A tolerance keeps products that are meant to be
/// whole (`2.0 * 200.0`, `0.1 * 300.0`) from gaining an extra event.
fn events_before(secs: f64, rate: f64) -> u64 {
    let x = secs * rate;
    if x <= 0.0 {
        return 0;
    }
    (x - 1e-6).ceil().max(0.0) as u64
}

impl Schedule {
    pub fn new(
        clients: u32,
        rate: f64,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Schedule, ScheduleError> {
        if clients == 0 {
            return Err(ScheduleError::NoClients);
        }
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ScheduleError::BadRate(rate));
        }
        Ok(Schedule {
            clients: u64::from(clients),
            rate,
            first_measured: events_before(warmup.as_secs_f64(), rate),
            end: events_before((warmup + duration).as_secs_f64(), rate),
            warmup,
            duration,
        })
    }

    /// From seconds as given on the command line.
    pub fn from_secs(
        clients: u32,
        rate: f64,
        warmup: f64,
        duration: f64,
    ) -> Result<Schedule, ScheduleError> {
        let secs = |s: f64| {
            if s.is_finite() && s >= 0.0 {
                Ok(Duration::from_secs_f64(s))
            } else {
                Err(ScheduleError::BadWindow)
            }
        };
        Schedule::new(clients, rate, secs(warmup)?, secs(duration)?)
    }

    pub fn clients(&self) -> u64 {
        self.clients
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn warmup(&self) -> Duration {
        self.warmup
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// When the last event may be due: `warmup + duration`.
    pub fn end(&self) -> Duration {
        self.warmup + self.duration
    }

    /// All events, warm-up included.
    pub fn total(&self) -> u64 {
        self.end
    }

    /// Events whose latency is recorded.
    pub fn measured_total(&self) -> u64 {
        self.end - self.first_measured.min(self.end)
    }

    /// Due time of event `n`, in nanoseconds since the start: `n / rate`
    /// plus `frac(n / φ)` of [`DITHER_NS`].
    ///
    /// Senders sleep on tokio's timer, which wakes them on its next
    /// millisecond tick, and latency counts from the due time. Without the
    /// dither, at rates whose interval is a whole number of milliseconds
    /// (250, 500, 1,000/s ...) every event sits at the same distance
    /// before a tick, fixed by when the run happened to start: each run's
    /// latencies moved by one constant between 0 and 1 ms (p50 0.71 to
    /// 1.59 ms at 500-1,000 msg/s against the same server), and a
    /// comparison of two servers at a low rate measured that luck. The
    /// golden-ratio sequence spreads the events evenly over the tick
    /// whatever the rate and start, so every run and every server gets the
    /// same share of it.
    pub fn at_ns(&self, n: u64) -> u64 {
        let dither = (n as f64 * INV_PHI).fract() * DITHER_NS as f64;
        (n as f64 * 1e9 / self.rate + dither).round() as u64
    }

    /// Whether event `n` is measured (due at or after the warm-up).
    pub fn is_measured(&self, n: u64) -> bool {
        n >= self.first_measured && n < self.end
    }

    /// Whether `n` is an event of this schedule at all.
    pub fn contains(&self, n: u64) -> bool {
        n < self.end
    }

    /// The client that owns event `n`.
    pub fn owner(&self, n: u64) -> u64 {
        n % self.clients
    }

    /// Events of client `k`.
    pub fn count_for(&self, k: u64) -> u64 {
        count_from(k, self.clients, self.end)
    }

    /// Measured events of client `k`.
    pub fn measured_for(&self, k: u64) -> u64 {
        self.count_for(k) - count_from(k, self.clients, self.first_measured.min(self.end))
    }

    /// Client `k`'s events in order.
    pub fn client(&self, k: u64) -> ClientSchedule {
        ClientSchedule {
            schedule: *self,
            k,
            seq: 0,
        }
    }

    fn slot(&self, k: u64, seq: u64) -> Option<Slot> {
        let n = seq.checked_mul(self.clients)?.checked_add(k)?;
        if n >= self.end {
            return None;
        }
        Some(Slot {
            n,
            seq,
            at_ns: self.at_ns(n),
            measured: self.is_measured(n),
        })
    }
}

/// How many `n = j * clients + k` (j >= 0) are below `limit`.
fn count_from(k: u64, clients: u64, limit: u64) -> u64 {
    if k >= limit {
        0
    } else {
        (limit - k - 1) / clients + 1
    }
}

/// One client's walk through its events.
#[derive(Debug, Clone)]
pub struct ClientSchedule {
    schedule: Schedule,
    k: u64,
    seq: u64,
}

impl ClientSchedule {
    /// The next event, without taking it.
    pub fn peek(&self) -> Option<Slot> {
        self.schedule.slot(self.k, self.seq)
    }

    /// The next event if it is due at `elapsed_ns` (since the start).
    pub fn pop_due(&mut self, elapsed_ns: u64) -> Option<Slot> {
        let slot = self.peek()?;
        if slot.at_ns > elapsed_ns {
            return None;
        }
        self.seq += 1;
        Some(slot)
    }

    /// Takes the next event whether due or not.
    pub fn pop(&mut self) -> Option<Slot> {
        let slot = self.peek()?;
        self.seq += 1;
        Some(slot)
    }

    pub fn is_done(&self) -> bool {
        self.peek().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Due at `n / rate` (`base`), dithered by less than a tick.
    fn assert_due(at_ns: u64, base: u64) {
        assert!(
            (base..base + DITHER_NS).contains(&at_ns),
            "{at_ns} not in [{base}, {base} + 1 ms)"
        );
    }

    #[test]
    fn due_times_spread_evenly_over_the_timer_tick() {
        // 500/s: every undithered due time is a whole number of ms, the
        // same distance before each tick. Dithered, 1,000 consecutive
        // events fill each tenth of a millisecond about equally.
        let s = Schedule::new(1000, 500.0, secs(0.0), secs(2.0)).expect("valid");
        let mut tenths = [0u32; 10];
        for n in 0..s.total() {
            let at_ns = s.at_ns(n);
            assert_due(at_ns, n * 2_000_000);
            tenths[(at_ns % DITHER_NS / (DITHER_NS / 10)) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|&c| (95..=105).contains(&c)),
            "{tenths:?}"
        );
        // A client's own events stay in order: they are clients / rate
        // (here 2 s) apart, far more than the dither.
        let mut c = s.client(3);
        let mut last = None;
        while let Some(slot) = c.pop() {
            assert!(last < Some(slot.at_ns));
            last = Some(slot.at_ns);
        }
    }

    #[test]
    fn events_are_spread_evenly_over_the_clients() {
        let s = Schedule::new(4, 100.0, secs(0.0), secs(1.0)).expect("valid");
        assert_eq!(s.total(), 100);
        assert_eq!(s.measured_total(), 100);
        // Client k's j-th event is due at (j * clients + k) / rate.
        let mut c1 = s.client(1);
        let first = c1.pop().expect("event");
        assert_eq!((first.n, first.seq), (1, 0));
        assert_due(first.at_ns, 10_000_000);
        let second = c1.pop().expect("event");
        assert_eq!((second.n, second.seq), (5, 1));
        assert_due(second.at_ns, 50_000_000);
        // All events, across clients, are 1/rate apart and each owned once.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|k| {
                let mut c = s.client(k);
                std::iter::from_fn(move || c.pop().map(|slot| slot.n))
            })
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        for k in 0..4 {
            assert_eq!(s.count_for(k), 25);
        }
    }

    #[test]
    fn uneven_counts_add_up() {
        let s = Schedule::new(3, 10.0, secs(0.0), secs(1.0)).expect("valid");
        assert_eq!(s.total(), 10);
        let counts: Vec<u64> = (0..3).map(|k| s.count_for(k)).collect();
        assert_eq!(counts, vec![4, 3, 3]);
        for k in 0..3 {
            let mut c = s.client(k);
            let mut n = 0;
            while c.pop().is_some() {
                n += 1;
            }
            assert_eq!(n, s.count_for(k), "client {k}");
        }
        // More clients than events: some clients have none.
        let s = Schedule::new(10, 5.0, secs(0.0), secs(1.0)).expect("valid");
        assert_eq!(s.count_for(4), 1);
        assert_eq!(s.count_for(5), 0);
        assert!(s.client(7).is_done());
    }

    #[test]
    fn warmup_events_are_sent_but_not_measured() {
        let s = Schedule::new(2, 10.0, secs(1.0), secs(2.0)).expect("valid");
        assert_eq!(s.total(), 30);
        assert_eq!(s.measured_total(), 20);
        assert!(!s.is_measured(9));
        assert!(s.is_measured(10));
        assert!(s.is_measured(29));
        assert!(!s.is_measured(30));
        assert_eq!(s.measured_for(0) + s.measured_for(1), 20);
        let mut c = s.client(0);
        let measured = std::iter::from_fn(|| c.pop())
            .filter(|slot| slot.measured)
            .count() as u64;
        assert_eq!(measured, s.measured_for(0));
        assert_eq!(s.end(), secs(3.0));
    }

    #[test]
    fn whole_products_gain_no_extra_event() {
        // 0.1 * 300 is 30.000000000000004 in floating point.
        let s = Schedule::new(1, 300.0, secs(0.0), secs(0.1)).expect("valid");
        assert_eq!(s.total(), 30);
        let s = Schedule::new(10, 200.0, secs(0.0), secs(2.0)).expect("valid");
        assert_eq!(s.total(), 400);
        // A fractional product rounds up: events at 0, 1/3, 2/3 s are due
        // before 0.7 s.
        let s = Schedule::new(1, 3.0, secs(0.0), secs(0.7)).expect("valid");
        assert_eq!(s.total(), 3);
    }

    #[test]
    fn only_due_events_are_popped_and_a_late_sender_keeps_the_stamps() {
        let s = Schedule::new(2, 100.0, secs(0.0), secs(1.0)).expect("valid");
        let mut c = s.client(0);
        assert_eq!(c.pop_due(0).map(|x| x.n), Some(0));
        assert_eq!(c.pop_due(19_999_999), None, "event 2 is due at 20 ms");
        // Far behind schedule: everything due comes out at once, each with
        // its own scheduled time, not the time it is sent.
        let late: Vec<(u64, u64)> = std::iter::from_fn(|| c.pop_due(101_000_000))
            .map(|x| (x.n, x.at_ns))
            .collect();
        assert_eq!(
            late.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![2, 4, 6, 8, 10]
        );
        for (n, at_ns) in late {
            assert_due(at_ns, n * 10_000_000);
        }
        assert_eq!(c.peek().map(|x| x.n), Some(12));
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(
            Schedule::new(0, 1.0, secs(0.0), secs(1.0)),
            Err(ScheduleError::NoClients)
        );
        assert!(matches!(
            Schedule::new(1, 0.0, secs(0.0), secs(1.0)),
            Err(ScheduleError::BadRate(_))
        ));
        assert!(matches!(
            Schedule::from_secs(1, f64::NAN, 0.0, 1.0),
            Err(ScheduleError::BadRate(_))
        ));
        assert_eq!(
            Schedule::from_secs(1, 1.0, -1.0, 1.0),
            Err(ScheduleError::BadWindow)
        );
    }

    #[test]
    fn owner_and_due_times() {
        let s = Schedule::new(7, 1000.0, secs(0.0), secs(10.0)).expect("valid");
        assert_eq!(s.owner(15), 1);
        assert_due(s.at_ns(1500), 1_500_000_000);
        assert!(s.contains(9999));
        assert!(!s.contains(10_000));
    }
}
