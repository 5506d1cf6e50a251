//! Command line: goose's own options (flattened, so `--users`, `--increase-rate`, `--run-time`,
//! `--report-file`, `--threshold`, ... keep working) plus the chat options of this load test, and
//! the named scenarios that fill in defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use goose::config::GooseConfiguration;
use goose::test_plan::TestPlan;
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
    /// 1,000 clients in one room, 10 senders, 64-byte messages; the rate grows by
    /// --step-factor (default 2) every step until p99 or loss exceeds its bound (or the generator
    /// itself becomes the bottleneck); reports the highest sustained deliveries/s.
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
    /// Most websocket handshakes in flight at once (above the server's listen backlog, dropped
    /// SYNs cost a 1 s retransmit: 128 for servers bound with std's defaults, tidechat's
    /// --backlog otherwise, 4096 by default; Linux caps both at net.core.somaxconn).
    #[arg(long, default_value_t = 100, help_heading = "Chat")]
    pub max_handshakes: usize,
    /// Source addresses 127.0.0.1..N for client sockets [default: one per 25,000 clients].
    #[arg(long, help_heading = "Chat")]
    pub source_addrs: Option<u8>,
    /// Time allowed after the senders stop for messages in flight to arrive (senders' own
    /// echoes too).
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
    /// Each step's rate over the last one's (above 1, at most 16): a smaller factor finds the
    /// highest sustained rate more closely, in more steps.
    #[arg(long, default_value_t = DOUBLING, value_parser = parse_step_factor, help_heading = "Step")]
    pub step_factor: f64,
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
    disable_version_flag = true,
    // The last of a repeated single-valued option wins, so a wrapper can append its own (e.g.
    // `scripts/bench` gives the baseline side `--protocol raw` after the common arguments).
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Print two fan-out reports (JSON) side by side with ratios B/A, then exit.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"], help_heading = "Chat")]
    pub compare: Option<Vec<PathBuf>>,
    /// Option for the embedded tidechat (repeatable), e.g. --server-arg=--presence-cap=100. Its
    /// history goes to a fresh temporary directory, removed at the end, unless one is given:
    /// --server-arg=--data-dir=none keeps it in memory.
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

/// Parses `--step-factor`: a number above 1 and at most 16.
fn parse_step_factor(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f > 1.0 && f <= 16.0 => Ok(f),
        Ok(_) => Err("must be above 1 and at most 16".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a duration as humantime reads it (`500ms`, `3s`, `2m`, `1h 30m`) or a bare number of
/// seconds (`3`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("{s:?} is not a duration"))
        };
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 3s or 2m: {e}"))
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
    /// Users started per second (users / ramp).
    pub increase_rate: f64,
    /// Run time goose is given (a test plan's whole length; 0 with `--iterations`).
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
    /// Seconds goose takes to start every user (`--increase-rate`, `--increase-time` or the
    /// test plan up to its peak).
    #[serde(default)]
    pub ramp_s: f64,
    /// `--iterations`: each user runs `chat` (about a second) this many times; then the run
    /// has no run time (`run_time_s` is 0).
    #[serde(default)]
    pub iterations: Option<usize>,
    /// `--test-plan`, as goose writes it (`users,seconds;...`): `users` is its peak,
    /// `run_time_s` its whole length.
    #[serde(default)]
    pub test_plan: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepParams {
    pub step_time_s: f64,
    pub max_steps: usize,
    /// Each step's rate over the last one's (reports from before it was an option doubled).
    #[serde(default = "doubling")]
    pub factor: f64,
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

    /// The rate of step `k`: the first step's, times the factor every step.
    pub fn rate(&self, first: f64, k: usize) -> f64 {
        first * self.factor.powi(k.min(64) as i32)
    }
}

/// `--step-factor`'s default: each step doubles the last one's rate.
const DOUBLING: f64 = 2.0;

fn doubling() -> f64 {
    DOUBLING
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

/// What the harness gives goose as its defaults ([`goose::config::GooseDefault`]): the
/// scenario's load shape where the command line leaves it open, and the metrics this load test
/// wants. A flag given on the command line always wins, and goose validates the result; a
/// default is only given where goose accepts it beside the flags given (none of users,
/// increase rate and run time with `--test-plan`, no increase rate with `--increase-time`, no
/// run time and no `--no-reset-metrics` with `--iterations`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GooseDefaults {
    pub users: Option<usize>,
    pub increase_rate: Option<String>,
    /// Seconds.
    pub run_time: Option<usize>,
    /// Keep the ramp's samples (connect, join) in goose's metrics: goose would reset them once
    /// every user started. Not given with `--test-plan` or `--iterations`, which goose never
    /// resets (and with which it refuses the option).
    pub no_reset_metrics: bool,
    /// Transaction and scenario metrics, unless `--transaction-log` / `--scenario-log` asks
    /// for them (see [`Options::plan`]).
    pub no_transaction_metrics: bool,
    pub no_scenario_metrics: bool,
    /// The telnet Controller stays off (it could change users mid-run, see [`crate::flags`]).
    pub no_telnet: bool,
}

/// A resolved run: its parameters, and goose's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub params: Params,
    pub defaults: GooseDefaults,
}

/// Goose's `--test-plan`, which [`GooseConfiguration`] keeps to itself (`pub(crate)`): read
/// through its serialized form.
pub fn goose_test_plan(goose: &GooseConfiguration) -> Option<TestPlan> {
    let v = serde_json::to_value(goose).ok()?;
    serde_json::from_value(v.get("test_plan")?.clone()).ok()
}

/// Seconds of a goose time span option (`30`, `30s`, `1m30s`), as goose reads it.
fn goose_secs(flag: &str, value: &str) -> anyhow::Result<usize> {
    goose::util::parse_timespan(value)
        .ok_or_else(|| anyhow::anyhow!("{flag} {value:?} is not a time like 30, 30s or 1m30s"))
}

/// The load shape the command line gives goose, before the scenario's defaults: refuses the
/// combinations goose refuses (with goose's reason), so that they fail before any server
/// starts rather than when the attack does.
fn check_shape(goose: &GooseConfiguration, plan: bool) -> anyhow::Result<()> {
    let given = |set: bool, flag: &'static str| set.then_some(flag);
    let iterations = goose.iterations.unwrap_or(0) > 0;
    if plan {
        let conflicting = [
            given(goose.users.is_some(), "--users"),
            given(goose.increase_rate.is_some(), "--increase-rate"),
            given(goose.increase_time.is_some(), "--increase-time"),
            given(goose.run_time.is_some(), "--run-time"),
            given(goose.decrease_rate.is_some(), "--decrease-rate"),
            given(goose.decrease_time.is_some(), "--decrease-time"),
            given(iterations, "--iterations"),
            given(goose.no_reset_metrics, "--no-reset-metrics"),
        ];
        if let Some(flag) = conflicting.into_iter().flatten().next() {
            anyhow::bail!(
                "{flag} can not be set with --test-plan (goose): the plan sets the user counts \
                 and times itself (and goose never resets the metrics of a test plan)"
            );
        }
    }
    if goose.increase_time.is_some() && goose.increase_rate.is_some() {
        anyhow::bail!("--increase-time can not be set with --increase-rate (goose): give one");
    }
    if iterations {
        let conflicting = [
            given(goose.run_time.is_some(), "--run-time"),
            given(goose.decrease_rate.is_some(), "--decrease-rate"),
            given(goose.decrease_time.is_some(), "--decrease-time"),
            given(goose.no_reset_metrics, "--no-reset-metrics"),
        ];
        if let Some(flag) = conflicting.into_iter().flatten().next() {
            anyhow::bail!(
                "{flag} can not be set with --iterations (goose): the run ends when every user \
                 has run its iterations (and goose never resets the metrics of such a run)"
            );
        }
    }
    Ok(())
}

/// Peak users of a test plan, seconds until it first reaches them, and its whole length.
fn plan_shape(plan: &TestPlan) -> (usize, f64, f64) {
    let peak = plan.steps.iter().map(|s| s.0).max().unwrap_or(0);
    let mut ramp_ms = 0;
    let mut total_ms = 0;
    let mut reached = false;
    for &(users, ms) in &plan.steps {
        total_ms += ms;
        if !reached {
            ramp_ms += ms;
            reached = users == peak;
        }
    }
    (peak, ramp_ms as f64 / 1000.0, total_ms as f64 / 1000.0)
}

/// Users per second of a ramp (a ramp of 0 s, which starts them all at once, counts as 1 ms).
fn rate_of(users: usize, ramp_s: f64) -> f64 {
    users as f64 / ramp_s.max(1e-3)
}

impl Options {
    /// Resolves the scenario's defaults against the command line: the run parameters, and
    /// the defaults goose is given ([`GooseDefaults`]). The configuration itself is left as
    /// the command line gave it; goose merges the defaults in and validates. The effective
    /// numbers are computed as goose will: users from `--users`, else the plan's peak, else the
    /// scenario's; the ramp from `--increase-time`, `--increase-rate` or the plan (up to its
    /// peak); the run time from `--run-time` or the plan, none with `--iterations`.
    pub fn plan(&self, goose: &GooseConfiguration) -> anyhow::Result<Plan> {
        crate::flags::check(goose)?;
        let p = preset(self.scenario);
        let test_plan = goose_test_plan(goose);
        check_shape(goose, test_plan.is_some())?;
        let iterations = goose.iterations.filter(|&n| n > 0);
        let mut defaults = GooseDefaults {
            no_reset_metrics: test_plan.is_none() && iterations.is_none(),
            no_transaction_metrics: goose.transaction_log.is_none(),
            no_scenario_metrics: goose.scenario_log.is_none(),
            no_telnet: true,
            ..GooseDefaults::default()
        };

        // Users, the ramp (seconds) and its rate (users per second).
        let (users, ramp_s, increase_rate, plan_s) = match &test_plan {
            Some(plan) => {
                let (peak, ramp_s, total_s) = plan_shape(plan);
                (peak, ramp_s, rate_of(peak, ramp_s), Some(total_s))
            }
            None => {
                let users = goose.users.unwrap_or(p.users);
                if goose.users.is_none() {
                    defaults.users = Some(users);
                }
                let (ramp_s, rate) = match (&goose.increase_time, &goose.increase_rate) {
                    (Some(t), _) => {
                        let secs = goose_secs("--increase-time", t)? as f64;
                        (secs, rate_of(users, secs))
                    }
                    (None, Some(r)) => {
                        let rate = r
                            .trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|r| r.is_finite() && *r > 0.0)
                            .ok_or_else(|| {
                                anyhow::anyhow!("--increase-rate {r:?} is not a number above 0")
                            })?;
                        (users as f64 / rate, rate)
                    }
                    (None, None) => {
                        defaults.increase_rate = Some(p.increase_rate.to_string());
                        (users as f64 / p.increase_rate, p.increase_rate)
                    }
                };
                (users, ramp_s, rate, None)
            }
        };
        anyhow::ensure!(users >= 1, "--users must be at least 1");

        let step = (self.scenario == ScenarioName::Step).then(|| StepParams {
            step_time_s: self.step_time.as_secs_f64(),
            max_steps: self.max_steps.max(1),
            factor: self.step_factor,
            p99_ms: self.step_p99_ms,
            loss: self.step_loss,
        });
        let warmup_s = self
            .warmup_timeout
            .map(|d| d.as_secs_f64())
            .unwrap_or(ramp_s + 15.0);
        // The shape is the scenario's own only when no flag gives the run's end.
        let own_end = goose.run_time.is_none() && test_plan.is_none() && iterations.is_none();
        let hold_s =
            (self.scenario == ScenarioName::Storm && own_end).then_some(p.run_time_s as f64);
        let run_time_s = if let Some(t) = &goose.run_time {
            goose_secs("--run-time", t)? as f64
        } else if let Some(total) = plan_s {
            total
        } else if iterations.is_some() {
            0.0
        } else {
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
            defaults.run_time = Some(secs as usize);
            secs as f64
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
        let params = Params {
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
            ramp_s,
            iterations,
            test_plan: test_plan.map(|t| t.to_string()),
        };
        Ok(Plan { params, defaults })
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
    fn the_last_of_a_repeated_option_wins() {
        let cli = parse([
            "loadtest",
            "--protocol",
            "seed",
            "--users",
            "4",
            "--protocol",
            "raw",
            "--users=5",
            "--server-arg=--a",
            "--server-arg=--b",
        ])
        .unwrap();
        assert_eq!(cli.options.protocol, Protocol::Raw);
        assert_eq!(cli.goose.users, Some(5));
        assert_eq!(cli.server_arg, ["--a", "--b"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn step_rates_grow_by_the_factor() {
        let plan = |extra: &[&str]| {
            let mut args = vec!["loadtest", "--scenario", "step"];
            args.extend(extra);
            let cli = Cli::try_parse_from(args).unwrap();
            cli.options.plan(&cli.goose).unwrap().params.step.unwrap()
        };
        let doubling = plan(&[]);
        assert_eq!(doubling.factor, 2.0);
        assert_eq!(
            (0..4).map(|k| doubling.rate(5.0, k)).collect::<Vec<_>>(),
            [5.0, 10.0, 20.0, 40.0]
        );
        let finer = plan(&["--step-factor", "1.25"]);
        assert_eq!(finer.rate(80.0, 0), 80.0);
        assert_eq!(finer.rate(80.0, 2), 125.0);
        for bad in ["1", "0.5", "17", "x"] {
            let e = Cli::try_parse_from(["loadtest", "--step-factor", bad]).unwrap_err();
            assert!(e.to_string().contains("--step-factor"), "{bad}: {e}");
        }
        // A report written before the option had doubling steps.
        let old: StepParams = serde_json::from_str(
            r#"{"step_time_s":5.0,"max_steps":8,"p99_ms":100.0,"loss":0.001}"#,
        )
        .unwrap();
        assert_eq!(old.factor, 2.0);
    }

    #[test]
    fn goose_flags_and_scenarios_combine() {
        let cli = Cli::try_parse_from([
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
        let plan = cli.options.plan(&cli.goose).unwrap();
        let p = &plan.params;
        assert_eq!(p.users, 50);
        assert_eq!(p.run_time_s, 5.0);
        assert_eq!(p.senders, 1);
        assert_eq!(p.msg_rate, 3.0);
        assert_eq!(p.increase_rate, 1000.0);
        // The scenario's rate goes to goose as a default; the flags given stay flags.
        assert_eq!(
            plan.defaults,
            GooseDefaults {
                users: None,
                increase_rate: Some("1000".into()),
                run_time: None,
                no_reset_metrics: true,
                no_transaction_metrics: true,
                no_scenario_metrics: true,
                no_telnet: true,
            }
        );
        assert_eq!(cli.goose.increase_rate, None);
        assert!(!cli.goose.no_telnet);
    }

    fn plan_of(args: &[&str]) -> anyhow::Result<Plan> {
        let mut argv = vec!["loadtest"];
        argv.extend_from_slice(args);
        let cli = parse(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        cli.options.plan(&cli.goose)
    }

    #[test]
    fn named_scenarios_give_goose_their_shape_as_defaults() {
        // (scenario, users, increase rate, run time goose is given)
        for (name, users, rate, run_time) in [
            ("chat", 1_000, "500", 30),
            ("bigroom", 5_000, "1000", 30),
            // Held 20 s once all connected: an upper bound of 20 + (0.1 + 15) + 5 s.
            ("storm", 10_000, "100000", 41),
            // 8 steps of 5 s + 1.2 s, plus 2 + 15 s for the joins, plus 5 s.
            ("step", 1_000, "500", 72),
        ] {
            let plan = plan_of(&["--scenario", name]).unwrap();
            let d = &plan.defaults;
            assert_eq!(d.users, Some(users), "{name}");
            assert_eq!(d.increase_rate.as_deref(), Some(rate), "{name}");
            assert_eq!(d.run_time, Some(run_time), "{name}");
            assert!(d.no_reset_metrics && d.no_telnet, "{name}");
            let p = &plan.params;
            assert_eq!(p.users, users, "{name}");
            assert_eq!(p.run_time_s, run_time as f64, "{name}");
            assert_eq!(p.ramp_s, users as f64 / rate.parse::<f64>().unwrap());
            assert_eq!(p.hold_s.is_some(), name == "storm", "{name}");
            assert_eq!((p.iterations, p.test_plan.as_deref()), (None, None));
        }
    }

    #[test]
    fn explicit_shape_flags_replace_the_defaults() {
        let plan = plan_of(&["--users", "7", "--increase-rate", "2", "--run-time", "1m"]).unwrap();
        assert_eq!(
            (
                plan.defaults.users,
                &plan.defaults.increase_rate,
                plan.defaults.run_time
            ),
            (None, &None, None)
        );
        let p = &plan.params;
        assert_eq!(
            (p.users, p.increase_rate, p.ramp_s, p.run_time_s),
            (7, 2.0, 3.5, 60.0)
        );
        assert_eq!(p.warmup_timeout_s, 18.5);

        // --increase-time: the ramp is that time, no rate is given.
        let plan = plan_of(&["--users", "10", "--increase-time", "2s"]).unwrap();
        assert_eq!(plan.defaults.increase_rate, None);
        assert_eq!(plan.defaults.run_time, Some(30));
        assert_eq!((plan.params.ramp_s, plan.params.increase_rate), (2.0, 5.0));

        // storm with --run-time: no hold, the run time is goose's.
        let plan = plan_of(&["--scenario", "storm", "--run-time", "5"]).unwrap();
        assert_eq!((plan.params.hold_s, plan.defaults.run_time), (None, None));
    }

    #[test]
    fn test_plan_gives_users_ramp_and_run_time() {
        let plan = plan_of(&["--test-plan", "6,1s;6,2s;0,1s"]).unwrap();
        let p = &plan.params;
        assert_eq!((p.users, p.ramp_s, p.run_time_s), (6, 1.0, 4.0));
        assert_eq!(p.increase_rate, 6.0);
        assert_eq!(p.test_plan.as_deref(), Some("6,1;6,2;0,1"));
        assert_eq!(p.warmup_timeout_s, 16.0);
        // Goose is given no shape (it would refuse users, rate or run time beside a plan), and
        // no --no-reset-metrics (it never resets a plan's metrics, and refuses the flag).
        let d = &plan.defaults;
        assert_eq!((d.users, &d.increase_rate, d.run_time), (None, &None, None));
        assert!(!d.no_reset_metrics);
        // The peak, and the time to first reach it.
        let plan = plan_of(&["--test-plan", "2,1s;8,3s;4,1s;8,1s;0,0"]).unwrap();
        let p = &plan.params;
        assert_eq!((p.users, p.ramp_s, p.run_time_s), (8, 4.0, 6.0));
    }

    #[test]
    fn iterations_have_no_run_time() {
        let plan = plan_of(&["--users", "4", "--iterations", "2"]).unwrap();
        let p = &plan.params;
        assert_eq!((p.iterations, p.run_time_s), (Some(2), 0.0));
        let d = &plan.defaults;
        assert_eq!(
            (d.users, d.run_time, d.no_reset_metrics),
            (None, None, false)
        );
        assert_eq!(d.increase_rate.as_deref(), Some("500"));
        // storm with --iterations: the iterations end the run, not the hold.
        let plan = plan_of(&["--scenario", "storm", "--iterations", "3"]).unwrap();
        assert_eq!(plan.params.hold_s, None);
    }

    #[test]
    fn goose_refusals_come_before_the_run_with_goose_reason() {
        for (args, needle) in [
            (
                &["--test-plan", "6,1s", "--users", "3"][..],
                "--users can not be set with --test-plan",
            ),
            (
                &["--test-plan", "6,1s", "--no-reset-metrics"],
                "--no-reset-metrics can not be set with --test-plan",
            ),
            (
                &["--iterations", "2", "--run-time", "3"],
                "--run-time can not be set with --iterations",
            ),
            (
                &["--iterations", "2", "--no-reset-metrics"],
                "--no-reset-metrics can not be set with --iterations",
            ),
            (
                &["--increase-time", "2", "--increase-rate", "3"],
                "--increase-time can not be set with --increase-rate",
            ),
            (
                &["--increase-rate", "x"],
                "--increase-rate \"x\" is not a number",
            ),
            (&["--run-time", "soon"], "--run-time \"soon\" is not a time"),
            (&["--throttle-requests", "5"], "no HTTP requests"),
        ] {
            let err = plan_of(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
