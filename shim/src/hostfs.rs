//! What the security rules, the user mapping and the trust checks ask of the host's
//! files: owners and modes, paths with symlinks resolved, namespaces. Behind a trait
//! so those decisions are table-tested without touching the host.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// A file's owner, mode and kind (symlinks followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (`0o644`).
    pub mode: u32,
    pub is_dir: bool,
    pub is_socket: bool,
}

pub trait Files {
    /// The file's owner, mode and kind, or `None` when it does not exist.
    fn meta(&self, path: &Path) -> Option<Meta>;
    /// `path` made absolute with symlinks resolved as far as it exists; the part that
    /// does not exist yet is appended as written (an engine creates missing bind
    /// sources).
    fn resolve(&self, path: &Path) -> PathBuf;
    /// Whether the namespace file at `path` (`/proc/N/ns/net`) is the host's own
    /// namespace of that kind (`net`, `pid`, `ipc`, ...).
    fn is_host_namespace(&self, kind: &str, path: &Path) -> bool;
}

/// The host's real files. mlenv runs in the host's namespaces: its own `/proc/self/ns`
/// files are the host's.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFiles;

impl Files for RealFiles {
    fn meta(&self, path: &Path) -> Option<Meta> {
        let m = std::fs::metadata(path).ok()?;
        Some(Meta {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
            is_dir: m.is_dir(),
            is_socket: m.file_type().is_socket(),
        })
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        resolve_with(path, &mut |p| std::fs::read_link(p))
    }

    fn is_host_namespace(&self, kind: &str, path: &Path) -> bool {
        let ours = Path::new("/proc/self/ns").join(kind);
        match (std::fs::metadata(path), std::fs::metadata(ours)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

/// Symlinks followed in one walk over `path` (folded by [`normalize`] first), one
/// `read_link` per component: from the first component that does not exist (or
/// cannot be read), the rest is appended as written. Where realpath(3) fails on a
/// missing component, retrying it on each parent in turn read every link of the
/// path again: 113 `readlink` calls for the default rules and Docker's four bind
/// mounts, 22 now.
pub fn resolve_with(
    path: &Path,
    read_link: &mut dyn FnMut(&Path) -> std::io::Result<PathBuf>,
) -> PathBuf {
    // As the kernel's limit on links followed in one lookup.
    const MAX_LINKS: usize = 40;
    // A path's names, last first, to be popped in order; ".." kept (only a link's
    // target has one: it is taken against what is resolved so far), "." dropped.
    let names = |p: &Path| -> Vec<std::ffi::OsString> {
        p.components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut todo = names(&normalize(path));
    let mut out = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&name);
        match read_link(&next) {
            Ok(target) if links < MAX_LINKS => {
                links += 1;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                todo.extend(names(&target));
            }
            // Not a link: it exists.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => out = next,
            // Missing, unreadable, or a loop: the rest as written.
            _ => {
                out = next;
                out.extend(todo.iter().rev());
                return normalize(&out);
            }
        }
    }
    out
}

/// `path` with `.` and `..` folded lexically and made absolute from `/`: the form in
/// which paths are compared.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Files described by a table: metas by path, symlinks resolved by prefix, and
    /// the namespace paths that are the host's.
    #[derive(Default)]
    pub struct FakeFiles {
        pub metas: HashMap<PathBuf, Meta>,
        pub links: Vec<(PathBuf, PathBuf)>,
        pub host_namespaces: Vec<PathBuf>,
    }

    impl FakeFiles {
        pub fn with(mut self, path: &str, uid: u32, gid: u32, mode: u32) -> Self {
            self.metas.insert(
                PathBuf::from(path),
                Meta {
                    uid,
                    gid,
                    mode,
                    is_dir: true,
                    is_socket: false,
                },
            );
            self
        }

        pub fn socket(mut self, path: &str) -> Self {
            self.metas.insert(
                PathBuf::from(path),
                Meta {
                    uid: 0,
                    gid: 0,
                    mode: 0o660,
                    is_dir: false,
                    is_socket: true,
                },
            );
            self
        }

        pub fn link(mut self, from: &str, to: &str) -> Self {
            self.links.push((from.into(), to.into()));
            self
        }
    }

    impl Files for FakeFiles {
        fn meta(&self, path: &Path) -> Option<Meta> {
            self.metas.get(&self.resolve(path)).copied()
        }
        fn resolve(&self, path: &Path) -> PathBuf {
            let path = normalize(path);
            for (from, to) in &self.links {
                if let Ok(rest) = path.strip_prefix(from) {
                    return if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                }
            }
            path
        }
        fn is_host_namespace(&self, _kind: &str, path: &Path) -> bool {
            self.host_namespaces.iter().any(|p| p == path)
        }
    }

    #[test]
    fn real_resolve_follows_links_and_keeps_what_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("l")).unwrap();
        let f = RealFiles;
        assert_eq!(f.resolve(&real.join("l/x/y")), real.join("a/x/y"));
        assert_eq!(f.resolve(&real.join("l/../a")), real.join("a"));
        assert_eq!(
            f.resolve(Path::new("/nonexistent-mlenv/x")),
            PathBuf::from("/nonexistent-mlenv/x")
        );
    }

    #[test]
    fn resolve_walks_links_as_realpath_does_on_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        let sym = |to: &str, at: &str| std::os::unix::fs::symlink(to, real.join(at)).unwrap();
        std::fs::create_dir_all(real.join("a/b/c")).unwrap();
        std::fs::write(real.join("a/b/file"), "").unwrap();
        sym("a/b", "rel"); // relative, from the link's directory
        sym(real.join("a").to_str().unwrap(), "abs");
        sym("../b/c", "a/b/up"); // ".." inside a target
        sym("rel", "chain"); // a link to a link
        sym("loop2", "loop1");
        sym("loop1", "loop2");
        sym("missing/deeper", "dangling");
        let f = RealFiles;
        for (path, want) in [
            ("rel/c", "a/b/c"),
            ("abs/b/c", "a/b/c"),
            ("a/b/up", "a/b/c"),
            ("chain/up/../file", "a/b/file"),
            // The missing part, as written.
            ("chain/new/x", "a/b/new/x"),
            ("a/b/file/x", "a/b/file/x"),
            ("dangling/x", "missing/deeper/x"),
            ("loop1/x", "loop1/x"),
        ] {
            let p = real.join(path);
            assert_eq!(f.resolve(&p), real.join(want), "{path}");
            if let Ok(c) = std::fs::canonicalize(&p) {
                assert_eq!(f.resolve(&p), c, "{path}: as realpath(3)");
            }
        }
        // One read per component, however deep the missing part.
        let mut reads = 0;
        let out = resolve_with(Path::new("/run/containerd/containerd.sock"), &mut |p| {
            reads += 1;
            match p.to_str() {
                Some("/run") => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
                _ => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
            }
        });
        assert_eq!(out, Path::new("/run/containerd/containerd.sock"));
        assert_eq!(reads, 2);
    }

    #[test]
    fn real_namespaces_tell_the_host_from_another() {
        let f = RealFiles;
        assert!(f.is_host_namespace("net", Path::new("/proc/self/ns/net")));
        assert!(!f.is_host_namespace("net", Path::new("/proc/self/ns/pid")));
        assert!(!f.is_host_namespace("net", Path::new("/nonexistent")));
    }

    #[test]
    fn real_meta_reads_owner_mode_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let m = RealFiles.meta(&p).unwrap();
        assert_eq!(m.mode, 0o640);
        assert_eq!(m.uid, nix::unistd::geteuid().as_raw());
        assert!(!m.is_dir && !m.is_socket);
        assert!(RealFiles.meta(dir.path()).unwrap().is_dir);
        assert_eq!(RealFiles.meta(&dir.path().join("none")), None);
    }
}
