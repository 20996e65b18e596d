//! The runtime's `--log` file, in runc's format, which is how an engine learns why a
//! create failed: containerd's shim reports the last error-level line.
//!
//! Only errors and refusals go there: routine lines on every call have filled the
//! tmpfs under /run and blocked container creation for other wrappers.

use crate::clock::rfc3339;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

pub struct RuncLog {
    file: Option<File>,
    json: bool,
}

impl RuncLog {
    /// Opens `path` for appending (created if missing). Done first on every create so
    /// that even an early failure reaches the engine. Without a path, lines go to
    /// stderr alone.
    pub fn open(path: Option<&Path>, json: bool) -> io::Result<RuncLog> {
        let file = match path {
            Some(p) => Some(OpenOptions::new().create(true).append(true).open(p)?),
            None => None,
        };
        Ok(RuncLog { file, json })
    }

    /// A log that writes nowhere but stderr.
    pub fn stderr_only() -> RuncLog {
        RuncLog {
            file: None,
            json: false,
        }
    }

    /// Writes one line at `level` to the log file.
    pub fn line(&mut self, level: &str, msg: &str, now_ms: i64) {
        if let Some(f) = &mut self.file {
            let line = format_line(self.json, level, msg, now_ms);
            // One write call: appends of a whole line are not interleaved.
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// An error: to the log file and to stderr (podman shows the runtime's stderr).
    pub fn error(&mut self, msg: &str, now_ms: i64) {
        self.line("error", msg, now_ms);
        let _ = writeln!(io::stderr(), "{msg}");
    }

    /// A warning: to the log file and to stderr.
    pub fn warn(&mut self, msg: &str, now_ms: i64) {
        self.line("warning", msg, now_ms);
        let _ = writeln!(io::stderr(), "{msg}");
    }
}

/// One line in runc's JSON format (`{"level","msg","time"}`) or logrus text format.
pub fn format_line(json: bool, level: &str, msg: &str, now_ms: i64) -> String {
    let time = rfc3339(now_ms);
    if json {
        let v = serde_json::json!({ "level": level, "msg": msg, "time": time });
        format!("{v}\n")
    } else {
        format!(
            "time=\"{time}\" level={level} msg={}\n",
            serde_json::Value::String(msg.to_string())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_what_containerd_reads() {
        let line = format_line(true, "error", "mlenv: refused: \"x\"", 0);
        assert_eq!(
            line,
            "{\"level\":\"error\",\"msg\":\"mlenv: refused: \\\"x\\\"\",\"time\":\"1970-01-01T00:00:00.000Z\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "mlenv: refused: \"x\"");
    }

    #[test]
    fn text_line() {
        assert_eq!(
            format_line(false, "error", "a b", 0),
            "time=\"1970-01-01T00:00:00.000Z\" level=error msg=\"a b\"\n"
        );
    }

    #[test]
    fn appends_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.json");
        std::fs::write(&p, "{\"level\":\"info\",\"msg\":\"before\"}\n").unwrap();
        let mut log = RuncLog::open(Some(&p), true).unwrap();
        log.line("error", "one", 0);
        log.line("error", "two", 0);
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("before"));
        assert!(lines[2].contains("\"two\""));
    }
}
