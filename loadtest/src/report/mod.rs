//! The fan-out report: what a run measured, as JSON (for machines and `--compare`), as a table
//! on the terminal, and as a self-contained HTML page with plots (inline SVG, no scripts).
//!
//! This module holds the data model and its JSON file; the renderers are [`text`] (the summary
//! and step tables, [`Report::summary`], [`Report::step_table`]) and [`html`] ([`Report::html`]).

mod html;
mod text;

use std::collections::BTreeMap;
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
    /// As `generator_us_per_delivery`, over the seconds in which messages were sent only (past
    /// the timeline's first): what a delivery costs without the connects, joins and teardown,
    /// which the whole-run figure spreads over the deliveries.
    #[serde(default)]
    pub generator_us_per_delivery_sending: Option<f64>,
    /// As `server_us_per_delivery`, over the same seconds.
    #[serde(default)]
    pub server_us_per_delivery_sending: Option<f64>,
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
}

/// A small report for the renderers' tests: a `step` run with a few seconds of timeline and
/// three steps (the last over its bounds).
#[cfg(test)]
pub(crate) fn sample_report() -> Report {
    use clap::Parser as _;

    let cli = crate::Cli::try_parse_from(["loadtest", "--scenario", "step", "--users", "50"])
        .expect("test arguments parse");
    let params = cli
        .options
        .plan(&cli.goose)
        .map(|p| p.params)
        .expect("test params");
    let lat = |p50: f64, p99: f64, max: f64| Percentiles {
        count: 1000,
        min_ms: p50 / 2.0,
        mean_ms: p50,
        p50_ms: p50,
        p90_ms: (p50 + p99) / 2.0,
        p99_ms: p99,
        p999_ms: (p99 + max) / 2.0,
        max_ms: max,
    };
    let timeline = (0..5)
        .map(|i| TimePoint {
            t_s: i as f64,
            open: 50,
            deliveries_per_s: 4000.0 + 1000.0 * i as f64,
            sends_per_s: 90.0,
            p50_ms: 1.0 + 0.1 * i as f64,
            p99_ms: 4.0 + i as f64,
            max_ms: 9.0 + 2.0 * i as f64,
            generator_cpu: 0.3,
            server_cpu: Some(0.5 + 0.1 * i as f64),
            other_cpu: Some(0.05),
            generator_rss: 40 << 20,
            server_rss: Some(20 << 20),
            generator_rss_anon: Some(30 << 20),
            server_rss_anon: Some(15 << 20),
        })
        .collect();
    let steps = (1..=3)
        .map(|i| StepResult {
            step: i,
            msg_rate: 5.0 * i as f64,
            messages: 500 * i as u64,
            expected: 24_500 * i as u64,
            received: 24_500 * i as u64 - if i == 3 { 100 } else { 0 },
            lost: if i == 3 { 100 } else { 0 },
            offered_deliveries_per_s: 2450.0 * i as f64,
            deliveries_per_s: 2450.0 * i as f64 - if i == 3 { 400.0 } else { 0.0 },
            duration_s: 10.0,
            latency: lat(1.0 * i as f64, 5.0 * i as f64, 12.0 * i as f64),
            generator_cpu: 0.2 * i as f64,
            server_cpu: Some(0.3 * i as f64),
            other_cpu: Some(0.05),
            within_bounds: i < 3,
            ..StepResult::default()
        })
        .collect();
    let dist = |scale: f64| -> Vec<(f64, f64)> {
        [0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0]
            .iter()
            .enumerate()
            .map(|(i, &q)| (q, scale * (1.0 + i as f64 * i as f64)))
            .collect()
    };
    Report {
        report_version: REPORT_VERSION,
        started_unix_s: 1_700_000_000,
        params,
        targets: vec![Target {
            url: "ws://127.0.0.1:3000/ws".into(),
            server: "process".into(),
            server_pid: Some(4242),
        }],
        environment: Environment {
            cpus: 2,
            cpu_model: "test cpu".into(),
            kernel: "6.1".into(),
            loadtest_version: "0.1.0".into(),
            goose_version: "0.19".into(),
            open_file_limit: 65536,
            release_build: false,
        },
        connections: Connections {
            attempted: 50,
            joined: 50,
            failed: 0,
            peak_open: 50,
            connect: lat(0.8, 3.0, 4.0),
            connect_distribution: dist(0.5),
            join: lat(0.3, 1.0, 1.5),
            connect_phase_s: 0.4,
            failures: BTreeMap::new(),
            disconnects: BTreeMap::new(),
            unexpected_disconnects: 0,
            error_frames: BTreeMap::new(),
        },
        deliveries: Deliveries {
            tally: Tally {
                expected: 147_000,
                received: 146_900,
                lost: 100,
                ..Tally::default()
            },
            loss_ratio: 100.0 / 147_000.0,
            per_s: 4897.0,
        },
        latency: lat(2.0, 10.0, 36.0),
        latency_distribution: dist(1.0),
        ack_latency: lat(0.5, 2.0, 3.0),
        sends: Sends {
            messages: 3000,
            scheduled: 3000,
            per_s: 100.0,
            window_s: 30.0,
            lag: lat(0.1, 0.5, 1.0),
            late: 0,
        },
        cost: Cost {
            wall_s: 31.0,
            generator_cpu_s: 6.0,
            server_cpu_s: Some(9.0),
            generator_us_per_delivery: Some(40.8),
            server_us_per_delivery: Some(61.3),
            server_us_per_delivery_sending: Some(55.0),
            generator_peak_rss: 40 << 20,
            ..Cost::default()
        },
        steps,
        highest_sustained_deliveries_per_s: Some(4900.0),
        step_stop_reason: Some("step 3: p99 15.00 ms > 10 ms".into()),
        generator_bottleneck: false,
        generator_bottleneck_reasons: Vec::new(),
        timeline,
        warnings: vec!["<script>alert(1)</script> & more".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_gives_the_same_report() {
        let dir = std::env::temp_dir().join(format!("loadtest-report-{}", std::process::id()));
        let r = sample_report();
        let (json, html) = r.write(&dir.join("run")).unwrap();
        assert_eq!(Report::read(&json).unwrap(), r);
        assert!(std::fs::read_to_string(&html)
            .unwrap()
            .starts_with("<!doctype html>"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
