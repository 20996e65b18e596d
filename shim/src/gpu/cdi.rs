//! `inject = "cdi"`: the CDI edits of the chosen GPUs, from the CDI specs in
//! `[gpu] cdi_spec_dirs` (as `nvidia-ctk cdi generate` writes them), read and applied
//! by the container-device-interface crate.
//!
//! That crate brings a large dependency tree (a JSON schema validator with an HTTP
//! client); linked into mlenv-runtime it made every runtime call, `state` and `start`
//! included, 0.2 ms slower (relocations of a 4x larger binary; docs/benchmarks.md).
//! So the crate runs only in the `mlenv` admin binary ([`resolve`], behind
//! `mlenv cdi list` and `mlenv cdi edits`), which the runtime calls in `cdi` mode only.
//!
//! The crate edits an `oci_spec` Spec, which drops every field it does not model. So
//! the edits are applied to an empty skeleton carrying only the container's user, and
//! what they added is merged into the raw config.json ([`merge`]): nothing the engine
//! wrote is lost.

use super::inject::InjectError;
use super::probe::GpuInfo;
use crate::spec::{Spec, SpecError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The resolution itself, with the container-device-interface crate.
#[cfg(feature = "cdi")]
pub mod resolve {
    use container_device_interface::cache::Cache;
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn shown(dirs: &[PathBuf]) -> String {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn cache(dirs: &[PathBuf]) -> (Cache, Result<(), String>) {
        let mut cache = Cache::new(
            dirs.iter().map(|d| d.display().to_string()).collect(),
            HashMap::new(),
            HashMap::new(),
        );
        let refreshed = cache.refresh().map_err(|e| e.to_string());
        (cache, refreshed)
    }

    /// The qualified names of the devices of `kind` in `dirs`. Specs that do not
    /// parse are skipped when others provide devices of `kind`; with none, their
    /// errors are the error.
    pub fn devices(dirs: &[PathBuf], kind: &str) -> Result<Vec<String>, String> {
        let (mut cache, refreshed) = cache(dirs);
        let prefix = format!("{kind}=");
        let names: Vec<String> = cache
            .list_devices()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        if names.is_empty() {
            return Err(match refreshed {
                Err(e) => format!("no usable CDI spec for {kind} in {}: {e}", shown(dirs)),
                Ok(()) => format!(
                    "no CDI device of kind {kind} in {}; generate them with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
                    shown(dirs)
                ),
            });
        }
        Ok(names)
    }

    /// The edits of `names` applied to an empty spec of a container running as
    /// uid:gid, as JSON.
    pub fn edits(dirs: &[PathBuf], uid: u32, gid: u32, names: &[String]) -> Result<Value, String> {
        let (mut cache, _) = cache(dirs);
        let skeleton = json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": uid, "gid": gid}, "cwd": "/", "env": []},
            "root": {"path": "rootfs"},
            "mounts": [],
            "hooks": {},
            "linux": {"devices": [], "resources": {"devices": []}},
        });
        let mut oci: oci_spec::runtime::Spec =
            serde_json::from_value(skeleton).map_err(|e| e.to_string())?;
        cache
            .inject_devices(Some(&mut oci), names.to_vec())
            .map_err(|e| format!("{e} ({})", shown(dirs)))?;
        serde_json::to_value(&oci).map_err(|e| e.to_string())
    }
}

/// The CDI devices of one kind, as `mlenv cdi list` found them.
#[derive(Debug)]
pub struct Devices {
    names: Vec<String>,
    dirs: Vec<PathBuf>,
    kind: String,
    /// The `mlenv` binary that resolves.
    helper: PathBuf,
}

impl Devices {
    /// Lists the devices of `kind` in `dirs` through `helper` (`mlenv cdi list`).
    pub fn load(dirs: &[PathBuf], kind: &str, helper: &Path) -> Result<Devices, String> {
        let mut args = vec![
            "cdi".into(),
            "list".into(),
            "--json".into(),
            "--kind".into(),
            kind.into(),
        ];
        args.extend(dirs.iter().map(|d| d.display().to_string()));
        let names = super::helper::call::<Value>(helper, &args)?
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Devices {
            names,
            dirs: dirs.to_vec(),
            kind: kind.to_string(),
            helper: helper.to_path_buf(),
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
    pub fn apply(&self, spec: &mut Spec, names: &[String]) -> Result<bool, InjectError> {
        let (uid, gid) = spec.user();
        let mut args = vec![
            "cdi".into(),
            "edits".into(),
            "--uid".into(),
            uid.to_string(),
            "--gid".into(),
            gid.to_string(),
        ];
        args.extend(self.dirs.iter().map(|d| d.display().to_string()));
        args.push("--".into());
        args.extend(names.iter().cloned());
        let edits: Value = super::helper::call(&self.helper, &args).map_err(InjectError::Cdi)?;
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
    for (path, key, id, from) in [
        (&["linux"][..], "devices", "path", "/linux/devices"),
        (&[][..], "mounts", "destination", "/mounts"),
    ] {
        for item in list(from) {
            changed |= spec.upsert(path, key, id, item)?;
        }
    }
    for (path, key, from) in [
        (
            &["linux", "resources"][..],
            "devices",
            "/linux/resources/devices",
        ),
        (
            &["process", "user"][..],
            "additionalGids",
            "/process/user/additionalGids",
        ),
    ] {
        for item in list(from) {
            changed |= spec.push_unique(path, key, item)?;
        }
    }
    if let Some(hooks) = edits.get("hooks").and_then(Value::as_object) {
        for (stage, items) in hooks {
            for item in items.as_array().cloned().unwrap_or_default() {
                changed |= spec.push_unique(&["hooks"], stage, item)?;
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    use crate::gpu::probe::tests::gpu;

    #[test]
    #[cfg(feature = "cdi")]
    fn names_by_uuid_then_index_and_merges_edits_keeping_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nvidia.json"), CDI).unwrap();
        let dirs = [dir.path().to_path_buf()];
        let names = resolve::devices(&dirs, "nvidia.com/gpu").unwrap();
        let found = Devices {
            names,
            dirs: dirs.to_vec(),
            kind: "nvidia.com/gpu".into(),
            helper: PathBuf::from("/nonexistent"),
        };
        let g1 = gpu(1, "GPU-11111111-1111-1111-1111-111111111111");
        let g2 = gpu(2, "GPU-22222222-2222-2222-2222-222222222222");
        let g3 = gpu(3, "GPU-33333333-3333-3333-3333-333333333333");
        assert_eq!(
            found.name_for(&g1).as_deref(),
            Some("nvidia.com/gpu=GPU-11111111-1111-1111-1111-111111111111")
        );
        assert_eq!(found.name_for(&g2).as_deref(), Some("nvidia.com/gpu=2"));
        assert_eq!(found.name_for(&g3), None);

        let fixture = PathBuf::from(format!("{}/docker-20.10-run.json", crate::SPEC_FIXTURES));
        let original: Value =
            serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
        let mut spec = Spec {
            path: fixture.clone(),
            json: original.clone(),
        };
        let names = [found.name_for(&g1).unwrap(), found.name_for(&g2).unwrap()];
        let edits = resolve::edits(&dirs, 0, 0, &names).unwrap();
        assert!(merge(&mut spec, &edits).unwrap());
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
        assert!(!merge(&mut spec, &edits).unwrap());
        assert_eq!(spec.json, once);

        // The same through the `mlenv` binary, as mlenv-runtime calls it.
        let Some(helper) = crate::gpu::probe::tests::built("mlenv") else {
            return;
        };
        let found = Devices::load(&dirs, "nvidia.com/gpu", &helper).unwrap();
        assert_eq!(found.name_for(&g2).as_deref(), Some("nvidia.com/gpu=2"));
        let mut again = Spec {
            path: fixture.clone(),
            json: original.clone(),
        };
        assert!(found.apply(&mut again, &names).unwrap());
        assert_eq!(again.json, once);
        let err = found
            .apply(&mut again, &["nvidia.com/gpu=9".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nvidia.com/gpu=9"), "{err}");
    }

    #[test]
    #[cfg(feature = "cdi")]
    fn missing_specs_say_how_to_make_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve::devices(&[dir.path().to_path_buf()], "nvidia.com/gpu").unwrap_err();
        assert!(err.contains("nvidia-ctk cdi generate"), "{err}");
        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        let err = resolve::devices(&[dir.path().to_path_buf()], "nvidia.com/gpu").unwrap_err();
        assert!(
            err.starts_with("no usable CDI spec for nvidia.com/gpu"),
            "{err}"
        );
    }
}
