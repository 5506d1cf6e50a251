//! The gate's real path: the release `tidechat` and `loadtest` (built here with cargo into the
//! workspace target dir), the real `bench` binary, and the real loadtest report format read by
//! `measure::read`. Small and quick: 20 clients, 2 s of load per run.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use bench::gate::Metric;
use bench::proc::{self, Proc};

/// Load options of every run here.
const LOAD: &[&str] = &["--users", "20", "--run-time", "2s", "--drain", "1s"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/release` with `tidechat` and `loadtest` built (once per test binary).
fn release() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "-p", "server", "-p", "loadtest"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --release failed");
        let dir = bench::source::target_dir(&root).unwrap().join("release");
        for b in ["tidechat", "loadtest"] {
            assert!(dir.join(b).is_file(), "{b} not built in {}", dir.display());
        }
        dir
    })
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bench-it-{}-{name}", std::process::id()));
    if d.exists() {
        std::fs::remove_dir_all(&d).unwrap();
    }
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the real `bench` binary with `args` then `-- LOAD`, bounded in time.
fn bench(out: &Path, args: &[&str]) -> (Output, String) {
    let log = out.join("bench.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench"));
    cmd.current_dir(root())
        .arg("--out")
        .arg(out)
        .arg("--run-timeout")
        .arg("120s")
        .args(args)
        .arg("--")
        .args(LOAD);
    let mut p = Proc::spawn("bench", cmd, &log).unwrap();
    let status = p
        .wait_for(Duration::from_secs(600))
        .unwrap()
        .unwrap_or_else(|| {
            p.stop(proc::STOP_GRACE).unwrap();
            panic!(
                "bench did not finish in 10 minutes:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    let text = std::fs::read_to_string(&log).unwrap();
    (
        Output {
            status,
            stdout: text.clone().into_bytes(),
            stderr: Vec::new(),
        },
        text,
    )
}

fn verdict_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| {
            ["bench: PASS:", "bench: FAIL:", "bench: INCONCLUSIVE:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .unwrap_or_else(|| panic!("no verdict line in:\n{text}"))
        .to_string()
}

fn tidechat() -> PathBuf {
    release().join("tidechat")
}

#[test]
fn a_against_a_with_two_runs_a_side_is_inconclusive_by_the_rate_rule() {
    let out = scratch("aa");
    let t = tidechat();
    // Other load on this shared machine must not decide this test: the bound is lifted, so
    // the runs are valid unless the generator itself was starved, and 2 vs 2 (or fewer) valid
    // runs allow no false-failure rate <= 1% (the best is 1/6).
    let (o, text) = bench(
        &out,
        &[
            "--baseline-tidechat",
            t.to_str().unwrap(),
            "--runs",
            "2",
            "--max-other-cpu",
            "64",
            // For the store's opening line in each server's log.
            "--baseline-env",
            "TIDECHAT_LOG_LEVEL=info",
            "--candidate-env",
            "TIDECHAT_LOG_LEVEL=info",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{text}");
    // Every run's server had a data directory of its own, empty at its start (the second run
    // of a side does not see the first one's messages), removed after the run.
    let reports = out.join("reports");
    for label in ["baseline-1", "candidate-1", "candidate-2", "baseline-2"] {
        let log = std::fs::read_to_string(reports.join(format!("{label}-server.log"))).unwrap();
        let own = format!(
            "history store {}: 0 rooms, 0 messages,",
            reports.join(format!("{label}-data")).display()
        );
        assert!(log.contains(&own), "{label}: no {own:?} in:\n{log}");
    }
    let left: Vec<_> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-data"))
        .collect();
    assert!(left.is_empty(), "data directories left behind: {left:?}");
    let line = verdict_line(&text);
    assert!(line.starts_with("bench: INCONCLUSIVE: "), "{line}");
    assert!(
        line.contains("valid runs allow no false-failure rate <= 1%"),
        "{line}"
    );
    assert!(
        text.contains(
            "bench: order (A B B A, so linear drift hits both sides alike): \
             baseline-1 candidate-1 candidate-2 baseline-2"
        ),
        "{text}"
    );
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("## tidechat benchmark: INCONCLUSIVE"), "{md}");
    assert!(
        md.contains(&format!("- baseline: tidechat binary {}", t.display())),
        "{md}"
    );
    assert!(md.contains("- candidate: working tree at "), "{md}");
    assert!(md.contains("not gated: "), "{md}");
    assert!(!md.contains("REGRESSION"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    let entries = json.as_array().unwrap();
    if line.contains("2 baseline vs 2 candidate valid runs") {
        assert!(
            line.contains("(best 16.67%); every run was valid"),
            "{line}"
        );
        assert_eq!(entries.len(), 4, "{json:#}");
        for e in entries {
            let extra = e["extra"].as_str().unwrap();
            assert!(
                extra.contains("verdict inconclusive (too few valid runs); overall INCONCLUSIVE"),
                "{extra}"
            );
            assert!(extra.contains("not gated: 2 vs 2 valid runs"), "{extra}");
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_candidate_that_refuses_clients_fails_with_the_invariant_named() {
    let out = scratch("broken");
    let t = tidechat();
    let (o, text) = bench(
        &out,
        &[
            "--baseline-tidechat",
            t.to_str().unwrap(),
            "--candidate-env",
            "TIDECHAT_MAX_CONNECTIONS=5",
            "--runs",
            "1",
            "--max-other-cpu",
            "64",
        ],
    );
    let line = verdict_line(&text);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        line.starts_with("bench: FAIL: invariant broken on candidate-1: "),
        "{line}"
    );
    assert!(line.contains("of 20 clients connected"), "{line}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("## tidechat benchmark: FAIL"), "{md}");
    assert!(md.contains("env TIDECHAT_MAX_CONNECTIONS=5"), "{md}");
    assert!(
        md.contains("| candidate-1 | invariant broken: ") && md.contains("clients connected"),
        "{md}"
    );
    assert!(md.contains("| baseline-1 | valid |"), "{md}");
    std::fs::remove_dir_all(&out).unwrap();
}

fn assert_complete(r: &bench::gate::Run) {
    for m in Metric::ALL {
        assert!(
            r.metrics.get(&m).is_some_and(|v| v.is_finite() && *v > 0.0),
            "{} missing in {r:#?}",
            m.name()
        );
    }
    assert!(r.other_cpu.is_some(), "{r:#?}");
    assert_eq!(r.facts.users, 20);
    assert_eq!(r.facts.joined, 20, "{r:#?}");
    assert!(r.facts.expected > 0);
    assert!(bench::gate::violations(r).is_empty(), "{r:#?}");
}

fn loadtest(dir: &Path, name: &str, extra: &[String]) {
    let mut cmd = Command::new(release().join("loadtest"));
    cmd.current_dir(root())
        .args(LOAD)
        .arg("--fanout-report")
        .arg(dir.join(name))
        .arg("--report-file")
        .arg(dir.join(format!("{name}-goose.html")))
        .args(extra);
    let log = dir.join(format!("{name}.log"));
    let mut p = Proc::spawn("loadtest", cmd, &log).unwrap();
    let s = p.wait_for(Duration::from_secs(120)).unwrap();
    if s.is_none() {
        p.stop(proc::STOP_GRACE).unwrap();
    }
    assert!(
        s.is_some_and(|s| s.success()),
        "loadtest {s:?}:\n{}",
        p.log_tail(30)
    );
}

#[test]
fn the_real_report_has_every_field_the_gate_reads() {
    let dir = scratch("report");
    // 1. The loadtest's own server process (no --host).
    loadtest(&dir, "process", &[]);
    let r = bench::measure::read("process", &dir.join("process.json")).unwrap();
    assert_complete(&r);

    // 2. A tidechat started here, with --host and --server-pid.
    let port = proc::free_port().unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut cmd = Command::new(tidechat());
    cmd.env("TIDECHAT_BIND", addr.to_string())
        .env("TIDECHAT_STATIC_DIR", root().join("static"))
        .env("TIDECHAT_DATA_DIR", dir.join("tidechat-data"));
    for (k, v) in bench::SERVER_ENV {
        cmd.env(k, v);
    }
    let mut server = Proc::spawn("tidechat", cmd, &dir.join("tidechat.log")).unwrap();
    proc::wait_listening(&mut server, addr).unwrap();
    loadtest(
        &dir,
        "external",
        &[
            "--host".into(),
            format!("ws://{addr}"),
            "--server-pid".into(),
            server.pid().to_string(),
        ],
    );
    server.stop(proc::STOP_GRACE).unwrap();
    let r = bench::measure::read("external", &dir.join("external.json")).unwrap();
    assert_complete(&r);
    std::fs::remove_dir_all(&dir).unwrap();
}
