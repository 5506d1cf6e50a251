//! Command line of `bench` (and so of `scripts/bench`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Loadtest options `--quick` adds (unless the extra loadtest arguments set them): a short
/// chat-like run of 400 clients, 10 senders x 10 msg/s, 10 s.
pub const QUICK_ARGS: &[(&str, &str)] = &[("--users", "400"), ("--run-time", "10s")];
/// `--quick` for the `step` scenario (whose run time follows from its steps).
pub const QUICK_STEP_ARGS: &[(&str, &str)] = &[("--users", "400"), ("--max-steps", "4")];
/// Runs per side by default, and with `--quick`.
pub const DEFAULT_RUNS: usize = 3;
pub const QUICK_RUNS: usize = 3;

/// A/B benchmark of the tidechat server: builds the baseline revision (in its own worktree and
/// target dir) and the candidate (this working tree), runs the same loadtest binary against each,
/// alternating A B A B on this machine, and gates the candidate on invariants and on ratios of
/// the medians. Exits 1 on a real regression or a broken invariant, 0 otherwise (also when the
/// comparison is invalid because the load generator was the bottleneck, or there is no baseline).
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    after_help = "Extra loadtest options go after `--`, e.g. \
    `scripts/bench --quick -- --senders 20`. Outputs in TARGET/bench/: summary.md, bench.json \
    (github-action-benchmark custom format), reports/*.html and *.json."
)]
pub struct Cli {
    /// Baseline git revision [default: merge base with `main`; HEAD~1 when that is HEAD].
    #[arg(long)]
    pub baseline: Option<String>,
    /// Loadtest scenario: chat, bigroom, storm or step.
    #[arg(long, default_value = "chat")]
    pub scenario: String,
    /// Runs per side [default: 3, or 2 with --quick].
    #[arg(long)]
    pub runs: Option<usize>,
    /// A short run for CI (400 clients, 10 s, 3 runs per side).
    #[arg(long)]
    pub quick: bool,
    /// Longest a single load-test run may take before it is killed.
    #[arg(long, default_value = "15m", value_parser = parse_secs)]
    pub run_timeout: Duration,
    /// Output directory [default: TARGET/bench].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Extra loadtest options (after `--`).
    #[arg(last = true, allow_hyphen_values = true)]
    pub loadtest_args: Vec<String>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let (n, mul) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    n.parse::<u64>()
        .map(|n| Duration::from_secs(n * mul))
        .map_err(|_| format!("{s:?}: use seconds, `90s` or `15m`"))
}

impl Cli {
    pub fn runs(&self) -> usize {
        self.runs
            .unwrap_or(if self.quick { QUICK_RUNS } else { DEFAULT_RUNS })
            .max(1)
    }

    /// The loadtest arguments common to every run: scenario, `--quick` defaults not overridden,
    /// then the extra ones.
    pub fn loadtest_args(&self) -> Vec<String> {
        let mut args = vec!["--scenario".to_string(), self.scenario.clone()];
        if self.quick {
            let quick = if self.scenario == "step" {
                QUICK_STEP_ARGS
            } else {
                QUICK_ARGS
            };
            for (flag, value) in quick {
                let given = self
                    .loadtest_args
                    .iter()
                    .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
                if !given {
                    args.push(flag.to_string());
                    args.push(value.to_string());
                }
            }
        }
        args.extend(self.loadtest_args.iter().cloned());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_defaults_yield_to_explicit_args() {
        let cli = Cli::try_parse_from(["bench", "--quick", "--", "--users", "100"]).unwrap();
        assert_eq!(cli.runs(), 3);
        assert_eq!(
            cli.loadtest_args(),
            ["--scenario", "chat", "--run-time", "10s", "--users", "100"]
        );
        let cli = Cli::try_parse_from(["bench", "--scenario", "bigroom", "--runs", "5"]).unwrap();
        assert_eq!(cli.runs(), 5);
        assert_eq!(cli.loadtest_args(), ["--scenario", "bigroom"]);
        assert_eq!(parse_secs("15m"), Ok(Duration::from_secs(900)));
    }
}
