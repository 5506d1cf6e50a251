//! What the operating system says about cost: CPU seconds and memory of processes and threads
//! (from `/proc`, Linux), and the open-file limit.

use std::fs;

/// Clock ticks per second of `/proc/*/stat` times.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
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
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_s(&stat)
}

/// utime + stime from a `stat` line (fields 14 and 15, counted after the `(comm)`).
fn stat_cpu_s(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_sec())
}

/// CPU seconds the whole machine has been busy (all CPUs, every process: user, nice, system,
/// irq, softirq, steal), from `/proc/stat`.
pub fn machine_busy_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.get(..3)?.iter().sum::<f64>() + f.get(5..8)?.iter().sum::<f64>();
    Some(busy / ticks_per_sec())
}

/// Resident memory of process `pid` now and at its peak, in bytes.
pub fn process_rss(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Anonymous resident memory of process `pid` (heap, stacks: what its clients or connections
/// cost), in bytes: resident memory less the pages of files such as its own executable, which
/// fill in as code runs for the first time whatever the number of clients.
pub fn process_rss_anon(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn self_rss() -> (u64, u64) {
    process_rss(std::process::id()).unwrap_or((0, 0))
}

/// CPU seconds of this process's live threads whose name matches `pred`, from each thread's
/// scheduler statistics (nanoseconds) or, without them, its `stat` ticks.
pub fn threads_cpu_s(pred: impl Fn(&str) -> bool) -> f64 {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(comm) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !pred(comm.trim()) {
            continue;
        }
        let ns = fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
        total += match ns {
            Some(ns) => ns / 1e9,
            None => fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|s| stat_cpu_s(&s))
                .unwrap_or(0.0),
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
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
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
