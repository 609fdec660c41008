//! `bench-plot`: PNG charts of the results `bench/run.sh` leaves behind
//! (one JSON object per `tributary bench` step in `<server>.jsonl`), for
//! `bench/report.py` to embed in RESULTS.md.
//!
//! One chart per load scenario (latency against offered rate, p99 and p50
//! per server, the sustained-latency limit as a horizontal line) and one bar
//! chart of the server RSS per idle session.
//!
//! Text goes through plotters' pure-Rust `ab_glyph` renderer so that
//! building needs no freetype/fontconfig development packages; the font is
//! read at run time (Debian's fonts-dejavu-core by default).

use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The font used when none is given: Debian's fonts-dejavu-core.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The p99 limit of chat, report and mqtt when run.json does not say
/// (bench/run.sh's `P99_LIMIT_MS` default).
pub const DEFAULT_P99_LIMIT_MS: f64 = 50.0;
/// The login storm's p99 limit when run.json does not say
/// (bench/run.sh's `LOGIN_P99_LIMIT_MS` default).
pub const DEFAULT_LOGIN_P99_LIMIT_MS: f64 = 200.0;
/// File name of the idle-session memory chart.
pub const IDLE_RSS_CHART: &str = "idle-rss.png";

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 650;
// plotters looks fonts up by family name; the default text styles of its
// meshes and legends ask for this one.
const FAMILY: &str = "sans-serif";

/// Why charts could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("font {path}: {reason} (install Debian's fonts-dejavu-core: apt-get install fonts-dejavu-core, or pass --font PATH)")]
    Font { path: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot draw {path}: {reason}")]
    Draw { path: String, reason: String },
}

/// One `tributary bench` step, as far as the charts need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The `label` of the run (bench/run.sh passes the server's name), else
    /// the file's stem.
    pub server: String,
    pub scenario: String,
    pub clients: Option<u64>,
    pub offered_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rss_per_session_kb: Option<f64>,
}

/// A positive finite number, or nothing: a log axis has no place for zero,
/// and `null` means the run had nothing to measure.
fn positive(v: &Value, key: &str) -> Option<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite() && *x > 0.0)
}

/// Parses one JSON line. Lines without `scenario` and `offered_rate`, and
/// lines with nothing to draw (like tributary.processor.jsonl's CPU-only
/// lines), give `None`.
pub fn parse_line(line: &str, fallback_server: &str) -> Option<Step> {
    let v: Value = serde_json::from_str(line).ok()?;
    let scenario = v.get("scenario")?.as_str()?.to_string();
    let offered_rate = v
        .get("offered_rate")?
        .as_f64()
        .filter(|x| x.is_finite() && *x >= 0.0)?;
    let server = match v.get("label").and_then(Value::as_str) {
        Some(l) if !l.is_empty() => l.to_string(),
        _ => fallback_server.to_string(),
    };
    let clients = v.get("clients").and_then(Value::as_u64);
    // The same fallback as report.py, for lines written before the field
    // existed.
    let rss_per_session_kb = positive(&v, "rss_per_session_kb").or_else(|| {
        let after = v.get("server_rss_after_kb").and_then(Value::as_f64)?;
        let before = v.get("server_rss_before_kb").and_then(Value::as_f64)?;
        let n = clients.filter(|n| *n > 0)? as f64;
        Some((after - before) / n).filter(|x| x.is_finite() && *x > 0.0)
    });
    let step = Step {
        server,
        scenario,
        clients,
        offered_rate,
        p50_ms: positive(&v, "p50_ms"),
        p99_ms: positive(&v, "p99_ms"),
        rss_per_session_kb,
    };
    let drawable =
        step.p50_ms.is_some() || step.p99_ms.is_some() || step.rss_per_session_kb.is_some();
    drawable.then_some(step)
}

/// Every step in the `*.jsonl` files of `dir`, and how many non-empty lines
/// were left out.
pub fn read_results(dir: &Path) -> Result<(Vec<Step>, usize), PlotError> {
    let read_err = |source| PlotError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("jsonl") && path.is_file() {
            files.push(path);
        }
    }
    // Directory order is arbitrary; sorted, "the last line wins" on
    // duplicates means the same thing on every machine.
    files.sort();
    let (mut steps, mut skipped) = (Vec::new(), 0);
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| PlotError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match parse_line(line, &stem) {
                Some(s) => steps.push(s),
                None => skipped += 1,
            }
        }
    }
    Ok((steps, skipped))
}

/// The p99 limits that defined "sustained" in the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub p99_ms: f64,
    pub login_p99_ms: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            p99_ms: DEFAULT_P99_LIMIT_MS,
            login_p99_ms: DEFAULT_LOGIN_P99_LIMIT_MS,
        }
    }
}

impl Limits {
    /// From `run.json`'s `params` in `dir`; each value missing (or the file
    /// missing or unreadable) falls back to bench/run.sh's default, as in
    /// report.py.
    pub fn from_results_dir(dir: &Path) -> Limits {
        let params = std::fs::read_to_string(dir.join("run.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.get("params").cloned())
            .unwrap_or(Value::Null);
        let limit = |key: &str, default: f64| positive(&params, key).unwrap_or(default);
        Limits {
            p99_ms: limit("p99_limit_ms", DEFAULT_P99_LIMIT_MS),
            login_p99_ms: limit("login_p99_limit_ms", DEFAULT_LOGIN_P99_LIMIT_MS),
        }
    }

    /// The limit drawn on a scenario's chart; idle has none.
    pub fn for_scenario(&self, scenario: &str) -> Option<f64> {
        match scenario {
            "idle" => None,
            "login" => Some(self.login_p99_ms),
            _ => Some(self.p99_ms),
        }
    }
}

/// Log scale when the values span more than a factor of ten; closer
/// values would huddle in one decade.
pub fn use_log_scale(lo: f64, hi: f64) -> bool {
    lo > 0.0 && hi.is_finite() && hi > 10.0 * lo
}

/// Tick values for a log axis from `lo` to `hi`: labelled ones (1-2-5 in
/// each decade, only powers of ten beyond four decades) and grid-only ones
/// (the other multiples). plotters' own log ticks crowd together when the
/// range is under two decades.
pub fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return (Vec::new(), Vec::new());
    }
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    let labelled: &[u32] = if last - first > 4 { &[1] } else { &[1, 2, 5] };
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    for k in first..=last {
        for m in 1..=9u32 {
            let v = f64::from(m) * 10f64.powi(k);
            if v < lo || v > hi {
                continue;
            }
            if labelled.contains(&m) {
                bold.push(v);
            } else {
                light.push(v);
            }
        }
    }
    (bold, light)
}

/// One server's steps of one scenario, by increasing offered rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub server: String,
    pub steps: Vec<Step>,
}

// Known servers keep their place (and colour) on every chart whichever
// subset ran.
const KNOWN_SERVERS: [&str; 4] = ["tributary", "ejabberd", "prosody", "mosquitto"];

fn server_rank(server: &str) -> (usize, String) {
    let known = KNOWN_SERVERS.iter().position(|k| *k == server);
    (known.unwrap_or(KNOWN_SERVERS.len()), server.to_string())
}

/// Steps grouped by scenario, then by server (known servers first, in a
/// fixed order), each series sorted by offered rate; of two steps at the
/// same rate the later line wins (a re-run appended to the file).
pub fn group(steps: &[Step]) -> BTreeMap<String, Vec<Series>> {
    let mut by: BTreeMap<String, BTreeMap<(usize, String), Vec<Step>>> = BTreeMap::new();
    for s in steps {
        by.entry(s.scenario.clone())
            .or_default()
            .entry(server_rank(&s.server))
            .or_default()
            .push(s.clone());
    }
    by.into_iter()
        .map(|(scenario, servers)| {
            let series = servers
                .into_iter()
                .map(|((_, server), mut steps)| {
                    // Stable sort: equal rates stay in file order, so the
                    // last one is the later line.
                    steps.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
                    let mut kept: Vec<Step> = Vec::with_capacity(steps.len());
                    for s in steps {
                        match kept.last_mut() {
                            Some(last) if last.offered_rate == s.offered_rate => *last = s,
                            _ => kept.push(s),
                        }
                    }
                    Series {
                        server,
                        steps: kept,
                    }
                })
                .collect();
            (scenario, series)
        })
        .collect()
}

/// The latency chart's file name for a scenario. Scenario names come from
/// the input files, so anything but `[A-Za-z0-9_-]` is replaced: no
/// path separators.
pub fn latency_chart_name(scenario: &str) -> String {
    let safe: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("latency-{safe}.png")
}

fn is_chart_name(name: &str) -> bool {
    name == IDLE_RSS_CHART || (name.starts_with("latency-") && name.ends_with(".png"))
}

/// Short numbers for tick labels: 20000 → "20k", 0.5 → "0.5", 12.5 → "12.5".
pub fn short_number(v: f64) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
    let a = v.abs();
    if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e3 {
        trim(format!("{:.2}", v / 1e3)) + "k"
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

// Tableau 10: distinguishable, and still readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const LIMIT_COLOR: RGBColor = RGBColor(200, 0, 0);

/// A colour per server, the same on every chart of a run.
fn colours(steps: &[Step]) -> BTreeMap<String, RGBColor> {
    let mut unknown: Vec<&str> = steps
        .iter()
        .map(|s| s.server.as_str())
        .filter(|s| !KNOWN_SERVERS.contains(s))
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    let known = KNOWN_SERVERS.iter().copied();
    known
        .chain(unknown)
        .enumerate()
        .map(|(i, s)| (s.to_string(), PALETTE[i % PALETTE.len()]))
        .collect()
}

static FONT_REGISTERED: Mutex<bool> = Mutex::new(false);

/// Reads the font and hands it to plotters. The file is read on every call,
/// so a missing font is always reported; it is registered once per process
/// (plotters' font table is global and wants `'static` bytes, so they are
/// leaked).
pub fn register_font(path: &Path) -> Result<(), PlotError> {
    let err = |reason: String| PlotError::Font {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut done = FONT_REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| err("not a TrueType/OpenType font".into()))?;
    *done = true;
    Ok(())
}

/// What [`render`] wrote.
#[derive(Debug, Default)]
pub struct Rendered {
    pub charts: Vec<PathBuf>,
    /// Non-empty lines of the `.jsonl` files that were not steps to draw.
    pub skipped_lines: usize,
    /// Charts of an earlier run whose scenario is no longer in the results.
    pub removed: Vec<PathBuf>,
}

/// Reads `results`, writes the charts into `out` (created if need be) and
/// removes charts of ours there that this run did not write, so that
/// report.py never embeds a stale one.
pub fn render(results: &Path, out: &Path, font: &Path) -> Result<Rendered, PlotError> {
    register_font(font)?;
    let (steps, skipped_lines) = read_results(results)?;
    let limits = Limits::from_results_dir(results);
    std::fs::create_dir_all(out).map_err(|source| PlotError::Write {
        path: out.display().to_string(),
        source,
    })?;
    let colours = colours(&steps);
    let mut charts = Vec::new();
    for (scenario, series) in group(&steps) {
        if scenario == "idle" {
            let path = out.join(IDLE_RSS_CHART);
            if draw_idle_rss(&path, &series, &colours)? {
                charts.push(path);
            }
            continue;
        }
        let path = out.join(latency_chart_name(&scenario));
        let limit = limits.for_scenario(&scenario);
        if draw_latency(&path, &scenario, &series, limit, &colours)? {
            charts.push(path);
        }
    }
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(out).map_err(|source| PlotError::Read {
        path: out.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_chart_name);
        if ours && path.is_file() && !charts.contains(&path) {
            std::fs::remove_file(&path).map_err(|source| PlotError::Write {
                path: path.display().to_string(),
                source,
            })?;
            removed.push(path);
        }
    }
    Ok(Rendered {
        charts,
        skipped_lines,
        removed,
    })
}

fn rate_unit(scenario: &str) -> &'static str {
    match scenario {
        "chat" => "msg/s",
        "login" => "logins/s",
        "report" => "reports/s",
        "mqtt" => "msg/s",
        _ => "per s",
    }
}

/// "50 clients", "50–1000 clients", or nothing when the lines do not say.
fn clients_text(steps: impl Iterator<Item = Option<u64>>, noun: &str) -> String {
    let n: Vec<u64> = steps.flatten().collect();
    match (n.iter().min(), n.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => format!(" ({lo} {noun})"),
        (Some(lo), Some(hi)) => format!(" ({lo}–{hi} {noun})"),
        _ => String::new(),
    }
}

fn draw_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError::Draw {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Latency against offered rate; `false` when there is nothing to draw.
fn draw_latency(
    path: &Path,
    scenario: &str,
    series: &[Series],
    limit: Option<f64>,
    colours: &BTreeMap<String, RGBColor>,
) -> Result<bool, PlotError> {
    let steps = || series.iter().flat_map(|s| s.steps.iter());
    let rates: Vec<f64> = steps()
        .map(|s| s.offered_rate)
        .filter(|r| *r > 0.0)
        .collect();
    let lat: Vec<f64> = steps()
        .flat_map(|s| [s.p50_ms, s.p99_ms])
        .flatten()
        .chain(limit)
        .collect();
    let (Some(x_lo), Some(x_hi)) = (min(&rates), max(&rates)) else {
        return Ok(false);
    };
    let (Some(y_lo), Some(y_hi)) = (min(&lat), max(&lat)) else {
        return Ok(false);
    };
    // Headroom on the log axis: a factor, so the top and bottom points do
    // not sit on the frame and the legend has room above the data.
    let y = (y_lo / 2.0)..(y_hi * 4.0);
    let unit = rate_unit(scenario);
    let title = format!(
        "{scenario}: latency against offered load{}",
        clients_text(steps().map(|s| s.clients), "clients")
    );
    let log_x = use_log_scale(x_lo, x_hi);
    let x_desc = format!(
        "offered rate ({unit}{})",
        if log_x { ", log scale" } else { "" }
    );
    let chart = LatencyChart {
        path,
        title: &title,
        x_desc: &x_desc,
        series,
        limit,
        colours,
    };
    let log_axis = |r: std::ops::Range<f64>| {
        let (bold, light) = log_ticks(r.start, r.end);
        r.log_scale().with_key_points(bold).with_light_points(light)
    };
    if log_x {
        // Labels at the offered rates themselves (run.sh's steps are few and
        // spread out), the usual decade grid behind them.
        let x = x_lo / 1.5..x_hi * 1.5;
        let mut labelled = rates.clone();
        labelled.sort_by(f64::total_cmp);
        labelled.dedup();
        let (bold, light) = log_ticks(x.start, x.end);
        let bold = if labelled.len() <= 12 { labelled } else { bold };
        let x = x.log_scale().with_key_points(bold).with_light_points(light);
        chart.draw(x, log_axis(y))?;
    } else {
        // A single rate (or rates close together) still needs a width.
        let span = x_hi - x_lo;
        let pad = if span < x_hi * 0.1 {
            x_hi * 0.25
        } else {
            span * 0.1
        }
        .max(1.0);
        let x: RangedCoordf64 = ((x_lo - pad).max(0.0)..x_hi + pad).into();
        chart.draw(x, log_axis(y))?;
    }
    Ok(true)
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

struct LatencyChart<'a> {
    path: &'a Path,
    title: &'a str,
    x_desc: &'a str,
    series: &'a [Series],
    limit: Option<f64>,
    colours: &'a BTreeMap<String, RGBColor>,
}

impl LatencyChart<'_> {
    // Generic over the x axis: linear and log coordinates are different
    // types in plotters.
    fn draw<X, Y>(&self, x: X, y: Y) -> Result<(), PlotError>
    where
        X: AsRangedCoord<Value = f64>,
        X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let de = draw_err(self.path);
        let root = BitMapBackend::new(self.path, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| de(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, (FAMILY, 24))
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(75)
            .build_cartesian_2d(x, y)
            .map_err(|e| de(&e))?;
        let fmt = |v: &f64| short_number(*v);
        chart
            .configure_mesh()
            .x_desc(self.x_desc)
            .y_desc("latency (ms, log scale)")
            .x_max_light_lines(2)
            .x_label_formatter(&fmt)
            .y_label_formatter(&fmt)
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| de(&e))?;

        if let Some(limit) = self.limit {
            let (x0, x1) = {
                let r = chart.x_range();
                (r.start, r.end)
            };
            chart
                .draw_series(LineSeries::new(
                    [(x0, limit), (x1, limit)],
                    LIMIT_COLOR.stroke_width(2),
                ))
                .map_err(|e| de(&e))?
                .label(format!("limit: p99 < {} ms", short_number(limit)))
                .legend(|(x, y)| {
                    PathElement::new([(x, y), (x + 30, y)], LIMIT_COLOR.stroke_width(2))
                });
        }
        for s in self.series {
            let c = self.colours.get(&s.server).copied().unwrap_or(BLACK);
            let p99: Vec<(f64, f64)> = s
                .steps
                .iter()
                .filter_map(|st| Some((st.offered_rate, st.p99_ms?)))
                .collect();
            let p50: Vec<(f64, f64)> = s
                .steps
                .iter()
                .filter_map(|st| Some((st.offered_rate, st.p50_ms?)))
                .collect();
            if !p99.is_empty() {
                chart
                    .draw_series(LineSeries::new(p99.iter().copied(), c.stroke_width(3)))
                    .map_err(|e| de(&e))?
                    .label(format!("{} p99", s.server))
                    .legend(move |(x, y)| {
                        EmptyElement::at((x, y))
                            + PathElement::new([(0, 0), (30, 0)], c.stroke_width(3))
                            + Circle::new((15, 0), 5, c.filled())
                    });
                chart
                    .draw_series(p99.iter().map(|p| Circle::new(*p, 5, c.filled())))
                    .map_err(|e| de(&e))?;
            }
            if !p50.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(
                        p50.iter().copied(),
                        8,
                        6,
                        c.stroke_width(2),
                    ))
                    .map_err(|e| de(&e))?
                    .label(format!("{} p50", s.server))
                    .legend(move |(x, y)| {
                        EmptyElement::at((x, y))
                            + DashedPathElement::new([(0, 0), (30, 0)], 8, 6, c.stroke_width(2))
                            + Circle::new((15, 0), 4, c.stroke_width(2))
                    });
                chart
                    .draw_series(p50.iter().map(|p| Circle::new(*p, 4, c.stroke_width(2))))
                    .map_err(|e| de(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .legend_area_size(40)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(|e| de(&e))?;
        root.present().map_err(|e| de(&e))?;
        Ok(())
    }
}

/// Bars of server RSS per idle session; `false` when no server has the
/// figure.
fn draw_idle_rss(
    path: &Path,
    series: &[Series],
    colours: &BTreeMap<String, RGBColor>,
) -> Result<bool, PlotError> {
    // One hold per server; a re-run's line is the last.
    let bars: Vec<(&str, f64, Option<u64>)> = series
        .iter()
        .filter_map(|s| {
            let st = s
                .steps
                .iter()
                .rev()
                .find(|st| st.rss_per_session_kb.is_some())?;
            Some((s.server.as_str(), st.rss_per_session_kb?, st.clients))
        })
        .collect();
    let Some(top) = max(&bars.iter().map(|b| b.1).collect::<Vec<_>>()) else {
        return Ok(false);
    };
    let de = draw_err(path);
    let title = format!(
        "idle: server RSS per idle session{}",
        clients_text(bars.iter().map(|b| b.2), "sessions")
    );
    // A plain numeric x axis with one unit per bar, names written under
    // the bars: plotters' segmented axes misplace or overflow with a single
    // category.
    let n = bars.len() as f64;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| de(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&title, (FAMILY, 24))
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..n, 0.0..top * 1.2)
        .map_err(|e| de(&e))?;
    let fmt = |v: &f64| short_number(*v);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_desc("server")
        .y_desc("RSS per session (kB)")
        .y_label_formatter(&fmt)
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| de(&e))?;
    let centred = |size: i32, v: VPos| {
        TextStyle::from((FAMILY, size).into_font()).pos(Pos::new(HPos::Center, v))
    };
    for (i, (server, kb, _)) in bars.iter().enumerate() {
        let (x0, x1) = (i as f64 + 0.2, i as f64 + 0.8);
        let c = colours.get(*server).copied().unwrap_or(BLACK);
        chart
            .draw_series([Rectangle::new([(x0, 0.0), (x1, *kb)], c.filled())])
            .map_err(|e| de(&e))?;
        chart
            .draw_series([Text::new(
                format!("{} kB", short_number(*kb)),
                (i as f64 + 0.5, *kb + top * 0.01),
                centred(17, VPos::Bottom),
            )])
            .map_err(|e| de(&e))?;
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            server.to_string(),
            (px, py + 8),
            centred(17, VPos::Top),
        ))
        .map_err(|e| de(&e))?;
    }
    root.present().map_err(|e| de(&e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(label: &str, scenario: &str, rate: f64, p50: f64, p99: f64) -> String {
        serde_json::json!({
            "label": label, "scenario": scenario, "clients": 50, "offered_rate": rate,
            "achieved_rate": rate, "p50_ms": p50, "p99_ms": p99, "p999_ms": p99 * 1.5,
            "max_ms": p99 * 2.0, "lost": 0, "server_cpu_s": 0.2, "rss_per_session_kb": null,
        })
        .to_string()
    }

    #[test]
    fn parses_a_step_line() {
        let s = parse_line(&line("ejabberd", "chat", 200.0, 1.5, 3.25), "file").expect("a step");
        assert_eq!(s.server, "ejabberd");
        assert_eq!(s.scenario, "chat");
        assert_eq!(s.clients, Some(50));
        assert_eq!(s.offered_rate, 200.0);
        assert_eq!(s.p50_ms, Some(1.5));
        assert_eq!(s.p99_ms, Some(3.25));
        assert_eq!(s.rss_per_session_kb, None);
    }

    #[test]
    fn leaves_out_lines_without_scenario_rate_or_anything_to_draw() {
        assert!(parse_line(r#"{"offered_rate": 100, "p99_ms": 2}"#, "f").is_none());
        assert!(parse_line(r#"{"scenario": "chat", "p99_ms": 2}"#, "f").is_none());
        assert!(parse_line(
            r#"{"scenario": "chat", "offered_rate": "fast", "p99_ms": 2}"#,
            "f"
        )
        .is_none());
        assert!(parse_line("not json", "f").is_none());
        // tributary.processor.jsonl: CPU only.
        let processor = r#"{"scenario": "report", "offered_rate": 200, "processor_cpu_s": 0.49}"#;
        assert!(parse_line(processor, "tributary.processor").is_none());
        // Nothing measured: null latencies.
        let empty = r#"{"scenario": "chat", "offered_rate": 200, "p50_ms": null, "p99_ms": null}"#;
        assert!(parse_line(empty, "f").is_none());
    }

    #[test]
    fn server_falls_back_to_the_file_stem_and_rss_to_before_and_after() {
        let l = r#"{"label": "", "scenario": "idle", "clients": 200, "offered_rate": 100,
                    "p99_ms": 7, "rss_per_session_kb": null,
                    "server_rss_before_kb": 1000, "server_rss_after_kb": 5000}"#;
        let s = parse_line(&l.replace('\n', " "), "prosody").expect("a step");
        assert_eq!(s.server, "prosody");
        assert_eq!(s.rss_per_session_kb, Some(20.0));
    }

    #[test]
    fn reads_every_jsonl_file_and_counts_what_it_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = format!(
            "{}\n\n{}\n",
            line("tributary", "chat", 200.0, 1.0, 2.0),
            "garbage"
        );
        std::fs::write(dir.path().join("tributary.jsonl"), a).expect("write");
        std::fs::write(
            dir.path().join("prosody.jsonl"),
            line("prosody", "login", 50.0, 5.0, 9.0),
        )
        .expect("write");
        std::fs::write(
            dir.path().join("notes.txt"),
            line("x", "chat", 1.0, 1.0, 1.0),
        )
        .expect("write");
        let (steps, skipped) = read_results(dir.path()).expect("read");
        assert_eq!(skipped, 1);
        let mut names: Vec<_> = steps
            .iter()
            .map(|s| (s.server.as_str(), s.scenario.as_str()))
            .collect();
        names.sort_unstable();
        assert_eq!(names, [("prosody", "login"), ("tributary", "chat")]);
        assert!(read_results(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn groups_by_scenario_and_server_sorted_by_rate_last_line_wins() {
        let p = |l: String| parse_line(&l, "f").expect("a step");
        let steps = vec![
            p(line("zeta", "chat", 1000.0, 1.0, 2.0)),
            p(line("prosody", "chat", 1000.0, 1.0, 9.0)),
            p(line("prosody", "chat", 200.0, 1.0, 3.0)),
            p(line("tributary", "chat", 200.0, 1.0, 2.0)),
            p(line("prosody", "chat", 1000.0, 1.0, 12.0)),
            p(line("tributary", "login", 50.0, 1.0, 2.0)),
        ];
        let g = group(&steps);
        assert_eq!(g.keys().collect::<Vec<_>>(), ["chat", "login"]);
        let chat = &g["chat"];
        let servers: Vec<_> = chat.iter().map(|s| s.server.as_str()).collect();
        assert_eq!(servers, ["tributary", "prosody", "zeta"]);
        let prosody: Vec<_> = chat[1]
            .steps
            .iter()
            .map(|s| (s.offered_rate, s.p99_ms))
            .collect();
        assert_eq!(prosody, [(200.0, Some(3.0)), (1000.0, Some(12.0))]);
    }

    #[test]
    fn log_scale_only_beyond_a_factor_of_ten() {
        assert!(!use_log_scale(200.0, 1000.0));
        assert!(!use_log_scale(100.0, 1000.0));
        assert!(use_log_scale(100.0, 2000.0));
        assert!(use_log_scale(1000.0, 20000.0));
        assert!(!use_log_scale(500.0, 500.0));
        assert!(!use_log_scale(0.0, 1000.0));
    }

    #[test]
    fn log_ticks_label_1_2_5_and_grid_the_rest() {
        let (bold, light) = log_ticks(2.6, 200.0);
        assert_eq!(bold, [5.0, 10.0, 20.0, 50.0, 100.0, 200.0]);
        assert_eq!(light.first(), Some(&3.0));
        assert!(light.contains(&30.0) && !light.contains(&20.0));
        // Wide ranges: powers of ten only.
        let (bold, _) = log_ticks(0.5, 20_000.0);
        assert_eq!(bold, [1.0, 10.0, 100.0, 1000.0, 10_000.0]);
        assert_eq!(log_ticks(0.0, 10.0), (vec![], vec![]));
        assert_eq!(log_ticks(10.0, 5.0), (vec![], vec![]));
    }

    #[test]
    fn limits_from_run_json_or_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let defaults = Limits::from_results_dir(dir.path());
        assert_eq!(defaults, Limits::default());
        assert_eq!(defaults.for_scenario("chat"), Some(50.0));
        assert_eq!(defaults.for_scenario("login"), Some(200.0));
        assert_eq!(defaults.for_scenario("idle"), None);

        std::fs::write(
            dir.path().join("run.json"),
            r#"{"params": {"p99_limit_ms": 30, "login_p99_limit_ms": 150}}"#,
        )
        .expect("write");
        let l = Limits::from_results_dir(dir.path());
        assert_eq!(l.for_scenario("chat"), Some(30.0));
        assert_eq!(l.for_scenario("mqtt"), Some(30.0));
        assert_eq!(l.for_scenario("report"), Some(30.0));
        assert_eq!(l.for_scenario("login"), Some(150.0));

        std::fs::write(
            dir.path().join("run.json"),
            r#"{"params": {"p99_limit_ms": 25}}"#,
        )
        .expect("write");
        let l = Limits::from_results_dir(dir.path());
        assert_eq!((l.p99_ms, l.login_p99_ms), (25.0, 200.0));

        std::fs::write(dir.path().join("run.json"), "{ not json").expect("write");
        assert_eq!(Limits::from_results_dir(dir.path()), Limits::default());
    }

    #[test]
    fn chart_names_stay_in_the_output_directory() {
        assert_eq!(latency_chart_name("chat"), "latency-chat.png");
        assert_eq!(latency_chart_name("../etc/x"), "latency-___etc_x.png");
        assert!(is_chart_name("latency-chat.png"));
        assert!(is_chart_name(IDLE_RSS_CHART));
        assert!(!is_chart_name("tributary.jsonl"));
    }

    #[test]
    fn short_numbers_for_ticks() {
        assert_eq!(short_number(20000.0), "20k");
        assert_eq!(short_number(2500.0), "2.5k");
        assert_eq!(short_number(200.0), "200");
        assert_eq!(short_number(50.0), "50");
        assert_eq!(short_number(12.5), "12.5");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(0.125), "0.125");
    }

    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is not a PNG",
            path.display()
        );
        // A blank 1100x650 canvas compresses to far less than this; axes,
        // text and lines push it over.
        assert!(
            bytes.len() > 10_000,
            "{}: only {} bytes",
            path.display(),
            bytes.len()
        );
    }

    #[test]
    fn renders_charts_from_a_results_directory() {
        // Not skipped without the font: scripts/test.sh and bench/run.sh
        // install fonts-dejavu-core, and a silent skip would hide a broken
        // chart path.
        let font = Path::new(DEFAULT_FONT);
        assert!(
            font.is_file(),
            "{DEFAULT_FONT} missing: apt-get install fonts-dejavu-core"
        );
        let results = tempfile::tempdir().expect("tempdir");
        let out = tempfile::tempdir().expect("tempdir");
        let r = results.path();
        let mut trib = String::new();
        let mut pros = String::new();
        for (rate, t, p) in [
            (1000.0, 2.0, 3.0),
            (5000.0, 3.0, 20.0),
            (20000.0, 8.0, 400.0),
        ] {
            trib += &(line("tributary", "chat", rate, t / 2.0, t) + "\n");
            pros += &(line("prosody", "chat", rate, p / 3.0, p) + "\n");
        }
        trib += &(line("tributary", "login", 50.0, 4.0, 10.0) + "\n");
        trib += &(line("tributary", "login", 200.0, 3.5, 19.0) + "\n");
        let idle = |label: &str, kb: f64| {
            serde_json::json!({"label": label, "scenario": "idle", "clients": 200, "offered_rate": 100,
                               "p50_ms": 5, "p99_ms": 9, "rss_per_session_kb": kb})
            .to_string()
        };
        trib += &(idle("tributary", 24.4) + "\n");
        pros += &(idle("prosody", 41.3) + "\n");
        std::fs::write(r.join("tributary.jsonl"), trib).expect("write");
        std::fs::write(r.join("prosody.jsonl"), pros).expect("write");
        std::fs::write(
            r.join("run.json"),
            r#"{"params": {"p99_limit_ms": 50, "login_p99_limit_ms": 200}}"#,
        )
        .expect("write");
        // A chart of an earlier run's scenario that is gone now.
        std::fs::write(out.path().join("latency-old.png"), b"stale").expect("write");

        let done = render(r, out.path(), font).expect("render");
        let names: Vec<_> = done
            .charts
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(
            names,
            ["latency-chat.png", "idle-rss.png", "latency-login.png"]
        );
        for p in &done.charts {
            assert_png(p);
        }
        assert_eq!(done.skipped_lines, 0);
        assert_eq!(done.removed, [out.path().join("latency-old.png")]);
        assert!(!out.path().join("latency-old.png").exists());
    }

    #[test]
    fn renders_a_single_step_and_a_single_bar() {
        let font = Path::new(DEFAULT_FONT);
        assert!(
            font.is_file(),
            "{DEFAULT_FONT} missing: apt-get install fonts-dejavu-core"
        );
        let results = tempfile::tempdir().expect("tempdir");
        let idle = serde_json::json!({"label": "ejabberd", "scenario": "idle", "clients": 10,
                                      "offered_rate": 20, "p99_ms": 7, "rss_per_session_kb": 20.2});
        let text = format!("{}\n{idle}\n", line("ejabberd", "mqtt", 1000.0, 1.0, 2.0));
        std::fs::write(results.path().join("ejabberd.jsonl"), text).expect("write");
        let out = results.path().join("charts");
        let done = render(results.path(), &out, font).expect("render");
        assert_eq!(
            done.charts,
            [out.join(IDLE_RSS_CHART), out.join("latency-mqtt.png")]
        );
        for p in &done.charts {
            assert_png(p);
        }
    }

    #[test]
    fn a_missing_font_is_a_clear_error() {
        let e = register_font(Path::new("/nonexistent/DejaVuSans.ttf")).expect_err("no such font");
        assert!(matches!(e, PlotError::Font { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/DejaVuSans.ttf") && msg.contains("fonts-dejavu-core"),
            "{msg}"
        );
    }
}
