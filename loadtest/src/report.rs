//! The fan-out report: what a run measured, as JSON (for machines and `--compare`), as a table
//! on the terminal, and as a self-contained HTML page with plots (inline SVG, no scripts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Params;
use crate::metrics::{Percentiles, Tally};

/// Format version of the JSON report.
pub const REPORT_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub report_version: u32,
    /// Unix time the run started, seconds.
    pub started_unix_s: u64,
    pub params: Params,
    /// The servers under test, in `--host` order (clients were dealt to them round-robin).
    pub targets: Vec<Target>,
    pub environment: Environment,
    pub connections: Connections,
    pub deliveries: Deliveries,
    /// Fan-out latency: send to receipt by another member, every delivery.
    pub latency: Percentiles,
    /// (percentile, milliseconds) pairs for the distribution plot.
    pub latency_distribution: Vec<(f64, f64)>,
    /// Sender's own copy: send to its acknowledgement.
    pub ack_latency: Percentiles,
    pub sends: Sends,
    pub cost: Cost,
    /// `step` scenario only.
    pub steps: Vec<StepResult>,
    /// `step` only: achieved deliveries/s of the last step within both bounds (before the
    /// first step over one).
    pub highest_sustained_deliveries_per_s: Option<f64>,
    /// `step` only: why the steps stopped.
    #[serde(default)]
    pub step_stop_reason: Option<String>,
    /// The load generator itself was the bottleneck (its CPU saturated, or its senders fell
    /// behind schedule): the run is invalid (not failed), its figures are the generator's.
    /// For `step`, true when any judged step was.
    #[serde(default)]
    pub generator_bottleneck: bool,
    /// What showed the generator to be the bottleneck.
    #[serde(default)]
    pub generator_bottleneck_reasons: Vec<String>,
    pub timeline: Vec<TimePoint>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub url: String,
    /// `process`, `thread` or `external`.
    pub server: String,
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Environment {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadtest_version: String,
    pub goose_version: String,
    pub open_file_limit: u64,
    pub release_build: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Connections {
    pub attempted: usize,
    pub joined: usize,
    pub failed: usize,
    pub peak_open: usize,
    /// Connect (TCP + handshake + hello) times.
    pub connect: Percentiles,
    pub connect_distribution: Vec<(f64, f64)>,
    pub join: Percentiles,
    /// Seconds from the first connect attempt to the last client ready.
    pub connect_phase_s: f64,
    pub failures: BTreeMap<String, u64>,
    /// Connections that ended before the run did, by close code or error.
    pub disconnects: BTreeMap<String, u64>,
    /// Sum of `disconnects`.
    #[serde(default)]
    pub unexpected_disconnects: u64,
    /// `error` frames received, by code.
    pub error_frames: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deliveries {
    #[serde(flatten)]
    pub tally: Tally,
    pub loss_ratio: f64,
    /// Received deliveries per second of the send window.
    pub per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sends {
    pub messages: u64,
    /// Messages the senders' schedules asked for by the time each stopped (constant-rate
    /// scenarios; `step` counts per step).
    #[serde(default)]
    pub scheduled: u64,
    pub per_s: f64,
    /// Seconds from the first scheduled send to the last sender stopping.
    pub window_s: f64,
    /// Lateness against the schedule (open loop: late sends are sent at once, not dropped).
    pub lag: Percentiles,
    /// Sends later than 10 ms.
    pub late: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cost {
    pub wall_s: f64,
    pub generator_cpu_s: f64,
    pub server_cpu_s: Option<f64>,
    pub generator_us_per_delivery: Option<f64>,
    pub server_us_per_delivery: Option<f64>,
    /// Generator resident memory at its peak, bytes.
    pub generator_peak_rss: u64,
    /// (resident memory when the most clients were open - before the first connect) / clients
    /// open then.
    pub generator_bytes_per_client: Option<f64>,
    /// True when the server runs in the generator's process (its memory is included above).
    pub memory_includes_server: bool,
    pub server_rss_start: Option<u64>,
    pub server_rss_peak: Option<u64>,
    pub server_bytes_per_connection: Option<f64>,
    /// As `generator_bytes_per_client`, counting anonymous memory only (heap, stacks): what
    /// the clients cost, without the executable's code pages, which fill in as code first runs
    /// (~10 MiB whatever the number of clients).
    #[serde(default)]
    pub generator_anon_bytes_per_client: Option<f64>,
    /// As `server_bytes_per_connection`, anonymous memory only.
    #[serde(default)]
    pub server_anon_bytes_per_connection: Option<f64>,
}

/// One step of the `step` scenario. Its messages are those whose send time falls in the step;
/// their deliveries are counted here whenever they arrive (in flight at the step's end too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StepResult {
    pub step: usize,
    /// Messages per second per sender.
    pub msg_rate: f64,
    pub messages: u64,
    pub expected: u64,
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// `received - expected` when more arrived than was owed (an accounting error).
    pub excess: u64,
    pub loss_ratio: f64,
    /// Achieved: deliveries received / step time.
    pub deliveries_per_s: f64,
    /// Offered: deliveries owed for the messages sent in the step / step time.
    pub offered_deliveries_per_s: f64,
    pub duration_s: f64,
    pub latency: Percentiles,
    /// CPU seconds used during the step, and the same as cores (seconds per second).
    pub generator_cpu_s: f64,
    pub generator_cpu: f64,
    pub server_cpu_s: Option<f64>,
    pub server_cpu: Option<f64>,
    /// Cores used by everything else on the machine during the step (when the server's CPU is
    /// known): other work competing with the generator and the server.
    pub other_cpu: Option<f64>,
    /// Sender lateness against the schedule in this step.
    pub send_lag: Percentiles,
    /// Sends more than 10 ms late.
    pub late_sends: u64,
    pub within_bounds: bool,
    /// The generator was the bottleneck in this step: its figures are not the server's.
    pub generator_bottleneck: bool,
    pub generator_bottleneck_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimePoint {
    pub t_s: f64,
    pub open: usize,
    pub deliveries_per_s: f64,
    pub sends_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub generator_cpu: f64,
    pub server_cpu: Option<f64>,
    /// Cores used by every other process on the machine during this second (machine busy time
    /// less the generator's and the server's; `None` when the server's CPU is unknown).
    #[serde(default)]
    pub other_cpu: Option<f64>,
    pub generator_rss: u64,
    pub server_rss: Option<u64>,
    /// Anonymous resident memory (see [`Cost::generator_anon_bytes_per_client`]).
    #[serde(default)]
    pub generator_rss_anon: Option<u64>,
    #[serde(default)]
    pub server_rss_anon: Option<u64>,
}

impl Report {
    /// The targets' URLs, comma-separated.
    pub fn target_urls(&self) -> String {
        let urls: Vec<&str> = self.targets.iter().map(|t| t.url.as_str()).collect();
        urls.join(", ")
    }

    pub fn write(&self, stem: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let json = stem.with_extension("json");
        let html = stem.with_extension("html");
        if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        std::fs::write(&html, self.html())?;
        Ok((json, html))
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The summary table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        let d = &self.deliveries;
        let c = &self.cost;
        let _ = writeln!(
            s,
            "\n=== fan-out summary ({:?}, {}) ===",
            p.scenario,
            self.target_urls()
        );
        let rows: Vec<(&str, String)> = vec![
            (
                "clients",
                format!(
                    "{} joined / {} attempted, {} failed, peak open {}",
                    self.connections.joined,
                    self.connections.attempted,
                    self.connections.failed,
                    self.connections.peak_open
                ),
            ),
            (
                "rooms / senders",
                format!(
                    "{} / {} x {} msg/s, {} B",
                    p.rooms, p.senders, p.msg_rate, p.message_size
                ),
            ),
            (
                "connect ms",
                format!(
                    "p50 {:.2}  p99 {:.2}  max {:.2}  ({:.1} s to connect all)",
                    self.connections.connect.p50_ms,
                    self.connections.connect.p99_ms,
                    self.connections.connect.max_ms,
                    self.connections.connect_phase_s
                ),
            ),
            (
                "messages sent",
                format!(
                    "{} ({:.1}/s over {:.1} s, {} late)",
                    self.sends.messages, self.sends.per_s, self.sends.window_s, self.sends.late
                ),
            ),
            (
                "deliveries",
                format!(
                    "{} received / {} expected ({:.1}/s)",
                    d.tally.received, d.tally.expected, d.per_s
                ),
            ),
            (
                "loss",
                format!(
                    "{} ({:.4}%), duplicates {}, out of order {}",
                    d.tally.lost,
                    d.loss_ratio * 100.0,
                    d.tally.duplicates,
                    d.tally.out_of_order
                ),
            ),
            (
                "fan-out latency ms",
                format!(
                    "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                    self.latency.p50_ms,
                    self.latency.p90_ms,
                    self.latency.p99_ms,
                    self.latency.p999_ms,
                    self.latency.max_ms
                ),
            ),
            (
                "disconnects",
                if self.connections.disconnects.is_empty() {
                    "none".to_string()
                } else {
                    format!("{:?}", self.connections.disconnects)
                },
            ),
            (
                "CPU s",
                format!(
                    "generator {:.2}{}  server {}",
                    c.generator_cpu_s,
                    c.generator_us_per_delivery
                        .map(|u| format!(" ({u:.2} us/delivery)"))
                        .unwrap_or_default(),
                    match (c.server_cpu_s, c.server_us_per_delivery) {
                        (Some(s), Some(u)) => format!("{s:.2} ({u:.2} us/delivery)"),
                        (Some(s), None) => format!("{s:.2}"),
                        _ => "n/a".into(),
                    }
                ),
            ),
            (
                "memory",
                format!(
                    "generator peak {:.1} MiB{}{}",
                    c.generator_peak_rss as f64 / 1048576.0,
                    match (
                        c.generator_bytes_per_client,
                        c.generator_anon_bytes_per_client
                    ) {
                        (Some(b), Some(a)) => format!(
                            " ({:.1} KiB/client, {:.1} KiB anonymous)",
                            b / 1024.0,
                            a / 1024.0
                        ),
                        (Some(b), None) => format!(" ({:.1} KiB/client)", b / 1024.0),
                        _ => String::new(),
                    },
                    match (c.server_rss_peak, c.server_bytes_per_connection) {
                        (Some(pk), Some(b)) => format!(
                            ", server peak {:.1} MiB ({:.1} KiB/connection{})",
                            pk as f64 / 1048576.0,
                            b / 1024.0,
                            c.server_anon_bytes_per_connection
                                .map(|a| format!(", {:.1} KiB anonymous", a / 1024.0))
                                .unwrap_or_default()
                        ),
                        (Some(pk), None) =>
                            format!(", server peak {:.1} MiB", pk as f64 / 1048576.0),
                        _ => String::new(),
                    }
                ),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "{k:>20}  {v}");
        }
        if let Some(best) = self.highest_sustained_deliveries_per_s {
            let _ = writeln!(s, "{:>20}  {best:.0} deliveries/s", "highest sustained");
        }
        if !self.steps.is_empty() {
            s.push_str(&self.step_table());
        }
        if let Some(why) = &self.step_stop_reason {
            let _ = writeln!(s, "{:>20}  {why}", "steps stopped");
        }
        if self.generator_bottleneck {
            let _ = writeln!(
                s,
                "INVALID: the load generator was the bottleneck: {}",
                self.generator_bottleneck_reasons.join("; ")
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "WARNING: {w}");
        }
        s
    }

    /// The per-step table of the `step` scenario.
    pub fn step_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n{:>4} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>7}  verdict",
            "step",
            "msg/s/snd",
            "offered/s",
            "achieved/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "loss %",
            "srv CPU",
            "gen CPU",
            "other"
        );
        for st in &self.steps {
            let mut verdict = if st.within_bounds { "ok" } else { "over bound" }.to_string();
            if st.generator_bottleneck {
                verdict.push_str(", generator bottleneck");
            }
            let _ = writeln!(
                s,
                "{:>4} {:>9.1} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.4} {:>6.0}% {:>6.0}% {:>6.0}%  {verdict}",
                st.step,
                st.msg_rate,
                st.offered_deliveries_per_s,
                st.deliveries_per_s,
                st.latency.p50_ms,
                st.latency.p99_ms,
                st.latency.max_ms,
                st.loss_ratio * 100.0,
                st.server_cpu.map(|c| c * 100.0).unwrap_or(f64::NAN),
                st.generator_cpu * 100.0,
                st.other_cpu.map(|c| c * 100.0).unwrap_or(f64::NAN),
            );
        }
        s
    }

    /// A self-contained HTML page with the figures and plots.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>fan-out report: {:?}</title><style>{CSS}</style></head><body>",
            self.params.scenario
        );
        let _ = write!(
            h,
            "<h1>Fan-out report: {:?} against {}</h1>",
            self.params.scenario,
            esc(&self.target_urls())
        );
        for w in &self.warnings {
            let _ = write!(h, "<p class=\"warn\">Warning: {}</p>", esc(w));
        }
        h.push_str("<pre>");
        h.push_str(&esc(&self.summary()));
        h.push_str("</pre>");
        let dist: Vec<(f64, f64)> = self
            .latency_distribution
            .iter()
            .map(|&(pct, ms)| (percentile_x(pct), ms))
            .collect();
        h.push_str(&svg_chart(
            "Fan-out latency by percentile",
            "percentile",
            "ms",
            &[("latency", &dist)],
            Some(&[
                (0.0, "0%"),
                (1.0, "90%"),
                (2.0, "99%"),
                (3.0, "99.9%"),
                (4.0, "99.99%"),
                (5.0, "99.999%"),
            ]),
        ));
        if !self.steps.is_empty() {
            h.push_str(&self.step_html());
        }
        let tl = |f: &dyn Fn(&TimePoint) -> f64| -> Vec<(f64, f64)> {
            self.timeline.iter().map(|p| (p.t_s, f(p))).collect()
        };
        let p50 = tl(&|p| p.p50_ms);
        let p99 = tl(&|p| p.p99_ms);
        let max = tl(&|p| p.max_ms);
        h.push_str(&svg_chart(
            "Fan-out latency over time (per second)",
            "seconds",
            "ms",
            &[("p50", &p50), ("p99", &p99), ("max", &max)],
            None,
        ));
        let dps = tl(&|p| p.deliveries_per_s);
        h.push_str(&svg_chart(
            "Deliveries per second",
            "seconds",
            "deliveries/s",
            &[("deliveries/s", &dps)],
            None,
        ));
        let open = tl(&|p| p.open as f64);
        h.push_str(&svg_chart(
            "Open connections",
            "seconds",
            "connections",
            &[("open", &open)],
            None,
        ));
        let gen = tl(&|p| p.generator_cpu * 100.0);
        let srv: Vec<(f64, f64)> = self
            .timeline
            .iter()
            .filter_map(|p| Some((p.t_s, p.server_cpu? * 100.0)))
            .collect();
        h.push_str(&svg_chart(
            "CPU (% of one core)",
            "seconds",
            "%",
            &[("generator", &gen), ("server", &srv)],
            None,
        ));
        if !self.connections.connect_distribution.is_empty() {
            let cd: Vec<(f64, f64)> = self
                .connections
                .connect_distribution
                .iter()
                .map(|&(pct, ms)| (percentile_x(pct), ms))
                .collect();
            h.push_str(&svg_chart(
                "Connect time by percentile",
                "percentile",
                "ms",
                &[("connect", &cd)],
                Some(&[
                    (0.0, "0%"),
                    (1.0, "90%"),
                    (2.0, "99%"),
                    (3.0, "99.9%"),
                    (4.0, "99.99%"),
                ]),
            ));
        }
        h.push_str("<h2>Run parameters and environment (JSON)</h2><pre>");
        let meta = serde_json::json!({
            "params": self.params, "targets": self.targets, "environment": self.environment,
            "cost": self.cost, "connections": {
                "failures": self.connections.failures,
                "disconnects": self.connections.disconnects,
                "error_frames": self.connections.error_frames,
            }
        });
        h.push_str(&esc(
            &serde_json::to_string_pretty(&meta).unwrap_or_default()
        ));
        h.push_str("</pre></body></html>\n");
        h
    }
}

impl Report {
    /// The steps of `step` as an HTML table and two charts.
    fn step_html(&self) -> String {
        let mut h = String::from(
            "<h2>Steps</h2><table><tr><th>step</th><th>msg/s per sender</th>\
             <th>offered deliveries/s</th><th>achieved deliveries/s</th><th>p50 ms</th>\
             <th>p99 ms</th><th>max ms</th><th>loss %</th><th>server CPU %</th>\
             <th>generator CPU %</th><th>other processes CPU %</th><th>verdict</th></tr>",
        );
        for st in &self.steps {
            let verdict = match (st.within_bounds, &st.generator_bottleneck_reason) {
                (_, Some(why)) => format!("generator bottleneck: {}", esc(why)),
                (true, None) => "ok".into(),
                (false, None) => "over bound".into(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.1}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}</td>\
                 <td>{:.2}</td><td>{:.2}</td><td>{:.4}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{verdict}</td></tr>",
                st.step,
                st.msg_rate,
                st.offered_deliveries_per_s,
                st.deliveries_per_s,
                st.latency.p50_ms,
                st.latency.p99_ms,
                st.latency.max_ms,
                st.loss_ratio * 100.0,
                st.server_cpu
                    .map(|c| format!("{:.0}", c * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                st.generator_cpu * 100.0,
                st.other_cpu
                    .map(|c| format!("{:.0}", c * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
        h.push_str("</table>");
        if let Some(best) = self.highest_sustained_deliveries_per_s {
            let _ = write!(
                h,
                "<p>Highest sustained: <b>{best:.0} deliveries/s</b>{}</p>",
                if self.generator_bottleneck {
                    " (invalid: the generator was the bottleneck)"
                } else {
                    ""
                }
            );
        }
        let pts = |f: &dyn Fn(&StepResult) -> f64| -> Vec<(f64, f64)> {
            self.steps.iter().map(|s| (s.step as f64, f(s))).collect()
        };
        let offered = pts(&|s| s.offered_deliveries_per_s);
        let achieved = pts(&|s| s.deliveries_per_s);
        h.push_str(&svg_chart(
            "Deliveries per second by step",
            "step",
            "deliveries/s",
            &[("offered", &offered), ("achieved", &achieved)],
            None,
        ));
        let p50 = pts(&|s| s.latency.p50_ms);
        let p99 = pts(&|s| s.latency.p99_ms);
        let max = pts(&|s| s.latency.max_ms);
        h.push_str(&svg_chart(
            "Fan-out latency by step",
            "step",
            "ms",
            &[("p50", &p50), ("p99", &p99), ("max", &max)],
            None,
        ));
        h
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:960px;color:#222}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}.warn{color:#a00;font-weight:bold}\
svg{display:block;margin:1.5em 0}text{font-size:11px;fill:#333}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}";

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// x position of a percentile on the usual HDR axis: -log10(1 - q).
fn percentile_x(pct: f64) -> f64 {
    let rest = (1.0 - pct / 100.0).max(1e-6);
    -rest.log10()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart as inline SVG.
fn svg_chart(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(&str, &Vec<(f64, f64)>)],
    xticks: Option<&[(f64, &str)]>,
) -> String {
    let (w, hgt, l, r, t, b) = (900.0, 300.0, 70.0, 20.0, 30.0, 40.0);
    let pts = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\" role=\"img\" aria-label=\"{title}\">\
         <text x=\"{l}\" y=\"18\" style=\"font-size:14px;font-weight:bold\">{title}</text>"
    );
    if x0 > x1 {
        let _ = write!(s, "<text x=\"{l}\" y=\"60\">no data</text></svg>");
        return s;
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    y1 *= 1.05;
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| hgt - b - y / y1 * (hgt - t - b);
    let _ = write!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"#888\"/>",
        hgt - b,
        w - r,
        hgt - b,
        hgt - b
    );
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            l - 6.0,
            py(y) + 4.0,
            fmt_num(y),
        );
        let _ = write!(
            s,
            "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#eee\"/>",
            py(y),
            w - r,
            py(y)
        );
    }
    let ticks: Vec<(f64, String)> = match xticks {
        Some(t) => t
            .iter()
            .filter(|(x, _)| *x >= x0 && *x <= x1 + 1e-9)
            .map(|(x, n)| (*x, n.to_string()))
            .collect(),
        None => (0..=5)
            .map(|i| {
                let x = x0 + (x1 - x0) * i as f64 / 5.0;
                (x, fmt_num(x))
            })
            .collect(),
    };
    for (x, name) in ticks {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
            px(x),
            hgt - b + 16.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel}</text>\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{ylabel}</text>",
        (l + w - r) / 2.0,
        hgt - 4.0,
        hgt / 2.0,
        hgt / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" style=\"fill:{color}\">{name}</text>",
            path.join(" "),
            w - r - 120.0,
            t + 14.0 * (i as f64 + 1.0)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
