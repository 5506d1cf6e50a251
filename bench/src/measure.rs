//! Reads a loadtest fan-out report (`STEM.json`, see `loadtest/src/report.rs`) into a
//! [`gate::Run`]. Read as `serde_json::Value` so extra or newer fields never break it, but it
//! **fails closed**: every field the gate reads must be present with the right type, and a
//! missing or malformed one is an error naming its JSON path (`deliveries.lost: missing`), never
//! a silent zero. Fields that are legitimately null (`cost.server_cpu_s` without a server PID,
//! `timeline[].server_cpu`, `timeline[].other_cpu`) must still be present.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::gate::{Facts, Metric, Run};

/// Share of the machine's cores above which a generator alone is taken as saturated.
pub const GENERATOR_ALONE_SHARE: f64 = 0.9;
/// Share of the machine's cores above which generator + server saturate it; the generator is then
/// the bottleneck when it used more than the server.
pub const MACHINE_BUSY_SHARE: f64 = 0.9;

/// A JSON path for messages: `deliveries.lost`, `timeline[3].other_cpu`.
fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// Short form of a value for an error message.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..40])
    } else {
        s
    }
}

/// A node of the report at `path` below `v` (whose own path is `at`).
struct Node<'a> {
    v: &'a Value,
    at: String,
}

impl<'a> Node<'a> {
    fn root(v: &'a Value) -> Self {
        Self {
            v,
            at: String::new(),
        }
    }

    /// The field `key`: present (possibly null) or an error.
    fn get(&self, key: &str) -> anyhow::Result<Node<'a>> {
        let at = join(&self.at, key);
        let Some(obj) = self.v.as_object() else {
            bail!("{}: not an object (found {})", self.path(), shown(self.v));
        };
        match obj.get(key) {
            Some(v) => Ok(Node { v, at }),
            None => bail!("{at}: missing"),
        }
    }

    fn path(&self) -> &str {
        if self.at.is_empty() {
            "(report)"
        } else {
            &self.at
        }
    }

    fn wrong(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!("{}: not {what} (found {})", self.path(), shown(self.v))
    }

    fn u64(&self) -> anyhow::Result<u64> {
        self.v
            .as_u64()
            .ok_or_else(|| self.wrong("an unsigned integer"))
    }

    fn f64(&self) -> anyhow::Result<f64> {
        match self.v.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(self.wrong("a number")),
        }
    }

    /// A number or null (present either way).
    fn f64_or_null(&self) -> anyhow::Result<Option<f64>> {
        if self.v.is_null() {
            Ok(None)
        } else {
            self.f64().map(Some)
        }
    }

    fn bool(&self) -> anyhow::Result<bool> {
        self.v.as_bool().ok_or_else(|| self.wrong("a boolean"))
    }

    fn str(&self) -> anyhow::Result<&'a str> {
        self.v.as_str().ok_or_else(|| self.wrong("a string"))
    }

    fn array(&self) -> anyhow::Result<Vec<Node<'a>>> {
        let a = self.v.as_array().ok_or_else(|| self.wrong("an array"))?;
        Ok(a.iter()
            .enumerate()
            .map(|(i, v)| Node {
                v,
                at: format!("{}[{i}]", self.at),
            })
            .collect())
    }

    fn object(&self) -> anyhow::Result<Vec<(&'a String, Node<'a>)>> {
        let o = self.v.as_object().ok_or_else(|| self.wrong("an object"))?;
        Ok(o.iter()
            .map(|(k, v)| {
                (
                    k,
                    Node {
                        v,
                        at: join(&self.at, k),
                    },
                )
            })
            .collect())
    }

    /// `a.b.c` below this node.
    fn at(&self, dotted: &str) -> anyhow::Result<Node<'a>> {
        let mut n = Node {
            v: self.v,
            at: self.at.clone(),
        };
        for k in dotted.split('.') {
            n = n.get(k)?;
        }
        Ok(n)
    }
}

/// Reads `path` as the report of the run `label`.
pub fn read(label: &str, path: &Path) -> anyhow::Result<Run> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    from_report(label, &v).with_context(|| format!("reading {}", path.display()))
}

/// The run a parsed report describes, or the first missing or malformed field.
///
/// For the `step` scenario, whose last step overloads the server on purpose, throughput is the
/// highest sustained deliveries/s, p99 and loss are those of the first step (the same offered load
/// on both sides) and early disconnects are not checked.
pub fn from_report(label: &str, v: &Value) -> anyhow::Result<Run> {
    let r = Node::root(v);
    let scenario = r.at("params.scenario")?.str()?;
    let steps = r.get("steps")?.array()?;
    let step = scenario == "step";
    let first_step = if step {
        Some(
            steps
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("steps: empty in a `step` run"))?,
        )
    } else {
        None
    };
    let mut disconnects = BTreeMap::new();
    for (k, n) in r.at("connections.disconnects")?.object()? {
        disconnects.insert(k.clone(), n.u64()?);
    }
    if step {
        disconnects.clear();
    }
    let d = r.get("deliveries")?;
    let (expected, lost) = match &first_step {
        Some(s) => {
            let (e, got) = (s.get("expected")?.u64()?, s.get("received")?.u64()?);
            (e, e.saturating_sub(got))
        }
        None => (d.get("expected")?.u64()?, d.get("lost")?.u64()?),
    };
    let facts = Facts {
        users: r.at("params.users")?.u64()?,
        joined: r.at("connections.joined")?.u64()?,
        failed: r.at("connections.failed")?.u64()?,
        lost,
        expected,
        duplicates: d.get("duplicates")?.u64()?,
        out_of_order: d.get("out_of_order")?.u64()?,
        foreign: d.get("foreign")?.u64()?,
        disconnects,
    };

    let highest = r.get("highest_sustained_deliveries_per_s")?.f64_or_null()?;
    let dps = match first_step {
        Some(_) => Some(highest.ok_or_else(|| {
            anyhow::anyhow!("highest_sustained_deliveries_per_s: null in a `step` run")
        })?),
        None => Some(d.get("per_s")?.f64()?),
    };
    let p99 = match &first_step {
        Some(s) => s.at("latency.p99_ms")?.f64()?,
        None => r.at("latency.p99_ms")?.f64()?,
    };
    let received = d.get("received")?.u64()?;
    let cpu = r
        .at("cost.server_cpu_s")?
        .f64_or_null()?
        .filter(|_| received > 0)
        .map(|s| s / received as f64 * 1e6);
    let rss = r.at("cost.server_bytes_per_connection")?.f64_or_null()?;
    let mut metrics = BTreeMap::new();
    for (m, val) in [
        (Metric::DeliveriesPerS, dps),
        (Metric::P99Ms, Some(p99)),
        (Metric::ServerCpuSPerMDeliveries, cpu),
        (Metric::RssBytesPerConnection, rss),
    ] {
        if let Some(x) = val {
            metrics.insert(m, x);
        }
    }

    let window = send_window(&r)?;
    Ok(Run {
        label: label.into(),
        error: None,
        facts,
        metrics,
        generator_bottleneck: generator_bottleneck(v)?,
        other_cpu: other_cpu(&window)?,
        // Optional: reports of loadtests older than the figure have none.
        cpu_sending: v
            .pointer("/cost/server_us_per_delivery_sending")
            .and_then(Value::as_f64),
    })
}

/// One second of the timeline, as the gate reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub generator_cpu: f64,
    pub server_cpu: Option<f64>,
    pub other_cpu: Option<f64>,
}

/// The seconds in which messages were sent (`sends_per_s > 0`), past the first second of the
/// timeline: the send window every CPU figure of the gate averages over.
fn send_window(r: &Node) -> anyhow::Result<Vec<Point>> {
    let timeline = r.get("timeline")?.array()?;
    let mut start = None;
    let mut out = Vec::new();
    for p in &timeline {
        let t = p.get("t_s")?.f64()?;
        let start = *start.get_or_insert(t);
        let sends = p.get("sends_per_s")?.f64()?;
        let point = Point {
            generator_cpu: p.get("generator_cpu")?.f64()?,
            server_cpu: p.get("server_cpu")?.f64_or_null()?,
            other_cpu: p.get("other_cpu")?.f64_or_null()?,
        };
        if t > start + 1.0 && sends > 0.0 {
            out.push(point);
        }
    }
    Ok(out)
}

/// Mean cores used by other processes over the send window's seconds where that is known
/// (`None` when it is known in none of them).
fn other_cpu(window: &[Point]) -> anyhow::Result<Option<f64>> {
    let known: Vec<f64> = window.iter().filter_map(|p| p.other_cpu).collect();
    Ok((!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64))
}

/// Why the generator was the bottleneck of this run, if it was: the report's own
/// `generator_bottleneck` flag (with its `generator_bottleneck_reasons`), and in any case the
/// CPU-derived check ([`derive_bottleneck`]) as a fallback for what the flag does not cover.
pub fn generator_bottleneck(v: &Value) -> anyhow::Result<Option<String>> {
    let r = Node::root(v);
    let flag = r.get("generator_bottleneck")?.bool()?;
    let reasons = r
        .get("generator_bottleneck_reasons")?
        .array()?
        .iter()
        .map(|n| n.str().map(str::to_string))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut why = Vec::new();
    if flag {
        why.push(if reasons.is_empty() {
            "reported by the load test".to_string()
        } else {
            format!("reported by the load test: {}", reasons.join("; "))
        });
    }
    if let Some(d) = derive_bottleneck(v)? {
        why.push(d);
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}

/// The CPU-derived check: over the seconds in which messages were sent (past the first), the
/// mean CPU of the generator `g` and of the server `s`, in cores, on a machine of `c` cores. The
/// generator was the bottleneck when `g >= 0.9 c` (it alone saturated the machine) or when
/// `g + s >= 0.9 c` and `g > s` (the machine was saturated and the generator took the larger
/// share). A server that alone saturates the machine is what the benchmark measures, so that is
/// not a bottleneck of the generator. Seconds where the server's CPU is unknown count as 0.
pub fn derive_bottleneck(v: &Value) -> anyhow::Result<Option<String>> {
    let r = Node::root(v);
    let cpus = (r.at("environment.cpus")?.u64()? as f64).max(1.0);
    let window = send_window(&r)?;
    if window.is_empty() {
        return Ok(None);
    }
    let n = window.len() as f64;
    let g = window.iter().map(|p| p.generator_cpu).sum::<f64>() / n;
    let s = window.iter().filter_map(|p| p.server_cpu).sum::<f64>() / n;
    let alone = g >= GENERATOR_ALONE_SHARE * cpus;
    let busy = g + s >= MACHINE_BUSY_SHARE * cpus && g > s;
    Ok((alone || busy).then(|| {
        format!(
            "derived from CPU: generator {g:.2} + server {s:.2} of {cpus:.0} cores while sending"
        )
    }))
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
                       "other_cpu": 0.05, "p50_ms": 1.0, "p99_ms": 3.0, "max_ms": 5.0,
                       "generator_rss": 1, "server_rss": 1})
            })
            .collect();
        json!({
            "report_version": 1,
            "params": {"scenario": "chat", "users": 400, "senders": 10},
            "environment": {"cpus": 2},
            "connections": {"attempted": 400, "joined": 400, "failed": 0,
                            "disconnects": {}, "failures": {}},
            "deliveries": {"expected": 399000, "received": 399000, "lost": 0, "duplicates": 0,
                           "out_of_order": 0, "acks": 1000, "foreign": 0, "loss_ratio": 0.0,
                           "per_s": 39900.0},
            "latency": {"p50_ms": 1.0, "p99_ms": 4.5},
            "cost": {"server_cpu_s": 3.99, "server_bytes_per_connection": 9000.0},
            "steps": [],
            "highest_sustained_deliveries_per_s": null,
            "generator_bottleneck": false,
            "generator_bottleneck_reasons": [],
            "timeline": timeline,
            "warnings": [],
            "some_future_field": {"x": 1}
        })
    }

    fn err(v: &Value) -> String {
        format!("{:#}", from_report("x", v).unwrap_err())
    }

    #[test]
    fn reads_metrics_and_facts() {
        let r = from_report("baseline-1", &report(0.5, 0.6)).unwrap();
        assert_eq!(r.metrics[&Metric::DeliveriesPerS], 39900.0);
        assert_eq!(r.metrics[&Metric::P99Ms], 4.5);
        assert!((r.metrics[&Metric::ServerCpuSPerMDeliveries] - 10.0).abs() < 1e-9);
        assert_eq!(r.metrics[&Metric::RssBytesPerConnection], 9000.0);
        assert_eq!(r.cpu_sending, None, "a report without the figure");
        let mut v = report(0.5, 0.6);
        v["cost"]["server_us_per_delivery_sending"] = json!(8.25);
        assert_eq!(from_report("b", &v).unwrap().cpu_sending, Some(8.25));
        assert_eq!(r.facts.users, 400);
        assert_eq!(r.facts.joined, 400);
        assert_eq!(r.generator_bottleneck, None);
        assert!((r.other_cpu.unwrap() - 0.05).abs() < 1e-12);
        assert!(crate::gate::violations(&r).is_empty());
    }

    #[test]
    fn a_missing_field_is_an_error_naming_its_path() {
        for (remove, path) in [
            ("/deliveries/lost", "deliveries.lost: missing"),
            ("/deliveries/foreign", "deliveries.foreign: missing"),
            (
                "/deliveries/out_of_order",
                "deliveries.out_of_order: missing",
            ),
            ("/params/users", "params.users: missing"),
            (
                "/connections/disconnects",
                "connections.disconnects: missing",
            ),
            ("/cost/server_cpu_s", "cost.server_cpu_s: missing"),
            ("/latency/p99_ms", "latency.p99_ms: missing"),
            ("/timeline/3/other_cpu", "timeline[3].other_cpu: missing"),
            ("/timeline/0/server_cpu", "timeline[0].server_cpu: missing"),
            ("/generator_bottleneck", "generator_bottleneck: missing"),
            ("/environment/cpus", "environment.cpus: missing"),
        ] {
            let mut v = report(0.5, 0.6);
            let (parent, key) = remove.rsplit_once('/').unwrap();
            let p = v.pointer_mut(parent).unwrap();
            match p {
                Value::Object(o) => {
                    o.remove(key).unwrap();
                }
                _ => panic!("{remove}"),
            }
            assert_eq!(err(&v), path, "{remove}");
        }
    }

    #[test]
    fn a_malformed_field_is_an_error_naming_its_path() {
        let mut v = report(0.5, 0.6);
        v["deliveries"]["lost"] = json!("none");
        assert_eq!(
            err(&v),
            "deliveries.lost: not an unsigned integer (found \"none\")"
        );
        let mut v = report(0.5, 0.6);
        v["deliveries"]["duplicates"] = json!(-1);
        assert!(err(&v).starts_with("deliveries.duplicates: not an unsigned"));
        let mut v = report(0.5, 0.6);
        v["latency"]["p99_ms"] = json!(null);
        assert_eq!(err(&v), "latency.p99_ms: not a number (found null)");
        let mut v = report(0.5, 0.6);
        v["timeline"][2]["other_cpu"] = json!("busy");
        assert_eq!(
            err(&v),
            "timeline[2].other_cpu: not a number (found \"busy\")"
        );
        let mut v = report(0.5, 0.6);
        v["deliveries"] = json!([1]);
        assert!(
            err(&v).starts_with("deliveries: not an object"),
            "{}",
            err(&v)
        );
        let mut v = report(0.5, 0.6);
        v["connections"]["disconnects"] = json!({"4008": "x"});
        assert!(err(&v).starts_with("connections.disconnects.4008: not an unsigned"));
        let mut v = report(0.5, 0.6);
        v["generator_bottleneck"] = json!("no");
        assert!(err(&v).starts_with("generator_bottleneck: not a boolean"));
    }

    #[test]
    fn a_broken_report_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("bench-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.json");
        let mut v = report(0.5, 0.6);
        v["deliveries"].as_object_mut().unwrap().remove("lost");
        std::fs::write(&p, v.to_string()).unwrap();
        let e = format!("{:#}", read("x", &p).unwrap_err());
        assert!(e.ends_with("deliveries.lost: missing"), "{e}");
        std::fs::write(&p, "{").unwrap();
        assert!(read("x", &p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn null_server_measurements_are_present_but_not_measured() {
        let mut v = report(0.5, 0.6);
        v["cost"] = json!({"server_cpu_s": null, "server_bytes_per_connection": null});
        for p in v["timeline"].as_array_mut().unwrap() {
            p["server_cpu"] = json!(null);
            p["other_cpu"] = json!(null);
        }
        let r = from_report("x", &v).unwrap();
        assert!(!r.metrics.contains_key(&Metric::ServerCpuSPerMDeliveries));
        assert!(!r.metrics.contains_key(&Metric::RssBytesPerConnection));
        assert_eq!(r.other_cpu, None);
    }

    #[test]
    fn other_cpu_is_the_mean_over_the_send_window() {
        let mut v = report(0.5, 0.6);
        for (i, p) in v["timeline"].as_array_mut().unwrap().iter_mut().enumerate() {
            // The first two seconds (t <= start + 1) and idle seconds do not count.
            p["other_cpu"] = json!(if i < 2 {
                5.0
            } else {
                0.3 + (i % 2) as f64 * 0.2
            });
            if i == 9 {
                p["sends_per_s"] = json!(0.0);
                p["other_cpu"] = json!(9.0);
            }
        }
        let r = from_report("x", &v).unwrap();
        // i = 2..=8: 0.3, 0.5, 0.3, 0.5, 0.3, 0.5, 0.3 -> 2.7 / 7.
        assert!(
            (r.other_cpu.unwrap() - 2.7 / 7.0).abs() < 1e-9,
            "{:?}",
            r.other_cpu
        );
    }

    #[test]
    fn bottleneck_flag_and_reasons() {
        let mut v = report(0.2, 0.2);
        v["generator_bottleneck"] = json!(true);
        let why = generator_bottleneck(&v).unwrap().unwrap();
        assert_eq!(why, "reported by the load test");
        v["generator_bottleneck_reasons"] = json!(["senders fell behind: p99 lag 80 ms"]);
        let why = generator_bottleneck(&v).unwrap().unwrap();
        assert!(
            why.ends_with("test: senders fell behind: p99 lag 80 ms"),
            "{why}"
        );
        // The CPU fallback still applies when the flag is false.
        let mut v = report(1.9, 0.1);
        v["generator_bottleneck"] = json!(false);
        assert!(generator_bottleneck(&v)
            .unwrap()
            .unwrap()
            .starts_with("derived from CPU"));
        assert_eq!(generator_bottleneck(&report(0.5, 0.5)).unwrap(), None);
    }

    #[test]
    fn bottleneck_derived_from_cpu() {
        let d = |g, s| derive_bottleneck(&report(g, s)).unwrap();
        assert!(d(1.85, 0.1).is_some(), "alone");
        assert!(d(1.0, 0.9).is_some(), "shared");
        assert_eq!(d(0.9, 1.0), None, "server-bound");
        assert_eq!(d(0.6, 0.5), None, "idle");
    }

    #[test]
    fn disconnects_loss_order_and_foreign_are_facts() {
        let mut v = report(0.5, 0.5);
        v["connections"]["disconnects"] = json!({"4008": 3});
        v["deliveries"]["lost"] = json!(7);
        v["deliveries"]["out_of_order"] = json!(2);
        v["deliveries"]["foreign"] = json!(1);
        let r = from_report("candidate-1", &v).unwrap();
        assert_eq!(r.facts.lost, 7);
        assert_eq!(r.facts.out_of_order, 2);
        assert_eq!(r.facts.foreign, 1);
        assert_eq!(r.facts.disconnects["4008"], 3);
        assert_eq!(crate::gate::violations(&r).len(), 4);
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
        let r = from_report("candidate-1", &v).unwrap();
        assert_eq!(r.metrics[&Metric::DeliveriesPerS], 150000.0);
        assert_eq!(r.metrics[&Metric::P99Ms], 2.0);
        assert!(crate::gate::violations(&r).is_empty());
        v["steps"][0].as_object_mut().unwrap().remove("received");
        assert_eq!(err(&v), "steps[0].received: missing");
    }
}
