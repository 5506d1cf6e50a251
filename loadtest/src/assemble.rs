//! Puts a finished run's figures together into its [`Report`]: counts, histograms and the
//! cost of the generator and of the servers.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::metrics::{self, distribution, Percentiles};
use crate::report::{
    self, Connections, Cost, Deliveries, Environment, Report, Sends, Target, TimePoint,
};
use crate::run::Run;
use crate::sample::{per_client, CpuMeter};
use crate::{client, sys};

/// What is measured before the load starts, to subtract at the end.
pub struct Before {
    pub started_unix_s: u64,
    wall: Instant,
    rss: u64,
    anon: Option<u64>,
    pub server_rss: Option<u64>,
    server_anon: Option<u64>,
    gen_cpu: f64,
    srv_cpu: Option<f64>,
}

impl Before {
    pub fn take(cpu: &CpuMeter) -> Self {
        let (gen_cpu, srv_cpu) = cpu.read();
        Self {
            started_unix_s: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            wall: Instant::now(),
            rss: sys::self_rss().0,
            anon: sys::process_rss_anon(std::process::id()),
            server_rss: cpu.server_rss(),
            server_anon: cpu.server_rss_anon(),
            gen_cpu,
            srv_cpu,
        }
    }
}

/// The run's cost: CPU since `before`, memory per client and per connection.
pub fn cost(before: &Before, cpu: &CpuMeter, r: &Report, server_rss_peak: Option<u64>) -> Cost {
    let (gen_cpu1, srv_cpu1) = cpu.read();
    let received = r.deliveries.tally.received;
    let deliveries = received.max(1) as f64;
    let gen_cpu = gen_cpu1 - before.gen_cpu;
    let server_cpu = before.srv_cpu.zip(srv_cpu1).map(|(a, b)| b - a);
    let tl = &r.timeline;
    Cost {
        wall_s: before.wall.elapsed().as_secs_f64(),
        generator_cpu_s: gen_cpu,
        server_cpu_s: server_cpu,
        generator_us_per_delivery: (received > 0).then(|| gen_cpu * 1e6 / deliveries),
        server_us_per_delivery: server_cpu
            .filter(|_| received > 0)
            .map(|s| s * 1e6 / deliveries),
        generator_us_per_delivery_sending: while_sending(tl, |p| Some(p.generator_cpu)),
        server_us_per_delivery_sending: while_sending(tl, |p| p.server_cpu),
        generator_peak_rss: sys::self_rss().1,
        generator_bytes_per_client: per_client(tl, before.rss, |p| Some(p.generator_rss)),
        memory_includes_server: cpu.thread_mode,
        server_rss_start: before.server_rss,
        server_rss_peak,
        server_bytes_per_connection: before
            .server_rss
            .and_then(|start| per_client(tl, start, |p| p.server_rss)),
        generator_anon_bytes_per_client: before
            .anon
            .and_then(|start| per_client(tl, start, |p| p.generator_rss_anon)),
        server_anon_bytes_per_connection: before
            .server_anon
            .and_then(|start| per_client(tl, start, |p| p.server_rss_anon)),
    }
}

/// CPU µs per delivery over the timeline's seconds in which messages were sent, past its
/// first (the seconds over which `scripts/bench` tells a disturbed run): `cores` of each
/// second weighed by its length, over the deliveries in them. `None` without such a second, without a
/// delivery in them, or when `cores` is unknown in one of them.
fn while_sending(tl: &[TimePoint], cores: impl Fn(&TimePoint) -> Option<f64>) -> Option<f64> {
    let start = tl.first()?.t_s;
    let (mut cpu_s, mut deliveries) = (0.0, 0.0);
    for w in tl.windows(2) {
        let p = &w[1];
        if p.t_s <= start + 1.0 || p.sends_per_s <= 0.0 {
            continue;
        }
        let dt = p.t_s - w[0].t_s;
        cpu_s += cores(p)? * dt;
        deliveries += p.deliveries_per_s * dt;
    }
    (deliveries > 0.0).then(|| cpu_s * 1e6 / deliveries)
}

/// The report of a finished run, before its cost, steps and warnings are added.
pub fn report(
    run: &Run,
    started_unix_s: u64,
    targets: Vec<Target>,
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
        targets,
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
            scheduled: run.scheduled_sends.load(Ordering::Acquire),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_s: f64, sends_per_s: f64, deliveries_per_s: f64, server: Option<f64>) -> TimePoint {
        TimePoint {
            t_s,
            open: 10,
            deliveries_per_s,
            sends_per_s,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 3.0,
            generator_cpu: 0.5,
            server_cpu: server,
            other_cpu: None,
            generator_rss: 0,
            server_rss: None,
            generator_rss_anon: None,
            server_rss_anon: None,
        }
    }

    /// The connect phase (no sends) and the first second are left out; each second counts by
    /// its length.
    #[test]
    fn cost_while_sending_leaves_out_the_seconds_without_sends() {
        let tl = [
            point(1.0, 0.0, 0.0, Some(0.9)),
            point(2.0, 0.0, 0.0, Some(0.9)),
            point(3.0, 10.0, 1000.0, Some(0.1)),
            point(5.0, 10.0, 1000.0, Some(0.2)),
            point(6.0, 0.0, 50.0, Some(0.9)),
        ];
        // (0.1 + 0.2 * 2) s over (1000 + 2000) deliveries.
        let us = while_sending(&tl, |p| p.server_cpu).unwrap();
        assert!((us - 0.5e6 / 3000.0).abs() < 1e-6, "{us}");
        let gen = while_sending(&tl, |p| Some(p.generator_cpu)).unwrap();
        assert!((gen - 1.5e6 / 3000.0).abs() < 1e-6, "{gen}");
    }

    #[test]
    fn cost_while_sending_is_unknown_without_sends_or_server_cpu() {
        let quiet = [
            point(1.0, 0.0, 0.0, Some(0.1)),
            point(3.0, 0.0, 0.0, Some(0.1)),
        ];
        assert_eq!(while_sending(&quiet, |p| p.server_cpu), None);
        let blind = [point(1.0, 0.0, 0.0, None), point(3.0, 10.0, 100.0, None)];
        assert_eq!(while_sending(&blind, |p| p.server_cpu), None);
        assert_eq!(while_sending(&[], |p| p.server_cpu), None);
    }
}
