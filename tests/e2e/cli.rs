//! The admin CLI and the runtime's bookkeeping, without an engine: `[runtime] path`
//! points at a stand-in that exits 0, so these run anywhere, as any user.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn mlenv(policy: &std::path::Path, args: &[&str]) -> std::process::Output {
    run(Command::new(cli()).env("MLENV_CONFIG", policy).args(args))
}

#[test]
fn policy_check_reports_file_line_and_key() {
    let p = Policy::write(None, "[limits]\ndefault_memory = \"1G\"\n");
    let o = mlenv(&p.main, &["policy", "check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("policy ok: {}", p.main.display())),
        "{out}"
    );
    assert!(
        out.contains("default_memory = \"1G\""),
        "effective policy printed: {out}"
    );

    // A drop-in with a typo: the full set fails, naming the drop-in.
    let conf_d = p.main.parent().unwrap().join("conf.d");
    fs::create_dir_all(&conf_d).unwrap();
    fs::write(
        conf_d.join("50-x.toml"),
        "# comment\n[limits]\nmax_memroy = \"2G\"\n",
    )
    .unwrap();
    let o = mlenv(&p.main, &["policy", "check"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("conf.d/50-x.toml:3: limits.max_memroy: unknown field `max_memroy`"),
        "{err}"
    );

    // One file alone: the drop-in before it is installed.
    let o = mlenv(
        &p.main,
        &[
            "policy",
            "check",
            conf_d.join("50-x.toml").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    fs::write(conf_d.join("50-x.toml"), "[limits]\nmax_memory = \"2G\"\n").unwrap();
    let o = mlenv(
        &p.main,
        &[
            "policy",
            "check",
            conf_d.join("50-x.toml").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // And the set again, now valid.
    assert!(mlenv(&p.main, &["policy", "check"]).status.success());
}

#[test]
fn cli_errors_say_what_to_do() {
    let p = Policy::write(None, "");
    let o = mlenv(&p.main, &["ps"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no inventory at"), "{}", stderr(&o));
    let o = mlenv(&p.main, &["history", "--since", "soon"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid --since \"soon\": write a duration like 90s"),
        "{}",
        stderr(&o)
    );
}

/// A policy whose low-level runtime is a stand-in that exits 0 (no container is
/// made): `rest` goes after `[runtime] path`, so it may add `[runtime]` keys first.
fn stand_in_policy(rest: &str) -> Policy {
    let p = Policy::write(None, "");
    let stand_in = p.dir.path().join("runtime");
    fs::write(&stand_in, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&stand_in, fs::Permissions::from_mode(0o755)).unwrap();
    let body = fs::read_to_string(&p.main).unwrap();
    fs::write(
        &p.main,
        format!("{body}[runtime]\npath = {stand_in:?}\n{rest}"),
    )
    .unwrap();
    p
}

/// Twenty creates at once on one inventory: each waits its turn (busy timeout), none
/// fails, every decision is recorded. (Reservations are off: the fixture asks for
/// 1.5 CPUs each.)
#[test]
fn concurrent_creates_all_recorded() {
    let p = stand_in_policy(
        "[limits]\nover_limit = \"clamp\"\nmax_pids = 100\n\
         [admission]\nmemory_overcommit = false\ncpu_overcommit = false\n",
    );
    // The captured spec asks for a GPU (MLENV_GPUS=1); this test is about the
    // inventory, not GPUs.
    let spec = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/specs/docker-20.10-run.json"
    ))
    .unwrap()
    .replace("\"MLENV_GPUS=1\"", "\"MLENV_GPUS=0\"");
    assert!(spec.contains("MLENV_GPUS=0"));
    let children: Vec<_> = (0..20)
        .map(|i| {
            let bundle = p.dir.path().join(format!("b{i}"));
            fs::create_dir(&bundle).unwrap();
            fs::write(bundle.join("config.json"), &spec).unwrap();
            Command::new(runtime())
                .env("MLENV_CONFIG", &p.main)
                .args(["--root", "/run/e2e-none", "create", "--bundle"])
                .arg(&bundle)
                .arg(format!("c{i}"))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let h = p.history();
    assert_eq!(h.len(), 20);
    assert!(h.iter().all(|r| r["outcome"] == "admitted"
        && r["effective"]["pids"] == 100
        && r["requested"]["pids"] == 200));
    // The stand-in created nothing and has exited: `mlenv ps` checks each against the
    // runtime's state, finds none, and drops them.
    assert!(p.live().is_empty());
    let spec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(p.dir.path().join("b3/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        spec["linux"]["resources"]["pids"]["limit"], 100,
        "docker's 200 clamped"
    );
}

/// MPS settings are checked twice: impossible in themselves, and against the GPUs'
/// memory where NVML answers (here the test NVML library, one 80G GPU).
#[test]
fn policy_check_rejects_impossible_mps_settings() {
    let p = Policy::write(None, "[mps]\ngpus = \"all\"\nmax_threads = 150\n");
    let o = run(Command::new(cli())
        .env("MLENV_CONFIG", &p.main)
        .args(["policy", "check"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("[mps] max_threads = 150: a thread percentage is from 1 to 100"),
        "{}",
        stderr(&o)
    );
    let lib = fake_nvml(
        &p.dir.path().join("nvml"),
        r#"{"gpus": [{"uuid": "GPU-0", "minor": 0}]}"#,
    );
    let body = fs::read_to_string(&p.main).unwrap().replace(
        "max_threads = 150",
        &format!("max_memory = \"96G\"\n[gpu]\nnvml_library = {:?}", lib),
    );
    fs::write(&p.main, body).unwrap();
    let o = run(Command::new(cli())
        .env("MLENV_CONFIG", &p.main)
        .args(["policy", "check"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("[mps] max_memory = 96G is above the GPU's memory 80G"),
        "{}",
        stderr(&o)
    );
}

/// `mlenv gpus` lists what NVML reports, from the policy's library or the one given
/// (mlenv-runtime reads the same through mlenv-nvml).
#[test]
fn gpus_lists_what_nvml_reports() {
    let p = Policy::write(None, "");
    let lib = fake_nvml(
        &p.dir.path().join("nvml"),
        r#"{"gpus": [{"uuid": "GPU-a", "minor": 0, "memory_used": 1073741824},
                     {"uuid": "GPU-b", "minor": 5, "mig_mode": 1}]}"#,
    );
    let table = mlenv(&p.main, &["gpus", "--nvml-library", lib.to_str().unwrap()]);
    assert!(table.status.success(), "{}", stderr(&table));
    let out = stdout(&table);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["INDEX", "UUID", "NAME"], "{out}");
    assert_eq!((rows[1][0], rows[1][1]), ("0", "GPU-a"), "{out}");
    assert!(out.lines().nth(1).unwrap().contains(" 1G of 80G "), "{out}");
    assert_eq!(
        (rows[2][1], *rows[2].last().unwrap()),
        ("GPU-b", "on"),
        "{out}"
    );

    // From the policy, as JSON.
    let body = fs::read_to_string(&p.main).unwrap();
    fs::write(&p.main, format!("{body}[gpu]\nnvml_library = {lib:?}\n")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&mlenv(&p.main, &["gpus", "--json"]))).unwrap();
    assert_eq!(json[1]["minor"], 5);
    assert_eq!(json[1]["mig"], true);

    let o = mlenv(
        &p.main,
        &["gpus", "--nvml-library", "/nonexistent/libnvidia-ml.so.1"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("mlenv: cannot load NVML from /nonexistent/libnvidia-ml.so.1"),
        "{}",
        stderr(&o)
    );
}

/// `mlenv gc` prunes past decisions on demand. The admitted container (a stand-in
/// runtime leaves no state, so gc ends it first) ended at the cutoff, not before it:
/// its record stays.
#[test]
fn gc_prunes_on_demand() {
    let p = stand_in_policy("hook = false\n[limits]\nmax_memory = \"1G\"\n");
    let create = |id: &str, memory: u64| {
        let bundle = p.dir.path().join(id);
        fs::create_dir(&bundle).unwrap();
        fs::write(
            bundle.join("config.json"),
            format!(r#"{{"process": {{"user": {{"uid": 0, "gid": 0}}}}, "linux": {{"resources": {{"memory": {{"limit": {memory}}}}}}}}}"#),
        )
        .unwrap();
        run(Command::new(runtime())
            .env("MLENV_CONFIG", &p.main)
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg(id))
    };
    assert!(!create("refused-one", 4 << 30).status.success());
    assert!(create("live-one", 1 << 30).status.success());
    assert_eq!(p.history().len(), 2);
    let out = p.cli(&["gc", "--older-than", "0s", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pruned_decisions"], 1, "{out}");
    let h = p.history();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["container_id"], "live-one");
}
