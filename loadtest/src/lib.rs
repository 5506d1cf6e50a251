//! loadtest: thousands of simulated chat clients (goose users) measuring a chat server's fan-out
//! latency, loss and cost.
//!
//! # Layout
//! - [`config`]: command line (goose's options flattened beside ours), named scenarios, [`Params`].
//! - [`setup`]: the targets (`--host`, several allowed) or the embedded server.
//! - [`attack`]: the goose scenario, the defaults goose is given, and the attack.
//! - [`flags`]: which of goose's own flags work here and which are refused, and why.
//! - [`run`]: state one run's clients share: rooms, senders' counters, the start barrier.
//! - [`client`]: one simulated client as goose transactions (connect / chat / drain).
//! - [`wire`]: what the clients send and how they read what they receive: the message stamp.
//! - [`ws`]: the clients' minimal websocket (fixed receive buffer; why, with measurements).
//! - [`metrics`]: sharded HDR histograms, per-receiver sequence tracking, tallies.
//! - [`sample`]: CPU of the generator and the servers, the once-a-second timeline.
//! - [`step`]: the `step` scenario's controller and per-step verdicts.
//! - [`verdict`]: whether the generator was the bottleneck; the report's warnings.
//! - [`assemble`]: a finished run's figures into its [`Report`].
//! - [`report`]: the fan-out report (JSON, terminal table, HTML with plots); [`compare`] puts two
//!   side by side.
//! - [`embedded`]: the tidechat server started when no `--host` is given.
//! - [`sys`]: CPU and memory from `/proc`, the open-file limit.
//!
//! [`execute`] runs one load test and returns its [`Report`]; `main.rs` only parses the command
//! line, builds the runtime and writes the files.

pub mod assemble;
pub mod attack;
pub mod client;
pub mod compare;
pub mod config;
pub mod embedded;
pub mod flags;
pub mod metrics;
pub mod report;
pub mod run;
pub mod sample;
pub mod setup;
pub mod step;
pub mod sys;
pub mod verdict;
pub mod wire;
pub mod ws;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goose::config::GooseConfiguration;

pub use config::{Cli, Options, Params, Protocol, ScenarioName, ServerMode};
pub use report::Report;
use run::Run;
use sample::CpuMeter;

/// The result of [`execute`]: the report, and goose's verdict (an error when a `--threshold`
/// failed or goose could not run).
pub struct Outcome {
    pub report: Report,
    pub goose_error: Option<String>,
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
    let (params, one_attack) = attack::prepare(options, &goose).await?;
    let setup = setup::prepare(options, &mut goose, exe, server_args)?;
    setup::check_nofile(nofile, params.users, setup.thread_mode);
    let cpu = CpuMeter::new(setup.thread_mode, &setup.server_pids());
    let before = assemble::Before::take(&cpu);

    let run = Run::new(params.clone(), setup.urls());
    let done = Arc::new(AtomicBool::new(false));
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let peak_server_rss = Arc::new(Mutex::new(before.server_rss));
    let sampler = tokio::spawn(sample::timeline(
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
        .then(|| tokio::spawn(step::controller(run.clone(), cpu.clone(), done.clone())));
    let holder = params
        .hold_s
        .map(|hold| tokio::spawn(hold_then_stop(run.clone(), done.clone(), hold)));

    let goose_result = attack::attack(&one_attack, &run, goose).await;
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
    if let Some(hwm) = cpu.servers(|p| sys::process_rss(p).map(|r| r.1)) {
        let mut p = peak_server_rss.lock().unwrap_or_else(|e| e.into_inner());
        *p = Some(p.unwrap_or(0).max(hwm));
    }
    let server_rss_peak = *peak_server_rss.lock().unwrap_or_else(|e| e.into_inner());

    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|e| e.into_inner()));
    let mut report = assemble::report(
        &run,
        before.started_unix_s,
        setup.targets.clone(),
        nofile,
        timeline,
    );
    report.cost = assemble::cost(&before, &cpu, &report, server_rss_peak);
    if let Some(outcome) = step_outcome {
        step::finish(&run, &mut report, outcome);
    }
    verdict::add_warnings(&mut report);
    Ok(Outcome {
        report,
        goose_error: goose_result.err().map(|e| e.to_string()),
    })
}

/// `storm` without `--run-time`: ends the run `hold` seconds after every client connected.
async fn hold_then_stop(run: Arc<Run>, done: Arc<AtomicBool>, hold: f64) {
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
}
