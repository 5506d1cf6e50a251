//! The regression gate: pure functions over measured runs, no I/O.
//!
//! 1. **Validity first.** A run *disturbed* by the machine is invalid on either side: excluded
//!    and reported, never failed, and its invariant results are only reported. Disturbed means
//!    the load generator was the bottleneck (the report's `generator_bottleneck`, or derived
//!    from CPU, see [`crate::measure::derive_bottleneck`]) or other processes used more than
//!    [`Thresholds::max_other_cpu`] cores on average while messages were sent.
//! 2. **Invariants** on the undisturbed runs: the run produced a report, every client connected,
//!    no delivery lost, duplicated, out of order or foreign, no connection ended early. On the
//!    candidate a broken one fails the benchmark; on the baseline it excludes the run (the
//!    candidate is not blamed for the baseline's bugs).
//! 3. **Per metric, an exact rank test and a size limit.** Between the two sides' valid runs, a
//!    one-sided exact Mann-Whitney test ([`crate::stats`]): a regression needs both a p-value
//!    of at most [`Thresholds::alpha`] *and* the medians' relative change past the metric's
//!    threshold with the absolute change past its floor. Under the null hypothesis (identical
//!    servers) a metric's false-failure rate is at most the test's exact size `P(U >= u*)`,
//!    computed for the actual numbers of valid runs; when no size at most `alpha` is possible
//!    with them, the metric is *inconclusive*. Improvements are the same test the other way
//!    round and never fail.
//! 4. **Overall**: FAIL on a broken invariant of an undisturbed candidate run or a regression;
//!    else INCONCLUSIVE when the valid runs are too few for a gated rate (exit 0, loudly); else
//!    PASS.

use std::collections::BTreeMap;
use std::fmt;

use crate::stats;

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

/// Default [`Thresholds::max_other_cpu`], in cores: the mean CPU of every other process on the
/// machine during the send window above which a run is disturbed.
///
/// Why a quarter core: the server and the generator share the machine's cores (two in CI), and
/// the metrics most affected by competition (p99, CPU per delivery) are gated at +15..25%. An
/// idle runner's background (kernel threads, the CI agent) stays well under 0.1 core, while one
/// concurrent compile or test takes a whole core; 0.25 cores (12.5% of two cores) passes the
/// first and excludes a run that shared the machine with anything real, before it can move a
/// median by the amounts the gate judges.
pub const MAX_OTHER_CPU: f64 = 0.25;

/// Every limit of the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub limits: BTreeMap<Metric, Limit>,
    /// Largest one-sided exact p-value that still counts as a change, and the largest accepted
    /// false-failure rate per metric ([`crate::stats::ALPHA`]).
    pub alpha: f64,
    /// Mean cores other processes may use while messages are sent before a run is disturbed.
    pub max_other_cpu: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::defaults()
    }
}

impl Thresholds {
    /// The defaults (see the crate docs for why each is what it is).
    pub fn defaults() -> Self {
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
            alpha: stats::ALPHA,
            max_other_cpu: MAX_OTHER_CPU,
        }
    }

    /// The exact false-failure rate of a metric with `baseline` vs `candidate` valid runs, or
    /// `None` when no rate at most [`Self::alpha`] is possible with so few.
    pub fn rate(&self, baseline: usize, candidate: usize) -> Option<f64> {
        stats::critical(candidate, baseline, self.alpha).map(|(_, p)| p)
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
    /// Deliveries that arrived after a later message of the same sender.
    pub out_of_order: u64,
    /// Frames not recognised as this run's messages (e.g. stamped for another room or run).
    pub foreign: u64,
    /// Connections that ended before the run did, by close code or error.
    pub disconnects: BTreeMap<String, u64>,
}

/// One load-test run against one server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    /// E.g. `baseline-2`.
    pub label: String,
    /// Set when the run produced no usable report (the load test failed, the server died, the
    /// report is missing a field): a broken run.
    pub error: Option<String>,
    pub facts: Facts,
    /// Measured metrics; a missing one was not measured (e.g. no server PID).
    pub metrics: BTreeMap<Metric, f64>,
    /// Why the load generator was the bottleneck, when it was.
    pub generator_bottleneck: Option<String>,
    /// Mean cores used by every other process while messages were sent (`None`: unknown).
    pub other_cpu: Option<f64>,
    /// Server CPU seconds per million deliveries over the seconds messages were sent only
    /// (the report's `cost.server_us_per_delivery_sending`): without the connects, joins and
    /// teardown that the gated figure spreads over the deliveries. Reported, not judged.
    pub cpu_sending: Option<f64>,
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
    if f.out_of_order > 0 {
        v.push(format!("{} deliveries out of order", f.out_of_order));
    }
    if f.foreign > 0 {
        v.push(format!(
            "{} foreign frames (not this run's messages)",
            f.foreign
        ));
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

/// Why the machine disturbed a run (empty when it did not).
pub fn disturbances(run: &Run, t: &Thresholds) -> Vec<String> {
    let mut d = Vec::new();
    if let Some(why) = &run.generator_bottleneck {
        d.push(format!("the load generator was the bottleneck ({why})"));
    }
    if let Some(o) = run.other_cpu.filter(|o| *o > t.max_other_cpu) {
        d.push(format!(
            "other processes used {o:.2} cores while sending (bound {:.2})",
            t.max_other_cpu
        ));
    }
    d
}

/// How one run counted.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStatus {
    Valid,
    /// Excluded on either side: disturbed by the machine (why); its invariant results are
    /// only reported.
    Disturbed {
        why: Vec<String>,
        violations: Vec<String>,
    },
    /// Undisturbed, invariants broken or no usable report: fails the benchmark on the
    /// candidate, excludes the run on the baseline.
    Violated(Vec<String>),
}

/// The status of one run: a broken run (no usable report) first, then disturbance, then the
/// invariants.
pub fn status(run: &Run, t: &Thresholds) -> RunStatus {
    if let Some(e) = &run.error {
        return RunStatus::Violated(vec![e.clone()]);
    }
    let why = disturbances(run, t);
    let v = violations(run);
    if !why.is_empty() {
        RunStatus::Disturbed { why, violations: v }
    } else if !v.is_empty() {
        RunStatus::Violated(v)
    } else {
        RunStatus::Valid
    }
}

/// Verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Improvement,
    Regression,
    /// Too few valid runs for a false-failure rate at most alpha: not judged.
    Inconclusive,
    /// Not measured on one of the sides.
    NotMeasured,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Improvement => "improvement",
            Verdict::Regression => "REGRESSION",
            Verdict::Inconclusive => "inconclusive (too few valid runs)",
            Verdict::NotMeasured => "n/a",
        })
    }
}

/// The whole comparison's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    Pass,
    /// A real regression or a broken invariant on an undisturbed candidate run: exit non-zero.
    Fail,
    /// Too few valid runs for a gated false-failure rate: neither pass nor fail, exit 0.
    Inconclusive,
}

impl fmt::Display for Overall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overall::Pass => "PASS",
            Overall::Fail => "FAIL",
            Overall::Inconclusive => "INCONCLUSIVE",
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
    /// Valid runs with this metric: (baseline, candidate).
    pub n: (usize, usize),
    /// One-sided exact p-values: the candidate worse, the candidate better.
    pub p_worse: Option<f64>,
    pub p_better: Option<f64>,
    /// The exact false-failure rate for `n` (`None`: too few runs to gate the metric).
    pub rate: Option<f64>,
    pub verdict: Verdict,
}

impl MetricResult {
    /// E.g. `false-failure rate <= 0.79% (exact, 5 vs 5 valid runs)`.
    pub fn rate_text(&self, alpha: f64) -> String {
        let (b, c) = self.n;
        match self.rate {
            Some(r) => format!(
                "false-failure rate <= {:.2}% (exact, {b} vs {c} valid runs)",
                r * 100.0
            ),
            None if b == 0 || c == 0 => format!("not gated ({b} vs {c} valid runs)"),
            None => format!(
                "not gated: {b} vs {c} valid runs allow no false-failure rate <= {:.0}% \
                 (best {:.2}%)",
                alpha * 100.0,
                stats::smallest_p(b, c) * 100.0
            ),
        }
    }
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
    /// Medians of [`Run::cpu_sending`] over each side's valid runs, (baseline, candidate), when
    /// both sides have it. Reported, not judged.
    pub cpu_sending: Option<(f64, f64)>,
    /// Why the result is what it is, for people.
    pub notes: Vec<String>,
    /// One line: why the overall result is what it is (for `bench: RESULT: reason`).
    pub reason: String,
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

/// Judges one metric's medians against its limit alone: is the change past both the relative
/// threshold and the absolute floor, and which way?
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

/// One-sided exact p-values (candidate worse, candidate better) of `candidate` against
/// `baseline` for a metric going `direction`.
pub fn p_values(direction: Direction, baseline: &[f64], candidate: &[f64]) -> (f64, f64) {
    let (n, m) = (candidate.len(), baseline.len());
    let above = stats::u_above(candidate, baseline);
    let below = (n * m) as f64 - above;
    let (worse, better) = match direction {
        Direction::LowerIsBetter => (above, below),
        Direction::HigherIsBetter => (below, above),
    };
    (
        stats::p_at_least(n, m, worse),
        stats::p_at_least(n, m, better),
    )
}

/// Judges one metric from both sides' valid values.
pub fn judge_metric(metric: Metric, t: &Thresholds, bv: &[f64], cv: &[f64]) -> MetricResult {
    let (b, c) = (median(bv), median(cv));
    let ratio = match (b, c) {
        (Some(b), Some(c)) if b != 0.0 => Some(c / b),
        _ => None,
    };
    let candidate_range = (!cv.is_empty()).then(|| {
        let lo = cv.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = cv.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    });
    let n = (bv.len(), cv.len());
    let rate = t.rate(n.0, n.1);
    let (p_worse, p_better) = if n.0 > 0 && n.1 > 0 {
        let (w, b) = p_values(metric.direction(), bv, cv);
        (Some(w), Some(b))
    } else {
        (None, None)
    };
    let verdict = match (b, c, t.limits.get(&metric)) {
        (Some(b), Some(c), Some(limit)) => match (rate, judge(metric, *limit, b, c)) {
            (None, _) => Verdict::Inconclusive,
            (Some(_), Verdict::Regression) if p_worse.is_some_and(|p| p <= t.alpha) => {
                Verdict::Regression
            }
            (Some(_), Verdict::Improvement) if p_better.is_some_and(|p| p <= t.alpha) => {
                Verdict::Improvement
            }
            (Some(_), _) => Verdict::Pass,
        },
        _ => Verdict::NotMeasured,
    };
    MetricResult {
        metric,
        baseline: b,
        candidate: c,
        ratio,
        candidate_range,
        n,
        p_worse,
        p_better,
        rate,
        verdict,
    }
}

/// Records each run's status and notes why it is excluded; returns the valid runs.
fn classify<'a>(
    side: &'a [Run],
    is_candidate: bool,
    t: &Thresholds,
    runs: &mut Vec<(String, RunStatus)>,
    notes: &mut Vec<String>,
) -> Vec<&'a Run> {
    let mut ok = Vec::new();
    for r in side {
        let s = status(r, t);
        match &s {
            RunStatus::Valid => ok.push(r),
            RunStatus::Disturbed { why, violations } => {
                let mut n = format!("{}: invalid, disturbed: {}", r.label, why.join("; "));
                if !violations.is_empty() {
                    n += &format!(" (invariants, reported only: {})", violations.join("; "));
                }
                notes.push(n);
            }
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
    let base_ok = classify(baseline, false, t, &mut runs, &mut notes);
    let cand_ok = classify(candidate, true, t, &mut runs, &mut notes);
    let broken: Vec<String> = candidate
        .iter()
        .filter_map(|r| match status(r, t) {
            RunStatus::Violated(v) => Some(format!("{}: {}", r.label, v.join("; "))),
            _ => None,
        })
        .collect();
    let enough = t.rate(base_ok.len(), cand_ok.len()).is_some();

    let mut metrics = Vec::new();
    for metric in Metric::ALL {
        let values = |rs: &[&Run]| -> Vec<f64> {
            rs.iter()
                .filter_map(|r| r.metrics.get(&metric).copied())
                .filter(|v| v.is_finite())
                .collect()
        };
        let r = judge_metric(metric, t, &values(&base_ok), &values(&cand_ok));
        if let (Some(ratio), Some(pw)) = (r.ratio, r.p_worse) {
            if r.verdict == Verdict::Pass {
                let limit = t.limits.get(&metric).copied();
                let past = limit.is_some_and(|l| {
                    judge(
                        metric,
                        l,
                        r.baseline.unwrap_or(0.0),
                        r.candidate.unwrap_or(0.0),
                    ) == Verdict::Regression
                });
                if past {
                    notes.push(format!(
                        "{}: median ratio {ratio:.3} is past the threshold, but p = {:.2}% > \
                         {:.0}%: the runs do not separate, treated as noise",
                        metric.name(),
                        pw * 100.0,
                        t.alpha * 100.0
                    ));
                }
            }
        }
        metrics.push(r);
    }
    let regressed: Vec<&str> = metrics
        .iter()
        .filter(|m| m.verdict == Verdict::Regression)
        .map(|m| m.metric.name())
        .collect();
    let inconclusive: Vec<&str> = metrics
        .iter()
        .filter(|m| m.verdict == Verdict::Inconclusive)
        .map(|m| m.metric.name())
        .collect();

    let excluded: Vec<String> = runs
        .iter()
        .filter_map(|(label, s)| match s {
            RunStatus::Valid => None,
            RunStatus::Disturbed { why, .. } => Some(format!("{label} (disturbed: {})", why[0])),
            RunStatus::Violated(v) => Some(format!("{label} ({})", v[0])),
        })
        .collect();
    let (overall, reason) = if !broken.is_empty() || !regressed.is_empty() {
        let mut why = Vec::new();
        if !broken.is_empty() {
            why.push(format!("invariant broken on {}", broken.join(" | ")));
        }
        if !regressed.is_empty() {
            why.push(format!("regression in {}", regressed.join(", ")));
        }
        (Overall::Fail, why.join("; "))
    } else if !enough || !inconclusive.is_empty() {
        let (b, c) = (base_ok.len(), cand_ok.len());
        let mut why = if enough {
            format!(
                "too few valid runs with {} for a false-failure rate <= {:.0}%",
                inconclusive.join(", "),
                t.alpha * 100.0
            )
        } else {
            format!(
                "{b} baseline vs {c} candidate valid runs allow no false-failure rate <= {:.0}% \
                 (best {:.2}%)",
                t.alpha * 100.0,
                if b > 0 && c > 0 {
                    stats::smallest_p(b, c) * 100.0
                } else {
                    100.0
                }
            )
        };
        if excluded.is_empty() {
            why += "; every run was valid: use more runs (--runs)";
        } else {
            why += &format!("; invalid: {}", excluded.join(", "));
        }
        (Overall::Inconclusive, why)
    } else {
        let worst = metrics
            .iter()
            .filter_map(|m| m.rate)
            .fold(0.0_f64, f64::max);
        (
            Overall::Pass,
            format!(
                "no regression ({} vs {} valid runs, false-failure rate <= {:.2}% per metric)",
                base_ok.len(),
                cand_ok.len(),
                worst * 100.0
            ),
        )
    };
    let cpu_sending =
        |rs: &[&Run]| median(&rs.iter().filter_map(|r| r.cpu_sending).collect::<Vec<_>>());
    Outcome {
        overall,
        metrics,
        runs,
        cpu_sending: cpu_sending(&base_ok).zip(cpu_sending(&cand_ok)),
        valid_baseline: base_ok.len(),
        valid_candidate: cand_ok.len(),
        notes,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sound, undisturbed run with the given metrics.
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
            other_cpu: Some(0.05),
            cpu_sending: None,
        }
    }

    fn base() -> Vec<Run> {
        vec![
            run("baseline-1", 40_000.0, 10.0, 2.0, 9_000.0),
            run("baseline-2", 39_800.0, 11.0, 2.1, 9_100.0),
            run("baseline-3", 40_100.0, 9.5, 1.9, 8_900.0),
            run("baseline-4", 39_900.0, 10.2, 2.05, 9_050.0),
            run("baseline-5", 40_050.0, 10.8, 1.95, 8_950.0),
        ]
    }

    /// Five candidate runs: each baseline run's metrics scaled.
    fn scaled(dps: f64, p99: f64, cpu: f64, rss: f64) -> Vec<Run> {
        base()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let m = |k: Metric| b.metrics[&k];
                run(
                    &format!("candidate-{}", i + 1),
                    m(Metric::DeliveriesPerS) * dps,
                    m(Metric::P99Ms) * p99,
                    m(Metric::ServerCpuSPerMDeliveries) * cpu,
                    m(Metric::RssBytesPerConnection) * rss,
                )
            })
            .collect()
    }

    fn verdict(o: &Outcome, m: Metric) -> Verdict {
        o.metrics.iter().find(|r| r.metric == m).unwrap().verdict
    }

    fn t() -> Thresholds {
        Thresholds::defaults()
    }

    #[test]
    fn same_performance_passes_with_a_computed_rate() {
        let cand = vec![
            run("candidate-1", 39_900.0, 10.5, 2.05, 9_050.0),
            run("candidate-2", 40_050.0, 12.0, 2.0, 9_000.0),
            run("candidate-3", 40_000.0, 9.0, 1.95, 8_950.0),
            run("candidate-4", 39_950.0, 10.1, 2.1, 9_020.0),
            run("candidate-5", 40_020.0, 10.6, 1.9, 9_010.0),
        ];
        let o = evaluate(&base(), &cand, &t());
        assert_eq!(o.overall, Overall::Pass, "{o:#?}");
        assert!(o.metrics.iter().all(|m| m.verdict == Verdict::Pass));
        assert_eq!((o.valid_baseline, o.valid_candidate), (5, 5));
        let p99 = &o.metrics[1];
        assert_eq!(p99.baseline, Some(10.2));
        assert_eq!(p99.candidate, Some(10.5));
        assert_eq!(
            p99.rate_text(t().alpha),
            "false-failure rate <= 0.79% (exact, 5 vs 5 valid runs)"
        );
        assert!(o.reason.contains("<= 0.79% per metric"), "{}", o.reason);
    }

    #[test]
    fn real_regression_fails() {
        // p99 doubles and CPU per delivery rises 40%, every run.
        let o = evaluate(&base(), &scaled(1.0, 2.0, 1.4, 1.0), &t());
        assert_eq!(o.overall, Overall::Fail);
        assert_eq!(verdict(&o, Metric::P99Ms), Verdict::Regression);
        assert_eq!(
            verdict(&o, Metric::ServerCpuSPerMDeliveries),
            Verdict::Regression
        );
        assert_eq!(verdict(&o, Metric::DeliveriesPerS), Verdict::Pass);
        assert!(
            o.reason.contains("regression in fan-out p99"),
            "{}",
            o.reason
        );
        let p = o.metrics[1].p_worse.unwrap();
        assert!((p - 1.0 / 252.0).abs() < 1e-12);
    }

    #[test]
    fn throughput_drop_fails_and_gain_is_an_improvement() {
        let o = evaluate(&base(), &scaled(0.75, 1.0, 1.0, 1.0), &t());
        assert_eq!(verdict(&o, Metric::DeliveriesPerS), Verdict::Regression);
        assert_eq!(o.overall, Overall::Fail);
        let o = evaluate(&base(), &scaled(1.0, 0.5, 0.5, 0.4), &t());
        assert_eq!(o.overall, Overall::Pass);
        assert_eq!(verdict(&o, Metric::P99Ms), Verdict::Improvement);
        assert_eq!(
            verdict(&o, Metric::RssBytesPerConnection),
            Verdict::Improvement
        );
    }

    #[test]
    fn tiny_absolute_change_is_under_the_floor() {
        // +20% p99 but 0.2 ms; +50% CPU but 0.05 s/M; +25% RSS but 500 B: all runs apart.
        let b: Vec<Run> = (1..=5)
            .map(|i| {
                run(
                    &format!("baseline-{i}"),
                    40_000.0,
                    1.0,
                    0.1,
                    2_000.0 + i as f64,
                )
            })
            .collect();
        let c: Vec<Run> = (1..=5)
            .map(|i| {
                run(
                    &format!("candidate-{i}"),
                    40_000.0,
                    1.2,
                    0.15,
                    2_500.0 + i as f64,
                )
            })
            .collect();
        let o = evaluate(&b, &c, &t());
        assert_eq!(o.overall, Overall::Pass, "{o:#?}");
        assert!(o.metrics.iter().all(|m| m.verdict == Verdict::Pass));
    }

    #[test]
    fn one_outlier_run_does_not_fail_a_change_past_the_threshold() {
        // Medians +30% CPU, but one candidate run is below two baseline runs: U = 23 of 25,
        // p = 4/252 = 1.6% > 1%.
        let mut c = scaled(1.0, 1.0, 1.3, 1.0);
        c[0].metrics.insert(Metric::ServerCpuSPerMDeliveries, 2.02);
        let o = evaluate(&base(), &c, &t());
        let cpu = &o.metrics[2];
        assert!(
            (cpu.p_worse.unwrap() - 4.0 / 252.0).abs() < 1e-12,
            "{cpu:?}"
        );
        assert_eq!(cpu.verdict, Verdict::Pass);
        assert_eq!(o.overall, Overall::Pass);
        assert!(
            o.notes.iter().any(|n| n.contains("treated as noise")),
            "{o:#?}"
        );
    }

    #[test]
    fn significant_but_small_change_passes() {
        // Every candidate run worse (U = 25), but by 12%: separated, yet under the threshold.
        let o = evaluate(&base(), &scaled(1.0, 1.0, 1.12, 1.0), &t());
        assert_eq!(verdict(&o, Metric::ServerCpuSPerMDeliveries), Verdict::Pass);
        assert!(o.metrics[2].p_worse.unwrap() <= 0.01);
    }

    #[test]
    fn too_few_runs_is_inconclusive_never_pass_or_fail() {
        // Even a doubled p99 on 2 vs 2 runs is not judged: 1/6 is the best rate possible.
        let b = &base()[..2];
        let c = &scaled(1.0, 2.0, 1.0, 1.0)[..2];
        let o = evaluate(b, c, &t());
        assert_eq!(o.overall, Overall::Inconclusive, "{o:#?}");
        assert!(o.metrics.iter().all(|m| m.verdict == Verdict::Inconclusive));
        assert!(
            o.reason.starts_with("2 baseline vs 2 candidate valid runs"),
            "{}",
            o.reason
        );
        assert!(o.reason.contains("best 16.67%"), "{}", o.reason);
        assert!(o.metrics[1]
            .rate_text(0.01)
            .starts_with("not gated: 2 vs 2"));
        // 4 vs 4 is not enough (1/70), 4 vs 5 and 5 vs 4 are (1/126).
        let o = evaluate(&base()[..4], &scaled(1.0, 1.0, 1.0, 1.0)[..4], &t());
        assert_eq!(o.overall, Overall::Inconclusive);
        let o = evaluate(&base()[..4], &scaled(1.0, 1.0, 1.0, 1.0), &t());
        assert_eq!(o.overall, Overall::Pass, "{o:#?}");
        assert!((o.metrics[0].rate.unwrap() - 1.0 / 126.0).abs() < 1e-12);
        let o = evaluate(&base(), &scaled(1.0, 1.0, 1.0, 1.0)[..4], &t());
        assert_eq!(o.overall, Overall::Pass);
    }

    #[test]
    fn disturbed_runs_are_invalid_on_either_side_with_invariants_only_reported() {
        let mut cand = scaled(0.5, 50.0, 4.0, 1.0);
        for r in &mut cand[..2] {
            r.generator_bottleneck = Some("generator used 1.9 of 2 cores".into());
            r.facts.lost = 1;
        }
        cand[2].other_cpu = Some(0.9);
        cand[2].facts.duplicates = 4;
        let o = evaluate(&base(), &cand, &t());
        assert_eq!(o.overall, Overall::Inconclusive, "{o:#?}");
        assert_eq!(o.valid_candidate, 2);
        match &o.runs[5].1 {
            RunStatus::Disturbed { why, violations } => {
                assert!(why[0].contains("bottleneck"));
                assert_eq!(violations, &["1 of 1000000 deliveries lost"]);
            }
            s => panic!("{s:?}"),
        }
        match &o.runs[7].1 {
            RunStatus::Disturbed { why, .. } => {
                assert!(
                    why[0].contains("other processes used 0.90 cores"),
                    "{why:?}"
                )
            }
            s => panic!("{s:?}"),
        }
        assert!(
            o.reason.contains("candidate-3 (disturbed: other processes"),
            "{}",
            o.reason
        );
        assert!(o
            .notes
            .iter()
            .any(|n| n.contains("reported only: 4 duplicate")));
        // The same on the baseline side.
        let mut b = base();
        b[0].other_cpu = Some(0.3);
        b[1].generator_bottleneck = Some("senders behind schedule".into());
        let o = evaluate(&b, &scaled(1.0, 1.0, 1.0, 1.0), &t());
        assert_eq!(o.overall, Overall::Inconclusive);
        assert_eq!(o.valid_baseline, 3);
        // At or under the bound, or unknown, is not disturbed.
        let mut b = base();
        b[0].other_cpu = Some(MAX_OTHER_CPU);
        b[1].other_cpu = None;
        let o = evaluate(&b, &scaled(1.0, 1.0, 1.0, 1.0), &t());
        assert_eq!(o.overall, Overall::Pass);
    }

    #[test]
    fn loss_on_an_undisturbed_candidate_fails_even_with_good_numbers() {
        let mut cand = scaled(1.0, 1.0, 1.0, 1.0);
        cand[0].facts.lost = 3;
        let o = evaluate(&base(), &cand, &t());
        assert_eq!(o.overall, Overall::Fail);
        assert!(
            o.notes[0].contains("3 of 1000000 deliveries lost"),
            "{o:#?}"
        );
        assert!(
            o.reason.contains("invariant broken on candidate-1"),
            "{}",
            o.reason
        );
        // Even with too few valid runs left.
        let o = evaluate(&base()[..1], &cand[..1], &t());
        assert_eq!(o.overall, Overall::Fail);
    }

    #[test]
    fn broken_run_is_a_failure_on_the_candidate_even_if_disturbed_flags_are_unknown() {
        let mut cand = scaled(1.0, 1.0, 1.0, 1.0);
        cand[1].error = Some("no usable report: deliveries.lost: missing".into());
        let o = evaluate(&base(), &cand, &t());
        assert_eq!(o.overall, Overall::Fail);
        assert!(
            o.reason.contains("deliveries.lost: missing"),
            "{}",
            o.reason
        );
    }

    #[test]
    fn every_invariant_is_checked() {
        let mut r = run("candidate-1", 1.0, 1.0, 1.0, 1.0);
        assert!(violations(&r).is_empty());
        r.facts.joined = 399;
        r.facts.failed = 1;
        r.facts.duplicates = 2;
        r.facts.out_of_order = 6;
        r.facts.foreign = 7;
        r.facts.disconnects.insert("4008".into(), 5);
        let v = violations(&r);
        assert_eq!(v.len(), 5, "{v:?}");
        assert!(v[0].contains("399 of 400 clients"));
        assert_eq!(v[2], "6 deliveries out of order");
        assert!(v[3].starts_with("7 foreign frames"));
        assert!(v[4].contains("4008 x5"));
        r.error = Some("loadtest exited with status 1 and wrote no report".into());
        assert_eq!(violations(&r).len(), 1);
    }

    #[test]
    fn out_of_order_and_foreign_fail_the_candidate() {
        for f in [
            |r: &mut Run| r.facts.out_of_order = 1,
            |r: &mut Run| r.facts.foreign = 1,
        ] {
            let mut cand = scaled(1.0, 1.0, 1.0, 1.0);
            f(&mut cand[4]);
            let o = evaluate(&base(), &cand, &t());
            assert_eq!(o.overall, Overall::Fail, "{o:#?}");
        }
    }

    #[test]
    fn broken_baseline_runs_are_excluded_not_blamed_on_the_candidate() {
        let mut b = base();
        b.push(run("baseline-6", 40_000.0, 10.0, 2.0, 9_000.0));
        b[0].facts.lost = 10;
        let cand = scaled(1.0, 1.0, 1.0, 1.0);
        let o = evaluate(&b, &cand, &t());
        assert_eq!(o.overall, Overall::Pass, "{o:#?}");
        assert_eq!(o.valid_baseline, 5);
        // Not enough baseline runs left: inconclusive, still not a failure.
        b[1].error = Some("server exited".into());
        b[2].facts.foreign = 1;
        let o = evaluate(&b, &cand, &t());
        assert_eq!(o.overall, Overall::Inconclusive);
        assert!(o.reason.contains("baseline-1 (10 of"), "{}", o.reason);
    }

    #[test]
    fn unmeasured_metric_is_not_judged() {
        let mut c = scaled(1.0, 1.0, 1.0, 1.0);
        for r in &mut c {
            r.metrics.remove(&Metric::RssBytesPerConnection);
        }
        let o = evaluate(&base(), &c, &t());
        assert_eq!(o.overall, Overall::Pass);
        assert_eq!(
            verdict(&o, Metric::RssBytesPerConnection),
            Verdict::NotMeasured
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    /// A normal draw (Box-Muller) from a seeded generator.
    fn normal(rng: &mut fastrand::Rng) -> f64 {
        let (u1, u2) = (1.0 - rng.f64(), rng.f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn draws(rng: &mut fastrand::Rng, side: &str, n: usize, cpu: f64, noise: f64) -> Vec<Run> {
        (1..=n)
            .map(|i| {
                let mut x = || 1.0 + noise * normal(rng);
                run(
                    &format!("{side}-{i}"),
                    40_000.0 * x(),
                    10.0 * x(),
                    cpu * x(),
                    9_000.0 * x(),
                )
            })
            .collect()
    }

    #[test]
    fn identical_servers_fail_at_most_at_the_computed_rate() {
        let mut rng = fastrand::Rng::with_seed(0x07de_c4a7);
        let trials = 20_000;
        let rate = t().rate(5, 5).unwrap();
        assert!((rate - 2.0 / 252.0).abs() < 1e-12);
        // The rank test alone (no threshold): it rejects at its exact size.
        let mut rejected = [0usize; 4];
        // The whole gate with a noise large enough to cross the thresholds often: 30%.
        let mut failed = 0;
        for _ in 0..trials {
            let b = draws(&mut rng, "baseline", 5, 2.0, 0.30);
            let c = draws(&mut rng, "candidate", 5, 2.0, 0.30);
            let o = evaluate(&b, &c, &t());
            for (i, m) in o.metrics.iter().enumerate() {
                if m.p_worse.unwrap() <= t().alpha {
                    rejected[i] += 1;
                }
            }
            if o.overall == Overall::Fail {
                failed += 1;
            }
            assert_ne!(o.overall, Overall::Inconclusive);
        }
        // Binomial sd at 0.79% and 20,000 trials: 0.063%; allow 3 sd.
        let bound = rate + 3.0 * (rate * (1.0 - rate) / trials as f64).sqrt();
        for (i, r) in rejected.iter().enumerate() {
            let share = *r as f64 / trials as f64;
            assert!(share <= bound, "metric {i}: {share} > {bound}");
            assert!(
                share > rate / 2.0,
                "metric {i}: {share}: the test is too weak"
            );
        }
        // Any of 4 metrics: at most 4 x the rate (union bound).
        let share = failed as f64 / trials as f64;
        assert!(share <= 4.0 * bound, "{share}");
    }

    #[test]
    fn a_thirty_percent_cpu_regression_is_caught_nearly_always() {
        let mut rng = fastrand::Rng::with_seed(42);
        let trials = 2_000;
        let mut caught = 0;
        for _ in 0..trials {
            let b = draws(&mut rng, "baseline", 5, 2.0, 0.05);
            let c = draws(&mut rng, "candidate", 5, 2.6, 0.05);
            let o = evaluate(&b, &c, &t());
            if verdict(&o, Metric::ServerCpuSPerMDeliveries) == Verdict::Regression
                && o.overall == Overall::Fail
            {
                caught += 1;
            }
        }
        let share = caught as f64 / trials as f64;
        assert!(share >= 0.99, "caught {share}");
    }

    #[test]
    fn improvement_is_the_mirrored_test() {
        let o = evaluate(&scaled(1.0, 1.0, 1.4, 1.0), &base(), &t());
        let cpu = &o.metrics[2];
        assert_eq!(cpu.verdict, Verdict::Improvement);
        assert!((cpu.p_better.unwrap() - 1.0 / 252.0).abs() < 1e-12);
        assert_eq!(cpu.p_worse.unwrap(), 1.0);
    }
}
