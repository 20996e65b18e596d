//! `mlenv install` / `uninstall`: registering mlenv with an engine's configuration.
//!
//! Each engine module turns the files as they are into the files as they should be
//! (pure functions, table-tested); this module writes the changes: atomically, with
//! the previous content kept as `<file>.mlenv-backup`, and only when something
//! changes, so a second install does nothing.

pub mod containerd;
pub mod crio;
pub mod docker;
pub mod podman;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid {format}: {message}; fix it by hand first (mlenv leaves a file it cannot read untouched)")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    Shape { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One file's change: the content it has (None: missing) and the content it must
/// have (None: remove it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl Change {
    pub fn changes(&self) -> bool {
        self.before != self.after
    }
}

/// What an install or uninstall does: file changes and what the admin must know
/// (how the engine picks them up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
}

/// Where an engine that takes drop-in files (podman, CRI-O) gets mlenv: its
/// drop-in directory, its hooks directory, and what to put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropIns {
    pub conf_d: PathBuf,
    pub hooks_d: PathBuf,
    /// The runtime's name in the engine.
    pub name: String,
    pub runtime: PathBuf,
    /// mlenv-hook for the hooks directory; None: no hooks entry (uninstall removes
    /// one either way).
    pub hook: Option<PathBuf>,
    /// Make it the engine's default runtime.
    pub default: bool,
}

/// The hooks-directory entry of `o` as a change: written on install when a hook is
/// given, removed on uninstall.
pub fn hooks_entry(o: &DropIns, install: bool) -> Result<Change, InstallError> {
    dropin(
        &o.hooks_d.join("mlenv.json"),
        o.hook.as_deref().filter(|_| install).map(podman::hook_json),
    )
}

/// Reads a file that may not exist.
pub fn read(path: &Path) -> Result<Option<String>, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The backup of `path`: `daemon.json.mlenv-backup`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_os_string();
    p.push(".mlenv-backup");
    PathBuf::from(p)
}

/// Writes the plan's changes; returns one line per file changed.
pub fn apply(plan: &Plan) -> Result<Vec<String>, InstallError> {
    let mut done = Vec::new();
    for c in plan.changes.iter().filter(|c| c.changes()) {
        let write_err = |source| InstallError::Write {
            path: c.path.clone(),
            source,
        };
        let mut line = String::new();
        if let Some(old) = &c.before {
            let backup = backup_path(&c.path);
            crate::fsutil::write_atomic(&backup, old.as_bytes(), 0o600).map_err(write_err)?;
            line = format!(" (previous content in {})", backup.display());
        }
        match &c.after {
            Some(new) => {
                if let Some(dir) = c.path.parent() {
                    std::fs::create_dir_all(dir).map_err(write_err)?;
                }
                let mode = crate::fsutil::mode_of(&c.path, 0o644);
                crate::fsutil::write_atomic(&c.path, new.as_bytes(), mode).map_err(write_err)?;
                done.push(format!("wrote {}{line}", c.path.display()));
            }
            None => {
                std::fs::remove_file(&c.path).map_err(write_err)?;
                done.push(format!("removed {}{line}", c.path.display()));
            }
        }
    }
    Ok(done)
}

/// The plan as an admin reads it before applying: each changed file, before and
/// after.
pub fn describe(plan: &Plan) -> String {
    let mut out = String::new();
    for c in plan.changes.iter().filter(|c| c.changes()) {
        out.push_str(&format!("--- {}\n", c.path.display()));
        match &c.before {
            Some(b) => out.push_str(&format!("# now:\n{}", ensure_newline(b))),
            None => out.push_str("# now: (no such file)\n"),
        }
        match &c.after {
            Some(a) => out.push_str(&format!("# after:\n{}", ensure_newline(a))),
            None => out.push_str("# after: (removed)\n"),
        }
    }
    if out.is_empty() {
        out.push_str("nothing to change\n");
    }
    out
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// A drop-in file of ours: written whole on install, removed on uninstall.
pub fn dropin(path: &Path, content: Option<String>) -> Result<Change, InstallError> {
    Ok(Change {
        path: path.to_path_buf(),
        before: read(path)?,
        after: content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_backs_up_writes_and_removes_only_what_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("sub/b.conf");
        std::fs::write(&a, "old").unwrap();
        let plan = Plan {
            changes: vec![
                Change {
                    path: a.clone(),
                    before: Some("old".into()),
                    after: Some("new".into()),
                },
                Change {
                    path: b.clone(),
                    before: None,
                    after: Some("x".into()),
                },
                Change {
                    path: dir.path().join("same"),
                    before: Some("s".into()),
                    after: Some("s".into()),
                },
            ],
            notes: vec![],
        };
        let done = apply(&plan).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(backup_path(&a)).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "x");
        assert!(
            !backup_path(&b).exists(),
            "nothing to back up for a new file"
        );
        assert!(
            !dir.path().join("same").exists(),
            "an unchanged file is not written"
        );
        let remove = Plan {
            changes: vec![Change {
                path: b.clone(),
                before: Some("x".into()),
                after: None,
            }],
            notes: vec![],
        };
        apply(&remove).unwrap();
        assert!(!b.exists());
        assert_eq!(describe(&Plan::default()), "nothing to change\n");
    }
}
