//! `inject = "cdi"`: the CDI edits of the chosen GPUs, from the CDI specs in
//! `[gpu] cdi_spec_dirs` (as `nvidia-ctk cdi generate` writes them), read and applied
//! by the container-device-interface crate.
//!
//! The crate edits an `oci_spec` Spec, which drops every field it does not model. So
//! the edits are applied to an empty skeleton carrying only the container's user, and
//! what they added is merged into the raw config.json: nothing the engine wrote is
//! lost.

use super::inject::InjectError;
use super::probe::GpuInfo;
use crate::spec::{Spec, SpecError};
use container_device_interface::cache::Cache;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

/// The CDI devices of one kind found in the spec directories.
pub struct Devices {
    cache: Cache,
    names: Vec<String>,
    dirs: Vec<PathBuf>,
    kind: String,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("names", &self.names)
            .field("dirs", &self.dirs)
            .finish()
    }
}

impl Devices {
    /// Reads every CDI spec in `dirs`. Specs that do not parse are skipped when others
    /// provide devices of `kind`; with none, their errors are the error.
    pub fn load(dirs: &[PathBuf], kind: &str) -> Result<Devices, String> {
        let mut cache = Cache::new(
            dirs.iter().map(|d| d.display().to_string()).collect(),
            HashMap::new(),
            HashMap::new(),
        );
        let refreshed = cache.refresh().map_err(|e| e.to_string());
        let prefix = format!("{kind}=");
        let names: Vec<String> = cache
            .list_devices()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        let shown = dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if names.is_empty() {
            return Err(match refreshed {
                Err(e) => format!("no usable CDI spec for {kind} in {shown}: {e}"),
                Ok(()) => format!(
                    "no CDI device of kind {kind} in {shown}; generate them with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
                ),
            });
        }
        Ok(Devices {
            cache,
            names,
            dirs: dirs.to_vec(),
            kind: kind.to_string(),
        })
    }

    /// The directories read, for messages.
    pub fn dirs(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The qualified CDI name of `g`: by UUID when the specs have it (stable across
    /// reboots and driver reloads), else by index.
    pub fn name_for(&self, g: &GpuInfo) -> Option<String> {
        [g.uuid.clone(), g.index.to_string()]
            .into_iter()
            .map(|id| format!("{}={id}", self.kind))
            .find(|n| self.names.contains(n))
    }

    /// Applies the edits of `names` (qualified) to `spec`. Idempotent. Returns whether
    /// the spec changed.
    pub fn apply(&mut self, spec: &mut Spec, names: &[String]) -> Result<bool, InjectError> {
        let (uid, gid) = spec.user();
        let skeleton = json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": uid, "gid": gid}, "cwd": "/", "env": []},
            "root": {"path": "rootfs"},
            "mounts": [],
            "hooks": {},
            "linux": {"devices": [], "resources": {"devices": []}},
        });
        let dirs = self.dirs();
        let cdi_error = |e: String| InjectError::Cdi(format!("{e} ({dirs})"));
        let mut oci: oci_spec::runtime::Spec =
            serde_json::from_value(skeleton).map_err(|e| cdi_error(e.to_string()))?;
        self.cache
            .inject_devices(Some(&mut oci), names.to_vec())
            .map_err(|e| cdi_error(e.to_string()))?;
        let edits = serde_json::to_value(&oci).map_err(|e| cdi_error(e.to_string()))?;
        Ok(merge(spec, &edits)?)
    }
}

/// Merges what CDI added to the skeleton into the raw spec: environment, device nodes
/// and their rules, mounts (by destination), hooks, additional gids.
fn merge(spec: &mut Spec, edits: &Value) -> Result<bool, SpecError> {
    let mut changed = false;
    let list = |p: &str| -> Vec<Value> {
        edits
            .pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for e in list("/process/env") {
        if let Some((k, v)) = e.as_str().and_then(|s| s.split_once('=')) {
            changed |= spec.set_env(k, v)?;
        }
    }
    let keyed = |spec: &mut Spec, path: &[&str], key: &str, id: &str, items: Vec<Value>| {
        let arr = spec.array_mut(path, key)?;
        let mut changed = false;
        for item in items {
            let same = |v: &Value| v.get(id).is_some() && v.get(id) == item.get(id);
            match arr.iter().position(same) {
                Some(i) if arr[i] == item => {}
                Some(i) => {
                    arr[i] = item;
                    changed = true;
                }
                None => {
                    arr.push(item);
                    changed = true;
                }
            }
        }
        Ok::<bool, SpecError>(changed)
    };
    changed |= keyed(spec, &["linux"], "devices", "path", list("/linux/devices"))?;
    changed |= keyed(spec, &[], "mounts", "destination", list("/mounts"))?;
    let mut append = |path: &[&str], key: &str, items: Vec<Value>| {
        let arr = spec.array_mut(path, key)?;
        for item in items {
            if !arr.contains(&item) {
                arr.push(item);
                changed = true;
            }
        }
        Ok::<(), SpecError>(())
    };
    append(
        &["linux", "resources"],
        "devices",
        list("/linux/resources/devices"),
    )?;
    append(
        &["process", "user"],
        "additionalGids",
        list("/process/user/additionalGids"),
    )?;
    if let Some(hooks) = edits.get("hooks").and_then(Value::as_object) {
        for (stage, items) in hooks {
            append(
                &["hooks"],
                stage,
                items.as_array().cloned().unwrap_or_default(),
            )?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::probe::GpuInfo;

    const CDI: &str = r#"{
  "cdiVersion": "0.5.0",
  "kind": "nvidia.com/gpu",
  "devices": [
    {"name": "GPU-11111111-1111-1111-1111-111111111111",
     "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1}]}},
    {"name": "2",
     "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia2", "type": "c", "major": 195, "minor": 2}]}}
  ],
  "containerEdits": {
    "env": ["NVIDIA_VISIBLE_DEVICES=void"],
    "deviceNodes": [{"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}],
    "mounts": [{"hostPath": "/usr/lib/libcuda.so.1", "containerPath": "/usr/lib/libcuda.so.1",
                "options": ["ro", "nosuid", "nodev", "bind"]}],
    "hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk",
               "args": ["nvidia-ctk", "hook", "update-ldcache"]}]
  }
}"#;

    fn gpu(index: u32, uuid: &str) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.into(),
            name: String::new(),
            minor: index,
            memory_total: 0,
            memory_used: 0,
            memory_free: 0,
            utilization: 0,
            processes: vec![],
            mig: None,
        }
    }

    #[test]
    fn names_by_uuid_then_index_and_merges_edits_keeping_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nvidia.json"), CDI).unwrap();
        let mut found = Devices::load(&[dir.path().to_path_buf()], "nvidia.com/gpu").unwrap();
        let g1 = gpu(1, "GPU-11111111-1111-1111-1111-111111111111");
        let g2 = gpu(2, "GPU-22222222-2222-2222-2222-222222222222");
        let g3 = gpu(3, "GPU-33333333-3333-3333-3333-333333333333");
        assert_eq!(
            found.name_for(&g1).as_deref(),
            Some("nvidia.com/gpu=GPU-11111111-1111-1111-1111-111111111111")
        );
        assert_eq!(found.name_for(&g2).as_deref(), Some("nvidia.com/gpu=2"));
        assert_eq!(found.name_for(&g3), None);

        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/specs/docker-20.10-run.json"
        );
        let original: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        let mut spec = Spec {
            path: fixture.into(),
            json: original.clone(),
        };
        let names = [found.name_for(&g1).unwrap(), found.name_for(&g2).unwrap()];
        assert!(found.apply(&mut spec, &names).unwrap());
        let j = &spec.json;
        let paths: Vec<&str> = j["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["path"].as_str())
            .collect();
        for p in ["/dev/nvidia1", "/dev/nvidia2", "/dev/nvidiactl"] {
            assert!(paths.contains(&p), "{paths:?}");
        }
        let rules = j["linux"]["resources"]["devices"].as_array().unwrap();
        assert!(rules.contains(&serde_json::json!(
            {"allow": true, "type": "c", "major": 195, "minor": 1, "access": "rwm"}
        )));
        // Docker's deny-all rule stays first.
        assert_eq!(rules[0], original["linux"]["resources"]["devices"][0]);
        assert!(j["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/usr/lib/libcuda.so.1"));
        assert_eq!(
            j["hooks"]["createContainer"][0]["path"],
            "/usr/bin/nvidia-ctk"
        );
        // Docker's own prestart hook is kept.
        assert_eq!(j["hooks"]["prestart"], original["hooks"]["prestart"]);
        // Everything CDI does not own is as the engine wrote it.
        for key in ["root", "hostname", "annotations", "ociVersion"] {
            assert_eq!(j.get(key), original.get(key), "{key}");
        }
        for key in ["namespaces", "maskedPaths", "readonlyPaths", "seccomp"] {
            assert_eq!(j["linux"].get(key), original["linux"].get(key), "{key}");
        }
        assert_eq!(j["process"]["args"], original["process"]["args"]);
        assert_eq!(
            j["process"]["capabilities"],
            original["process"]["capabilities"]
        );
        // Idempotent.
        let once = spec.json.clone();
        assert!(!found.apply(&mut spec, &names).unwrap());
        assert_eq!(spec.json, once);
    }

    #[test]
    fn missing_specs_say_how_to_make_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = Devices::load(&[dir.path().to_path_buf()], "nvidia.com/gpu").unwrap_err();
        assert!(err.contains("nvidia-ctk cdi generate"), "{err}");
        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        let err = Devices::load(&[dir.path().to_path_buf()], "nvidia.com/gpu").unwrap_err();
        assert!(
            err.starts_with("no usable CDI spec for nvidia.com/gpu"),
            "{err}"
        );
    }
}
