//! `[user]`: who a container runs as, so that what it writes into bind mounts belongs
//! to the people who own them.
//!
//! `mapping` says how a container that would run as root finds its user: `keep`
//! leaves it root, `workdir-owner` takes the owner of the bind mount holding its
//! working directory (else of the first bind mount under `workdir_roots`), `fixed`
//! takes `uid`/`gid`. `root` says what happens to a container that still runs as root
//! after that: `allow` it, `remap` it to `uid`/`gid`, or `refuse` it. Containers that
//! ask for a non-root user keep it. When GPUs are granted, a non-root process also
//! gets the groups that own the GPU device nodes.

use crate::hostfs::Files;
use crate::spec::{bind_mounts, Spec, SpecError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// nobody:nogroup, the fallback identity of `root = "remap"`.
pub const NOBODY: u32 = 65534;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// A root container stays root (and `root` decides).
    #[default]
    Keep,
    /// A root container runs as the owner of its working directory's bind mount.
    WorkdirOwner,
    /// A root container runs as `uid`:`gid`.
    Fixed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootRule {
    #[default]
    Allow,
    /// Run it as `uid`:`gid` instead.
    Remap,
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserSection {
    pub mapping: Mapping,
    pub root: RootRule,
    /// The user of `mapping = "fixed"` and `root = "remap"`.
    pub uid: u32,
    /// Its group; the uid when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Where `workdir-owner` looks for a bind mount when none holds the working
    /// directory.
    pub workdir_roots: Vec<PathBuf>,
    /// Add the groups owning the granted GPUs' device nodes to a non-root process.
    pub gpu_groups: bool,
}

impl Default for UserSection {
    fn default() -> Self {
        UserSection {
            mapping: Mapping::Keep,
            root: RootRule::Allow,
            uid: NOBODY,
            gid: None,
            workdir_roots: ["/home", "/data", "/scratch", "/srv"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            gpu_groups: true,
        }
    }
}

impl UserSection {
    fn fixed(&self) -> (u32, u32) {
        (self.uid, self.gid.unwrap_or(self.uid))
    }

    pub fn validate(&self) -> Result<(), String> {
        if (self.mapping == Mapping::Fixed || self.root == RootRule::Remap) && self.uid == 0 {
            return Err(
                "[user] uid: 0 is root; name the user root containers should run as".into(),
            );
        }
        if let Some(p) = self.workdir_roots.iter().find(|p| !p.is_absolute()) {
            return Err(format!(
                "[user] workdir_roots: {} is not an absolute path",
                p.display()
            ));
        }
        Ok(())
    }
}

/// What the mapping did: the change to say, or why the container is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    Kept,
    Changed(String),
    Refused(String),
}

/// Applies `[user]` to the spec. Idempotent: a mapped container is no longer root.
pub fn map(spec: &mut Spec, s: &UserSection, files: &dyn Files) -> Result<Mapped, SpecError> {
    if spec.json.pointer("/process").is_none() || spec.user().0 != 0 {
        return Ok(Mapped::Kept);
    }
    let found = match s.mapping {
        Mapping::Keep => None,
        Mapping::Fixed => Some((s.fixed(), "[user] mapping = \"fixed\"".to_string())),
        Mapping::WorkdirOwner => workdir_owner(&spec.json, s, files)
            .map(|(owner, source)| (owner, format!("owner of {}", source.display()))),
    };
    let (uid, gid, why) = match found {
        Some(((uid, gid), why)) if uid != 0 => (uid, gid, why),
        _ => match s.root {
            RootRule::Allow => return Ok(Mapped::Kept),
            RootRule::Refuse => {
                return Ok(Mapped::Refused(match s.mapping {
                    Mapping::WorkdirOwner => "runs as root, and no bind mount with a non-root owner holds its working directory or lies under [user] workdir_roots; bind-mount your project directory, or pass --user ([user] root = \"refuse\")".into(),
                    _ => "runs as root; pass --user UID:GID ([user] root = \"refuse\")".into(),
                }))
            }
            RootRule::Remap => {
                let (uid, gid) = s.fixed();
                (uid, gid, "[user] root = \"remap\"".to_string())
            }
        },
    };
    let user = spec.object_mut(&["process", "user"])?;
    user.insert("uid".into(), json!(uid));
    user.insert("gid".into(), json!(gid));
    // Root's supplementary groups (root, wheel, ...) do not go with it.
    user.insert("additionalGids".into(), json!([]));
    Ok(Mapped::Changed(format!(
        "runs as {uid}:{gid} instead of root ({why})"
    )))
}

/// Holds a `docker exec` to `[user] root` as the container's first process was held:
/// under `remap` or `refuse` no container runs as root, and an exec that would (Docker
/// gives an exec the image's user unless `-u` says otherwise) must not either. Under
/// `remap` it runs as the container's own user, `container` (`process.user` of the
/// container's config.json, when known and not root), else as `uid`/`gid`; under
/// `refuse` it is refused. `container` is asked only for an exec as root under a rule
/// that holds it: looking it up reads the inventory. `process` is the exec's process
/// (runc's `--process` file); one that is not an object is left to the runtime to
/// reject. Idempotent.
pub fn map_exec(
    process: &mut Value,
    container: impl FnOnce() -> Option<Value>,
    s: &UserSection,
) -> Mapped {
    let Some(process) = process.as_object_mut() else {
        return Mapped::Kept;
    };
    let id = |user: Option<&Value>, field: &str| {
        user.and_then(|u| u.get(field))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    if id(process.get("user"), "uid").unwrap_or(0) != 0 || s.root == RootRule::Allow {
        return Mapped::Kept;
    }
    let container = container();
    let container = container.as_ref();
    let own = container
        .and_then(|c| Some((id(Some(c), "uid")?, id(Some(c), "gid").unwrap_or(0))))
        .filter(|(uid, _)| *uid != 0);
    if s.root == RootRule::Refuse {
        let user = own.map_or("UID:GID".to_string(), |(u, g)| format!("{u}:{g}"));
        let whose = if own.is_some() {
            ", the container's user"
        } else {
            ""
        };
        return Mapped::Refused(format!(
            "exec runs as root; pass --user {user}{whose} ([user] root = \"refuse\")"
        ));
    }
    let (uid, gid, groups, why) = match own {
        Some((uid, gid)) => {
            let groups = container
                .and_then(|c| c.get("additionalGids"))
                .cloned()
                .unwrap_or(json!([]));
            (uid, gid, groups, "the container's user")
        }
        None => {
            let (uid, gid) = s.fixed();
            (uid, gid, json!([]), "[user] root = \"remap\"")
        }
    };
    let user = process.entry("user").or_insert_with(|| json!({}));
    if !user.is_object() {
        *user = json!({});
    }
    user["uid"] = json!(uid);
    user["gid"] = json!(gid);
    user["additionalGids"] = groups;
    Mapped::Changed(format!("exec runs as {uid}:{gid} instead of root ({why})"))
}

/// The owner of the bind mount holding the working directory, else of the first
/// bind mount under `workdir_roots`, and that mount's source.
fn workdir_owner(
    spec: &Value,
    s: &UserSection,
    files: &dyn Files,
) -> Option<((u32, u32), PathBuf)> {
    let cwd = Path::new(
        spec.pointer("/process/cwd")
            .and_then(Value::as_str)
            .unwrap_or("/"),
    );
    let binds = bind_mounts(spec);
    let holding = binds
        .iter()
        .filter(|b| cwd.starts_with(b.destination))
        .max_by_key(|b| Path::new(b.destination).components().count());
    let chosen = holding.or_else(|| {
        binds.iter().find(|b| {
            let source = files.resolve(Path::new(b.source));
            s.workdir_roots
                .iter()
                .any(|r| source.starts_with(files.resolve(r)))
        })
    })?;
    let source = files.resolve(Path::new(chosen.source));
    let meta = files.meta(&source)?;
    Some(((meta.uid, meta.gid), source))
}

/// Adds the groups owning `nodes` (host device paths) to a non-root process's
/// supplementary groups. Returns what was added.
pub fn add_device_groups(
    spec: &mut Spec,
    nodes: &[PathBuf],
    files: &dyn Files,
) -> Result<Vec<u32>, SpecError> {
    let (uid, gid) = spec.user();
    if uid == 0 || spec.json.pointer("/process").is_none() {
        return Ok(Vec::new());
    }
    let mut wanted: Vec<u32> = nodes
        .iter()
        .filter_map(|n| files.meta(n))
        .map(|m| m.gid)
        .filter(|g| *g != 0 && *g != gid)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    // No empty list where there was none: the spec keeps all that is not changed.
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let list = spec.array_mut(&["process", "user"], "additionalGids")?;
    let mut added = Vec::new();
    for g in wanted {
        if !list.iter().any(|v| v.as_u64() == Some(g.into())) {
            list.push(json!(g));
            added.push(g);
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfs::tests::FakeFiles;

    fn spec(user: Value, cwd: &str, binds: &[(&str, &str)]) -> Spec {
        let mut mounts = vec![json!({"destination": "/proc", "type": "proc", "source": "proc"})];
        for (src, dst) in binds {
            mounts.push(
                json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind"]}),
            );
        }
        Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({"process": {"user": user, "cwd": cwd, "args": ["sh"]}, "mounts": mounts}),
        }
    }

    fn root() -> Value {
        json!({"uid": 0, "gid": 0, "additionalGids": [0, 10]})
    }

    fn files() -> FakeFiles {
        FakeFiles::default()
            .with("/home/alice/vision", 1000, 1000, 0o755)
            .with("/home/bob", 1001, 100, 0o755)
            .with("/data/shared", 0, 0, 0o755)
            .with("/opt/tools", 1002, 1002, 0o755)
            .link("/srv/link", "/home/bob")
    }

    fn section(mapping: Mapping, root: RootRule) -> UserSection {
        UserSection {
            mapping,
            root,
            uid: 2000,
            gid: Some(2001),
            ..Default::default()
        }
    }

    #[test]
    fn mapping_table() {
        use Mapping::*;
        use RootRule::*;
        let owner = |u: u32, g: u32, src: &str| {
            Mapped::Changed(format!("runs as {u}:{g} instead of root (owner of {src})"))
        };
        type Case = (&'static str, Spec, UserSection, Mapped, (u32, u32));
        let cases: Vec<Case> = vec![
            (
                "keep and allow: nothing",
                spec(root(), "/w", &[("/home/alice/vision", "/w")]),
                section(Keep, Allow),
                Mapped::Kept,
                (0, 0),
            ),
            (
                "workdir holds the cwd",
                spec(
                    root(),
                    "/w/src",
                    &[("/home/bob", "/x"), ("/home/alice/vision", "/w")],
                ),
                section(WorkdirOwner, Allow),
                owner(1000, 1000, "/home/alice/vision"),
                (1000, 1000),
            ),
            (
                "deepest mount holding the cwd wins",
                spec(
                    root(),
                    "/w/sub/x",
                    &[("/home/alice/vision", "/w"), ("/home/bob", "/w/sub")],
                ),
                section(WorkdirOwner, Allow),
                owner(1001, 100, "/home/bob"),
                (1001, 100),
            ),
            (
                "a prefix is not a parent",
                spec(
                    root(),
                    "/work",
                    &[("/opt/tools", "/w"), ("/home/bob", "/b")],
                ),
                section(WorkdirOwner, Allow),
                owner(1001, 100, "/home/bob"),
                (1001, 100),
            ),
            (
                "first bind under workdir_roots, through a link",
                spec(root(), "/", &[("/opt/tools", "/t"), ("/srv/link", "/b")]),
                section(WorkdirOwner, Allow),
                owner(1001, 100, "/home/bob"),
                (1001, 100),
            ),
            (
                "no bind mount, allow",
                spec(root(), "/", &[]),
                section(WorkdirOwner, Allow),
                Mapped::Kept,
                (0, 0),
            ),
            (
                "no bind mount, remap",
                spec(root(), "/", &[]),
                section(WorkdirOwner, Remap),
                Mapped::Changed(
                    "runs as 2000:2001 instead of root ([user] root = \"remap\")".into(),
                ),
                (2000, 2001),
            ),
            (
                "root-owned workdir counts as none",
                spec(root(), "/d", &[("/data/shared", "/d")]),
                section(WorkdirOwner, Remap),
                Mapped::Changed(
                    "runs as 2000:2001 instead of root ([user] root = \"remap\")".into(),
                ),
                (2000, 2001),
            ),
            (
                "fixed",
                spec(root(), "/", &[]),
                section(Fixed, Allow),
                Mapped::Changed(
                    "runs as 2000:2001 instead of root ([user] mapping = \"fixed\")".into(),
                ),
                (2000, 2001),
            ),
            (
                "non-root keeps its user",
                spec(
                    json!({"uid": 1500, "gid": 1500}),
                    "/w",
                    &[("/home/alice/vision", "/w")],
                ),
                section(WorkdirOwner, Refuse),
                Mapped::Kept,
                (1500, 1500),
            ),
            (
                "keep and refuse",
                spec(root(), "/", &[]),
                section(Keep, Refuse),
                Mapped::Refused(
                    "runs as root; pass --user UID:GID ([user] root = \"refuse\")".into(),
                ),
                (0, 0),
            ),
        ];
        for (name, mut s, sec, want, user) in cases {
            let before = s.json.clone();
            assert_eq!(map(&mut s, &sec, &files()).unwrap(), want, "{name}");
            assert_eq!(s.user(), user, "{name}");
            if let Mapped::Changed(_) = want {
                assert_eq!(
                    s.json["process"]["user"]["additionalGids"],
                    json!([]),
                    "{name}"
                );
                // Idempotent: now not root, a second run keeps it.
                let once = s.json.clone();
                assert_eq!(map(&mut s, &sec, &files()).unwrap(), Mapped::Kept, "{name}");
                assert_eq!(s.json, once, "{name}");
                // Only process.user changed.
                let mut a = before.clone();
                let mut b = once;
                a["process"].as_object_mut().unwrap().remove("user");
                b["process"].as_object_mut().unwrap().remove("user");
                assert_eq!(a, b, "{name}");
            } else {
                assert_eq!(s.json, before, "{name}");
            }
        }
        let mut refused = spec(root(), "/", &[("/opt/tools", "/t")]);
        match map(&mut refused, &section(WorkdirOwner, Refuse), &files()).unwrap() {
            Mapped::Refused(why) => {
                assert!(why.contains("bind-mount your project directory"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn device_groups_join_a_non_root_process_once() {
        let f = FakeFiles::default()
            .with("/dev/nvidia0", 0, 44, 0o660)
            .with("/dev/nvidiactl", 0, 44, 0o660)
            .with("/dev/nvidia-uvm", 0, 0, 0o666);
        let nodes: Vec<PathBuf> = [
            "/dev/nvidia0",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/none",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let mut s = spec(json!({"uid": 1000, "gid": 1000}), "/", &[]);
        assert_eq!(add_device_groups(&mut s, &nodes, &f).unwrap(), vec![44]);
        assert_eq!(s.json["process"]["user"]["additionalGids"], json!([44]));
        assert_eq!(
            add_device_groups(&mut s, &nodes, &f).unwrap(),
            Vec::<u32>::new()
        );
        let mut r = spec(root(), "/", &[]);
        assert_eq!(
            add_device_groups(&mut r, &nodes, &f).unwrap(),
            Vec::<u32>::new()
        );
        assert_eq!(r.json["process"]["user"], root());
    }

    #[test]
    fn exec_table() {
        use RootRule::*;
        let own = json!({"uid": 1000, "gid": 1000, "additionalGids": [44], "umask": 18});
        let root_own = json!({"uid": 0, "gid": 0});
        let exec = |user: Value| json!({"user": user, "args": ["id"], "cwd": "/"});
        let as_root = || exec(json!({"uid": 0, "gid": 0, "additionalGids": [0, 10]}));
        type Case = (&'static str, Value, Option<Value>, RootRule, Mapped, Value);
        let changed = |m: &str| Mapped::Changed(m.to_string());
        let cases: Vec<Case> = vec![
            ("allow: root stays", as_root(), Some(own.clone()), Allow, Mapped::Kept, as_root()),
            (
                "a non-root exec stays",
                exec(json!({"uid": 7, "gid": 7})),
                Some(own.clone()),
                Refuse,
                Mapped::Kept,
                exec(json!({"uid": 7, "gid": 7})),
            ),
            (
                "remap: the container's own user and groups",
                as_root(),
                Some(own.clone()),
                Remap,
                changed("exec runs as 1000:1000 instead of root (the container's user)"),
                exec(json!({"uid": 1000, "gid": 1000, "additionalGids": [44]})),
            ),
            (
                "remap, container unknown: [user] uid and gid",
                as_root(),
                None,
                Remap,
                changed("exec runs as 2000:2001 instead of root ([user] root = \"remap\")"),
                exec(json!({"uid": 2000, "gid": 2001, "additionalGids": []})),
            ),
            (
                "remap, a container left root: [user] uid and gid",
                as_root(),
                Some(root_own.clone()),
                Remap,
                changed("exec runs as 2000:2001 instead of root ([user] root = \"remap\")"),
                exec(json!({"uid": 2000, "gid": 2001, "additionalGids": []})),
            ),
            (
                "no user at all is root",
                json!({"args": ["id"]}),
                Some(own.clone()),
                Remap,
                changed("exec runs as 1000:1000 instead of root (the container's user)"),
                json!({"args": ["id"], "user": {"uid": 1000, "gid": 1000, "additionalGids": [44]}}),
            ),
            (
                "refuse names the container's user",
                as_root(),
                Some(own.clone()),
                Refuse,
                Mapped::Refused("exec runs as root; pass --user 1000:1000, the container's user ([user] root = \"refuse\")".into()),
                as_root(),
            ),
            (
                "refuse, container unknown",
                as_root(),
                None,
                Refuse,
                Mapped::Refused("exec runs as root; pass --user UID:GID ([user] root = \"refuse\")".into()),
                as_root(),
            ),
            ("not an object: left to the runtime", json!([1]), None, Refuse, Mapped::Kept, json!([1])),
        ];
        for (name, mut process, container, rule, want, want_process) in cases {
            let s = section(Mapping::Keep, rule);
            assert_eq!(
                map_exec(&mut process, || container.clone(), &s),
                want,
                "{name}"
            );
            assert_eq!(process, want_process, "{name}");
            // Idempotent: a mapped exec no longer runs as root.
            if matches!(want, Mapped::Changed(_)) {
                let again = map_exec(&mut process, || container.clone(), &s);
                assert_eq!((again, &process), (Mapped::Kept, &want_process), "{name}");
            }
        }
        // The container is looked up (the inventory read) only for an exec as root
        // under a rule that holds it.
        for (mut process, rule) in [
            (exec(json!({"uid": 1000, "gid": 1000})), Refuse),
            (as_root(), Allow),
        ] {
            let s = section(Mapping::Keep, rule);
            assert_eq!(
                map_exec(&mut process, || panic!("looked up"), &s),
                Mapped::Kept
            );
        }
    }

    #[test]
    fn validation() {
        assert!(UserSection::default().validate().is_ok());
        let e = UserSection {
            root: RootRule::Remap,
            uid: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("[user] uid: 0 is root"), "{e}");
        let e = UserSection {
            workdir_roots: vec!["home".into()],
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.contains("workdir_roots: home is not an absolute path"),
            "{e}"
        );
    }
}
