//! Command line: goose's own options (flattened, so `--users`, `--increase-rate`, `--run-time`,
//! `--report-file`, `--threshold`, ... keep working) plus the chat options of this load test, and
//! the named scenarios that fill in defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use goose::config::GooseConfiguration;
use serde::{Deserialize, Serialize};

/// Which wire protocol the simulated clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// tidechat protocol v1: JSON frames on `/ws`, join a room by name.
    V1,
    /// The original demo's plain text on `/chatSocket`: everyone is in one room, a message comes
    /// back as `"N: text"`.
    Seed,
    /// A plain broadcast server (`/ws`): text in, the same text out to every client, sender
    /// included; no join, one room. The reference servers in `shared/peers/` speak it.
    Raw,
}

/// Named scenarios for common questions; explicit options override their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioName {
    /// 1,000 clients in one room, 10 senders x 10 msg/s, 30 s.
    Chat,
    /// 5,000 clients in one room, 1 sender x 20 msg/s, 30 s.
    Bigroom,
    /// 10,000 clients in 10 rooms connecting as fast as --max-handshakes allows, no messages,
    /// held 20 s once all are connected (or --run-time after the launch): connect-time
    /// distribution and memory per connection.
    Storm,
    /// 1,000 clients in one room, 10 senders, 64-byte messages; the rate doubles every step
    /// until p99 or loss exceeds its bound (or the generator itself becomes the bottleneck);
    /// reports the highest sustained deliveries/s.
    Step,
}

/// How the embedded server is run when no `--host` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerMode {
    /// A child process (this program re-run with `serve`): its CPU and memory are measured
    /// apart from the generator's, and each process has its own file descriptor limit.
    Process,
    /// Threads of this process (CPU is told apart by thread; memory is not).
    Thread,
}

/// Options of the chat load test (beside goose's).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct Options {
    /// Named scenario giving defaults for everything below and for --users, --increase-rate and
    /// --run-time.
    #[arg(
        long = "scenario",
        value_enum,
        default_value = "chat",
        help_heading = "Chat"
    )]
    pub scenario: ScenarioName,
    /// Wire protocol: v1 (`/ws`), seed (the original demo's `/chatSocket`, one room) or raw (a
    /// plain broadcast server: text in, the same text out to everyone; one room).
    #[arg(long, value_enum, default_value = "v1", help_heading = "Chat")]
    pub protocol: Protocol,
    /// Number of rooms; clients are spread over them round-robin.
    #[arg(long, help_heading = "Chat")]
    pub rooms: Option<usize>,
    /// Clients per room (sets --rooms to users / this, rounded up).
    #[arg(long, help_heading = "Chat")]
    pub clients_per_room: Option<usize>,
    /// Clients that also send (spread over the rooms round-robin).
    #[arg(long, help_heading = "Chat")]
    pub senders: Option<usize>,
    /// Messages per second of each sender (open loop: sent on a fixed schedule).
    #[arg(long = "msg-rate", help_heading = "Chat")]
    pub msg_rate: Option<f64>,
    /// Text bytes per message (at least the ~30 bytes of the embedded timestamp).
    #[arg(long, help_heading = "Chat")]
    pub message_size: Option<usize>,
    /// Most websocket handshakes in flight at once (above the server's listen backlog, 128 for
    /// most servers, dropped SYNs cost a 1 s retransmit).
    #[arg(long, default_value_t = 100, help_heading = "Chat")]
    pub max_handshakes: usize,
    /// Source addresses 127.0.0.1..N for client sockets [default: one per 25,000 clients].
    #[arg(long, help_heading = "Chat")]
    pub source_addrs: Option<u8>,
    /// Time allowed after the senders stop for messages in flight to arrive.
    #[arg(long, default_value = "3s", value_parser = parse_duration, help_heading = "Chat")]
    pub drain: Duration,
    /// Longest wait for every client to join before senders start anyway.
    #[arg(long, value_parser = parse_duration, help_heading = "Chat")]
    pub warmup_timeout: Option<Duration>,
    /// PID of the server under test when it runs on this machine (for its CPU and memory);
    /// repeatable (or a comma list), one per --host in the same order.
    #[arg(long, value_delimiter = ',', help_heading = "Chat")]
    pub server_pid: Vec<u32>,
    /// How to run the embedded server (when no --host is given).
    #[arg(long, value_enum, default_value = "process", help_heading = "Chat")]
    pub server_mode: ServerMode,
    /// Fan-out report file stem: writes STEM.json and STEM.html.
    #[arg(long, default_value = "fanout-report", help_heading = "Chat")]
    pub fanout_report: PathBuf,
    /// Length of one step of the `step` scenario.
    #[arg(long, default_value = "5s", value_parser = parse_duration, help_heading = "Step")]
    pub step_time: Duration,
    /// Steps of the `step` scenario at most.
    #[arg(long, default_value_t = 8, help_heading = "Step")]
    pub max_steps: usize,
    /// p99 bound of the `step` scenario, in milliseconds.
    #[arg(long, default_value_t = 100.0, help_heading = "Step")]
    pub step_p99_ms: f64,
    /// Loss bound of the `step` scenario, as a fraction.
    #[arg(long, default_value_t = 0.001, help_heading = "Step")]
    pub step_loss: f64,
}

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "Simulated chat clients measuring a chat server's fan-out latency (goose).\n\
    Without --host, starts tidechat itself on a free loopback port.",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Print two fan-out reports (JSON) side by side with ratios B/A, then exit.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"], help_heading = "Chat")]
    pub compare: Option<Vec<PathBuf>>,
    /// Option for the embedded tidechat (repeatable), e.g. --server-arg=--presence-cap=100.
    #[arg(long, allow_hyphen_values = true, help_heading = "Chat")]
    pub server_arg: Vec<String>,
    #[command(flatten)]
    pub options: Options,
    #[command(flatten)]
    pub goose: GooseConfiguration,
}

/// Parses a command line, taking `--host` (`-H`) several times: goose's option holds one
/// value, so repeated ones are joined into its comma list (see [`crate::setup::hosts`]).
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(merge_hosts(args.into_iter().map(Into::into).collect()))
}

/// `--host A --host=B -H C` -> `--host A,B,C` (at the first one's place); everything after `--`
/// is left alone.
fn merge_hosts(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut hosts: Vec<String> = Vec::new();
    let mut at = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().into_owned();
        if s == "--" {
            out.push(a);
            out.extend(it);
            break;
        }
        let value = if s == "--host" || s == "-H" {
            it.next().map(|v| v.to_string_lossy().into_owned())
        } else if let Some(v) = s.strip_prefix("--host=") {
            Some(v.to_string())
        } else {
            out.push(a);
            continue;
        };
        at.get_or_insert(out.len());
        match value {
            Some(v) => hosts.push(v),
            // No value: let clap say so.
            None => out.push(a),
        }
    }
    if let Some(i) = at {
        let joined = hosts.join(",");
        out.splice(i..i, ["--host".into(), joined.into()]);
    }
    out
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print two fan-out reports side by side with ratios B/A.
    Compare { a: PathBuf, b: PathBuf },
    /// Serve tidechat on a loopback port for the load test (used by the process server mode).
    #[command(hide = true)]
    Serve {
        /// tidechat options, e.g. --presence-cap 100.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Parses `1s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 3s or 2m"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

/// Goose's `--run-time` / `--increase-time` syntax: `30`, `30s`, `1m30s`, `1h`.
pub fn parse_goose_time(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().ok()?;
            num.clear();
            total += n * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return None,
            };
        }
    }
    if !num.is_empty() {
        total += num.parse::<u64>().ok()?;
    }
    Some(Duration::from_secs(total))
}

/// Everything a run needs, resolved from the scenario and the options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Params {
    pub scenario: ScenarioName,
    pub protocol: Protocol,
    pub users: usize,
    pub rooms: usize,
    pub senders: usize,
    /// Messages per second per sender (the first step's rate for `step`).
    pub msg_rate: f64,
    pub message_size: usize,
    /// Users started per second.
    pub increase_rate: f64,
    pub run_time_s: f64,
    pub max_handshakes: usize,
    pub source_addrs: u8,
    pub drain_s: f64,
    pub warmup_timeout_s: f64,
    /// `step` only: seconds per step and the bounds.
    pub step: Option<StepParams>,
    /// `storm` without --run-time: seconds the connections are held once all are open (the
    /// run then ends; connecting 10,000 can take longer than a fixed run time).
    #[serde(default)]
    pub hold_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepParams {
    pub step_time_s: f64,
    pub max_steps: usize,
    pub p99_ms: f64,
    pub loss: f64,
}

/// Longest wait after a step ends before it is judged, for its last messages to arrive (at
/// most half a step).
pub const STEP_GRACE: Duration = Duration::from_millis(1000);

impl StepParams {
    /// Seconds after a step ends before it is judged.
    pub fn grace_s(&self) -> f64 {
        STEP_GRACE.as_secs_f64().min(self.step_time_s / 2.0)
    }

    /// Seconds between one step's end and the next one's start: senders pause while the step
    /// is judged, so that each step is measured alone (its deliveries drain before the next
    /// begins) and the run stops before a step beyond the bound is sent.
    pub fn pause_s(&self) -> f64 {
        self.grace_s() + 0.2
    }

    /// Seconds from one step's start to the next one's.
    pub fn period_s(&self) -> f64 {
        self.step_time_s + self.pause_s()
    }
}

/// The rate of step `k`: the first step's, doubled every step.
pub fn step_rate(first: f64, k: usize) -> f64 {
    first * f64::from(1u32 << k.min(30))
}

/// Defaults of a named scenario.
struct Preset {
    users: usize,
    rooms: usize,
    senders: usize,
    msg_rate: f64,
    message_size: usize,
    increase_rate: f64,
    run_time_s: u64,
}

fn preset(name: ScenarioName) -> Preset {
    match name {
        ScenarioName::Chat => Preset {
            users: 1_000,
            rooms: 1,
            senders: 10,
            msg_rate: 10.0,
            message_size: 100,
            increase_rate: 500.0,
            run_time_s: 30,
        },
        ScenarioName::Bigroom => Preset {
            users: 5_000,
            rooms: 1,
            senders: 1,
            msg_rate: 20.0,
            message_size: 100,
            increase_rate: 1_000.0,
            run_time_s: 30,
        },
        ScenarioName::Storm => Preset {
            users: 10_000,
            rooms: 10,
            senders: 0,
            msg_rate: 0.0,
            message_size: 100,
            increase_rate: 100_000.0,
            run_time_s: 20,
        },
        ScenarioName::Step => Preset {
            users: 1_000,
            rooms: 1,
            senders: 10,
            msg_rate: 5.0,
            message_size: 64,
            increase_rate: 500.0,
            run_time_s: 0,
        },
    }
}

/// Smallest message: the embedded `~slot.seq.micros~` stamp.
pub const MIN_MESSAGE_SIZE: usize = 32;

impl Options {
    /// Resolves the scenario's defaults, writes the goose options it implies into `goose`
    /// (users, increase rate, run time, controllers off) and returns the run parameters.
    pub fn resolve(&self, goose: &mut GooseConfiguration) -> anyhow::Result<Params> {
        let p = preset(self.scenario);
        let users = *goose.users.get_or_insert(p.users);
        anyhow::ensure!(users >= 1, "--users must be at least 1");
        let increase_rate = match &goose.increase_rate {
            Some(r) => r
                .trim()
                .parse::<f64>()
                .map_err(|_| anyhow::anyhow!("--increase-rate {r:?} is not a number"))?,
            None => {
                goose.increase_rate = Some(p.increase_rate.to_string());
                p.increase_rate
            }
        };
        let step = (self.scenario == ScenarioName::Step).then(|| StepParams {
            step_time_s: self.step_time.as_secs_f64(),
            max_steps: self.max_steps.max(1),
            p99_ms: self.step_p99_ms,
            loss: self.step_loss,
        });
        let ramp_s = users as f64 / increase_rate.max(1e-3);
        let warmup_s = self
            .warmup_timeout
            .map(|d| d.as_secs_f64())
            .unwrap_or(ramp_s + 15.0);
        let hold_s = (self.scenario == ScenarioName::Storm && goose.run_time.is_none())
            .then_some(p.run_time_s as f64);
        let run_time_s = match &goose.run_time {
            Some(t) => parse_goose_time(t)
                .ok_or_else(|| anyhow::anyhow!("--run-time {t:?} is not a time"))?
                .as_secs_f64(),
            None => {
                let secs = match &step {
                    // An upper bound: the step controller ends the run after the last step;
                    // this leaves room for slow joins before the first.
                    Some(s) => {
                        let period = s.period_s();
                        (period * s.max_steps as f64 + warmup_s).ceil() as u64 + 5
                    }
                    // An upper bound too: the run ends `hold` after the last client connected.
                    None if hold_s.is_some() => (p.run_time_s as f64 + warmup_s).ceil() as u64 + 5,
                    None => p.run_time_s,
                };
                goose.run_time = Some(secs.to_string());
                secs as f64
            }
        };
        let rooms = match (self.rooms, self.clients_per_room) {
            (Some(r), _) => r,
            (None, Some(c)) => users.div_ceil(c.max(1)),
            (None, None) => p.rooms,
        };
        let rooms = match self.protocol {
            Protocol::Seed | Protocol::Raw => 1,
            Protocol::V1 => rooms.clamp(1, users),
        };
        let senders = self.senders.unwrap_or(p.senders).min(users);
        let msg_rate = self.msg_rate.unwrap_or(p.msg_rate);
        anyhow::ensure!(
            msg_rate.is_finite() && msg_rate >= 0.0,
            "--msg-rate must be a number >= 0"
        );
        let message_size = self
            .message_size
            .unwrap_or(p.message_size)
            .max(MIN_MESSAGE_SIZE);
        let source_addrs = self
            .source_addrs
            .unwrap_or_else(|| users.div_ceil(25_000).clamp(1, 250) as u8)
            .max(1);
        // Goose's telnet controller listens on a fixed port; a load test of a chat server does
        // not need it (its websocket controller is off unless asked for).
        goose.no_telnet = true;
        // Goose's transaction and scenario timings would time the client's one-second receive
        // loop, which says nothing, and keeping them costs every user ~1.5 KiB (measured with
        // 10,000 users: 118 MiB with them, 103 MiB without). Request metrics (connect, join,
        // fan-out and say samples) stay.
        goose.no_transaction_metrics = true;
        goose.no_scenario_metrics = true;
        Ok(Params {
            scenario: self.scenario,
            protocol: self.protocol,
            users,
            rooms,
            senders,
            msg_rate,
            message_size,
            increase_rate,
            run_time_s,
            max_handshakes: self.max_handshakes.max(1),
            source_addrs,
            drain_s: self.drain.as_secs_f64(),
            warmup_timeout_s: warmup_s,
            step,
            hold_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_may_repeat() {
        let cli = parse([
            "loadtest",
            "--host",
            "ws://127.0.0.1:1",
            "--users",
            "4",
            "--host=ws://127.0.0.1:2",
            "-H",
            "ws://127.0.0.1:3",
            "--server-pid",
            "7,8",
            "--server-pid",
            "9",
        ])
        .unwrap();
        assert_eq!(
            cli.goose.host.as_deref(),
            Some("ws://127.0.0.1:1,ws://127.0.0.1:2,ws://127.0.0.1:3")
        );
        assert_eq!(cli.options.server_pid, [7, 8, 9]);
        assert_eq!(cli.goose.users, Some(4));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_goose_time("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_goose_time("45"), Some(Duration::from_secs(45)));
    }

    #[test]
    fn goose_flags_and_scenarios_combine() {
        let mut cli = Cli::try_parse_from([
            "loadtest",
            "--scenario",
            "bigroom",
            "--users",
            "50",
            "--run-time",
            "5s",
            "--msg-rate",
            "3",
        ])
        .unwrap();
        let p = cli.options.resolve(&mut cli.goose).unwrap();
        assert_eq!(p.users, 50);
        assert_eq!(p.run_time_s, 5.0);
        assert_eq!(p.senders, 1);
        assert_eq!(p.msg_rate, 3.0);
        assert_eq!(p.increase_rate, 1000.0);
        assert!(cli.goose.no_telnet);
    }
}
