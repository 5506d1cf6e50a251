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
    /// The runs in the order they ran (A B B A ...).
    pub order: Vec<String>,
    /// What the baseline was, e.g. `revision a1b2c3d4e5 (merge base with main)`,
    /// `tidechat binary /path`, `command `...``, with its environment.
    pub baseline: String,
    /// E.g. `working tree at f00ba12345 (with uncommitted changes), env TIDECHAT_THREADS=2`.
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

/// The valid runs' median server CPU per M deliveries while sending, baseline against
/// candidate, as one line (`None` when either side has none).
fn cpu_sending_line(o: &Outcome) -> Option<String> {
    let (b, c) = o.cpu_sending?;
    Some(format!(
        "Server CPU per M deliveries while sending (the seconds with sends only, without the \
         connects and teardown; reported, not judged), medians of the valid runs: baseline \
         {b:.3} s/M, candidate {c:.3} s/M, ratio {:.3}.",
        c / b
    ))
}

/// The markdown summary.
pub fn summary(ctx: &Context, o: &Outcome, runs: &[Run], t: &Thresholds) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## tidechat benchmark: {}\n", o.overall);
    let _ = writeln!(s, "**{}**: {}\n", o.overall, o.reason);
    let _ = writeln!(s, "- baseline: {}", ctx.baseline);
    let _ = writeln!(s, "- candidate: {}", ctx.candidate);
    let _ = writeln!(
        s,
        "- scenario: `{}`, {} run(s) per side, loadtest `{}`",
        ctx.scenario,
        ctx.runs_per_side,
        ctx.loadtest_args.join(" ")
    );
    let _ = writeln!(s, "- order (A B B A): {}", ctx.order.join(" "));
    let _ = writeln!(
        s,
        "- valid runs: baseline {}, candidate {}; wall time {:.0} s",
        o.valid_baseline, o.valid_candidate, ctx.wall_s
    );
    let _ = writeln!(
        s,
        "- rule: per metric a regression needs a one-sided exact Mann-Whitney p <= {:.0}% and \
         the medians past the threshold; a metric is gated only when its exact false-failure \
         rate can be <= {:.0}%\n",
        t.alpha * 100.0,
        t.alpha * 100.0
    );
    let _ = writeln!(
        s,
        "| metric | baseline | candidate | ratio | p (worse) | verdict | fails at | false-failure rate |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---|---|");
    for r in &o.metrics {
        let _ = writeln!(
            s,
            "| {} (median) | {} | {} | {} | {} | {} | {} | {} |",
            r.metric.name(),
            opt(r.metric, r.baseline),
            opt(r.metric, r.candidate),
            r.ratio
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "n/a".into()),
            r.p_worse
                .map(|p| format!("{:.2}%", p * 100.0))
                .unwrap_or_else(|| "n/a".into()),
            r.verdict,
            fmt_limit(r.metric, t),
            r.rate_text(t.alpha)
        );
    }
    if let Some(line) = cpu_sending_line(o) {
        let _ = writeln!(s, "\n{line}");
    }
    let _ = writeln!(
        s,
        "\n| run | status | deliveries/s | p99 | CPU | CPU while sending | RSS/conn | other CPU |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for (label, status) in &o.runs {
        let status = match status {
            RunStatus::Valid => "valid".to_string(),
            RunStatus::Disturbed { why, violations } => {
                let mut x = format!("invalid (disturbed): {}", why.join("; "));
                if !violations.is_empty() {
                    x += &format!("; invariants (not counted): {}", violations.join("; "));
                }
                x
            }
            RunStatus::Violated(v) => format!("invariant broken: {}", v.join("; ")),
        };
        let run = runs.iter().find(|r| &r.label == label);
        let cell = |m: Metric| opt(m, run.and_then(|r| r.metrics.get(&m).copied()));
        let other = run
            .and_then(|r| r.other_cpu)
            .map(|c| format!("{c:.2} cores"))
            .unwrap_or_else(|| "n/a".into());
        let sending = opt(
            Metric::ServerCpuSPerMDeliveries,
            run.and_then(|r| r.cpu_sending),
        );
        let _ = writeln!(
            s,
            "| {label} | {status} | {} | {} | {} | {sending} | {} | {other} |",
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
        Overall::Inconclusive => {
            "too few valid runs for a false-failure rate <= 1%: neither pass nor fail (exit 0)"
        }
    };
    let _ = writeln!(
        s,
        "\nResult: **{}**: {verdict}. Fan-out reports (HTML and JSON) per run in `{}`.",
        o.overall, ctx.reports_dir
    );
    s
}

/// github-action-benchmark entries for the candidate's medians (all directions).
pub fn entries(ctx: &Context, o: &Outcome, t: &Thresholds) -> Vec<Entry> {
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
                    "{direction}; median of {} valid runs; baseline {} ({}); ratio {}; \
                     p (worse) {}; verdict {}; overall {}; {}",
                    r.n.1,
                    r.baseline
                        .map(|b| round(b).to_string())
                        .unwrap_or_else(|| "n/a".into()),
                    ctx.baseline,
                    r.ratio
                        .map(|x| format!("{x:.3}"))
                        .unwrap_or_else(|| "n/a".into()),
                    r.p_worse
                        .map(|p| format!("{:.2}%", p * 100.0))
                        .unwrap_or_else(|| "n/a".into()),
                    r.verdict,
                    o.overall,
                    r.rate_text(t.alpha)
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

    fn ctx(n: usize) -> Context {
        Context {
            scenario: "chat".into(),
            loadtest_args: vec!["--scenario".into(), "chat".into()],
            runs_per_side: n,
            order: vec!["baseline-1".into(), "candidate-1".into()],
            baseline: "tidechat binary /x/tidechat".into(),
            candidate: "working tree at def, env TIDECHAT_THREADS=2".into(),
            wall_s: 12.0,
            reports_dir: "target/bench/reports".into(),
        }
    }

    #[test]
    fn summary_and_entries() {
        let base: Vec<Run> = (1..=5)
            .map(|i| run(&format!("baseline-{i}"), 10.0 + i as f64 * 0.1))
            .collect();
        let cand: Vec<Run> = (1..=5)
            .map(|i| run(&format!("candidate-{i}"), 30.0 + i as f64 * 0.1))
            .collect();
        let t = Thresholds::defaults();
        let o = evaluate(&base, &cand, &t);
        let all: Vec<Run> = base.iter().chain(&cand).cloned().collect();
        let md = summary(&ctx(5), &o, &all, &t);
        assert!(md.contains("## tidechat benchmark: FAIL"), "{md}");
        assert!(
            md.contains("- baseline: tidechat binary /x/tidechat"),
            "{md}"
        );
        assert!(md.contains("env TIDECHAT_THREADS=2"), "{md}");
        assert!(
            md.contains("- order (A B B A): baseline-1 candidate-1"),
            "{md}"
        );
        assert!(
            md.contains(
                "| fan-out p99 (median) | 10.30 ms | 30.30 ms | 2.942 | 0.40% | REGRESSION |"
            ),
            "{md}"
        );
        assert!(
            md.contains("false-failure rate <= 0.79% (exact, 5 vs 5 valid runs) |"),
            "{md}"
        );
        assert!(md.contains("| server RSS per connection (median) | n/a | n/a | n/a | n/a | n/a |"));
        let e = entries(&ctx(5), &o, &t);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, "chat: fan-out p99");
        assert_eq!(e[1].unit, "ms");
        assert!((e[1].value - 30.3).abs() < 1e-9);
        assert!(
            e[1].extra.contains("verdict REGRESSION; overall FAIL"),
            "{}",
            e[1].extra
        );
        assert!(e[1].extra.contains("false-failure rate <= 0.79%"));
        assert_eq!(entries_of(&e, true).len(), 1);
        assert_eq!(entries_of(&e, false)[0].name, "chat: fan-out p99");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json[0]["range"], "1000 .. 1000");
        // Without the figure (older reports) there is no line for it.
        assert!(!md.contains("while sending (the seconds"), "{md}");
    }

    /// The CPU while sending is shown per run and as medians of the valid runs, not judged.
    #[test]
    fn cpu_while_sending_is_reported_beside_the_gated_cpu() {
        let with = |label: &str, cpu: f64| Run {
            cpu_sending: Some(cpu),
            ..run(label, 10.0)
        };
        let base: Vec<Run> = (1..=3)
            .map(|i| with(&format!("baseline-{i}"), 4.0 + i as f64))
            .collect();
        let cand: Vec<Run> = (1..=3)
            .map(|i| with(&format!("candidate-{i}"), 2.5 + i as f64))
            .collect();
        let t = Thresholds::defaults();
        let o = evaluate(&base, &cand, &t);
        let all: Vec<Run> = base.iter().chain(&cand).cloned().collect();
        let md = summary(&ctx(3), &o, &all, &t);
        assert!(
            md.contains(
                "medians of the valid runs: baseline 6.000 s/M, candidate 4.500 s/M, ratio 0.750."
            ),
            "{md}"
        );
        assert!(
            md.contains("| candidate-2 | valid | 1000 | 10.00 ms | n/a | 4.500 s/M |"),
            "{md}"
        );
    }

    #[test]
    fn inconclusive_summary_says_why() {
        let t = Thresholds::defaults();
        let o = evaluate(&[run("baseline-1", 10.0)], &[run("candidate-1", 30.0)], &t);
        assert_eq!(o.overall, Overall::Inconclusive);
        let md = summary(&ctx(1), &o, &[], &t);
        assert!(md.contains("## tidechat benchmark: INCONCLUSIVE"), "{md}");
        assert!(md.contains("inconclusive (too few valid runs)"), "{md}");
        assert!(
            md.contains(
                "not gated: 1 vs 1 valid runs allow no false-failure rate <= 1% (best 50.00%)"
            ),
            "{md}"
        );
        assert!(md.contains("neither pass nor fail"), "{md}");
    }
}
