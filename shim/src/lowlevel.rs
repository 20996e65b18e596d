//! The low-level runtime (runc or crun) that does the real work.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The low-level runtime, started by [`spawn`].
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
}

/// Starts the low-level runtime as a child with the original argv and this process's
/// environment, for a caller with work to do while it runs. The child dies with this
/// process: an engine that kills the runtime it called (a timeout) kills the real one,
/// as it would without mlenv in between. SIGPIPE is back at its default in the child.
///
/// The child shares this process's memory until it execs (`CLONE_VM | CLONE_VFORK`, as
/// posix_spawn does), which posix_spawn itself cannot be asked for: the parent-death
/// signal. A forked child would copy the page tables first, and report a failed exec
/// through a pipe: 0.3 to 0.5 ms more per call on a small VM (docs/benchmarks.md).
pub fn spawn(runtime: &Path, args: &[OsString]) -> Result<Child, LowLevelError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let exec_err = |source| LowLevelError::Exec {
        path: runtime.to_path_buf(),
        source,
    };
    let nul = || {
        exec_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "argument holds a NUL byte",
        ))
    };
    let path = CString::new(runtime.as_os_str().as_bytes()).map_err(|_| nul())?;
    let argv: Vec<CString> = std::iter::once(Ok(path.clone()))
        .chain(args.iter().map(|a| CString::new(a.as_bytes())))
        .collect::<Result<_, _>>()
        .map_err(|_| nul())?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // Everything the child touches is made here: between clone and exec it may only
    // make system calls. Signals are held off meanwhile, so that no handler of this
    // process runs in the child on memory they share; the child restores the mask.
    // SAFETY: sigset_t is plain data; filled and used by the calls below.
    let mut ctx: SpawnCtx = unsafe { std::mem::zeroed() };
    ctx.path = path.as_ptr();
    ctx.argv = argv_ptrs.as_ptr();
    // SAFETY: no preconditions.
    ctx.parent = unsafe { libc::getpid() };
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // The child's stack: only the pages it touches are ever faulted in.
    let mut stack: Vec<u8> = Vec::with_capacity(64 * 1024);
    // SAFETY: the stack grows down from the end of the allocation, 16-byte aligned,
    // and nothing here reads what the child writes there; with CLONE_VFORK, clone
    // returns only once the child has exec'd or exited, so `ctx`, `stack` and the argv
    // strings outlive every use of them by the child.
    let pid = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut ctx.mask);
        let top = stack.as_mut_ptr().add(stack.capacity());
        let top = top.sub(top as usize % 16);
        let pid = libc::clone(
            spawned,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::addr_of_mut!(ctx).cast(),
        );
        let clone_err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &ctx.mask, std::ptr::null_mut());
        if pid < 0 {
            return Err(exec_err(clone_err));
        }
        pid
    };
    if ctx.errno != 0 {
        // The child exited without exec'ing: reap it.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(exec_err(io::Error::from_raw_os_error(ctx.errno)));
    }
    Ok(Child { pid })
}

struct SpawnCtx {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    /// The parent's signal mask, for the child to exec with.
    mask: libc::sigset_t,
    /// The parent's pid: a child whose parent died before it set its parent-death
    /// signal gets none, and must not run on.
    parent: libc::pid_t,
    /// Set by the child when prctl or exec fails.
    errno: libc::c_int,
}

/// The child's side of [`spawn`]: system calls only, on memory the parent prepared.
extern "C" fn spawned(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's SpawnCtx, alive while the parent is suspended.
    unsafe {
        let ctx = &mut *arg.cast::<SpawnCtx>();
        // The handler table is the child's own (no CLONE_SIGHAND): SIGPIPE back at
        // its default, as std gives children, then the parent's mask.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            ctx.errno = *libc::__errno_location();
            libc::_exit(127)
        }
        // Killed before the signal was set (kill -9 of mlenv-runtime mid-create):
        // nobody waits for this child, and a runc left running would create a
        // container that no decision of a live process stands for.
        if libc::getppid() != ctx.parent {
            libc::_exit(127)
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &ctx.mask, std::ptr::null_mut());
        libc::execve(ctx.path, ctx.argv, environ);
        ctx.errno = *libc::__errno_location();
        libc::_exit(127)
    }
}

extern "C" {
    /// The process environment, passed on as it is (nothing here changes it).
    static environ: *const *const libc::c_char;
}

/// Waits for the runtime started by [`spawn`]; its exit code, 128 + signal when it
/// was killed.
pub fn wait(runtime: &Path, child: Child) -> Result<i32, LowLevelError> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child, status into a local.
        if unsafe { libc::waitpid(child.pid, &mut status, 0) } >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(LowLevelError::Wait {
                path: runtime.to_path_buf(),
                source: e,
            });
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// An executable shell script `name` in `dir`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
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
        let crun = script(a.path(), "crun", "");
        assert_eq!(locate_in(None, &dirs).unwrap(), crun);
        let runc = script(b.path(), "runc", "");
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
        let p = script(dir.path(), "rt", "exit $1\n");
        assert_eq!(run(&p, &["3".into()]).unwrap(), 3);
        assert_eq!(run(&p, &["0".into()]).unwrap(), 0);
    }

    #[test]
    fn spawn_passes_argv_and_environment_and_reports_signals() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // What the child got: its arguments, an environment variable of the parent,
        // and SIGPIPE at its default (a shell started with it ignored cannot trap it).
        let p = script(
            dir.path(),
            "rt",
            &format!(
                "printf '%s|' \"$@\" \"$HOME\" > {out}\ntrap - PIPE\nkill -PIPE $$\n",
                out = out.display()
            ),
        );
        let args: Vec<OsString> = vec!["create".into(), "--bundle".into(), "a b".into()];
        let code = run(&p, &args).unwrap();
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            format!("create|--bundle|a b|{home}|")
        );
        // No signal blocked (spawn blocks them all around the clone), as a program
        // that does not reset the mask (a shell does) sees it.
        let status = dir.path().join("status");
        let copy = ["/proc/self/status".into(), status.clone().into_os_string()];
        assert_eq!(run(Path::new("/bin/cp"), &copy).unwrap(), 0);
        let status = fs::read_to_string(&status).unwrap();
        assert!(status.contains("SigBlk:\t0000000000000000\n"), "{status}");
        assert_eq!(
            code,
            128 + libc::SIGPIPE,
            "killed by SIGPIPE, not ignoring it"
        );
    }

    #[test]
    fn spawn_failure_names_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-runc");
        let err = run(&missing, &[]).unwrap_err().to_string();
        assert!(err.contains("cannot run the low-level runtime"), "{err}");
        assert!(err.contains("no-such-runc"), "{err}");
        assert!(err.contains("No such file"), "{err}");
        // Not executable: the same, with the reason.
        let plain = dir.path().join("plain");
        fs::write(&plain, "").unwrap();
        let err = run(&plain, &[]).unwrap_err().to_string();
        assert!(err.contains("Permission denied"), "{err}");
        // A NUL byte cannot reach exec.
        let err = run(Path::new("/bin/true"), &["a\0b".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("NUL"), "{err}");
    }
}
