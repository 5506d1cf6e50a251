//! Measuring cost while the load runs: CPU of the generator and of the servers under test, and
//! the timeline (one point a second: connections, deliveries, latency, CPU, memory).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Percentiles;
use crate::report::TimePoint;
use crate::run::Run;
use crate::sys;

/// Name prefixes of the threads that belong to an embedded server in thread mode (async-std's
/// executor, async-io's reactor, the blocking pool, our accept-loop thread).
fn is_server_thread(name: &str) -> bool {
    name.starts_with("async-") || name.starts_with("blocking-") || name.starts_with("tidechat")
}

/// How often the timeline takes a point.
const TICK: Duration = Duration::from_secs(1);

/// Reads generator and server CPU seconds.
#[derive(Clone)]
pub struct CpuMeter {
    /// The server runs on threads of this process (its CPU is told apart by thread name).
    pub thread_mode: bool,
    /// The server processes, each once (one server given as two targets is one process).
    pub server_pids: Vec<u32>,
}

impl CpuMeter {
    pub fn new(thread_mode: bool, pids: &[u32]) -> Self {
        let mut server_pids = pids.to_vec();
        server_pids.sort_unstable();
        server_pids.dedup();
        Self {
            thread_mode,
            server_pids,
        }
    }

    /// (generator CPU seconds, servers' CPU seconds when known).
    pub fn read(&self) -> (f64, Option<f64>) {
        let total = sys::self_cpu_s();
        if self.thread_mode {
            let server = sys::threads_cpu_s(is_server_thread);
            (total - server, Some(server))
        } else {
            (total, self.servers(sys::process_cpu_s))
        }
    }

    /// The sum of `f` over the server processes; `None` without any, or when one is unreadable.
    pub fn servers<T: std::iter::Sum<T>>(&self, f: impl Fn(u32) -> Option<T>) -> Option<T> {
        if self.server_pids.is_empty() {
            return None;
        }
        self.server_pids.iter().map(|&p| f(p)).sum()
    }

    /// Resident memory of the servers now, bytes.
    pub fn server_rss(&self) -> Option<u64> {
        self.servers(|p| sys::process_rss(p).map(|r| r.0))
    }

    /// Anonymous resident memory of the servers now, bytes.
    pub fn server_rss_anon(&self) -> Option<u64> {
        self.servers(sys::process_rss_anon)
    }
}

/// Takes a timeline point every second until `done`; keeps the servers' peak resident memory.
pub async fn timeline(
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
        let server_rss = cpu.server_rss();
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
            server_rss_anon: cpu.server_rss_anon(),
        };
        gen0 = gen;
        srv0 = srv;
        machine0 = machine;
        sends0 = sends;
        out.lock().unwrap_or_else(|e| e.into_inner()).push(point);
    }
}

/// Memory per open connection: (resident memory at the timeline point with the most connections
/// open, the last such point - `before`) / connections open then.
pub fn per_client(
    timeline: &[TimePoint],
    before: u64,
    rss: impl Fn(&TimePoint) -> Option<u64>,
) -> Option<f64> {
    let most = timeline.iter().map(|p| p.open).max().filter(|&n| n > 0)?;
    let point = timeline.iter().rev().find(|p| p.open == most)?;
    Some(rss(point)?.saturating_sub(before) as f64 / most as f64)
}
