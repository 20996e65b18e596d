//! What GPUs a container asks for, read from its spec.
//!
//! Environment variables are the one channel every engine and compose file carries:
//! `MLENV_GPUS=N` (mlenv's own), and `NVIDIA_VISIBLE_DEVICES` (NVIDIA's: indexes, UUIDs,
//! `all`, `none`, `void`). Docker's `--gpus` reaches the runtime only as NVIDIA's
//! prestart hook plus `NVIDIA_VISIBLE_DEVICES`, and `--gpus 2` always becomes `0,1`: a
//! list `0..n-1` next to that hook is read as a count, which policy may reselect.

use super::probe::GpuInfo;
use crate::spec::Spec;
use serde::Serialize;

/// One GPU named by the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DeviceId {
    Index(u32),
    /// `GPU-...` or `MIG-...`.
    Uuid(String),
    /// The GPU whose device node has this minor number (`/dev/nvidiaN`), given to the
    /// container directly.
    Minor(u32),
}

impl DeviceId {
    /// Whether this names `g`.
    pub fn names(&self, g: &GpuInfo) -> bool {
        match self {
            DeviceId::Index(i) => g.index == *i,
            DeviceId::Uuid(u) => &g.uuid == u,
            DeviceId::Minor(m) => g.minor == *m,
        }
    }
}

/// Where the request came from, for messages and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Source {
    /// `MLENV_GPUS`.
    MlenvGpus,
    /// `NVIDIA_VISIBLE_DEVICES` set by the user or the image.
    NvidiaVisibleDevices,
    /// Docker's `--gpus`, seen as NVIDIA's hook.
    DockerGpus,
    /// GPU device nodes already in the spec: `--device /dev/nvidiaN`, or CDI devices
    /// the engine resolved (`podman --device nvidia.com/gpu=0`).
    DeviceNodes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GpuRequest {
    /// No GPU.
    None,
    /// Any `n` GPUs.
    Count { n: u32, source: Source },
    /// These GPUs.
    Devices { ids: Vec<DeviceId>, source: Source },
    /// Every GPU of the host.
    All { source: Source },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::MlenvGpus => "MLENV_GPUS",
            Source::NvidiaVisibleDevices => "NVIDIA_VISIBLE_DEVICES",
            Source::DockerGpus => "docker --gpus",
            Source::DeviceNodes => "device nodes",
        })
    }
}

/// `2 GPUs (MLENV_GPUS)`, `GPUs 1,3 (docker --gpus)`, `every GPU (...)`, `none`.
impl std::fmt::Display for GpuRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuRequest::None => f.write_str("none"),
            GpuRequest::Count { n, source } => {
                write!(f, "{n} GPU{} ({source})", if *n == 1 { "" } else { "s" })
            }
            GpuRequest::Devices { ids, source } => {
                let ids: Vec<String> = ids
                    .iter()
                    .map(|i| match i {
                        DeviceId::Index(i) => i.to_string(),
                        DeviceId::Uuid(u) => u.clone(),
                        DeviceId::Minor(m) => format!("/dev/nvidia{m}"),
                    })
                    .collect();
                write!(f, "GPUs {} ({source})", ids.join(","))
            }
            GpuRequest::All { source } => write!(f, "every GPU ({source})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("MLENV_GPUS={0:?}: expected a number of GPUs (or all)")]
    MlenvGpus(String),
    #[error("NVIDIA_VISIBLE_DEVICES={0:?}: expected GPU indexes or UUIDs separated by commas, all, none or void")]
    VisibleDevices(String),
    #[error("GPU device nodes {nodes} given to the container directly and {asked} asked for: ask one way, or name the same GPUs both ways; drop --device /dev/nvidiaN and ask with MLENV_GPUS, NVIDIA_VISIBLE_DEVICES or --gpus, or set MLENV_GPUS=0 beside the device nodes")]
    Both { nodes: String, asked: String },
}

/// NVIDIA's character major: /dev/nvidiaN is 195:N; 195:254 is nvidia-modeset and
/// 195:255 nvidiactl, which name no GPU.
const NVIDIA_MAJOR: u64 = 195;
const FIRST_CONTROL_MINOR: u64 = 254;

/// The minor numbers of the GPU device nodes already in the spec (`linux.devices`),
/// sorted: by major and minor where the entry has them (Docker's `--device` and CDI
/// fill them in from the host's node), else by a `/dev/nvidiaN` path.
///
/// None in a spec that allows every device (`--privileged`: the engine lists every
/// host node, and the container could make any; `[security] refuse_privileged` is the
/// rule for that).
pub fn gpu_nodes(spec: &Spec) -> Vec<u32> {
    if crate::security::privileged(&spec.json).is_some() {
        return Vec::new();
    }
    let Some(devices) = spec
        .json
        .pointer("/linux/devices")
        .and_then(|d| d.as_array())
    else {
        return Vec::new();
    };
    let mut minors: Vec<u32> = devices
        .iter()
        .filter_map(|d| {
            let num = |k: &str| d.get(k).and_then(serde_json::Value::as_u64);
            let minor = match (num("major"), num("minor")) {
                (Some(major), Some(minor)) => (major == NVIDIA_MAJOR
                    && minor < FIRST_CONTROL_MINOR
                    && d.get("type")
                        .and_then(|t| t.as_str())
                        .is_none_or(|t| t == "c"))
                .then_some(minor),
                _ => d
                    .get("path")
                    .and_then(|p| p.as_str())
                    .and_then(|p| p.strip_prefix("/dev/nvidia"))
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse().ok())
                    .filter(|m| *m < FIRST_CONTROL_MINOR),
            };
            minor.and_then(|m| u32::try_from(m).ok())
        })
        .collect();
    minors.sort_unstable();
    minors.dedup();
    minors
}

/// The names NVIDIA's prestart hook goes by: the toolkit's hook, which Docker's
/// `--gpus` adds, and the legacy `nvidia-container-toolkit` of podman's hooks.d.
const NVIDIA_HOOKS: &[&str] = &["nvidia-container-runtime-hook", "nvidia-container-toolkit"];

/// Whether the spec carries NVIDIA's prestart hook (Docker's `--gpus` was used), which
/// acts on NVIDIA_VISIBLE_DEVICES.
pub fn has_nvidia_hook(spec: &Spec) -> bool {
    let Some(hooks) = spec
        .json
        .pointer("/hooks/prestart")
        .and_then(|h| h.as_array())
    else {
        return false;
    };
    hooks.iter().any(|h| {
        let named = |v: Option<&serde_json::Value>| {
            v.and_then(|v| v.as_str())
                .and_then(|s| s.rsplit('/').next())
                .is_some_and(|name| NVIDIA_HOOKS.contains(&name))
        };
        named(h.get("path")) || named(h.pointer("/args/0"))
    })
}

/// Reads the request. `MLENV_GPUS` wins over `NVIDIA_VISIBLE_DEVICES` (`MLENV_GPUS=0`
/// opts a CUDA image, whose environment asks for every GPU, out of GPUs), except
/// where the engine's NVIDIA hook is in the spec (`docker run --gpus`): the hook acts
/// on NVIDIA_VISIBLE_DEVICES, so `MLENV_GPUS=0` cannot cancel that request (it would
/// hand GPUs out with no lease and no check).
///
/// GPU device nodes already in the spec (`--device /dev/nvidia3`, CDI devices an
/// engine resolved) are a request for those GPUs: they reach the container whatever
/// else happens, so they are leased like any other. Beside them, the environment may
/// say nothing, say `NVIDIA_VISIBLE_DEVICES=all` with no NVIDIA hook to act on it (a
/// CUDA image's own environment), or name GPUs (a device plugin names the GPUs whose
/// nodes it passes; `--gpus device=0`): then the nodes are the request, and the named
/// GPUs must be the same ones ([`settle_nodes`], once the host's GPUs are known). Any
/// other request beside them is an error: which of the two would the container use?
pub fn parse(spec: &Spec) -> Result<GpuRequest, RequestError> {
    let asked = parse_env(spec)?;
    let nodes = gpu_nodes(spec);
    if nodes.is_empty() {
        return Ok(asked);
    }
    match asked {
        GpuRequest::None
        | GpuRequest::All {
            source: Source::NvidiaVisibleDevices,
        } => {}
        ref a if named(a).is_some() => {}
        a => return Err(both(&nodes, &a)),
    }
    Ok(GpuRequest::Devices {
        ids: nodes.into_iter().map(DeviceId::Minor).collect(),
        source: Source::DeviceNodes,
    })
}

/// The GPUs a request names one by one: a list, or Docker's `--gpus` as the hook will
/// read it (`--gpus 2` and `--gpus device=0,1` both reach the runtime as `0,1`).
fn named(asked: &GpuRequest) -> Option<Vec<DeviceId>> {
    match asked {
        GpuRequest::Devices { ids, .. } => Some(ids.clone()),
        GpuRequest::Count {
            n,
            source: Source::DockerGpus,
        } => Some((0..*n).map(DeviceId::Index).collect()),
        _ => None,
    }
}

fn both(nodes: &[u32], asked: &GpuRequest) -> RequestError {
    RequestError::Both {
        nodes: nodes
            .iter()
            .map(|m| format!("/dev/nvidia{m}"))
            .collect::<Vec<_>>()
            .join(","),
        asked: asked.to_string(),
    }
}

/// A request of device nodes ([`parse`]) once the host's `gpus` are known. The nodes of
/// GPUs in MIG mode are dropped: such a node comes with a MIG slice (its
/// `/dev/nvidia-caps` nodes), which mlenv does not manage, and alone gives no GPU to
/// compute on. GPUs the environment names beside the nodes (MIG devices aside) must
/// be the nodes' own. Returns the request left (`None` when every node was dropped)
/// and whether any was. Other requests are returned as they are.
pub fn settle_nodes(
    request: GpuRequest,
    spec: &Spec,
    gpus: &[GpuInfo],
) -> Result<(GpuRequest, bool), RequestError> {
    let GpuRequest::Devices {
        ids,
        source: Source::DeviceNodes,
    } = request
    else {
        return Ok((request, false));
    };
    let in_mig = |m: u32| gpus.iter().any(|g| g.minor == m && g.mig == Some(true));
    let nodes: Vec<u32> = ids
        .iter()
        .filter_map(|id| match id {
            DeviceId::Minor(m) => Some(*m),
            _ => None,
        })
        .collect();
    let kept: Vec<u32> = nodes.iter().copied().filter(|&m| !in_mig(m)).collect();
    let asked = parse_env(spec).unwrap_or(GpuRequest::None);
    if let Some(names) = named(&asked) {
        let mut minors: Vec<Option<u32>> = names
            .iter()
            .filter(|id| !matches!(id, DeviceId::Uuid(u) if u.starts_with("MIG-")))
            .map(|id| gpus.iter().find(|g| id.names(g)).map(|g| g.minor))
            .filter(|m| m.is_none_or(|m| !in_mig(m)))
            .collect();
        minors.sort_unstable();
        minors.dedup();
        if minors != kept.iter().copied().map(Some).collect::<Vec<_>>() {
            return Err(both(&nodes, &asked));
        }
    }
    let dropped = kept.len() < nodes.len();
    let request = if kept.is_empty() {
        GpuRequest::None
    } else {
        GpuRequest::Devices {
            ids: kept.into_iter().map(DeviceId::Minor).collect(),
            source: Source::DeviceNodes,
        }
    };
    Ok((request, dropped))
}

/// The request in the environment: `MLENV_GPUS`, else `NVIDIA_VISIBLE_DEVICES`.
fn parse_env(spec: &Spec) -> Result<GpuRequest, RequestError> {
    let engine_hook = has_nvidia_hook(spec);
    if let Some(v) = spec
        .env("MLENV_GPUS")
        .filter(|v| !(engine_hook && v.trim().parse::<u32>() == Ok(0)))
    {
        let t = v.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(GpuRequest::All {
                source: Source::MlenvGpus,
            });
        }
        return match t.parse::<u32>() {
            Ok(0) => Ok(GpuRequest::None),
            Ok(n) => Ok(GpuRequest::Count {
                n,
                source: Source::MlenvGpus,
            }),
            Err(_) => Err(RequestError::MlenvGpus(v.to_string())),
        };
    }
    let Some(v) = spec.env("NVIDIA_VISIBLE_DEVICES") else {
        return Ok(GpuRequest::None);
    };
    let hook = engine_hook;
    let source = if hook {
        Source::DockerGpus
    } else {
        Source::NvidiaVisibleDevices
    };
    let t = v.trim();
    match t {
        "" | "none" | "void" => return Ok(GpuRequest::None),
        "all" => return Ok(GpuRequest::All { source }),
        _ => {}
    }
    let mut ids = Vec::new();
    for part in t.split(',').map(str::trim) {
        if let Ok(i) = part.parse::<u32>() {
            ids.push(DeviceId::Index(i));
        } else if part.starts_with("GPU-") || part.starts_with("MIG-") {
            ids.push(DeviceId::Uuid(part.to_string()));
        } else {
            return Err(RequestError::VisibleDevices(v.to_string()));
        }
    }
    // Docker's --gpus N: the hook and exactly 0..N-1.
    let is_prefix = ids
        .iter()
        .enumerate()
        .all(|(i, id)| *id == DeviceId::Index(i as u32));
    if hook && is_prefix {
        return Ok(GpuRequest::Count {
            n: ids.len() as u32,
            source: Source::DockerGpus,
        });
    }
    Ok(GpuRequest::Devices { ids, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn spec(env: &[&str], nvidia_hook: bool) -> Spec {
        let mut prestart = vec![json!({"path": "/proc/1/exe", "args": ["libnetwork-setkey"]})];
        if nvidia_hook {
            prestart.insert(0, json!({"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["nvidia-container-runtime-hook", "prestart"]}));
        }
        Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({"process": {"env": env}, "hooks": {"prestart": prestart}}),
        }
    }

    #[test]
    fn table() {
        use DeviceId::*;
        use GpuRequest as R;
        use Source::*;
        let rows: Vec<(&[&str], bool, Result<GpuRequest, RequestError>)> = vec![
            (&[], false, Ok(R::None)),
            (
                &["MLENV_GPUS=2"],
                false,
                Ok(R::Count {
                    n: 2,
                    source: MlenvGpus,
                }),
            ),
            (&["MLENV_GPUS=0"], false, Ok(R::None)),
            // A CUDA image's NVIDIA_VISIBLE_DEVICES=all, opted out.
            (
                &["MLENV_GPUS=0", "NVIDIA_VISIBLE_DEVICES=all"],
                false,
                Ok(R::None),
            ),
            // MLENV_GPUS=0 does not cancel Docker's --gpus all: still checked.
            (
                &["MLENV_GPUS=0", "NVIDIA_VISIBLE_DEVICES=all"],
                true,
                Ok(R::All { source: DockerGpus }),
            ),
            (&["MLENV_GPUS=all"], false, Ok(R::All { source: MlenvGpus })),
            (
                &["MLENV_GPUS=two"],
                false,
                Err(RequestError::MlenvGpus("two".into())),
            ),
            // MLENV_GPUS wins over an image's NVIDIA_VISIBLE_DEVICES=all.
            (
                &["NVIDIA_VISIBLE_DEVICES=all", "MLENV_GPUS=1"],
                false,
                Ok(R::Count {
                    n: 1,
                    source: MlenvGpus,
                }),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=all"],
                false,
                Ok(R::All {
                    source: NvidiaVisibleDevices,
                }),
            ),
            (&["NVIDIA_VISIBLE_DEVICES=none"], false, Ok(R::None)),
            (&["NVIDIA_VISIBLE_DEVICES=void"], true, Ok(R::None)),
            (&["NVIDIA_VISIBLE_DEVICES="], false, Ok(R::None)),
            (
                &["NVIDIA_VISIBLE_DEVICES=1,3"],
                false,
                Ok(R::Devices {
                    ids: vec![Index(1), Index(3)],
                    source: NvidiaVisibleDevices,
                }),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0,1"],
                false,
                Ok(R::Devices {
                    ids: vec![Index(0), Index(1)],
                    source: NvidiaVisibleDevices,
                }),
            ),
            // Docker's --gpus 2 and --gpus '"device=1,3"' and --gpus all.
            (
                &["NVIDIA_VISIBLE_DEVICES=0,1"],
                true,
                Ok(R::Count {
                    n: 2,
                    source: DockerGpus,
                }),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=1,3"],
                true,
                Ok(R::Devices {
                    ids: vec![Index(1), Index(3)],
                    source: DockerGpus,
                }),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=all"],
                true,
                Ok(R::All { source: DockerGpus }),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=GPU-aa, MIG-bb"],
                false,
                Ok(R::Devices {
                    ids: vec![Uuid("GPU-aa".into()), Uuid("MIG-bb".into())],
                    source: NvidiaVisibleDevices,
                }),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0,x"],
                false,
                Err(RequestError::VisibleDevices("0,x".into())),
            ),
        ];
        for (i, (env, hook, want)) in rows.into_iter().enumerate() {
            assert_eq!(
                parse(&spec(env, hook)),
                want,
                "row {i}: {env:?} hook={hook}"
            );
        }
    }

    #[test]
    fn captured_specs() {
        let dir = crate::SPEC_FIXTURES;
        let load = |name: &str| {
            let path = PathBuf::from(format!("{dir}/{name}"));
            let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            Spec { path, json }
        };
        let rows = [
            (
                "docker-20.10-gpus2.json",
                GpuRequest::Count {
                    n: 2,
                    source: Source::DockerGpus,
                },
            ),
            (
                "docker-20.10-gpus-all.json",
                GpuRequest::All {
                    source: Source::DockerGpus,
                },
            ),
            (
                "docker-20.10-gpus-device13.json",
                GpuRequest::Devices {
                    ids: vec![DeviceId::Index(1), DeviceId::Index(3)],
                    source: Source::DockerGpus,
                },
            ),
            (
                "docker-20.10-run.json",
                GpuRequest::Count {
                    n: 1,
                    source: Source::MlenvGpus,
                },
            ),
            (
                "podman-4.3-run.json",
                GpuRequest::Count {
                    n: 2,
                    source: Source::MlenvGpus,
                },
            ),
            (
                "containerd-1.6-ctr-run.json",
                GpuRequest::Count {
                    n: 1,
                    source: Source::MlenvGpus,
                },
            ),
        ];
        for (name, want) in rows {
            assert_eq!(parse(&load(name)).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn device_nodes_in_the_spec_are_a_request() {
        use DeviceId::*;
        let with = |env: &[&str], devices: serde_json::Value| {
            let mut s = spec(env, false);
            s.json["linux"] = json!({ "devices": devices });
            s
        };
        let node = |path: &str, major: u32, minor: u32| json!({"path": path, "type": "c", "major": major, "minor": minor});
        let docker = json!([
            node("/dev/nvidia3", 195, 3),
            node("/dev/nvidiactl", 195, 255),
            node("/dev/nvidia-modeset", 195, 254),
            node("/dev/nvidia-uvm", 511, 0),
            node("/dev/fuse", 10, 229),
        ]);
        let nodes = |m: &[u32]| {
            Ok(GpuRequest::Devices {
                ids: m.iter().map(|&m| Minor(m)).collect(),
                source: Source::DeviceNodes,
            })
        };
        assert_eq!(parse(&with(&[], docker.clone())), nodes(&[3]));
        // CDI's environment says void; a CUDA image opted out with MLENV_GPUS=0.
        assert_eq!(
            parse(&with(&["NVIDIA_VISIBLE_DEVICES=void"], docker.clone())),
            nodes(&[3])
        );
        assert_eq!(
            parse(&with(
                &["MLENV_GPUS=0", "NVIDIA_VISIBLE_DEVICES=all"],
                docker.clone()
            )),
            nodes(&[3])
        );
        // By number whatever the path; by path where no number is given.
        assert_eq!(
            parse(&with(
                &[],
                json!([node("/dev/gpu-b", 195, 2), {"path": "/dev/nvidia1"}, {"path": "/dev/nvidia2"}, {"path": "/dev/nvidiactl"}])
            )),
            nodes(&[1, 2])
        );
        assert_eq!(
            parse(&with(&["MLENV_GPUS=1"], docker.clone())),
            Err(RequestError::Both {
                nodes: "/dev/nvidia3".into(),
                asked: "1 GPU (MLENV_GPUS)".into()
            })
        );
        // A CUDA image's own NVIDIA_VISIBLE_DEVICES=all, with no hook to act on it.
        assert_eq!(
            parse(&with(&["NVIDIA_VISIBLE_DEVICES=all"], docker.clone())),
            nodes(&[3])
        );
        // Docker's --gpus all beside them: the hook would add every GPU.
        let mut gpus_all = with(&["NVIDIA_VISIBLE_DEVICES=all"], docker.clone());
        gpus_all.json["hooks"] = spec(&[], true).json["hooks"].clone();
        let e = parse(&gpus_all).unwrap_err();
        assert!(
            e.to_string().starts_with("GPU device nodes /dev/nvidia3 given to the container directly and every GPU (docker --gpus) asked for: ask one way"),
            "{e}"
        );
        // GPUs named beside their nodes (a device plugin's PASS_DEVICE_SPECS, Docker's
        // --gpus device=0): the nodes, checked against the names by settle_nodes.
        assert_eq!(
            parse(&with(&["NVIDIA_VISIBLE_DEVICES=GPU-3"], docker.clone())),
            nodes(&[3])
        );
        let mut gpus_device = with(&["NVIDIA_VISIBLE_DEVICES=0"], docker.clone());
        gpus_device.json["hooks"] = spec(&[], true).json["hooks"].clone();
        assert_eq!(parse(&gpus_device), nodes(&[3]));
        // --privileged lists every host node: not a request.
        let mut privileged = with(&[], docker.clone());
        privileged.json["linux"]["resources"] =
            json!({"devices": [{"allow": true, "access": "rwm"}]});
        assert_eq!(parse(&privileged), Ok(GpuRequest::None));
        // A MIG slice's nodes: its parent's node is read as any other; settle_nodes
        // drops it once NVML says the GPU is in MIG mode.
        let mig = json!([
            node("/dev/nvidia3", 195, 3),
            node("/dev/nvidia-caps/nvidia-cap30", 236, 30),
            node("/dev/nvidiactl", 195, 255),
        ]);
        assert_eq!(parse(&with(&[], mig)), nodes(&[3]));
        // Control nodes alone ask for no GPU.
        assert_eq!(
            parse(&with(&[], json!([node("/dev/nvidiactl", 195, 255)]))),
            Ok(GpuRequest::None)
        );
    }

    #[test]
    fn the_legacy_toolkit_hook_is_nvidias_hook() {
        let mut s = spec(&["NVIDIA_VISIBLE_DEVICES=all"], false);
        s.json["hooks"]["prestart"] = json!([{"path": "/usr/bin/nvidia-container-toolkit", "args": ["nvidia-container-toolkit", "prestart"]}]);
        assert!(has_nvidia_hook(&s));
        assert_eq!(
            parse(&s),
            Ok(GpuRequest::All {
                source: Source::DockerGpus
            })
        );
    }

    #[test]
    fn device_nodes_settle_against_the_gpus_named_and_mig() {
        // NVML's order is not the minors' order; GPU 1 (minor 2) is in MIG mode.
        let gpus: Vec<GpuInfo> = (0..4)
            .map(|i| {
                let mut g = crate::gpu::probe::tests::gpu(i, &format!("GPU-{i}"));
                g.minor = 3 - i;
                g.mig = Some(i == 1);
                g
            })
            .collect();
        let with = |env: &[&str], hook: bool, minors: &[u32]| {
            let mut s = spec(env, hook);
            let devices: Vec<serde_json::Value> = minors
                .iter()
                .map(|m| json!({"path": format!("/dev/nvidia{m}"), "type": "c", "major": 195, "minor": m}))
                .collect();
            s.json["linux"] = json!({ "devices": devices });
            s
        };
        // (environment, NVIDIA hook, nodes) -> the nodes kept and whether any was
        // dropped, or refused as naming other GPUs.
        type Row<'a> = (&'a [&'a str], bool, &'a [u32], Option<(&'a [u32], bool)>);
        let rows: Vec<Row> = vec![
            (
                &["NVIDIA_VISIBLE_DEVICES=GPU-0"],
                false,
                &[3],
                Some((&[3], false)),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0"],
                false,
                &[3],
                Some((&[3], false)),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=GPU-2,GPU-0"],
                false,
                &[1, 3],
                Some((&[1, 3], false)),
            ),
            (&["NVIDIA_VISIBLE_DEVICES=GPU-2"], false, &[3], None),
            (&["NVIDIA_VISIBLE_DEVICES=0,2"], false, &[3], None),
            (&["NVIDIA_VISIBLE_DEVICES=GPU-9"], false, &[3], None),
            // --gpus device=0 (or --gpus 1) beside GPU 0's node; --gpus 3 beside it.
            (
                &["NVIDIA_VISIBLE_DEVICES=0"],
                true,
                &[3],
                Some((&[3], false)),
            ),
            (&["NVIDIA_VISIBLE_DEVICES=0,1,2"], true, &[3], None),
            // Nothing named: nothing to agree with.
            (
                &["NVIDIA_VISIBLE_DEVICES=all"],
                false,
                &[3],
                Some((&[3], false)),
            ),
            (&[], false, &[3], Some((&[3], false))),
            // The parent node of a MIG slice, alone or named by the slice (a device
            // plugin's MIG strategy) or by the GPU: dropped, not leased.
            (&[], false, &[2], Some((&[], true))),
            (
                &["NVIDIA_VISIBLE_DEVICES=MIG-abc"],
                false,
                &[2],
                Some((&[], true)),
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=GPU-1,GPU-0"],
                false,
                &[2, 3],
                Some((&[3], true)),
            ),
            (&["NVIDIA_VISIBLE_DEVICES=GPU-1"], false, &[2, 3], None),
            // A MIG slice named beside a whole GPU's node: that GPU is not named.
            (&["NVIDIA_VISIBLE_DEVICES=MIG-abc"], false, &[3], None),
        ];
        for (i, (env, hook, minors, want)) in rows.into_iter().enumerate() {
            let spec = with(env, hook, minors);
            let got = parse(&spec).and_then(|r| settle_nodes(r, &spec, &gpus));
            let want = want.map(|(kept, dropped)| {
                let request = if kept.is_empty() {
                    GpuRequest::None
                } else {
                    GpuRequest::Devices {
                        ids: kept.iter().map(|&m| DeviceId::Minor(m)).collect(),
                        source: Source::DeviceNodes,
                    }
                };
                (request, dropped)
            });
            assert_eq!(got.ok(), want, "row {i}: {env:?} hook={hook} {minors:?}");
        }
        let other = with(&["NVIDIA_VISIBLE_DEVICES=GPU-2"], false, &[3]);
        let e = settle_nodes(parse(&other).unwrap(), &other, &gpus).unwrap_err();
        assert_eq!(
            e.to_string().split(": ask").next().unwrap(),
            "GPU device nodes /dev/nvidia3 given to the container directly and GPUs GPU-2 (NVIDIA_VISIBLE_DEVICES) asked for"
        );
        // Other requests pass as they are.
        let plain = spec(&["MLENV_GPUS=2"], false);
        let count = parse(&plain).unwrap();
        assert_eq!(
            settle_nodes(count.clone(), &plain, &gpus),
            Ok((count, false))
        );
    }
}
