//! Shared set-up of the end-to-end tests.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The binaries under test: those the test engines were started with
/// (`tests/e2e-env.sh` with MLENV_BIN_DIR, as CI starts them with the binaries as
/// shipped: mlenv-runtime linked statically), else this build's.
fn built(name: &str, cargo_built: &'static str, cell: &'static OnceLock<String>) -> &'static str {
    cell.get_or_init(|| {
        std::env::var_os("MLENV_E2E_BIN_DIR")
            .map(|d| Path::new(&d).join(name))
            .filter(|p| p.exists())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| cargo_built.to_string())
    })
}

/// mlenv-runtime under test.
pub fn runtime() -> &'static str {
    static CELL: OnceLock<String> = OnceLock::new();
    built("mlenv-runtime", env!("CARGO_BIN_EXE_mlenv-runtime"), &CELL)
}

/// The mlenv CLI under test.
pub fn cli() -> &'static str {
    static CELL: OnceLock<String> = OnceLock::new();
    built("mlenv", env!("CARGO_BIN_EXE_mlenv"), &CELL)
}
pub const IMAGE: &str = "mlenv-busybox:e2e";

/// Prints each limit the container sees in its cgroup, v1 or v2, as `key=value`
/// lines: memory in bytes, cpu quota in microseconds per 100 ms period, pids.
pub const SHOW_LIMITS: &str = r#"
if [ -f /sys/fs/cgroup/memory.max ]; then
  echo memory=$(cat /sys/fs/cgroup/memory.max)
  echo cpu=$(cut -d' ' -f1 /sys/fs/cgroup/cpu.max)
  echo pids=$(cat /sys/fs/cgroup/pids.max)
else
  echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
  echo cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
  echo pids=$(cat /sys/fs/cgroup/pids/pids.max)
fi
"#;

/// The same as [`SHOW_LIMITS`] for a container that does not mount its cgroup (ctr's
/// default spec): the host's cgroupfs bind-mounted at /host-cgroup, read at the path
/// /proc/self/cgroup gives.
pub const SHOW_LIMITS_HOST_CGROUP: &str = r#"
c=/host-cgroup
if [ -f $c/cgroup.controllers ]; then
  p=$(sed -n 's/^0:://p' /proc/self/cgroup)
  echo memory=$(cat $c$p/memory.max)
  echo cpu=$(cut -d' ' -f1 $c$p/cpu.max)
  echo pids=$(cat $c$p/pids.max)
else
  echo memory=$(cat $c/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)/memory.limit_in_bytes)
  echo cpu=$(cat $c/cpu$(sed -n 's/^[0-9]*:cpu://p' /proc/self/cgroup)/cpu.cfs_quota_us)
  echo pids=$(cat $c/pids$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup)/pids.max)
fi
"#;

/// Whether a test can run: root and the named tools on PATH. Otherwise it is skipped
/// with a message, or fails when MLENV_E2E_REQUIRED=1.
pub fn require(test: &str, tools: &[&str], env: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix_is_root() {
        missing.push("root".to_string());
    }
    for t in tools {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            missing.push(t.to_string());
        }
    }
    for e in env {
        if std::env::var_os(e).is_none() {
            missing.push(format!("${e} (run tests/e2e-env.sh start)"));
        }
    }
    runnable(test, &missing)
}

/// Whether a test can run, given what it lacks (`missing`, each named). Otherwise it
/// is skipped with a message, or fails when MLENV_E2E_REQUIRED=1.
pub fn runnable(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("MLENV_E2E_REQUIRED").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    false
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A busybox root filesystem, built once per test run from busybox-static.
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-rootfs");
        let _ = fs::remove_dir_all(&dir);
        for d in [
            "bin",
            "tmp",
            "etc",
            "proc",
            "sys",
            "dev",
            "root",
            "work",
            "host-cgroup",
        ] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static is installed");
        fs::copy(busybox, dir.join("bin/busybox")).unwrap();
        let list = Command::new(busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                symlink("busybox", dir.join("bin").join(applet)).unwrap();
            }
        }
        fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/work:/bin/sh\n",
        )
        .unwrap();
        fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        dir
    })
}

/// Runs a command, returning its output; panics only if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts success, returning stdout.
#[track_caller]
pub fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Imports the test rootfs as an image: `import` is the engine's import command
/// reading a tar on stdin (`docker import - IMAGE`, `podman import - IMAGE`).
pub fn import_rootfs(import: &mut Command) {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs())
        .args(["-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ok(import.stdin(tar.stdout.take().unwrap()));
    assert!(tar.wait().unwrap().success(), "tar of the rootfs failed");
}

/// The limits a container printed with [`SHOW_LIMITS`].
pub fn limits(out: &str) -> (String, String, String) {
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {out:?}"))
            .trim()
            .to_string()
    };
    (get("memory"), get("cpu"), get("pids"))
}

/// The test NVML library of this build installed in `dir` with the GPUs of
/// `gpus_json` (see `mlenv::gpu::install_fake_nvml`); returns the library's path.
pub fn fake_nvml(dir: &Path, gpus_json: &str) -> PathBuf {
    let target_dir = Path::new(env!("CARGO_BIN_EXE_mlenv")).parent().unwrap();
    mlenv::gpu::install_fake_nvml(target_dir, dir, gpus_json).unwrap_or_else(|e| panic!("{e}"))
}

/// A policy written for one test: its own inventory, in its own directory.
pub struct Policy {
    pub dir: tempfile::TempDir,
    pub main: PathBuf,
    pub inventory: PathBuf,
}

impl Policy {
    /// A policy file at `main` (replacing it and any conf.d beside it), or in a
    /// temporary directory of its own, with an inventory in a fresh directory and
    /// `body` after it.
    pub fn write(main: Option<&Path>, body: &str) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let inventory = dir.path().join("inventory/mlenv.db");
        let main = main
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("etc/mlenv.toml"));
        fs::create_dir_all(main.parent().unwrap()).unwrap();
        let conf_d = main.parent().unwrap().join("conf.d");
        let _ = fs::remove_dir_all(&conf_d);
        fs::write(&main, format!("[inventory]\npath = {inventory:?}\n{body}")).unwrap();
        // The load average and pressure of a machine that just compiled the tests say
        // nothing about them: those checks are off unless a test turns them on in a
        // later drop-in. Memory checks stay on.
        fs::create_dir_all(&conf_d).unwrap();
        fs::write(
            conf_d.join("00-e2e.toml"),
            "[admission]\nmax_load_per_cpu = false\nmax_psi_cpu = false\nmax_psi_memory = false\n",
        )
        .unwrap();
        Policy {
            dir,
            main,
            inventory,
        }
    }

    /// Adds `text` at the end of the main policy file.
    pub fn append(&self, text: &str) {
        let mut body = fs::read_to_string(&self.main).unwrap();
        body.push_str(text);
        fs::write(&self.main, body).unwrap();
    }

    /// The admin CLI reading this policy.
    pub fn cli(&self, args: &[&str]) -> String {
        ok(Command::new(cli())
            .env("MLENV_CONFIG", &self.main)
            .args(args))
    }

    /// `mlenv history --json`, as values.
    pub fn history(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli(&["history", "--json", "--limit", "1000"])).unwrap()
    }

    /// `mlenv ps --json`, as values.
    pub fn live(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli(&["ps", "--json"])).unwrap()
    }
}

/// The engines of tests/e2e-env.sh share one policy file: tests that use them take
/// this lock for their whole run.
pub fn engine_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/dev/log` bound by this test process, as journald or rsyslog would bind it: one
/// listener for every test that reads the system log, each looking through the lines
/// for its own (tests run in parallel, and other tests' mlenv calls may speak too).
pub struct Syslog {
    lines: Mutex<Vec<String>>,
    arrived: std::sync::Condvar,
}

/// The shared listener, or None where it cannot be had (a syslog daemon of this host
/// listens there, or not root): the test is skipped, or fails under
/// MLENV_E2E_REQUIRED=1. Removed when the test process exits.
pub fn syslog(test: &str) -> Option<&'static Syslog> {
    static LOG: OnceLock<Result<&'static Syslog, String>> = OnceLock::new();
    let got = LOG.get_or_init(|| {
        let path = Path::new(mlenv::syslog::SOCKET);
        let taken = || format!("{} free (a syslog daemon listens there)", path.display());
        // Bound by a live listener: connecting to it succeeds, and sends nothing.
        if path.exists() {
            let probe = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
            match probe.connect(path) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    // Left by an earlier run that was killed.
                    fs::remove_file(path)
                        .map_err(|e| format!("{} removable: {e}", path.display()))?
                }
                _ => return Err(taken()),
            }
        }
        let sock = std::os::unix::net::UnixDatagram::bind(path).map_err(|_| taken())?;
        extern "C" fn unbind() {
            let _ = fs::remove_file(mlenv::syslog::SOCKET);
        }
        // SAFETY: registers a plain function, run once at exit.
        unsafe { libc::atexit(unbind) };
        let log: &'static Syslog = Box::leak(Box::new(Syslog {
            lines: Mutex::new(Vec::new()),
            arrived: std::sync::Condvar::new(),
        }));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lines.lock().unwrap().push(line);
                log.arrived.notify_all();
            }
        });
        Ok(log)
    });
    let missing: Vec<String> = match got {
        _ if !nix_is_root() => vec!["root".into()],
        Ok(_) => Vec::new(),
        Err(why) => vec![why.clone()],
    };
    if !runnable(test, &missing) {
        return None;
    }
    got.as_ref().ok().copied()
}

impl Syslog {
    /// The first line containing `needle`, as it arrived, waiting for it 10 s at most.
    pub fn line_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no line with {needle:?} in the system log within 10 s: {lines:?}"
            );
            lines = self.arrived.wait_timeout(lines, left).unwrap().0;
        }
    }
}
