//! Docker: `runtimes.<name>.path` in /etc/docker/daemon.json, and with `--default`
//! `default-runtime`. Every other key is kept, in its order (Docker's own tools have
//! been known to re-sort or drop them); dockerd re-reads both keys on SIGHUP.

use super::{InstallError, Plan};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";
pub const PID_FILE: &str = "/var/run/docker.pid";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    /// The runtime's name in Docker (`docker run --runtime=NAME`).
    pub name: String,
    pub runtime: PathBuf,
    /// Make it dockerd's default runtime.
    pub default: bool,
}

/// The new daemon.json text for an install (`install = true`) or uninstall, or the
/// same text when nothing changes.
pub fn edit(
    path: &Path,
    before: Option<&str>,
    o: &Options,
    install: bool,
) -> Result<Option<String>, InstallError> {
    let text = before.unwrap_or("");
    if text.trim().is_empty() && !install {
        return Ok(before.map(str::to_string));
    }
    let mut root: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(text).map_err(|e| InstallError::Parse {
            path: path.to_path_buf(),
            format: "JSON",
            message: e.to_string(),
        })?
    };
    let shape = |message: &str| InstallError::Shape {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let obj = root
        .as_object_mut()
        .ok_or_else(|| shape("not a JSON object"))?;
    let before_value = obj.clone();
    if install {
        let runtimes = obj
            .entry("runtimes")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| shape("\"runtimes\" is not an object"))?;
        let entry = json!({ "path": o.runtime });
        // Keep other keys an admin put in our entry (runtimeArgs); set the path.
        match runtimes.get_mut(&o.name).and_then(Value::as_object_mut) {
            Some(existing) => {
                existing.insert("path".into(), entry["path"].clone());
            }
            None => {
                runtimes.insert(o.name.clone(), entry);
            }
        }
        if o.default {
            obj.insert("default-runtime".into(), Value::String(o.name.clone()));
        }
    } else {
        if let Some(runtimes) = obj.get_mut("runtimes").and_then(Value::as_object_mut) {
            runtimes.remove(&o.name);
            if runtimes.is_empty() {
                obj.remove("runtimes");
            }
        }
        if obj.get("default-runtime").and_then(Value::as_str) == Some(o.name.as_str()) {
            obj.remove("default-runtime");
        }
    }
    if *obj == before_value {
        return Ok(before.map(str::to_string));
    }
    let mut out = serde_json::to_string_pretty(&root).expect("a JSON tree always serializes");
    out.push('\n');
    Ok(Some(out))
}

/// The plan for daemon.json and what dockerd needs to pick it up.
pub fn plan(o: &Options, install: bool) -> Result<Plan, InstallError> {
    let before = super::read(&o.config)?;
    let after = edit(&o.config, before.as_deref(), o, install)?;
    let mut notes = Vec::new();
    let removing_default = !install
        && before
            .as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .is_some_and(|v| {
                v.get("default-runtime").and_then(Value::as_str) == Some(o.name.as_str())
            });
    if removing_default {
        notes.push(
            "dockerd keeps a removed default-runtime until it restarts: restart dockerd to go back to runc as the default".into(),
        );
    }
    Ok(Plan {
        changes: vec![super::Change {
            path: o.config.clone(),
            before,
            after,
        }],
        notes,
    })
}

/// Sends SIGHUP to the dockerd of `pid_file`, which re-reads `runtimes` and
/// `default-runtime`. Says what happened.
pub fn reload(pid_file: &Path) -> String {
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    let Some(pid) = pid else {
        return format!(
            "dockerd not running ({} not found): it reads the file when it starts",
            pid_file.display()
        );
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP) {
        Ok(()) => format!("dockerd (pid {pid}) told to reload its configuration (SIGHUP)"),
        Err(e) => format!(
            "could not signal dockerd (pid {pid} from {}): {e}; run `kill -HUP $(pidof dockerd)` or restart it",
            pid_file.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(default: bool) -> Options {
        Options {
            config: PathBuf::from("/etc/docker/daemon.json"),
            name: "mlenv".into(),
            runtime: PathBuf::from("/usr/bin/mlenv-runtime"),
            default,
        }
    }

    fn run(before: Option<&str>, default: bool, install: bool) -> Option<String> {
        edit(
            Path::new("/etc/docker/daemon.json"),
            before,
            &o(default),
            install,
        )
        .unwrap()
    }

    #[test]
    fn install_table() {
        let others = r#"{
  "log-level": "warn",
  "registry-mirrors": ["https://mirror.example"],
  "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
  "data-root": "/data/docker"
}"#;
        // Other keys kept in their order; ours added.
        let after = run(Some(others), false, true).unwrap();
        let v: Value = serde_json::from_str(&after).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["log-level", "registry-mirrors", "runtimes", "data-root"]
        );
        assert_eq!(v["runtimes"]["nvidia"]["path"], "nvidia-container-runtime");
        assert_eq!(
            v["runtimes"]["mlenv"],
            json!({"path": "/usr/bin/mlenv-runtime"})
        );
        assert!(v.get("default-runtime").is_none());
        // Idempotent: the same text back.
        assert_eq!(run(Some(&after), false, true), Some(after.clone()));
        // --default adds default-runtime, at the end.
        let with_default = run(Some(&after), true, true).unwrap();
        let v: Value = serde_json::from_str(&with_default).unwrap();
        assert_eq!(v["default-runtime"], "mlenv");
        // Uninstall: ours gone, the rest as it was.
        let back = run(Some(&with_default), false, false).unwrap();
        let v: Value = serde_json::from_str(&back).unwrap();
        assert_eq!(v, serde_json::from_str::<Value>(others).unwrap());
        // No file: created; uninstall of nothing: nothing.
        let fresh = run(None, true, true).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&fresh).unwrap(),
            json!({"runtimes": {"mlenv": {"path": "/usr/bin/mlenv-runtime"}}, "default-runtime": "mlenv"})
        );
        assert_eq!(run(None, false, false), None);
        // An existing entry keeps its extra keys, gets our path.
        let moved = r#"{"runtimes": {"mlenv": {"path": "/opt/old", "runtimeArgs": ["--debug"]}}}"#;
        let v: Value = serde_json::from_str(&run(Some(moved), false, true).unwrap()).unwrap();
        assert_eq!(
            v["runtimes"]["mlenv"],
            json!({"path": "/usr/bin/mlenv-runtime", "runtimeArgs": ["--debug"]})
        );
        // Another runtime as default is not removed by uninstall.
        let theirs = r#"{"default-runtime": "nvidia", "runtimes": {"mlenv": {"path": "/x"}}}"#;
        let v: Value = serde_json::from_str(&run(Some(theirs), false, false).unwrap()).unwrap();
        assert_eq!(v, json!({"default-runtime": "nvidia"}));
    }

    #[test]
    fn broken_files_are_left_alone_with_a_clear_error() {
        let e = edit(Path::new("/d.json"), Some("{ not json"), &o(false), true).unwrap_err();
        assert!(
            e.to_string().starts_with("/d.json is not valid JSON: "),
            "{e}"
        );
        let e = edit(Path::new("/d.json"), Some("[1]"), &o(false), true).unwrap_err();
        assert_eq!(e.to_string(), "/d.json: not a JSON object");
        let e = edit(
            Path::new("/d.json"),
            Some(r#"{"runtimes": 3}"#),
            &o(false),
            true,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "/d.json: \"runtimes\" is not an object");
    }
}
