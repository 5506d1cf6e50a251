//! Command line of `bench` (and so of `scripts/bench`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Loadtest options `--quick` adds (unless the extra loadtest arguments set them): a short
/// chat-like run of 400 clients, 10 senders x 10 msg/s, 10 s.
pub const QUICK_ARGS: &[(&str, &str)] = &[("--users", "400"), ("--run-time", "10s")];
/// `--quick` for the `step` scenario (whose run time follows from its steps).
pub const QUICK_STEP_ARGS: &[(&str, &str)] = &[("--users", "400"), ("--max-steps", "4")];
/// Runs per side by default, and with `--quick`: 5 vs 5 valid runs is the fewest with a
/// false-failure rate under 1% per metric that can spare no run (4 vs 5 still can: 1/126).
pub const DEFAULT_RUNS: usize = 5;
pub const QUICK_RUNS: usize = 5;

/// A/B benchmark of the tidechat server: builds the baseline revision (in its own worktree and
/// target dir) and the candidate (this working tree), runs the same loadtest binary against each,
/// alternating A B B A on this machine, and gates the candidate on invariants and, per metric, on
/// an exact rank test plus thresholds on the medians. Exits 1 on a real regression or a broken
/// invariant, 0 otherwise: also INCONCLUSIVE (too few valid runs, e.g. disturbed by other load on
/// the machine) and when there is no baseline.
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    after_help = "Extra loadtest options go after `--`, e.g. \
    `scripts/bench --quick -- --senders 20`. Outputs in TARGET/bench/: summary.md, bench.json \
    (github-action-benchmark custom format), reports/*.html and *.json."
)]
pub struct Cli {
    /// Baseline git revision [default: merge base with `main`; HEAD~1 when that is HEAD].
    #[arg(long, conflicts_with_all = ["baseline_tidechat", "baseline_cmd"])]
    pub baseline: Option<String>,
    /// Use this prebuilt tidechat binary as the baseline (no worktree, no build).
    #[arg(long, value_name = "PATH", conflicts_with = "baseline_cmd")]
    pub baseline_tidechat: Option<PathBuf>,
    /// Run an arbitrary server as the baseline, with `sh -c CMD` and `PORT=<free port>` in its
    /// environment: it must listen on 127.0.0.1:$PORT and serve a websocket at `/ws`. Use
    /// `exec` for the server itself so its PID is the one measured, e.g.
    /// `--baseline-cmd 'exec scripts/peer uws'`.
    #[arg(long, value_name = "CMD")]
    pub baseline_cmd: Option<String>,
    /// Loadtest `--protocol` for the baseline side only: raw, seed or v1 [default: raw with
    /// --baseline-cmd, else the loadtest's own default].
    #[arg(long, value_name = "PROTOCOL", value_parser = ["raw", "seed", "v1"])]
    pub baseline_protocol: Option<String>,
    /// Extra environment variable for the baseline's server (repeatable), e.g. `K=V`.
    #[arg(long, value_name = "K=V", value_parser = parse_env)]
    pub baseline_env: Vec<(String, String)>,
    /// Extra environment variable for the candidate's server (repeatable), e.g.
    /// `--candidate-env TIDECHAT_THREADS=2`.
    #[arg(long, value_name = "K=V", value_parser = parse_env)]
    pub candidate_env: Vec<(String, String)>,
    /// Mean cores other processes may use while messages are sent before a run is disturbed
    /// (invalid) [default: 0.25; see the crate docs].
    #[arg(long, value_name = "CORES")]
    pub max_other_cpu: Option<f64>,
    /// Loadtest scenario: chat, bigroom, storm or step.
    #[arg(long, default_value = "chat")]
    pub scenario: String,
    /// Runs per side [default: 5, also with --quick].
    #[arg(long)]
    pub runs: Option<usize>,
    /// A short run for CI (400 clients, 10 s, 5 runs per side).
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

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("{s:?}: use NAME=VALUE")),
    }
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

    /// The loadtest `--protocol` of the baseline side, if it differs from the common arguments.
    pub fn baseline_protocol(&self) -> Option<&str> {
        self.baseline_protocol
            .as_deref()
            .or(self.baseline_cmd.as_ref().map(|_| "raw"))
    }

    /// The loadtest arguments of one side: the common ones, then (baseline only) `--protocol`.
    pub fn side_args(&self, baseline: bool) -> Vec<String> {
        let mut args = self.loadtest_args();
        if let Some(p) = self.baseline_protocol().filter(|_| baseline) {
            args.push("--protocol".into());
            args.push(p.into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_defaults_yield_to_explicit_args() {
        let cli = Cli::try_parse_from(["bench", "--quick", "--", "--users", "100"]).unwrap();
        assert_eq!(cli.runs(), 5);
        assert_eq!(
            cli.loadtest_args(),
            ["--scenario", "chat", "--run-time", "10s", "--users", "100"]
        );
        let cli = Cli::try_parse_from(["bench", "--scenario", "bigroom", "--runs", "7"]).unwrap();
        assert_eq!(cli.runs(), 7);
        assert_eq!(cli.loadtest_args(), ["--scenario", "bigroom"]);
        assert_eq!(parse_secs("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(Cli::try_parse_from(["bench"]).unwrap().runs(), 5);
    }

    #[test]
    fn side_settings() {
        let cli = Cli::try_parse_from([
            "bench",
            "--candidate-env",
            "TIDECHAT_THREADS=2",
            "--candidate-env",
            "A=b=c",
            "--baseline-env",
            "X=",
            "--baseline-tidechat",
            "/tmp/tidechat",
        ])
        .unwrap();
        assert_eq!(
            cli.candidate_env,
            [
                ("TIDECHAT_THREADS".to_string(), "2".to_string()),
                ("A".into(), "b=c".into())
            ]
        );
        assert_eq!(cli.baseline_env, [("X".to_string(), String::new())]);
        assert_eq!(cli.baseline_tidechat, Some(PathBuf::from("/tmp/tidechat")));
        assert_eq!(cli.baseline_protocol(), None);
        assert_eq!(cli.side_args(true), cli.side_args(false));
        assert!(Cli::try_parse_from(["bench", "--candidate-env", "NOEQUALS"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--baseline-env", "=v"]).is_err());
    }

    #[test]
    fn baseline_command_and_protocol_go_to_the_baseline_side_only() {
        let cli = Cli::try_parse_from([
            "bench",
            "--baseline-cmd",
            "exec node server.js",
            "--quick",
            "--",
            "--senders",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.baseline_cmd.as_deref(), Some("exec node server.js"));
        assert_eq!(cli.baseline_protocol(), Some("raw"));
        let common = [
            "--scenario",
            "chat",
            "--users",
            "400",
            "--run-time",
            "10s",
            "--senders",
            "2",
        ];
        assert_eq!(cli.side_args(false), common);
        let mut base: Vec<&str> = common.to_vec();
        base.extend(["--protocol", "raw"]);
        assert_eq!(cli.side_args(true), base);
        let cli =
            Cli::try_parse_from(["bench", "--baseline-cmd", "x", "--baseline-protocol", "v1"])
                .unwrap();
        assert_eq!(cli.side_args(true)[2..], ["--protocol", "v1"]);
        let cli = Cli::try_parse_from(["bench", "--baseline-protocol", "seed"]).unwrap();
        assert_eq!(cli.side_args(true)[2..], ["--protocol", "seed"]);
        assert!(cli.side_args(false).len() == 2);
        assert!(Cli::try_parse_from(["bench", "--baseline-protocol", "tcp"]).is_err());
        // One kind of baseline at a time.
        assert!(
            Cli::try_parse_from(["bench", "--baseline", "HEAD", "--baseline-cmd", "x"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["bench", "--baseline-tidechat", "t", "--baseline-cmd", "x"])
                .is_err()
        );
    }
}
