//! The runtime's `--log` file, in runc's format, which is how an engine learns why a
//! create failed: containerd's shim reports the last error-level line.
//!
//! Only errors and refusals go there: routine lines on every call have filled the
//! tmpfs under /run and blocked container creation for other wrappers.

use crate::clock::rfc3339;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct RuncLog {
    file: Option<File>,
    json: bool,
    /// Warnings also go to this syslog socket, from this ident.
    syslog: Option<(PathBuf, &'static str)>,
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
        Ok(RuncLog {
            file,
            json,
            syslog: None,
        })
    }

    /// A log that writes nowhere but stderr.
    pub fn stderr_only() -> RuncLog {
        RuncLog {
            file: None,
            json: false,
            syslog: None,
        }
    }

    /// Sends warnings to the syslog socket at `socket` too, from `ident`: an engine
    /// shows what a runtime or a hook printed only when the call fails, and a warning
    /// comes with a call that succeeds.
    pub fn with_syslog(mut self, socket: &Path, ident: &'static str) -> RuncLog {
        self.syslog = Some((socket.to_path_buf(), ident));
        self
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

    /// A warning: to the log file, to stderr, and to the system log where set
    /// ([`with_syslog`](Self::with_syslog)), there without the `mlenv: warning: `
    /// that the ident replaces.
    pub fn warn(&mut self, msg: &str, now_ms: i64) {
        self.line("warning", msg, now_ms);
        let _ = writeln!(io::stderr(), "{msg}");
        if let Some((socket, ident)) = &self.syslog {
            let bare = msg.strip_prefix("mlenv: warning: ").unwrap_or(msg);
            // Nowhere else left to say it where nothing listens.
            let _ = crate::syslog::warn(socket, ident, bare);
        }
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

    #[test]
    fn warnings_reach_the_system_log_where_set_errors_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("log");
        let listener = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut log = RuncLog::stderr_only().with_syslog(&socket, "mlenv-runtime");
        log.error("mlenv: refused: no", 0);
        log.warn("mlenv: warning: inventory moved aside", 0);
        log.warn(
            "mlenv: policy invalid: x; using the last known good policy /p",
            0,
        );
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        while let Ok(n) = listener.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let pid = std::process::id();
        assert_eq!(
            got,
            [
                format!("<28>mlenv-runtime[{pid}]: inventory moved aside"),
                format!(
                    "<28>mlenv-runtime[{pid}]: mlenv: policy invalid: x; using the last known good policy /p"
                ),
            ]
        );
        // Not set: nothing sent, and nothing fails.
        RuncLog::stderr_only().warn("mlenv: warning: quiet", 0);
        assert!(listener.recv(&mut buf).is_err());
    }
}
