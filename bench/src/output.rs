//! What a comparison leaves behind: the markdown summary and the benchmark-history JSON in
//! github-action-benchmark's custom format (`[{name, unit, value, range, extra}]`; its
//! `customBiggerIsBetter` and `customSmallerIsBetter` tools each read one direction, so the
//! entries are also written split by direction).

use std::fmt::Write as _;

use serde::Serialize;

use crate::gate::{Direction, Metric, Outcome, Overall, Run, RunStatus, Thresholds};

/// Facts about the comparison that the gate does not know.
#[derive(Debug, Clone)]
pub struct Context {
    pub scenario: String,
    /// The loadtest arguments every run used.
    pub loadtest_args: Vec<String>,
    pub runs_per_side: usize,
    /// E.g. `a1b2c3d4e5 (HEAD~1 (merge base with main is HEAD itself))`.
    pub baseline: String,
    /// E.g. `working tree at f00ba12345 (uncommitted changes)`.
    pub candidate: String,
    pub wall_s: f64,
    /// Where the HTML reports are.
    pub reports_dir: String,
}

/// One entry of github-action-benchmark's custom JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub name: String,
    pub unit: String,
    pub value: f64,
    /// Spread of the candidate's runs, e.g. `39800 .. 40100`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    pub extra: String,
}

/// A value in the metric's unit for people.
pub fn fmt_value(m: Metric, v: f64) -> String {
    match m {
        Metric::DeliveriesPerS => format!("{v:.0}"),
        Metric::P99Ms => format!("{v:.2} ms"),
        Metric::ServerCpuSPerMDeliveries => format!("{v:.3} s/M"),
        Metric::RssBytesPerConnection => format!("{:.2} KiB", v / 1024.0),
    }
}

fn fmt_limit(m: Metric, t: &Thresholds) -> String {
    let Some(l) = t.limits.get(&m) else {
        return "not gated".into();
    };
    let sign = match m.direction() {
        Direction::HigherIsBetter => "-",
        Direction::LowerIsBetter => "+",
    };
    let floor = match m {
        Metric::DeliveriesPerS => format!("{:.0}/s", l.floor),
        Metric::P99Ms => format!("{} ms", l.floor),
        Metric::ServerCpuSPerMDeliveries => format!("{} s/M", l.floor),
        Metric::RssBytesPerConnection => format!("{:.0} KiB", l.floor / 1024.0),
    };
    format!("{sign}{:.0}% and more than {floor}", l.relative * 100.0)
}

fn opt(m: Metric, v: Option<f64>) -> String {
    v.map(|v| fmt_value(m, v)).unwrap_or_else(|| "n/a".into())
}

/// The markdown summary.
pub fn summary(ctx: &Context, o: &Outcome, runs: &[Run], t: &Thresholds) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## tidechat benchmark: {}\n", o.overall);
    let _ = writeln!(s, "- baseline: {}", ctx.baseline);
    let _ = writeln!(s, "- candidate: {}", ctx.candidate);
    let _ = writeln!(
        s,
        "- scenario: `{}`, {} runs per side alternating baseline/candidate, loadtest `{}`",
        ctx.scenario,
        ctx.runs_per_side,
        ctx.loadtest_args.join(" ")
    );
    let _ = writeln!(
        s,
        "- valid runs: baseline {}, candidate {} (need {} each); wall time {:.0} s\n",
        o.valid_baseline, o.valid_candidate, t.min_valid_runs, ctx.wall_s
    );
    let _ = writeln!(
        s,
        "| metric | baseline | candidate | ratio | verdict | fails at |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
    for r in &o.metrics {
        let _ = writeln!(
            s,
            "| {} (median) | {} | {} | {} | {} | {} |",
            r.metric.name(),
            opt(r.metric, r.baseline),
            opt(r.metric, r.candidate),
            r.ratio
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "n/a".into()),
            r.verdict,
            fmt_limit(r.metric, t)
        );
    }
    let _ = writeln!(
        s,
        "\n| run | status | deliveries/s | p99 | CPU | RSS/conn |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for (label, status) in &o.runs {
        let status = match status {
            RunStatus::Valid => "valid".to_string(),
            RunStatus::GeneratorBottleneck(_) => "invalid: generator bottleneck".into(),
            RunStatus::Violated(v) => format!("invariant broken: {}", v.join("; ")),
        };
        let run = runs.iter().find(|r| &r.label == label);
        let cell = |m: Metric| opt(m, run.and_then(|r| r.metrics.get(&m).copied()));
        let _ = writeln!(
            s,
            "| {label} | {status} | {} | {} | {} | {} |",
            cell(Metric::DeliveriesPerS),
            cell(Metric::P99Ms),
            cell(Metric::ServerCpuSPerMDeliveries),
            cell(Metric::RssBytesPerConnection)
        );
    }
    if !o.notes.is_empty() {
        let _ = writeln!(s);
        for n in &o.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    let verdict = match o.overall {
        Overall::Pass => "no regression",
        Overall::Fail => "a real regression or a broken invariant: failing",
        Overall::Invalid => "too few valid runs to judge: warning only, not failing",
    };
    let _ = writeln!(
        s,
        "\nResult: **{}**: {verdict}. Fan-out reports (HTML and JSON) per run in `{}`.",
        o.overall, ctx.reports_dir
    );
    s
}

/// github-action-benchmark entries for the candidate's medians (all directions).
pub fn entries(ctx: &Context, o: &Outcome) -> Vec<Entry> {
    o.metrics
        .iter()
        .filter_map(|r| {
            let value = r.candidate?;
            let direction = match r.metric.direction() {
                Direction::HigherIsBetter => "bigger is better",
                Direction::LowerIsBetter => "smaller is better",
            };
            Some(Entry {
                name: format!("{}: {}", ctx.scenario, r.metric.name()),
                unit: r.metric.unit().into(),
                value,
                range: r
                    .candidate_range
                    .map(|(lo, hi)| format!("{} .. {}", round(lo), round(hi))),
                extra: format!(
                    "{direction}; median of {} valid runs; baseline {} ({}); ratio {}; verdict {}",
                    o.valid_candidate,
                    r.baseline
                        .map(|b| round(b).to_string())
                        .unwrap_or_else(|| "n/a".into()),
                    ctx.baseline,
                    r.ratio
                        .map(|x| format!("{x:.3}"))
                        .unwrap_or_else(|| "n/a".into()),
                    r.verdict
                ),
            })
        })
        .collect()
}

/// Entries of one direction (for `customBiggerIsBetter` or `customSmallerIsBetter`).
pub fn entries_of(entries: &[Entry], bigger: bool) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| e.extra.starts_with("bigger") == bigger)
        .cloned()
        .collect()
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{evaluate, Facts};
    use std::collections::BTreeMap;

    fn run(label: &str, p99: f64) -> Run {
        Run {
            label: label.into(),
            facts: Facts {
                users: 1,
                joined: 1,
                ..Facts::default()
            },
            metrics: BTreeMap::from([(Metric::DeliveriesPerS, 1000.0), (Metric::P99Ms, p99)]),
            ..Run::default()
        }
    }

    #[test]
    fn summary_and_entries() {
        let runs = vec![run("baseline-1", 10.0), run("candidate-1", 30.0)];
        let t = Thresholds::defaults(1);
        let o = evaluate(&runs[..1], &runs[1..], &t);
        let ctx = Context {
            scenario: "chat".into(),
            loadtest_args: vec!["--scenario".into(), "chat".into()],
            runs_per_side: 1,
            baseline: "abc".into(),
            candidate: "def".into(),
            wall_s: 12.0,
            reports_dir: "target/bench/reports".into(),
        };
        let md = summary(&ctx, &o, &runs, &t);
        assert!(md.contains("## tidechat benchmark: FAIL"), "{md}");
        assert!(
            md.contains("| fan-out p99 (median) | 10.00 ms | 30.00 ms | 3.000 | REGRESSION |"),
            "{md}"
        );
        assert!(md.contains("| server RSS per connection (median) | n/a | n/a | n/a | n/a |"));
        let e = entries(&ctx, &o);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, "chat: fan-out p99");
        assert_eq!(e[1].unit, "ms");
        assert_eq!(e[1].value, 30.0);
        assert!(e[1].extra.contains("verdict REGRESSION"));
        assert_eq!(entries_of(&e, true).len(), 1);
        assert_eq!(entries_of(&e, false)[0].name, "chat: fan-out p99");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json[0]["range"], "1000 .. 1000");
    }
}
