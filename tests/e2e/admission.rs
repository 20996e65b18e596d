//! Admission through a real dockerd: host thresholds, project quotas, and quotas under
//! concurrent `docker run`s.

use crate::docker::{docker, docker_cmd, engine, race};
use crate::support::*;

#[test]
fn host_threshold_refuses_with_the_measured_value() {
    // No host has 100T available: the check fails wherever this runs.
    let Some((_g, policy)) = engine(
        "host_threshold",
        &[],
        "[admission]\nmin_available_memory = \"100T\"\n",
    ) else {
        return;
    };
    let o = run(&mut docker_cmd(&["run", "--rm", IMAGE, "true"]));
    assert_eq!(o.status.code(), Some(125));
    let err = stderr(&o);
    let clause = err
        .split("OCI runtime create failed: mlenv: refused: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{err}"));
    assert!(clause.starts_with("host memory available "), "{err}");
    assert!(
        clause.contains(" < 100T ([admission] min_available_memory)"),
        "{err}"
    );
    let h = policy.history();
    assert_eq!(h[0]["outcome"], "refused");
    let explained = policy.cli(&["explain", h[0]["container_id"].as_str().unwrap()]);
    assert!(
        explained.contains("FAIL  host memory available"),
        "{explained}"
    );
    assert!(
        explained.contains("ok    host memory "),
        "passed checks are listed too: {explained}"
    );
}

#[test]
fn project_quota_refuses_the_third_and_frees_on_rm() {
    let Some((_g, policy)) = engine(
        "project_quota",
        &[],
        "[[quota]]\nproject = \"q2\"\nmax_containers = 2\n",
    ) else {
        return;
    };
    let start = || {
        run(&mut docker_cmd(&[
            "run",
            "-d",
            "-e",
            "MLENV_PROJECT=q2",
            IMAGE,
            "sleep",
            "600",
        ]))
    };
    let a = start();
    let b = start();
    assert!(
        a.status.success() && b.status.success(),
        "{} {}",
        stderr(&a),
        stderr(&b)
    );
    let c = start();
    assert_eq!(c.status.code(), Some(125));
    assert!(
        stderr(&c).contains(
            "OCI runtime create failed: mlenv: refused: quota project=q2: 2 of 2 containers live"
        ),
        "{}",
        stderr(&c)
    );
    // Other projects are not held to it.
    let other = docker(&[
        "run",
        "--rm",
        "-e",
        "MLENV_PROJECT=other",
        IMAGE,
        "echo",
        "ok",
    ]);
    assert_eq!(other, "ok");
    let a = stdout(&a).trim().to_string();
    docker(&["rm", "-f", &a]);
    let d = start();
    assert!(
        d.status.success(),
        "a slot is free after rm -f: {}",
        stderr(&d)
    );
    assert_eq!(policy.live().len(), 2);
    let b = stdout(&b).trim().to_string();
    let d = stdout(&d).trim().to_string();
    docker(&["rm", "-f", &b, &d]);
    // The refused one left no container; rm -f of a created-but-failed one is harmless.
    let _ = run(&mut docker_cmd(&["container", "prune", "-f"]));
    assert!(policy.live().is_empty());
}

#[test]
fn twenty_racing_runs_under_a_quota_of_five() {
    let Some((_g, policy)) = engine(
        "quota_race",
        &[],
        "[[quota]]\nproject = \"race\"\nmax_containers = 5\n",
    ) else {
        return;
    };
    let names: Vec<String> = (0..20).map(|i| format!("mlenv-race-{i}")).collect();
    let outputs = race(&names, "MLENV_PROJECT=race");
    let admitted = outputs.iter().filter(|o| o.status.success()).count();
    let refused: Vec<String> = outputs
        .iter()
        .filter(|o| !o.status.success())
        .map(stderr)
        .collect();
    let running = docker(&["ps", "-q", "--filter", "name=mlenv-race-"]);
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    let _ = run(&mut docker_cmd(&rm));

    assert_eq!(
        admitted, 5,
        "exactly the quota is admitted; refusals: {refused:?}"
    );
    assert_eq!(running.lines().count(), 5, "five running");
    assert_eq!(refused.len(), 15);
    for err in &refused {
        assert!(
            err.contains("mlenv: refused: quota project=race: 5 of 5 containers live"),
            "{err}"
        );
    }
    let h = policy.history();
    assert_eq!(h.iter().filter(|r| r["outcome"] == "admitted").count(), 5);
    assert_eq!(h.iter().filter(|r| r["outcome"] == "refused").count(), 15);
    assert!(policy.live().is_empty(), "all ended after rm -f");
}
