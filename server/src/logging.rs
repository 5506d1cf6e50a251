//! Log lines, pretty or JSON (ndjson in femme's shape: `level`, `time`, `msg`), written to stderr
//! by one writer thread.
//!
//! femme 2.2 picks its format from the build profile (pretty in debug, ndjson in release) with no
//! way to choose at run time, and it `unwrap`s every stdout write, so a closed pipe would panic
//! the server. This logger takes the format from `--log-format`.
//!
//! A write to stderr blocks when stderr is a pipe nobody reads (or a slow terminal), and logging
//! happens on the executor thread: a blocked write there would stop every connection. So a log
//! call only formats its line and hands it to a bounded queue; one thread writes the queue out.
//! When the queue is full the line is dropped and counted, and the writer says how many were
//! dropped once it gets past the stall.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogFormat;

/// Lines queued for the writer thread before new ones are dropped: enough for a burst of
/// connects (two lines each) without holding more than a few hundred KiB.
const QUEUE_LINES: usize = 4096;
/// Longest a [`Log::flush`] (at exit) waits for the queue to be written: stderr may never drain.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Lines dropped since start, for `tidechat_log_lines_dropped_total` (the logger is global, and
/// so is this count of it).
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since start because the queue to stderr was full.
pub fn dropped_lines() -> u64 {
    DROPPED_TOTAL.load(Ordering::Relaxed)
}

struct Logger {
    format: LogFormat,
    queue: SyncSender<String>,
    progress: Arc<Progress>,
}

/// What the writer thread has done, for the counts and for `flush`.
#[derive(Default)]
struct Progress {
    /// Lines dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
    /// Lines handed to the queue.
    queued: AtomicU64,
    /// Lines the writer has written (or failed to write); guarded so `flush` can wait on it.
    written: Mutex<u64>,
    written_cv: Condvar,
}

/// Installs the logger and starts its writer thread; a second call is ignored.
pub fn init(level: LevelFilter, format: LogFormat) {
    let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
    let progress = Arc::new(Progress::default());
    let logger = Logger {
        format,
        queue,
        progress: progress.clone(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
        let spawned = std::thread::Builder::new()
            .name("tidechat-log".into())
            .spawn(move || write_lines(lines, &progress, format));
        if let Err(e) = spawned {
            // Without its thread every line is dropped; say so once, directly.
            let _ = writeln!(std::io::stderr(), "cannot start the log writer thread: {e}");
        }
    }
}

/// The writer thread: ends when the logger (the queue's sender) is gone, i.e. never in the binary.
fn write_lines(lines: Receiver<String>, progress: &Progress, format: LogFormat) {
    let mut stderr = std::io::stderr();
    for line in lines {
        // A failed write (stderr closed) drops the line: there is nowhere else to say it.
        let _ = stderr.write_all(line.as_bytes());
        // Past the write, so the queue has room again: the count goes out once per stall.
        let dropped = progress.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let msg = format!("{dropped} log lines dropped (stderr was not keeping up)");
            let _ = stderr.write_all(format_line(format, Level::Warn, &msg).as_bytes());
        }
        let mut written = progress.written.lock().unwrap_or_else(|e| e.into_inner());
        *written += 1;
        progress.written_cv.notify_all();
    }
}

fn format_line(format: LogFormat, level: Level, msg: &str) -> String {
    match format {
        LogFormat::Pretty => format!("{level:<5} {msg}\n"),
        LogFormat::Json => {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let level = match level {
                Level::Trace => 10,
                Level::Debug => 20,
                Level::Info => 30,
                Level::Warn => 40,
                Level::Error => 50,
            };
            let msg = serde_json::Value::String(msg.to_string());
            format!("{{\"level\":{level},\"time\":{millis},\"msg\":{msg}}}\n")
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        if metadata.target().starts_with("tidechat") {
            return metadata.level() <= log::max_level();
        }
        // Dependencies (tide, async-h1) log every request at info and warn about what a client
        // chose to send (e.g. a path outside the static directory), so a client would set the
        // volume: their warnings show only at debug, their errors always.
        match metadata.level() {
            Level::Error => true,
            Level::Warn => log::max_level() >= LevelFilter::Debug,
            _ => false,
        }
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(self.format, record.level(), &record.args().to_string());
        match self.queue.try_send(line) {
            Ok(()) => {
                self.progress.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.progress.dropped.fetch_add(1, Ordering::Relaxed);
                DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every line queued so far is written, at most [`FLUSH_WAIT`].
    fn flush(&self) {
        let target = self.progress.queued.load(Ordering::Relaxed);
        let deadline = Instant::now() + FLUSH_WAIT;
        let mut written = self
            .progress
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *written < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            written = match self.progress.written_cv.wait_timeout(written, left) {
                Ok((w, _)) => w,
                Err(e) => e.into_inner().0,
            };
        }
    }
}
