//! Whole-process benchmarks of mlenv-runtime against plain runc, run as root; every
//! figure of docs/benchmarks.md that involves a process comes from here. `bash
//! tests/bench.sh` builds and runs it all in one go.
//!
//!     bench_create [N]          create latency, mlenv's own cost and peak RSS, and
//!                               64 creates at once
//!     bench_create calls [N]    each call of one container's life (create, start,
//!                               delete, delete --force), runc against mlenv-runtime
//!     bench_create split [N]    a create without GPUs cut where runc starts: what
//!                               mlenv adds before it, and how much slower runc then
//!                               runs, against runc alone and against a wrapper that
//!                               only execs it
//!     bench_create docker [N [M]]
//!                               `docker run --rm` wall time, --runtime=runc against
//!                               --runtime=mlenv, N runs each, on the engine at
//!                               $DOCKER_HOST; with $MLENV_E2E_TIMED
//!                               (tests/e2e-env.sh), also M runs (default N) with each
//!                               call the engine makes timed where it makes it
//!
//! Create latency: `runc create` and `mlenv-runtime create` on the same bundle,
//! interleaved so that every case sees the same machine, each timed from spawn to
//! exit (deletes untimed, through the runtime that created, as under an engine). Every
//! create gets `--pid-file`, as Docker, containerd and podman pass it. Cases: no edit
//! (the policy changes nothing, config.json is left as it is), default limits
//! (config.json rewritten), and one GPU
//! (`MLENV_GPUS=1` on eight GPUs of the test NVML library). The limits and GPU cases
//! are paired with runc creating the container as mlenv hands it over (the limits and
//! device nodes in the spec), so that runc's own work on them is not counted as
//! mlenv's.
//!
//! runc's own create varies by more than mlenv adds, so the cases run once more with
//! `/bin/true` standing in for runc (a link named `runc` to it, handed over to as
//! runc is: by exec): that isolates mlenv's own cost (its process, policy, spec,
//! inventory, exec), and its peak RSS (`ru_maxrss` of the process, which becomes
//! `/bin/true` only at its end).
//!
//! The work directory goes under /run, where Docker's and containerd's bundles live
//! (tmpfs on most hosts); `MLENV_BENCH_DIR` puts it elsewhere. Its filesystem is
//! printed, because config.json writes cost more on ext4 than on tmpfs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn must(cmd: &mut Command) {
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?} failed: {st}");
}

/// Runs `cmd`; its wall time in ms and its peak RSS in KiB.
// The child is reaped by wait4, which std does not see: that is how its rusage comes.
#[allow(clippy::zombie_processes)]
fn timed(cmd: &mut Command) -> (f64, i64) {
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed: {status}"
    );
    (ms, usage.ru_maxrss)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// A 95% confidence interval of the median of `v`, from order statistics (no
/// assumption about the distribution): the values at ranks n/2 -+ 0.98 sqrt(n).
fn median_ci(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len() as f64;
    let half = 0.98 * n.sqrt();
    let lo = ((n / 2.0 - half).floor().max(0.0)) as usize;
    let hi = ((n / 2.0 + half).ceil() as usize).min(s.len() - 1);
    (s[lo], s[hi])
}

/// Median (with its 95% confidence interval) and interquartile range of the
/// per-iteration differences `a[i] - b[i]`: interleaved runs share whatever the
/// machine was doing, so the paired difference is steadier than a difference of
/// medians.
fn paired(name: &str, a: &[f64], b: &[f64]) {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (lo, hi) = median_ci(&d);
    println!(
        "{name:<34} median {:+7.3} ms   95% CI {lo:+.3} .. {hi:+.3}   IQR {:+.3} .. {:+.3} ms",
        quantile(&d, 0.5),
        quantile(&d, 0.25),
        quantile(&d, 0.75)
    );
}

/// One call's times through mlenv and through runc: both medians, then the paired
/// difference.
fn side_by_side(name: &str, mlenv: &[f64], runc: &[f64]) {
    println!(
        "{name:<15} runc median {:7.3} ms   mlenv median {:7.3} ms",
        quantile(runc, 0.5),
        quantile(mlenv, 0.5)
    );
    paired(&format!("  {name}: mlenv - runc"), mlenv, runc);
}

fn stats(name: &str, v: &[f64]) -> (f64, f64) {
    let (median, p95) = (quantile(v, 0.5), quantile(v, 0.95));
    println!(
        "{name:<34} median {median:7.3} ms   p95 {p95:7.3} ms   n={}",
        v.len()
    );
    (median, p95)
}

fn fs_name(dir: &Path) -> String {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs fills the zeroed struct for a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        t => format!("type {t:#x}"),
    }
}

/// A busybox root filesystem in `dir/rootfs`.
fn rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static installed");
    for name in ["true", "sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(name)).unwrap();
    }
    rootfs
}

fn main() {
    // Linked as `runc` for `split`: stamp the clock as runc would start, then become
    // runc.
    if std::env::args_os()
        .next()
        .is_some_and(|arg0| Path::new(&arg0).file_name() == Some("runc".as_ref()))
    {
        stamp_and_exec();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("split") => split(args.get(1).map_or(200, |n| n.parse().unwrap())),
        Some("docker") => {
            let n = args.get(1).map_or(100, |n| n.parse().unwrap());
            docker(n, args.get(2).map_or(n, |m| m.parse().unwrap()))
        }
        Some("calls") => calls(args.get(1).map_or(100, |n| n.parse().unwrap())),
        n => creates(n.map_or(200, |n| n.parse().unwrap())),
    }
}

struct Bench {
    dir: PathBuf,
    /// Where cargo put this example's build (target/PROFILE): the test NVML library.
    build: PathBuf,
    runc: PathBuf,
    mlenv: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Bench {
    fn cmd(&self, bin: &Path, policy: Option<&Path>) -> Command {
        self.cmd_through(bin, &[], policy)
    }

    /// [`Bench::cmd`] with `pre` given to `bin` before the runtime's arguments: a
    /// program that runs the runtime (`busybox env RUNTIME`).
    fn cmd_through(&self, bin: &Path, pre: &[&std::ffi::OsStr], policy: Option<&Path>) -> Command {
        let mut c = Command::new(bin);
        c.args(pre);
        if let Some(p) = policy {
            c.env("MLENV_CONFIG", p);
        }
        c.arg("--root").arg(&self.state);
        c
    }

    /// A create as an engine sends it; `pid_file`: with `--pid-file`.
    fn create(
        &self,
        bin: &Path,
        policy: Option<&Path>,
        bundle: &Path,
        id: &str,
        pid_file: bool,
    ) -> Command {
        self.create_through(bin, &[], policy, bundle, id, pid_file)
    }

    /// [`Bench::create`] through `bin` given `pre` ([`Bench::cmd_through`]).
    fn create_through(
        &self,
        bin: &Path,
        pre: &[&std::ffi::OsStr],
        policy: Option<&Path>,
        bundle: &Path,
        id: &str,
        pid_file: bool,
    ) -> Command {
        let mut c = self.cmd_through(bin, pre, policy);
        c.arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(bundle);
        if pid_file {
            c.arg("--pid-file").arg(self.dir.join(format!("{id}.pid")));
        }
        c.arg(id);
        c
    }

    /// A delete, and the housekeeping it leaves to a process of its own (a WAL
    /// checkpoint every tenth container or so): waited for, so that it does not run
    /// into the next timed create. Its cost is timed in `bench_create calls`. Only
    /// where no other container is left: their init processes are the bench's too.
    fn delete(&self, bin: &Path, policy: Option<&Path>, id: &str) {
        self.delete_only(bin, policy, id);
        reap_orphans();
    }

    fn delete_only(&self, bin: &Path, policy: Option<&Path>, id: &str) {
        must(self.cmd(bin, policy).args(["delete", "--force", id]));
        let _ = fs::remove_file(self.dir.join(format!("{id}.pid")));
    }

    /// The delete of a container mlenv handed to /bin/true: with the state directory
    /// runc would have left, so that mlenv-runtime ends it as it ends a real one.
    fn delete_stand_in(&self, policy: &Path, id: &str) {
        let state = self.state.join(id);
        fs::create_dir_all(&state).unwrap();
        self.delete(&self.mlenv, Some(policy), id);
        fs::remove_dir_all(&state).unwrap();
    }

    /// A policy of `body` under `[runtime]`. Host checks stay on, and are read on every
    /// create, but at thresholds that the benchmark's own load (64 creates at once on
    /// a small machine) cannot reach: a refusal would end the run.
    fn policy(&self, name: &str, runtime: &Path, body: &str) -> PathBuf {
        let p = self.dir.join(name).join("mlenv.toml");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(
            &p,
            format!(
                "[runtime]\npath = {runtime:?}\n{body}\n[inventory]\npath = {:?}\n{ADMISSION}",
                self.dir.join("inventory").join("mlenv.db")
            ),
        )
        .unwrap();
        p
    }
}

const ADMISSION: &str = "[admission]\nmax_load_per_cpu = 1000\nmax_psi_cpu = 100\nmax_psi_memory = 100\nmax_psi_io = 100\n";

/// A bundle in `dir` running `true` in `rootfs`, with `env` added; returns its
/// pristine config.json.
fn bundle(runc: &Path, dir: &Path, rootfs: &Path, env: &[&str]) -> Vec<u8> {
    fs::create_dir_all(dir).unwrap();
    must(Command::new(runc).args(["spec", "--bundle"]).arg(dir));
    let cfg = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["true"]);
    for e in env {
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push((*e).into());
    }
    let pristine = serde_json::to_vec(&spec).unwrap();
    fs::write(&cfg, &pristine).unwrap();
    pristine
}

/// Waits for every process left to this one: mlenv-runtime's housekeeping child,
/// which the bench, a subreaper, inherits once its parent has exited, as it inherits
/// every container's init process. Only called when no child of its own and no
/// container is left.
fn reap_orphans() {
    // SAFETY: waitpid on any child, with no status wanted.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
}

/// The bench's work directory and the binaries it compares. The bench becomes a
/// subreaper (as containerd's shim is), so that it can wait for what mlenv-runtime
/// leaves running after a delete.
fn setup() -> (Bench, tempfile::TempDir) {
    // SAFETY: a flag on this process.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    // The binaries of $MLENV_BIN_DIR (tests/bench.sh: as they ship,
    // packaging/build-bins.sh), else those this example was built with.
    let exe = std::env::current_exe().unwrap();
    let build = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin_dir = std::env::var_os("MLENV_BIN_DIR").map_or_else(|| build.clone(), PathBuf::from);
    let mlenv = bin_dir.join("mlenv-runtime");
    assert!(
        mlenv.exists(),
        "{} missing: cargo build --release --workspace first",
        mlenv.display()
    );
    let parent = std::env::var_os("MLENV_BENCH_DIR").map_or(PathBuf::from("/run"), PathBuf::from);
    let work = tempfile::Builder::new()
        .prefix("mlenv-bench-")
        .tempdir_in(&parent)
        .unwrap();
    let b = Bench {
        dir: work.path().to_path_buf(),
        build,
        runc: mlenv::lowlevel::locate(None).expect("runc installed"),
        mlenv,
        state: work.path().join("state"),
        log: work.path().join("log.json"),
    };
    (b, work)
}

/// Every call an engine makes for one container, as containerd's shim makes them for
/// `docker run --rm` (create with --pid-file, start, delete, delete --force), each
/// timed, runc and mlenv-runtime (no edit) alternating: where a `docker run` spends
/// what mlenv adds, without the engine's own spread.
fn calls(n: usize) {
    let (b, work) = setup();
    let rootfs = rootfs(&b.dir);
    let bundle_dir = b.dir.join("bundle");
    let pristine = bundle(&b.runc, &bundle_dir, &rootfs, &[]);
    let policy = b.policy("plain", &b.runc, "");
    const NAMES: [&str; 4] = ["create", "start", "delete", "delete --force"];
    let mut t: [Vec<[f64; 5]>; 2] = [Vec::new(), Vec::new()];
    for i in 0..n + 5 {
        for (k, with_mlenv) in [false, true].into_iter().enumerate() {
            let (bin, pol) = if with_mlenv {
                (&b.mlenv, Some(policy.as_path()))
            } else {
                (&b.runc, None)
            };
            let id = format!("call{i}-{k}");
            fs::write(bundle_dir.join("config.json"), &pristine).unwrap();
            let call = |args: &[&str]| {
                let mut c = b.cmd(bin, pol);
                c.arg("--log")
                    .arg(&b.log)
                    .args(["--log-format", "json"])
                    .args(args);
                timed(&mut c).0
            };
            let pid_file = b.dir.join(format!("{id}.pid"));
            let create = call(&[
                "create",
                "--bundle",
                bundle_dir.to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                &id,
            ]);
            let start = call(&["start", &id]);
            // `true` exits at once; the engine deletes once it has seen it exit.
            loop {
                let out = b.cmd(&b.runc, None).args(["state", &id]).output().unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("\"stopped\"") {
                    break;
                }
            }
            let delete = call(&["delete", &id]);
            // What the delete left running (a checkpoint every few containers).
            let after = Instant::now();
            reap_orphans();
            let housekeeping = after.elapsed().as_secs_f64() * 1e3;
            let force = call(&["delete", "--force", &id]);
            let _ = fs::remove_file(&pid_file);
            if i >= 5 {
                t[k].push([create, start, delete, force, housekeeping]);
            }
        }
    }
    println!("the calls of one container, as containerd's shim makes them, {n} interleaved runs");
    for (c, name) in NAMES.iter().enumerate() {
        let runc: Vec<f64> = t[0].iter().map(|r| r[c]).collect();
        let ours: Vec<f64> = t[1].iter().map(|r| r[c]).collect();
        side_by_side(name, &ours, &runc);
    }
    let sum = |k: usize| -> Vec<f64> { t[k].iter().map(|r| r[..4].iter().sum()).collect() };
    paired("all four: mlenv - runc", &sum(1), &sum(0));
    let hk: Vec<f64> = t[1].iter().map(|r| r[4]).collect();
    println!(
        "mlenv's housekeeping still running once its delete returned (a checkpoint about every tenth container, off the engine's path): waited p75 {:.3} ms, max {:.3} ms",
        quantile(&hk, 0.75),
        quantile(&hk, 1.0)
    );
    drop(work);
}

fn creates(n: usize) {
    let (b, work) = setup();
    let dir = &b.dir;
    let rootfs = rootfs(dir);
    let plain_bundle = dir.join("bundle");
    let pristine = bundle(&b.runc, &plain_bundle, &rootfs, &[]);
    let gpu_bundle = dir.join("gpu-bundle");
    let gpu_pristine = bundle(&b.runc, &gpu_bundle, &rootfs, &["MLENV_GPUS=1"]);
    let reset = |bundle: &Path, bytes: &[u8]| fs::write(bundle.join("config.json"), bytes).unwrap();

    // Eight idle GPUs through the test NVML library, device nodes standing in as
    // links to /dev/null.
    let gpus: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"uuid": "GPU-{i:08}-0000-0000-0000-000000000000", "minor": {i}}}"#))
        .collect();
    let nvml = mlenv::gpu::install_fake_nvml(
        &b.build,
        &dir.join("nvml"),
        &format!(r#"{{"gpus": [{}]}}"#, gpus.join(",")),
    )
    .unwrap_or_else(|e| panic!("{e} (--release)"));
    let dev = dir.join("dev");
    fs::create_dir(&dev).unwrap();
    for i in 0..8 {
        std::os::unix::fs::symlink("/dev/null", dev.join(format!("nvidia{i}"))).unwrap();
    }
    std::os::unix::fs::symlink("/dev/null", dev.join("nvidiactl")).unwrap();
    let gpu_body =
        format!("[gpu]\nnvml_library = {nvml:?}\ninject = \"devices\"\ndevice_dir = {dev:?}\n");
    const LIMITS: &str =
        "[limits]\ndefault_memory = \"256M\"\ndefault_cpus = 1\ndefault_pids = 512\n";

    println!(
        "bundles in {} ({}); runc {}; mlenv {}",
        dir.display(),
        fs_name(dir),
        b.runc.display(),
        b.mlenv.display()
    );
    println!();

    // Against runc, each mlenv case is paired with runc creating the container mlenv
    // hands it: limits and GPU devices cost runc time of its own (cgroup files,
    // device nodes), which is not mlenv's. Those specs are what mlenv writes, taken
    // from a run with /bin/true standing in.
    let runc_path = b.runc.clone();
    // Named runc, so that mlenv hands over to it as to runc: by exec. Another name
    // would be a runtime whose state liveness cannot read, which mlenv waits for.
    let truebin = dir.join("runc");
    std::os::unix::fs::symlink("/bin/true", &truebin).unwrap();
    let handed = |name: &str, body: &str, from: &Path, pristine: &[u8]| -> (PathBuf, Vec<u8>) {
        let policy = b.policy(&format!("{name}-handed"), &truebin, body);
        must(&mut b.create(
            &b.mlenv,
            Some(&policy),
            from,
            &format!("{name}-handed"),
            false,
        ));
        b.delete_stand_in(&policy, &format!("{name}-handed"));
        let spec: serde_json::Value =
            serde_json::from_slice(&fs::read(from.join("config.json")).unwrap()).unwrap();
        reset(from, pristine);
        let dir = b.dir.join(format!("{name}-runc-bundle"));
        fs::create_dir_all(&dir).unwrap();
        let bytes = serde_json::to_vec(&spec).unwrap();
        fs::write(dir.join("config.json"), &bytes).unwrap();
        (dir, bytes)
    };
    let (limits_runc, limits_spec) = handed("limits", LIMITS, &plain_bundle, &pristine);
    let (gpu_runc, gpu_spec) = handed("gpu", &gpu_body, &gpu_bundle, &gpu_pristine);
    struct Case<'a> {
        name: &'static str,
        policy: Option<PathBuf>,
        bundle: &'a Path,
        pristine: &'a [u8],
    }
    let against_runc = [
        Case {
            name: "runc create",
            policy: None,
            bundle: &plain_bundle,
            pristine: &pristine,
        },
        Case {
            name: "mlenv create (no edit)",
            policy: Some(b.policy("plain", &runc_path, "")),
            bundle: &plain_bundle,
            pristine: &pristine,
        },
        Case {
            name: "runc create (limits, as handed)",
            policy: None,
            bundle: &limits_runc,
            pristine: &limits_spec,
        },
        Case {
            name: "mlenv create (limits edit)",
            policy: Some(b.policy("limits", &runc_path, LIMITS)),
            bundle: &plain_bundle,
            pristine: &pristine,
        },
        Case {
            name: "runc create (1 GPU, as handed)",
            policy: None,
            bundle: &gpu_runc,
            pristine: &gpu_spec,
        },
        Case {
            name: "mlenv create (1 GPU)",
            policy: Some(b.policy("gpu", &runc_path, &gpu_body)),
            bundle: &gpu_bundle,
            pristine: &gpu_pristine,
        },
    ];
    let standing_in = [
        Case {
            name: "/bin/true",
            policy: None,
            bundle: &plain_bundle,
            pristine: &pristine,
        },
        Case {
            name: "mlenv -> true (no edit)",
            policy: Some(b.policy("plain-true", &truebin, "")),
            bundle: &plain_bundle,
            pristine: &pristine,
        },
        Case {
            name: "mlenv -> true (limits edit)",
            policy: Some(b.policy("limits-true", &truebin, LIMITS)),
            bundle: &plain_bundle,
            pristine: &pristine,
        },
        Case {
            name: "mlenv -> true (1 GPU)",
            policy: Some(b.policy("gpu-true", &truebin, &gpu_body)),
            bundle: &gpu_bundle,
            pristine: &gpu_pristine,
        },
    ];

    // The first 5 rounds warm up (page cache, inventory creation and migration).
    // Within each pair, which goes first alternates from round to round, so that
    // neither always follows the other's delete.
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); against_runc.len()];
    for i in 0..5 + n {
        let order = (0..against_runc.len()).map(|k| if i % 2 == 0 { k } else { k ^ 1 });
        for k in order {
            let c = &against_runc[k];
            let bin = if c.policy.is_some() {
                &b.mlenv
            } else {
                &b.runc
            };
            let id = format!("c{i}-{k}");
            let ms = timed(&mut b.create(bin, c.policy.as_deref(), c.bundle, &id, true)).0;
            if i >= 5 {
                t[k].push(ms);
            }
            b.delete(bin, c.policy.as_deref(), &id);
            reset(c.bundle, c.pristine);
        }
    }
    println!("create latency against runc, {n} interleaved runs of each, with --pid-file");
    let mut med = Vec::new();
    for (k, c) in against_runc.iter().enumerate() {
        med.push(stats(c.name, &t[k]));
    }
    println!("added per run, paired with the runc create of the same round (which goes first alternates):");
    for (k, base) in [(1, 0), (3, 2), (5, 4)] {
        paired(&format!("{} - runc", against_runc[k].name), &t[k], &t[base]);
    }
    println!(
        "added at the median (p95): no edit {:+.3} ms ({:+.3}), limits edit {:+.3} ms ({:+.3}), 1 GPU {:+.3} ms ({:+.3})",
        med[1].0 - med[0].0,
        med[1].1 - med[0].1,
        med[3].0 - med[2].0,
        med[3].1 - med[2].1,
        med[5].0 - med[4].0,
        med[5].1 - med[4].1,
    );
    println!();

    let mut t: Vec<Vec<f64>> = vec![Vec::new(); standing_in.len()];
    let mut rss: Vec<i64> = vec![0; standing_in.len()];
    for i in 0..n {
        // Each case takes each place in the round in turn.
        for k in (0..standing_in.len()).map(|j| (i + j) % standing_in.len()) {
            let c = &standing_in[k];
            let bin = if c.policy.is_some() {
                &b.mlenv
            } else {
                &truebin
            };
            let id = format!("t{i}-{k}");
            // With --pid-file, as engines call it.
            let (ms, kib) = timed(&mut b.create(bin, c.policy.as_deref(), c.bundle, &id, true));
            t[k].push(ms);
            rss[k] = rss[k].max(kib);
            if let Some(policy) = &c.policy {
                b.delete_stand_in(policy, &id);
                reset(c.bundle, c.pristine);
            }
        }
    }
    println!(
        "mlenv alone, /bin/true standing in for runc ({n} interleaved runs of each, with --pid-file)"
    );
    for (k, c) in standing_in.iter().enumerate() {
        let (median, p95) = (quantile(&t[k], 0.5), quantile(&t[k], 0.95));
        println!(
            "{:<34} median {median:7.3} ms   p95 {p95:7.3} ms   peak RSS {:6} KiB",
            c.name, rss[k]
        );
    }
    for k in 1..standing_in.len() {
        paired(&format!("{} - true", standing_in[k].name), &t[k], &t[0]);
    }
    println!();

    parallel(&b, &pristine, 64, 5);
    drop(work);
}

/// Set on the timed creates of `split`: the file that the moment runc starts is
/// written to.
const STAMP: &str = "MLENV_BENCH_STAMP";

/// CLOCK_MONOTONIC in ns, comparable between processes (std's `Instant` is that clock,
/// but does not give its value).
fn mono_ns() -> i64 {
    // SAFETY: clock_gettime fills the zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// This program linked as `runc`, the runtime that mlenv hands over to, or that the
/// bench or an exec-only wrapper starts: the clock into `$MLENV_BENCH_STAMP` (where
/// set), then exec of the real runc with the same arguments. Everything before the
/// stamp is the same for every case but for what stands in front of it; everything
/// after, runc's create.
fn stamp_and_exec() -> ! {
    use std::os::unix::process::CommandExt;
    let now = mono_ns();
    if let Some(file) = std::env::var_os(STAMP) {
        fs::write(file, now.to_string()).unwrap();
    }
    let real = mlenv::lowlevel::locate(None).expect("runc installed");
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let e = Command::new(&real)
        .arg0(&args[0])
        .args(&args[1..])
        .env_remove(STAMP)
        .exec();
    panic!("{}: {e}", real.display())
}

/// A create without GPUs cut in two where runc starts, runc alone against runc behind
/// mlenv-runtime (no edit) and behind a wrapper that does nothing but exec it
/// (`busybox env`, a static binary, where installed). runc here is this program linked
/// as `runc`, which stamps the clock and execs the real one: the part before the stamp
/// is what stands in front of runc, with a machine as busy as runc keeps it (the
/// stand-in cases of `bench_create` run with caches warm); the part after is runc's
/// create, which runs slower after more work was done before it in the same process.
fn split(n: usize) {
    let (b, work) = setup();
    let rootfs = rootfs(&b.dir);
    let bundle_dir = b.dir.join("bundle");
    let pristine = bundle(&b.runc, &bundle_dir, &rootfs, &[]);
    let stamped = b.dir.join("stamped").join("runc");
    fs::create_dir_all(stamped.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &stamped).unwrap();
    let policy = b.policy("split", &stamped, "");
    let stamp = b.dir.join("stamp");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists());
    // (name, program, what it runs before the stamped runc, policy)
    let mut cases: Vec<(&str, &Path, Vec<&std::ffi::OsStr>, Option<&Path>)> = vec![
        ("runc", &stamped, vec![], None),
        ("mlenv-runtime", &b.mlenv, vec![], Some(&policy)),
    ];
    if let Some(bb) = busybox {
        cases.push((
            "exec only",
            bb,
            vec!["env".as_ref(), stamped.as_os_str()],
            None,
        ));
    }
    // Per case: before runc starts, runc's create after.
    let mut t: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cases.len()];
    for i in 0..n + 5 {
        // Each case takes each place in the round in turn.
        for k in (0..cases.len()).map(|j| (i + j) % cases.len()) {
            let (_, bin, pre, pol) = &cases[k];
            let id = format!("split{i}-{k}");
            let mut c = b.create_through(bin, pre, *pol, &bundle_dir, &id, true);
            c.env(STAMP, &stamp);
            let _ = fs::remove_file(&stamp);
            let start = mono_ns();
            timed(&mut c);
            let end = mono_ns();
            let at: i64 = fs::read_to_string(&stamp).unwrap().parse().unwrap();
            if i >= 5 {
                t[k].push(((at - start) as f64 / 1e6, (end - at) as f64 / 1e6));
            }
            // Through what created it, runc reached as in the create.
            let del = if pol.is_some() { &b.mlenv } else { &b.runc };
            b.delete(del, *pol, &id);
            fs::write(bundle_dir.join("config.json"), &pristine).unwrap();
        }
    }
    println!(
        "a create without GPUs cut where runc starts, {n} interleaved runs of each, bundles on {}",
        fs_name(&b.dir)
    );
    let part = |k: usize, f: fn(&(f64, f64)) -> f64| -> Vec<f64> { t[k].iter().map(f).collect() };
    for (k, (name, ..)) in cases.iter().enumerate() {
        println!(
            "{name:<14} until runc starts median {:6.3} ms   runc's create median {:7.3} ms",
            quantile(&part(k, |p| p.0), 0.5),
            quantile(&part(k, |p| p.1), 0.5)
        );
    }
    for (k, (name, ..)) in cases.iter().enumerate().skip(1) {
        paired(
            &format!("{name} - runc, before"),
            &part(k, |p| p.0),
            &part(0, |p| p.0),
        );
        paired(
            &format!("{name} - runc, after"),
            &part(k, |p| p.1),
            &part(0, |p| p.1),
        );
        paired(
            &format!("{name} - runc, whole"),
            &part(k, |p| p.0 + p.1),
            &part(0, |p| p.0 + p.1),
        );
    }
    drop(work);
}

/// `at_once` creates started together, each on a bundle of its own, `rounds` times,
/// runc and mlenv (no edit) alternating: the wall time of each burst, and the latency
/// of each create in it.
fn parallel(b: &Bench, pristine: &[u8], at_once: usize, rounds: usize) {
    let bundles: Vec<PathBuf> = (0..at_once)
        .map(|i| {
            let d = b.dir.join(format!("par{i}"));
            fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    let policy = b.policy("parallel", &b.runc, "");
    let mut walls: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut each: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut admitted = 0;
    for round in 0..rounds {
        for (k, with_mlenv) in [false, true].into_iter().enumerate() {
            let (bin, pol) = if with_mlenv {
                (&b.mlenv, Some(policy.as_path()))
            } else {
                (&b.runc, None)
            };
            for d in &bundles {
                fs::write(d.join("config.json"), pristine).unwrap();
            }
            let start = Instant::now();
            let threads: Vec<_> = bundles
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut cmd = b.create(bin, pol, d, &format!("par{round}-{k}-{i}"), true);
                    std::thread::spawn(move || timed(&mut cmd).0)
                })
                .collect();
            for th in threads {
                each[k].push(th.join().unwrap());
            }
            walls[k].push(start.elapsed().as_secs_f64() * 1e3);
            for i in 0..at_once {
                b.delete_only(bin, pol, &format!("par{round}-{k}-{i}"));
            }
            reap_orphans();
            if with_mlenv {
                admitted += at_once;
            }
        }
    }
    let db = rusqlite::Connection::open(b.dir.join("inventory").join("mlenv.db")).unwrap();
    let (recorded, live): (i64, i64) = db
        .query_row(
            "SELECT (SELECT count(*) FROM decisions WHERE container_id LIKE 'par%' AND decision = 'admitted'),
                    (SELECT count(*) FROM containers WHERE ended_ms IS NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    println!("{at_once} creates at once, {rounds} rounds each (wall time of the whole burst; latency of each create)");
    for (k, name) in ["runc", "mlenv (no edit)"].iter().enumerate() {
        println!(
            "{name:<16} burst median {:8.1} ms   each: median {:7.1} ms  p95 {:7.1} ms  max {:7.1} ms",
            quantile(&walls[k], 0.5),
            quantile(&each[k], 0.5),
            quantile(&each[k], 0.95),
            quantile(&each[k], 1.0),
        );
    }
    println!(
        "mlenv: {recorded} of {admitted} creates recorded as admitted, {live} left live after the deletes"
    );
}

/// `docker run --rm IMAGE true`, --runtime=runc and --runtime=mlenv alternating, on
/// the engine at $DOCKER_HOST (tests/bench.sh starts one with mlenv registered).
/// `n` runs of each runtime for the ratio, and `timed` more through the timed
/// runtimes: a `docker run` spreads by a third of its time here, and the ratio wants
/// more runs than the breakdown of the calls.
fn docker(n: usize, timed: usize) {
    let work = tempfile::tempdir().unwrap();
    let rootfs = rootfs(work.path());
    let image = "mlenv-bench:busybox";
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let imported = Command::new("docker")
        .args(["import", "-", image])
        .stdin(tar.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(imported.success() && tar.wait().unwrap().success());
    let (a, b) = alternating(n, "runc", "mlenv", |runtime| docker_run(image, runtime));
    println!("docker run --rm {image} true, {n} runs each, alternating");
    let (ra, _) = stats("--runtime=runc", &a);
    let (rb, _) = stats("--runtime=mlenv", &b);
    let ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| y / x).collect();
    let (lo, hi) = median_ci(&ratios);
    println!(
        "ratio mlenv/runc: of the medians {:.4}; paired, median {:.4} (95% CI {lo:.4} .. {hi:.4}, IQR {:.4} .. {:.4})",
        rb / ra,
        quantile(&ratios, 0.5),
        quantile(&ratios, 0.25),
        quantile(&ratios, 0.75)
    );
    if let Some(dir) = std::env::var_os("MLENV_E2E_TIMED") {
        println!();
        docker_calls(timed, image, Path::new(&dir));
    }
    let _ = Command::new("docker").args(["rmi", image]).output();
}

/// `docker run --rm --network none IMAGE true` through `runtime`: its wall time in ms.
fn docker_run(image: &str, runtime: &str) -> f64 {
    timed(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &format!("--runtime={runtime}"),
        image,
        "true",
    ]))
    .0
}

/// `n` runs of `run` with runtime `a` and with `b`, after three of each to warm up;
/// which goes first alternates, so that neither always follows the other.
fn alternating<T>(n: usize, a: &str, b: &str, mut run: impl FnMut(&str) -> T) -> (Vec<T>, Vec<T>) {
    for _ in 0..3 {
        run(a);
        run(b);
    }
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in 0..n {
        if i % 2 == 0 {
            xs.push(run(a));
            ys.push(run(b));
        } else {
            ys.push(run(b));
            xs.push(run(a));
        }
    }
    (xs, ys)
}

/// The same runs through the timed runtimes of tests/e2e-env.sh (examples/call_timer.rs
/// in front of runc and of mlenv-runtime): where in a `docker run` the difference
/// lies, call by call, and how much of it lies outside the calls.
fn docker_calls(n: usize, image: &str, dir: &Path) {
    const CALLS: [&str; 4] = ["create", "start", "delete", "delete-force"];
    let log = dir.join("calls.log");
    // Per run: the wall time, then the time inside each call of CALLS, then inside all.
    let run = |runtime: &str| -> Vec<f64> {
        fs::write(&log, "").unwrap();
        let total = docker_run(image, runtime);
        let text = fs::read_to_string(&log).unwrap();
        let calls: Vec<(&str, f64)> = text
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                let (a, b): (u128, u128) = (w[1].parse().unwrap(), w[2].parse().unwrap());
                (w[0], (b - a) as f64 / 1e6)
            })
            .collect();
        let inside =
            |name: &str| -> f64 { calls.iter().filter(|c| c.0 == name).map(|c| c.1).sum() };
        let mut row = vec![total];
        row.extend(CALLS.iter().map(|c| inside(c)));
        row.push(calls.iter().map(|c| c.1).sum());
        row
    };
    let (a, b) = alternating(n, "timed-runc", "timed-mlenv", run);
    println!("the same, each call the engine makes timed (examples/call_timer.rs), {n} runs each");
    let column = |rows: &[Vec<f64>], k: usize| -> Vec<f64> { rows.iter().map(|r| r[k]).collect() };
    let outside = |rows: &[Vec<f64>]| -> Vec<f64> {
        rows.iter().map(|r| r[0] - r[CALLS.len() + 1]).collect()
    };
    let names = CALLS.iter().copied().chain(["all calls"]);
    for (k, name) in names.enumerate() {
        side_by_side(name, &column(&b, k + 1), &column(&a, k + 1));
    }
    paired(
        "outside the calls: mlenv - runc",
        &outside(&b),
        &outside(&a),
    );
    paired(
        "whole docker run: mlenv - runc",
        &column(&b, 0),
        &column(&a, 0),
    );
}
