//! The `step` scenario in-process, small: against the embedded tidechat (every step within the
//! bounds) and against a test server that delays every delivery and turns lossy above a rate
//! (the highest sustained step must be the one before the loss started).
//!
//! One test function runs both in turn: the step controller ends a run with goose's killswitch,
//! which is global to the process, so step runs must not overlap with other load tests.

mod common;

use common::{faulty_server, load, Faults};
use loadtest::Report;
use std::time::Duration;

/// What every step of a clean run must show.
fn assert_step_counted(r: &Report, k: usize, users: u64) {
    let st = &r.steps[k];
    assert_eq!(st.step, k);
    assert!(st.messages > 0, "{st:?}");
    // Each message of the step is owed to every member but its sender, and every delivery is
    // counted in the step that sent it, also those still in flight when the next step began.
    assert_eq!(st.expected, st.messages * (users - 1), "{st:?}");
    assert_eq!((st.received, st.lost), (st.expected, 0), "{st:?}");
    assert_eq!(st.latency.count, st.received);
    assert!(
        (st.deliveries_per_s - st.offered_deliveries_per_s).abs() < 1e-9,
        "{st:?}"
    );
    assert!(st.within_bounds, "{st:?}");
    assert!(st.generator_cpu_s > 0.0, "{st:?}");
}

/// Senders x rate x step time, give or take a message per sender at each end.
fn assert_rate(r: &Report, k: usize, senders: u64) {
    let st = &r.steps[k];
    let want = st.msg_rate * st.duration_s * senders as f64;
    assert!(
        (st.messages as f64 - want).abs() <= 2.0 * senders as f64,
        "step {k}: {} messages, want about {want}",
        st.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_scenario() {
    // 1. The embedded tidechat: 3 steps, each 1.5x the last, all within the bounds.
    let r = load(&[
        "--scenario",
        "step",
        "--server-mode",
        "thread",
        "--users",
        "20",
        "--increase-rate",
        "1000",
        "--senders",
        "2",
        "--msg-rate",
        "5",
        "--step-time",
        "1s",
        "--max-steps",
        "3",
        "--step-factor",
        "1.5",
    ])
    .await;
    assert_eq!(r.params.message_size, 64, "the perf issue's message size");
    assert_eq!(r.steps.len(), 3, "{}", r.summary());
    for k in 0..3 {
        assert_step_counted(&r, k, 20);
        assert_rate(&r, k, 2);
        assert!(
            r.steps[k].server_cpu_s.unwrap_or(0.0) > 0.0,
            "{:?}",
            r.steps[k]
        );
    }
    assert_eq!(r.steps[1].msg_rate, 7.5);
    assert_eq!(r.steps[2].msg_rate, 11.25);
    assert_eq!(
        r.highest_sustained_deliveries_per_s,
        Some(r.steps[2].deliveries_per_s)
    );
    assert!(
        r.step_stop_reason
            .as_deref()
            .is_some_and(|s| s.contains("all 3 steps")),
        "{:?}",
        r.step_stop_reason
    );
    // The run stopped after the last step, not at goose's --run-time (an upper bound).
    assert!(r.cost.wall_s < r.params.run_time_s, "{:?}", r.cost);
    let summary = r.summary();
    assert!(
        summary.contains("achieved/s") && summary.contains("highest sustained"),
        "{summary}"
    );
    let html = r.html();
    assert!(html.contains("<h2>Steps</h2>") && html.contains("Deliveries per second by step"));
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert!(json["generator_bottleneck"].is_boolean());
    assert!(json["steps"][0]["generator_bottleneck"].is_boolean());
    assert!(
        json["steps"][0]["offered_deliveries_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(json["highest_sustained_deliveries_per_s"].as_f64().unwrap() > 0.0);

    // 2. A server that delays every delivery by 300 ms (so that at every step's end 30% of its
    // deliveries are still in flight) and drops messages that arrive faster than 60/s: steps
    // of 20 and 40 msg/s are clean, the one at 80 msg/s is lossy.
    let server = faulty_server(Faults {
        delay_all: Duration::from_millis(300),
        lossy_above: Some(60.0),
        ..Faults::default()
    })
    .await;
    let r = load(&[
        "--scenario",
        "step",
        "--host",
        &server.url,
        "--protocol",
        "seed",
        "--users",
        "20",
        "--increase-rate",
        "1000",
        "--senders",
        "2",
        "--msg-rate",
        "10",
        "--step-time",
        "1s",
        "--max-steps",
        "4",
        "--step-p99-ms",
        "1000",
    ])
    .await;
    assert_eq!(r.steps.len(), 3, "stops at the lossy step\n{}", r.summary());
    for k in 0..2 {
        assert_step_counted(&r, k, 20);
        assert_rate(&r, k, 2);
        assert!(r.steps[k].latency.p50_ms >= 300.0, "{:?}", r.steps[k]);
    }
    let lossy = &r.steps[2];
    assert!(!lossy.within_bounds && lossy.lost > 0, "{lossy:?}");
    assert_eq!(lossy.lost, lossy.expected - lossy.received);
    assert_eq!(
        r.highest_sustained_deliveries_per_s,
        Some(r.steps[1].deliveries_per_s),
        "{}",
        r.summary()
    );
    assert!(
        r.step_stop_reason
            .as_deref()
            .is_some_and(|s| s.starts_with("step 2 over a bound")),
        "{:?}",
        r.step_stop_reason
    );
}
