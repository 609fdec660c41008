//! What a run measured: latency histograms (HDR, microsecond resolution),
//! CPU and memory of processes from `/proc`, and the output as a table and
//! as one JSON line.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Highest latency the histograms hold exactly: one hour, in microseconds.
/// Anything slower is recorded as one hour.
const MAX_MICROS: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    // Constant bounds, checked by the tests: this cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// One latency distribution shared by all the clients of a run.
#[derive(Clone)]
pub struct Latencies(Arc<Mutex<Histogram<u64>>>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies(Arc::new(Mutex::new(new_histogram())))
    }

    /// A per-client buffer in front of the shared histogram.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            pending: Vec::with_capacity(RECORDER_BATCH),
        }
    }

    fn record_all(&self, micros: &[u64]) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for &v in micros {
            h.saturating_record(v.clamp(1, MAX_MICROS));
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        LatencySummary::of(&h)
    }
}

const RECORDER_BATCH: usize = 64;

/// Collects latencies locally and adds them to the shared histogram in
/// batches (so clients do not take the lock for every stanza).
pub struct Recorder {
    shared: Latencies,
    pending: Vec<u64>,
}

impl Recorder {
    pub fn record(&mut self, latency: Duration) {
        self.pending
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        if self.pending.len() >= RECORDER_BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.shared.record_all(&self.pending);
            self.pending.clear();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Percentiles of one distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The outcome of one kind of measured event (delivered messages,
/// processed reports, logins, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    /// Measured events the schedule offered.
    pub scheduled: u64,
    /// Of those, completed in time (each counted once).
    pub count: u64,
    /// Answered with an error (or a failed login).
    pub failed: u64,
    pub latency: LatencySummary,
}

impl Outcome {
    /// Offered but neither completed nor failed by the end (with grace).
    pub fn lost(&self) -> u64 {
        self.scheduled.saturating_sub(self.count + self.failed)
    }
}

/// CPU seconds used by a process so far, and its resident memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    pub cpu_s: Option<f64>,
    pub rss_kb: Option<u64>,
}

/// Clock ticks per second of `/proc/PID/stat` times. Linux reports them
/// in USER_HZ, which is 100 on every architecture it supports.
pub const CLOCK_TICKS: f64 = 100.0;

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself contain
    // spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in kB from the text of `/proc/PID/status`.
pub fn parse_vmrss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Samples a process (`None`: this one). Missing data (another OS, a
/// process that is gone) gives `None` fields.
pub fn sample(pid: Option<u32>) -> ProcSample {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let cpu_s = std::fs::read_to_string(format!("{dir}/stat"))
        .ok()
        .and_then(|s| parse_stat_ticks(&s))
        .map(|t| t as f64 / CLOCK_TICKS);
    let rss_kb = std::fs::read_to_string(format!("{dir}/status"))
        .ok()
        .and_then(|s| parse_vmrss_kb(&s));
    ProcSample { cpu_s, rss_kb }
}

/// The CPUs in a list such as `Cpus_allowed_list` of `/proc/PID/status`
/// (`0`, `0-3`, `0,2-3`); `None` if it cannot be read.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// (steal, all) clock ticks summed over the given CPUs (`None`: over the
/// whole machine, the `cpu` line) from the text of `/proc/stat`.
pub fn parse_steal_ticks(stat: &str, cpus: Option<&[usize]>) -> Option<(u64, u64)> {
    let mut sum = None;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let wanted = match (fields.next(), cpus) {
            (Some("cpu"), None) => true,
            (Some(name), Some(cpus)) => name
                .strip_prefix("cpu")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| cpus.contains(&n)),
            _ => false,
        };
        if !wanted {
            continue;
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice]:
        // guest time is already counted in user and nice.
        let ticks: Vec<u64> = fields
            .take(8)
            .map(|f| f.parse())
            .collect::<Result<_, _>>()
            .ok()?;
        let steal = *ticks.get(7)?;
        let (s, t) = sum.unwrap_or((0, 0));
        sum = Some((s + steal, t + ticks.iter().sum::<u64>()));
    }
    sum
}

/// Steal time of some CPUs (`None`: the whole machine) over a window:
/// time the hypervisor gave another guest while this one had work, which
/// a server cannot be blamed for.
struct Steal {
    cpus: Option<Vec<usize>>,
    /// (steal, all) ticks when the window opened.
    start: Option<(u64, u64)>,
}

impl Steal {
    /// `stat`: the text of `/proc/stat` now.
    fn open(cpus: Option<Vec<usize>>, stat: Option<&str>) -> Steal {
        let start = stat.and_then(|s| parse_steal_ticks(s, cpus.as_deref()));
        Steal { cpus, start }
    }

    /// In % of the CPUs' time since `open`; `stat` as there.
    fn pct(&self, stat: Option<&str>) -> Option<f64> {
        steal_pct(self.start, parse_steal_ticks(stat?, self.cpus.as_deref()))
    }
}

fn read_proc_stat() -> Option<String> {
    std::fs::read_to_string("/proc/stat").ok()
}

/// The CPUs a process (`None`: this one) may run on.
fn allowed_cpus(pid: Option<u32>) -> Option<Vec<usize>> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(parse_cpu_list)
}

/// CPU and memory over the measured window, for the server (when its pid
/// is known) and for the generator itself.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub server_cpu_s: Option<f64>,
    pub generator_cpu_s: Option<f64>,
    pub server_rss_before_kb: Option<u64>,
    pub server_rss_after_kb: Option<u64>,
    /// Steal time in % of the time of the server's CPUs (of the whole
    /// machine if its pid is not known): on a VM, a step can fail because
    /// the hypervisor took the core away, not because the server was slow.
    pub steal_pct: Option<f64>,
    /// The same on the generator's CPUs: a generator that loses its core
    /// reads late and measures latency the server did not cause.
    pub generator_steal_pct: Option<f64>,
}

/// The start of a measured window.
pub struct Window {
    pid: Option<u32>,
    server: ProcSample,
    generator: ProcSample,
    steal: Steal,
    generator_steal: Steal,
}

impl Window {
    pub fn open(pid: Option<u32>) -> Window {
        let stat = read_proc_stat();
        Window {
            pid,
            server: pid.map(|p| sample(Some(p))).unwrap_or_default(),
            generator: sample(None),
            steal: Steal::open(pid.and_then(|p| allowed_cpus(Some(p))), stat.as_deref()),
            generator_steal: Steal::open(allowed_cpus(None), stat.as_deref()),
        }
    }

    /// The server's RSS when the window opened.
    pub fn server_rss_kb(&self) -> Option<u64> {
        self.server.rss_kb
    }

    pub fn close(&self) -> Resources {
        let server = self.pid.map(|p| sample(Some(p))).unwrap_or_default();
        let generator = sample(None);
        let diff = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0));
        let stat = read_proc_stat();
        Resources {
            server_cpu_s: diff(self.server.cpu_s, server.cpu_s),
            generator_cpu_s: diff(self.generator.cpu_s, generator.cpu_s),
            server_rss_before_kb: self.server.rss_kb,
            server_rss_after_kb: server.rss_kb,
            steal_pct: self.steal.pct(stat.as_deref()),
            generator_steal_pct: self.generator_steal.pct(stat.as_deref()),
        }
    }
}

fn steal_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, t0), (s1, t1)) = (before?, after?);
    let all = t1.checked_sub(t0).filter(|&t| t > 0)?;
    Some(100.0 * s1.saturating_sub(s0) as f64 / all as f64)
}

/// Everything one run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub timestamp: String,
    pub label: String,
    pub scenario: String,
    pub server: String,
    pub domain: String,
    pub mechanism: String,
    pub sm: bool,
    pub clients: u32,
    pub offered_rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Completed events per second over the measured time.
    pub achieved_rate: f64,
    /// The main outcome: delivered messages (chat), processed reports
    /// (report), logins (login), sessions (idle).
    pub main: Outcome,
    /// Reports accepted by the server (report only).
    pub accepted: Option<Outcome>,
    /// Events completed more than once (counted once above).
    pub duplicates: u64,
    /// Connections that failed during the run (after login).
    pub connection_errors: u64,
    pub server_pid: Option<u32>,
    pub resources: Resources,
    /// idle: (RSS with the sessions - RSS before) / sessions.
    pub rss_per_session_kb: Option<f64>,
    /// drain: seconds from the first report sent to the last accepted.
    pub fill_s: Option<f64>,
    /// drain: seconds from starting the processor to the last report
    /// confirmed.
    pub drain_s: Option<f64>,
}

fn per_100k(cpu: Option<f64>, count: u64) -> Option<f64> {
    let cpu = cpu?;
    (count > 0).then(|| cpu / count as f64 * 100_000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl RunReport {
    pub fn server_cpu_per_100k(&self) -> Option<f64> {
        per_100k(self.resources.server_cpu_s, self.main.count)
    }

    pub fn generator_cpu_per_100k(&self) -> Option<f64> {
        per_100k(self.resources.generator_cpu_s, self.main.count)
    }

    /// One JSON object with every field (null where not applicable), the
    /// same keys for every scenario.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let r = &self.resources;
        m.insert("timestamp".into(), json!(self.timestamp));
        m.insert("label".into(), json!(self.label));
        m.insert("scenario".into(), json!(self.scenario));
        m.insert("server".into(), json!(self.server));
        m.insert("domain".into(), json!(self.domain));
        m.insert("mechanism".into(), json!(self.mechanism));
        m.insert("sm".into(), json!(self.sm));
        m.insert("clients".into(), json!(self.clients));
        m.insert("offered_rate".into(), json!(self.offered_rate));
        m.insert("achieved_rate".into(), json!(round3(self.achieved_rate)));
        m.insert("duration_s".into(), json!(self.duration_s));
        m.insert("warmup_s".into(), json!(self.warmup_s));
        let mut outcome = |prefix: &str, o: Option<&Outcome>| {
            let l = o.map(|o| o.latency);
            let key = |k: &str| format!("{prefix}{k}");
            m.insert(key("scheduled"), json!(o.map(|o| o.scheduled)));
            m.insert(key("count"), json!(o.map(|o| o.count)));
            m.insert(key("lost"), json!(o.map(|o| o.lost())));
            m.insert(key("failed"), json!(o.map(|o| o.failed)));
            m.insert(key("mean_ms"), json!(l.map(|l| round3(l.mean_ms))));
            m.insert(key("p50_ms"), json!(l.map(|l| l.p50_ms)));
            m.insert(key("p90_ms"), json!(l.map(|l| l.p90_ms)));
            m.insert(key("p99_ms"), json!(l.map(|l| l.p99_ms)));
            m.insert(key("p999_ms"), json!(l.map(|l| l.p999_ms)));
            m.insert(key("max_ms"), json!(l.map(|l| l.max_ms)));
        };
        outcome("", Some(&self.main));
        outcome("accepted_", self.accepted.as_ref());
        m.insert("duplicates".into(), json!(self.duplicates));
        m.insert("connection_errors".into(), json!(self.connection_errors));
        m.insert("server_pid".into(), json!(self.server_pid));
        m.insert("server_cpu_s".into(), json!(r.server_cpu_s.map(round3)));
        m.insert(
            "generator_cpu_s".into(),
            json!(r.generator_cpu_s.map(round3)),
        );
        m.insert(
            "server_cpu_per_100k_s".into(),
            json!(self.server_cpu_per_100k().map(round3)),
        );
        m.insert(
            "generator_cpu_per_100k_s".into(),
            json!(self.generator_cpu_per_100k().map(round3)),
        );
        m.insert("server_rss_before_kb".into(), json!(r.server_rss_before_kb));
        m.insert("server_rss_after_kb".into(), json!(r.server_rss_after_kb));
        m.insert("steal_pct".into(), json!(r.steal_pct.map(round3)));
        m.insert(
            "generator_steal_pct".into(),
            json!(r.generator_steal_pct.map(round3)),
        );
        m.insert(
            "rss_per_session_kb".into(),
            json!(self.rss_per_session_kb.map(round3)),
        );
        m.insert("fill_s".into(), json!(self.fill_s.map(round3)));
        m.insert("drain_s".into(), json!(self.drain_s.map(round3)));
        Value::Object(m)
    }

    /// Appends the run as one line to a JSON Lines file.
    pub fn append_json(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut line = self.to_json().to_string();
        line.push('\n');
        f.write_all(line.as_bytes())
    }

    /// The human-readable table (and a few lines under it).
    pub fn table(&self) -> String {
        let r = &self.resources;
        let opt = |v: Option<f64>, digits: usize| {
            v.map(|v| format!("{v:.digits$}"))
                .unwrap_or_else(|| "-".into())
        };
        let mib = |kb: Option<u64>| opt(kb.map(|k| k as f64 / 1024.0), 1);
        let header = [
            "scenario",
            "label",
            "clients",
            "offered/s",
            "achieved/s",
            "count",
            "lost",
            "failed",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "srv CPU s",
            "gen CPU s",
            "srv RSS MiB before",
            "after",
        ];
        let row = |name: String, o: &Outcome, achieved: f64| -> Vec<String> {
            let l = o.latency;
            vec![
                name,
                self.label.clone(),
                self.clients.to_string(),
                format!("{:.0}", self.offered_rate),
                format!("{achieved:.1}"),
                o.count.to_string(),
                o.lost().to_string(),
                o.failed.to_string(),
                format!("{:.2}", l.p50_ms),
                format!("{:.2}", l.p90_ms),
                format!("{:.2}", l.p99_ms),
                format!("{:.2}", l.p999_ms),
                format!("{:.2}", l.max_ms),
                opt(r.server_cpu_s, 2),
                opt(r.generator_cpu_s, 2),
                mib(r.server_rss_before_kb),
                mib(r.server_rss_after_kb),
            ]
        };
        let mut rows = Vec::new();
        if let Some(acc) = &self.accepted {
            let rate = self.achieved_rate * acc.count as f64 / self.main.count.max(1) as f64;
            rows.push(row(format!("{}:accepted", self.scenario), acc, rate));
            rows.push(row(
                format!("{}:processed", self.scenario),
                &self.main,
                self.achieved_rate,
            ));
        } else {
            rows.push(row(self.scenario.clone(), &self.main, self.achieved_rate));
        }
        let mut out = render(&header, &rows);
        let mut notes = Vec::new();
        if let Some(c) = self.server_cpu_per_100k() {
            notes.push(format!("server CPU per 100k: {c:.2} s"));
        }
        if let Some(c) = self.generator_cpu_per_100k() {
            notes.push(format!("generator CPU per 100k: {c:.2} s"));
        }
        if let Some(p) = r.steal_pct {
            notes.push(format!("steal time on the server's CPUs: {p:.1} %"));
        }
        if let Some(p) = r.generator_steal_pct {
            notes.push(format!("on the generator's: {p:.1} %"));
        }
        if let (Some(fill), Some(drain)) = (self.fill_s, self.drain_s) {
            notes.push(format!(
                "backlog of {} accepted in {fill:.2} s; drained in {drain:.2} s",
                self.accepted.as_ref().map_or(0, |a| a.count)
            ));
        }
        if let Some(kb) = self.rss_per_session_kb {
            notes.push(format!("server RSS per session: {kb:.1} KiB"));
        }
        if self.duplicates > 0 {
            notes.push(format!("duplicates: {}", self.duplicates));
        }
        if self.connection_errors > 0 {
            notes.push(format!("connection errors: {}", self.connection_errors));
        }
        if !notes.is_empty() {
            out.push_str(&notes.join("; "));
            out.push('\n');
        }
        out
    }
}

/// Left-aligned text columns, right-aligned numbers.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut parts = Vec::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i < 2 {
                parts.push(format!("{cell:<w$}"));
            } else {
                parts.push(format!("{cell:>w$}"));
            }
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Now, as RFC 3339 in UTC.
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_proc_stat() {
        // A command name with spaces and parentheses.
        let stat = "4242 (my (odd) server) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 8 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn vmrss_from_proc_status() {
        let status = "Name:\ttributary\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss_kb(status), Some(51234));
        assert_eq!(parse_vmrss_kb("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(None);
        if cfg!(target_os = "linux") {
            assert!(s.cpu_s.is_some());
            assert!(s.rss_kb.is_some_and(|kb| kb > 0));
        }
        let w = Window::open(None);
        assert_eq!(w.close().server_cpu_s, None, "no server pid, no server CPU");
        let w = Window::open(Some(std::process::id()));
        // /proc/stat counts in 10 ms ticks, idle ones included.
        std::thread::sleep(Duration::from_millis(60));
        if cfg!(target_os = "linux") {
            let r = w.close();
            for steal in [r.steal_pct, r.generator_steal_pct] {
                assert!(
                    steal.is_some_and(|p| (0.0..=100.0).contains(&p)),
                    "{steal:?}"
                );
            }
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3\n"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn steal_ticks_from_proc_stat() {
        let stat = "cpu  300 0 30 600 6 0 3 60 0 0\n\
                    cpu0 100 0 10 200 2 0 1 50 7 0\n\
                    cpu1 200 0 20 400 4 0 2 10 0 0\n\
                    intr 12345 0 0\n";
        assert_eq!(parse_steal_ticks(stat, None), Some((60, 999)));
        assert_eq!(parse_steal_ticks(stat, Some(&[0])), Some((50, 363)));
        assert_eq!(parse_steal_ticks(stat, Some(&[0, 1])), Some((60, 999)));
        assert_eq!(parse_steal_ticks(stat, Some(&[5])), None);
        assert_eq!(steal_pct(Some((50, 363)), Some((80, 463))), Some(30.0));
        assert_eq!(steal_pct(Some((50, 363)), Some((50, 363))), None);
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let lat = Latencies::new();
        let mut rec = lat.recorder();
        for ms in 1..=1000u64 {
            rec.record(Duration::from_millis(ms));
        }
        drop(rec);
        let s = lat.summary();
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1 %.
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-9;
        assert!(near(s.p50_ms, 500.0), "{s:?}");
        assert!(near(s.p90_ms, 900.0), "{s:?}");
        assert!(near(s.p99_ms, 990.0), "{s:?}");
        assert!(near(s.p999_ms, 999.0), "{s:?}");
        assert!(near(s.max_ms, 1000.0), "{s:?}");
        assert!(near(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn recorders_share_one_histogram_and_clamp() {
        let lat = Latencies::new();
        let mut a = lat.recorder();
        let mut b = lat.recorder();
        a.record(Duration::ZERO);
        b.record(Duration::from_secs(10 * 3600));
        a.flush();
        b.flush();
        let s = lat.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_ms >= 3_600_000.0 * 0.999);
        assert_eq!(LatencySummary::default().count, 0);
        assert_eq!(Latencies::new().summary(), LatencySummary::default());
    }

    fn report() -> RunReport {
        RunReport {
            timestamp: "2026-11-25T10:00:00Z".into(),
            label: "tributary".into(),
            scenario: "report".into(),
            server: "127.0.0.1:5222".into(),
            domain: "localhost".into(),
            mechanism: "SCRAM-SHA-1".into(),
            sm: true,
            clients: 10,
            offered_rate: 200.0,
            duration_s: 2.0,
            warmup_s: 0.0,
            achieved_rate: 199.5,
            main: Outcome {
                scheduled: 400,
                count: 399,
                failed: 0,
                latency: LatencySummary {
                    count: 399,
                    mean_ms: 3.0,
                    p50_ms: 2.5,
                    p90_ms: 4.0,
                    p99_ms: 9.0,
                    p999_ms: 12.0,
                    max_ms: 12.5,
                },
            },
            accepted: Some(Outcome {
                scheduled: 400,
                count: 400,
                failed: 0,
                latency: LatencySummary::default(),
            }),
            duplicates: 0,
            connection_errors: 0,
            server_pid: Some(42),
            resources: Resources {
                server_cpu_s: Some(0.5),
                generator_cpu_s: Some(0.25),
                server_rss_before_kb: Some(10240),
                server_rss_after_kb: Some(20480),
                steal_pct: Some(1.5),
                generator_steal_pct: Some(0.5),
            },
            rss_per_session_kb: None,
            fill_s: None,
            drain_s: None,
        }
    }

    #[test]
    fn json_has_every_field() {
        let v = report().to_json();
        for key in [
            "timestamp",
            "label",
            "scenario",
            "server",
            "clients",
            "offered_rate",
            "achieved_rate",
            "count",
            "lost",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "accepted_count",
            "accepted_lost",
            "server_cpu_s",
            "generator_cpu_s",
            "server_cpu_per_100k_s",
            "server_rss_before_kb",
            "server_rss_after_kb",
            "rss_per_session_kb",
            "steal_pct",
            "generator_steal_pct",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["lost"], json!(1));
        assert_eq!(v["accepted_lost"], json!(0));
        assert_eq!(v["rss_per_session_kb"], Value::Null);
        assert_eq!(v["server_cpu_per_100k_s"], json!(125.313));
        assert_eq!(v["steal_pct"], json!(1.5));
        // Without an accepted outcome the keys stay, as null.
        let mut r = report();
        r.accepted = None;
        assert_eq!(r.to_json()["accepted_count"], Value::Null);
    }

    #[test]
    fn json_lines_are_appended() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("runs.jsonl");
        report().append_json(&path).expect("first");
        report().append_json(&path).expect("second");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for l in lines {
            let v: Value = serde_json::from_str(l).expect("valid JSON");
            assert_eq!(v["scenario"], json!("report"));
        }
    }

    #[test]
    fn table_shows_both_report_outcomes() {
        let t = report().table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("scenario"), "{t}");
        assert!(lines[1].starts_with("report:accepted"), "{t}");
        assert!(lines[2].starts_with("report:processed"), "{t}");
        assert!(lines[2].contains("399") && lines[2].contains("2.50"), "{t}");
        assert!(t.contains("10.0") && t.contains("20.0"), "RSS in MiB: {t}");
        assert!(t.contains("server CPU per 100k: 125.31 s"), "{t}");
    }
}
