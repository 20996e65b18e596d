//! Whole-process create latency: `runc create` against `mlenv-runtime create` on the
//! same bundle, interleaved in the same run so that both see the same machine.
//!
//!     cargo build --release --workspace && cargo build --release --examples
//!     sudo target/release/examples/bench_create [iterations]
//!
//! Three cases, each timed from spawn to exit of the create command (delete is not
//! timed): plain runc; mlenv with a policy whose edits do not apply (read, decide,
//! record, exec); mlenv with default limits that rewrite config.json every time (the
//! spec is restored before each run, untimed). Prints median, p95 and mean, and the
//! median added over runc.
//!
//! The no-edit case still adds mlenv-hook (createRuntime: the init process recorded,
//! inside runc's create) and so writes config.json; a fifth case switches the hook
//! off (`[runtime] hook = false`) to show what it costs.
//!
//! A fourth case asks for one GPU (`MLENV_GPUS=1`) on eight GPUs served by the test
//! NVML library (target/release/libmlenv_fake_nvml.so), injected as device nodes: the
//! GPU path (NVML load and probe, selection, lease, device edit) against runc
//! creating the same bundle without them.
//!
//! runc's own create varies by a millisecond or more from run to run, more than mlenv
//! adds; so the same three cases run once more with `/bin/true` standing in for runc,
//! which isolates what mlenv itself costs (its process, policy, spec, inventory, exec).

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

fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    must(cmd);
    t.elapsed().as_secs_f64() * 1e3
}

/// Median and interquartile range of the per-iteration differences `a[i] - b[i]`:
/// interleaved runs share whatever the machine was doing, so the paired difference
/// is steadier than a difference of medians.
fn paired(name: &str, a: &[f64], b: &[f64]) {
    let mut d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    d.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let q = |f: f64| d[((d.len() - 1) as f64 * f) as usize];
    println!(
        "{name:<28} median {:+7.3} ms   IQR {:+.3} .. {:+.3} ms",
        q(0.5),
        q(0.25),
        q(0.75)
    );
}

fn stats(name: &str, v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = v[v.len() / 2];
    let p95 = v[(v.len() * 95 / 100).min(v.len() - 1)];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{name:<28} median {median:7.3} ms   p95 {p95:7.3} ms   mean {mean:7.3} ms   n={}",
        v.len()
    );
    median
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(200);
    let exe = std::env::current_exe().unwrap();
    let bin_dir = exe.parent().unwrap().parent().unwrap();
    let mlenv = bin_dir.join("mlenv-runtime");
    assert!(
        mlenv.exists(),
        "{} missing: cargo build --release --workspace first",
        mlenv.display()
    );
    let runc = mlenv::lowlevel::locate(None).expect("runc installed");

    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static installed");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true")).unwrap();
    let bundle = dir.join("bundle");
    fs::create_dir(&bundle).unwrap();
    must(Command::new(&runc).args(["spec", "--bundle"]).arg(&bundle));
    let cfg = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["true"]);
    let pristine = serde_json::to_vec(&spec).unwrap();
    fs::write(&cfg, &pristine).unwrap();
    let gpu_bundle = dir.join("gpu-bundle");
    fs::create_dir(&gpu_bundle).unwrap();
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("MLENV_GPUS=1".into());
    let gpu_cfg = gpu_bundle.join("config.json");
    let gpu_pristine = serde_json::to_vec(&spec).unwrap();
    fs::write(&gpu_cfg, &gpu_pristine).unwrap();
    // Eight idle GPUs through the test NVML library, device nodes standing in as links
    // to /dev/null.
    let gpus: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"uuid": "GPU-{i:08}-0000-0000-0000-000000000000", "minor": {i}}}"#))
        .collect();
    let nvml = mlenv::gpu::install_fake_nvml(
        bin_dir,
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
    let gpu_policy =
        format!("[gpu]\nnvml_library = {nvml:?}\ninject = \"devices\"\ndevice_dir = {dev:?}\n");

    let write_policy = |name: &str, runtime: &Path, body: &str| -> PathBuf {
        let p = dir.join(name).join("mlenv.toml");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        // "-nohook" cases: mlenv-hook not added (no createRuntime/poststop hooks).
        let hook = if name.ends_with("-nohook") {
            "hook = false\n"
        } else {
            ""
        };
        fs::write(
            &p,
            format!(
                "[runtime]\npath = {runtime:?}\n{hook}[inventory]\npath = {:?}\n{body}",
                dir.join("mlenv.db")
            ),
        )
        .unwrap();
        p
    };
    const LIMITS: &str =
        "[limits]\ndefault_memory = \"256M\"\ndefault_cpus = 1\ndefault_pids = 512\n";
    let no_edit = write_policy("plain", &runc, "");
    let no_hook = write_policy("plain-nohook", &runc, "");
    let limits = write_policy("limits", &runc, LIMITS);
    let truebin = PathBuf::from("/bin/true");
    let no_edit_true = write_policy("plain-true", &truebin, "");
    let limits_true = write_policy("limits-true", &truebin, LIMITS);
    let gpu = write_policy("gpu", &runc, &gpu_policy);
    let gpu_true = write_policy("gpu-true", &truebin, &gpu_policy);
    let state = dir.join("state");
    let log = dir.join("log.json");

    let create_in = |bundle: &Path, bin: &Path, policy: Option<&Path>, id: &str| {
        let mut c = Command::new(bin);
        if let Some(p) = policy {
            c.env("MLENV_CONFIG", p);
        }
        c.arg("--root").arg(&state).arg("--log").arg(&log).args([
            "--log-format",
            "json",
            "create",
            "--bundle",
        ]);
        c.arg(bundle).arg(id);
        c
    };
    let create = |bin: &Path, policy: Option<&Path>, id: &str| create_in(&bundle, bin, policy, id);
    // Deletes go through the runtime that created (untimed), so that mlenv's
    // inventory sees them as it does under an engine.
    let delete = |bin: &Path, policy: Option<&Path>, id: &str| {
        let mut c = Command::new(bin);
        if let Some(p) = policy {
            c.env("MLENV_CONFIG", p);
        }
        must(c.arg("--root").arg(&state).args(["delete", "--force", id]))
    };

    // Warm-up: page cache, inventory creation and migration.
    for i in 0..5 {
        let id = format!("warm{i}");
        timed(&mut create(&mlenv, Some(&no_edit), &id));
        delete(&mlenv, Some(&no_edit), &id);
    }
    let (mut t_runc, mut t_plain, mut t_limits) = (Vec::new(), Vec::new(), Vec::new());
    let (mut t_runc_gpu, mut t_gpu) = (Vec::new(), Vec::new());
    let mut t_nohook = Vec::new();
    for i in 0..n {
        let id = format!("r{i}");
        t_runc.push(timed(&mut create(&runc, None, &id)));
        delete(&runc, None, &id);
        let id = format!("p{i}");
        t_plain.push(timed(&mut create(&mlenv, Some(&no_edit), &id)));
        delete(&mlenv, Some(&no_edit), &id);
        fs::write(&cfg, &pristine).unwrap();
        let id = format!("n{i}");
        t_nohook.push(timed(&mut create(&mlenv, Some(&no_hook), &id)));
        delete(&mlenv, Some(&no_hook), &id);
        let id = format!("l{i}");
        t_limits.push(timed(&mut create(&mlenv, Some(&limits), &id)));
        delete(&mlenv, Some(&limits), &id);
        fs::write(&cfg, &pristine).unwrap();
        let id = format!("gr{i}");
        t_runc_gpu.push(timed(&mut create_in(&gpu_bundle, &runc, None, &id)));
        delete(&runc, None, &id);
        let id = format!("g{i}");
        t_gpu.push(timed(&mut create_in(&gpu_bundle, &mlenv, Some(&gpu), &id)));
        delete(&mlenv, Some(&gpu), &id);
        fs::write(&gpu_cfg, &gpu_pristine).unwrap();
    }
    let (mut t_true, mut t_plain_true, mut t_limits_true) = (Vec::new(), Vec::new(), Vec::new());
    let mut t_gpu_true = Vec::new();
    for i in 0..n {
        let id = format!("t{i}");
        t_true.push(timed(&mut create(&truebin, None, &id)));
        t_plain_true.push(timed(&mut create(&mlenv, Some(&no_edit_true), &id)));
        delete(&mlenv, Some(&no_edit_true), &id);
        fs::write(&cfg, &pristine).unwrap();
        t_limits_true.push(timed(&mut create(&mlenv, Some(&limits_true), &id)));
        delete(&mlenv, Some(&limits_true), &id);
        fs::write(&cfg, &pristine).unwrap();
        t_gpu_true.push(timed(&mut create_in(
            &gpu_bundle,
            &mlenv,
            Some(&gpu_true),
            &id,
        )));
        delete(&mlenv, Some(&gpu_true), &id);
        fs::write(&gpu_cfg, &gpu_pristine).unwrap();
    }
    println!(
        "create latency, {n} interleaved runs each ({})",
        runc.display()
    );
    println!("added per run, paired with the runc create just before it:");
    paired("mlenv (no edit) - runc", &t_plain, &t_runc);
    paired("mlenv (no edit, no hook) - runc", &t_nohook, &t_runc);
    paired("mlenv (limits edit) - runc", &t_limits, &t_runc);
    paired("mlenv (1 GPU) - runc", &t_gpu, &t_runc_gpu);
    let base = stats("runc create", &mut t_runc);
    let plain = stats("mlenv create (no edit)", &mut t_plain);
    let lim = stats("mlenv create (limits edit)", &mut t_limits);
    let base_gpu = stats("runc create (GPU bundle)", &mut t_runc_gpu);
    let with_gpu = stats("mlenv create (1 GPU)", &mut t_gpu);
    println!(
        "added at the median: no edit {:+.3} ms, limits edit {:+.3} ms, 1 GPU {:+.3} ms",
        plain - base,
        lim - base,
        with_gpu - base_gpu
    );
    println!();
    println!("mlenv alone, /bin/true standing in for runc");
    paired("mlenv -> true (no edit)", &t_plain_true, &t_true);
    paired("mlenv -> true (limits)", &t_limits_true, &t_true);
    paired("mlenv -> true (1 GPU)", &t_gpu_true, &t_true);
    let base = stats("/bin/true", &mut t_true);
    let plain = stats("mlenv -> true (no edit)", &mut t_plain_true);
    let lim = stats("mlenv -> true (limits edit)", &mut t_limits_true);
    let with_gpu = stats("mlenv -> true (1 GPU)", &mut t_gpu_true);
    println!(
        "added at the median: no edit {:+.3} ms, limits edit {:+.3} ms, 1 GPU {:+.3} ms",
        plain - base,
        lim - base,
        with_gpu - base
    );
}
