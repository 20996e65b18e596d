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
                &super::cdi::helper_beside_me(),
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
