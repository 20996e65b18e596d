//! `inject = "devices"`: the NVIDIA device nodes of the chosen GPUs and their device
//! cgroup rules, written into the spec. Rules live in the spec, never written from a
//! hook: a systemd reload rewrites device cgroups from what the runtime was told.

use crate::spec::{Spec, SpecError};
use serde_json::json;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A character device as the spec describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Path inside the container.
    pub path: String,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Node {
    /// Reads the character device `dir/name` on the host, to be `/dev/name` inside.
    /// `Ok(None)` when it does not exist.
    pub fn stat(dir: &Path, name: &str) -> Result<Option<Node>, String> {
        let host = dir.join(name);
        let m = match std::fs::metadata(&host) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", host.display())),
        };
        if !m.file_type().is_char_device() {
            return Err(format!(
                "{} is not a character device ([gpu] device_dir)",
                host.display()
            ));
        }
        Ok(Some(Node {
            path: format!("/dev/{name}"),
            major: libc::major(m.rdev()).into(),
            minor: libc::minor(m.rdev()).into(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }))
    }
}

/// The nodes every GPU container needs beside its GPUs, as found in `dir`:
/// nvidiactl (required), nvidia-uvm and nvidia-uvm-tools (created on first CUDA use by
/// nvidia-modprobe, so taken when present).
pub fn control_nodes(dir: &Path) -> Result<Vec<Node>, String> {
    let mut out = Vec::new();
    for (name, required) in [
        ("nvidiactl", true),
        ("nvidia-uvm", false),
        ("nvidia-uvm-tools", false),
    ] {
        match Node::stat(dir, name)? {
            Some(n) => out.push(n),
            None if required => {
                return Err(format!(
                    "no {} (is the NVIDIA driver loaded? [gpu] device_dir)",
                    dir.join(name).display()
                ))
            }
            None => {}
        }
    }
    Ok(out)
}

/// Adds `nodes` to `linux.devices` (replacing an entry of the same path) and an allow
/// rule for each to `linux.resources.devices` (unless the same rule is there).
/// Idempotent. Returns whether the spec changed.
pub fn add(spec: &mut Spec, nodes: &[Node]) -> Result<bool, SpecError> {
    let mut changed = false;
    for n in nodes {
        let entry = json!({
            "path": n.path, "type": "c", "major": n.major, "minor": n.minor,
            "fileMode": n.mode, "uid": n.uid, "gid": n.gid,
        });
        changed |= spec.upsert(&["linux"], "devices", "path", entry)?;
    }
    for n in nodes {
        let rule = json!({"allow": true, "type": "c", "major": n.major, "minor": n.minor, "access": "rwm"});
        changed |= spec.push_unique(&["linux", "resources"], "devices", rule)?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn node(name: &str, major: u64, minor: u64) -> Node {
        Node {
            path: format!("/dev/{name}"),
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn adds_nodes_and_rules_once_keeping_the_rest() {
        let mut spec = Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({"linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"}], "memory": {"limit": 1}},
                "namespaces": [{"type": "pid"}],
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
            }}),
        };
        let nodes = [node("nvidia3", 195, 3), node("nvidiactl", 195, 255)];
        assert!(add(&mut spec, &nodes).unwrap());
        let linux = &spec.json["linux"];
        assert_eq!(linux["devices"].as_array().unwrap().len(), 3);
        assert_eq!(
            linux["devices"][1],
            json!({"path": "/dev/nvidia3", "type": "c", "major": 195, "minor": 3, "fileMode": 0o666, "uid": 0, "gid": 0})
        );
        assert_eq!(
            linux["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"},
                   {"allow": true, "type": "c", "major": 195, "minor": 3, "access": "rwm"},
                   {"allow": true, "type": "c", "major": 195, "minor": 255, "access": "rwm"}])
        );
        assert_eq!(linux["resources"]["memory"]["limit"], 1);
        assert_eq!(linux["namespaces"], json!([{"type": "pid"}]));
        let once = spec.json.clone();
        assert!(!add(&mut spec, &nodes).unwrap());
        assert_eq!(spec.json, once);
        // No linux.devices at all (containerd): created.
        let mut bare = Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({"linux": {}}),
        };
        assert!(add(&mut bare, &nodes[..1]).unwrap());
        assert_eq!(bare.json["linux"]["devices"][0]["path"], "/dev/nvidia3");
    }

    #[test]
    fn stats_real_nodes() {
        // /dev/null is a character device on every Linux host: 1:3.
        let n = Node::stat(Path::new("/dev"), "null").unwrap().unwrap();
        assert_eq!((n.path.as_str(), n.major, n.minor), ("/dev/null", 1, 3));
        assert_eq!(
            Node::stat(Path::new("/dev"), "nvidia-none-such").unwrap(),
            None
        );
        let err = Node::stat(Path::new("/"), "etc").unwrap_err();
        assert!(err.contains("not a character device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = control_nodes(dir.path()).unwrap_err();
        assert!(err.contains("nvidiactl"), "{err}");
    }
}
