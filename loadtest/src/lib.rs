//! loadtest: thousands of simulated chat clients (goose users) measuring a chat server's fan-out
//! latency, loss and cost.
//!
//! # Layout
//! - [`config`]: command line (goose's options flattened beside ours), named scenarios, [`Params`].
//! - [`run`]: state one run's clients share: rooms, senders' counters, the start barrier.
//! - [`client`]: one simulated client as goose transactions (connect / chat / drain), the message
//!   stamp and its cheap parser.
//! - [`metrics`]: sharded HDR histograms, per-receiver sequence tracking, tallies.
//! - [`report`]: the fan-out report (JSON, terminal table, HTML with plots); [`compare`] puts two
//!   side by side.
//! - [`embedded`]: the tidechat server started when no `--host` is given.
//! - [`sys`]: CPU and memory from `/proc`, the open-file limit.
//! - [`ws`]: the clients' minimal websocket (fixed receive buffer; why, with measurements).
//!
//! [`execute`] runs one load test and returns its [`Report`]; `main.rs` only parses the command
//! line, builds the runtime and writes the files.

pub mod client;
pub mod compare;
pub mod config;
pub mod embedded;
pub mod metrics;
pub mod report;
pub mod run;
pub mod sys;
pub mod ws;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use goose::config::GooseConfiguration;
use goose::prelude::*;

pub use config::{Cli, Options, Params, Protocol, ScenarioName, ServerMode};
use embedded::Embedded;
use metrics::{distribution, Percentiles};
pub use report::Report;
use report::{Connections, Cost, Deliveries, Environment, Sends, StepResult, Target, TimePoint};
use run::Run;

/// Name prefixes of the threads that belong to an embedded server in thread mode (async-std's
/// executor, async-io's reactor, the blocking pool, our accept-loop thread).
fn is_server_thread(name: &str) -> bool {
    name.starts_with("async-") || name.starts_with("blocking-") || name.starts_with("tidechat")
}

/// How often the timeline takes a point.
const TICK: Duration = Duration::from_secs(1);

/// The result of [`execute`]: the report, and goose's verdict (an error when a `--threshold`
/// failed or goose could not run).
pub struct Outcome {
    pub report: Report,
    pub goose_error: Option<String>,
}

/// Where the load goes, and how its cost is measured.
struct Setup {
    url: String,
    server: String,
    server_pid: Option<u32>,
    /// Keeps the embedded server running until the end.
    _embedded: Option<Embedded>,
}

fn ws_url(host: &str, protocol: Protocol) -> anyhow::Result<String> {
    let rest = host
        .strip_prefix("ws://")
        .or_else(|| host.strip_prefix("http://"))
        .ok_or_else(|| anyhow::anyhow!("--host {host}: use ws://HOST:PORT or http://HOST:PORT"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = match path {
        "" | "/" => match protocol {
            Protocol::V1 => "/ws",
            Protocol::Seed => "/chatSocket",
        },
        p => p,
    };
    Ok(format!("ws://{hostport}{path}"))
}

/// Runs one load test as the options and goose configuration say; `exe` is this program (for the
/// process server mode; without it the embedded server runs on threads).
pub async fn execute(
    options: &Options,
    mut goose: GooseConfiguration,
    exe: Option<PathBuf>,
    server_args: &[String],
) -> anyhow::Result<Outcome> {
    let (nofile, _) = sys::raise_nofile();
    let params = options.resolve(&mut goose)?;
    let setup = match &goose.host {
        Some(host) => Setup {
            url: ws_url(host, params.protocol)?,
            server: "external".into(),
            server_pid: options.server_pid,
            _embedded: None,
        },
        None => {
            let embedded = match (options.server_mode, exe) {
                (ServerMode::Process, Some(exe)) => Embedded::start_process(&exe, server_args)?,
                _ => Embedded::start_thread(embedded::load_config(server_args)?)?,
            };
            goose.host = Some(embedded.http_url());
            Setup {
                url: ws_url(&embedded.http_url(), params.protocol)?,
                server: if embedded.pid.is_some() {
                    "process"
                } else {
                    "thread"
                }
                .into(),
                server_pid: embedded.pid,
                _embedded: Some(embedded),
            }
        }
    };
    if (params.users as u64) * 2 + 100 > nofile && setup.server == "thread" {
        log::warn!(
            "open-file limit {nofile} is low for {} clients plus an in-process server",
            params.users
        );
    } else if params.users as u64 + 100 > nofile {
        log::warn!(
            "open-file limit {nofile} is below {} clients: raise `ulimit -n`",
            params.users
        );
    }
    let thread_mode = setup.server == "thread";
    let cpu = CpuMeter {
        thread_mode,
        server_pid: setup.server_pid,
    };
    let started_unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (rss_before, _) = sys::self_rss();
    let anon_before = sys::process_rss_anon(std::process::id());
    let server_rss_start = setup.server_pid.and_then(sys::process_rss).map(|r| r.0);
    let server_anon_start = setup.server_pid.and_then(sys::process_rss_anon);
    let (gen_cpu0, srv_cpu0) = cpu.read();

    let run = Run::new(params.clone(), setup.url.clone());
    let wall = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let peak_server_rss = Arc::new(Mutex::new(server_rss_start));
    let sampler = tokio::spawn(sample_timeline(
        run.clone(),
        cpu.clone(),
        done.clone(),
        timeline.clone(),
        peak_server_rss.clone(),
    ));
    let warmup = {
        let run = run.clone();
        let t = Duration::from_secs_f64(params.warmup_timeout_s);
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            run.start_sending();
        })
    };
    let stepper = params
        .step
        .is_some()
        .then(|| tokio::spawn(step_controller(run.clone(), cpu.clone(), done.clone())));

    let holder = params.hold_s.map(|hold| {
        let (run, done) = (run.clone(), done.clone());
        tokio::spawn(async move {
            while run.send_start().is_none() && !done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let end = Instant::now() + Duration::from_secs_f64(hold);
            while Instant::now() < end && !done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !done.load(Ordering::Acquire) {
                goose::trigger_killswitch("storm: held");
            }
        })
    });
    let goose_result = attack(&run, goose).await;
    if let Some(h) = holder {
        h.abort();
    }
    done.store(true, Ordering::Release);
    warmup.abort();
    let _ = sampler.await;
    let step_outcome = match stepper {
        Some(h) => h.await.ok(),
        None => None,
    };
    let (gen_cpu1, srv_cpu1) = cpu.read();
    let wall_s = wall.elapsed().as_secs_f64();
    let (_, gen_peak) = sys::self_rss();
    if let Some(pid) = setup.server_pid {
        if let Some((_, hwm)) = sys::process_rss(pid) {
            let mut p = peak_server_rss.lock().unwrap_or_else(|e| e.into_inner());
            *p = Some(p.unwrap_or(0).max(hwm));
        }
    }
    let server_rss_peak = *peak_server_rss.lock().unwrap_or_else(|e| e.into_inner());

    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|e| e.into_inner()));
    let mut report = build_report(
        &run,
        started_unix_s,
        Target {
            url: setup.url.clone(),
            server: setup.server.clone(),
            server_pid: setup.server_pid,
        },
        nofile,
        timeline,
    );
    let deliveries = report.deliveries.tally.received.max(1) as f64;
    let gen_cpu = gen_cpu1 - gen_cpu0;
    let server_cpu = match (srv_cpu0, srv_cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    report.cost = Cost {
        wall_s,
        generator_cpu_s: gen_cpu,
        server_cpu_s: server_cpu,
        generator_us_per_delivery: (report.deliveries.tally.received > 0)
            .then(|| gen_cpu * 1e6 / deliveries),
        server_us_per_delivery: server_cpu
            .filter(|_| report.deliveries.tally.received > 0)
            .map(|s| s * 1e6 / deliveries),
        generator_peak_rss: gen_peak,
        generator_bytes_per_client: per_client(&report.timeline, rss_before, |p| {
            Some(p.generator_rss)
        }),
        memory_includes_server: thread_mode,
        server_rss_start,
        server_rss_peak,
        server_bytes_per_connection: server_rss_start
            .and_then(|start| per_client(&report.timeline, start, |p| p.server_rss)),
        generator_anon_bytes_per_client: anon_before
            .and_then(|start| per_client(&report.timeline, start, |p| p.generator_rss_anon)),
        server_anon_bytes_per_connection: server_anon_start
            .and_then(|start| per_client(&report.timeline, start, |p| p.server_rss_anon)),
    };
    if let Some(outcome) = step_outcome {
        finish_steps(&run, &mut report, outcome);
    }
    add_warnings(&mut report);
    Ok(Outcome {
        report,
        goose_error: goose_result.err().map(|e| e.to_string()),
    })
}

/// Builds and runs the goose attack of one run.
async fn attack(run: &Arc<Run>, goose: GooseConfiguration) -> Result<(), GooseError> {
    let connect: TransactionFunction = {
        let run = run.clone();
        Arc::new(move |user| {
            let run = run.clone();
            Box::pin(async move { client::connect(&run, user).await })
        })
    };
    let chat: TransactionFunction = {
        let run = run.clone();
        Arc::new(move |user| {
            let run = run.clone();
            Box::pin(async move { client::chat(&run, user).await })
        })
    };
    let drain: TransactionFunction = {
        let run = run.clone();
        Arc::new(move |user| {
            let run = run.clone();
            Box::pin(async move { client::drain(&run, user).await })
        })
    };
    let scenario = scenario!("ChatClient")
        .register_transaction(Transaction::new(connect).set_name("connect").set_on_start())
        .register_transaction(Transaction::new(chat).set_name("chat"))
        .register_transaction(Transaction::new(drain).set_name("drain").set_on_stop());
    GooseAttack::initialize_with_config(goose)?
        // One HTTP client for all users (goose builds one per user otherwise); none is used.
        .set_client_builder_without_cookies(
            goose::client::GooseClientBuilder::new().without_cookies(),
        )?
        .register_scenario(scenario)
        .execute()
        .await?;
    Ok(())
}

/// Memory per open connection: (resident memory at the timeline point with the most connections
/// open, the last such point - `before`) / connections open then.
fn per_client(
    timeline: &[TimePoint],
    before: u64,
    rss: impl Fn(&TimePoint) -> Option<u64>,
) -> Option<f64> {
    let most = timeline.iter().map(|p| p.open).max().filter(|&n| n > 0)?;
    let point = timeline.iter().rev().find(|p| p.open == most)?;
    Some(rss(point)?.saturating_sub(before) as f64 / most as f64)
}

/// Reads generator and server CPU seconds.
#[derive(Clone)]
struct CpuMeter {
    thread_mode: bool,
    server_pid: Option<u32>,
}

impl CpuMeter {
    fn read(&self) -> (f64, Option<f64>) {
        let total = sys::self_cpu_s();
        if self.thread_mode {
            let server = sys::threads_cpu_s(is_server_thread);
            (total - server, Some(server))
        } else {
            (total, self.server_pid.and_then(sys::process_cpu_s))
        }
    }
}

/// Takes a timeline point every second until `done`.
async fn sample_timeline(
    run: Arc<Run>,
    cpu: CpuMeter,
    done: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<TimePoint>>>,
    peak_server_rss: Arc<Mutex<Option<u64>>>,
) {
    let mut last = Instant::now();
    let (mut gen0, mut srv0) = cpu.read();
    let mut machine0 = sys::machine_busy_s();
    let mut sends0 = run.sends.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(TICK);
    tick.tick().await;
    while !done.load(Ordering::Acquire) {
        tick.tick().await;
        let dt = last.elapsed().as_secs_f64().max(1e-3);
        last = Instant::now();
        let (gen, srv) = cpu.read();
        let machine = sys::machine_busy_s();
        let h = run.shards.merged(true, |s| &mut s.fanout_interval);
        let p = Percentiles::of(&h);
        let sends = run.sends.load(Ordering::Relaxed);
        let server_rss = cpu.server_pid.and_then(sys::process_rss).map(|r| r.0);
        if let Some(rss) = server_rss {
            let mut peak = peak_server_rss.lock().unwrap_or_else(|e| e.into_inner());
            *peak = Some(peak.unwrap_or(0).max(rss));
        }
        let point = TimePoint {
            t_s: run.epoch.elapsed().as_secs_f64(),
            open: run.open.load(Ordering::Relaxed),
            deliveries_per_s: h.len() as f64 / dt,
            sends_per_s: (sends - sends0) as f64 / dt,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
            max_ms: p.max_ms,
            generator_cpu: (gen - gen0) / dt,
            server_cpu: match (srv, srv0) {
                (Some(b), Some(a)) => Some((b - a) / dt),
                _ => None,
            },
            other_cpu: match (machine, machine0, srv, srv0) {
                (Some(m1), Some(m0), Some(s1), Some(s0)) => {
                    Some(((m1 - m0) - (s1 - s0) - (gen - gen0)).max(0.0) / dt)
                }
                _ => None,
            },
            generator_rss: sys::self_rss().0,
            server_rss,
            generator_rss_anon: sys::process_rss_anon(std::process::id()),
            server_rss_anon: cpu.server_pid.and_then(sys::process_rss_anon),
        };
        gen0 = gen;
        srv0 = srv;
        machine0 = machine;
        sends0 = sends;
        out.lock().unwrap_or_else(|e| e.into_inner()).push(point);
    }
}

/// CPU seconds used during one step: generator, server, whole machine.
type StepCpu = (f64, Option<f64>, Option<f64>);

/// What the step controller measured and decided.
#[derive(Default)]
struct StepOutcome {
    /// CPU seconds (generator, server, whole machine) used during each step that ran to its
    /// end.
    cpu: Vec<StepCpu>,
    /// The step that ended the run early (over a bound or generator-bound).
    stopped_at: Option<usize>,
    reason: Option<String>,
}

/// `step` scenario: reads CPU at each step's start and end, judges each step a grace period
/// after its end (senders pause meanwhile, see [`run::step_pause_s`]), and stops the senders
/// and the run at the first step over a bound or limited by the generator, or after the last.
async fn step_controller(run: Arc<Run>, cpu: CpuMeter, done: Arc<AtomicBool>) -> StepOutcome {
    let mut out = StepOutcome::default();
    let Some(step) = run.params.step.clone() else {
        return out;
    };
    let start = loop {
        if done.load(Ordering::Acquire) {
            return out;
        }
        if let Some(us) = run.send_start() {
            break run.instant_at(us);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let step_time = Duration::from_secs_f64(step.step_time_s);
    let grace = Duration::from_secs_f64(run::step_grace_s(&step));
    let period = step_time + Duration::from_secs_f64(run::step_pause_s(&step));
    let sleep_until = |at: Instant| {
        let done = done.clone();
        async move {
            while Instant::now() < at {
                if done.load(Ordering::Acquire) {
                    return false;
                }
                let left = at.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(50))).await;
            }
            true
        }
    };
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    for k in 0..step.max_steps {
        let begin = start + period * k as u32;
        if !sleep_until(begin).await {
            return out;
        }
        let (before, machine0) = (cpu.read(), sys::machine_busy_s());
        let end = begin + step_time;
        if !sleep_until(end).await {
            return out;
        }
        let (after, machine1) = (cpu.read(), sys::machine_busy_s());
        out.cpu.push((
            after.0 - before.0,
            after.1.zip(before.1).map(|(a, b)| a - b),
            machine1.zip(machine0).map(|(a, b)| a - b),
        ));
        if k + 1 < step.max_steps {
            run.set_rate(run::step_rate(run.params.msg_rate, k + 1));
        }
        if !sleep_until(end + grace).await {
            return out;
        }
        let r = judge_step(&run, k, out.cpu[k], workers);
        let over = !r.within_bounds;
        if over || r.generator_bottleneck {
            out.stopped_at = Some(k);
            out.reason = Some(match (&r.generator_bottleneck_reason, over) {
                (Some(why), false) => format!("step {k}: the generator was the bottleneck ({why})"),
                (_, true) => format!(
                    "step {k} over a bound: p99 {:.2} ms (bound {}), loss {:.4}% (bound {}%)",
                    r.latency.p99_ms,
                    step.p99_ms,
                    r.loss_ratio * 100.0,
                    step.loss * 100.0
                ),
                (None, false) => unreachable!("checked above"),
            });
            break;
        }
    }
    if out.reason.is_none() {
        out.reason = Some(format!("all {} steps within bounds", step.max_steps));
    }
    run.stop_sending.store(true, Ordering::Release);
    goose::trigger_killswitch("step: done");
    out
}

/// The figures of step `k` as they stand now, and its verdict.
fn judge_step(
    run: &Run,
    k: usize,
    (gen_s, srv_s, machine_s): StepCpu,
    workers: usize,
) -> StepResult {
    // unwrap: `judge_step` is only called for the `step` scenario.
    let step = run.params.step.as_ref().expect("step scenario");
    let secs = step.step_time_s;
    let counts = &run.steps[k];
    let expected = counts.expected.load(Ordering::Acquire);
    let h = run
        .shards
        .merged_steps()
        .get(k)
        .cloned()
        .unwrap_or_else(metrics::new_step_histogram);
    let received = h.len();
    let lost = expected.saturating_sub(received);
    let loss_ratio = lost as f64 / expected.max(1) as f64;
    let latency = Percentiles::of(&h);
    let messages = counts.sent.load(Ordering::Acquire);
    let late_sends = counts.late.load(Ordering::Acquire);
    let send_lag = Percentiles::of(&counts.lag.lock().unwrap_or_else(|e| e.into_inner()));
    let (gen, srv) = (gen_s / secs, srv_s.map(|s| s / secs));
    let senders: usize = run
        .rooms
        .iter()
        .map(|r| {
            r.senders
                .iter()
                .filter(|s| !s.done.load(Ordering::Acquire))
                .count()
        })
        .sum();
    // Less a message per sender: one sent a little late at the step's end falls in the pause.
    let scheduled = senders as f64 * (run::step_rate(run.params.msg_rate, k) * secs - 1.0);
    let reason = bottleneck(
        gen,
        srv,
        sys::cpus(),
        workers,
        messages,
        scheduled,
        send_lag.p99_ms,
    );
    StepResult {
        step: k,
        msg_rate: run::step_rate(run.params.msg_rate, k),
        messages,
        expected,
        received,
        lost,
        loss_ratio,
        deliveries_per_s: received as f64 / secs,
        offered_deliveries_per_s: expected as f64 / secs,
        duration_s: secs,
        within_bounds: expected > 0 && latency.p99_ms <= step.p99_ms && loss_ratio <= step.loss,
        latency,
        generator_cpu_s: gen_s,
        generator_cpu: gen,
        server_cpu_s: srv_s,
        server_cpu: srv,
        other_cpu: machine_s
            .zip(srv_s)
            .map(|(m, s)| ((m - s - gen_s) / secs).max(0.0)),
        send_lag,
        late_sends,
        generator_bottleneck: reason.is_some(),
        generator_bottleneck_reason: reason,
    }
}

/// Senders fell behind when they made fewer than this share of their scheduled sends ...
const SENT_SHARE: f64 = 0.95;
/// ... or the p99 of their lateness against the schedule was above this. (Lateness of a few
/// ms is normal: a sender shares its thread with hundreds of receivers handling a fan-out
/// burst; the stamps carry the actual send time, so it does not enter the latencies.)
const LATE_P99_MS: f64 = 50.0;
/// Other processes using more than this many cores during a step get a warning.
const OTHER_CPU_WARN: f64 = 0.25;
/// The generator is saturated at this share of the cores it can run on.
const SATURATED: f64 = 0.9;

/// Why the load generator was the bottleneck over a window, if it was: `gen` and `srv` are the
/// cores they used (CPU seconds per second), `workers` the generator's runtime threads,
/// `sends` the messages sent and `scheduled` those its senders' schedule asked for.
/// - its CPU reached 90% of the cores it can use (min(workers, cpus)); or
/// - the machine was saturated (generator + server >= 90% of it; they share it when the
///   server's CPU is known) and the generator used more of it than the server; or
/// - its senders fell behind their schedule (fewer than 95% of the scheduled sends made, or a
///   p99 lateness over 50 ms): the offered load was not offered.
pub fn bottleneck(
    gen: f64,
    srv: Option<f64>,
    cpus: usize,
    workers: usize,
    sends: u64,
    scheduled: f64,
    lag_p99_ms: f64,
) -> Option<String> {
    let cores = workers.clamp(1, cpus.max(1)) as f64;
    let machine = cpus.max(1) as f64;
    let mut why = Vec::new();
    if gen >= SATURATED * cores {
        why.push(format!(
            "generator CPU {:.0}% of the {cores} core(s) it can use",
            gen / cores * 100.0
        ));
    } else if let Some(srv) = srv {
        if gen + srv >= SATURATED * machine && gen > srv {
            why.push(format!(
                "machine saturated (generator {:.0}% + server {:.0}% of {machine} cores) and the \
                 generator used more",
                gen * 100.0,
                srv * 100.0
            ));
        }
    }
    if (sends as f64) < SENT_SHARE * scheduled.floor() {
        why.push(format!(
            "senders behind schedule: {sends} of {scheduled:.0} scheduled sends made"
        ));
    }
    if lag_p99_ms > LATE_P99_MS {
        why.push(format!(
            "senders behind schedule: p99 lateness {lag_p99_ms:.1} ms"
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Final per-step figures (deliveries that arrived after a step was judged count too) and the
/// highest sustained rate: the achieved deliveries/s of the last step within both bounds
/// before the first that was not.
fn finish_steps(run: &Run, report: &mut Report, outcome: StepOutcome) {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let mut best = None;
    let mut failed = false;
    for (k, &cpu) in outcome.cpu.iter().enumerate() {
        if outcome.stopped_at.is_some_and(|s| k > s) {
            break;
        }
        let r = judge_step(run, k, cpu, workers);
        if !r.within_bounds {
            failed = true;
        }
        if r.within_bounds && !failed {
            best = Some(r.deliveries_per_s);
        }
        if let Some(why) = &r.generator_bottleneck_reason {
            report
                .generator_bottleneck_reasons
                .push(format!("step {k}: {why}"));
        }
        report.steps.push(r);
    }
    report.generator_bottleneck = report.steps.iter().any(|s| s.generator_bottleneck);
    report.highest_sustained_deliveries_per_s = best;
    report.step_stop_reason = outcome.reason;
}

fn build_report(
    run: &Run,
    started_unix_s: u64,
    target: Target,
    nofile: u64,
    timeline: Vec<TimePoint>,
) -> Report {
    let p = &run.params;
    let tally = run.tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let fanout = run.shards.merged(false, |s| &mut s.fanout);
    let ack = run.shards.merged(false, |s| &mut s.ack);
    let lock = |m: &Mutex<hdrhistogram::Histogram<u64>>| {
        m.lock().unwrap_or_else(|e| e.into_inner()).clone()
    };
    let connect = lock(&run.connect_hist);
    let join = lock(&run.join_hist);
    let lag = lock(&run.send_lag_hist);
    let late = lag.count_between(client::LATE_SEND_US, metrics::MAX_LATENCY_US);
    let start_us = run.send_start().unwrap_or(0);
    let end_us = run.send_end_us.load(Ordering::Acquire);
    let window_s = if end_us > start_us {
        (end_us - start_us) as f64 / 1e6
    } else {
        0.0
    };
    let messages = run.sends.load(Ordering::Acquire);
    let per = |n: u64| {
        if window_s > 0.0 {
            n as f64 / window_s
        } else {
            0.0
        }
    };
    let (kernel, cpu_model) = sys::machine();
    Report {
        report_version: report::REPORT_VERSION,
        started_unix_s,
        params: p.clone(),
        target,
        environment: Environment {
            cpus: sys::cpus(),
            cpu_model,
            kernel,
            loadtest_version: env!("CARGO_PKG_VERSION").into(),
            goose_version: "0.19".into(),
            open_file_limit: nofile,
            release_build: !cfg!(debug_assertions),
        },
        connections: Connections {
            attempted: run.joined.load(Ordering::Acquire) + run.failed.load(Ordering::Acquire),
            joined: run.joined.load(Ordering::Acquire),
            failed: run.failed.load(Ordering::Acquire),
            peak_open: run.peak_open.load(Ordering::Acquire),
            connect: Percentiles::of(&connect),
            connect_distribution: distribution(&connect),
            join: Percentiles::of(&join),
            connect_phase_s: run.last_settled_us.load(Ordering::Acquire) as f64 / 1e6,
            failures: run.connect_failures.snapshot(),
            unexpected_disconnects: run.disconnects.snapshot().values().sum(),
            disconnects: run.disconnects.snapshot(),
            error_frames: run.error_frames.snapshot(),
        },
        deliveries: Deliveries {
            loss_ratio: tally.loss_ratio(),
            per_s: per(tally.received),
            tally,
        },
        latency: Percentiles::of(&fanout),
        latency_distribution: distribution(&fanout),
        ack_latency: Percentiles::of(&ack),
        sends: Sends {
            messages,
            per_s: per(messages),
            window_s,
            lag: Percentiles::of(&lag),
            late,
        },
        cost: Cost::default(),
        steps: Vec::new(),
        highest_sustained_deliveries_per_s: None,
        step_stop_reason: None,
        generator_bottleneck: false,
        generator_bottleneck_reasons: Vec::new(),
        timeline,
        warnings: Vec::new(),
    }
}

fn add_warnings(r: &mut Report) {
    if r.params.step.is_none() {
        // The send window, less its first second (connections settling).
        let start = r.timeline.first().map(|p| p.t_s).unwrap_or(0.0);
        let window: Vec<&TimePoint> = r
            .timeline
            .iter()
            .filter(|p| p.t_s > start + 1.0 && p.sends_per_s > 0.0)
            .collect();
        let n = window.len().max(1) as f64;
        let gen = window.iter().map(|p| p.generator_cpu).sum::<f64>() / n;
        let srv = window
            .iter()
            .map(|p| p.server_cpu)
            .sum::<Option<f64>>()
            .map(|s| s / n);
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(r.environment.cpus);
        // Senders that never connected or dropped out are reported apart (as failures and
        // disconnects); the schedule asked the others for what they sent, within a message.
        if let Some(why) = bottleneck(
            gen,
            srv,
            r.environment.cpus,
            workers,
            r.sends.messages,
            0.0,
            r.sends.lag.p99_ms,
        ) {
            r.generator_bottleneck = true;
            r.generator_bottleneck_reasons.push(why);
        }
    }
    if let Some(st) = r
        .steps
        .iter()
        .filter(|s| s.other_cpu.is_some_and(|c| c > OTHER_CPU_WARN))
        .max_by(|a, b| {
            a.other_cpu
                .partial_cmp(&b.other_cpu)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    {
        r.warnings.push(format!(
            "other processes used up to {:.0}% of a core during the steps (step {}): the \
             generator and the server did not have the machine to themselves",
            st.other_cpu.unwrap_or(0.0) * 100.0,
            st.step
        ));
    }
    if r.sends.messages > 0 && r.sends.late as f64 > 0.05 * r.sends.messages as f64 {
        r.warnings.push(format!(
            "{} of {} sends more than 10 ms behind schedule (p99 {:.1} ms): the generator's \
             threads are busy",
            r.sends.late, r.sends.messages, r.sends.lag.p99_ms
        ));
    }
    if r.generator_bottleneck {
        r.warnings.push(format!(
            "INVALID run: the load generator was the bottleneck ({}): the figures are its \
             limits, not the server's",
            r.generator_bottleneck_reasons.join("; ")
        ));
    }
    if let (Some(g), Some(s)) = (
        r.cost.generator_us_per_delivery,
        r.cost.server_us_per_delivery,
    ) {
        if g > s {
            r.warnings.push(format!(
                "the generator spent more CPU per delivery ({g:.2} us) than the server ({s:.2} us)"
            ));
        }
    }
    if r.connections.failed > 0 {
        r.warnings.push(format!(
            "{} clients failed to connect or join: {:?}",
            r.connections.failed, r.connections.failures
        ));
    }
    if !r.connections.disconnects.is_empty() {
        r.warnings.push(format!(
            "connections ended before the run did: {:?}",
            r.connections.disconnects
        ));
    }
    if r.deliveries.tally.lost > 0 {
        r.warnings.push(format!(
            "{} deliveries lost ({:.4}%)",
            r.deliveries.tally.lost,
            r.deliveries.loss_ratio * 100.0
        ));
    }
    if !r.environment.release_build {
        r.warnings
            .push("debug build: measure with `cargo run --release -p loadtest`".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_bottleneck_rules() {
        // 2 cores, 2 worker threads, server on the same machine.
        assert_eq!(bottleneck(0.3, Some(0.9), 2, 2, 1000, 1000.0, 1.0), None);
        // Its own threads saturated.
        assert!(bottleneck(1.85, Some(0.1), 2, 2, 1000, 1000.0, 1.0).is_some());
        // One worker thread: 0.95 of a core is saturated.
        assert!(bottleneck(0.95, None, 2, 1, 1000, 1000.0, 1.0).is_some());
        // Machine saturated, generator the larger share: bottleneck; server the larger: not.
        assert!(bottleneck(1.0, Some(0.9), 2, 2, 1000, 1000.0, 1.0).is_some());
        assert_eq!(bottleneck(0.8, Some(1.1), 2, 2, 1000, 1000.0, 1.0), None);
        // Senders behind schedule: too few sends, or too late.
        let few = bottleneck(0.2, Some(0.2), 2, 2, 900, 1000.0, 1.0).unwrap();
        assert!(few.contains("900 of 1000"), "{few}");
        assert!(bottleneck(0.2, Some(0.2), 2, 2, 1000, 1000.0, 80.0).is_some());
        // A message short of the schedule is its edge, not a lag.
        assert_eq!(bottleneck(0.2, Some(0.2), 2, 2, 19, 20.0, 20.0), None);
    }

    #[test]
    fn ws_urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:3000", Protocol::V1).unwrap(),
            "ws://127.0.0.1:3000/ws"
        );
        assert_eq!(
            ws_url("ws://127.0.0.1:3000/", Protocol::Seed).unwrap(),
            "ws://127.0.0.1:3000/chatSocket"
        );
        assert_eq!(
            ws_url("ws://h:1/custom", Protocol::V1).unwrap(),
            "ws://h:1/custom"
        );
        assert!(ws_url("https://h", Protocol::V1).is_err());
    }
}
