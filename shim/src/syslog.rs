//! Warnings nobody may read on stderr: from work that runs after mlenv-runtime has
//! answered the engine (a delete's housekeeping), and from calls whose stderr an
//! engine keeps only when they fail (a delete, an update, a hook). Sent to the local
//! syslog socket, where journald or rsyslog keep them (`journalctl -t mlenv-runtime`).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The socket journald and rsyslog listen on.
pub const SOCKET: &str = "/dev/log";

/// Facility `daemon` (3), severity `warning` (4): 3 * 8 + 4.
const DAEMON_WARNING: u8 = 28;

/// The datagram for `msg`, in the local form syslog(3) sends (BSD syslog without the
/// host name): priority, then `ident[pid]: `. The receiver stamps the time.
pub fn line(ident: &str, pid: u32, msg: &str) -> String {
    // One record per datagram: a newline inside would read as a second, broken one.
    let msg = msg.replace('\n', " ");
    format!("<{DAEMON_WARNING}>{ident}[{pid}]: {msg}")
}

/// Sends `msg` as a warning from `ident` to the datagram socket at `socket`. An error
/// where nothing listens there (no such file, connection refused), which the caller
/// may ignore: there is nowhere else left to say it.
pub fn warn(socket: &Path, ident: &str, msg: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.send_to(line(ident, std::process::id(), msg).as_bytes(), socket)?;
    Ok(())
}

/// A warning from a call that succeeds, for the admin: on stderr as `{prefix}: warning:
/// {msg}` (an engine logs it at best), and in the system log from `ident`.
pub fn warn_admin(prefix: &str, ident: &str, msg: &str) {
    eprintln!("{prefix}: warning: {msg}");
    // Nowhere else left to say it where nothing listens.
    let _ = warn(Path::new(SOCKET), ident, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_reaches_the_socket_as_syslog_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let listener = UnixDatagram::bind(&path).unwrap();
        warn(
            &path,
            "mlenv-runtime",
            "old decisions not pruned:\ndisk full",
        )
        .unwrap();
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!(
                "<28>mlenv-runtime[{}]: old decisions not pruned: disk full",
                std::process::id()
            )
        );
    }

    #[test]
    fn nobody_listening_is_an_error_for_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let err = warn(&dir.path().join("none"), "mlenv-runtime", "x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
