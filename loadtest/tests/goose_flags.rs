//! Goose's own flags beside the scenario's: short real runs against the embedded tidechat (on
//! threads of this process), one goose shape flag each; goose's report files; refusals.

mod common;

use std::path::PathBuf;

use common::load;
use loadtest::Report;

/// Every delivery owed was received: none lost or repeated.
fn assert_no_loss(r: &Report, users: usize) {
    let t = &r.deliveries.tally;
    assert_eq!(r.connections.joined, users, "{:?}", r.connections);
    assert!(r.sends.messages > 0, "{:?}", r.sends);
    assert!(t.expected > 0, "{t:?}");
    assert_eq!(t.received, t.expected, "{t:?}");
    assert_eq!((t.lost, t.duplicates, t.out_of_order), (0, 0, 0), "{t:?}");
}

/// The error `execute` gives for these arguments.
async fn refusal(args: &[&str]) -> String {
    let mut argv = vec![
        "loadtest",
        "--quiet",
        "--no-print-metrics",
        "--server-mode",
        "thread",
    ];
    argv.extend_from_slice(args);
    let cli = loadtest::config::parse(argv).expect("valid arguments");
    match loadtest::execute(&cli.options, cli.goose, None, &[]).await {
        Ok(o) => panic!("{args:?} ran: {:?}", o.goose_error),
        Err(e) => e.to_string(),
    }
}

fn temp_stem(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadtest-{name}-{}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increase_time() {
    let r = load(&[
        "--server-mode",
        "thread",
        "--users",
        "6",
        "--increase-time",
        "1s",
        "--run-time",
        "2",
        "--senders",
        "2",
        "--msg-rate",
        "10",
    ])
    .await;
    assert_eq!((r.params.ramp_s, r.params.increase_rate), (1.0, 6.0));
    assert_no_loss(&r, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_plan() {
    let r = load(&[
        "--server-mode",
        "thread",
        "--test-plan",
        "6,1s;6,2s;0,1s",
        "--senders",
        "2",
        "--msg-rate",
        "10",
    ])
    .await;
    let p = &r.params;
    assert_eq!((p.users, p.ramp_s, p.run_time_s), (6, 1.0, 4.0));
    assert_eq!(p.test_plan.as_deref(), Some("6,1;6,2;0,1"));
    assert_no_loss(&r, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterations() {
    let r = load(&[
        "--server-mode",
        "thread",
        "--users",
        "6",
        "--increase-rate",
        "100",
        "--iterations",
        "2",
        "--senders",
        "2",
        "--msg-rate",
        "10",
    ])
    .await;
    assert_eq!((r.params.iterations, r.params.run_time_s), (Some(2), 0.0));
    assert_no_loss(&r, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_scenario() {
    let r = load(&[
        "--server-mode",
        "thread",
        "--scenario",
        "bigroom",
        "--users",
        "5",
        "--increase-rate",
        "50",
        "--run-time",
        "1",
    ])
    .await;
    let p = &r.params;
    assert_eq!((p.users, p.increase_rate, p.run_time_s), (5, 50.0, 1.0));
    // Still bigroom's: one sender at 20 msg/s.
    assert_eq!((p.senders, p.msg_rate), (1, 20.0));
    assert_no_loss(&r, 5);
}

/// Goose's own reports keep the ramp's samples: a connect and a join for every user (goose
/// would reset its metrics when the ramp ends; `--no-reset-metrics` is the default here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goose_reports_keep_the_ramp() {
    let stem = temp_stem("goose-report");
    let (html, json) = (stem.with_extension("html"), stem.with_extension("json"));
    let r = load(&[
        "--server-mode",
        "thread",
        "--users",
        "6",
        "--increase-rate",
        "4",
        "--run-time",
        "1",
        "--senders",
        "1",
        "--msg-rate",
        "5",
        "--report-file",
        html.to_str().unwrap(),
        "--report-file",
        json.to_str().unwrap(),
    ])
    .await;
    assert_no_loss(&r, 6);
    let text = std::fs::read_to_string(&json).expect("goose's JSON report");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let page = std::fs::read_to_string(&html).expect("goose's HTML report");
    // --render-report writes reports from the JSON one, and exits before any server starts.
    let rendered = temp_stem("goose-rendered").with_extension("html");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--quiet", "--render-report", json.to_str().unwrap()])
        .args(["--report-file", rendered.to_str().unwrap()])
        .output()
        .unwrap();
    let again = std::fs::read_to_string(&rendered).unwrap_or_default();
    for f in [&json, &html, &rendered] {
        let _ = std::fs::remove_file(f);
    }
    assert!(out.status.success(), "{out:?}");
    assert!(again.contains(">connect<"), "{out:?}");
    for name in ["connect", "join"] {
        let count = request_count(&report, name)
            .unwrap_or_else(|| panic!("no {name} row in goose's JSON report: {text:.2000}"));
        assert_eq!(count, 6, "{name}: {text:.2000}");
        assert!(
            page.contains(&format!("WS {name}")),
            "{name} not in the HTML report"
        );
    }
}

/// The number of requests of the row named `name` (goose: method `WS`, name `name`) in goose's
/// JSON report.
fn request_count(report: &serde_json::Value, name: &str) -> Option<u64> {
    let rows = report.get("raw_request_metrics")?.as_array()?;
    let row = rows.iter().find(|row| {
        row.get("name").and_then(|n| n.as_str()) == Some(name)
            || row.get("path").and_then(|n| n.as_str()) == Some(name)
    })?;
    row.get("number_of_requests")?.as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_flags_name_the_reason() {
    let e = refusal(&["--throttle-requests", "10"]).await;
    assert!(
        e.contains("--throttle-requests") && e.contains("no HTTP requests"),
        "{e}"
    );
    let e = refusal(&["--scenarios", "chatclient"]).await;
    assert!(e.contains("--scenario chat|bigroom|storm|step"), "{e}");
    let e = refusal(&["--websocket"]).await;
    assert!(e.contains("Controllers are off"), "{e}");
    // A combination goose refuses is refused before the run, with goose's reason.
    let e = refusal(&["--test-plan", "4,1s", "--users", "3"]).await;
    assert!(e.contains("--users can not be set with --test-plan"), "{e}");
    let e = refusal(&["--iterations", "2", "--no-reset-metrics"]).await;
    assert!(
        e.contains("--no-reset-metrics can not be set with --iterations"),
        "{e}"
    );
    // What goose alone refuses, it refuses when the attack starts, saying why.
    let argv = [
        "loadtest",
        "--quiet",
        "--no-print-metrics",
        "--server-mode",
        "thread",
        "--users",
        "1",
        "--increase-time",
        "2",
    ];
    let cli = loadtest::config::parse(argv).unwrap();
    let outcome = loadtest::execute(&cli.options, cli.goose, None, &[])
        .await
        .unwrap();
    let e = outcome
        .goose_error
        .expect("goose refuses one user with --increase-time");
    assert!(e.contains("at least 2"), "{e}");
}

/// `--list` and `--version` print and exit before any server starts.
#[test]
fn information_flags_exit_first() {
    let exe = env!("CARGO_BIN_EXE_loadtest");
    let out = std::process::Command::new(exe)
        .args(["--list", "--server-mode", "thread"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["ChatClient", "connect", "chat", "drain"] {
        assert!(text.contains(name), "{text}");
    }
    let out = std::process::Command::new(exe)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("goose"));
}
