//! The regression gate: pure functions over measured runs, no I/O.
//!
//! 1. **Invariants** hold on every run: every client connected, no delivery lost or duplicated,
//!    no connection ended early, and the run produced a report at all. A candidate run that breaks
//!    one fails the benchmark outright. A baseline run that breaks one is excluded (the candidate
//!    is not blamed for the baseline's bugs) and flagged.
//! 2. A run where the **load generator was the bottleneck** measured the generator, not the
//!    server: it is excluded and flagged, never failed. With fewer than
//!    [`Thresholds::min_valid_runs`] valid runs on a side the whole comparison is *invalid*
//!    (a warning, exit 0), not a failure.
//! 3. **Ratios on medians**: per metric, the median of each side's valid runs; a regression needs
//!    both a relative change past the metric's threshold *and* an absolute change past its floor,
//!    so 1.2 ms against 1.0 ms p99 (+20%, but 0.2 ms) never fails.

use std::collections::BTreeMap;
use std::fmt;

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
}

/// The metrics compared between baseline and candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Deliveries received per second of the send window (`highest sustained` for `step`).
    DeliveriesPerS,
    /// Fan-out latency p99, milliseconds.
    P99Ms,
    /// Server CPU seconds per million deliveries (numerically equal to µs per delivery).
    ServerCpuSPerMDeliveries,
    /// Server resident memory per open connection, bytes.
    RssBytesPerConnection,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::DeliveriesPerS,
        Metric::P99Ms,
        Metric::ServerCpuSPerMDeliveries,
        Metric::RssBytesPerConnection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::DeliveriesPerS => "deliveries/s",
            Metric::P99Ms => "fan-out p99",
            Metric::ServerCpuSPerMDeliveries => "server CPU per M deliveries",
            Metric::RssBytesPerConnection => "server RSS per connection",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::DeliveriesPerS => "deliveries/s",
            Metric::P99Ms => "ms",
            Metric::ServerCpuSPerMDeliveries => "s/M deliveries",
            Metric::RssBytesPerConnection => "bytes",
        }
    }

    pub fn direction(self) -> Direction {
        match self {
            Metric::DeliveriesPerS => Direction::HigherIsBetter,
            _ => Direction::LowerIsBetter,
        }
    }
}

/// How much worse a metric may get before it is a regression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Relative change (0.15 = 15%) in the bad direction that counts as a regression; the same
    /// change in the good direction counts as an improvement.
    pub relative: f64,
    /// Absolute change (in the metric's unit) below which nothing counts, whatever the ratio.
    pub floor: f64,
}

/// Default [`Thresholds::min_dominance`]: with 3 runs a side, 7 of the 9 pairs. With identical
/// servers the share is about one half, and one outlier run moves it by at most 1/N.
pub const MIN_DOMINANCE: f64 = 0.75;

/// Every limit of the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub limits: BTreeMap<Metric, Limit>,
    /// Fewest valid runs each side needs for a verdict.
    pub min_valid_runs: usize,
    /// Share of (candidate run, baseline run) pairs in which the candidate must be worse for a
    /// regression (better for an improvement) beyond the medians' ratio: the runs must not
    /// overlap much, so one outlier run cannot fail (or flatter) a change on its own.
    pub min_dominance: f64,
}

impl Thresholds {
    /// The defaults (see the crate docs for why each is what it is), needing `min_valid_runs`
    /// valid runs per side.
    pub fn defaults(min_valid_runs: usize) -> Self {
        let limits = BTreeMap::from([
            (
                Metric::DeliveriesPerS,
                Limit {
                    relative: 0.10,
                    floor: 500.0,
                },
            ),
            (
                Metric::P99Ms,
                Limit {
                    relative: 0.25,
                    floor: 2.0,
                },
            ),
            (
                Metric::ServerCpuSPerMDeliveries,
                Limit {
                    relative: 0.15,
                    floor: 0.1,
                },
            ),
            (
                Metric::RssBytesPerConnection,
                Limit {
                    relative: 0.15,
                    floor: 1024.0,
                },
            ),
        ]);
        Self {
            limits,
            min_valid_runs: min_valid_runs.max(1),
            min_dominance: MIN_DOMINANCE,
        }
    }
}

/// What the invariants look at in one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Clients the run was configured with.
    pub users: u64,
    /// Clients that connected and joined.
    pub joined: u64,
    /// Clients that failed to connect or join.
    pub failed: u64,
    /// Deliveries owed but never received.
    pub lost: u64,
    /// Deliveries owed.
    pub expected: u64,
    /// Deliveries received twice.
    pub duplicates: u64,
    /// Connections that ended before the run did, by close code or error.
    pub disconnects: BTreeMap<String, u64>,
}

/// One load-test run against one server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    /// E.g. `baseline-2`.
    pub label: String,
    /// Set when the run produced no usable report (the load test failed, the server died).
    pub error: Option<String>,
    pub facts: Facts,
    /// Measured metrics; a missing one was not measured (e.g. no server PID).
    pub metrics: BTreeMap<Metric, f64>,
    /// Why the load generator was the bottleneck, when it was.
    pub generator_bottleneck: Option<String>,
}

/// Invariant violations of one run (empty when it is sound).
pub fn violations(run: &Run) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(e) = &run.error {
        v.push(e.clone());
        return v;
    }
    let f = &run.facts;
    if f.joined < f.users || f.failed > 0 {
        v.push(format!(
            "{} of {} clients connected ({} failed)",
            f.joined, f.users, f.failed
        ));
    }
    if f.lost > 0 {
        v.push(format!(
            "{} of {} deliveries lost",
            f.lost,
            f.expected.max(f.lost)
        ));
    }
    if f.duplicates > 0 {
        v.push(format!("{} duplicate deliveries", f.duplicates));
    }
    if !f.disconnects.is_empty() {
        let list: Vec<String> = f
            .disconnects
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        v.push(format!("unexpected disconnects: {}", list.join(", ")));
    }
    v
}

/// How one run counted.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStatus {
    Valid,
    /// Excluded: the generator was the bottleneck (reason).
    GeneratorBottleneck(String),
    /// Invariants broken (on the candidate this fails the benchmark; on the baseline the run is
    /// excluded).
    Violated(Vec<String>),
}

/// Verdict on one metric, or on the whole comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Improvement,
    Regression,
    /// Too few valid runs to judge.
    Invalid,
    /// Not measured on one of the sides.
    NotMeasured,
    /// The medians' ratio is past the threshold but the runs overlap too much to call it
    /// (noise); not a failure.
    Inconclusive,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Improvement => "improvement",
            Verdict::Regression => "REGRESSION",
            Verdict::Invalid => "invalid",
            Verdict::NotMeasured => "n/a",
            Verdict::Inconclusive => "inconclusive (runs overlap)",
        })
    }
}

/// The whole comparison's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    Pass,
    /// A real regression or a broken invariant on the candidate: exit non-zero.
    Fail,
    /// Too few valid runs: a warning, exit 0.
    Invalid,
}

impl fmt::Display for Overall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overall::Pass => "PASS",
            Overall::Fail => "FAIL",
            Overall::Invalid => "INVALID",
        })
    }
}

/// One metric compared.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    pub metric: Metric,
    /// Medians of the valid runs.
    pub baseline: Option<f64>,
    pub candidate: Option<f64>,
    /// candidate / baseline.
    pub ratio: Option<f64>,
    /// Smallest and largest value of the candidate's valid runs.
    pub candidate_range: Option<(f64, f64)>,
    pub verdict: Verdict,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub overall: Overall,
    pub metrics: Vec<MetricResult>,
    /// (label, status) of every run, baseline first.
    pub runs: Vec<(String, RunStatus)>,
    pub valid_baseline: usize,
    pub valid_candidate: usize,
    /// Why the result is what it is, for people.
    pub notes: Vec<String>,
}

/// Median of a non-empty slice (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Judges one metric's medians.
pub fn judge(metric: Metric, limit: Limit, baseline: f64, candidate: f64) -> Verdict {
    if (candidate - baseline).abs() <= limit.floor {
        return Verdict::Pass;
    }
    let (worse, better) = match metric.direction() {
        Direction::HigherIsBetter => (
            candidate < baseline * (1.0 - limit.relative),
            candidate > baseline * (1.0 + limit.relative),
        ),
        Direction::LowerIsBetter => (
            candidate > baseline * (1.0 + limit.relative),
            candidate < baseline * (1.0 - limit.relative),
        ),
    };
    if worse {
        Verdict::Regression
    } else if better {
        Verdict::Improvement
    } else {
        Verdict::Pass
    }
}

/// Share of (baseline, candidate) value pairs in which the candidate is worse (ties count half).
pub fn dominance(direction: Direction, baseline: &[f64], candidate: &[f64]) -> f64 {
    if baseline.is_empty() || candidate.is_empty() {
        return 0.0;
    }
    let mut worse = 0.0;
    for &c in candidate {
        for &b in baseline {
            let w = match direction {
                Direction::HigherIsBetter => c < b,
                Direction::LowerIsBetter => c > b,
            };
            if w {
                worse += 1.0;
            } else if c == b {
                worse += 0.5;
            }
        }
    }
    worse / (baseline.len() * candidate.len()) as f64
}

fn status(run: &Run) -> RunStatus {
    let v = violations(run);
    if !v.is_empty() {
        RunStatus::Violated(v)
    } else if let Some(why) = &run.generator_bottleneck {
        RunStatus::GeneratorBottleneck(why.clone())
    } else {
        RunStatus::Valid
    }
}

/// Records each run's status and why it is excluded; returns the valid runs.
fn classify<'a>(
    side: &'a [Run],
    is_candidate: bool,
    runs: &mut Vec<(String, RunStatus)>,
    notes: &mut Vec<String>,
) -> Vec<&'a Run> {
    let mut ok = Vec::new();
    for r in side {
        let s = status(r);
        match &s {
            RunStatus::Valid => ok.push(r),
            RunStatus::GeneratorBottleneck(why) => notes.push(format!(
                "{}: excluded, the load generator was the bottleneck ({why})",
                r.label
            )),
            RunStatus::Violated(v) if is_candidate => {
                notes.push(format!("{}: invariant broken: {}", r.label, v.join("; ")))
            }
            RunStatus::Violated(v) => notes.push(format!(
                "{}: baseline broke invariants, run excluded: {}",
                r.label,
                v.join("; ")
            )),
        }
        runs.push((r.label.clone(), s));
    }
    ok
}

/// Compares the baseline's runs with the candidate's.
pub fn evaluate(baseline: &[Run], candidate: &[Run], t: &Thresholds) -> Outcome {
    let mut notes = Vec::new();
    let mut runs = Vec::new();
    let base_ok = classify(baseline, false, &mut runs, &mut notes);
    let cand_ok = classify(candidate, true, &mut runs, &mut notes);
    let candidate_broken = candidate
        .iter()
        .any(|r| matches!(status(r), RunStatus::Violated(_)));
    let enough = base_ok.len() >= t.min_valid_runs && cand_ok.len() >= t.min_valid_runs;
    if !enough {
        notes.push(format!(
            "too few valid runs to compare (baseline {}, candidate {}, need {} each)",
            base_ok.len(),
            cand_ok.len(),
            t.min_valid_runs
        ));
    }

    let mut metrics = Vec::new();
    let mut regressed = false;
    for metric in Metric::ALL {
        let values = |rs: &[&Run]| -> Vec<f64> {
            rs.iter()
                .filter_map(|r| r.metrics.get(&metric).copied())
                .filter(|v| v.is_finite())
                .collect()
        };
        let (bv, cv) = (values(&base_ok), values(&cand_ok));
        let (b, c) = (median(&bv), median(&cv));
        let ratio = match (b, c) {
            (Some(b), Some(c)) if b != 0.0 => Some(c / b),
            _ => None,
        };
        let candidate_range = (!cv.is_empty()).then(|| {
            let lo = cv.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = cv.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        });
        let verdict = match (b, c, t.limits.get(&metric)) {
            _ if !enough => Verdict::Invalid,
            (Some(b), Some(c), Some(limit)) => {
                let share = dominance(metric.direction(), &bv, &cv);
                match judge(metric, *limit, b, c) {
                    Verdict::Regression if share < t.min_dominance => {
                        notes.push(format!(
                            "{}: median ratio {:.3} is past the threshold, but the candidate is \
                             worse in only {:.0}% of run pairs: treated as noise",
                            metric.name(),
                            c / b,
                            share * 100.0
                        ));
                        Verdict::Inconclusive
                    }
                    Verdict::Improvement if 1.0 - share < t.min_dominance => Verdict::Pass,
                    v => v,
                }
            }
            _ => Verdict::NotMeasured,
        };
        if verdict == Verdict::Regression {
            regressed = true;
        }
        metrics.push(MetricResult {
            metric,
            baseline: b,
            candidate: c,
            ratio,
            candidate_range,
            verdict,
        });
    }

    let overall = if candidate_broken || regressed {
        Overall::Fail
    } else if !enough {
        Overall::Invalid
    } else {
        Overall::Pass
    };
    Outcome {
        overall,
        metrics,
        runs,
        valid_baseline: base_ok.len(),
        valid_candidate: cand_ok.len(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sound run with the given metrics.
    fn run(label: &str, dps: f64, p99: f64, cpu: f64, rss: f64) -> Run {
        Run {
            label: label.into(),
            error: None,
            facts: Facts {
                users: 400,
                joined: 400,
                expected: 1_000_000,
                ..Facts::default()
            },
            metrics: BTreeMap::from([
                (Metric::DeliveriesPerS, dps),
                (Metric::P99Ms, p99),
                (Metric::ServerCpuSPerMDeliveries, cpu),
                (Metric::RssBytesPerConnection, rss),
            ]),
            generator_bottleneck: None,
        }
    }

    fn base() -> Vec<Run> {
        vec![
            run("baseline-1", 40_000.0, 10.0, 2.0, 9_000.0),
            run("baseline-2", 39_800.0, 11.0, 2.1, 9_100.0),
            run("baseline-3", 40_100.0, 9.5, 1.9, 8_900.0),
        ]
    }

    fn verdict(o: &Outcome, m: Metric) -> Verdict {
        o.metrics.iter().find(|r| r.metric == m).unwrap().verdict
    }

    #[test]
    fn same_performance_passes() {
        let cand = vec![
            run("candidate-1", 39_900.0, 10.5, 2.05, 9_050.0),
            run("candidate-2", 40_050.0, 12.0, 2.0, 9_000.0),
            run("candidate-3", 40_000.0, 9.0, 1.95, 8_950.0),
        ];
        let o = evaluate(&base(), &cand, &Thresholds::defaults(2));
        assert_eq!(o.overall, Overall::Pass, "{o:#?}");
        assert!(o.metrics.iter().all(|m| m.verdict == Verdict::Pass));
        assert_eq!((o.valid_baseline, o.valid_candidate), (3, 3));
        let p99 = &o.metrics[1];
        assert_eq!(p99.baseline, Some(10.0));
        assert_eq!(p99.candidate, Some(10.5));
        assert_eq!(p99.ratio, Some(1.05));
    }

    #[test]
    fn real_regression_fails() {
        // p99 doubles (+10 ms) and CPU per delivery rises 40%.
        let cand = vec![
            run("candidate-1", 40_000.0, 21.0, 2.8, 9_000.0),
            run("candidate-2", 40_000.0, 20.0, 2.9, 9_000.0),
            run("candidate-3", 40_000.0, 19.0, 2.7, 9_000.0),
        ];
        let o = evaluate(&base(), &cand, &Thresholds::defaults(2));
        assert_eq!(o.overall, Overall::Fail);
        assert_eq!(verdict(&o, Metric::P99Ms), Verdict::Regression);
        assert_eq!(
            verdict(&o, Metric::ServerCpuSPerMDeliveries),
            Verdict::Regression
        );
        assert_eq!(verdict(&o, Metric::DeliveriesPerS), Verdict::Pass);
    }

    #[test]
    fn throughput_drop_fails_and_gain_is_an_improvement() {
        let slow = vec![run("candidate-1", 30_000.0, 10.0, 2.0, 9_000.0)];
        let o = evaluate(&base(), &slow, &Thresholds::defaults(1));
        assert_eq!(verdict(&o, Metric::DeliveriesPerS), Verdict::Regression);
        assert_eq!(o.overall, Overall::Fail);
        let fast = vec![run("candidate-1", 40_000.0, 5.0, 1.0, 4_000.0)];
        let o = evaluate(&base(), &fast, &Thresholds::defaults(1));
        assert_eq!(o.overall, Overall::Pass);
        assert_eq!(verdict(&o, Metric::P99Ms), Verdict::Improvement);
        assert_eq!(
            verdict(&o, Metric::RssBytesPerConnection),
            Verdict::Improvement
        );
    }

    #[test]
    fn tiny_absolute_change_is_under_the_floor() {
        // +20% p99 but only 0.2 ms; +50% CPU but 0.05 s/M; +25% RSS but 500 B.
        let b = vec![run("baseline-1", 40_000.0, 1.0, 0.1, 2_000.0)];
        let c = vec![run("candidate-1", 40_000.0, 1.2, 0.15, 2_500.0)];
        let o = evaluate(&b, &c, &Thresholds::defaults(1));
        assert_eq!(o.overall, Overall::Pass, "{o:#?}");
        assert!(o.metrics.iter().all(|m| m.verdict == Verdict::Pass));
        // Past the floor, the same ratio fails.
        let c = vec![run("candidate-1", 40_000.0, 12.0, 0.15, 2_500.0)];
        let b = vec![run("baseline-1", 40_000.0, 9.0, 0.1, 2_000.0)];
        let o = evaluate(&b, &c, &Thresholds::defaults(1));
        assert_eq!(verdict(&o, Metric::P99Ms), Verdict::Regression);
    }

    #[test]
    fn generator_bottleneck_makes_the_comparison_invalid_not_failed() {
        let mut cand = vec![
            run("candidate-1", 20_000.0, 500.0, 9.0, 9_000.0),
            run("candidate-2", 20_000.0, 500.0, 9.0, 9_000.0),
        ];
        for r in &mut cand {
            r.generator_bottleneck = Some("generator used 1.9 of 2 cores".into());
        }
        let o = evaluate(&base(), &cand, &Thresholds::defaults(2));
        assert_eq!(o.overall, Overall::Invalid, "{o:#?}");
        assert_eq!(o.valid_candidate, 0);
        assert!(o.metrics.iter().all(|m| m.verdict == Verdict::Invalid));
        assert!(matches!(o.runs[3].1, RunStatus::GeneratorBottleneck(_)));
    }

    #[test]
    fn bottlenecked_run_is_excluded_from_the_medians() {
        let mut bad = run("candidate-3", 10_000.0, 900.0, 9.0, 9_000.0);
        bad.generator_bottleneck = Some("senders late".into());
        let cand = vec![
            run("candidate-1", 40_000.0, 10.0, 2.0, 9_000.0),
            run("candidate-2", 40_000.0, 10.0, 2.0, 9_000.0),
            bad,
        ];
        let o = evaluate(&base(), &cand, &Thresholds::defaults(2));
        assert_eq!(o.overall, Overall::Pass, "{o:#?}");
        assert_eq!(o.valid_candidate, 2);
        assert!(o.notes.iter().any(|n| n.contains("candidate-3")));
    }

    #[test]
    fn loss_on_the_candidate_fails_even_with_good_numbers() {
        let mut lossy = run("candidate-1", 40_000.0, 10.0, 2.0, 9_000.0);
        lossy.facts.lost = 3;
        let o = evaluate(&base(), &[lossy], &Thresholds::defaults(1));
        assert_eq!(o.overall, Overall::Fail);
        assert!(
            o.notes[0].contains("3 of 1000000 deliveries lost"),
            "{o:#?}"
        );
    }

    #[test]
    fn every_invariant_is_checked() {
        let mut r = run("candidate-1", 1.0, 1.0, 1.0, 1.0);
        assert!(violations(&r).is_empty());
        r.facts.joined = 399;
        r.facts.failed = 1;
        r.facts.duplicates = 2;
        r.facts.disconnects.insert("4008".into(), 5);
        let v = violations(&r);
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("399 of 400 clients"));
        assert!(v[2].contains("4008 x5"));
        r.error = Some("loadtest exited with status 1 and wrote no report".into());
        assert_eq!(violations(&r).len(), 1);
    }

    #[test]
    fn broken_baseline_runs_are_excluded_not_blamed_on_the_candidate() {
        let mut b = base();
        b[0].facts.lost = 10;
        b[1].error = Some("server exited".into());
        let cand = vec![run("candidate-1", 40_000.0, 10.0, 2.0, 9_000.0)];
        let o = evaluate(&b, &cand, &Thresholds::defaults(1));
        assert_eq!(o.overall, Overall::Pass);
        assert_eq!(o.valid_baseline, 1);
        // Not enough baseline runs left: invalid, still not a failure.
        let o = evaluate(&b, &cand, &Thresholds::defaults(2));
        assert_eq!(o.overall, Overall::Invalid);
    }

    #[test]
    fn unmeasured_metric_is_not_judged() {
        let mut c = run("candidate-1", 40_000.0, 10.0, 2.0, 9_000.0);
        c.metrics.remove(&Metric::RssBytesPerConnection);
        let o = evaluate(&base(), &[c], &Thresholds::defaults(1));
        assert_eq!(o.overall, Overall::Pass);
        assert_eq!(
            verdict(&o, Metric::RssBytesPerConnection),
            Verdict::NotMeasured
        );
    }

    #[test]
    fn one_outlier_run_is_inconclusive_not_a_regression() {
        // Measured with identical servers: p99 36, 44 ms against 106, 19 ms.
        let b = vec![
            run("baseline-1", 40_000.0, 36.0, 11.5, 18_300.0),
            run("baseline-2", 40_000.0, 44.0, 11.4, 18_800.0),
        ];
        let c = vec![
            run("candidate-1", 40_000.0, 106.0, 11.0, 19_600.0),
            run("candidate-2", 40_000.0, 19.0, 13.3, 17_500.0),
        ];
        let o = evaluate(&b, &c, &Thresholds::defaults(1));
        assert_eq!(o.overall, Overall::Pass, "{o:#?}");
        assert_eq!(verdict(&o, Metric::P99Ms), Verdict::Inconclusive);
        assert!(o.notes.iter().any(|n| n.contains("treated as noise")));
        // The same medians with every candidate run worse: a regression.
        let c = vec![
            run("candidate-1", 40_000.0, 63.0, 11.0, 18_500.0),
            run("candidate-2", 40_000.0, 62.0, 11.5, 18_500.0),
        ];
        let o = evaluate(&b, &c, &Thresholds::defaults(1));
        assert_eq!(verdict(&o, Metric::P99Ms), Verdict::Regression);
        assert_eq!(o.overall, Overall::Fail);
    }

    #[test]
    fn dominance_counts_pairs() {
        let lower = Direction::LowerIsBetter;
        assert_eq!(dominance(lower, &[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(dominance(lower, &[36.0, 44.0], &[106.0, 19.0]), 0.5);
        assert_eq!(dominance(Direction::HigherIsBetter, &[5.0], &[5.0]), 0.5);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
