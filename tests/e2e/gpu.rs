//! GPUs through a real dockerd, on GPUs served by the test NVML library and fake
//! device nodes made with mknod: what a container sees, what is refused and why, and
//! leases under racing creates.

use crate::docker::{docker, docker_cmd, engine, race};
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A GPU host in a directory: the test NVML library (as libnvidia-ml.so.1, reading
/// fake-nvml.json beside it, since the runtime does not inherit the tests'
/// environment) and device nodes nvidia0..N-1, nvidiactl, nvidia-uvm.
pub(crate) struct GpuHost {
    _dir: tempfile::TempDir,
    lib: PathBuf,
    dev: PathBuf,
}

impl GpuHost {
    pub(crate) fn new(gpus_json: &str, count: u32) -> GpuHost {
        let dir = tempfile::tempdir().unwrap();
        let lib = fake_nvml(&dir.path().join("nvml"), gpus_json);
        let dev = dir.path().join("dev");
        std::fs::create_dir(&dev).unwrap();
        let mut nodes: Vec<(String, u32, u32)> =
            (0..count).map(|i| (format!("nvidia{i}"), 195, i)).collect();
        nodes.push(("nvidiactl".into(), 195, 255));
        nodes.push(("nvidia-uvm".into(), 511, 0));
        for (name, major, minor) in nodes {
            ok(Command::new("mknod")
                .args(["-m", "666"])
                .arg(dev.join(name))
                .args(["c", &major.to_string(), &minor.to_string()]));
        }
        GpuHost {
            _dir: dir,
            lib,
            dev,
        }
    }

    /// A CDI spec for the GPUs, named by UUID, as `nvidia-ctk cdi generate` writes
    /// them (trimmed): the GPU's node per device, nvidiactl and an environment
    /// variable for all. Returns the directory.
    fn cdi(&self, count: u32) -> PathBuf {
        let dir = self._dir.path().join("cdi");
        std::fs::create_dir_all(&dir).unwrap();
        let node = |name: &str| {
            format!(
                r#"{{"path": "/dev/{name}", "hostPath": "{}"}}"#,
                self.dev.join(name).display()
            )
        };
        let devices: Vec<String> = (0..count)
            .map(|i| {
                format!(
                    r#"{{"name": "{}", "containerEdits": {{"deviceNodes": [{}]}}}}"#,
                    uuid(i),
                    node(&format!("nvidia{i}"))
                )
            })
            .collect();
        let spec = format!(
            r#"{{"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [{}],
                "containerEdits": {{"env": ["NVIDIA_VISIBLE_DEVICES=void", "CDI_EDITED=yes"],
                                    "deviceNodes": [{}]}}}}"#,
            devices.join(","),
            node("nvidiactl")
        );
        std::fs::write(dir.join("nvidia.json"), spec).unwrap();
        dir
    }

    /// Where the device nodes are.
    pub(crate) fn dev(&self) -> &Path {
        &self.dev
    }

    /// The `[gpu]` section for this host.
    pub(crate) fn policy(&self, inject: &str) -> String {
        format!(
            "[gpu]\nnvml_library = {:?}\ninject = \"{inject}\"\ndevice_dir = {:?}\n",
            self.lib, self.dev
        )
    }
}

pub(crate) fn uuid(i: u32) -> String {
    format!("GPU-{0}{0}{0}{0}{0}{0}{0}{0}-{0}{0}{0}{0}-{0}{0}{0}{0}-{0}{0}{0}{0}-{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}", i)
}

/// Four GPUs: 0 at 90% utilization, 1 at 20%, 2 idle, 3 at 5%.
pub(crate) fn four_gpus() -> String {
    let util = [90, 20, 0, 5];
    let gpus: Vec<String> = (0..4)
        .map(|i| {
            format!(
                r#"{{"uuid": "{}", "minor": {i}, "utilization_gpu": {}}}"#,
                uuid(i),
                util[i as usize]
            )
        })
        .collect();
    format!(r#"{{"gpus": [{}]}}"#, gpus.join(","))
}

/// What the container prints: its NVIDIA device nodes and NVIDIA_VISIBLE_DEVICES.
const SHOW_GPUS: &str = "ls /dev | grep nvidia; echo NVD=$NVIDIA_VISIBLE_DEVICES";

#[test]
fn a_gpu_request_sees_exactly_the_best_gpus() {
    let host = GpuHost::new(&four_gpus(), 4);
    let Some((_g, policy)) = engine("gpu_best", &["mknod"], &host.policy("devices")) else {
        return;
    };
    let best = format!(
        "nvidia-uvm\nnvidia2\nnvidia3\nnvidiactl\nNVD={},{}",
        uuid(2),
        uuid(3)
    );
    // mlenv's own request: GPU 0 (90%) is never chosen, and the least busy win.
    let out = docker(&[
        "run",
        "--rm",
        "--runtime=mlenv",
        "-e",
        "MLENV_GPUS=2",
        IMAGE,
        "sh",
        "-c",
        SHOW_GPUS,
    ]);
    assert_eq!(out, best);
    // Docker's --gpus 2 (0,1 in the spec, with NVIDIA's hook) gets the same two, not 0
    // and 1; NVIDIA's (stub) hook stays and runs.
    let out = docker(&["run", "--rm", "--gpus", "2", IMAGE, "sh", "-c", SHOW_GPUS]);
    assert_eq!(out, best);
    // An explicit device list is taken as asked.
    let out = docker(&[
        "run",
        "--rm",
        "--gpus",
        "\"device=1\"",
        IMAGE,
        "sh",
        "-c",
        SHOW_GPUS,
    ]);
    assert_eq!(
        out,
        format!("nvidia-uvm\nnvidia1\nnvidiactl\nNVD={}", uuid(1))
    );
    // A container without a GPU request sees no NVIDIA device.
    let out = docker(&["run", "--rm", IMAGE, "sh", "-c", SHOW_GPUS]);
    assert_eq!(out, "NVD=");
    let h = policy.history();
    assert_eq!(h.len(), 4);
    assert!(
        h.iter()
            .any(|d| d["reason"].as_str().unwrap().contains("GPUs 2,3 leased")),
        "{h:?}"
    );
    assert!(policy.live().is_empty(), "leases end with --rm");

    // inject = "nvidia": NVIDIA_VISIBLE_DEVICES carries the chosen UUIDs for NVIDIA's
    // hook, and no device node is added by mlenv.
    std::fs::write(
        &policy.main,
        std::fs::read_to_string(&policy.main)
            .unwrap()
            .replace("inject = \"devices\"", "inject = \"nvidia\""),
    )
    .unwrap();
    let out = docker(&["run", "--rm", "--gpus", "2", IMAGE, "sh", "-c", SHOW_GPUS]);
    assert_eq!(out, format!("NVD={},{}", uuid(2), uuid(3)));

    // inject = "cdi": the CDI edits of the chosen device; NVIDIA_VISIBLE_DEVICES still
    // names the grant (not the spec's "void").
    let cdi = host.cdi(4);
    std::fs::write(
        &policy.main,
        std::fs::read_to_string(&policy.main).unwrap().replace(
            "inject = \"nvidia\"",
            &format!("inject = \"cdi\"\ncdi_spec_dirs = [{cdi:?}]"),
        ),
    )
    .unwrap();
    let out = docker(&[
        "run",
        "--rm",
        "-e",
        "MLENV_GPUS=1",
        IMAGE,
        "sh",
        "-c",
        &format!("{SHOW_GPUS}; echo CDI=$CDI_EDITED"),
    ]);
    assert_eq!(out, format!("nvidia2\nnvidiactl\nNVD={}\nCDI=yes", uuid(2)));
}

/// `docker run --device /dev/nvidia2` puts the GPU in the container past any GPU
/// request: mlenv leases it all the same, and the next container given that node is
/// refused while the first holds it. A request in the environment beside the nodes is
/// refused as ambiguous.
#[test]
fn a_gpu_device_node_given_directly_is_leased() {
    let host = GpuHost::new(&four_gpus(), 4);
    let Some((_g, policy)) = engine("gpu_device_nodes", &["mknod"], &host.policy("devices")) else {
        return;
    };
    let node = format!("{}:/dev/nvidia2", host.dev.join("nvidia2").display());
    let first = docker(&["run", "-d", "--device", &node, IMAGE, "sleep", "600"]);
    assert_eq!(
        docker(&["exec", &first, "sh", "-c", "ls /dev | grep nvidia"]),
        "nvidia2"
    );
    let live = policy.live();
    assert_eq!(live[0]["gpus"], serde_json::json!([2]), "{live:?}");
    let o = run(&mut docker_cmd(&[
        "run", "--rm", "--device", &node, IMAGE, "true",
    ]));
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("mlenv: refused: GPU 2 (GPU-22222222) requested: leased to "),
        "{}",
        stderr(&o)
    );
    let o = run(&mut docker_cmd(&[
        "run",
        "--rm",
        "-e",
        "MLENV_GPUS=1",
        "--device",
        &node,
        IMAGE,
        "true",
    ]));
    assert!(
        stderr(&o).contains("mlenv: refused: GPU device nodes /dev/nvidia2 given to the container directly and 1 GPU (MLENV_GPUS) asked for: ask one way"),
        "{}",
        stderr(&o)
    );
    // As Kubernetes' device plugin passes a GPU: its node and its UUID. Leased; the
    // same node under another GPU's name is refused.
    let node3 = format!("{}:/dev/nvidia3", host.dev.join("nvidia3").display());
    let named = format!("NVIDIA_VISIBLE_DEVICES={}", uuid(3));
    let plugin = docker(&[
        "run", "-d", "-e", &named, "--device", &node3, IMAGE, "sleep", "600",
    ]);
    assert_eq!(
        docker(&[
            "exec",
            &plugin,
            "sh",
            "-c",
            "ls /dev | grep nvidia; echo $NVIDIA_VISIBLE_DEVICES"
        ]),
        format!("nvidia3\n{}", uuid(3))
    );
    let gpus: Vec<serde_json::Value> = policy.live().iter().map(|c| c["gpus"].clone()).collect();
    assert_eq!(gpus, [serde_json::json!([2]), serde_json::json!([3])]);
    let other = format!("NVIDIA_VISIBLE_DEVICES={}", uuid(1));
    let o = run(&mut docker_cmd(&[
        "run", "--rm", "-e", &other, "--device", &node3, IMAGE, "true",
    ]));
    assert!(
        stderr(&o).contains(&format!("mlenv: refused: GPU device nodes /dev/nvidia3 given to the container directly and GPUs {} (NVIDIA_VISIBLE_DEVICES) asked for", uuid(1))),
        "{}",
        stderr(&o)
    );
    docker(&["rm", "-f", &first, &plugin]);
    assert_eq!(
        docker(&[
            "run",
            "--rm",
            "--device",
            &node,
            IMAGE,
            "sh",
            "-c",
            "ls /dev | grep nvidia"
        ]),
        "nvidia2",
        "released with the first container"
    );
}

#[test]
fn with_no_free_gpu_the_refusal_names_each_gpu() {
    let gpus = format!(
        r#"{{"gpus": [
        {{"uuid": "{}", "minor": 0, "utilization_gpu": 90}},
        {{"uuid": "{}", "minor": 1, "memory_used": 85530000000}},
        {{"uuid": "{}", "minor": 2, "processes": [{{"pid": 4242, "used_memory": 1073741824}}]}}
    ]}}"#,
        uuid(0),
        uuid(1),
        uuid(2)
    );
    let host = GpuHost::new(&gpus, 3);
    let Some((_g, policy)) = engine("gpu_none_free", &["mknod"], &host.policy("devices")) else {
        return;
    };
    let o = run(&mut docker_cmd(&[
        "run",
        "--name",
        "mlenv-gpu-refused",
        "-e",
        "MLENV_GPUS=1",
        IMAGE,
        "true",
    ]));
    let id = docker(&["inspect", "--format", "{{.Id}}", "mlenv-gpu-refused"]);
    let _ = run(&mut docker_cmd(&["rm", "-f", "mlenv-gpu-refused"]));
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let want = "mlenv: refused: 1 GPU requested, 0 free: \
        GPU 0 (GPU-00000000): utilization 90% > 30% ([gpu] max_utilization); \
        GPU 1 (GPU-11111111): free memory 352M < 1G ([gpu] min_free_memory); \
        GPU 2 (GPU-22222222): runs 1 compute process not placed by mlenv (pid 4242) ([gpu] foreign_processes)";
    assert!(stderr(&o).contains(want), "{}", stderr(&o));
    // explain lists every GPU with its state.
    let explained = policy.cli(&["explain", &id]);
    for line in [
        "gpus       requested 1 GPU (MLENV_GPUS)",
        "busy    0 GPU-00000000-0000-0000-0000-000000000000 NVIDIA H100 80GB HBM3 util 90%",
        "utilization 90% > 30% ([gpu] max_utilization)",
        "free memory 352M < 1G ([gpu] min_free_memory)",
    ] {
        assert!(explained.contains(line), "{line:?} in:\n{explained}");
    }
}

#[test]
fn sixteen_racing_creates_lease_four_gpus_once_each() {
    let gpus: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"uuid": "{}", "minor": {i}}}"#, uuid(i)))
        .collect();
    let host = GpuHost::new(&format!(r#"{{"gpus": [{}]}}"#, gpus.join(",")), 4);
    let Some((_g, policy)) = engine("gpu_race", &["mknod"], &host.policy("devices")) else {
        return;
    };
    let names: Vec<String> = (0..16).map(|i| format!("mlenv-gpurace-{i}")).collect();
    let outputs = race(&names, "MLENV_GPUS=1");
    let admitted: Vec<&String> = names
        .iter()
        .zip(&outputs)
        .filter(|(_, o)| o.status.success())
        .map(|(n, _)| n)
        .collect();
    let refused: Vec<String> = outputs
        .iter()
        .filter(|o| !o.status.success())
        .map(stderr)
        .collect();
    // Each admitted container sees one GPU node, and no two see the same.
    let mut seen: Vec<String> = admitted
        .iter()
        .map(|n| docker(&["exec", n, "sh", "-c", "ls /dev | grep '^nvidia[0-9]'"]))
        .collect();
    let live = policy.live();
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    let _ = run(&mut docker_cmd(&rm));

    assert_eq!(admitted.len(), 4, "refusals: {refused:?}");
    assert_eq!(refused.len(), 12);
    for err in &refused {
        assert!(
            err.contains("mlenv: refused: 1 GPU requested, 0 free: GPU "),
            "{err}"
        );
        assert!(err.contains("leased to"), "{err}");
    }
    let mut leased: Vec<u64> = live
        .iter()
        .flat_map(|l| l["gpus"].as_array().unwrap().clone())
        .map(|g| g.as_u64().unwrap())
        .collect();
    leased.sort();
    assert_eq!(leased, [0, 1, 2, 3], "one lease per GPU: {live:?}");
    seen.sort();
    assert_eq!(seen, ["nvidia0", "nvidia1", "nvidia2", "nvidia3"]);
    assert!(policy.live().is_empty(), "leases released by rm -f");
}

/// A remapped (non-root) container granted a GPU whose nodes are 0660 root:44 gets
/// group 44, and can open its node; without a GPU it gets no such group.
#[test]
fn a_non_root_gpu_container_gets_the_device_group() {
    let host = GpuHost::new(
        &format!(r#"{{"gpus": [{{"uuid": "{}", "minor": 0}}]}}"#, uuid(0)),
        1,
    );
    for entry in std::fs::read_dir(&host.dev).unwrap() {
        let node = entry.unwrap().path();
        std::os::unix::fs::chown(&node, Some(0), Some(44)).unwrap();
        std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .unwrap();
    }
    let body = format!(
        "{}[user]\nmapping = \"fixed\"\nuid = 1000\n",
        host.policy("devices")
    );
    let Some((_g, _policy)) = engine("gpu_groups", &["mknod"], &body) else {
        return;
    };
    // Opening the fake node fails past the permission check (no driver behind it):
    // ENXIO, not EACCES.
    let show = "id -u; id -G; cat /dev/nvidia0 2>&1 | grep -o 'Permission denied' || echo opened";
    let out = docker(&["run", "--rm", "-e", "MLENV_GPUS=1", IMAGE, "sh", "-c", show]);
    assert_eq!(out, "1000\n1000 44\nopened");
    let out = docker(&["run", "--rm", IMAGE, "sh", "-c", "id -G"]);
    assert_eq!(out, "1000");
}

/// MPS: on an 80G GPU shared through MPS, containers asking 20G each: four are
/// admitted, the fifth is refused with the sums; inside, the three variables hold the
/// granted values (a value the user set is replaced) and the pipe directory and the
/// shared /dev/shm are mounted.
#[test]
fn mps_shares_of_an_80g_gpu() {
    let host = GpuHost::new(
        &format!(r#"{{"gpus": [{{"uuid": "{}", "minor": 0}}]}}"#, uuid(0)),
        1,
    );
    let mps_dir = tempfile::tempdir().unwrap();
    let pipe = mps_dir.path().join("pipe");
    let shm = mps_dir.path().join("shm");
    std::fs::create_dir(&pipe).unwrap();
    std::fs::create_dir(&shm).unwrap();
    std::fs::write(pipe.join("control"), "").unwrap();
    let body = format!(
        "{}[mps]\ngpus = [0]\npipe_directory = {pipe:?}\nshm_directory = {shm:?}\n",
        host.policy("devices")
    );
    let Some((_g, policy)) = engine("gpu_mps", &["mknod"], &body) else {
        return;
    };
    let share = [
        "-e",
        "MLENV_GPUS=1",
        "-e",
        "MLENV_GPU_MEMORY=20G",
        "-e",
        "MLENV_GPU_THREADS=25",
    ];
    let mut args = vec!["run", "--rm", "-e", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100"];
    args.extend(share);
    let show = format!(
        "echo $CUDA_MPS_PINNED_DEVICE_MEM_LIMIT; echo $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE; \
         echo $CUDA_MPS_PIPE_DIRECTORY; ls {}; ls /dev | grep nvidia0; \
         touch /dev/shm/from-container",
        pipe.display()
    );
    args.extend([IMAGE, "sh", "-c", &show]);
    let out = docker(&args);
    assert_eq!(
        out,
        format!("{}=20G\n25\n{}\ncontrol\nnvidia0", uuid(0), pipe.display())
    );
    assert!(
        shm.join("from-container").exists(),
        "/dev/shm is the shared directory"
    );
    let d = &policy.history()[0];
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 replaced by the granted 25"),
        "{d}"
    );

    let names: Vec<String> = (0..5).map(|i| format!("mlenv-mps-{i}")).collect();
    let outputs: Vec<_> = names
        .iter()
        .map(|n| {
            let mut a = vec!["run", "-d", "--name", n.as_str()];
            a.extend(share);
            a.extend([IMAGE, "sleep", "600"]);
            run(&mut docker_cmd(&a))
        })
        .collect();
    let live = policy.live();
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    let _ = run(&mut docker_cmd(&rm));
    for o in &outputs[..4] {
        assert!(o.status.success(), "{}", stderr(o));
    }
    assert_eq!(outputs[4].status.code(), Some(125));
    assert!(
        stderr(&outputs[4]).contains(
            "mlenv: refused: 1 GPU requested, 0 free: GPU 0 (GPU-00000000): pinned memory 80G + 20G requested > 80G (80G x 1) ([mps] memory_oversubscription)"
        ),
        "{}",
        stderr(&outputs[4])
    );
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|l| l["gpus"] == serde_json::json!([0])));
}

/// On a host with a real NVIDIA GPU: probe through the real libnvidia-ml.so.1, select
/// one GPU, and run a container (runc through mlenv, `inject = "devices"`) that sees
/// exactly its node and can read its own NVIDIA_VISIBLE_DEVICES. Skipped, saying so,
/// where there is no GPU (CI); what it printed on a GPU is in docs/gpus.md.
#[test]
fn real_gpu_probe_select_inject() {
    if !Path::new("/dev/nvidiactl").exists() {
        eprintln!("skipped: real_gpu_probe_select_inject: no NVIDIA GPU on this host (/dev/nvidiactl missing)");
        return;
    }
    let t = std::time::Instant::now();
    let gpus = match mlenv::gpu::probe(None) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: real_gpu_probe_select_inject: {e}");
            return;
        }
    };
    println!("nvml: {} GPU(s) probed in {:?}", gpus.len(), t.elapsed());
    for g in &gpus {
        println!(
            "gpu {} {} {} minor {} util {}% memory {}/{} MiB processes {} mig {:?}",
            g.index,
            g.uuid,
            g.name,
            g.minor,
            g.utilization,
            g.memory_used >> 20,
            g.memory_total >> 20,
            g.processes.len(),
            g.mig
        );
        assert!(g.uuid.starts_with("GPU-"), "{g:?}");
        assert!(g.memory_total > 0);
    }
    if !require("real_gpu_probe_select_inject", &["runc"], &[]) {
        return;
    }
    // Selection against the real state, every threshold off so a busy GPU still counts.
    let policy = mlenv::policy::GpuSection {
        max_utilization: mlenv::units::Switch::Off,
        min_free_memory: mlenv::units::Switch::Off,
        foreign_processes: mlenv::policy::ForeignProcesses::Ignore,
        ..Default::default()
    };
    let request = mlenv::gpu::request::GpuRequest::Count {
        n: 1,
        source: mlenv::gpu::request::Source::MlenvGpus,
    };
    let mps = mlenv::gpu::mps::MpsSection::default();
    let asker = mlenv::gpu::select::Asker {
        uid: 0,
        share: None,
        mps: &mps,
    };
    let s = mlenv::gpu::select::select(&gpus, &[], &request, &policy, &[], &asker);
    assert_eq!(s.refusal, None);
    let chosen = &s.grant[0];
    println!("selected GPU {} ({})", chosen.index, chosen.uuid);

    // A container through mlenv on the real device nodes.
    let p = Policy::write(
        None,
        "[gpu]\ninject = \"devices\"\nmax_utilization = false\nmin_free_memory = false\nforeign_processes = \"ignore\"\n",
    );
    let bundle = p.dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    ok(Command::new("runc").args(["spec", "--bundle"]).arg(&bundle));
    let cfg = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    spec["root"] = serde_json::json!({"path": rootfs(), "readonly": true});
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "ls /dev | grep '^nvidia'; echo NVD=$NVIDIA_VISIBLE_DEVICES"
    ]);
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("MLENV_GPUS=1".into());
    std::fs::write(&cfg, spec.to_string()).unwrap();
    let out = ok(Command::new(runtime())
        .env("MLENV_CONFIG", &p.main)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("mlenv-real-gpu"));
    println!("container saw:\n{out}");
    assert!(out.contains(&format!("nvidia{}\n", gpus[chosen.index as usize].minor)));
    assert!(out.contains("nvidiactl"));
    assert!(out.contains(&format!("NVD={}", chosen.uuid)));
    let others = gpus
        .iter()
        .filter(|g| g.index != chosen.index)
        .filter(|g| out.contains(&format!("nvidia{}\n", g.minor)))
        .count();
    assert_eq!(others, 0, "only the chosen GPU's node");
}

/// Soak (issue 8), opt-in with `MLENV_SOAK=N` (it takes minutes): N containers
/// created and removed through dockerd, 16 in flight, mixing exclusive GPUs, MPS
/// shares, a project quota and plain containers on four test-NVML GPUs (two shared
/// through MPS). At the end nothing is live, no lease is unreleased, no two exclusive
/// leases of one GPU overlap in time, and every failure is a refusal with a reason.
#[test]
fn soak_mixed_requests() {
    let Some(n) = std::env::var("MLENV_SOAK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        eprintln!("soak: not run (set MLENV_SOAK=N)");
        return;
    };
    let gpus: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"uuid": "{}", "minor": {i}}}"#, uuid(i)))
        .collect();
    let host = GpuHost::new(&format!(r#"{{"gpus": [{}]}}"#, gpus.join(",")), 4);
    let mps = tempfile::tempdir().unwrap();
    for d in ["pipe", "shm"] {
        std::fs::create_dir(mps.path().join(d)).unwrap();
    }
    let body = format!(
        "{}[mps]\ngpus = [2, 3]\npipe_directory = {:?}\nshm_directory = {:?}\n[[quota]]\nproject = \"soak\"\nmax_containers = 3\n",
        host.policy("devices"),
        mps.path().join("pipe"),
        mps.path().join("shm")
    );
    let Some((_g, policy)) = engine("soak", &["mknod"], &body) else {
        return;
    };
    const KINDS: [&[&str]; 4] = [
        &["-e", "MLENV_GPUS=1"],
        &["-e", "MLENV_GPUS=1", "-e", "MLENV_GPU_MEMORY=20G"],
        &["-e", "MLENV_PROJECT=soak"],
        &[],
    ];
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let results: Vec<(usize, bool, String)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= n {
                            return out;
                        }
                        let mut args = vec!["run", "--rm"];
                        args.extend_from_slice(KINDS[i % 4]);
                        args.extend([IMAGE, "sleep", "0.2"]);
                        let o = run(&mut docker_cmd(&args));
                        out.push((i % 4, o.status.success(), stderr(&o)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed();
    let mut admitted = [0usize; 4];
    let mut refused = [0usize; 4];
    for (kind, ok, err) in &results {
        if *ok {
            admitted[*kind] += 1;
        } else {
            refused[*kind] += 1;
            let reason = err
                .split("mlenv: refused: ")
                .nth(1)
                .unwrap_or_else(|| panic!("a failure that is not a refusal: {err}"));
            assert!(
                reason.trim().len() > 10,
                "a refusal without a reason: {err}"
            );
        }
    }
    eprintln!(
        "soak: {n} containers in {:.1} s; admitted (gpu, mps, quota, plain) {admitted:?}, refused {refused:?}",
        elapsed.as_secs_f64()
    );
    assert_eq!(results.len(), n);
    assert_eq!(refused[3], 0, "plain containers are never refused");
    assert!(policy.live().is_empty(), "nothing live after --rm");
    let db = rusqlite::Connection::open(&policy.inventory).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM leases WHERE released_ms IS NULL"),
        0,
        "leaked leases"
    );
    assert_eq!(
        count("SELECT count(*) FROM containers WHERE ended_ms IS NULL"),
        0,
        "leaked reservations"
    );
    let mut st = db
        .prepare(
            "SELECT a.gpu_uuid, a.released_ms - cb.created_ms FROM leases a JOIN leases b
               ON a.gpu_uuid = b.gpu_uuid AND a.id < b.id AND a.exclusive = 1 AND b.exclusive = 1
             JOIN containers ca ON ca.id = a.container_row
             JOIN containers cb ON cb.id = b.container_row
             WHERE cb.created_ms < a.released_ms AND ca.created_ms < b.released_ms",
        )
        .unwrap();
    let overlaps: Vec<(String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(overlaps.is_empty(), "double leases: {overlaps:?}");
    assert_eq!(count("SELECT count(*) FROM decisions"), n as i64);
    assert_eq!(
        count("SELECT count(*) FROM decisions WHERE decision = 'refused' AND length(reason) < 10"),
        0
    );
}
