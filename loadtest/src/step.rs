//! The `step` scenario: the rate grows by `--step-factor` every step; each step is measured
//! alone (senders pause while it is judged), and the run stops at the first step over its p99 or
//! loss bound, or where the generator itself became the bottleneck.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{self, Percentiles};
use crate::report::{Report, StepResult};
use crate::run::Run;
use crate::sample::CpuMeter;
use crate::{sys, verdict};

/// CPU seconds used during one step: generator, server, whole machine.
pub type StepCpu = (f64, Option<f64>, Option<f64>);

/// What the step controller measured and decided.
#[derive(Default)]
pub struct StepOutcome {
    /// CPU seconds (generator, server, whole machine) used during each step that ran to its
    /// end.
    cpu: Vec<StepCpu>,
    /// The step that ended the run early (over a bound or generator-bound).
    stopped_at: Option<usize>,
    reason: Option<String>,
}

/// `step` scenario: reads CPU at each step's start and end, judges each step a grace period
/// after its end (senders pause meanwhile, see [`crate::config::StepParams::pause_s`]), and stops the senders
/// and the run at the first step over a bound or limited by the generator, or after the last.
pub async fn controller(run: Arc<Run>, cpu: CpuMeter, done: Arc<AtomicBool>) -> StepOutcome {
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
    let grace = Duration::from_secs_f64(step.grace_s());
    let period = step_time + Duration::from_secs_f64(step.pause_s());
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
            run.set_rate(step.rate(run.params.msg_rate, k + 1));
        }
        if !sleep_until(end + grace).await {
            return out;
        }
        let r = judge(&run, k, out.cpu[k], workers);
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
pub fn judge(
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
    // Never hidden by the saturation above: more received than owed is an accounting error.
    let excess = received.saturating_sub(expected);
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
    let scheduled = senders as f64 * (step.rate(run.params.msg_rate, k) * secs - 1.0);
    let reason = verdict::bottleneck(
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
        msg_rate: step.rate(run.params.msg_rate, k),
        messages,
        expected,
        received,
        lost,
        excess,
        loss_ratio,
        deliveries_per_s: received as f64 / secs,
        offered_deliveries_per_s: expected as f64 / secs,
        duration_s: secs,
        within_bounds: expected > 0
            && excess == 0
            && latency.p99_ms <= step.p99_ms
            && loss_ratio <= step.loss,
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

/// Final per-step figures (deliveries that arrived after a step was judged count too) and the
/// highest sustained rate: the achieved deliveries/s of the last step within both bounds
/// before the first that was not.
pub fn finish(run: &Run, report: &mut Report, outcome: StepOutcome) {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let mut best = None;
    let mut failed = false;
    for (k, &cpu) in outcome.cpu.iter().enumerate() {
        if outcome.stopped_at.is_some_and(|s| k > s) {
            break;
        }
        let r = judge(run, k, cpu, workers);
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
