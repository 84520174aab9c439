// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! runc-style logging: `--log FILE` (default: stderr), `--log-format text|json`, `--debug`.
//!
//! The JSON format is one object per line, `{"level":"error","msg":"...","time":"..."}`, which is
//! what containerd's runc shim (`<bundle>/log.json`) and conmon (`oci-log`) read back to report
//! a failed call. The text format is logrus's: `time="..." level=error msg="..."`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::state::format_rfc3339;

/// Log line format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// logrus text: `time="..." level=info msg="..."`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}")]
pub struct LogError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

enum Sink {
    File(File),
    Stderr,
    Discard,
}

/// The process's logger; install it with [`init`].
pub struct Logger {
    sink: Mutex<Sink>,
    format: LogFormat,
    level: LevelFilter,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("format", &self.format)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// Formats one log line (without the newline).
pub fn format_line(format: LogFormat, level: Level, msg: &str, time: SystemTime) -> String {
    let level = level.as_str().to_ascii_lowercase();
    let time = format_rfc3339(time);
    match format {
        LogFormat::Json => {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        }
        LogFormat::Text => {
            // logrus quotes values with Go's %q; JSON string escaping is the same for text.
            let quoted = serde_json::Value::String(msg.to_owned()).to_string();
            format!("time=\"{time}\" level={level} msg={quoted}")
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format_line(
            self.format,
            record.level(),
            &record.args().to_string(),
            SystemTime::now(),
        );
        line.push('\n');
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        // A failed log write has nowhere to be reported; the command's result is unaffected.
        let _ = match &mut *sink {
            Sink::File(f) => f.write_all(line.as_bytes()),
            Sink::Stderr => std::io::stderr().write_all(line.as_bytes()),
            Sink::Discard => Ok(()),
        };
    }

    fn flush(&self) {
        if let Ok(mut sink) = self.sink.lock() {
            if let Sink::File(f) = &mut *sink {
                let _ = f.flush();
            }
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Append to this file (created 0600 if missing).
    File(&'a Path),
    /// Standard error (runc's default without `--log`).
    Stderr,
    /// Nowhere (the monitor without `--log`: its stderr is the container's).
    Discard,
}

static FILE_SINK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the installed logger writes to a `--log` file (then `main` logs the final error
/// there too; without it the error is printed on stderr only once).
pub fn logs_to_file() -> bool {
    FILE_SINK.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the process-wide logger. Level: debug with `--debug`, else warn.
pub fn init(target: Target<'_>, format: LogFormat, debug: bool) -> Result<(), LogError> {
    let sink = match target {
        Target::File(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| LogError {
                    path: path.to_path_buf(),
                    source,
                })?;
            FILE_SINK.store(true, std::sync::atomic::Ordering::Relaxed);
            Sink::File(f)
        }
        Target::Stderr => Sink::Stderr,
        Target::Discard => Sink::Discard,
    };
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Warn
    };
    let logger = Logger {
        sink: Mutex::new(sink),
        format,
        level,
    };
    // A second init (tests) keeps the first logger.
    if ::log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        ::log::set_max_level(level);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn json_line() {
        let t = UNIX_EPOCH + Duration::from_secs(1);
        let line = format_line(
            LogFormat::Json,
            Level::Error,
            "container \"x\" does not exist",
            t,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert_eq!(v["time"], "1970-01-01T00:00:01.000000000Z");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn text_line() {
        let t = UNIX_EPOCH;
        let line = format_line(LogFormat::Text, Level::Warn, "a \"b\"\nc", t);
        assert_eq!(
            line,
            "time=\"1970-01-01T00:00:00.000000000Z\" level=warn msg=\"a \\\"b\\\"\\nc\""
        );
    }
}
