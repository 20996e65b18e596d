//! Helpers of mlenv-runtime, for what it keeps out of its own process: NVML
//! (`mlenv-nvml`), which a statically linked binary cannot load, and CDI (`mlenv cdi`),
//! whose crate would weigh on every call (docs/design.md).

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The binary `name` beside the running one (mlenv's are installed together).
pub fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| Path::new("/usr/bin").join(name))
}

/// Runs `helper` with `args` and reads its JSON output as a `T`; on failure, its
/// message (the last line of stderr that starts `mlenv: `, without the prefix).
pub fn call<T: DeserializeOwned>(helper: &Path, args: &[String]) -> Result<T, String> {
    start(helper, args)?.finish()
}

/// Starts `helper` with `args`, for [`Running::finish`] to read once the caller has
/// done what it can meanwhile.
pub fn start(helper: &Path, args: &[String]) -> Result<Running, String> {
    let child = Command::new(helper)
        .args(args)
        // A runtime's stdin may be the container's: never the helper's.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", helper.display()))?;
    Ok(Running {
        child: Some(child),
        command: format!("{} {}", helper.display(), args.join(" ")),
    })
}

/// A helper started by [`start`]. Dropped unread, it is killed and reaped: no zombie
/// is left to the runtime the process then becomes.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    /// The command line, for messages.
    command: String,
}

impl Running {
    /// Waits for the helper and reads its JSON output as a `T`, or its message.
    pub fn finish<T: DeserializeOwned>(mut self) -> Result<T, String> {
        let Some(child) = self.child.take() else {
            return Err(format!("{}: already read", self.command));
        };
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{}: {e}", self.command))?;
        if !out.status.success() {
            // Its own message, without what a library printed before it.
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(stderr
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("mlenv: "))
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "{} failed ({}): {}",
                        self.command,
                        out.status,
                        stderr.trim()
                    )
                }));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{}: bad output: {e}", self.command))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Result<Running, String> {
        start(Path::new("/bin/sh"), &["-c".into(), script.into()])
    }

    #[test]
    fn output_read_once_the_caller_asks() {
        let v: Vec<u32> = sh("echo '[1, 2]'").unwrap().finish().unwrap();
        assert_eq!(v, [1, 2]);
        let e = sh("echo noise >&2; echo 'mlenv: no GPUs here' >&2; exit 1")
            .unwrap()
            .finish::<Vec<u32>>()
            .unwrap_err();
        assert_eq!(e, "no GPUs here");
        let e = sh("echo other >&2; exit 3")
            .unwrap()
            .finish::<Vec<u32>>()
            .unwrap_err();
        assert!(e.contains("failed (exit status: 3): other"), "{e}");
        let e = sh("echo nope").unwrap().finish::<Vec<u32>>().unwrap_err();
        assert!(e.contains("bad output"), "{e}");
        let e = start(Path::new("/nonexistent/mlenv-nvml"), &[]).unwrap_err();
        assert!(e.starts_with("cannot run /nonexistent/mlenv-nvml: "), "{e}");
    }

    #[test]
    fn dropped_unread_it_is_killed_and_reaped() {
        let running = sh("exec sleep 600").unwrap();
        let pid = running.child.as_ref().unwrap().id();
        drop(running);
        // Reaped: no /proc entry left, not even a zombie's.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn stdin_is_not_the_callers() {
        // `read` fails at once on /dev/null; with an inherited terminal or pipe it
        // would wait or take the caller's input.
        let v: String = sh("if read -r x; then echo '\"read\"'; else echo '\"eof\"'; fi")
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(v, "eof");
    }
}
