//! MPS sharing (issue 5), the pure parts: the `[mps]` settings and their validation,
//! what a container asks for (MLENV_GPU_MEMORY, MLENV_GPU_THREADS), whether it fits
//! on an MPS GPU beside the shares already there, and the spec edit that gives it its
//! share.

use crate::spec::{Spec, SpecError};
use crate::units::{rounded, ByteSize, Positive};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;

/// NVIDIA's floor for a pinned device memory limit that MPS clients can work with.
pub const MIN_PINNED: u64 = 512 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MpsSection {
    /// The GPUs shared through MPS: `"all"`, or indexes and UUIDs.
    pub gpus: MpsGpus,
    /// CUDA_MPS_PIPE_DIRECTORY of the host's MPS control daemon, bind-mounted at the
    /// same path.
    pub pipe_directory: PathBuf,
    /// A host directory (a tmpfs) mounted as every client's /dev/shm, shared with the
    /// MPS server.
    pub shm_directory: PathBuf,
    pub default_memory: ByteSize,
    pub min_memory: ByteSize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<ByteSize>,
    pub default_threads: u32,
    pub max_threads: u32,
    /// Pinned memory of the shares on one GPU may add up to its memory times this.
    pub memory_oversubscription: Positive,
    /// Thread percentages on one GPU may add up to 100 times this.
    pub threads_oversubscription: Positive,
    /// One MPS server runs per uid: whether two uids may share one MPS GPU.
    pub mixed_users: MixedUsers,
}

impl Default for MpsSection {
    fn default() -> Self {
        MpsSection {
            gpus: MpsGpus::List(Vec::new()),
            pipe_directory: PathBuf::from("/tmp/nvidia-mps"),
            shm_directory: PathBuf::from("/dev/shm/mlenv-mps"),
            default_memory: ByteSize(4 << 30),
            min_memory: ByteSize(MIN_PINNED),
            max_memory: None,
            default_threads: 100,
            max_threads: 100,
            memory_oversubscription: Positive(1.0),
            threads_oversubscription: Positive(1.0),
            mixed_users: MixedUsers::Refuse,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MpsGpus {
    /// `"all"`.
    All(String),
    /// Indexes (numbers) or UUIDs (strings).
    List(Vec<GpuRef>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GpuRef {
    Index(u32),
    Uuid(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixedUsers {
    /// A GPU serving one uid's MPS clients is not offered to another uid.
    #[default]
    Refuse,
    /// Allowed: the second uid's clients wait until the first uid's server drains.
    Allow,
}

impl MpsSection {
    /// Whether the GPU `index` / `uuid` is shared through MPS.
    pub fn shares(&self, index: u32, uuid: &str) -> bool {
        match &self.gpus {
            MpsGpus::All(_) => true,
            MpsGpus::List(l) => l.iter().any(|r| match r {
                GpuRef::Index(i) => *i == index,
                GpuRef::Uuid(u) => u == uuid,
            }),
        }
    }

    /// Whether the container asks for a share: either variable set.
    pub fn asked(spec: &Spec) -> bool {
        spec.env("MLENV_GPU_MEMORY").is_some() || spec.env("MLENV_GPU_THREADS").is_some()
    }

    /// Rejects settings no container could satisfy. `gpu_memory`: the smallest MPS
    /// GPU's memory, when known (policy check on a GPU host).
    pub fn validate(&self, gpu_memory: Option<u64>) -> Result<(), String> {
        if let MpsGpus::All(s) = &self.gpus {
            if s != "all" {
                return Err(format!(
                    "[mps] gpus = {s:?}: expected \"all\" or a list of indexes and UUIDs"
                ));
            }
        }
        for (key, v) in [
            ("default_threads", self.default_threads),
            ("max_threads", self.max_threads),
        ] {
            if !(1..=100).contains(&v) {
                return Err(format!(
                    "[mps] {key} = {v}: a thread percentage is from 1 to 100"
                ));
            }
        }
        if self.default_threads > self.max_threads {
            return Err(format!(
                "[mps] default_threads = {} is above max_threads = {}",
                self.default_threads, self.max_threads
            ));
        }
        if self.min_memory.0 < MIN_PINNED {
            return Err(format!(
                "[mps] min_memory = {}: below 512M, which MPS clients cannot work in",
                self.min_memory
            ));
        }
        let max = self.max_memory.unwrap_or(ByteSize(u64::MAX));
        if self.default_memory < self.min_memory || self.default_memory > max {
            return Err(format!(
                "[mps] default_memory = {} is outside min_memory = {} .. max_memory",
                self.default_memory, self.min_memory
            ));
        }
        if let (Some(gpu), Some(m)) = (gpu_memory, self.max_memory) {
            if m.0 > gpu {
                return Err(format!(
                    "[mps] max_memory = {m} is above the GPU's memory {}",
                    rounded(gpu)
                ));
            }
        }
        if let Some(gpu) = gpu_memory {
            if self.min_memory.0 > gpu {
                return Err(format!(
                    "[mps] min_memory = {} is above the GPU's memory {}",
                    self.min_memory,
                    rounded(gpu)
                ));
            }
        }
        Ok(())
    }
}

/// A container's share of each MPS GPU it is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Pinned device memory, bytes.
    pub memory: u64,
    /// CUDA_MPS_ACTIVE_THREAD_PERCENTAGE.
    pub threads: u32,
}

/// The share a container asks for, with defaults, held to the bounds. Only for a
/// container that asks for GPUs: the caller does not call this otherwise, so
/// MLENV_GPU_MEMORY alone changes nothing.
pub fn ask(spec: &Spec, mps: &MpsSection) -> Result<Share, Vec<String>> {
    let mut errors = Vec::new();
    let memory = match spec.env("MLENV_GPU_MEMORY") {
        None => mps.default_memory.0,
        Some(v) => match v.trim().parse::<ByteSize>() {
            Ok(b) => b.0,
            Err(_) => {
                errors.push(format!(
                    "MLENV_GPU_MEMORY={v:?}: expected a size such as 8G or 512M"
                ));
                0
            }
        },
    };
    let threads = match spec.env("MLENV_GPU_THREADS") {
        None => mps.default_threads,
        Some(v) => match v.trim().trim_end_matches('%').parse::<u32>() {
            Ok(t) if (1..=100).contains(&t) => t,
            _ => {
                errors.push(format!(
                    "MLENV_GPU_THREADS={v:?}: expected a percentage from 1 to 100"
                ));
                0
            }
        },
    };
    if errors.is_empty() {
        if memory < mps.min_memory.0 {
            errors.push(format!(
                "GPU memory {} requested < {} allowed ([mps] min_memory)",
                ByteSize(memory),
                mps.min_memory
            ));
        }
        if let Some(max) = mps.max_memory.filter(|m| memory > m.0) {
            errors.push(format!(
                "GPU memory {} requested > {max} allowed ([mps] max_memory)",
                ByteSize(memory)
            ));
        }
        if threads > mps.max_threads {
            errors.push(format!(
                "GPU threads {threads}% requested > {}% allowed ([mps] max_threads)",
                mps.max_threads
            ));
        }
    }
    if errors.is_empty() {
        Ok(Share { memory, threads })
    } else {
        Err(errors)
    }
}

/// A share already held on an MPS GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Held {
    pub uid: u32,
    pub share: Share,
}

/// Whether `want` (for `uid`) fits on an MPS GPU with `total` bytes beside `held`;
/// the error names the sums, the capacity and the key.
pub fn fits(
    total: u64,
    held: &[Held],
    uid: u32,
    want: Share,
    mps: &MpsSection,
) -> Result<(), String> {
    if mps.mixed_users == MixedUsers::Refuse {
        if let Some(other) = held.iter().find(|h| h.uid != uid) {
            return Err(format!(
                "MPS clients of user {} run there, one MPS server per user ([mps] mixed_users)",
                other.uid
            ));
        }
    }
    let memory: u64 = held.iter().map(|h| h.share.memory).sum();
    let capacity = (total as f64 * mps.memory_oversubscription.0) as u64;
    if memory.saturating_add(want.memory) > capacity {
        return Err(format!(
            "pinned memory {} + {} requested > {} ({} x {}) ([mps] memory_oversubscription)",
            rounded(memory),
            rounded(want.memory),
            rounded(capacity),
            rounded(total),
            mps.memory_oversubscription
        ));
    }
    let threads: u32 = held.iter().map(|h| h.share.threads).sum();
    let capacity = 100.0 * mps.threads_oversubscription.0;
    if f64::from(threads + want.threads) > capacity + 1e-9 {
        return Err(format!(
            "threads {threads}% + {}% requested > {}% (100% x {}) ([mps] threads_oversubscription)",
            want.threads,
            crate::units::Cpus(capacity),
            mps.threads_oversubscription
        ));
    }
    Ok(())
}

/// The variables MPS reads, with the granted values.
const VARS: [&str; 3] = [
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PIPE_DIRECTORY",
];

/// The three variables' values for a share of the MPS GPUs `uuids`, in [`VARS`]'
/// order: the pinned memory keyed by UUID (which CUDA_VISIBLE_DEVICES renumbering
/// cannot confuse), the thread percentage, the pipe directory.
fn values(uuids: &[&str], share: Share, mps: &MpsSection) -> [String; 3] {
    let limit = ByteSize(share.memory).to_string();
    let pinned: Vec<String> = uuids.iter().map(|u| format!("{u}={limit}")).collect();
    [
        pinned.join(","),
        share.threads.to_string(),
        mps.pipe_directory.display().to_string(),
    ]
}

/// The bind mounts (destination, source) of an MPS client: the pipe directory at the
/// same path, the shared shm directory at /dev/shm.
fn binds(mps: &MpsSection) -> [(String, String); 2] {
    let pipe = mps.pipe_directory.display().to_string();
    [
        (pipe.clone(), pipe),
        ("/dev/shm".into(), mps.shm_directory.display().to_string()),
    ]
}

/// Gives the container its share of the MPS GPUs `uuids`: the three variables, the
/// pipe directory at the same path, the shared shm directory at /dev/shm. Values the
/// container set itself are replaced, and the returned lines say so. Idempotent.
pub fn apply(
    spec: &mut Spec,
    uuids: &[&str],
    share: Share,
    mps: &MpsSection,
) -> Result<Vec<String>, SpecError> {
    let values = values(uuids, share, mps);
    let mut actions = Vec::new();
    for (name, value) in VARS.iter().zip(&values) {
        if let Some(old) = spec.env(name).filter(|old| old != value) {
            actions.push(format!("{name}={old} replaced by the granted {value}"));
        }
        spec.set_env(name, value)?;
    }
    for (destination, source) in binds(mps) {
        let mount = json!({
            "destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "rw", "nosuid", "nodev"],
        });
        spec.upsert(&[], "mounts", "destination", mount)?;
    }
    actions.push(format!(
        "MPS share: {} pinned on {}, {}% threads",
        ByteSize(share.memory),
        uuids.join(", "),
        share.threads
    ));
    Ok(actions)
}

/// What a container that exists lacks of its share, for mlenv-hook, which cannot
/// [`apply`] it: each variable not set to its granted value and each bind mount
/// missing, as the `podman run` flag that gives it (`-e NAME=VALUE`, `-v SRC:DST`).
/// Empty when the container carries its whole share. A mount counts by its source
/// and destination, whatever options the engine gave it.
pub fn missing(spec: &Spec, uuids: &[&str], share: Share, mps: &MpsSection) -> Vec<String> {
    let values = values(uuids, share, mps);
    let mounts = spec.json.get("mounts").and_then(|m| m.as_array());
    let mounted = |destination: &str, source: &str| {
        mounts.is_some_and(|m| {
            m.iter().any(|m| {
                m.get("destination").and_then(|d| d.as_str()) == Some(destination)
                    && m.get("source").and_then(|s| s.as_str()) == Some(source)
            })
        })
    };
    let vars = VARS
        .iter()
        .zip(&values)
        .filter(|(name, value)| spec.env(name) != Some(value.as_str()))
        .map(|(name, value)| format!("-e {name}={value}"));
    let binds = binds(mps)
        .into_iter()
        .filter(|(destination, source)| !mounted(destination, source))
        .map(|(destination, source)| format!("-v {source}:{destination}"));
    vars.chain(binds).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const G: u64 = 1 << 30;

    fn spec(env: &[&str]) -> Spec {
        Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({
                "process": {"env": env},
                "mounts": [
                    {"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}
                ]
            }),
        }
    }

    #[test]
    fn settings_validate_twice() {
        let ok = MpsSection::default();
        assert_eq!(ok.validate(None), Ok(()));
        let rows: Vec<(MpsSection, Option<u64>, &str)> = vec![
            (
                MpsSection {
                    max_threads: 0,
                    ..MpsSection::default()
                },
                None,
                "[mps] max_threads = 0: a thread percentage is from 1 to 100",
            ),
            (
                MpsSection {
                    default_threads: 101,
                    ..MpsSection::default()
                },
                None,
                "[mps] default_threads = 101: a thread percentage is from 1 to 100",
            ),
            (
                MpsSection {
                    min_memory: ByteSize(256 << 20),
                    ..MpsSection::default()
                },
                None,
                "[mps] min_memory = 256M: below 512M, which MPS clients cannot work in",
            ),
            (
                MpsSection {
                    max_memory: Some(ByteSize(96 * G)),
                    ..MpsSection::default()
                },
                Some(80 * G),
                "[mps] max_memory = 96G is above the GPU's memory 80G",
            ),
            (
                MpsSection {
                    gpus: MpsGpus::All("most".into()),
                    ..MpsSection::default()
                },
                None,
                "[mps] gpus = \"most\": expected \"all\" or a list of indexes and UUIDs",
            ),
        ];
        for (m, gpu, want) in rows {
            assert_eq!(m.validate(gpu), Err(want.to_string()));
        }
        let parsed: MpsSection =
            toml::from_str("gpus = [0, \"GPU-aa\"]\nmax_memory = \"40G\"\n").unwrap();
        assert_eq!(
            parsed.gpus,
            MpsGpus::List(vec![GpuRef::Index(0), GpuRef::Uuid("GPU-aa".into())])
        );
        assert_eq!(parsed.validate(Some(80 * G)), Ok(()));
    }

    #[test]
    fn asks_with_defaults_and_bounds() {
        let mps = MpsSection {
            max_memory: Some(ByteSize(40 * G)),
            max_threads: 50,
            default_threads: 25,
            ..MpsSection::default()
        };
        type Row<'a> = (&'a [&'a str], Result<Share, Vec<&'a str>>);
        let rows: Vec<Row> = vec![
            (
                &[],
                Ok(Share {
                    memory: 4 * G,
                    threads: 25,
                }),
            ),
            (
                &["MLENV_GPU_MEMORY=20G", "MLENV_GPU_THREADS=50"],
                Ok(Share {
                    memory: 20 * G,
                    threads: 50,
                }),
            ),
            (
                &["MLENV_GPU_MEMORY=96G", "MLENV_GPU_THREADS=75"],
                Err(vec![
                    "GPU memory 96G requested > 40G allowed ([mps] max_memory)",
                    "GPU threads 75% requested > 50% allowed ([mps] max_threads)",
                ]),
            ),
            (
                &["MLENV_GPU_MEMORY=100M"],
                Err(vec![
                    "GPU memory 100M requested < 512M allowed ([mps] min_memory)",
                ]),
            ),
            (
                &["MLENV_GPU_MEMORY=lots", "MLENV_GPU_THREADS=0"],
                Err(vec![
                    "MLENV_GPU_MEMORY=\"lots\": expected a size such as 8G or 512M",
                    "MLENV_GPU_THREADS=\"0\": expected a percentage from 1 to 100",
                ]),
            ),
        ];
        for (env, want) in rows {
            let want = want.map_err(|e| e.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(ask(&spec(env), &mps), want, "{env:?}");
        }
    }

    #[test]
    fn accounting_on_an_80g_gpu() {
        let mps = MpsSection::default();
        let twenty = Share {
            memory: 20 * G,
            threads: 25,
        };
        let mut held = Vec::new();
        for _ in 0..4 {
            assert_eq!(fits(80 * G, &held, 1000, twenty, &mps), Ok(()));
            held.push(Held {
                uid: 1000,
                share: twenty,
            });
        }
        assert_eq!(
            fits(80 * G, &held, 1000, twenty, &mps),
            Err(
                "pinned memory 80G + 20G requested > 80G (80G x 1) ([mps] memory_oversubscription)"
                    .into()
            )
        );
        let small = Share {
            memory: G,
            threads: 10,
        };
        let over = MpsSection {
            memory_oversubscription: Positive(1.5),
            ..MpsSection::default()
        };
        assert_eq!(
            fits(80 * G, &held, 1000, small, &over),
            Err(
                "threads 100% + 10% requested > 100% (100% x 1) ([mps] threads_oversubscription)"
                    .into()
            )
        );
        assert_eq!(
            fits(80 * G, &held[..1], 2000, small, &mps),
            Err(
                "MPS clients of user 1000 run there, one MPS server per user ([mps] mixed_users)"
                    .into()
            )
        );
        let mixed = MpsSection {
            mixed_users: MixedUsers::Allow,
            ..MpsSection::default()
        };
        assert_eq!(fits(80 * G, &held[..1], 2000, small, &mixed), Ok(()));
    }

    #[test]
    fn edit_sets_the_granted_values_and_mounts() {
        let mps = MpsSection::default();
        let mut s = spec(&["PATH=/bin", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100"]);
        let share = Share {
            memory: 20 * G,
            threads: 25,
        };
        let actions = apply(&mut s, &["GPU-a", "GPU-b"], share, &mps).unwrap();
        assert_eq!(
            actions,
            [
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 replaced by the granted 25",
                "MPS share: 20G pinned on GPU-a, GPU-b, 25% threads"
            ]
        );
        assert_eq!(
            s.json["process"]["env"],
            json!([
                "PATH=/bin",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=GPU-a=20G,GPU-b=20G",
                "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps"
            ])
        );
        let mounts = s.json["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0]["destination"], "/proc");
        assert_eq!(mounts[1]["destination"], "/dev/shm");
        assert_eq!(mounts[1]["source"], "/dev/shm/mlenv-mps");
        assert_eq!(mounts[2]["destination"], "/tmp/nvidia-mps");
        let once = s.json.clone();
        apply(&mut s, &["GPU-a", "GPU-b"], share, &mps).unwrap();
        assert_eq!(s.json, once, "idempotent");
    }

    /// mlenv-hook's check: what the container lacks of its share, as the flags that
    /// give it; nothing once it carries what `apply` writes, or the same set by the
    /// engine with its own mount options.
    #[test]
    fn what_a_container_lacks_of_its_share() {
        let mps = MpsSection::default();
        let share = Share {
            memory: 8 * G,
            threads: 50,
        };
        let all = [
            "-e CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=GPU-a=8G",
            "-e CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50",
            "-e CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
            "-v /tmp/nvidia-mps:/tmp/nvidia-mps",
            "-v /dev/shm/mlenv-mps:/dev/shm",
        ];
        let env_ok = [
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=GPU-a=8G",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50",
            "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
        ];
        // podman's -v, with its own options.
        let bind = |src: &str, dst: &str| {
            json!({"destination": dst, "type": "bind", "source": src,
                   "options": ["rbind", "rprivate"]})
        };
        let with = |env: &[&str], mounts: Vec<serde_json::Value>| {
            let mut s = spec(env);
            s.json["mounts"].as_array_mut().unwrap().extend(mounts);
            s
        };
        let both = || {
            vec![
                bind("/tmp/nvidia-mps", "/tmp/nvidia-mps"),
                bind("/dev/shm/mlenv-mps", "/dev/shm"),
            ]
        };
        let rows: Vec<(&str, Spec, Vec<&str>)> = vec![
            ("nothing of it", spec(&["PATH=/bin"]), all.to_vec()),
            (
                "all of it, as the engine set it",
                with(&env_ok, both()),
                vec![],
            ),
            (
                "more threads than granted",
                with(
                    &[
                        env_ok[0],
                        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100",
                        env_ok[2],
                    ],
                    both(),
                ),
                vec![all[1]],
            ),
            (
                "/dev/shm still the engine's tmpfs",
                with(&env_ok, both()[..1].to_vec()),
                vec![all[4]],
            ),
            (
                "the pipe directory from elsewhere",
                with(
                    &env_ok,
                    vec![
                        bind("/srv/mps", "/tmp/nvidia-mps"),
                        bind("/dev/shm/mlenv-mps", "/dev/shm"),
                    ],
                ),
                vec![all[3]],
            ),
        ];
        for (what, s, expected) in rows {
            assert_eq!(missing(&s, &["GPU-a"], share, &mps), expected, "{what}");
        }
        let mut applied = spec(&["PATH=/bin"]);
        apply(&mut applied, &["GPU-a"], share, &mps).unwrap();
        assert!(
            missing(&applied, &["GPU-a"], share, &mps).is_empty(),
            "what apply writes"
        );
    }
}
