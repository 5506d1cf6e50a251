//! Where the load goes: the targets given with `--host` (several may be, each with its
//! `--server-pid`), or the tidechat server this program starts itself when none is given.

use std::path::PathBuf;

use goose::config::GooseConfiguration;

use crate::config::{Options, Protocol, ServerMode};
use crate::embedded::Embedded;
use crate::report::Target;

/// The servers under test for one run.
pub struct Setup {
    /// In `--host` order; clients are dealt to them round-robin.
    pub targets: Vec<Target>,
    /// The server runs on threads of this process.
    pub thread_mode: bool,
    /// Keeps the embedded server running until the end.
    _embedded: Option<Embedded>,
}

impl Setup {
    /// The servers' PIDs, in target order (a server given twice appears twice).
    pub fn server_pids(&self) -> Vec<u32> {
        self.targets.iter().filter_map(|t| t.server_pid).collect()
    }

    /// The websocket URLs, in target order.
    pub fn urls(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.url.clone()).collect()
    }
}

/// The `--host` values: repeated flags arrive joined by commas (see [`crate::config::parse`]).
pub fn hosts(goose: &GooseConfiguration) -> Vec<String> {
    goose
        .host
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// Finds the targets (starting the embedded server when there are none) and points goose at the
/// first. `exe` is this program, for the process server mode; without it the embedded server
/// runs on threads.
pub fn prepare(
    options: &Options,
    goose: &mut GooseConfiguration,
    exe: Option<PathBuf>,
    server_args: &[String],
) -> anyhow::Result<Setup> {
    let hosts = hosts(goose);
    let setup = if hosts.is_empty() {
        anyhow::ensure!(
            options.server_pid.is_empty(),
            "--server-pid needs --host (without --host the load test starts its own server and \
             measures it)"
        );
        let embedded = match (options.server_mode, exe) {
            (ServerMode::Process, Some(exe)) => Embedded::start_process(&exe, server_args)?,
            _ => Embedded::start_thread(server_args)?,
        };
        let server = if embedded.pid.is_some() {
            "process"
        } else {
            "thread"
        };
        goose.host = Some(embedded.http_url());
        Setup {
            targets: vec![Target {
                url: ws_url(&embedded.http_url(), options.protocol)?,
                server: server.into(),
                server_pid: embedded.pid,
            }],
            thread_mode: embedded.pid.is_none(),
            _embedded: Some(embedded),
        }
    } else {
        let pids = &options.server_pid;
        anyhow::ensure!(
            pids.is_empty() || pids.len() == hosts.len(),
            "{} --host values but {} --server-pid values: give one PID per host, in the same \
             order (the same PID twice for one server given twice), or none",
            hosts.len(),
            pids.len()
        );
        anyhow::ensure!(
            server_args.is_empty(),
            "--server-arg is for the server this program starts itself; with --host, pass the \
             options to your server"
        );
        let targets = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Ok(Target {
                    url: ws_url(h, options.protocol)?,
                    server: "external".into(),
                    server_pid: pids.get(i).copied(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Goose wants one host; it makes no requests of its own here.
        goose.host = Some(hosts[0].clone());
        Setup {
            targets,
            thread_mode: false,
            _embedded: None,
        }
    };
    Ok(setup)
}

/// Warns when the open-file limit `nofile` is too low for `users` clients.
pub fn check_nofile(nofile: u64, users: usize, thread_mode: bool) {
    if (users as u64) * 2 + 100 > nofile && thread_mode {
        log::warn!("open-file limit {nofile} is low for {users} clients plus an in-process server");
    } else if users as u64 + 100 > nofile {
        log::warn!("open-file limit {nofile} is below {users} clients: raise `ulimit -n`");
    }
}

/// The websocket URL of a `ws://HOST:PORT[/PATH]` or `http://...` host; without a path, the
/// protocol's usual one.
pub fn ws_url(host: &str, protocol: Protocol) -> anyhow::Result<String> {
    let rest = host
        .strip_prefix("ws://")
        .or_else(|| host.strip_prefix("http://"))
        .ok_or_else(|| anyhow::anyhow!("--host {host}: use ws://HOST:PORT or http://HOST:PORT"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    anyhow::ensure!(!hostport.is_empty(), "--host {host}: no host");
    let path = match path {
        "" | "/" => match protocol {
            Protocol::V1 | Protocol::Raw => "/ws",
            Protocol::Seed => "/chatSocket",
        },
        p => p,
    };
    Ok(format!("ws://{hostport}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:3000", Protocol::V1).unwrap(),
            "ws://127.0.0.1:3000/ws"
        );
        assert_eq!(
            ws_url("ws://127.0.0.1:3000/", Protocol::Seed).unwrap(),
            "ws://127.0.0.1:3000/chatSocket"
        );
        assert_eq!(
            ws_url("ws://127.0.0.1:4000", Protocol::Raw).unwrap(),
            "ws://127.0.0.1:4000/ws"
        );
        assert_eq!(
            ws_url("ws://h:1/custom", Protocol::V1).unwrap(),
            "ws://h:1/custom"
        );
        assert!(ws_url("https://h", Protocol::V1).is_err());
    }

    #[test]
    fn hosts_split_on_commas() {
        let mut g = GooseConfiguration::default();
        g.host = Some("ws://a:1, ws://b:2,".into());
        assert_eq!(hosts(&g), ["ws://a:1", "ws://b:2"]);
    }
}
