//! Whether the policy and the inventory may be believed: a file that someone other
//! than root can write could lift every limit. Honoured only when each file, and the
//! directory holding it, is owned by root (or by the user mlenv runs as, for a
//! rootless engine, who could change its policy anyway) and not writable by group or
//! others.

use crate::hostfs::Files;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("{what} {path} is writable by group or others (mode {mode:04o}): it is not honoured; run `chmod go-w {path}`")]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} {path} is owned by uid {uid}, not root: it is not honoured; run `chown root: {path}`")]
    Owner {
        what: &'static str,
        path: PathBuf,
        uid: u32,
    },
}

/// Checks `path` and its directory, where they exist.
pub fn check(
    what: &'static str,
    path: &Path,
    files: &dyn Files,
    euid: u32,
) -> Result<(), TrustError> {
    let mut items = vec![path.to_path_buf()];
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        items.push(dir.to_path_buf());
    }
    for p in items {
        let Some(m) = files.meta(&p) else { continue };
        if m.uid != 0 && m.uid != euid {
            return Err(TrustError::Owner {
                what,
                path: p,
                uid: m.uid,
            });
        }
        // A sticky directory (/tmp) lets no one replace another's file.
        let sticky_dir = m.is_dir && m.mode & 0o1000 != 0;
        if m.mode & 0o022 != 0 && !sticky_dir {
            return Err(TrustError::Writable {
                what,
                path: p,
                mode: m.mode,
            });
        }
    }
    Ok(())
}

/// The policy files (main and drop-ins) and the conf.d directory.
pub fn check_policy(main: &Path, dropins: &[PathBuf], files: &dyn Files) -> Result<(), TrustError> {
    let euid = nix::unistd::geteuid().as_raw();
    check("policy", main, files, euid)?;
    for d in dropins {
        check("policy drop-in", d, files, euid)?;
    }
    Ok(())
}

/// The inventory database and its directory.
pub fn check_inventory(path: &Path, files: &dyn Files) -> Result<(), TrustError> {
    check("inventory", path, files, nix::unistd::geteuid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfs::tests::FakeFiles;
    use crate::hostfs::RealFiles;

    #[test]
    fn trust_table() {
        let f = FakeFiles::default()
            .with("/etc/mlenv", 0, 0, 0o755)
            .with("/etc/mlenv/mlenv.toml", 0, 0, 0o644)
            .with("/etc/mlenv/group.toml", 0, 10, 0o664)
            .with("/etc/mlenv/alice.toml", 1000, 1000, 0o644)
            .with("/etc/open", 0, 0, 0o777)
            .with("/etc/open/mlenv.toml", 0, 0, 0o644)
            .with("/tmp", 0, 0, 0o1777)
            .with("/tmp/mlenv.toml", 0, 0, 0o600)
            .with("/home/bob", 1001, 1001, 0o755)
            .with("/home/bob/mlenv.toml", 1001, 1001, 0o644);
        let p = |s: &str| PathBuf::from(s);
        let cases: Vec<(&str, u32, Result<(), TrustError>)> = vec![
            ("/etc/mlenv/mlenv.toml", 0, Ok(())),
            ("/etc/mlenv/missing.toml", 0, Ok(())),
            (
                "/etc/mlenv/group.toml",
                0,
                Err(TrustError::Writable {
                    what: "policy",
                    path: p("/etc/mlenv/group.toml"),
                    mode: 0o664,
                }),
            ),
            (
                "/etc/mlenv/alice.toml",
                0,
                Err(TrustError::Owner {
                    what: "policy",
                    path: p("/etc/mlenv/alice.toml"),
                    uid: 1000,
                }),
            ),
            (
                "/etc/open/mlenv.toml",
                0,
                Err(TrustError::Writable {
                    what: "policy",
                    path: p("/etc/open"),
                    mode: 0o777,
                }),
            ),
            ("/tmp/mlenv.toml", 0, Ok(())),
            // Rootless: the user's own files are theirs to trust.
            ("/home/bob/mlenv.toml", 1001, Ok(())),
            (
                "/home/bob/mlenv.toml",
                0,
                Err(TrustError::Owner {
                    what: "policy",
                    path: p("/home/bob/mlenv.toml"),
                    uid: 1001,
                }),
            ),
        ];
        for (path, euid, want) in cases {
            assert_eq!(
                check("policy", Path::new(path), &f, euid),
                want,
                "{path} as {euid}"
            );
        }
        let e = check("inventory", Path::new("/etc/mlenv/group.toml"), &f, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "inventory /etc/mlenv/group.toml is writable by group or others (mode 0664): it is not honoured; run `chmod go-w /etc/mlenv/group.toml`"
        );
    }

    #[test]
    fn real_files_are_checked_for_real() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        std::fs::write(&main, "").unwrap();
        let set = |mode| {
            std::fs::set_permissions(&main, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap()
        };
        set(0o644);
        assert_eq!(check_policy(&main, &[], &RealFiles), Ok(()));
        set(0o646);
        assert!(matches!(
            check_policy(&main, &[], &RealFiles),
            Err(TrustError::Writable { mode: 0o646, .. })
        ));
    }
}
