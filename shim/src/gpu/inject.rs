//! How the granted GPUs reach the container (`[gpu] inject`). Prepared before the
//! decision, so that a GPU that cannot be injected (no device node, no CDI device) is
//! not chosen; applied to the spec after it. In every mode NVIDIA_VISIBLE_DEVICES
//! names exactly the granted GPUs, by UUID.

use super::devices::{self, Node};
use super::probe::GpuInfo;
use super::request::has_nvidia_hook;
use super::select::Granted;
use crate::policy::{GpuSection, Inject};
use crate::spec::{Spec, SpecError};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot inject GPUs ([gpu] inject = \"{mode}\"): {message}")]
    Prepare { mode: &'static str, message: String },
    #[error("cannot apply CDI devices: {0}")]
    Cdi(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// Where NVIDIA's hook is looked for when the policy does not name it: a fixed list,
/// not the engine's PATH.
const HOOK_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin"];
const HOOK: &str = "nvidia-container-runtime-hook";

/// What injection needs, found before the decision.
#[derive(Debug)]
pub enum Prepared {
    /// NVIDIA's hook, to be added when the spec has none.
    Nvidia {
        add_hook: Option<PathBuf>,
    },
    Devices {
        control: Vec<Node>,
        /// Per GPU index, its /dev/nvidiaN.
        gpus: Vec<(u32, Node)>,
    },
    Cdi(Box<super::cdi::Devices>),
    /// The GPUs' device nodes are in the spec already (given to the container
    /// directly): nothing to add, and the environment is left as the user wrote it.
    InPlace,
}

fn mode_name(m: Inject) -> &'static str {
    match m {
        Inject::Nvidia => "nvidia",
        Inject::Cdi => "cdi",
        Inject::Devices => "devices",
    }
}

/// Prepares injection for `spec` on a host with `gpus`. Returns what to apply and
/// the GPUs that cannot be injected, with why.
pub fn prepare(
    policy: &GpuSection,
    spec: &Spec,
    gpus: &[GpuInfo],
) -> Result<(Prepared, Vec<(u32, String)>), InjectError> {
    let fail = |message: String| InjectError::Prepare {
        mode: mode_name(policy.inject),
        message,
    };
    let mut blocked = Vec::new();
    let prepared = match policy.inject {
        Inject::Nvidia => Prepared::Nvidia {
            add_hook: if has_nvidia_hook(spec) {
                None
            } else {
                Some(find_hook(policy.nvidia_hook.as_deref()).map_err(fail)?)
            },
        },
        Inject::Devices => {
            let control = devices::control_nodes(&policy.device_dir).map_err(fail)?;
            let mut nodes = Vec::new();
            for g in gpus {
                let name = format!("nvidia{}", g.minor);
                match Node::stat(&policy.device_dir, &name).map_err(fail)? {
                    Some(n) => nodes.push((g.index, n)),
                    None => blocked.push((
                        g.index,
                        format!(
                            "no device node {} ([gpu] device_dir)",
                            policy.device_dir.join(&name).display()
                        ),
                    )),
                }
            }
            Prepared::Devices {
                control,
                gpus: nodes,
            }
        }
        Inject::Cdi => {
            let found = super::cdi::Devices::load(
                &policy.cdi_spec_dirs,
                &policy.cdi_kind,
                &super::helper::beside_me("mlenv"),
            )
            .map_err(fail)?;
            for g in gpus {
                if found.name_for(g).is_none() {
                    blocked.push((
                        g.index,
                        format!(
                            "no CDI device {}={} or ={} in {} ([gpu] cdi_spec_dirs)",
                            policy.cdi_kind,
                            g.uuid,
                            g.index,
                            found.dirs()
                        ),
                    ));
                }
            }
            Prepared::Cdi(Box::new(found))
        }
    };
    Ok((prepared, blocked))
}

/// A hook path from the policy, else the first found in [`HOOK_DIRS`].
fn find_hook(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("{} not found ([gpu] nvidia_hook)", p.display()))
        };
    }
    HOOK_DIRS
        .iter()
        .map(|d| Path::new(d).join(HOOK))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{HOOK} not found in {}; install the NVIDIA Container Toolkit, set [gpu] nvidia_hook, or use inject = \"devices\" or \"cdi\"",
                HOOK_DIRS.join(", ")
            )
        })
}

impl Prepared {
    /// Edits `spec` so that the container gets exactly `grant`. Idempotent. Returns
    /// one line per change, for the decision record.
    pub fn apply(
        &mut self,
        spec: &mut Spec,
        grant: &[Granted],
        gpus: &[GpuInfo],
    ) -> Result<Vec<String>, InjectError> {
        let mut actions = Vec::new();
        let uuids: Vec<&str> = grant.iter().map(|g| g.uuid.as_str()).collect();
        let indexes: Vec<String> = grant.iter().map(|g| g.index.to_string()).collect();
        match self {
            Prepared::Nvidia { add_hook } => {
                if let Some(hook) = add_hook.as_ref().filter(|_| !has_nvidia_hook(spec)) {
                    let prestart = spec.array_mut(&["hooks"], "prestart")?;
                    // First, where Docker puts it: later hooks may need the devices.
                    prestart.insert(
                        0,
                        json!({
                            "path": hook,
                            "args": [HOOK, "prestart"],
                            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                        }),
                    );
                    actions.push(format!("NVIDIA hook {} added", hook.display()));
                }
            }
            Prepared::Devices { control, gpus } => {
                let mut nodes: Vec<Node> = grant
                    .iter()
                    .filter_map(|g| gpus.iter().find(|(i, _)| *i == g.index))
                    .map(|(_, n)| n.clone())
                    .collect();
                nodes.extend(control.iter().cloned());
                if devices::add(spec, &nodes)? {
                    let paths: Vec<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
                    actions.push(format!("devices {} added", paths.join(", ")));
                }
            }
            Prepared::Cdi(found) => {
                let names: Vec<String> = grant
                    .iter()
                    .filter_map(|g| gpus.iter().find(|i| i.index == g.index))
                    .filter_map(|g| found.name_for(g))
                    .collect();
                if found.apply(spec, &names)? {
                    actions.push(format!("CDI devices {} applied", names.join(", ")));
                }
            }
            // Nor is NVIDIA_VISIBLE_DEVICES set: the user's environment stays.
            Prepared::InPlace => return Ok(actions),
        }
        if spec.set_env("NVIDIA_VISIBLE_DEVICES", &uuids.join(","))? {
            actions.push(format!(
                "NVIDIA_VISIBLE_DEVICES set to GPUs {}",
                indexes.join(",")
            ));
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn gpu(index: u32) -> GpuInfo {
        crate::gpu::probe::tests::gpu(index, &format!("GPU-{index}"))
    }

    fn grant(index: u32) -> Granted {
        Granted {
            index,
            uuid: format!("GPU-{index}"),
            minor: index,
            share: None,
        }
    }

    fn spec(env: &[&str], prestart: serde_json::Value) -> Spec {
        Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({"process": {"env": env}, "hooks": {"prestart": prestart}, "linux": {}}),
        }
    }

    #[test]
    fn nvidia_mode_adds_the_hook_once_and_sets_the_uuids() {
        let policy = GpuSection {
            nvidia_hook: Some(PathBuf::from("/bin/true")),
            ..GpuSection::default()
        };
        let gpus = [gpu(0), gpu(1)];
        let docker = json!([{"path": "/proc/1/exe", "args": ["libnetwork-setkey"]}]);
        let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=0"], docker.clone());
        let (mut p, blocked) = prepare(&policy, &s, &gpus).unwrap();
        assert!(blocked.is_empty());
        let actions = p.apply(&mut s, &[grant(1)], &gpus).unwrap();
        assert_eq!(
            actions,
            [
                "NVIDIA hook /bin/true added",
                "NVIDIA_VISIBLE_DEVICES set to GPUs 1"
            ]
        );
        let hooks = s.json["hooks"]["prestart"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0]["args"], json!([HOOK, "prestart"]));
        assert_eq!(hooks[1], docker[0], "Docker's hook kept, after");
        assert_eq!(
            s.json["process"]["env"],
            json!(["NVIDIA_VISIBLE_DEVICES=GPU-1"])
        );
        let once = s.json.clone();
        assert!(p.apply(&mut s, &[grant(1)], &gpus).unwrap().is_empty());
        assert_eq!(s.json, once, "idempotent");
        // Docker's --gpus brought the hook: nothing to find or add.
        let policy = GpuSection {
            nvidia_hook: Some(PathBuf::from("/nonexistent/hook")),
            ..GpuSection::default()
        };
        let with_hook = spec(
            &[],
            json!([{"path": "/usr/bin/nvidia-container-runtime-hook", "args": [HOOK, "prestart"]}]),
        );
        assert!(prepare(&policy, &with_hook, &gpus).is_ok());
        // Without it, the hook must exist, and the message says what to do.
        let err = prepare(&policy, &spec(&[], json!([])), &gpus)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cannot inject GPUs ([gpu] inject = \"nvidia\"): /nonexistent/hook not found ([gpu] nvidia_hook)"
        );
    }

    #[test]
    fn devices_mode_blocks_gpus_without_a_node() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["nvidia0", "nvidiactl"] {
            std::os::unix::fs::symlink("/dev/null", dir.path().join(name)).unwrap();
        }
        let policy = GpuSection {
            inject: Inject::Devices,
            device_dir: dir.path().to_path_buf(),
            ..GpuSection::default()
        };
        let gpus = [gpu(0), gpu(1)];
        let mut s = spec(&[], json!([]));
        let (mut p, blocked) = prepare(&policy, &s, &gpus).unwrap();
        assert_eq!(
            blocked,
            [(
                1,
                format!(
                    "no device node {} ([gpu] device_dir)",
                    dir.path().join("nvidia1").display()
                )
            )]
        );
        let actions = p.apply(&mut s, &[grant(0)], &gpus).unwrap();
        assert_eq!(actions[0], "devices /dev/nvidia0, /dev/nvidiactl added");
        assert!(s.json["hooks"]["prestart"].as_array().unwrap().is_empty());
        // No nvidiactl: no GPU can work; the error names the path.
        std::fs::remove_file(dir.path().join("nvidiactl")).unwrap();
        let err = prepare(&policy, &s, &gpus).unwrap_err().to_string();
        assert!(
            err.contains("nvidiactl (is the NVIDIA driver loaded?"),
            "{err}"
        );
    }
}
