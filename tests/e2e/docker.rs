//! Through a real dockerd (started by tests/e2e-env.sh), as users meet mlenv.

use crate::support::*;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const ENV: &[&str] = &["MLENV_E2E_DOCKER_HOST", "MLENV_E2E_POLICY"];

pub fn docker_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.env(
        "DOCKER_HOST",
        std::env::var("MLENV_E2E_DOCKER_HOST").unwrap(),
    )
    .args(args);
    c
}

#[track_caller]
pub fn docker(args: &[&str]) -> String {
    ok(&mut docker_cmd(args)).trim().to_string()
}

/// Starts `docker run -d --name NAME -e ENV IMAGE sleep 600` for every name at once
/// (racing creates) and waits for all; outputs in the order of `names`.
pub fn race(names: &[String], env: &str) -> Vec<std::process::Output> {
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            docker_cmd(&[
                "run", "-d", "--name", name, "-e", env, IMAGE, "sleep", "600",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// The busybox image, imported once from the test rootfs. The test dockerd keeps its
/// data between runs (/var/lib/mlenv-e2e): the image an earlier run imported, untagged
/// now, is pruned, so that runs do not pile them up.
fn image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        import_rootfs(&mut docker_cmd(&["import", "-", IMAGE]));
        ok(&mut docker_cmd(&["image", "prune", "--force"]));
    });
}

/// Takes the engines for this test: the lock, the image, and a policy of its own at
/// the path the engines read.
pub fn engine(
    test: &str,
    tools: &[&str],
    body: &str,
) -> Option<(std::sync::MutexGuard<'static, ()>, Policy)> {
    let mut all = vec!["docker", "runc"];
    all.extend_from_slice(tools);
    if !require(test, &all, ENV) {
        return None;
    }
    let guard = engine_lock();
    image();
    let main = std::env::var("MLENV_E2E_POLICY").unwrap();
    let policy = Policy::write(Some(Path::new(&main)), body);
    // The registered runtime must be the binary under test.
    let info = docker(&["info", "--format", "{{json .Runtimes}}"]);
    assert!(
        info.contains(runtime()),
        "dockerd runs another mlenv-runtime: {info}; restart tests/e2e-env.sh"
    );
    Some((guard, policy))
}

#[test]
fn docker_run_returns_output_and_is_recorded() {
    let Some((_g, policy)) = engine("docker_run", &[], "") else {
        return;
    };
    let out = docker(&[
        "run",
        "--runtime=mlenv",
        "--name",
        "e2e-hello",
        "-e",
        "MLENV_PROJECT=vision",
        IMAGE,
        "echo",
        "hello from mlenv",
    ]);
    assert_eq!(out, "hello from mlenv");
    let id = docker(&["inspect", "-f", "{{.Id}}", "e2e-hello"]);
    docker(&["rm", "e2e-hello"]);
    let h = policy.history();
    let row = h
        .iter()
        .find(|r| r["container_id"] == id.as_str())
        .expect("decision recorded under the container id");
    assert_eq!(row["outcome"], "admitted");
    assert_eq!(row["project"], "vision");
    assert!(policy.live().is_empty(), "ended on delete");
    // explain finds it by prefix.
    let explained = policy.cli(&["explain", &id[..12]]);
    assert!(explained.contains("decision   admitted"), "{explained}");
    assert!(explained.contains("project    vision"), "{explained}");
}

#[test]
fn docker_lifecycle_passes_through() {
    let Some((_g, policy)) = engine("docker_lifecycle", &[], "") else {
        return;
    };
    let id = docker(&["run", "-d", "--runtime=mlenv", IMAGE, "sleep", "600"]);
    assert_eq!(docker(&["exec", &id, "echo", "in"]), "in");
    docker(&["pause", &id]);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &id]),
        "paused"
    );
    docker(&["unpause", &id]);
    docker(&["restart", "-t", "1", &id]);
    assert_eq!(docker(&["exec", &id, "echo", "again"]), "again");
    docker(&["stop", "-t", "1", &id]);
    docker(&["start", &id]);
    docker(&["kill", &id]);
    docker(&["start", &id]);
    assert_eq!(policy.live().len(), 1, "one live row while it runs");
    docker(&["rm", "-f", &id]);
    let admitted = policy
        .history()
        .iter()
        .filter(|r| r["container_id"] == id.as_str() && r["outcome"] == "admitted")
        .count();
    assert_eq!(
        admitted, 4,
        "run, restart and two starts each create through mlenv"
    );
    assert!(policy.live().is_empty(), "nothing left live after rm -f");
}

#[test]
fn docker_passthrough_survives_a_broken_policy() {
    let Some((_g, policy)) = engine("docker_broken_policy", &[], "") else {
        return;
    };
    let id = docker(&["run", "-d", IMAGE, "sleep", "600"]);
    std::fs::write(&policy.main, "[limits]\nbogus = 1\n").unwrap();
    // exec, stop and rm reach runc without loading the policy.
    assert_eq!(docker(&["exec", &id, "echo", "still"]), "still");
    let o = run(&mut docker_cmd(&["run", "--rm", IMAGE, "true"]));
    assert_eq!(o.status.code(), Some(125));
    let err = stderr(&o);
    assert!(
        err.contains("OCI runtime create failed: mlenv: policy invalid: ")
            && err.contains("mlenv.toml:2: limits.bogus: unknown field `bogus`")
            && err.contains("check with `mlenv policy check`"),
        "{err}"
    );
    docker(&["stop", "-t", "1", &id]);
    docker(&["rm", &id]);
}

#[test]
fn docker_limits_defaulted_clamped_and_refused() {
    let Some((_g, policy)) = engine(
        "docker_limits",
        &[],
        "[limits]\nover_limit = \"clamp\"\ndefault_memory = \"96M\"\nmax_memory = \"128M\"\n\
         default_cpus = 0.5\ndefault_pids = 64\nmax_pids = 100\n",
    ) else {
        return;
    };
    let out = docker(&[
        "run",
        "--rm",
        "--runtime=mlenv",
        IMAGE,
        "sh",
        "-c",
        SHOW_LIMITS,
    ]);
    assert_eq!(
        limits(&out),
        ((96u64 << 20).to_string(), "50000".into(), "64".into()),
        "defaults"
    );

    let out = docker(&[
        "run",
        "--rm",
        "-m",
        "512m",
        "--cpus",
        "1",
        "--pids-limit",
        "1000",
        IMAGE,
        "sh",
        "-c",
        SHOW_LIMITS,
    ]);
    assert_eq!(
        limits(&out),
        ((128u64 << 20).to_string(), "100000".into(), "100".into()),
        "clamped"
    );

    std::fs::write(
        &policy.main,
        format!(
            "[inventory]\npath = {:?}\n[limits]\nmax_memory = \"128M\"\n",
            policy.inventory
        ),
    )
    .unwrap();
    let o = run(&mut docker_cmd(&[
        "run", "--rm", "-m", "512m", IMAGE, "true",
    ]));
    assert_eq!(
        o.status.code(),
        Some(125),
        "docker run exits 125 on a runtime refusal"
    );
    assert!(
        stderr(&o).contains(
            "OCI runtime create failed: mlenv: refused: memory limit 512M requested > 128M allowed ([limits] max_memory)"
        ),
        "{}",
        stderr(&o)
    );
    let refused = policy
        .history()
        .into_iter()
        .find(|r| r["outcome"] == "refused")
        .unwrap();
    assert_eq!(refused["requested"]["memory"], 512u64 << 20);
}

#[test]
fn compose_runs_through_mlenv_as_default_runtime() {
    let Some((_g, policy)) = engine(
        "compose",
        &["docker-compose"],
        "[limits]\ndefault_memory = \"80M\"\n",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The file never names mlenv: dockerd's default-runtime does.
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        format!(
            "version: \"2.4\"\nservices:\n  app:\n    image: {IMAGE}\n    network_mode: none\n    command: [\"cat\", \"/sys/fs/cgroup/memory/memory.limit_in_bytes\"]\n"
        ),
    )
    .unwrap();
    let compose = |args: &[&str]| {
        let mut c = Command::new("docker-compose");
        c.current_dir(dir.path())
            .env(
                "DOCKER_HOST",
                std::env::var("MLENV_E2E_DOCKER_HOST").unwrap(),
            )
            .args(["-p", "mlenve2e"])
            .args(args);
        ok(&mut c).trim().to_string()
    };
    compose(&["up", "-d"]);
    let id = compose(&["ps", "-q", "app"]);
    assert_eq!(docker(&["wait", &id]), "0");
    assert_eq!(
        docker(&["inspect", "-f", "{{.HostConfig.Runtime}}", &id]),
        "mlenv"
    );
    let logs = docker(&["logs", &id]);
    compose(&["down"]);
    if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        assert_eq!(
            logs,
            (80u64 << 20).to_string(),
            "the policy's default applied"
        );
    }
    assert!(policy
        .history()
        .iter()
        .any(|r| r["container_id"] == id.as_str() && r["outcome"] == "admitted"));
}
