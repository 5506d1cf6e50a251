//! What the operating system says about cost: CPU seconds and memory of processes and threads
//! (from `/proc` through the `procfs` crate, Linux), and the open-file limit.

use std::fs;

use procfs::process::Process;
use procfs::{Current as _, CurrentSI as _};

/// Seconds of `ticks` clock ticks (`/proc/*/stat` times).
fn ticks_s(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// User + system CPU seconds of this process (all threads, live and exited).
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// User + system CPU seconds of process `pid`, if it exists.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    Some(ticks_s(stat.utime + stat.stime))
}

/// CPU seconds the whole machine has been busy (all CPUs, every process: user, nice, system,
/// irq, softirq, steal), from `/proc/stat`.
pub fn machine_busy_s() -> Option<f64> {
    let t = procfs::KernelStats::current().ok()?.total;
    let busy = t.user
        + t.nice
        + t.system
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    Some(ticks_s(busy))
}

/// Resident memory of process `pid` now and at its peak, in bytes.
pub fn process_rss(pid: u32) -> Option<(u64, u64)> {
    let status = Process::new(i32::try_from(pid).ok()?).ok()?.status().ok()?;
    Some((status.vmrss? * 1024, status.vmhwm? * 1024))
}

/// Anonymous resident memory of process `pid` (heap, stacks: what its clients or connections
/// cost), in bytes: resident memory less the pages of files such as its own executable, which
/// fill in as code runs for the first time whatever the number of clients.
pub fn process_rss_anon(pid: u32) -> Option<u64> {
    let status = Process::new(i32::try_from(pid).ok()?).ok()?.status().ok()?;
    Some(status.rssanon? * 1024)
}

pub fn self_rss() -> (u64, u64) {
    process_rss(std::process::id()).unwrap_or((0, 0))
}

/// CPU seconds of this process's live threads whose name matches `pred`, from each thread's
/// scheduler statistics (nanoseconds) or, without them, its `stat` ticks.
pub fn threads_cpu_s(pred: impl Fn(&str) -> bool) -> f64 {
    let Ok(tasks) = Process::myself().and_then(|p| p.tasks()) else {
        return 0.0;
    };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let Ok(stat) = task.stat() else { continue };
        if !pred(&stat.comm) {
            continue;
        }
        total += match task.schedstat() {
            Ok(s) => s.sum_exec_runtime as f64 / 1e9,
            Err(_) => ticks_s(stat.utime + stat.stime),
        };
    }
    total
}

/// Returns memory the allocator holds but no longer uses to the operating system (glibc's
/// `malloc_trim`; nothing elsewhere). Called once the clients have connected: the connect
/// phase's short-lived allocations (a handshake future per waiting client, presence frames)
/// otherwise stay resident as holes in the heap for the whole run.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft open-file limit to the hard limit; returns (soft, hard) afterwards.
pub fn raise_nofile() -> (u64, u64) {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return (0, 0);
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
        (r.rlim_cur as u64, r.rlim_max as u64)
    }
}

/// CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A line about the machine: kernel and CPU model.
pub fn machine() -> (String, String) {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu = procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_string))
        .unwrap_or_default();
    (kernel, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed().as_millis() < 30 {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(self_cpu_s() > 0.0);
        assert!(process_cpu_s(std::process::id()).is_some());
        let (rss, peak) = self_rss();
        assert!(rss > 0 && peak >= rss);
        let anon = process_rss_anon(std::process::id()).unwrap();
        assert!(anon > 0 && anon <= rss);
        assert!(threads_cpu_s(|_| true) > 0.0);
        assert!(machine_busy_s().unwrap() > 0.0);
    }
}
