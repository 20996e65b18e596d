//! containerd's own client: `ctr run --runc-binary mlenv-runtime`, the path Kubernetes
//! takes through the runc v2 shim.

use crate::support::*;
use std::process::Command;

#[test]
fn ctr_run_through_mlenv() {
    if !require(
        "ctr_run",
        &["ctr", "runc"],
        &["MLENV_E2E_CONTAINERD", "MLENV_E2E_POLICY"],
    ) {
        return;
    }
    let _g = engine_lock();
    let main = std::env::var("MLENV_E2E_POLICY").unwrap();
    let policy = Policy::write(
        Some(std::path::Path::new(&main)),
        "[limits]\ndefault_pids = 33\nmax_memory = \"32M\"\n",
    );
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.args([
            "--address",
            &std::env::var("MLENV_E2E_CONTAINERD").unwrap(),
            "--namespace",
            "mlenv-e2e",
        ])
        .args(args);
        c
    };
    let rootfs = rootfs().to_str().unwrap();
    let out = ok(&mut ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        runtime(),
        "--env",
        "PATH=/bin",
        "--mount",
        "type=bind,src=/sys/fs/cgroup,dst=/host-cgroup,options=rbind:ro",
        "--rootfs",
        rootfs,
        "e2e-ctr",
        "sh",
        "-c",
        SHOW_LIMITS_HOST_CGROUP,
    ]));
    let (memory, _, pids) = limits(&out);
    assert_eq!(pids, "33");
    assert_eq!(
        memory,
        (32u64 << 20).to_string(),
        "max_memory caps a container without a limit"
    );
    let h = policy.history();
    assert_eq!(h[0]["container_id"], "e2e-ctr");
    assert_eq!(h[0]["outcome"], "admitted");
    assert!(policy.live().is_empty());

    let o = run(&mut ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        runtime(),
        "--memory-limit",
        "67108864",
        "--rootfs",
        rootfs,
        "e2e-ctr2",
        "/bin/true",
    ]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(
            "mlenv: refused: memory limit 64M requested > 32M allowed ([limits] max_memory)"
        ),
        "{err}"
    );
}
