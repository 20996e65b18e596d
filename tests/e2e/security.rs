//! `[security]` rules and `[user]` mapping through a real dockerd: what `docker run`
//! prints when a rule refuses, and who owns what a container writes.

use crate::docker::{docker, docker_cmd, engine};
use crate::support::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `docker run ARGS` refused: exit 125 and the reason in Docker's own output.
#[track_caller]
fn refused(args: &[&str], reason: &str) {
    let o = run(&mut docker_cmd(args));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
    assert!(
        err.contains(&format!(
            "OCI runtime create failed: mlenv: refused: {reason}"
        )),
        "{args:?}: {err}"
    );
}

#[test]
fn engine_socket_privileged_host_namespaces_and_capabilities_are_refused() {
    let Some((_g, policy)) = engine("security_rules", &[], "") else {
        return;
    };
    // Docker creates a missing bind source as a directory before the runtime runs:
    // remove what this test made, never a real socket.
    let socket = Path::new("/run/docker.sock");
    let existed = socket.exists();
    refused(
        &[
            "run",
            "--rm",
            "-v",
            "/var/run/docker.sock:/s",
            IMAGE,
            "true",
        ],
        "bind mount of engine socket /run/docker.sock at /s ([security] refuse_engine_sockets)",
    );
    if !existed && socket.is_dir() {
        let _ = std::fs::remove_dir(socket);
    }
    refused(
        &["run", "--rm", "--privileged", IMAGE, "true"],
        "privileged container: every host device allowed (linux.resources.devices) ([security] refuse_privileged)",
    );
    refused(
        &["run", "--rm", "--network", "host", IMAGE, "true"],
        // Docker joins the host's network namespace by a bind-mounted path.
        "host network namespace: joins ",
    );
    refused(
        &["run", "--rm", "--pid", "host", IMAGE, "true"],
        "host pid namespace: linux.namespaces has no pid namespace ([security] refuse_host_namespaces)",
    );
    refused(
        &["run", "--rm", "--cap-add", "SYS_ADMIN", IMAGE, "true"],
        "capability CAP_SYS_ADMIN not in [security] allowed_capabilities",
    );
    // Asking from the container's environment changes nothing.
    refused(
        &[
            "run",
            "--rm",
            "-e",
            "MLENV_SECURITY=off",
            "-e",
            "MLENV_PRIVILEGED=1",
            "--cap-add",
            "SYS_ADMIN",
            IMAGE,
            "true",
        ],
        "capability CAP_SYS_ADMIN not in [security] allowed_capabilities",
    );
    // An ordinary container passes, and so does a bind mount of a project directory.
    let dir = tempfile::tempdir().unwrap();
    let bind = format!("{}:/w", dir.path().display());
    assert_eq!(
        docker(&["run", "--rm", "-v", &bind, IMAGE, "echo", "ok"]),
        "ok"
    );
    let refusals: Vec<_> = policy
        .history()
        .into_iter()
        .filter(|d| d["outcome"] == "refused")
        .collect();
    assert_eq!(refusals.len(), 6, "{refusals:?}");

    // Each rule can be switched off; bind roots, when set, refuse the rest.
    std::fs::write(
        policy.main.parent().unwrap().join("conf.d/50-rules.toml"),
        format!(
            "[security]\nrefuse_host_namespaces = false\nallowed_capabilities = false\nallowed_bind_roots = [{:?}]\n",
            dir.path()
        ),
    )
    .unwrap();
    assert_eq!(
        docker(&[
            "run",
            "--rm",
            "--network",
            "host",
            "--cap-add",
            "SYS_ADMIN",
            "-v",
            &bind,
            IMAGE,
            "echo",
            "ok"
        ]),
        "ok"
    );
    refused(
        &["run", "--rm", "-v", "/etc:/hostetc", IMAGE, "true"],
        &format!(
            "bind mount of /etc at /hostetc is outside the allowed roots {} ([security] allowed_bind_roots)",
            dir.path().display()
        ),
    );
}

#[test]
fn a_file_written_in_a_users_directory_belongs_to_that_user() {
    let Some((_g, policy)) = engine(
        "user_workdir_owner",
        &[],
        "[user]\nmapping = \"workdir-owner\"\nroot = \"refuse\"\n",
    ) else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(project.path(), Some(1000), Some(1000)).unwrap();
    let bind = format!("{}:/work", project.path().display());
    // The image runs as root; the container runs as the directory's owner.
    let out = docker(&[
        "run",
        "--rm",
        "-v",
        &bind,
        "-w",
        "/work",
        IMAGE,
        "sh",
        "-c",
        "touch made-here && id -u && id -g && id -G",
    ]);
    assert_eq!(out, "1000\n1000\n1000");
    let made = std::fs::metadata(project.path().join("made-here")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1000, 1000));
    let said = format!(
        "runs as 1000:1000 instead of root (owner of {})",
        project.path().display()
    );
    let h = policy.history();
    assert!(
        h.iter()
            .any(|d| d["reason"].as_str().unwrap().contains(&said)),
        "{h:?}"
    );
    // An explicit non-root user is kept.
    let out = docker(&[
        "run",
        "--rm",
        "-v",
        &bind,
        "-w",
        "/work",
        "--user",
        "1234:1234",
        IMAGE,
        "id",
        "-u",
    ]);
    assert_eq!(out, "1234");
    // Still root with nothing to map from: refused, saying what to do.
    refused(
        &["run", "--rm", IMAGE, "true"],
        "runs as root, and no bind mount with a non-root owner holds its working directory",
    );
}

/// `docker update` cannot raise a running container past the policy's maxima: the
/// refusal is in Docker's output and the container's cgroup is unchanged; an update
/// within them applies and is what the inventory counts.
#[test]
fn docker_update_is_held_to_the_maxima() {
    let Some((_g, policy)) = engine(
        "docker_update",
        &[],
        "[limits]\ndefault_memory = \"256M\"\nmax_memory = \"1G\"\nmax_pids = 200\n",
    ) else {
        return;
    };
    let id = docker(&["run", "-d", IMAGE, "sleep", "600"]);
    let seen = || limits(&docker(&["exec", &id, "sh", "-c", SHOW_LIMITS]));
    assert_eq!(seen().0, (256u64 << 20).to_string());
    let o = run(&mut docker_cmd(&[
        "update",
        "-m",
        "2g",
        "--memory-swap",
        "2g",
        &id,
    ]));
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("mlenv: refused: update: memory limit 2G > 1G allowed ([limits] max_memory)"),
        "{err}"
    );
    let o = run(&mut docker_cmd(&["update", "--pids-limit", "-1", &id]));
    assert!(
        stderr(&o).contains("update: pids limit unlimited > 200 allowed ([limits] max_pids)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        seen().0,
        (256u64 << 20).to_string(),
        "refused update not applied"
    );
    docker(&["update", "-m", "512m", "--memory-swap", "512m", &id]);
    assert_eq!(seen().0, (512u64 << 20).to_string());
    let live = policy.live();
    assert_eq!(live[0]["limits"]["memory"], 512u64 << 20, "{live:?}");
    docker(&["rm", "-f", &id]);
}

/// `docker update` cannot raise a container past its user's quota either: the raise is
/// held to quotas (and reservations) as a create is, beside the user's other live
/// containers; one that fits applies and is what the inventory counts from then on.
#[test]
fn docker_update_is_held_to_quotas() {
    let Some((_g, policy)) = engine(
        "docker_update_quota",
        &[],
        "[[quota]]\nothers = true\nmax_memory = \"1G\"\n",
    ) else {
        return;
    };
    let run_with = |memory: &str| {
        docker(&[
            "run",
            "-d",
            "-m",
            memory,
            "--memory-swap",
            memory,
            IMAGE,
            "sleep",
            "600",
        ])
    };
    let a = run_with("512m");
    let b = run_with("256m");
    let seen = || limits(&docker(&["exec", &a, "sh", "-c", SHOW_LIMITS])).0;
    let o = run(&mut docker_cmd(&[
        "update",
        "-m",
        "900m",
        "--memory-swap",
        "900m",
        &a,
    ]));
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(
            "mlenv: refused: update: quota user=0 (others): memory 256M live + 900M requested > 1G"
        ),
        "{err}"
    );
    assert_eq!(
        seen(),
        (512u64 << 20).to_string(),
        "refused update not applied"
    );
    docker(&["update", "-m", "768m", "--memory-swap", "768m", &a]);
    assert_eq!(seen(), (768u64 << 20).to_string());
    let live = policy.live();
    let row = live
        .iter()
        .find(|l| l["container_id"] == a.as_str())
        .unwrap_or_else(|| panic!("{live:?}"));
    assert_eq!(row["limits"]["memory"], 768u64 << 20, "{live:?}");
    // The room is taken now: b cannot grow into it.
    let o = run(&mut docker_cmd(&[
        "update",
        "-m",
        "512m",
        "--memory-swap",
        "512m",
        &b,
    ]));
    assert!(
        stderr(&o).contains("memory 768M live + 512M requested > 1G"),
        "{}",
        stderr(&o)
    );
    docker(&["rm", "-f", &a, &b]);
}

/// `docker exec --privileged` cannot get around the capability allowlist; a plain
/// exec passes.
#[test]
fn docker_exec_is_held_to_the_capability_allowlist() {
    let Some((_g, _policy)) = engine("docker_exec", &[], "") else {
        return;
    };
    let id = docker(&["run", "-d", IMAGE, "sleep", "600"]);
    assert_eq!(docker(&["exec", &id, "echo", "plain"]), "plain");
    let o = run(&mut docker_cmd(&["exec", "--privileged", &id, "true"]));
    // Docker 20.10 prints an exec's runtime error on stdout.
    let err = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(126), "{err}");
    assert!(
        err.contains("mlenv: refused: exec: capabilities ") && err.contains("CAP_SYS_ADMIN"),
        "{err}"
    );
    docker(&["rm", "-f", &id]);
}

/// `docker exec` is held to `[user] root` as the container was: under `remap` an exec
/// that would run as root (the image's user) runs as the container's own user, and
/// writes files as that user.
#[test]
fn docker_exec_as_root_runs_as_the_containers_user_under_remap() {
    let Some((_g, _policy)) = engine(
        "user_exec_remap",
        &[],
        "[user]\nmapping = \"workdir-owner\"\nroot = \"remap\"\nuid = 4321\n",
    ) else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(project.path(), Some(1000), Some(1000)).unwrap();
    let bind = format!("{}:/work", project.path().display());
    let id = docker(&[
        "run", "-d", "-v", &bind, "-w", "/work", IMAGE, "sleep", "600",
    ]);
    let out = docker(&["exec", &id, "sh", "-c", "touch from-exec && id -u && id -g"]);
    assert_eq!(out, "1000\n1000");
    let made = std::fs::metadata(project.path().join("from-exec")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1000, 1000));
    // Asked for by name, root is remapped all the same; another user is kept.
    assert_eq!(docker(&["exec", "-u", "0", &id, "id", "-u"]), "1000");
    assert_eq!(docker(&["exec", "-u", "1234", &id, "id", "-u"]), "1234");
    docker(&["rm", "-f", &id]);
}

/// Under `[user] root = "refuse"`, `docker exec -u 0` is refused with what to pass
/// instead; the container's own user is not.
#[test]
fn docker_exec_as_root_is_refused_under_refuse() {
    let Some((_g, _policy)) = engine("user_exec_refuse", &[], "[user]\nroot = \"refuse\"\n") else {
        return;
    };
    let id = docker(&["run", "-d", "--user", "1000:1000", IMAGE, "sleep", "600"]);
    assert_eq!(docker(&["exec", &id, "id", "-u"]), "1000");
    let o = run(&mut docker_cmd(&["exec", "-u", "0", &id, "true"]));
    // Docker 20.10 prints an exec's runtime error on stdout.
    let err = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(126), "{err}");
    assert!(
        err.contains("mlenv: refused: exec runs as root; pass --user 1000:1000, the container's user ([user] root = \"refuse\")"),
        "{err}"
    );
    docker(&["rm", "-f", &id]);
}
