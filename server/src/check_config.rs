//! `tidechat --check-config`: for deploy pipelines and `ExecStartPre=`. Validates what a start
//! would validate, and what a start would trip over later, without starting: the options and the
//! `TIDECHAT_*` environment (also variables that no option reads: a misspelt one would otherwise
//! be ignored silently), the static directory, and the data directory (it exists or can be
//! created, and is writable). Then it prints every option's effective value and where it came
//! from (flag, environment or default), with Redis passwords redacted, and exits 0; or it prints
//! the reason and exits 2 (what clap exits with for a malformed option).
//!
//! A flag, not a subcommand: the check is the service's own command line with one flag more, and
//! every option keeps working in any position (clap would take a subcommand's options only after
//! it, or only before it). It binds no port (the running server holds it) and does not contact
//! Redis (a build host may not reach it, and a node's first contact claims its place in the
//! instance list): `--redis` URLs are only parsed.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use crate::config::{redact_url, Args, Config};

/// Checks `args` (parsed into `matches`); prints the configuration to `out` or the reason to
/// `err`. Returns the exit status: 0 or 2.
pub fn run(args: Args, matches: &ArgMatches, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let threads = args.executor_threads();
    match check(args) {
        Ok(config) => {
            // A failed write to stdout (closed) leaves nothing else to say.
            let _ = print(&config, threads, matches, out);
            0
        }
        Err(reason) => {
            let _ = writeln!(err, "error: {reason}");
            2
        }
    }
}

/// What a start would check, and what it would meet: the first problem, in words.
fn check(args: Args) -> Result<Config, String> {
    unknown_env(std::env::vars_os().map(|(k, _)| k))?;
    let config = args.into_config().map_err(|e| e.to_string())?;
    // The server serves these two by name and does not start without them.
    for (file, what) in [
        ("index.html", "the chat page"),
        ("status.html", "the status page"),
    ] {
        if !config.static_dir.join(file).is_file() {
            return Err(format!(
                "--static-dir {}: no {file} there ({what})",
                config.static_dir.display()
            ));
        }
    }
    if let (Some(dir), true) = (&config.data_dir, config.redis.is_empty()) {
        data_dir(dir).map_err(|why| format!("--data-dir {}: {why}", dir.display()))?;
    }
    if let Some(pem) = &config.redis_ca {
        if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err("--redis-ca: no PEM certificate in the file".into());
        }
    }
    Ok(config)
}

/// The environment variables options read.
fn known_env() -> Vec<String> {
    Args::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// Refuses a `TIDECHAT_*` variable that no option reads.
fn unknown_env(names: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    let known = known_env();
    for name in names {
        let name = name.to_string_lossy();
        if name.starts_with("TIDECHAT_") && !known.iter().any(|k| *k == name) {
            return Err(format!(
                "the environment variable {name} is set, but no option reads it (a typo? \
                 tidechat --help lists each option's variable)"
            ));
        }
    }
    Ok(())
}

/// Whether the server could keep its history in `dir`: a directory it can write to, or a path
/// it could create one at. Nothing is left behind: a file written to try it is removed, and a
/// missing directory is not created.
fn data_dir(dir: &Path) -> Result<String, String> {
    let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .ok_or("no part of the path exists")?;
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    try_write(existing).map_err(|e| format!("{} is not writable: {e}", existing.display()))?;
    Ok(if existing == dir {
        format!("{} (exists, writable)", dir.display())
    } else {
        format!(
            "{} (to be created in {}, which is writable)",
            dir.display(),
            existing.display()
        )
    })
}

/// Creates and removes a file in `dir`.
fn try_write(dir: &Path) -> std::io::Result<()> {
    let probe: PathBuf = dir.join(format!(".tidechat-check-config.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let written = f
        .write_all(b"tidechat --check-config\n")
        .and_then(|_| f.sync_all());
    drop(f);
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

/// Every option with its value and source, then what they add up to.
fn print(
    config: &Config,
    threads: usize,
    matches: &ArgMatches,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "tidechat {}: the configuration is valid",
        env!("CARGO_PKG_VERSION")
    )?;
    let command = Args::command();
    let rows: Vec<(String, String, String)> = command
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_long().is_some())
        .filter(|a| !matches!(a.get_id().as_str(), "check_config" | "help" | "version"))
        .map(|a| {
            let id = a.get_id().as_str();
            let long = format!("--{}", a.get_long().unwrap_or(id));
            let values: Vec<String> = matches
                .get_raw(id)
                .into_iter()
                .flatten()
                .map(OsStr::to_string_lossy)
                .map(|v| {
                    if id == "redis" {
                        redact_url(&v)
                    } else {
                        v.into_owned()
                    }
                })
                .collect();
            let value = if values.is_empty() {
                "(none)".to_string()
            } else {
                values.join(",")
            };
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag".to_string(),
                Some(ValueSource::EnvVariable) => format!(
                    "env {}",
                    a.get_env().map_or("?".into(), |e| e.to_string_lossy())
                ),
                _ => "default".to_string(),
            };
            (long, value, source)
        })
        .collect();
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|r| r.1.chars().count())
        .filter(|&n| n <= 40)
        .max()
        .unwrap_or(0);
    for (long, value, source) in &rows {
        writeln!(out, "  {long:<width$}  {value:<value_width$}  {source}")?;
    }
    let history = match (&config.data_dir, config.redis.is_empty()) {
        (_, false) => "in Redis (not contacted by this check)".to_string(),
        (None, true) => "in memory only (lost on restart)".to_string(),
        // Checked above.
        (Some(dir), true) => format!("on disk in {}", data_dir(dir).unwrap_or_default()),
    };
    writeln!(out, "history: {history}")?;
    writeln!(out, "executor threads: {threads}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_variable_is_refused_and_the_known_ones_pass() {
        let names = |n: &[&str]| n.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(
            unknown_env(names(&["TIDECHAT_BIND", "PATH", "TIDECHAT_REDIS"]).into_iter()).is_ok()
        );
        let e = unknown_env(names(&["TIDECHAT_MAX_ROOM"]).into_iter()).unwrap_err();
        assert!(e.contains("TIDECHAT_MAX_ROOM"), "{e}");
    }

    #[test]
    fn the_data_dir_must_be_a_writable_directory_or_creatable() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = data_dir(tmp.path()).unwrap();
        assert!(ok.contains("exists, writable"), "{ok}");
        let new = tmp.path().join("a/b");
        assert!(data_dir(&new).unwrap().contains("to be created"));
        assert!(
            !new.exists() && !tmp.path().join("a").exists(),
            "created nothing"
        );
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "left nothing"
        );
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = data_dir(&file.join("sub")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
    }
}
