//! A/B benchmark of the tidechat server for CI and release checks (`scripts/bench`).
//!
//! Builds the candidate (this working tree: `tidechat` and `loadtest`, release) and the baseline
//! (a git revision, in its own worktree and target dir: only `tidechat`; or a prebuilt binary,
//! `--baseline-tidechat`; or any server command, `--baseline-cmd`), then runs the *candidate's*
//! loadtest against a fresh server per run, alternating **A B B A** (baseline, candidate,
//! candidate, baseline, baseline, candidate, ...; see [`order`]), so only the server differs and
//! linear drift of the machine hits both sides alike. Each tidechat gets a free 127.0.0.1 port and
//! the load-test settings (rate limit and connection caps raised) through `TIDECHAT_*`
//! environment variables, which older revisions without a given flag simply ignore, and a fresh
//! data directory of the run's own (`TIDECHAT_DATA_DIR`, removed after the run, so runs never
//! share history); a side's `--baseline-env` / `--candidate-env` come after them. The gate
//! ([`gate`]) then decides.
//!
//! # The decision rule and why
//!
//! 1. **Validity before invariants.** A run *disturbed* by the machine is invalid on either side
//!    (excluded, reported, never failed; its invariant results are only reported): the report's
//!    `generator_bottleneck` (generator CPU saturated, senders behind schedule), the CPU-derived
//!    generator bottleneck ([`measure::derive_bottleneck`]), or other processes using more than
//!    [`gate::MAX_OTHER_CPU`] = 0.25 cores on average while messages were sent
//!    (`timeline[].other_cpu`; `--max-other-cpu` to change it).
//! 2. **Invariants** on undisturbed runs: a report with every field the gate reads
//!    ([`measure`] fails closed), every client connected, nothing lost, duplicated, out of order
//!    or foreign, no early disconnect. Broken on the candidate: FAIL. On the baseline: the run
//!    is excluded.
//! 3. **Per metric**, a one-sided *exact* Mann-Whitney rank test between the two sides' valid
//!    runs ([`stats`]), and a regression only when **both** its p-value is at most
//!    [`stats::ALPHA`] = 1% **and** the medians changed past the metric's threshold and floor
//!    (table below). Under the null hypothesis (identical servers, exchangeable runs) a metric
//!    then fails at most at the test's exact size `P(U >= u*)`, computed for the actual numbers
//!    of valid runs and printed per metric. A metric is gated only when that rate can be at most
//!    1%; otherwise it is *inconclusive*. Improvements: the same test the other way, never a
//!    failure.
//! 4. **Overall**: FAIL (exit 1) on a broken invariant of an undisturbed candidate run or a
//!    regression; INCONCLUSIVE (exit 0, `bench: INCONCLUSIVE: ...` naming the invalid runs and
//!    why) when the valid runs are too few for a gated rate; else PASS.
//!
//! Why: the earlier rule (medians past the threshold and 75% of run pairs agreeing) passed two
//! identical servers as "dominated" about 20% of the time per metric at 3 runs a side, and checked
//! invariants before the bottleneck exclusion, so one lost delivery in a starved run failed CI.
//! The rank test's false-failure rate is exact whatever the metrics' distributions, and the
//! thresholds keep a significant but negligible change (e.g. +3% CPU, every run) from failing.
//!
//! Computed false-failure rates per metric (ties, rare for these measured floats, count half):
//!
//! | valid runs (baseline vs candidate) | fails when | false-failure rate |
//! |---|---|---|
//! | 5 vs 5 (the default, also `--quick`) | U >= 24 of 25 | 2/252 = 0.79% |
//! | 4 vs 5 or 5 vs 4 (one run invalid) | U = 20 of 20 | 1/126 = 0.79% |
//! | 4 vs 4, 3 vs 5, fewer | never: best 1/70 = 1.43% | inconclusive |
//! | 6 vs 6 | U >= 33 of 36 | 7/924 = 0.76% |
//!
//! # Gate thresholds and why
//!
//! | metric | regression when (besides p <= 1%) | why |
//! |---|---|---|
//! | deliveries/s | −10% and > 500/s | open-loop senders fix the offered load, so a drop means deliveries arrived late or not at all |
//! | fan-out p99 | +25% and > 2 ms | p99 on two shared cores jitters by several ms between identical runs |
//! | server CPU / M deliveries | +15% and > 0.1 s/M | CPU per delivery is the steadiest cost figure; 0.1 s/M = 0.1 µs per delivery |
//! | server RSS / connection | +15% and > 1 KiB | RSS is page-granular and allocator-dependent; a KiB per connection is noise at 400 clients |
//!
//! # Other baselines
//!
//! `--baseline-cmd 'CMD'` runs any server as the baseline (`sh -c`, `PORT=<free port>`, it must
//! listen on 127.0.0.1:$PORT and serve a websocket at `/ws`; use `exec` so the measured PID is
//! the server's), with `--baseline-protocol raw|seed|v1` (default raw) as the loadtest's
//! `--protocol` for the baseline side only. "tidechat vs uWebSockets" is:
//! `scripts/bench --baseline-cmd 'exec scripts/peer uws'`; the
//! summary's ratio column is then tidechat / uWebSockets. Loadtest arguments after `--` go to
//! both sides and the baseline's `--protocol` comes after them (the loadtest takes the last), so
//! `-- --protocol seed` runs tidechat on the demo's plain-text route against uWebSockets' raw one.
//!
//! # Layout
//!
//! - [`cli`]: the command line, `--quick` defaults, side-specific settings.
//! - [`source`]: baseline revision, its git worktree, cargo builds.
//! - [`proc`]: child processes stopped by PID (SIGTERM, then SIGKILL) and on drop.
//! - [`measure`]: a loadtest fan-out report (JSON) into a [`gate::Run`], failing closed.
//! - [`stats`]: the exact Mann-Whitney distribution, critical values, sizes.
//! - [`gate`]: validity, invariants, rank tests, medians, verdicts: pure, unit-tested.
//! - [`output`]: `summary.md` and github-action-benchmark JSON.

pub mod cli;
pub mod gate;
pub mod measure;
pub mod output;
pub mod proc;
pub mod source;
pub mod stats;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::gate::{Overall, Run, Thresholds};
use crate::proc::Proc;

/// `tidechat` settings for load, as environment variables (the same as the loadtest's embedded
/// server): the per-connection rate limit, the connection caps and the per-address caps raised so
/// the run measures the server, not its abuse protection; warnings only in its log.
pub const SERVER_ENV: &[(&str, &str)] = &[
    ("TIDECHAT_RATE", "1000000"),
    ("TIDECHAT_BURST", "1000000"),
    ("TIDECHAT_MAX_CONNECTIONS", "200000"),
    ("TIDECHAT_MAX_ROOMS", "100000"),
    // Every load client comes from 127.0.0.1.
    ("TIDECHAT_MAX_CONNECTIONS_PER_IP", "200000"),
    ("TIDECHAT_HANDSHAKE_RATE_PER_IP", "1000000"),
    ("TIDECHAT_HANDSHAKE_BURST_PER_IP", "1000000"),
    ("TIDECHAT_MAX_HTTP_CONNECTIONS", "20000"),
    ("TIDECHAT_MAX_HTTP_CONNECTIONS_PER_IP", "20000"),
    ("TIDECHAT_LOG_LEVEL", "warn"),
];

/// How the benchmark ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Compared(Overall),
    /// Nothing to compare with (no baseline commit, no server package in it, it did not build).
    Skipped,
}

impl Ending {
    /// 1 on a real regression or broken invariant, else 0.
    pub fn exit_code(self) -> i32 {
        match self {
            Ending::Compared(Overall::Fail) => 1,
            _ => 0,
        }
    }
}

/// Which side a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Baseline,
    Candidate,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Baseline => "baseline",
            Which::Candidate => "candidate",
        }
    }
}

/// The order of `n` runs per side: A B B A A B B A ... (pair `i` is baseline first when `i` is
/// even), so a linear drift of the machine adds the same to both sides' sums.
pub fn order(n: usize) -> Vec<(Which, usize)> {
    (1..=n)
        .flat_map(|i| {
            if i % 2 == 1 {
                [(Which::Baseline, i), (Which::Candidate, i)]
            } else {
                [(Which::Candidate, i), (Which::Baseline, i)]
            }
        })
        .collect()
}

/// How a side's server is started.
#[derive(Debug, Clone, PartialEq)]
pub enum Server {
    /// A tidechat binary, configured through `TIDECHAT_*` variables.
    Tidechat(PathBuf),
    /// `sh -c CMD` with `PORT` set.
    Command(String),
}

/// One side of the comparison.
#[derive(Debug, Clone)]
pub struct Side {
    pub which: Which,
    pub server: Server,
    /// Extra environment of its server (after [`SERVER_ENV`] for tidechat).
    pub env: Vec<(String, String)>,
    /// The loadtest arguments of its runs.
    pub loadtest_args: Vec<String>,
    /// What it was, for the summary.
    pub description: String,
}

fn env_text(env: &[(String, String)]) -> String {
    if env.is_empty() {
        String::new()
    } else {
        let kv: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(", env {}", kv.join(" "))
    }
}

/// The baseline's server and what it is, or why there is nothing to compare with.
enum BaselineServer {
    Ready(Server, String),
    Skipped(String),
}

fn baseline_server(root: &Path, cli: &cli::Cli, out: &Path) -> anyhow::Result<BaselineServer> {
    if let Some(cmd) = &cli.baseline_cmd {
        return Ok(BaselineServer::Ready(
            Server::Command(cmd.clone()),
            format!("command `{cmd}`"),
        ));
    }
    if let Some(path) = &cli.baseline_tidechat {
        anyhow::ensure!(
            path.is_file(),
            "--baseline-tidechat {}: no such file",
            path.display()
        );
        let path = path
            .canonicalize()
            .with_context(|| format!("--baseline-tidechat {}", path.display()))?;
        let d = format!("tidechat binary {}", path.display());
        return Ok(BaselineServer::Ready(Server::Tidechat(path), d));
    }
    let Some(baseline) = source::resolve_baseline(root, cli.baseline.as_deref())? else {
        return Ok(BaselineServer::Skipped(
            "no baseline commit (HEAD has no parent and no merge base)".into(),
        ));
    };
    let src = out.join("baseline-src");
    source::worktree(root, &baseline.commit, &src)?;
    if !source::has_server(&src) {
        source::remove_worktree(root, &src);
        return Ok(BaselineServer::Skipped(format!(
            "baseline {} has no `server` package to benchmark",
            source::short(&baseline.commit)
        )));
    }
    let built = source::build(&src, &out.join("baseline-target"), &["tidechat"]);
    source::remove_worktree(root, &src);
    match built {
        Ok(dir) => Ok(BaselineServer::Ready(
            Server::Tidechat(dir.join("tidechat")),
            format!(
                "revision {} ({})",
                source::short(&baseline.commit),
                baseline.how
            ),
        )),
        Err(e) => Ok(BaselineServer::Skipped(format!(
            "the baseline does not build, nothing to compare with: {e:#}"
        ))),
    }
}

/// Runs the whole benchmark for the workspace at `root`.
pub fn run(root: &Path, cli: &cli::Cli) -> anyhow::Result<Ending> {
    let started = Instant::now();
    proc::raise_nofile_limit();
    let target = source::target_dir(root)?;
    let out = cli.out.clone().unwrap_or_else(|| target.join("bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let (base_server, base_what) = match baseline_server(root, cli, &out)? {
        BaselineServer::Ready(s, d) => (s, d),
        BaselineServer::Skipped(why) => {
            println!("bench: skipped: {why}");
            return Ok(Ending::Skipped);
        }
    };
    let candidate_bin = source::build(root, &target, &["tidechat", "loadtest"])?;
    let loadtest = candidate_bin.join("loadtest");
    let dirty = if source::is_dirty(root) {
        " (with uncommitted changes)"
    } else {
        ""
    };
    let protocol = cli
        .baseline_protocol()
        .map(|p| format!(", loadtest --protocol {p}"))
        .unwrap_or_default();
    let baseline = Side {
        which: Which::Baseline,
        server: base_server,
        env: cli.baseline_env.clone(),
        loadtest_args: cli.side_args(true),
        description: format!("{base_what}{}{protocol}", env_text(&cli.baseline_env)),
    };
    let candidate = Side {
        which: Which::Candidate,
        server: Server::Tidechat(candidate_bin.join("tidechat")),
        env: cli.candidate_env.clone(),
        loadtest_args: cli.side_args(false),
        description: format!(
            "working tree at {}{dirty}{}",
            source::short_head(root),
            env_text(&cli.candidate_env)
        ),
    };
    println!("bench: baseline: {}", baseline.description);
    println!("bench: candidate: {}", candidate.description);

    let reports = out.join("reports");
    if reports.exists() {
        std::fs::remove_dir_all(&reports)?;
    }
    std::fs::create_dir_all(&reports)?;
    let n = cli.runs();
    let mut t = Thresholds::defaults();
    if let Some(c) = cli.max_other_cpu {
        t.max_other_cpu = c;
    }
    let plan = order(n);
    let labels: Vec<String> = plan
        .iter()
        .map(|(w, i)| format!("{}-{i}", w.name()))
        .collect();
    println!(
        "bench: order (A B B A, so linear drift hits both sides alike): {}",
        labels.join(" ")
    );
    let (mut base_runs, mut cand_runs) = (Vec::new(), Vec::new());
    for (which, i) in plan {
        let side = match which {
            Which::Baseline => &baseline,
            Which::Candidate => &candidate,
        };
        let label = format!("{}-{i}", which.name());
        let r = one_run(
            &label,
            &root.join("static"),
            side,
            &loadtest,
            &reports,
            cli.run_timeout,
        )?;
        println!("bench: {}", run_line(&r, &t));
        match which {
            Which::Baseline => base_runs.push(r),
            Which::Candidate => cand_runs.push(r),
        }
    }

    let outcome = gate::evaluate(&base_runs, &cand_runs, &t);
    let ctx = output::Context {
        scenario: cli.scenario.clone(),
        loadtest_args: cli.loadtest_args(),
        runs_per_side: n,
        order: labels,
        baseline: baseline.description.clone(),
        candidate: candidate.description.clone(),
        wall_s: started.elapsed().as_secs_f64(),
        reports_dir: reports.display().to_string(),
    };
    let all: Vec<Run> = base_runs.into_iter().chain(cand_runs).collect();
    let md = output::summary(&ctx, &outcome, &all, &t);
    std::fs::write(out.join("summary.md"), &md)?;
    let entries = output::entries(&ctx, &outcome, &t);
    let write_json = |name: &str, e: &[output::Entry]| -> anyhow::Result<()> {
        std::fs::write(out.join(name), serde_json::to_string_pretty(e)? + "\n")
            .with_context(|| format!("writing {name}"))
    };
    write_json("bench.json", &entries)?;
    write_json(
        "bench-bigger-is-better.json",
        &output::entries_of(&entries, true),
    )?;
    write_json(
        "bench-smaller-is-better.json",
        &output::entries_of(&entries, false),
    )?;
    println!("\n{md}");
    println!(
        "bench: wrote {0}/summary.md, {0}/bench.json (+ bench-bigger-is-better.json, \
         bench-smaller-is-better.json)",
        out.display()
    );
    println!("{}", verdict_line(&outcome));
    Ok(Ending::Compared(outcome.overall))
}

/// The last line: `bench: PASS: ...`, `bench: FAIL: ...` or `bench: INCONCLUSIVE: ...`.
pub fn verdict_line(o: &gate::Outcome) -> String {
    let tail = match o.overall {
        Overall::Inconclusive => " (neither pass nor fail; exit 0)",
        _ => "",
    };
    format!("bench: {}: {}{tail}", o.overall, o.reason)
}

/// One progress line.
fn run_line(r: &Run, t: &Thresholds) -> String {
    let v = gate::violations(r);
    let m = |k| {
        r.metrics
            .get(&k)
            .map(|v| output::fmt_value(k, *v))
            .unwrap_or_else(|| "n/a".into())
    };
    let mut s = format!(
        "{}: {} deliveries/s, p99 {}, CPU {}, RSS/conn {}, other CPU {}",
        r.label,
        m(gate::Metric::DeliveriesPerS),
        m(gate::Metric::P99Ms),
        m(gate::Metric::ServerCpuSPerMDeliveries),
        m(gate::Metric::RssBytesPerConnection),
        r.other_cpu
            .map(|c| format!("{c:.2} cores"))
            .unwrap_or_else(|| "n/a".into())
    );
    if !v.is_empty() {
        s += &format!("  BROKEN: {}", v.join("; "));
    }
    let d = gate::disturbances(r, t);
    if !d.is_empty() {
        s += &format!("  DISTURBED: {}", d.join("; "));
    }
    s
}

/// The command that starts `side`'s server on `addr`, keeping its history in `data_dir` (a
/// fresh directory of this run's own) unless the side's env names another.
fn server_command(side: &Side, addr: SocketAddr, static_dir: &Path, data_dir: &Path) -> Command {
    let mut cmd = match &side.server {
        Server::Tidechat(exe) => {
            let mut cmd = Command::new(exe);
            // Both servers serve the candidate's page: the baseline's default static dir was
            // its worktree, which is gone by now.
            cmd.env("TIDECHAT_BIND", addr.to_string())
                .env("TIDECHAT_STATIC_DIR", static_dir);
            for (k, v) in SERVER_ENV {
                cmd.env(k, v);
            }
            cmd
        }
        Server::Command(c) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(c).env("PORT", addr.port().to_string());
            cmd
        }
    };
    // Its default (`./data`) would be shared by every run, so history would pile up from run to
    // run (and a leftover server would hold the lock). A command that starts a tidechat gets it
    // too; other servers ignore it, and so do revisions from before the durable store.
    cmd.env("TIDECHAT_DATA_DIR", data_dir);
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    for (k, v) in &side.env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the side's server, runs the load test against it, stops it, reads the report.
fn one_run(
    label: &str,
    static_dir: &Path,
    side: &Side,
    loadtest: &Path,
    reports: &Path,
    timeout: Duration,
) -> anyhow::Result<Run> {
    let data = FreshDir::new(reports.join(format!("{label}-data")))?;
    let run = measured_run(label, static_dir, side, loadtest, reports, timeout, &data.0);
    drop(data);
    run
}

/// A directory that does not exist yet (whatever a crashed earlier bench left there is removed)
/// and is removed on drop, once the server that used it has stopped.
struct FreshDir(PathBuf);

impl FreshDir {
    fn new(path: PathBuf) -> anyhow::Result<Self> {
        remove_dir(&path)?;
        Ok(Self(path))
    }
}

impl Drop for FreshDir {
    fn drop(&mut self) {
        if let Err(e) = remove_dir(&self.0) {
            eprintln!("bench: {e:#}");
        }
    }
}

fn remove_dir(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// [`one_run`] with the server's data directory chosen.
fn measured_run(
    label: &str,
    static_dir: &Path,
    side: &Side,
    loadtest: &Path,
    reports: &Path,
    timeout: Duration,
    data_dir: &Path,
) -> anyhow::Result<Run> {
    let port = proc::free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let cmd = server_command(side, addr, static_dir, data_dir);
    let server_log = reports.join(format!("{label}-server.log"));
    let mut server = Proc::spawn(&format!("{label} server"), cmd, &server_log)?;
    if let Err(e) = proc::wait_listening(&mut server, addr) {
        server.stop(proc::STOP_GRACE)?;
        return Ok(Run {
            label: label.into(),
            error: Some(format!("server did not start: {e:#}")),
            ..Run::default()
        });
    }

    let stem = reports.join(label);
    let mut cmd = Command::new(loadtest);
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .arg("--host")
        .arg(format!("ws://{addr}"))
        .arg("--server-pid")
        .arg(server.pid().to_string())
        .arg("--fanout-report")
        .arg(&stem)
        .arg("--report-file")
        .arg(reports.join(format!("{label}-goose.html")))
        .args(&side.loadtest_args);
    println!(
        "bench: {label}: server pid {} on {addr}; {}",
        server.pid(),
        shown(&cmd)
    );
    let mut lt = Proc::spawn(
        &format!("{label} loadtest"),
        cmd,
        &reports.join(format!("{label}-loadtest.log")),
    )?;
    let status = lt.wait_for(timeout)?;
    let mut error = match status {
        None => {
            lt.stop(proc::STOP_GRACE)?;
            Some(format!("loadtest did not finish within {timeout:?}"))
        }
        Some(s) if !s.success() => Some(format!(
            "loadtest exited with {s}: {}",
            lt.log_tail(3).replace('\n', " | ")
        )),
        Some(_) => None,
    };
    if let Some(s) = server.exited()? {
        error.get_or_insert(format!(
            "server exited during the run ({s}): {}",
            server.log_tail(3).replace('\n', " | ")
        ));
    }
    server.stop(proc::STOP_GRACE)?;
    let json = stem.with_extension("json");
    let mut run = match measure::read(label, &json) {
        Ok(r) => r,
        Err(e) => Run {
            label: label.into(),
            error: Some(format!("no usable report: {e:#}")),
            ..Run::default()
        },
    };
    if let Some(e) = error {
        run.error = Some(e);
    }
    Ok(run)
}

/// A command as it would be typed (for the log).
fn shown(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_abba() {
        let o: Vec<String> = order(3)
            .iter()
            .map(|(w, i)| format!("{}{i}", &w.name()[..1]))
            .collect();
        assert_eq!(o, ["b1", "c1", "c2", "b2", "b3", "c3"]);
        assert_eq!(order(5).len(), 10);
        // Linear drift: the positions of each side sum alike over each A B B A block.
        let pos = |w: Which| -> usize {
            order(4)
                .iter()
                .enumerate()
                .filter(|(_, (x, _))| *x == w)
                .map(|(p, _)| p)
                .sum()
        };
        assert_eq!(pos(Which::Baseline), pos(Which::Candidate));
    }

    #[test]
    fn server_commands_carry_side_settings() {
        let addr: SocketAddr = "127.0.0.1:4567".parse().unwrap();
        let env = |c: &Command, k: &str| {
            c.get_envs()
                .find(|(n, _)| *n == k)
                .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        };
        let side = Side {
            which: Which::Candidate,
            server: Server::Tidechat("/bin/tidechat".into()),
            env: vec![("TIDECHAT_MAX_CONNECTIONS".into(), "5".into())],
            loadtest_args: vec![],
            description: String::new(),
        };
        let data = Path::new("/reports/candidate-1-data");
        let c = server_command(&side, addr, Path::new("/static"), data);
        assert_eq!(c.get_program(), "/bin/tidechat");
        // The side's setting overrides the load defaults.
        assert_eq!(env(&c, "TIDECHAT_MAX_CONNECTIONS").as_deref(), Some("5"));
        assert_eq!(env(&c, "TIDECHAT_BIND").as_deref(), Some("127.0.0.1:4567"));
        // Each run's own data directory, unless the side names one (or `none`).
        assert_eq!(
            env(&c, "TIDECHAT_DATA_DIR").as_deref(),
            Some("/reports/candidate-1-data")
        );
        let mut own = side.clone();
        own.env.push(("TIDECHAT_DATA_DIR".into(), "none".into()));
        let c = server_command(&own, addr, Path::new("/static"), data);
        assert_eq!(env(&c, "TIDECHAT_DATA_DIR").as_deref(), Some("none"));
        let side = Side {
            which: Which::Baseline,
            server: Server::Command("exec node server.js".into()),
            env: vec![("X".into(), "1".into())],
            loadtest_args: vec![],
            description: String::new(),
        };
        let c = server_command(&side, addr, Path::new("/static"), data);
        assert_eq!(c.get_program(), "sh");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["-c", "exec node server.js"]);
        assert_eq!(env(&c, "PORT").as_deref(), Some("4567"));
        assert_eq!(env(&c, "X").as_deref(), Some("1"));
        assert_eq!(env(&c, "TIDECHAT_BIND"), None);
        // A command that runs a tidechat does not fall back to a shared ./data either.
        assert_eq!(
            env(&c, "TIDECHAT_DATA_DIR").as_deref(),
            Some("/reports/candidate-1-data")
        );
    }
}
