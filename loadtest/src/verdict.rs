//! Whether a run measured the server or the load generator: the bottleneck rules (generator
//! CPU, a saturated machine, senders behind their schedule) and the warnings a report carries.

use crate::report::{Report, TimePoint};

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

/// The run's verdict on itself: whether the generator was the bottleneck, and every warning.
pub fn add_warnings(r: &mut Report) {
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
        // Less a message per sender: one due at the moment a sender stops is the schedule's
        // edge, not a lag.
        let scheduled = (r.sends.scheduled as f64 - r.params.senders as f64).max(0.0);
        if let Some(why) = bottleneck(
            gen,
            srv,
            r.environment.cpus,
            workers,
            r.sends.messages,
            scheduled,
            r.sends.lag.p99_ms,
        ) {
            r.generator_bottleneck = true;
            r.generator_bottleneck_reasons.push(why);
        }
        let other: Vec<f64> = window.iter().filter_map(|p| p.other_cpu).collect();
        if !other.is_empty() {
            let mean = other.iter().sum::<f64>() / other.len() as f64;
            if mean > OTHER_CPU_WARN {
                r.warnings.push(format!(
                    "other processes used {:.0}% of a core on average while sending: the \
                     generator and the server did not have the machine to themselves",
                    mean * 100.0
                ));
            }
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
    let t = &r.deliveries.tally;
    for (n, what) in [
        (t.duplicates, "deliveries received twice"),
        (
            t.out_of_order,
            "deliveries out of order (after a later message of their sender)",
        ),
        (
            t.foreign,
            "messages delivered to the wrong room (or from another run)",
        ),
        (
            t.excess,
            "deliveries beyond what was owed (an accounting error of the load test)",
        ),
        (
            t.unrecognized,
            "frames that were neither a stamped message nor a known frame",
        ),
    ] {
        if n > 0 {
            r.warnings.push(format!("{n} {what}"));
        }
    }
    let excess: u64 = r.steps.iter().map(|s| s.excess).sum();
    if excess > 0 {
        r.warnings.push(format!(
            "{excess} deliveries beyond what the steps owed (an accounting error of the load test)"
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
}
