//! mlenv-runtime called the way engines call runc, on a real bundle.

use crate::support::*;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// A bundle over the shared busybox rootfs (read-only), from `runc spec`.
pub(crate) fn bundle(dir: &Path, args: &[&str], resources: Value) {
    fs::create_dir_all(dir).unwrap();
    ok(Command::new("runc").args(["spec", "--bundle"]).arg(dir));
    let path = dir.join("config.json");
    let mut spec: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    spec["root"] = json!({"path": rootfs(), "readonly": true});
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["linux"]["resources"]
        .as_object_mut()
        .unwrap()
        .extend(resources.as_object().unwrap().clone());
    fs::write(&path, serde_json::to_string(&spec).unwrap()).unwrap();
}

pub(crate) struct Rt<'a> {
    policy: &'a Policy,
    state: std::path::PathBuf,
    pub(crate) log: std::path::PathBuf,
}

impl<'a> Rt<'a> {
    pub(crate) fn new(policy: &'a Policy) -> Rt<'a> {
        Rt {
            policy,
            state: policy.dir.path().join("state"),
            log: policy.dir.path().join("log.json"),
        }
    }

    /// mlenv-runtime with the global flags containerd's shim passes.
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(runtime());
        c.env("MLENV_CONFIG", &self.policy.main)
            .arg("--root")
            .arg(&self.state)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"])
            .args(args);
        c
    }

    /// `create --bundle B --pid-file P ID` as an engine calls it, every stream
    /// closed (the container's init would hold a pipe open).
    pub(crate) fn create_cmd(&self, bundle: &Path, pid_file: &Path, id: &str) -> Command {
        let mut c = self.cmd(&[
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// [`Rt::create_cmd`], which must succeed.
    pub(crate) fn create_detached(&self, bundle: &Path, pid_file: &Path, id: &str) {
        ok(&mut self.create_cmd(bundle, pid_file, id));
    }

    pub(crate) fn status(&self, id: &str) -> Option<String> {
        let o = run(&mut self.cmd(&["state", id]));
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        Some(v["status"].as_str().unwrap().to_string())
    }

    /// Polls runc's state until the container is stopped, 10 s at most.
    pub(crate) fn wait_stopped(&self, id: &str) -> bool {
        for _ in 0..200 {
            if self.status(id).as_deref() == Some("stopped") {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    pub(crate) fn last_log_error(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap();
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("\"level\":\"error\""))
            .unwrap_or_else(|| panic!("no error line in {text}"));
        let v: Value = serde_json::from_str(line).unwrap();
        v["msg"].as_str().unwrap().to_string()
    }
}

#[test]
fn runc_run_gets_default_limits() {
    if !require("runc_run_gets_default_limits", &["runc"], &[]) {
        return;
    }
    let policy = Policy::write(
        None,
        "[limits]\ndefault_memory = \"96M\"\ndefault_cpus = 0.5\ndefault_pids = 42\n",
    );
    let b = policy.dir.path().join("bundle");
    bundle(&b, &["sh", "-c", SHOW_LIMITS], json!({}));
    let rt = Rt::new(&policy);
    let out = ok(rt
        .cmd(&["run", "--bundle", b.to_str().unwrap(), "e2e-run"])
        .stdin(Stdio::null()));
    assert_eq!(
        limits(&out),
        ((96u64 << 20).to_string(), "50000".into(), "42".into())
    );
    let h = policy.history();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["container_id"], "e2e-run");
    assert_eq!(h[0]["outcome"], "admitted");
    assert_eq!(h[0]["effective"]["memory"], 96u64 << 20);
    assert!(
        policy.live().is_empty(),
        "a foreground run ends with its container"
    );
}

#[test]
fn runc_lifecycle_and_passthrough_with_a_broken_policy() {
    if !require("runc_lifecycle", &["runc"], &[]) {
        return;
    }
    let policy = Policy::write(None, "[limits]\nmax_pids = 500\n");
    let b = policy.dir.path().join("bundle");
    bundle(&b, &["sleep", "600"], json!({"pids": {"limit": 100}}));
    let rt = Rt::new(&policy);
    let id = "e2e-life";
    let pid_file = policy.dir.path().join("init.pid");
    rt.create_detached(&b, &pid_file, id);
    assert_eq!(rt.status(id).as_deref(), Some("created"));
    assert_eq!(policy.live().len(), 1);
    assert!(pid_file.exists());

    // Every other subcommand passes through, even with a policy that does not parse.
    fs::write(&policy.main, "this is [not toml").unwrap();
    ok(&mut rt.cmd(&["start", id]));
    assert_eq!(rt.status(id).as_deref(), Some("running"));
    ok(&mut rt.cmd(&["ps", id]));
    ok(&mut rt.cmd(&["pause", id]));
    assert_eq!(rt.status(id).as_deref(), Some("paused"));
    ok(&mut rt.cmd(&["resume", id]));
    ok(&mut rt.cmd(&["kill", id, "KILL"]));
    assert!(rt.wait_stopped(id), "container did not stop after kill");

    // A new create fails closed, saying how to check the policy.
    let b2 = policy.dir.path().join("bundle2");
    bundle(&b2, &["true"], json!({}));
    let o = run(rt
        .cmd(&["create", "--bundle", b2.to_str().unwrap(), "e2e-other"])
        .stdin(Stdio::null()));
    assert_eq!(o.status.code(), Some(1));
    let msg = rt.last_log_error();
    assert!(msg.starts_with("mlenv: policy invalid: "), "{msg}");
    assert!(msg.contains("mlenv.toml:1"), "{msg}");
    assert!(msg.ends_with("check with `mlenv policy check`"), "{msg}");
    assert!(stderr(&o).contains(&msg), "stderr carries the same text");

    // Delete still works; the inventory (named leniently) marks the container ended.
    fs::write(
        &policy.main,
        format!("[inventory]\npath = {:?}\nbogus = 1\n", policy.inventory),
    )
    .unwrap();
    ok(&mut rt.cmd(&["delete", id]));
    assert_eq!(rt.status(id), None);
    fs::write(
        &policy.main,
        format!("[inventory]\npath = {:?}\n", policy.inventory),
    )
    .unwrap();
    assert!(policy.live().is_empty());
}

#[test]
fn runc_refusal_reaches_log_and_stderr() {
    if !require("runc_refusal", &["runc"], &[]) {
        return;
    }
    let policy = Policy::write(None, "[limits]\nmax_pids = 10\nmax_memory = \"64M\"\n");
    let b = policy.dir.path().join("bundle");
    bundle(
        &b,
        &["true"],
        json!({"pids": {"limit": 100}, "memory": {"limit": 1073741824}}),
    );
    let before = fs::read(b.join("config.json")).unwrap();
    let rt = Rt::new(&policy);
    let o = run(rt
        .cmd(&["create", "--bundle", b.to_str().unwrap(), "e2e-refused"])
        .stdin(Stdio::null()));
    assert_eq!(o.status.code(), Some(1));
    let want = "mlenv: refused: memory limit 1G requested > 64M allowed ([limits] max_memory); \
                pids limit 100 requested > 10 allowed ([limits] max_pids)";
    assert_eq!(rt.last_log_error(), want);
    assert_eq!(stderr(&o).trim(), want);
    assert_eq!(
        fs::read(b.join("config.json")).unwrap(),
        before,
        "a refused spec is left as it was"
    );
    assert_eq!(rt.status("e2e-refused"), None, "nothing was created");
    let h = policy.history();
    assert_eq!(h[0]["outcome"], "refused");
    assert_eq!(h[0]["reason"], want.trim_start_matches("mlenv: refused: "));
}

#[test]
fn podman_style_call_without_log_flag() {
    if !require("podman_style", &["runc"], &[]) {
        return;
    }
    let policy = Policy::write(None, "[limits]\nmax_pids = 10\n");
    let b = policy.dir.path().join("bundle");
    bundle(&b, &["true"], json!({"pids": {"limit": 100}}));
    let o = run(Command::new(runtime())
        .env("MLENV_CONFIG", &policy.main)
        .current_dir(&b)
        .args(["create", "--pid-file", "pidfile", "e2e-podman"])
        .stdin(Stdio::null()));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "mlenv: refused: pids limit 100 requested > 10 allowed ([limits] max_pids)"
    );
}

/// A container whose process dies without a delete (a killed engine or shim) stops
/// counting: the next create that would be refused checks, and admits.
#[test]
fn killed_container_stops_counting() {
    if !require("killed_container", &["runc"], &[]) {
        return;
    }
    let policy = Policy::write(None, "[[quota]]\nproject = \"crash\"\nmax_containers = 1\n");
    let rt = Rt::new(&policy);
    let create = |name: &str| {
        let b = policy.dir.path().join(name);
        bundle(&b, &["sleep", "600"], json!({}));
        let cfg = b.join("config.json");
        let mut spec: Value = serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("MLENV_PROJECT=crash"));
        fs::write(&cfg, spec.to_string()).unwrap();
        let pid_file = policy.dir.path().join(format!("{name}.pid"));
        // stderr to a file: the container's init inherits it and would hold a pipe open.
        let err_file = policy.dir.path().join(format!("{name}.stderr"));
        let status = rt
            .create_cmd(&b, &pid_file, name)
            .stderr(fs::File::create(&err_file).unwrap())
            .status()
            .unwrap();
        (status, fs::read_to_string(&err_file).unwrap(), pid_file)
    };
    let (first, err, pid_file) = create("crash-a");
    assert!(first.success(), "{err}");
    let (second, err, _) = create("crash-b");
    assert_eq!(second.code(), Some(1));
    assert_eq!(
        err.trim(),
        "mlenv: refused: quota project=crash: 1 of 1 containers live"
    );

    let pid = fs::read_to_string(&pid_file).unwrap();
    ok(Command::new("kill").args(["-9", pid.trim()]));
    assert!(rt.wait_stopped("crash-a"), "init process did not die");

    let (third, err, _) = create("crash-c");
    assert!(third.success(), "{err}");
    let live: Vec<String> = policy
        .live()
        .iter()
        .map(|l| l["container_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(live, ["crash-c"]);
    for id in ["crash-a", "crash-c"] {
        ok(&mut rt.cmd(&["delete", "--force", id]));
    }
    assert!(policy.live().is_empty());
}

/// A container mlenv admitted but runc then failed to create (a command not in the
/// image, the commonest case) holds nothing: mlenv-runtime handed over by exec, so the
/// next capacity check that would refuse finds its creator gone and no runtime state,
/// ends it, and admits; the engine's delete after it still passes.
#[test]
fn a_create_the_runtime_fails_holds_nothing() {
    if !require("runc_create_fails", &["runc"], &[]) {
        return;
    }
    let policy = Policy::write(None, "[[quota]]\nproject = \"one\"\nmax_containers = 1\n");
    let b = policy.dir.path().join("bundle");
    bundle(&b, &["no-such-command"], json!({}));
    let path = b.join("config.json");
    let mut spec: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("MLENV_PROJECT=one".into());
    fs::write(&path, spec.to_string()).unwrap();
    let rt = Rt::new(&policy);
    let pid_file = policy.dir.path().join("init.pid");
    let o = run(&mut rt.create_cmd(&b, &pid_file, "not-created"));
    assert!(!o.status.success());
    // runc's own error, as without mlenv.
    let log = fs::read_to_string(&rt.log).unwrap();
    assert!(log.contains("no-such-command"), "{log}");
    ok(&mut rt.cmd(&["delete", "--force", "not-created"]));

    // The project's one container: admitted, the failed one ended on the way.
    spec["process"]["args"] = json!(["sleep", "600"]);
    fs::write(&path, spec.to_string()).unwrap();
    rt.create_detached(&b, &pid_file, "created");
    let db = rusqlite::Connection::open(&policy.inventory).unwrap();
    let rows: Vec<(String, String, Option<String>)> = db
        .prepare(
            "SELECT c.container_id, d.decision, c.end_reason
             FROM containers c JOIN decisions d ON d.id = c.decision_id ORDER BY c.id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            (
                "not-created".to_string(),
                "admitted".to_string(),
                Some("reconciled: no runtime state".to_string())
            ),
            ("created".to_string(), "admitted".to_string(), None),
        ]
    );
    ok(&mut rt.cmd(&["delete", "--force", "created"]));
    assert!(policy.live().is_empty());
}

/// With a runtime whose state liveness does not read (here runc under another name),
/// mlenv-runtime waits for the create: one the runtime fails is ended at once, and
/// says why in the inventory; the engine's delete after it still passes.
#[test]
fn a_create_a_waited_runtime_fails_is_ended_at_once() {
    if !require("runc_create_fails_waited", &["runc"], &[]) {
        return;
    }
    let runc = mlenv::lowlevel::locate_in(None, mlenv::lowlevel::SEARCH_DIRS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-runtime");
    std::os::unix::fs::symlink(&runc, &other).unwrap();
    let policy = Policy::write(None, &format!("[runtime]\npath = {other:?}\n"));
    let b = policy.dir.path().join("bundle");
    bundle(&b, &["no-such-command"], json!({}));
    let rt = Rt::new(&policy);
    let id = "e2e-not-created";
    let status = rt
        .create_cmd(&b, &policy.dir.path().join("init.pid"), id)
        .status()
        .unwrap();
    assert!(!status.success());
    let db = rusqlite::Connection::open(&policy.inventory).unwrap();
    let (decision, reason): (String, String) = db
        .query_row(
            "SELECT d.decision, c.end_reason FROM containers c JOIN decisions d ON d.id = c.decision_id
             WHERE c.container_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (decision.as_str(), reason.as_str()),
        ("admitted", "not created: the runtime failed")
    );
    ok(&mut rt.cmd(&["delete", "--force", id]));
    assert!(policy.live().is_empty(), "{:?}", policy.live());

    // One it creates has its init process recorded as the create returns.
    let b = policy.dir.path().join("bundle-sleeps");
    bundle(&b, &["sleep", "600"], json!({}));
    let pid_file = policy.dir.path().join("init.pid");
    rt.create_detached(&b, &pid_file, "e2e-waited");
    let pid: i64 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let init: Option<i64> = db
        .query_row(
            "SELECT init_pid FROM containers WHERE container_id = 'e2e-waited' AND ended_ms IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(init, Some(pid));
    ok(&mut rt.cmd(&["delete", "--force", "e2e-waited"]));
}

/// The container's init process is recorded from runc's state by the first liveness
/// check (`mlenv ps` makes one), and is what `mlenv ps` shows. By default mlenv-runtime
/// adds no hook: the spec's hooks are as the engine wrote them, and the delete
/// through mlenv ends the container. With `[runtime] hook = true`
/// it adds mlenv-hook after the spec's own hooks at poststop (run by runc's delete,
/// even one that bypasses mlenv), which ends the container.
#[test]
fn the_init_process_is_recorded_and_the_hook_ends_the_container() {
    if !require("runc_hook", &["runc"], &[]) {
        return;
    }
    let end_reason = |policy: &Policy, id: &str| -> String {
        let db = rusqlite::Connection::open(&policy.inventory).unwrap();
        db.query_row(
            "SELECT end_reason FROM containers WHERE container_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    // An engine's own hooks stay, first.
    let engine_hooks = json!({
        "createRuntime": [{"path": "/bin/true", "args": ["true"]}],
        "poststop": [{"path": "/bin/true", "args": ["true", "engine"]}],
    });
    for (body, id) in [
        ("", "e2e-plain"),
        ("[runtime]\nhook = true\n", "e2e-hooked"),
    ] {
        let policy = Policy::write(None, body);
        let b = policy.dir.path().join("bundle");
        bundle(&b, &["sleep", "600"], json!({}));
        let path = b.join("config.json");
        let mut spec: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        spec["hooks"] = engine_hooks.clone();
        fs::write(&path, spec.to_string()).unwrap();
        let rt = Rt::new(&policy);
        let pid_file = policy.dir.path().join("init.pid");
        rt.create_detached(&b, &pid_file, id);
        let written: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let pid: u64 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let live = policy.live();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0]["pid"], pid, "{live:?}");
        if body.is_empty() {
            assert_eq!(
                written["hooks"], engine_hooks,
                "no hook of mlenv's by default"
            );
            ok(&mut rt.cmd(&["delete", "--force", id]));
            assert_eq!(end_reason(&policy, id), "deleted");
            continue;
        }
        // Nothing of mlenv's runs inside runc's create.
        assert_eq!(
            written["hooks"]["createRuntime"],
            engine_hooks["createRuntime"]
        );
        let poststop = written["hooks"]["poststop"].as_array().unwrap();
        assert_eq!(poststop[0]["args"], json!(["true", "engine"]));
        assert_eq!(
            poststop[1]["args"],
            json!(["mlenv-hook", "poststop", "--recorded"])
        );
        // Deleted by runc itself, not through mlenv: the poststop hook ends it.
        ok(Command::new("runc")
            .arg("--root")
            .arg(policy.dir.path().join("state"))
            .args(["delete", "--force", id]));
        assert_eq!(end_reason(&policy, id), "stopped (poststop hook)");
    }
}
