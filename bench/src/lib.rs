//! A/B benchmark of the tidechat server for CI and release checks (`scripts/bench`).
//!
//! Builds the candidate (this working tree: `tidechat` and `loadtest`, release) and the baseline
//! (a git revision, in its own worktree and target dir: only `tidechat`), then for each of N rounds
//! runs the *candidate's* loadtest against a fresh baseline server and then against a fresh
//! candidate server (A B A B ...), so only the server differs and drift of the machine hits both
//! sides alike. Each server gets a free 127.0.0.1 port and the load-test settings (rate limit and
//! connection caps raised) through `TIDECHAT_*` environment variables, which older revisions
//! without a given flag simply ignore. The gate ([`gate`]) then compares the medians.
//!
//! # Gate thresholds and why
//!
//! | metric | regression when | why |
//! |---|---|---|
//! | deliveries/s | −10% and > 500/s | open-loop senders fix the offered load, so a drop means deliveries arrived late or not at all |
//! | fan-out p99 | +25% and > 2 ms | p99 on two shared cores jitters by several ms between identical runs |
//! | server CPU / M deliveries | +15% and > 0.1 s/M | CPU per delivery is the steadiest cost figure; 0.1 s/M = 0.1 µs per delivery |
//! | server RSS / connection | +15% and > 1 KiB | RSS is page-granular and allocator-dependent; a KiB per connection is noise at 400 clients |
//!
//! Past both limits, a regression also needs the runs to agree: the candidate must be worse in at
//! least 75% of the (candidate run, baseline run) pairs ([`gate::MIN_DOMINANCE`]). Otherwise the
//! verdict is *inconclusive* and does not fail: measured with two identical servers, p99 medians
//! differed by 56% because of one 106 ms run beside a 19 ms one. The same changes in the good
//! direction are reported as an improvement. Three runs a side (also `--quick`) keep one outlier
//! from deciding a median.
//!
//! # Layout
//!
//! - [`cli`]: the command line, `--quick` defaults.
//! - [`source`]: baseline revision, its git worktree, cargo builds.
//! - [`proc`]: child processes stopped by PID (SIGTERM, then SIGKILL) and on drop.
//! - [`measure`]: a loadtest fan-out report (JSON) into a [`gate::Run`].
//! - [`gate`]: invariants, medians, ratios, verdicts: pure, unit-tested.
//! - [`output`]: `summary.md` and github-action-benchmark JSON.

pub mod cli;
pub mod gate;
pub mod measure;
pub mod output;
pub mod proc;
pub mod source;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::gate::{Overall, Run, Thresholds};
use crate::proc::Proc;

/// `tidechat` settings for load, as environment variables (the same as the loadtest's embedded
/// server): the per-connection rate limit and the connection caps raised so the run measures the
/// server, not its abuse protection; warnings only in its log.
pub const SERVER_ENV: &[(&str, &str)] = &[
    ("TIDECHAT_RATE", "1000000"),
    ("TIDECHAT_BURST", "1000000"),
    ("TIDECHAT_MAX_CONNECTIONS", "200000"),
    ("TIDECHAT_MAX_ROOMS", "100000"),
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

/// The two sides' binaries.
struct Binaries {
    baseline_tidechat: PathBuf,
    candidate_tidechat: PathBuf,
    loadtest: PathBuf,
}

/// Runs the whole benchmark for the workspace at `root`.
pub fn run(root: &Path, cli: &cli::Cli) -> anyhow::Result<Ending> {
    let started = Instant::now();
    proc::raise_nofile_limit();
    let target = source::target_dir(root)?;
    let out = cli.out.clone().unwrap_or_else(|| target.join("bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let Some(baseline) = source::resolve_baseline(root, cli.baseline.as_deref())? else {
        println!("bench: skipped: no baseline commit (HEAD has no parent and no merge base)");
        return Ok(Ending::Skipped);
    };
    let head = source::short_head(root);
    println!(
        "bench: baseline {} ({}), candidate: working tree at {head}",
        source::short(&baseline.commit),
        baseline.how
    );

    let src = out.join("baseline-src");
    source::worktree(root, &baseline.commit, &src)?;
    if !source::has_server(&src) {
        source::remove_worktree(root, &src);
        println!(
            "bench: skipped: baseline {} has no `server` package to benchmark",
            source::short(&baseline.commit)
        );
        return Ok(Ending::Skipped);
    }
    let candidate_bin = source::build(root, &target, &["tidechat", "loadtest"])?;
    let baseline_bin = match source::build(&src, &out.join("baseline-target"), &["tidechat"]) {
        Ok(dir) => dir,
        Err(e) => {
            source::remove_worktree(root, &src);
            println!("bench: skipped: the baseline does not build, nothing to compare with: {e:#}");
            return Ok(Ending::Skipped);
        }
    };
    source::remove_worktree(root, &src);
    let bins = Binaries {
        baseline_tidechat: baseline_bin.join("tidechat"),
        candidate_tidechat: candidate_bin.join("tidechat"),
        loadtest: candidate_bin.join("loadtest"),
    };

    let reports = out.join("reports");
    if reports.exists() {
        std::fs::remove_dir_all(&reports)?;
    }
    std::fs::create_dir_all(&reports)?;
    let args = cli.loadtest_args();
    let n = cli.runs();
    let (mut base_runs, mut cand_runs) = (Vec::new(), Vec::new());
    for i in 1..=n {
        for (side, exe) in [
            ("baseline", &bins.baseline_tidechat),
            ("candidate", &bins.candidate_tidechat),
        ] {
            let label = format!("{side}-{i}");
            let r = one_run(
                &label,
                &root.join("static"),
                exe,
                &bins.loadtest,
                &args,
                &reports,
                cli.run_timeout,
            )?;
            println!("bench: {}", run_line(&r));
            if side == "baseline" {
                base_runs.push(r);
            } else {
                cand_runs.push(r);
            }
        }
    }

    let t = Thresholds::defaults(n.div_ceil(2));
    let outcome = gate::evaluate(&base_runs, &cand_runs, &t);
    let dirty = if source::is_dirty(root) {
        " (with uncommitted changes)"
    } else {
        ""
    };
    let ctx = output::Context {
        scenario: cli.scenario.clone(),
        loadtest_args: args,
        runs_per_side: n,
        baseline: format!("{} ({})", source::short(&baseline.commit), baseline.how),
        candidate: format!("working tree at {head}{dirty}"),
        wall_s: started.elapsed().as_secs_f64(),
        reports_dir: reports.display().to_string(),
    };
    let all: Vec<Run> = base_runs.into_iter().chain(cand_runs).collect();
    let md = output::summary(&ctx, &outcome, &all, &t);
    std::fs::write(out.join("summary.md"), &md)?;
    let entries = output::entries(&ctx, &outcome);
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
    Ok(Ending::Compared(outcome.overall))
}

/// One progress line.
fn run_line(r: &Run) -> String {
    let v = gate::violations(r);
    let m = |k| {
        r.metrics
            .get(&k)
            .map(|v| output::fmt_value(k, *v))
            .unwrap_or_else(|| "n/a".into())
    };
    let mut s = format!(
        "{}: {} deliveries/s, p99 {}, CPU {}, RSS/conn {}",
        r.label,
        m(gate::Metric::DeliveriesPerS),
        m(gate::Metric::P99Ms),
        m(gate::Metric::ServerCpuSPerMDeliveries),
        m(gate::Metric::RssBytesPerConnection)
    );
    if !v.is_empty() {
        s += &format!("  BROKEN: {}", v.join("; "));
    }
    if let Some(why) = &r.generator_bottleneck {
        s += &format!("  GENERATOR BOTTLENECK: {why}");
    }
    s
}

/// Starts `tidechat`, runs the load test against it, stops it, reads the report.
fn one_run(
    label: &str,
    static_dir: &Path,
    tidechat: &Path,
    loadtest: &Path,
    args: &[String],
    reports: &Path,
    timeout: Duration,
) -> anyhow::Result<Run> {
    let port = proc::free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut cmd = Command::new(tidechat);
    // Both servers serve the candidate's page: the baseline's default static dir was its
    // worktree, which is gone by now.
    cmd.env("TIDECHAT_BIND", addr.to_string())
        .env("TIDECHAT_STATIC_DIR", static_dir)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    for (k, v) in SERVER_ENV {
        cmd.env(k, v);
    }
    let server_log = reports.join(format!("{label}-server.log"));
    let mut server = Proc::spawn(&format!("{label} tidechat"), cmd, &server_log)?;
    proc::wait_listening(&mut server, addr)?;

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
        .args(args);
    println!(
        "bench: {label}: tidechat pid {} on {addr}; {}",
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
            "tidechat exited during the run ({s}): {}",
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
