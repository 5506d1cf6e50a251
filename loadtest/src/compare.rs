//! `--compare A.json B.json`: two fan-out reports side by side, with the ratio B/A.

use std::fmt::Write as _;

use crate::report::Report;

/// The comparison table.
pub fn compare(a: &Report, b: &Report) -> String {
    let rows: Vec<(&str, f64, f64)> = vec![
        (
            "clients joined",
            a.connections.joined as f64,
            b.connections.joined as f64,
        ),
        (
            "messages sent",
            a.sends.messages as f64,
            b.sends.messages as f64,
        ),
        ("deliveries/s", a.deliveries.per_s, b.deliveries.per_s),
        (
            "deliveries received",
            a.deliveries.tally.received as f64,
            b.deliveries.tally.received as f64,
        ),
        (
            "deliveries lost",
            a.deliveries.tally.lost as f64,
            b.deliveries.tally.lost as f64,
        ),
        (
            "loss %",
            a.deliveries.loss_ratio * 100.0,
            b.deliveries.loss_ratio * 100.0,
        ),
        (
            "duplicates",
            a.deliveries.tally.duplicates as f64,
            b.deliveries.tally.duplicates as f64,
        ),
        (
            "out of order",
            a.deliveries.tally.out_of_order as f64,
            b.deliveries.tally.out_of_order as f64,
        ),
        ("latency p50 ms", a.latency.p50_ms, b.latency.p50_ms),
        ("latency p90 ms", a.latency.p90_ms, b.latency.p90_ms),
        ("latency p99 ms", a.latency.p99_ms, b.latency.p99_ms),
        ("latency p99.9 ms", a.latency.p999_ms, b.latency.p999_ms),
        ("latency max ms", a.latency.max_ms, b.latency.max_ms),
        (
            "connect p50 ms",
            a.connections.connect.p50_ms,
            b.connections.connect.p50_ms,
        ),
        (
            "connect p99 ms",
            a.connections.connect.p99_ms,
            b.connections.connect.p99_ms,
        ),
        (
            "connect failures",
            a.connections.failed as f64,
            b.connections.failed as f64,
        ),
        (
            "disconnects",
            a.connections.disconnects.values().sum::<u64>() as f64,
            b.connections.disconnects.values().sum::<u64>() as f64,
        ),
        (
            "generator CPU s",
            a.cost.generator_cpu_s,
            b.cost.generator_cpu_s,
        ),
        (
            "server CPU s",
            a.cost.server_cpu_s.unwrap_or(f64::NAN),
            b.cost.server_cpu_s.unwrap_or(f64::NAN),
        ),
        (
            "generator us/delivery",
            a.cost.generator_us_per_delivery.unwrap_or(f64::NAN),
            b.cost.generator_us_per_delivery.unwrap_or(f64::NAN),
        ),
        (
            "server us/delivery",
            a.cost.server_us_per_delivery.unwrap_or(f64::NAN),
            b.cost.server_us_per_delivery.unwrap_or(f64::NAN),
        ),
        (
            "generator KiB/client",
            a.cost.generator_bytes_per_client.unwrap_or(f64::NAN) / 1024.0,
            b.cost.generator_bytes_per_client.unwrap_or(f64::NAN) / 1024.0,
        ),
        (
            "server KiB/connection",
            a.cost.server_bytes_per_connection.unwrap_or(f64::NAN) / 1024.0,
            b.cost.server_bytes_per_connection.unwrap_or(f64::NAN) / 1024.0,
        ),
        (
            "highest sustained/s",
            a.highest_sustained_deliveries_per_s.unwrap_or(f64::NAN),
            b.highest_sustained_deliveries_per_s.unwrap_or(f64::NAN),
        ),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "A: {:?} {} ({} clients)\nB: {:?} {} ({} clients)\n",
        a.params.scenario,
        a.target_urls(),
        a.params.users,
        b.params.scenario,
        b.target_urls(),
        b.params.users
    );
    let _ = writeln!(s, "{:<24} {:>14} {:>14} {:>8}", "", "A", "B", "B/A");
    for (name, x, y) in rows {
        if x.is_nan() && y.is_nan() {
            continue;
        }
        let ratio = if x != 0.0 && x.is_finite() && y.is_finite() {
            format!("{:.2}", y / x)
        } else {
            "-".into()
        };
        let _ = writeln!(s, "{name:<24} {:>14} {:>14} {ratio:>8}", num(x), num(y));
    }
    s
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
