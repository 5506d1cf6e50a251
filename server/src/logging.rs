//! Log lines, pretty or JSON (ndjson in femme's shape: `level`, `time`, `msg`).
//!
//! femme 2.2 picks its format from the build profile (pretty in debug, ndjson in release) with no
//! way to choose at run time, and it `unwrap`s every stdout write, so a closed pipe would panic
//! the server. This logger takes the format from `--log-format`, writes to stderr, and drops a
//! line it cannot write.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

use crate::config::LogFormat;

struct Logger {
    format: LogFormat,
}

/// Installs the logger; a second call is ignored.
pub fn init(level: LevelFilter, format: LogFormat) {
    if log::set_boxed_logger(Box::new(Logger { format })).is_ok() {
        log::set_max_level(level);
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Dependencies (tide, async-h1) log every request at info; only warnings from them.
        metadata.level() <= log::max_level()
            && (metadata.target().starts_with("tidechat") || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match self.format {
            LogFormat::Pretty => format!("{:<5} {}\n", record.level(), record.args()),
            LogFormat::Json => {
                let millis = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let level = match record.level() {
                    log::Level::Trace => 10,
                    log::Level::Debug => 20,
                    log::Level::Info => 30,
                    log::Level::Warn => 40,
                    log::Level::Error => 50,
                };
                let msg = serde_json::Value::String(record.args().to_string());
                format!("{{\"level\":{level},\"time\":{millis},\"msg\":{msg}}}\n")
            }
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}
