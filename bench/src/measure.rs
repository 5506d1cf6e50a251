//! Reads a loadtest fan-out report (`STEM.json`, see `loadtest/src/report.rs`) into a
//! [`gate::Run`]. Read as `serde_json::Value` so extra or newer fields never break it, and only the
//! fields named here are needed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::gate::{Facts, Metric, Run};

/// Share of the machine's cores above which a generator alone is taken as saturated.
pub const GENERATOR_ALONE_SHARE: f64 = 0.9;
/// Share of the machine's cores above which generator + server saturate it; the generator is then
/// the bottleneck when it used more than the server.
pub const MACHINE_BUSY_SHARE: f64 = 0.9;

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Reads `path` as the report of the run `label`.
pub fn read(label: &str, path: &Path) -> anyhow::Result<Run> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(from_report(label, &v))
}

/// The run a parsed report describes.
///
/// For the `step` scenario, whose last step overloads the server on purpose, throughput is the
/// highest sustained deliveries/s, p99 and loss are those of the first step (the same offered load
/// on both sides) and early disconnects are not checked.
pub fn from_report(label: &str, v: &Value) -> Run {
    let scenario = v
        .pointer("/params/scenario")
        .and_then(Value::as_str)
        .unwrap_or("");
    let first_step = v.pointer("/steps/0").filter(|_| scenario == "step");
    let disconnects: BTreeMap<String, u64> = match first_step {
        Some(_) => BTreeMap::new(),
        None => v
            .pointer("/connections/disconnects")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(1)))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let (expected, lost) = match first_step {
        Some(s) => {
            let (e, r) = (u(s, &["expected"]), u(s, &["received"]));
            (e, e.saturating_sub(r))
        }
        None => (
            u(v, &["deliveries", "expected"]),
            u(v, &["deliveries", "lost"]),
        ),
    };
    let facts = Facts {
        users: u(v, &["params", "users"]),
        joined: u(v, &["connections", "joined"]),
        failed: u(v, &["connections", "failed"]),
        lost,
        expected,
        duplicates: u(v, &["deliveries", "duplicates"]),
        disconnects,
    };

    let mut metrics = BTreeMap::new();
    let dps = f(v, &["highest_sustained_deliveries_per_s"])
        .filter(|_| first_step.is_some())
        .or_else(|| f(v, &["deliveries", "per_s"]));
    let p99 = match first_step {
        Some(s) => f(s, &["latency", "p99_ms"]),
        None => f(v, &["latency", "p99_ms"]),
    };
    let received = u(v, &["deliveries", "received"]);
    let cpu = f(v, &["cost", "server_cpu_s"])
        .filter(|_| received > 0)
        .map(|s| s / received as f64 * 1e6);
    let rss = f(v, &["cost", "server_bytes_per_connection"]);
    for (m, val) in [
        (Metric::DeliveriesPerS, dps),
        (Metric::P99Ms, p99),
        (Metric::ServerCpuSPerMDeliveries, cpu),
        (Metric::RssBytesPerConnection, rss),
    ] {
        if let Some(x) = val.filter(|x| x.is_finite()) {
            metrics.insert(m, x);
        }
    }

    Run {
        label: label.into(),
        error: None,
        facts,
        metrics,
        generator_bottleneck: generator_bottleneck(v),
    }
}

/// Why the generator was the bottleneck of this run, if it was: the report's own
/// `generator_bottleneck` flag when it has one, else derived from its per-second timeline.
pub fn generator_bottleneck(v: &Value) -> Option<String> {
    if let Some(flag) = v.get("generator_bottleneck").and_then(Value::as_bool) {
        return flag.then(|| {
            let strings = |key: &str| -> Vec<String> {
                v.get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            };
            let mut why = strings("generator_bottleneck_reasons");
            if why.is_empty() {
                why = strings("warnings")
                    .into_iter()
                    .filter(|w| w.contains("generator") || w.contains("behind schedule"))
                    .collect();
            }
            if why.is_empty() {
                "reported by the load test".to_string()
            } else {
                format!("reported by the load test: {}", why.join("; "))
            }
        });
    }
    derive_bottleneck(v)
}

/// The fallback when the report has no `generator_bottleneck` flag: over the seconds in which
/// messages were sent (past the first), the mean CPU of the generator `g` and of the server `s`,
/// in cores, on a machine of `c` cores. The generator was the bottleneck when
/// `g >= 0.9 c` (it alone saturated the machine) or when `g + s >= 0.9 c` and `g > s` (the
/// machine was saturated and the generator took the larger share). A server that alone saturates
/// the machine is what the benchmark measures, so that is not a bottleneck of the generator.
pub fn derive_bottleneck(v: &Value) -> Option<String> {
    let cpus = f(v, &["environment", "cpus"]).unwrap_or(1.0).max(1.0);
    let timeline = v.get("timeline").and_then(Value::as_array)?;
    let start = timeline.first().and_then(|p| f(p, &["t_s"])).unwrap_or(0.0);
    let window: Vec<&Value> = timeline
        .iter()
        .filter(|p| {
            f(p, &["t_s"]).unwrap_or(0.0) > start + 1.0
                && f(p, &["sends_per_s"]).unwrap_or(0.0) > 0.0
        })
        .collect();
    if window.is_empty() {
        return None;
    }
    let n = window.len() as f64;
    let g = window
        .iter()
        .filter_map(|p| f(p, &["generator_cpu"]))
        .sum::<f64>()
        / n;
    let s = window
        .iter()
        .filter_map(|p| f(p, &["server_cpu"]))
        .sum::<f64>()
        / n;
    let alone = g >= GENERATOR_ALONE_SHARE * cpus;
    let busy = g + s >= MACHINE_BUSY_SHARE * cpus && g > s;
    (alone || busy).then(|| {
        format!(
            "derived from CPU: generator {g:.2} + server {s:.2} of {cpus:.0} cores while sending"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(gen_cpu: f64, srv_cpu: f64) -> Value {
        let timeline: Vec<Value> = (0..10)
            .map(|t| {
                json!({"t_s": t as f64, "open": 400, "deliveries_per_s": 40000.0,
                       "sends_per_s": 100.0, "generator_cpu": gen_cpu, "server_cpu": srv_cpu,
                       "p50_ms": 1.0, "p99_ms": 3.0, "max_ms": 5.0, "generator_rss": 1,
                       "server_rss": 1})
            })
            .collect();
        json!({
            "report_version": 1,
            "params": {"scenario": "chat", "users": 400, "senders": 10},
            "environment": {"cpus": 2},
            "connections": {"attempted": 400, "joined": 400, "failed": 0,
                            "disconnects": {}, "failures": {}},
            "deliveries": {"expected": 399000, "received": 399000, "lost": 0, "duplicates": 0,
                           "out_of_order": 0, "loss_ratio": 0.0, "per_s": 39900.0},
            "latency": {"p50_ms": 1.0, "p99_ms": 4.5},
            "cost": {"server_cpu_s": 3.99, "server_bytes_per_connection": 9000.0},
            "steps": [],
            "highest_sustained_deliveries_per_s": null,
            "timeline": timeline,
            "warnings": [],
            "some_future_field": {"x": 1}
        })
    }

    #[test]
    fn reads_metrics_and_facts() {
        let r = from_report("baseline-1", &report(0.5, 0.6));
        assert_eq!(r.metrics[&Metric::DeliveriesPerS], 39900.0);
        assert_eq!(r.metrics[&Metric::P99Ms], 4.5);
        assert!((r.metrics[&Metric::ServerCpuSPerMDeliveries] - 10.0).abs() < 1e-9);
        assert_eq!(r.metrics[&Metric::RssBytesPerConnection], 9000.0);
        assert_eq!(r.facts.users, 400);
        assert_eq!(r.facts.joined, 400);
        assert_eq!(r.generator_bottleneck, None);
        assert!(crate::gate::violations(&r).is_empty());
    }

    #[test]
    fn missing_server_measurements_are_absent() {
        let mut v = report(0.5, 0.6);
        v["cost"] = json!({"server_cpu_s": null, "server_bytes_per_connection": null});
        let r = from_report("x", &v);
        assert!(!r.metrics.contains_key(&Metric::ServerCpuSPerMDeliveries));
        assert!(!r.metrics.contains_key(&Metric::RssBytesPerConnection));
    }

    #[test]
    fn bottleneck_flag_wins_over_derivation() {
        let mut v = report(0.2, 0.2);
        v["generator_bottleneck"] = json!(true);
        v["warnings"] = json!(["the load generator used 190% CPU"]);
        let why = generator_bottleneck(&v).unwrap();
        assert!(why.contains("190%"), "{why}");
        v["generator_bottleneck_reasons"] = json!(["senders fell behind: p99 lag 80 ms"]);
        let why = generator_bottleneck(&v).unwrap();
        assert!(
            why.ends_with("test: senders fell behind: p99 lag 80 ms"),
            "{why}"
        );
        let mut v = report(1.9, 0.1);
        v["generator_bottleneck"] = json!(false);
        assert_eq!(generator_bottleneck(&v), None);
    }

    #[test]
    fn bottleneck_derived_from_cpu_when_not_reported() {
        assert!(derive_bottleneck(&report(1.85, 0.1)).is_some(), "alone");
        assert!(derive_bottleneck(&report(1.0, 0.9)).is_some(), "shared");
        assert_eq!(derive_bottleneck(&report(0.9, 1.0)), None, "server-bound");
        assert_eq!(derive_bottleneck(&report(0.6, 0.5)), None, "idle");
    }

    #[test]
    fn disconnects_and_loss_are_facts() {
        let mut v = report(0.5, 0.5);
        v["connections"]["disconnects"] = json!({"4008": 3});
        v["deliveries"]["lost"] = json!(7);
        let r = from_report("candidate-1", &v);
        assert_eq!(r.facts.lost, 7);
        assert_eq!(r.facts.disconnects["4008"], 3);
        assert_eq!(crate::gate::violations(&r).len(), 2);
    }

    #[test]
    fn step_uses_the_first_step_and_highest_sustained() {
        let mut v = report(0.5, 0.5);
        v["params"]["scenario"] = json!("step");
        v["highest_sustained_deliveries_per_s"] = json!(150000.0);
        v["deliveries"]["lost"] = json!(5000);
        v["connections"]["disconnects"] = json!({"4008": 3});
        v["steps"] = json!([
            {"step": 1, "expected": 1000, "received": 1000, "latency": {"p99_ms": 2.0}},
            {"step": 2, "expected": 2000, "received": 1000, "latency": {"p99_ms": 900.0}}
        ]);
        let r = from_report("candidate-1", &v);
        assert_eq!(r.metrics[&Metric::DeliveriesPerS], 150000.0);
        assert_eq!(r.metrics[&Metric::P99Ms], 2.0);
        assert!(crate::gate::violations(&r).is_empty());
    }
}
