//! `[security]`: hard rules checked on the spec the engine hands over, whatever API
//! call produced it (`docker run`, compose, the Docker API, podman, containerd).
//! They only refuse: nothing in the spec is changed, and nothing in a container's
//! environment is read, so no request can lift them.

use crate::hostfs::{normalize, Files};
use crate::spec::bind_mounts;
use crate::units::Switch;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The capabilities Docker gives a container by default. Podman's default set is a
/// subset.
pub const DOCKER_DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Namespace kinds as the OCI spec names them, with their `/proc/N/ns` file names.
const NAMESPACES: &[(&str, &str)] = &[
    ("pid", "pid"),
    ("ipc", "ipc"),
    ("network", "net"),
    ("uts", "uts"),
    ("cgroup", "cgroup"),
    ("mount", "mnt"),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// Refuse containers that are allowed every host device (`--privileged`).
    pub refuse_privileged: bool,
    /// The host namespaces a container may not share (`--pid host`, `--ipc host`,
    /// `--network host`); `false` allows them all.
    pub refuse_host_namespaces: Switch<Vec<String>>,
    /// Container engines' API sockets: bind-mounting one, or a directory above one,
    /// is refused; `false` allows it. Any socket named like an engine's
    /// (`docker.sock`, `containerd.sock`, `podman.sock`, `crio.sock`) counts too.
    pub refuse_engine_sockets: Switch<Vec<PathBuf>>,
    /// When set, every bind mount's source must be under one of these (or under
    /// `engine_roots`); `false` allows any source.
    pub allowed_bind_roots: Switch<Vec<PathBuf>>,
    /// Where engines keep what they mount into containers themselves (resolv.conf,
    /// hosts, volumes, Kubernetes pod volumes): always allowed as bind sources.
    pub engine_roots: Vec<PathBuf>,
    /// Capabilities a container may hold; any other is refused. `false` allows all.
    pub allowed_capabilities: Switch<Vec<String>>,
}

impl Default for SecuritySection {
    fn default() -> Self {
        SecuritySection {
            refuse_privileged: true,
            refuse_host_namespaces: Switch::On(vec!["pid".into(), "ipc".into(), "network".into()]),
            refuse_engine_sockets: Switch::On(
                [
                    "/run/docker.sock",
                    "/run/containerd/containerd.sock",
                    "/run/podman/podman.sock",
                    "/run/crio/crio.sock",
                    "/run/buildkit/buildkitd.sock",
                ]
                .iter()
                .map(PathBuf::from)
                .collect(),
            ),
            allowed_bind_roots: Switch::Off,
            engine_roots: [
                "/var/lib/docker",
                "/var/lib/containers",
                "/run/containers",
                "/var/lib/containerd",
                "/run/containerd",
                "/var/lib/kubelet/pods",
                "/run/k3s",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            allowed_capabilities: Switch::On(
                DOCKER_DEFAULT_CAPABILITIES
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
            ),
        }
    }
}

/// File names of engine API sockets, wherever they are.
const SOCKET_NAMES: &[&str] = &[
    "docker.sock",
    "containerd.sock",
    "podman.sock",
    "crio.sock",
    "buildkitd.sock",
];

impl SecuritySection {
    /// Checks names: namespace kinds and capabilities must be real ones, paths
    /// absolute.
    pub fn validate(&self) -> Result<(), String> {
        for kind in self.refuse_host_namespaces.as_ref().into_iter().flatten() {
            if !NAMESPACES.iter().any(|(k, _)| k == kind) {
                return Err(format!(
                    "[security] refuse_host_namespaces: unknown namespace {kind:?}; use pid, ipc, network, uts, cgroup or mount"
                ));
            }
        }
        for cap in self.allowed_capabilities.as_ref().into_iter().flatten() {
            capability(cap).map_err(|_| {
                format!("[security] allowed_capabilities: unknown capability {cap:?}; write names like \"CAP_SYS_PTRACE\"")
            })?;
        }
        let paths = self
            .refuse_engine_sockets
            .as_ref()
            .into_iter()
            .flatten()
            .map(|p| ("refuse_engine_sockets", p))
            .chain(
                self.allowed_bind_roots
                    .as_ref()
                    .into_iter()
                    .flatten()
                    .map(|p| ("allowed_bind_roots", p)),
            )
            .chain(self.engine_roots.iter().map(|p| ("engine_roots", p)));
        for (key, p) in paths {
            if !p.is_absolute() {
                return Err(format!(
                    "[security] {key}: {} is not an absolute path",
                    p.display()
                ));
            }
        }
        Ok(())
    }
}

/// A capability name as written in a policy or spec: `CAP_SYS_ADMIN`, `sys_admin`.
fn capability(name: &str) -> Result<caps::Capability, caps::errors::CapsError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    caps::Capability::from_str(&full)
}

/// Whether an engine made this bind source for this container itself: a path under
/// a directory named by the container's id, when the id is one the engine generated
/// (64 hex digits, as Docker and podman make them: no user picks it before the mounts
/// are fixed). Covers a moved Docker data-root and podman's storage.
fn engine_made(source: &Path, container_id: Option<&str>) -> bool {
    let Some(id) =
        container_id.filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return false;
    };
    source.components().any(|c| c.as_os_str() == id)
}

/// One clause per broken rule, each naming the rule and the offending value; empty
/// when the spec passes. `container_id` is the id the engine gave the container.
pub fn check(
    spec: &Value,
    container_id: Option<&str>,
    s: &SecuritySection,
    files: &dyn Files,
) -> Vec<String> {
    let mut out = Vec::new();
    if s.refuse_privileged {
        if let Some(why) = privileged(spec) {
            out.push(format!(
                "privileged container: {why} ([security] refuse_privileged)"
            ));
        }
    }
    if let Some(kinds) = s.refuse_host_namespaces.as_ref() {
        for kind in kinds {
            if let Some(why) = host_namespace(spec, kind, files) {
                out.push(format!(
                    "host {kind} namespace: {why} ([security] refuse_host_namespaces)"
                ));
            }
        }
    }
    // Each configured path resolved once, not once per bind mount (canonicalize is a
    // few syscalls, and this runs on every create).
    let resolve_all =
        |paths: &[PathBuf]| -> Vec<PathBuf> { paths.iter().map(|p| files.resolve(p)).collect() };
    let sockets = s.refuse_engine_sockets.as_ref().map(|v| resolve_all(v));
    let roots = s
        .allowed_bind_roots
        .as_ref()
        .map(|v| (v, resolve_all(v), resolve_all(&s.engine_roots)));
    for m in bind_mounts(spec) {
        let source = files.resolve(Path::new(m.source));
        if let Some(sockets) = &sockets {
            if let Some(socket) = engine_socket(&source, sockets, files) {
                let what = if socket == source {
                    format!("engine socket {}", socket.display())
                } else {
                    format!(
                        "{}, which holds engine socket {}",
                        source.display(),
                        socket.display()
                    )
                };
                out.push(format!(
                    "bind mount of {what} at {} ([security] refuse_engine_sockets)",
                    m.destination
                ));
                continue;
            }
        }
        if let Some((roots, resolved, engine)) = &roots {
            let under = |r: &PathBuf| source.starts_with(r);
            if !resolved.iter().any(under)
                && !engine.iter().any(under)
                && !engine_made(&source, container_id)
            {
                let names: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
                out.push(format!(
                    "bind mount of {} at {} is outside the allowed roots {} ([security] allowed_bind_roots)",
                    source.display(),
                    m.destination,
                    if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
                ));
            }
        }
    }
    out.extend(capability_refusal(capabilities(spec).into_iter(), s));
    out
}

/// The clause for capabilities beyond the allowlist, if any.
fn capability_refusal<'a>(
    names: impl Iterator<Item = &'a str>,
    s: &SecuritySection,
) -> Option<String> {
    let allowed: Vec<caps::Capability> = s
        .allowed_capabilities
        .as_ref()?
        .iter()
        .filter_map(|c| capability(c).ok())
        .collect();
    let mut extra: Vec<&str> = Vec::new();
    for name in names {
        let known = capability(name).ok();
        if !known.is_some_and(|c| allowed.contains(&c)) && !extra.contains(&name) {
            extra.push(name);
        }
    }
    (!extra.is_empty()).then(|| {
        format!(
            "capabilit{} {} not in [security] allowed_capabilities",
            if extra.len() == 1 { "y" } else { "ies" },
            extra.join(", ")
        )
    })
}

/// The rules that apply to a process started in a running container (`docker exec`,
/// runc's `--process` JSON and `--cap` flags): capabilities.
pub fn check_exec(process: Option<&Value>, caps: &[String], s: &SecuritySection) -> Vec<String> {
    let wrapped = process.map(|p| serde_json::json!({ "process": p }));
    let mut names = wrapped.as_ref().map(capabilities).unwrap_or_default();
    names.extend(caps.iter().map(String::as_str));
    capability_refusal(names.into_iter(), s)
        .map(|c| format!("exec: {c}"))
        .into_iter()
        .collect()
}

/// Why the spec is privileged: a device cgroup rule that allows every device.
pub fn privileged(spec: &Value) -> Option<String> {
    let rules = spec.pointer("/linux/resources/devices")?.as_array()?;
    rules.iter().find_map(|r| {
        let all_types = r
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(|t| t == "a");
        let any_number =
            r.get("major").is_none_or(Value::is_null) && r.get("minor").is_none_or(Value::is_null);
        (r.get("allow") == Some(&Value::Bool(true)) && all_types && any_number)
            .then(|| "every host device allowed (linux.resources.devices)".to_string())
    })
}

/// Why the container shares the host's namespace of this kind: the spec has no such
/// namespace, or joins the host's by path.
fn host_namespace(spec: &Value, kind: &str, files: &dyn Files) -> Option<String> {
    let proc_name = NAMESPACES.iter().find(|(k, _)| *k == kind)?.1;
    let list = spec.pointer("/linux/namespaces")?.as_array()?;
    match list
        .iter()
        .find(|n| n.get("type").and_then(Value::as_str) == Some(kind))
    {
        None => Some(format!("linux.namespaces has no {kind} namespace")),
        Some(n) => {
            let path = n
                .get("path")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())?;
            files
                .is_host_namespace(proc_name, Path::new(path))
                .then(|| format!("joins {path}, the host's"))
        }
    }
}

/// The engine socket a bind source exposes: the socket itself, one inside it, or a
/// socket named like an engine's. `sockets` are resolved already.
fn engine_socket(source: &Path, sockets: &[PathBuf], files: &dyn Files) -> Option<PathBuf> {
    if let Some(socket) = sockets.iter().find(|socket| socket.starts_with(source)) {
        return Some(socket.clone());
    }
    let named = source
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| SOCKET_NAMES.contains(&n));
    (named && files.meta(source).is_some_and(|m| m.is_socket)).then(|| normalize(source))
}

/// Every capability the process may hold, in any set.
fn capabilities(spec: &Value) -> Vec<&str> {
    let Some(sets) = spec
        .pointer("/process/capabilities")
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    sets.values()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfs::tests::FakeFiles;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "process": {"capabilities": {
                "bounding": DOCKER_DEFAULT_CAPABILITIES,
                "effective": DOCKER_DEFAULT_CAPABILITIES,
                "permitted": DOCKER_DEFAULT_CAPABILITIES,
            }},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind",
                 "source": "/var/lib/docker/containers/abc/hosts", "options": ["rbind", "rprivate"]},
            ],
            "linux": {
                "namespaces": [{"type": "mount"}, {"type": "network"}, {"type": "uts"}, {"type": "pid"}, {"type": "ipc"}],
                "resources": {"devices": [{"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}
            }
        })
    }

    fn with(mut v: Value, pointer: &str, value: Value) -> Value {
        *v.pointer_mut(pointer).unwrap() = value;
        v
    }

    fn bind(source: &str, dest: &str) -> Value {
        let mut v = base();
        v["mounts"].as_array_mut().unwrap().push(
            json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind"]}),
        );
        v
    }

    fn files() -> FakeFiles {
        let mut f = FakeFiles::default()
            .link("/var/run", "/run")
            .socket("/srv/ci/docker.sock")
            .socket("/srv/ci/other.sock");
        f.host_namespaces.push("/proc/1/ns/net".into());
        f
    }

    #[test]
    fn rules_table() {
        let roots = SecuritySection {
            allowed_bind_roots: Switch::On(vec!["/home".into(), "/data".into()]),
            ..Default::default()
        };
        let off = SecuritySection {
            refuse_privileged: false,
            refuse_host_namespaces: Switch::Off,
            refuse_engine_sockets: Switch::Off,
            allowed_bind_roots: Switch::Off,
            engine_roots: Vec::new(),
            allowed_capabilities: Switch::Off,
        };
        let d = SecuritySection::default();
        let mut net_host = base();
        net_host["linux"]["namespaces"] =
            json!([{"type": "mount"}, {"type": "pid"}, {"type": "ipc"}]);
        let mut caps = base();
        caps["process"]["capabilities"]["bounding"]
            .as_array_mut()
            .unwrap()
            .extend([json!("CAP_SYS_ADMIN"), json!("CAP_SYS_PTRACE")]);
        let cases: Vec<(&str, Value, &SecuritySection, Vec<&str>)> = vec![
            ("docker's ordinary container", base(), &d, vec![]),
            ("engine's own binds with roots set", base(), &roots, vec![]),
            (
                "privileged",
                with(base(), "/linux/resources/devices", json!([{"allow": true, "access": "rwm"}])),
                &d,
                vec!["privileged container: every host device allowed (linux.resources.devices) ([security] refuse_privileged)"],
            ),
            (
                "type a without numbers is every device too",
                with(base(), "/linux/resources/devices", json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "a", "major": null, "access": "rwm"}])),
                &d,
                vec!["privileged container: every host device allowed (linux.resources.devices) ([security] refuse_privileged)"],
            ),
            (
                "a denied wildcard is not privileged",
                with(base(), "/linux/resources/devices", json!([{"allow": false, "access": "rwm"}])),
                &d,
                vec![],
            ),
            (
                "host network",
                net_host.clone(),
                &d,
                vec!["host network namespace: linux.namespaces has no network namespace ([security] refuse_host_namespaces)"],
            ),
            ("host network allowed", net_host, &off, vec![]),
            (
                "joining the host's namespace by path",
                with(base(), "/linux/namespaces/1", json!({"type": "network", "path": "/proc/1/ns/net"})),
                &d,
                vec!["host network namespace: joins /proc/1/ns/net, the host's ([security] refuse_host_namespaces)"],
            ),
            (
                "joining another container's namespace",
                with(base(), "/linux/namespaces/1", json!({"type": "network", "path": "/proc/4242/ns/net"})),
                &d,
                vec![],
            ),
            (
                "docker socket through the /var/run link",
                bind("/var/run/docker.sock", "/s"),
                &d,
                vec!["bind mount of engine socket /run/docker.sock at /s ([security] refuse_engine_sockets)"],
            ),
            (
                "a directory holding a socket",
                bind("/var/run", "/hostrun"),
                &d,
                vec!["bind mount of /run, which holds engine socket /run/docker.sock at /hostrun ([security] refuse_engine_sockets)"],
            ),
            (
                "a socket named like an engine's elsewhere",
                bind("/srv/ci/docker.sock", "/d.sock"),
                &d,
                vec!["bind mount of engine socket /srv/ci/docker.sock at /d.sock ([security] refuse_engine_sockets)"],
            ),
            ("another socket", bind("/srv/ci/other.sock", "/o.sock"), &d, vec![]),
            ("sockets allowed", bind("/run/docker.sock", "/s"), &off, vec![]),
            ("bind under a root", bind("/home/alice/proj", "/w"), &roots, vec![]),
            (
                "bind outside the roots",
                bind("/etc", "/hostetc"),
                &roots,
                vec!["bind mount of /etc at /hostetc is outside the allowed roots /home, /data ([security] allowed_bind_roots)"],
            ),
            (
                "dot-dot does not escape",
                bind("/home/../etc", "/x"),
                &roots,
                vec!["bind mount of /etc at /x is outside the allowed roots /home, /data ([security] allowed_bind_roots)"],
            ),
            ("a prefix is not a parent", bind("/homeless", "/x"), &roots, vec!["bind mount of /homeless at /x is outside the allowed roots /home, /data ([security] allowed_bind_roots)"]),
            ("any bind when roots are off", bind("/etc", "/x"), &d, vec![]),
            (
                "added capabilities",
                caps.clone(),
                &d,
                vec!["capabilities CAP_SYS_ADMIN, CAP_SYS_PTRACE not in [security] allowed_capabilities"],
            ),
            ("capabilities allowed", caps, &off, vec![]),
        ];
        for (name, spec, section, want) in cases {
            assert_eq!(check(&spec, None, section, &files()), want, "{name}");
        }
    }

    #[test]
    fn an_engine_generated_id_in_the_path_marks_the_engines_own_mounts() {
        let id = "5721f0bcee6438f97cb80ec6b22a67ab1dbc49845d6a11a7c8b998f88d4e09f9";
        let s = SecuritySection {
            allowed_bind_roots: Switch::On(vec!["/home".into()]),
            ..Default::default()
        };
        let moved = bind(&format!("/data/docker/containers/{id}/hosts"), "/etc/hosts");
        assert_eq!(check(&moved, Some(id), &s, &files()), Vec::<String>::new());
        // Another container's files, and ids a user could pick, do not count.
        let other = "0".repeat(64);
        assert_eq!(check(&moved, Some(&other), &s, &files()).len(), 1);
        let picked = bind("/etc/shadow", "/x");
        assert_eq!(check(&picked, Some("etc"), &s, &files()).len(), 1);
    }

    #[test]
    fn exec_is_held_to_the_capability_allowlist() {
        let d = SecuritySection::default();
        let plain = json!({"capabilities": {"bounding": DOCKER_DEFAULT_CAPABILITIES}});
        assert!(check_exec(Some(&plain), &[], &d).is_empty());
        let privileged = json!({"capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"]}});
        assert_eq!(
            check_exec(Some(&privileged), &[], &d),
            vec!["exec: capability CAP_SYS_ADMIN not in [security] allowed_capabilities"]
        );
        assert_eq!(check_exec(None, &["CAP_NET_ADMIN".into()], &d).len(), 1);
        let off = SecuritySection {
            allowed_capabilities: Switch::Off,
            ..Default::default()
        };
        assert!(check_exec(Some(&privileged), &[], &off).is_empty());
    }

    #[test]
    fn an_allowlist_names_capabilities_either_way() {
        let mut spec = base();
        spec["process"]["capabilities"]["effective"]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_PTRACE"));
        let mut s = SecuritySection::default();
        if let Switch::On(list) = &mut s.allowed_capabilities {
            list.push("sys_ptrace".into());
        }
        assert!(s.validate().is_ok());
        assert_eq!(check(&spec, None, &s, &files()), Vec::<String>::new());
    }

    #[test]
    fn captured_specs_pass_the_default_rules() {
        let mut d = SecuritySection {
            allowed_bind_roots: Switch::On(vec!["/home".into()]),
            ..Default::default()
        };
        d.engine_roots.push("/var/lib/containers".into());
        for entry in std::fs::read_dir(crate::SPEC_FIXTURES).unwrap() {
            let path = entry.unwrap().path();
            let spec: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(
                check(&spec, None, &d, &files()),
                Vec::<String>::new(),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn validation_names_the_key_and_value() {
        let bad = |s: SecuritySection| s.validate().unwrap_err();
        assert!(bad(SecuritySection {
            refuse_host_namespaces: Switch::On(vec!["net".into()]),
            ..Default::default()
        })
        .contains("unknown namespace \"net\""));
        assert!(bad(SecuritySection {
            allowed_capabilities: Switch::On(vec!["CAP_FLY".into()]),
            ..Default::default()
        })
        .contains("allowed_capabilities: unknown capability \"CAP_FLY\""));
        assert!(bad(SecuritySection {
            allowed_bind_roots: Switch::On(vec!["home".into()]),
            ..Default::default()
        })
        .contains("allowed_bind_roots: home is not an absolute path"));
    }
}
