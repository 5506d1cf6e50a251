//! Log lines, pretty or JSON (ndjson in femme's shape: `level`, `time`, `msg`), written to stderr
//! by one writer thread.
//!
//! A line may carry named fields (`log`'s key-values: `log::info!(conn = 5; "...")`). JSON lines
//! have them as fields of their own after `msg`, so a collector can search them; pretty lines show
//! only `msg`, which says the same in words. The names are kept stable, since operators' queries
//! depend on them: [`fields`] lists them.
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

use log::kv::{self, Key, Source, Value, VisitSource, VisitValue};
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogFormat;

/// The field names log lines use (README "Logs"); a line has those that apply to it.
pub mod fields {
    /// The connection's number (`#N` in the message).
    pub const CONN: &str = "conn";
    /// The client's address (`TCP-PEER for CLIENT` behind a trusted proxy).
    pub const PEER: &str = "peer";
    pub const ROOM: &str = "room";
    /// A websocket close code the server sent.
    pub const CODE: &str = "code";
    /// Why: a disconnect's ending, a refusal's cause.
    pub const REASON: &str = "reason";
    /// Which endpoint: `ws`, `chatSocket`, `page`, `static`, `stats`, `healthz`, ...
    pub const ROUTE: &str = "route";
    /// HTTP request lines also have `method`, `status` and `ms` (time to the response head).
    pub const METHOD: &str = "method";
    pub const STATUS: &str = "status";
    pub const MS: &str = "ms";
}

/// Lines queued for the writer thread before new ones are dropped: enough for a burst of
/// connects (two lines each) without holding more than a few hundred KiB.
const QUEUE_LINES: usize = 4096;
/// How long the writer lets a burst's lines gather before writing them (see [`write_lines`]):
/// short beside a log's use, long beside a connect storm's lines (10,000 a second).
const GATHER: Duration = Duration::from_millis(10);
/// Bytes of the writer's buffer kept between batches.
const BATCH_KEEP: usize = 64 * 1024;
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
            .spawn(move || write_lines(lines, &progress, format, std::io::stderr()));
        if let Err(e) = spawned {
            // Without its thread every line is dropped; say so once, directly.
            let _ = writeln!(std::io::stderr(), "cannot start the log writer thread: {e}");
        }
    }
}

/// The writer thread: ends when the logger (the queue's sender) is gone, i.e. never in the binary.
///
/// A line that finds this thread asleep costs the executor a futex wake, and this thread a
/// switch and a `write`: in a connect storm (a line per connect), once per line. So after the
/// first line of a burst the thread waits [`GATHER`] and writes everything queued by then at
/// once; while it waits, lines only enter the queue.
fn write_lines(
    lines: Receiver<String>,
    progress: &Progress,
    format: LogFormat,
    mut out: impl Write,
) {
    let mut batch = String::new();
    while let Ok(first) = lines.recv() {
        std::thread::sleep(GATHER);
        batch.push_str(&first);
        let mut count = 1;
        // At most a queue's worth, so the batch is bounded however fast lines arrive.
        for line in lines.try_iter().take(QUEUE_LINES) {
            batch.push_str(&line);
            count += 1;
        }
        // A failed write (stderr closed) drops the lines: there is nowhere else to say it.
        let _ = out.write_all(batch.as_bytes());
        // Past the write, so the queue has room again: the count goes out once per stall.
        let dropped = progress.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let msg = format!("{dropped} log lines dropped (stderr was not keeping up)");
            let _ = out.write_all(format_line(format, Level::Warn, &msg).as_bytes());
        }
        batch.clear();
        if batch.capacity() > BATCH_KEEP {
            // A burst's buffer is not kept for the quiet that follows.
            batch = String::new();
        }
        let mut written = progress.written.lock().unwrap_or_else(|e| e.into_inner());
        *written += count;
        progress.written_cv.notify_all();
    }
}

fn format_line(format: LogFormat, level: Level, msg: &str) -> String {
    format_record(format, level, msg, &None::<(&str, u64)>)
}

/// The line for a message and its fields.
fn format_record(format: LogFormat, level: Level, msg: &str, kvs: &dyn Source) -> String {
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
            let mut line = format!("{{\"level\":{level},\"time\":{millis},\"msg\":{msg}");
            // Formatting into a String cannot fail, and neither does the visitor.
            let _ = kvs.visit(&mut JsonFields(&mut line));
            line.push_str("}\n");
            line
        }
    }
}

/// Appends each field as `,"key":value` (a number, a boolean or a string; absent values are left
/// out, so a field is there only when the line has it).
struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let key = key.as_str();
        // The line's own fields are not to be shadowed.
        if matches!(key, "level" | "time" | "msg") {
            return Ok(());
        }
        let mut json = JsonValue(None);
        value.visit(&mut json)?;
        if let Some(v) = json.0 {
            self.0.push(',');
            self.0
                .push_str(&serde_json::Value::String(key.to_owned()).to_string());
            self.0.push(':');
            self.0.push_str(&v.to_string());
        }
        Ok(())
    }
}

/// One field's value as JSON (`None`: absent).
struct JsonValue(Option<serde_json::Value>);

impl<'v> VisitValue<'v> for JsonValue {
    fn visit_any(&mut self, value: Value) -> Result<(), kv::Error> {
        self.0 = Some(serde_json::Value::String(value.to_string()));
        Ok(())
    }
    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.0 = None;
        Ok(())
    }
    fn visit_u64(&mut self, v: u64) -> Result<(), kv::Error> {
        self.0 = Some(v.into());
        Ok(())
    }
    fn visit_i64(&mut self, v: i64) -> Result<(), kv::Error> {
        self.0 = Some(v.into());
        Ok(())
    }
    fn visit_f64(&mut self, v: f64) -> Result<(), kv::Error> {
        // NaN and infinities have no JSON form.
        self.0 = Some(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into));
        Ok(())
    }
    fn visit_bool(&mut self, v: bool) -> Result<(), kv::Error> {
        self.0 = Some(v.into());
        Ok(())
    }
    fn visit_str(&mut self, v: &str) -> Result<(), kv::Error> {
        self.0 = Some(v.into());
        Ok(())
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
        let line = format_record(
            self.format,
            record.level(),
            &record.args().to_string(),
            record.key_values(),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn json(kvs: &dyn Source) -> serde_json::Value {
        let line = format_record(LogFormat::Json, Level::Info, "said \"hi\"\n", kvs);
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn json_lines_carry_their_fields_typed_and_leave_out_absent_ones() {
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 5000));
        let v = json(&[
            ("conn", Value::from(7u64)),
            ("peer", Value::from_display(&peer)),
            ("room", Value::from("lobby \"x\"")),
            ("code", Value::null()),
            ("ms", Value::from(1.5f64)),
            ("msg", Value::from("shadowed")),
        ]);
        assert_eq!(v["level"], 30);
        assert_eq!(v["msg"], "said \"hi\"\n");
        assert_eq!(v["conn"], 7);
        assert_eq!(v["peer"], "127.0.0.1:5000");
        assert_eq!(v["room"], "lobby \"x\"");
        assert_eq!(v["ms"], 1.5);
        assert!(v.get("code").is_none(), "{v}");
        let fields = v.as_object().unwrap().len();
        assert_eq!(fields, 7, "level, time, msg and the four present: {v}");
    }

    /// Records each `write` call, to count them.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_burst_of_lines_is_written_at_once_in_order_and_dropped_lines_are_reported_after_it() {
        let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
        let progress = Progress::default();
        progress.dropped.store(3, Ordering::Relaxed);
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        for i in 0..100 {
            queue.send(format!("line {i}\n")).unwrap();
        }
        // The writer ends once the queue is empty and its sender gone.
        drop(queue);
        let out = Writes::default();
        write_lines(lines, &progress, LogFormat::Pretty, out.clone());
        let writes = out.0.lock().unwrap();
        assert_eq!(writes.len(), 2, "the burst, then the drop count");
        assert_eq!(String::from_utf8_lossy(&writes[0]), expected);
        assert_eq!(
            String::from_utf8_lossy(&writes[1]),
            "WARN  3 log lines dropped (stderr was not keeping up)\n"
        );
        assert_eq!(*progress.written.lock().unwrap(), 100);
        assert_eq!(progress.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn pretty_lines_are_the_message_alone() {
        let line = format_record(
            LogFormat::Pretty,
            Level::Warn,
            "connect #7",
            &[("conn", 7u64)],
        );
        assert_eq!(line, "WARN  connect #7\n");
    }
}
