//! mlenv-hook alone, from podman's hooks directory (the JSON shipped in
//! config/oci-hooks.d), with podman running plain runc: admission still holds, and a
//! refusal reaches `podman run`'s output.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Podman with storage of its own in a temporary directory, so that nothing of the
/// host's podman is touched, and the hooks directory given.
struct Podman {
    dir: tempfile::TempDir,
    hooks: PathBuf,
}

impl Podman {
    fn new(policy: &Policy) -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks.d");
        std::fs::create_dir(&hooks).unwrap();
        // The shipped hook, pointed at this build and at the test's policy (runc runs
        // hooks with exactly the environment the JSON gives).
        let shipped = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/oci-hooks.d/mlenv.json"
        );
        let mut hook: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(shipped).unwrap()).unwrap();
        let built = Path::new(runtime()).with_file_name("mlenv-hook");
        assert!(
            built.exists(),
            "{} missing: cargo build --workspace",
            built.display()
        );
        hook["hook"]["path"] = built.to_str().unwrap().into();
        hook["hook"]["env"] =
            serde_json::json!([format!("MLENV_CONFIG={}", policy.main.display())]);
        std::fs::write(hooks.join("mlenv.json"), hook.to_string()).unwrap();
        let p = Podman { dir, hooks };
        import_rootfs(&mut p.cmd(&["import", "-", "mlenv-busybox"]));
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--hooks-dir")
            .arg(&self.hooks)
            .args([
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "runc",
            ])
            .args(args);
        c
    }

    /// `podman run` with the flags this machine kind needs.
    fn run(&self, args: &[&str]) -> Command {
        let mut all = vec![
            "run",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        all.extend_from_slice(args);
        self.cmd(&all)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd(&["rm", "--all", "--force", "--time", "0"])
            .output();
        let _ = self.cmd(&["system", "reset", "--force"]).output();
    }
}

#[test]
fn podman_with_only_the_hooks_directory_enforces_a_quota() {
    if !require("podman_hooks_dir", &["podman", "runc"], &[]) {
        return;
    }
    let policy = Policy::write(None, "[[quota]]\nproject = \"pq\"\nmax_containers = 1\n");
    let podman = Podman::new(&policy);
    let first = ok(&mut podman.run(&[
        "-d",
        "-e",
        "MLENV_PROJECT=pq",
        "mlenv-busybox",
        "sleep",
        "600",
    ]));
    let first = first.trim();
    let live = policy.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["container_id"], first);
    let pid = ok(&mut podman.cmd(&["inspect", "-f", "{{.State.Pid}}", first]));
    assert_eq!(
        live[0]["pid"].to_string(),
        pid.trim(),
        "init process recorded"
    );

    // Over quota: refused by the hook, the reason in podman's own output.
    let o = run(&mut podman.run(&["--rm", "-e", "MLENV_PROJECT=pq", "mlenv-busybox", "true"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(126), "{err}");
    assert!(
        err.contains("mlenv: refused: quota project=pq: 1 of 1 containers live"),
        "{err}"
    );
    // The security rules hold here too.
    let o = run(&mut podman.run(&["--rm", "--cap-add", "SYS_ADMIN", "mlenv-busybox", "true"]));
    assert!(
        stderr(&o).contains(
            "mlenv: refused: capability CAP_SYS_ADMIN not in [security] allowed_capabilities"
        ),
        "{}",
        stderr(&o)
    );

    // Removing the first runs the poststop hook: the quota frees.
    ok(&mut podman.cmd(&["rm", "--force", "--time", "0", first]));
    assert!(policy.live().is_empty());
    let out = ok(&mut podman.run(&[
        "--rm",
        "-e",
        "MLENV_PROJECT=pq",
        "mlenv-busybox",
        "echo",
        "admitted",
    ]));
    assert_eq!(out.trim(), "admitted");
    assert!(policy.live().is_empty(), "ended at exit by poststop");
    let h = policy.history();
    let outcomes: Vec<&str> = h.iter().map(|d| d["outcome"].as_str().unwrap()).collect();
    assert_eq!(
        outcomes,
        ["admitted", "refused", "refused", "admitted"]
            .iter()
            .rev()
            .copied()
            .collect::<Vec<_>>()
    );
}

/// A CDI spec under /var/run/cdi, where podman looks, removed when dropped.
struct CdiSpec(PathBuf);

impl Drop for CdiSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// podman resolves a CDI device (`--device KIND=NAME`) into device nodes itself, and
/// mlenv-hook, alone from the hooks directory, cannot change the container: it leases
/// the GPU by its device node, and refuses the next container given the same one.
#[test]
fn podman_cdi_gpu_is_leased_by_the_hook() {
    if !require("podman_cdi", &["podman", "runc", "mknod"], &[]) {
        return;
    }
    let host = crate::gpu::GpuHost::new(&crate::gpu::four_gpus(), 4);
    let policy = Policy::write(None, &host.policy("nvidia"));
    let podman = Podman::new(&policy);
    // A kind of this test's own, so that no real GPU spec of the host is touched.
    let kind = format!("mlenv-e2e-{}.example/gpu", std::process::id());
    let dir = Path::new("/var/run/cdi");
    std::fs::create_dir_all(dir).unwrap();
    let node = |name: &str| serde_json::json!({"path": format!("/dev/{name}"), "hostPath": host.dev().join(name)});
    let spec = serde_json::json!({
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": [{"name": "gpu1", "containerEdits": {"deviceNodes": [node("nvidia1")]}}],
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [node("nvidiactl")]
        }
    });
    let file = CdiSpec(dir.join(format!("mlenv-e2e-{}.json", std::process::id())));
    std::fs::write(&file.0, spec.to_string()).unwrap();
    let device = format!("{kind}=gpu1");
    let first = ok(&mut podman.run(&["-d", "--device", &device, "mlenv-busybox", "sleep", "600"]));
    let first = first.trim();
    let live = policy.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["gpus"], serde_json::json!([1]), "{live:?}");
    let o = run(&mut podman.run(&["--rm", "--device", &device, "mlenv-busybox", "true"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(126), "{err}");
    assert!(
        err.contains(&format!(
            "mlenv: refused: GPU 1 (GPU-11111111) requested: leased to {} (user 0)",
            &first[..12]
        )),
        "{err}"
    );
    ok(&mut podman.cmd(&["rm", "--force", "--time", "0", first]));
    assert!(policy.live().is_empty(), "released at removal");
}

/// On an MPS GPU, mlenv-hook alone cannot give the container its share (the MPS
/// variables and mounts): `podman run` without them is refused, naming the flags that
/// give it; with those flags the GPU is leased with its share.
#[test]
fn podman_mps_gpu_needs_its_share_in_the_run_command() {
    if !require("podman_mps", &["podman", "runc", "mknod"], &[]) {
        return;
    }
    let host = crate::gpu::GpuHost::new(&crate::gpu::four_gpus(), 4);
    let mps = tempfile::tempdir().unwrap();
    let (pipe, shm) = (mps.path().join("pipe"), mps.path().join("shm"));
    std::fs::create_dir(&pipe).unwrap();
    std::fs::create_dir(&shm).unwrap();
    let policy = Policy::write(
        None,
        &format!(
            "{}[mps]\ngpus = [1]\npipe_directory = {pipe:?}\nshm_directory = {shm:?}\n",
            host.policy("nvidia")
        ),
    );
    let podman = Podman::new(&policy);
    let node = host.dev().join("nvidia1");
    let device = format!("{}:/dev/nvidia1", node.display());
    let o = run(&mut podman.run(&[
        "--rm",
        "--device",
        &device,
        "-e",
        "MLENV_GPU_MEMORY=8G",
        "mlenv-busybox",
        "true",
    ]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(126), "{err}");
    let (pipe, shm) = (pipe.display(), shm.display());
    let flags = [
        format!(
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={}=8G",
            crate::gpu::uuid(1)
        ),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100".to_string(),
        format!("CUDA_MPS_PIPE_DIRECTORY={pipe}"),
    ];
    assert!(
        err.contains(&format!(
            "mlenv: refused: mlenv-hook cannot give a container that exists its MPS share of GPU 1 (8G pinned, 100% threads); run it with -e {} -e {} -e {} -v {pipe}:{pipe} -v {shm}:/dev/shm, or register mlenv-runtime with the engine",
            flags[0], flags[1], flags[2]
        )),
        "{err}"
    );
    assert!(policy.live().is_empty(), "nothing leased");
    let (pipe_bind, shm_bind) = (format!("{pipe}:{pipe}"), format!("{shm}:/dev/shm"));
    let first = ok(&mut podman.run(&[
        "-d",
        "--device",
        &device,
        "-e",
        "MLENV_GPU_MEMORY=8G",
        "-e",
        &flags[0],
        "-e",
        &flags[1],
        "-e",
        &flags[2],
        "-v",
        &pipe_bind,
        "-v",
        &shm_bind,
        "mlenv-busybox",
        "sleep",
        "600",
    ]));
    let first = first.trim();
    let live = policy.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["gpus"], serde_json::json!([1]), "{live:?}");
    ok(&mut podman.cmd(&["rm", "--force", "--time", "0", first]));
    assert!(policy.live().is_empty(), "released at removal");
}
