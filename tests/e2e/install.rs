//! `mlenv install docker` on a daemon.json that carries other keys, with the real
//! dockerd of tests/e2e-env.sh reloading it and then running `--runtime=NAME`.

use crate::docker::{docker, engine};
use crate::support::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Puts the engine's daemon.json back (and dockerd's view of it) when the test ends.
struct Restore {
    path: PathBuf,
    original: String,
    pid_file: PathBuf,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.original);
        let _ = fs::remove_file(mlenv::install::backup_path(&self.path));
        if let Ok(pid) = fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").args(["-HUP", pid.trim()]).status();
        }
    }
}

#[test]
fn install_docker_keeps_other_keys_and_dockerd_runs_it() {
    let Some((_g, _policy)) = engine("install_docker", &[], "") else {
        return;
    };
    let run_dir = PathBuf::from(std::env::var("MLENV_E2E_POLICY").unwrap())
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let daemon = run_dir.join("daemon.json");
    let pid_file = run_dir.join("docker.pid");
    let original = fs::read_to_string(&daemon).unwrap();
    let _restore = Restore {
        path: daemon.clone(),
        original: original.clone(),
        pid_file: pid_file.clone(),
    };
    // As admins keep it: keys of their own around ours, in their order.
    let mut v: serde_json::Map<String, Value> = serde_json::Map::new();
    v.insert("log-level".into(), "info".into());
    let engine_keys: serde_json::Map<String, Value> = serde_json::from_str(&original).unwrap();
    v.extend(engine_keys);
    v.insert("max-concurrent-downloads".into(), 3.into());
    let before = serde_json::to_string_pretty(&v).unwrap();
    fs::write(&daemon, &before).unwrap();

    let install = |extra: &[&str]| {
        let mut c = Command::new(cli());
        c.args([
            "install",
            "docker",
            "--name",
            "mlenv-installed",
            "--runtime",
            runtime(),
        ])
        .arg("--config")
        .arg(&daemon)
        .arg("--pid-file")
        .arg(&pid_file)
        .args(extra);
        ok(&mut c)
    };
    // A dry run shows and writes nothing.
    let dry = install(&["--dry-run"]);
    assert!(dry.contains("\"mlenv-installed\""), "{dry}");
    assert!(dry.ends_with("dry run: nothing written\n"), "{dry}");
    assert_eq!(fs::read_to_string(&daemon).unwrap(), before);

    let out = install(&[]);
    assert!(
        out.contains(&format!(
            "wrote {0} (previous content in {0}.mlenv-backup)",
            daemon.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("told to reload its configuration (SIGHUP)"),
        "{out}"
    );
    let after: serde_json::Map<String, Value> =
        serde_json::from_str(&fs::read_to_string(&daemon).unwrap()).unwrap();
    let keys: Vec<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "log-level",
            "runtimes",
            "default-runtime",
            "max-concurrent-downloads"
        ]
    );
    assert_eq!(after["runtimes"]["mlenv-installed"]["path"], runtime());
    assert_eq!(
        after["runtimes"]["mlenv"], v["runtimes"]["mlenv"],
        "the other runtime kept"
    );
    assert_eq!(
        fs::read_to_string(mlenv::install::backup_path(&daemon)).unwrap(),
        before
    );
    assert_eq!(install(&[]), "already installed: nothing to change\n");

    // dockerd reloads on SIGHUP in its own time: wait until it lists the runtime.
    let listed = (0..100).any(|_| {
        let info = docker(&["info", "--format", "{{json .Runtimes}}"]);
        info.contains("mlenv-installed") || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        }
    });
    assert!(listed, "dockerd did not pick up the new runtime");
    let out = docker(&[
        "run",
        "--rm",
        "--runtime=mlenv-installed",
        IMAGE,
        "echo",
        "through the installed runtime",
    ]);
    assert_eq!(out, "through the installed runtime");

    let mut c = Command::new(cli());
    c.args(["uninstall", "docker", "--name", "mlenv-installed"])
        .arg("--config")
        .arg(&daemon)
        .arg("--pid-file")
        .arg(&pid_file);
    ok(&mut c);
    let back: Value = serde_json::from_str(&fs::read_to_string(&daemon).unwrap()).unwrap();
    assert_eq!(back, serde_json::from_str::<Value>(&before).unwrap());
}

/// containerd's own parser reads the edited config: the runtime is there with mlenv
/// as its binary, the rest of the admin's config as it was.
#[test]
fn install_containerd_config_is_read_by_containerd() {
    if !require("install_containerd", &["containerd"], &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        "# ours\nversion = 2\noom_score = -999\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"example/pause:9\"\n",
    )
    .unwrap();
    let mut c = Command::new(cli());
    c.args(["install", "containerd", "--default", "--runtime", runtime()])
        .arg("--config")
        .arg(&config);
    let out = ok(&mut c);
    assert!(out.contains("restart containerd"), "{out}");
    let dump = ok(Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"]));
    assert!(
        dump.contains(&format!("BinaryName = \"{}\"", runtime())),
        "{dump}"
    );
    assert!(dump.contains("default_runtime_name = \"mlenv\""), "{dump}");
    assert!(
        dump.contains("sandbox_image = \"example/pause:9\""),
        "{dump}"
    );
    assert!(dump.contains("oom_score = -999"), "{dump}");
}
