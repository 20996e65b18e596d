//! The low-level runtime (runc or crun) that does the real work.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Where runc and crun are looked for when the policy names none. Fixed, not $PATH:
/// engines call the runtime with whatever PATH they have, and the choice must not
/// depend on it.
pub const SEARCH_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];
pub const CANDIDATES: &[&str] = &["runc", "crun"];

#[derive(Debug, thiserror::Error)]
pub enum LowLevelError {
    #[error("no low-level runtime found: looked for {names} in {dirs}; install runc or set [runtime] path in the policy")]
    NotFound { names: String, dirs: String },
    #[error(
        "low-level runtime {path} is not an executable file; fix [runtime] path in the policy"
    )]
    NotExecutable { path: PathBuf },
    #[error("cannot run the low-level runtime {path}: {source}")]
    Exec { path: PathBuf, source: io::Error },
    #[error("cannot wait for the low-level runtime {path}: {source}")]
    Wait { path: PathBuf, source: io::Error },
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The runtime to hand over to: `configured` if set, else the first candidate found.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, LowLevelError> {
    locate_in(configured, SEARCH_DIRS)
}

pub fn locate_in(configured: Option<&Path>, dirs: &[&str]) -> Result<PathBuf, LowLevelError> {
    if let Some(p) = configured {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(LowLevelError::NotExecutable {
                path: p.to_path_buf(),
            })
        };
    }
    for name in CANDIDATES {
        for dir in dirs {
            let p = Path::new(dir).join(name);
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    Err(LowLevelError::NotFound {
        names: CANDIDATES.join(", "),
        dirs: dirs.join(":"),
    })
}

/// Makes `bytes` this process's stdin (through an unlinked temporary file), for a
/// runtime that must read what mlenv already read.
pub fn replace_stdin(bytes: &[u8]) -> io::Result<()> {
    use std::io::{Seek, Write};
    use std::os::fd::AsRawFd;
    let mut f = tempfile::tempfile()?;
    f.write_all(bytes)?;
    f.rewind()?;
    // SAFETY: dup2 on two valid descriptors; fd 0 is replaced atomically.
    if unsafe { libc::dup2(f.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces this process with the low-level runtime, given the original argv. Returns
/// only on failure.
pub fn exec(runtime: &Path, args: &[OsString]) -> LowLevelError {
    let err = Command::new(runtime).args(args).exec();
    LowLevelError::Exec {
        path: runtime.to_path_buf(),
        source: err,
    }
}

/// Runs the low-level runtime as a child with the original argv and returns its exit
/// code (128 + signal when it was killed). See [`spawn`].
pub fn run(runtime: &Path, args: &[OsString]) -> Result<i32, LowLevelError> {
    wait(runtime, spawn(runtime, args)?)
}

/// Starts the low-level runtime as a child with the original argv, for a caller with
/// work to do while it runs. The child dies with this process: an engine that kills
/// the runtime it called (a timeout) kills the real one, as it would without mlenv in
/// between.
pub fn spawn(runtime: &Path, args: &[OsString]) -> Result<Child, LowLevelError> {
    let mut cmd = Command::new(runtime);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.args(args)
        .spawn()
        .map_err(|source| LowLevelError::Exec {
            path: runtime.to_path_buf(),
            source,
        })
}

/// Waits for a child of [`spawn`]: its exit code, 128 + signal when it was killed.
pub fn wait(runtime: &Path, mut child: Child) -> Result<i32, LowLevelError> {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().map_err(|source| LowLevelError::Wait {
        path: runtime.to_path_buf(),
        source,
    })?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn prefers_configured_then_runc_then_crun() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = [a.path().to_str().unwrap(), b.path().to_str().unwrap()];
        assert!(matches!(
            locate_in(None, &dirs),
            Err(LowLevelError::NotFound { .. })
        ));
        let crun = exe(a.path(), "crun");
        assert_eq!(locate_in(None, &dirs).unwrap(), crun);
        let runc = exe(b.path(), "runc");
        assert_eq!(locate_in(None, &dirs).unwrap(), runc, "runc wins over crun");
        assert_eq!(locate_in(Some(&crun), &dirs).unwrap(), crun);
        let plain = a.path().join("plain");
        fs::write(&plain, "").unwrap();
        let err = locate_in(Some(&plain), &dirs).unwrap_err().to_string();
        assert!(err.contains("is not an executable file"), "{err}");
        let err = locate_in(None, &["/nonexistent"]).unwrap_err().to_string();
        assert!(err.contains("install runc or set [runtime] path"), "{err}");
    }

    #[test]
    fn run_returns_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rt");
        fs::write(&p, "#!/bin/sh\nexit $1\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(run(&p, &["3".into()]).unwrap(), 3);
        assert_eq!(run(&p, &["0".into()]).unwrap(), 0);
    }
}
