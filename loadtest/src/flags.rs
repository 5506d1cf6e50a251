//! Goose's own command-line flags, one by one: which work beside this load test and which are
//! refused, and why. [`check`] refuses the latter before anything starts; the README's table
//! is this list (a test keeps them the same, and keeps every goose flag in it).

use goose::config::GooseConfiguration;
use goose::metrics::GooseCoordinatedOmissionMitigation;

/// Why a controller flag is refused.
const CONTROLLERS: &str = "goose's Controllers are off here: they change the users and the \
    load shape mid-run, which the rooms, senders and warm-up, fixed before the start, cannot \
    follow";
/// Why an HTTP client flag is refused.
const HTTP_CLIENT: &str = "goose's HTTP client is not used: the clients speak websocket \
    themselves, with their own time limits (30 s to connect and to join)";
/// Why a debug log flag is refused.
const DEBUG_LOG: &str = "the clients write no debug records: failures go to --error-log and \
    to the fan-out report";
/// Why a dashboard flag is refused.
const DASHBOARD: &str = "goose is built here without its dashboard feature";
/// Why the scenario flags are refused.
const SCENARIOS: &str = "this load test has one goose scenario (ChatClient); the chat \
    scenarios are chosen with --scenario chat|bigroom|storm|step";

/// A flag refused, with its reason, when `given`.
struct Refusal {
    flag: &'static str,
    given: bool,
    reason: &'static str,
}

/// Refuses the goose flags that cannot work with this load test, naming the reason.
pub fn check(goose: &GooseConfiguration) -> anyhow::Result<()> {
    let co_mitigation = goose
        .co_mitigation
        .as_ref()
        .is_some_and(|m| *m != GooseCoordinatedOmissionMitigation::Disabled);
    let refusals = [
        Refusal {
            flag: "--scenarios",
            given: goose.scenarios.is_some(),
            reason: SCENARIOS,
        },
        Refusal {
            flag: "--scenarios-list",
            given: goose.scenarios_list,
            reason: SCENARIOS,
        },
        Refusal {
            flag: "--throttle-requests",
            given: goose.throttle_requests.is_some(),
            reason: "this load test makes no HTTP requests: the senders' schedule sets the \
                rate (use --msg-rate and --senders)",
        },
        Refusal {
            flag: "--co-mitigation",
            given: co_mitigation,
            reason: "the senders are open loop (messages leave on a fixed schedule and latency \
                is measured from it), so there is no coordinated omission to mitigate; goose \
                would add invented samples",
        },
        Refusal {
            flag: "--request-body",
            given: goose.request_body,
            reason: "the requests goose logs are custom records (connect, join, fanout, say), \
                which have no body",
        },
        Refusal {
            flag: "--debug-log",
            given: goose.debug_log.is_some(),
            reason: DEBUG_LOG,
        },
        Refusal {
            flag: "--debug-format",
            given: goose.debug_format.is_some(),
            reason: DEBUG_LOG,
        },
        Refusal {
            flag: "--no-debug-body",
            given: goose.no_debug_body,
            reason: DEBUG_LOG,
        },
        Refusal {
            flag: "--dashboard",
            given: goose.dashboard,
            reason: DASHBOARD,
        },
        Refusal {
            flag: "--dashboard-host",
            given: goose.dashboard_host.is_some(),
            reason: DASHBOARD,
        },
        Refusal {
            flag: "--dashboard-port",
            given: goose.dashboard_port.is_some(),
            reason: DASHBOARD,
        },
        Refusal {
            flag: "--dashboard-auth-token",
            given: goose.dashboard_auth_token.is_some(),
            reason: DASHBOARD,
        },
        Refusal {
            flag: "--dashboard-control",
            given: goose.dashboard_control,
            reason: DASHBOARD,
        },
        Refusal {
            flag: "--dashboard-no-auth",
            given: goose.dashboard_no_auth,
            reason: DASHBOARD,
        },
        Refusal {
            flag: "--dashboard-max-clients",
            given: goose.dashboard_max_clients.is_some(),
            reason: DASHBOARD,
        },
        Refusal {
            flag: "--no-autostart",
            given: goose.no_autostart,
            reason: CONTROLLERS,
        },
        Refusal {
            flag: "--telnet-host",
            given: goose.telnet_host.is_some(),
            reason: CONTROLLERS,
        },
        Refusal {
            flag: "--telnet-port",
            given: goose.telnet_port.is_some(),
            reason: CONTROLLERS,
        },
        Refusal {
            flag: "--websocket",
            given: goose.websocket,
            reason: CONTROLLERS,
        },
        Refusal {
            flag: "--websocket-host",
            given: goose.websocket_host.is_some(),
            reason: CONTROLLERS,
        },
        Refusal {
            flag: "--websocket-port",
            given: goose.websocket_port.is_some(),
            reason: CONTROLLERS,
        },
        Refusal {
            flag: "--timeout",
            given: goose.timeout.is_some(),
            reason: HTTP_CLIENT,
        },
        Refusal {
            flag: "--no-gzip",
            given: goose.no_gzip,
            reason: HTTP_CLIENT,
        },
        Refusal {
            flag: "--sticky-follow",
            given: goose.sticky_follow,
            reason: HTTP_CLIENT,
        },
        Refusal {
            flag: "--accept-invalid-certs",
            given: goose.accept_invalid_certs,
            reason: HTTP_CLIENT,
        },
    ];
    match refusals.iter().find(|r| r.given) {
        Some(r) => anyhow::bail!(
            "{} is not supported by this load test: {}",
            r.flag,
            r.reason
        ),
        None => Ok(()),
    }
}

/// The goose flags [`check`] refuses (for the tests and the README's table).
pub const REFUSED: &[&str] = &[
    "--scenarios",
    "--scenarios-list",
    "--throttle-requests",
    "--co-mitigation",
    "--request-body",
    "--debug-log",
    "--debug-format",
    "--no-debug-body",
    "--dashboard",
    "--dashboard-host",
    "--dashboard-port",
    "--dashboard-auth-token",
    "--dashboard-control",
    "--dashboard-no-auth",
    "--dashboard-max-clients",
    "--no-autostart",
    "--telnet-host",
    "--telnet-port",
    "--websocket",
    "--websocket-host",
    "--websocket-port",
    "--timeout",
    "--no-gzip",
    "--sticky-follow",
    "--accept-invalid-certs",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every long flag goose adds to the command line.
    fn goose_flags() -> Vec<String> {
        let cmd = <GooseConfiguration as clap::Args>::augment_args(clap::Command::new("t"));
        cmd.get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .collect()
    }

    /// The README's table of goose flags: (flag, works).
    fn readme_table() -> Vec<(String, bool)> {
        let readme = include_str!("../../README.md");
        let mut rows = Vec::new();
        for line in readme.lines().filter(|l| l.starts_with("| `-")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let works = match cells.get(2) {
                Some(&"works") => true,
                Some(&"refused") => false,
                _ => continue,
            };
            for flag in cells[1].split(',') {
                let flag = flag.trim().trim_matches('`');
                if let Some(long) = flag.split_whitespace().find(|f| f.starts_with("--")) {
                    rows.push((long.trim_matches('`').to_string(), works));
                }
            }
        }
        rows
    }

    #[test]
    fn every_goose_flag_is_in_the_readme_table_as_check_treats_it() {
        let table = readme_table();
        for flag in goose_flags() {
            let row = table.iter().find(|(f, _)| *f == flag);
            let Some((_, works)) = row else {
                panic!("{flag} is missing from the README's table of goose flags");
            };
            assert_eq!(
                *works,
                !REFUSED.contains(&flag.as_str()),
                "{flag}: the README and flags::check disagree"
            );
        }
        for flag in REFUSED {
            assert!(
                goose_flags().iter().any(|f| f == flag),
                "{flag} is no goose flag"
            );
        }
    }

    #[test]
    fn every_refused_flag_is_refused_with_its_reason() {
        for flag in REFUSED {
            let mut args = vec!["loadtest", flag];
            let value = match *flag {
                "--scenarios" => Some("chatclient"),
                "--throttle-requests"
                | "--dashboard-port"
                | "--telnet-port"
                | "--websocket-port"
                | "--timeout"
                | "--dashboard-max-clients" => Some("5"),
                "--co-mitigation" => Some("average"),
                "--debug-log" => Some("d.log"),
                "--debug-format" => Some("csv"),
                "--dashboard-host" | "--telnet-host" | "--websocket-host" => Some("127.0.0.1"),
                "--dashboard-auth-token" => Some("t"),
                _ => None,
            };
            args.extend(value);
            let cli = crate::config::parse(&args).unwrap_or_else(|e| panic!("{flag}: {e}"));
            let err = check(&cli.goose).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{flag} is not supported")),
                "{err}"
            );
            assert!(err.len() > flag.len() + 40, "{err}");
        }
        let cli = crate::config::parse(["loadtest", "--co-mitigation", "disabled"]).unwrap();
        check(&cli.goose).unwrap();
    }
}
