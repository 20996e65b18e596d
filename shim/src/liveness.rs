//! Whether a container the inventory counts still lives, asked of the low-level
//! runtime's own state and the process table, never of the engine.

use crate::host::Host;
use std::path::Path;

/// runc's and crun's state roots when the engine passes no `--root`.
pub const DEFAULT_ROOTS: &[&str] = &["/run/runc", "/run/crun"];

/// The runtimes whose state [`check`] reads (`<root>/<id>/`: runc's `state.json`,
/// crun's `status`), by file name.
const STATE_KNOWN: &[&str] = &["runc", "crun"];

/// Whether [`check`] finds the state of the containers `runtime` creates, so that a
/// container needs nothing recorded past its creator to be told alive or gone. Any
/// other runtime (youki, runsc, a wrapper such as nvidia-container-runtime) keeps its
/// state elsewhere or in another form: mlenv-runtime waits for its create and records
/// the init process itself.
pub fn finds_state_of(runtime: &Path) -> bool {
    runtime
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| STATE_KNOWN.contains(&n))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its init process runs (or waits to be started); `init`: that process (pid and
    /// start time) where the runtime's state named it and it was not yet recorded.
    Alive { init: Option<(u32, u64)> },
    /// No runtime state yet, but the process creating it is still at work.
    Creating,
    /// Gone, and why.
    Gone(&'static str),
}

/// What the inventory keeps to tell: the container and the process that created it
/// (pid and start time, so that a reused pid is not mistaken for it).
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub container_id: String,
    pub root: Option<String>,
    pub creator: Option<(u32, u64)>,
    /// The container's init process, once recorded: by mlenv-hook, or by a
    /// liveness check that found it in the runtime's state.
    pub init: Option<(u32, u64)>,
}

const ALIVE: Liveness = Liveness::Alive { init: None };

pub fn check(host: &dyn Host, t: &Tracked) -> Liveness {
    // Recorded: the process itself says, whatever the runtime's root.
    if let Some((pid, start)) = t.init {
        return if host.process_start(pid) == Some(start) {
            ALIVE
        } else {
            Liveness::Gone("its process is gone")
        };
    }
    let roots: Vec<&str> = match &t.root {
        Some(r) => vec![r.as_str()],
        None => DEFAULT_ROOTS.to_vec(),
    };
    for root in roots {
        let dir = Path::new(root).join(&t.container_id);
        // runc's state.json and crun's status: the init process and its start time
        // (field 22 of /proc/PID/stat, as both read it), each file replaced by a rename.
        for (file, pid_key, start_key) in [
            ("state.json", "init_process_pid", "init_process_start"),
            ("status", "pid", "process-start-time"),
        ] {
            if let Some(text) = host.read(&dir.join(file)) {
                return from_state(host, &text, pid_key, start_key);
            }
        }
    }
    match t.creator {
        Some((pid, start)) if host.process_start(pid) == Some(start) => Liveness::Creating,
        _ => Liveness::Gone("no runtime state"),
    }
}

/// Liveness from a runtime's state file: its init process at `pid_key`, started at
/// `start_key`.
fn from_state(host: &dyn Host, text: &str, pid_key: &str, start_key: &str) -> Liveness {
    // Unreadable (another runtime's file of that name): alive, nothing learned.
    let Ok(state) = serde_json::from_str::<serde_json::Value>(text) else {
        return ALIVE;
    };
    let pid = state[pid_key].as_u64().and_then(|p| u32::try_from(p).ok());
    // Older crun writes no start time; crun writes 0 where the process was gone.
    let start = state[start_key].as_u64().filter(|&s| s != 0);
    match (pid, start) {
        (Some(pid), Some(start)) if host.process_start(pid) == Some(start) => Liveness::Alive {
            init: Some((pid, start)),
        },
        (Some(_), Some(_)) => Liveness::Gone("its process is gone"),
        // Without a start time a reused pid would pass: only a gone one tells.
        (Some(pid), None) if pid > 0 && host.process_start(pid).is_none() => {
            Liveness::Gone("its process is gone")
        }
        _ => ALIVE,
    }
}

/// Whether the runtime under `root` has no state left for `id`, so that a delete of
/// it has nothing to end: runc, crun and youki all keep `<root>/<id>/`. `false` when
/// unsure (an id that is not a plain name, a directory that cannot be read).
pub fn state_gone(root: &Path, id: &str) -> bool {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') {
        return false;
    }
    matches!(std::fs::symlink_metadata(root.join(id)),
             Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::tests::fixture;

    fn tracked(root: Option<&str>, creator: Option<(u32, u64)>) -> Tracked {
        Tracked {
            container_id: "c1".into(),
            root: root.map(str::to_string),
            creator,
            init: None,
        }
    }

    fn stat(start: u64) -> String {
        crate::host::tests::proc_stat(77, start)
    }

    /// crun's status file, as libcrun writes it (`start`: None, as older crun).
    fn crun(pid: u32, start: Option<u64>) -> String {
        let mut v = serde_json::json!({
            "pid": pid,
            "cgroup-path": "/c1",
            "rootfs": "/b/rootfs",
            "systemd-cgroup": false,
            "bundle": "/b",
            "created": "2026-12-02T15:00:00.000000000Z",
            "detached": true,
        });
        if let Some(s) = start {
            v["process-start-time"] = s.into();
        }
        serde_json::to_string_pretty(&v).unwrap()
    }

    #[test]
    fn table() {
        let state = r#"{"id":"c1","init_process_pid":77,"init_process_start":5000}"#;
        type Row = (Vec<(&'static str, String)>, Tracked, Liveness);
        let rows: Vec<Row> = vec![
            // runc state with its init process running.
            (
                vec![
                    ("r/c1/state.json", state.into()),
                    ("proc/77/stat", stat(5000)),
                ],
                tracked(Some("/r"), None),
                Liveness::Alive {
                    init: Some((77, 5000)),
                },
            ),
            // Recorded already: the process alone says, whatever the root holds.
            (
                vec![("proc/77/stat", stat(5000))],
                Tracked {
                    init: Some((77, 5000)),
                    ..tracked(Some("/r"), None)
                },
                ALIVE,
            ),
            (
                vec![
                    ("r/c1/state.json", state.into()),
                    ("proc/77/stat", stat(5001)),
                ],
                Tracked {
                    init: Some((77, 5000)),
                    ..tracked(Some("/r"), None)
                },
                Liveness::Gone("its process is gone"),
            ),
            // The pid was reused by another process: gone.
            (
                vec![
                    ("r/c1/state.json", state.into()),
                    ("proc/77/stat", stat(9999)),
                ],
                tracked(Some("/r"), None),
                Liveness::Gone("its process is gone"),
            ),
            (
                vec![("r/c1/state.json", state.into())],
                tracked(Some("/r"), None),
                Liveness::Gone("its process is gone"),
            ),
            // No --root: runc's default root.
            (
                vec![
                    ("run/runc/c1/state.json", state.into()),
                    ("proc/77/stat", stat(5000)),
                ],
                tracked(None, None),
                Liveness::Alive {
                    init: Some((77, 5000)),
                },
            ),
            // crun's status, under its default root.
            (
                vec![
                    ("run/crun/c1/status", crun(77, Some(5000))),
                    ("proc/77/stat", stat(5000)),
                ],
                tracked(None, None),
                Liveness::Alive {
                    init: Some((77, 5000)),
                },
            ),
            (
                vec![
                    ("run/crun/c1/status", crun(77, Some(5000))),
                    ("proc/77/stat", stat(9999)),
                ],
                tracked(None, None),
                Liveness::Gone("its process is gone"),
            ),
            (
                vec![("r/c1/status", crun(77, Some(5000)))],
                tracked(Some("/r"), None),
                Liveness::Gone("its process is gone"),
            ),
            // An older crun, without the start time: only a gone pid tells.
            (
                vec![
                    ("r/c1/status", crun(77, None)),
                    ("proc/77/stat", stat(5000)),
                ],
                tracked(Some("/r"), None),
                ALIVE,
            ),
            (
                vec![("r/c1/status", crun(77, None))],
                tracked(Some("/r"), None),
                Liveness::Gone("its process is gone"),
            ),
            // A status file that is not crun's JSON: alive, nothing learned.
            (
                vec![("run/crun/c1/status", "running".into())],
                tracked(None, None),
                ALIVE,
            ),
            // state.json being rewritten: alive, nothing learned.
            (
                vec![("r/c1/state.json", "{\"id\":".into())],
                tracked(Some("/r"), None),
                ALIVE,
            ),
            // Not there yet, its creator still at work.
            (
                vec![("proc/77/stat", stat(5000))],
                tracked(Some("/r"), Some((77, 5000))),
                Liveness::Creating,
            ),
            // Creator gone or reused, no state: gone.
            (
                vec![("proc/77/stat", stat(5001))],
                tracked(Some("/r"), Some((77, 5000))),
                Liveness::Gone("no runtime state"),
            ),
            (
                vec![],
                tracked(Some("/r"), Some((77, 5000))),
                Liveness::Gone("no runtime state"),
            ),
            (
                vec![],
                tracked(None, None),
                Liveness::Gone("no runtime state"),
            ),
        ];
        for (i, (files, t, want)) in rows.into_iter().enumerate() {
            let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
            let (_d, host) = fixture(&refs);
            assert_eq!(check(&host, &t), want, "row {i}");
        }
    }

    #[test]
    fn state_found_for_runc_and_crun_alone() {
        for (path, found) in [
            ("/usr/sbin/runc", true),
            ("/usr/local/bin/crun", true),
            ("runc", true),
            ("/usr/bin/youki", false),
            ("/usr/bin/nvidia-container-runtime", false),
            ("/opt/runc/bin/runc-1.2", false),
            ("/", false),
        ] {
            assert_eq!(finds_state_of(Path::new(path)), found, "{path}");
        }
    }

    #[test]
    fn state_gone_only_when_the_state_directory_is() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("c1")).unwrap();
        assert!(!state_gone(root.path(), "c1"));
        assert!(state_gone(root.path(), "c2"));
        assert!(state_gone(&root.path().join("never-made"), "c1"));
        for unsure in ["", ".", "..", "a/b"] {
            assert!(!state_gone(root.path(), unsure), "{unsure:?}");
        }
    }
}
