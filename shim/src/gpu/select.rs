//! Which GPUs a container gets: a pure function of the GPUs as NVML sees them, the
//! leases live containers hold, the request and the `[gpu]` policy.
//!
//! Called inside the inventory transaction that records the decision, so the leases
//! it sees cannot change before the grant is written.

use super::mps::{self, Held, MpsSection, Share};
use super::probe::GpuInfo;
use super::request::{DeviceId, GpuRequest, Source};
use crate::policy::{AllGpus, DockerGpusCount, ForeignProcesses, GpuSection, Strategy};
use crate::units::rounded;
use serde::Serialize;

/// A lease held by a live container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveLease {
    pub uuid: String,
    pub container_id: String,
    pub uid: u32,
    pub project: Option<String>,
    /// An MPS share; None for an exclusive lease.
    pub share: Option<Share>,
}

/// A GPU granted to the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Granted {
    pub index: u32,
    pub uuid: String,
    pub minor: u32,
    /// An MPS share of the GPU; None: the whole GPU.
    pub share: Option<Share>,
}

/// Who asks: the uid (MPS runs one server per uid) and the MPS share to place, when
/// the request goes to MPS GPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Asker<'a> {
    pub uid: u32,
    pub share: Option<Share>,
    pub mps: &'a MpsSection,
}

/// One GPU as the decision saw it, for `mlenv explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuVerdict {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub utilization: u32,
    pub memory_free: u64,
    pub memory_total: u64,
    pub free: bool,
    pub chosen: bool,
    /// Why it is not free, or `free`.
    pub why: String,
}

/// The outcome of a selection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// How many GPUs the request amounts to, for quotas (0 for `all = "pass"`).
    pub asked: u32,
    pub grant: Vec<Granted>,
    pub gpus: Vec<GpuVerdict>,
    /// Set when the request cannot be met; `grant` is then empty.
    pub refusal: Option<String>,
}

/// `GPU 2 (GPU-77d0e1a2)`: index and the start of the UUID, enough to tell GPUs apart.
pub fn label(g: &GpuInfo) -> String {
    let short: String = g.uuid.chars().take(12).collect();
    format!("GPU {} ({short})", g.index)
}

/// Why `g` is not free (None: free). `blocked` holds reasons found outside NVML, as a
/// missing device node.
fn busy(
    g: &GpuInfo,
    leases: &[LiveLease],
    policy: &GpuSection,
    blocked: &[(u32, String)],
    count_request: bool,
    asker: &Asker,
) -> Option<String> {
    let shared = asker.mps.shares(g.index, &g.uuid);
    match (asker.share, shared) {
        (None, true) => {
            return Some(
                "shared through MPS ([mps] gpus): ask for a share with MLENV_GPU_MEMORY".into(),
            )
        }
        (Some(_), false) => return Some("not shared through MPS ([mps] gpus)".into()),
        _ => {}
    }
    if let Some(l) = leases
        .iter()
        .find(|l| l.uuid == g.uuid && l.share.is_none())
    {
        let short: String = l.container_id.chars().take(12).collect();
        return Some(match &l.project {
            Some(p) => format!("leased to {short} (user {}, project {p})", l.uid),
            None => format!("leased to {short} (user {})", l.uid),
        });
    }
    if let Some((_, why)) = blocked.iter().find(|(i, _)| *i == g.index) {
        return Some(why.clone());
    }
    // On an MPS GPU the shares are the accounting: its server is a compute process
    // and its utilization is the clients'.
    if let Some(want) = asker.share {
        return mps::fits(g.memory_total, &held(g, leases), asker.uid, want, asker.mps).err();
    }
    if let Some(max) = policy.max_utilization.get() {
        if f64::from(g.utilization) > max.0 {
            return Some(format!(
                "utilization {}% > {}% ([gpu] max_utilization)",
                g.utilization, max.0
            ));
        }
    }
    if let Some(min) = policy.min_free_memory.get() {
        if g.memory_free < min.0 {
            return Some(format!(
                "free memory {} < {min} ([gpu] min_free_memory)",
                rounded(g.memory_free)
            ));
        }
    }
    if policy.foreign_processes == ForeignProcesses::Busy && !g.processes.is_empty() {
        let pids: Vec<String> = g.processes.iter().map(|p| p.pid.to_string()).collect();
        return Some(format!(
            "runs {} compute process{} not placed by mlenv (pid {}) ([gpu] foreign_processes)",
            pids.len(),
            if pids.len() == 1 { "" } else { "es" },
            pids.join(", ")
        ));
    }
    if count_request && g.mig == Some(true) {
        return Some("MIG mode on".into());
    }
    None
}

/// The MPS shares held on `g`.
fn held(g: &GpuInfo, leases: &[LiveLease]) -> Vec<Held> {
    leases
        .iter()
        .filter(|l| l.uuid == g.uuid)
        .filter_map(|l| l.share.map(|share| Held { uid: l.uid, share }))
        .collect()
}

/// Whether a request goes to MPS GPUs, and with what share: when it asks for one
/// (`asked`: MLENV_GPU_MEMORY or MLENV_GPU_THREADS set), or when every GPU of the
/// host is shared.
pub fn wants_share(gpus: &[GpuInfo], mps: &MpsSection, asked: bool) -> bool {
    asked || (!gpus.is_empty() && gpus.iter().all(|g| mps.shares(g.index, &g.uuid)))
}

/// What the request amounts to once policy has read it.
enum Want {
    Count(u32),
    Devices(Vec<DeviceId>),
    AllFree,
}

/// Chooses GPUs for `request` (not `GpuRequest::None`, not an `all` the policy
/// passes through: the caller leaves those alone).
pub fn select(
    gpus: &[GpuInfo],
    leases: &[LiveLease],
    request: &GpuRequest,
    policy: &GpuSection,
    blocked: &[(u32, String)],
    asker: &Asker,
) -> Selection {
    let want = match request {
        GpuRequest::None => Want::Count(0),
        GpuRequest::Count { n, source } => match (source, policy.docker_gpus_count) {
            (Source::DockerGpus, DockerGpusCount::AsIs) => {
                Want::Devices((0..*n).map(DeviceId::Index).collect())
            }
            _ => Want::Count(*n),
        },
        GpuRequest::Devices { ids, .. } => Want::Devices(ids.clone()),
        GpuRequest::All { .. } => Want::AllFree,
    };
    let count_request = matches!(want, Want::Count(_) | Want::AllFree);
    let mut verdicts: Vec<GpuVerdict> = gpus
        .iter()
        .map(|g| {
            let why = busy(g, leases, policy, blocked, count_request, asker);
            GpuVerdict {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                utilization: g.utilization,
                memory_free: g.memory_free,
                memory_total: g.memory_total,
                free: why.is_none(),
                chosen: false,
                why: why.unwrap_or_else(|| "free".into()),
            }
        })
        .collect();
    let mut out = Selection {
        asked: 0,
        grant: Vec::new(),
        gpus: Vec::new(),
        refusal: None,
    };
    let not_free = |verdicts: &[GpuVerdict]| -> String {
        verdicts
            .iter()
            .zip(gpus)
            .filter(|(v, _)| !v.free)
            .map(|(v, g)| format!("{}: {}", label(g), v.why))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let chosen: Result<Vec<usize>, String> = match &want {
        Want::Count(n) => {
            out.asked = *n;
            let mut free: Vec<usize> = (0..gpus.len()).filter(|&i| verdicts[i].free).collect();
            let pinned = |g: &GpuInfo| -> u64 { held(g, leases).iter().map(|h| h.share.memory).sum() };
            free.sort_by(|&a, &b| {
                let (ga, gb) = (&gpus[a], &gpus[b]);
                let by_load = match (policy.strategy, asker.share.is_some()) {
                    (Strategy::Spread, true) => pinned(ga).cmp(&pinned(gb)),
                    (Strategy::Pack, true) => pinned(gb).cmp(&pinned(ga)),
                    (Strategy::Spread, false) => ga
                        .utilization
                        .cmp(&gb.utilization)
                        .then(gb.memory_free.cmp(&ga.memory_free)),
                    (Strategy::Pack, false) => gb
                        .utilization
                        .cmp(&ga.utilization)
                        .then(ga.memory_free.cmp(&gb.memory_free)),
                };
                by_load.then(ga.index.cmp(&gb.index))
            });
            if *n as usize > gpus.len() {
                Err(format!(
                    "{n} GPUs requested, the host has {}",
                    gpus.len()
                ))
            } else if free.len() < *n as usize {
                let mut msg = format!(
                    "{n} GPU{} requested, {} free",
                    if *n == 1 { "" } else { "s" },
                    free.len()
                );
                let busy = not_free(&verdicts);
                if !busy.is_empty() {
                    msg = format!("{msg}: {busy}");
                }
                Err(msg)
            } else {
                free.truncate(*n as usize);
                Ok(free)
            }
        }
        Want::AllFree => match policy.all {
            AllGpus::Refuse => Err(format!(
                "every GPU requested ({}); ask for a number with MLENV_GPUS=N or --gpus N ([gpu] all = \"refuse\")",
                match request {
                    GpuRequest::All { source: Source::MlenvGpus } => "MLENV_GPUS=all",
                    GpuRequest::All { source: Source::DockerGpus } => "--gpus all",
                    _ => "NVIDIA_VISIBLE_DEVICES=all",
                }
            )),
            _ => {
                let free: Vec<usize> = (0..gpus.len()).filter(|&i| verdicts[i].free).collect();
                out.asked = free.len().max(1) as u32;
                if free.is_empty() {
                    let busy = not_free(&verdicts);
                    Err(if gpus.is_empty() {
                        "every GPU requested ([gpu] all = \"free\"), the host has none".into()
                    } else {
                        format!("every GPU requested ([gpu] all = \"free\"), none free: {busy}")
                    })
                } else {
                    Ok(free)
                }
            }
        },
        Want::Devices(ids) => {
            out.asked = ids.len() as u32;
            let mut picked = Vec::new();
            let mut errors = Vec::new();
            for id in ids {
                let found = gpus.iter().position(|g| id.names(g));
                let name = match id {
                    DeviceId::Index(i) => format!("GPU {i}"),
                    DeviceId::Uuid(u) => u.clone(),
                    DeviceId::Minor(m) => format!("/dev/nvidia{m}"),
                };
                match found {
                    None if matches!(id, DeviceId::Uuid(u) if u.starts_with("MIG-")) => {
                        errors.push(format!(
                            "{name} requested: MIG devices are not managed by mlenv; ask for whole GPUs"
                        ))
                    }
                    None => errors.push(format!(
                        "{name} requested: no such GPU (the host has {})",
                        gpus.len()
                    )),
                    Some(i) if picked.contains(&i) => {}
                    Some(i) if !verdicts[i].free => {
                        errors.push(format!("{} requested: {}", label(&gpus[i]), verdicts[i].why))
                    }
                    Some(i) => picked.push(i),
                }
            }
            if errors.is_empty() {
                Ok(picked)
            } else {
                Err(errors.join("; "))
            }
        }
    };
    if let Some(max) = policy.max_per_container {
        if out.asked > max && !matches!(want, Want::AllFree) {
            out.refusal = Some(format!(
                "{} GPUs requested > {max} allowed ([gpu] max_per_container)",
                out.asked
            ));
        }
    }
    match chosen {
        Ok(mut chosen) if out.refusal.is_none() => {
            // `all = "free"` is held to max_per_container by taking the best ones.
            if let (Want::AllFree, Some(max)) = (&want, policy.max_per_container) {
                chosen.truncate(max as usize);
                out.asked = chosen.len() as u32;
            }
            for &i in &chosen {
                verdicts[i].chosen = true;
                out.grant.push(Granted {
                    index: gpus[i].index,
                    uuid: gpus[i].uuid.clone(),
                    minor: gpus[i].minor,
                    share: asker.share,
                });
            }
        }
        Ok(_) => {}
        Err(e) => {
            out.refusal = Some(match out.refusal.take() {
                Some(r) => format!("{r}; {e}"),
                None => e,
            })
        }
    }
    out.gpus = verdicts;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::probe::GpuProcess;
    use crate::units::{Percent, Switch};

    fn gpu(index: u32, util: u32, free_gib: u64) -> GpuInfo {
        let uuid = format!("GPU-{index}{index}{index}{index}{index}{index}{index}{index}-0000");
        GpuInfo {
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total: 80 << 30,
            memory_used: (80 - free_gib) << 30,
            memory_free: free_gib << 30,
            utilization: util,
            mig: Some(false),
            persistence: Some(true),
            ..crate::gpu::probe::tests::gpu(index, &uuid)
        }
    }

    fn lease(index: u32, id: &str) -> LiveLease {
        LiveLease {
            uuid: gpu(index, 0, 0).uuid,
            container_id: id.into(),
            uid: 1000,
            project: Some("vision".into()),
            share: None,
        }
    }

    static NO_MPS: std::sync::LazyLock<MpsSection> = std::sync::LazyLock::new(MpsSection::default);

    /// A request for whole GPUs by uid 1000.
    fn whole() -> Asker<'static> {
        Asker {
            uid: 1000,
            share: None,
            mps: &NO_MPS,
        }
    }

    fn count(n: u32) -> GpuRequest {
        GpuRequest::Count {
            n,
            source: Source::MlenvGpus,
        }
    }

    fn chosen(s: &Selection) -> Vec<u32> {
        s.grant.iter().map(|g| g.index).collect()
    }

    #[test]
    fn table() {
        let four = vec![gpu(0, 90, 79), gpu(1, 0, 79), gpu(2, 10, 40), gpu(3, 0, 70)];
        let mut foreign = gpu(1, 0, 79);
        foreign.processes.push(GpuProcess {
            pid: 4242,
            used_memory: Some(1 << 30),
        });
        let mut mig = gpu(2, 0, 79);
        mig.mig = Some(true);
        let spread = GpuSection::default();
        let pack = GpuSection {
            strategy: Strategy::Pack,
            ..GpuSection::default()
        };
        let as_is = GpuSection {
            docker_gpus_count: DockerGpusCount::AsIs,
            ..GpuSection::default()
        };
        let lax = GpuSection {
            max_utilization: Switch::Off,
            foreign_processes: ForeignProcesses::Ignore,
            ..GpuSection::default()
        };
        let all_free = GpuSection {
            all: AllGpus::Free,
            max_per_container: Some(2),
            ..GpuSection::default()
        };
        let max1 = GpuSection {
            max_per_container: Some(1),
            ..GpuSection::default()
        };
        let tight = GpuSection {
            max_utilization: Switch::On(Percent(5.0)),
            ..GpuSection::default()
        };
        let docker2 = GpuRequest::Count {
            n: 2,
            source: Source::DockerGpus,
        };
        let devices = |ids: &[u32]| GpuRequest::Devices {
            ids: ids.iter().map(|&i| DeviceId::Index(i)).collect(),
            source: Source::NvidiaVisibleDevices,
        };
        type Row<'a> = (
            &'a str,
            Vec<GpuInfo>,
            Vec<LiveLease>,
            GpuRequest,
            &'a GpuSection,
            Result<Vec<u32>, &'a str>,
        );
        let rows: Vec<Row> = vec![
            // Spread: least utilized, then most free memory; GPU 0 at 90% never.
            ("spread", four.clone(), vec![], count(2), &spread, Ok(vec![1, 3])),
            ("spread 3", four.clone(), vec![], count(3), &spread, Ok(vec![1, 3, 2])),
            // Pack: the busiest still-free ones first.
            ("pack", four.clone(), vec![], count(2), &pack, Ok(vec![2, 3])),
            ("lease", four.clone(), vec![lease(1, "abc")], count(2), &spread, Ok(vec![3, 2])),
            ("docker reselects", four.clone(), vec![], docker2.clone(), &spread, Ok(vec![1, 3])),
            (
                "docker as-is",
                four.clone(),
                vec![],
                docker2,
                &as_is,
                Err("GPU 0 (GPU-00000000) requested: utilization 90% > 30% ([gpu] max_utilization)"),
            ),
            ("devices", four.clone(), vec![], devices(&[3, 1]), &spread, Ok(vec![3, 1])),
            (
                "device leased",
                four.clone(),
                vec![lease(3, "0123456789abcdef")],
                devices(&[3]),
                &spread,
                Err("GPU 3 (GPU-33333333) requested: leased to 0123456789ab (user 1000, project vision)"),
            ),
            (
                "no such device",
                four.clone(),
                vec![],
                devices(&[7]),
                &spread,
                Err("GPU 7 requested: no such GPU (the host has 4)"),
            ),
            (
                "none free",
                vec![gpu(0, 90, 79), gpu(1, 0, 0)],
                vec![],
                count(1),
                &spread,
                Err("1 GPU requested, 0 free: GPU 0 (GPU-00000000): utilization 90% > 30% ([gpu] max_utilization); GPU 1 (GPU-11111111): free memory 0M < 1G ([gpu] min_free_memory)"),
            ),
            (
                "too many",
                four.clone(),
                vec![],
                count(5),
                &spread,
                Err("5 GPUs requested, the host has 4"),
            ),
            (
                "foreign process",
                vec![foreign.clone()],
                vec![],
                count(1),
                &spread,
                Err("1 GPU requested, 0 free: GPU 1 (GPU-11111111): runs 1 compute process not placed by mlenv (pid 4242) ([gpu] foreign_processes)"),
            ),
            ("foreign ignored", vec![foreign], vec![], count(1), &lax, Ok(vec![1])),
            ("utilization off", four.clone(), vec![], count(4), &lax, Ok(vec![1, 3, 2, 0])),
            (
                "mig skipped for counts",
                vec![mig.clone()],
                vec![],
                count(1),
                &spread,
                Err("1 GPU requested, 0 free: GPU 2 (GPU-22222222): MIG mode on"),
            ),
            ("mig by index", vec![mig], vec![], devices(&[2]), &spread, Ok(vec![2])),
            (
                "all refused",
                four.clone(),
                vec![],
                GpuRequest::All {
                    source: Source::DockerGpus,
                },
                &spread,
                Err("every GPU requested (--gpus all); ask for a number with MLENV_GPUS=N or --gpus N ([gpu] all = \"refuse\")"),
            ),
            (
                "all free, held to max_per_container",
                four.clone(),
                vec![],
                GpuRequest::All {
                    source: Source::NvidiaVisibleDevices,
                },
                &all_free,
                Ok(vec![1, 2]),
            ),
            (
                "max per container",
                four.clone(),
                vec![],
                count(2),
                &max1,
                Err("2 GPUs requested > 1 allowed ([gpu] max_per_container)"),
            ),
            (
                "threshold",
                four.clone(),
                vec![],
                count(1),
                &tight,
                Ok(vec![1]),
            ),
        ];
        for (name, gpus, leases, request, policy, want) in rows {
            let s = select(&gpus, &leases, &request, policy, &[], &whole());
            match want {
                Ok(indexes) => {
                    assert_eq!(s.refusal, None, "{name}");
                    assert_eq!(chosen(&s), indexes, "{name}");
                    for v in &s.gpus {
                        assert_eq!(v.chosen, indexes.contains(&v.index), "{name}");
                    }
                }
                Err(msg) => {
                    assert_eq!(s.refusal.as_deref(), Some(msg), "{name}");
                    assert!(s.grant.is_empty(), "{name}");
                }
            }
        }
    }

    #[test]
    fn mps_shares_fill_mps_gpus_only() {
        use crate::gpu::mps::{GpuRef, MpsGpus};
        let gpus = vec![gpu(0, 95, 1), gpu(1, 0, 79), gpu(2, 0, 79)];
        let mps = MpsSection {
            gpus: MpsGpus::List(vec![GpuRef::Index(0), GpuRef::Index(2)]),
            ..MpsSection::default()
        };
        let twenty = Share {
            memory: 20 << 30,
            threads: 25,
        };
        let sharer = |uid| Asker {
            uid,
            share: Some(twenty),
            mps: &mps,
        };
        let share_of = |index: u32, uid: u32| LiveLease {
            share: Some(twenty),
            uid,
            ..lease(index, &format!("c{index}{uid}"))
        };
        let policy = GpuSection::default();
        // Spread: the MPS GPU with the least pinned memory; utilization and free
        // memory do not count on MPS GPUs (GPU 0 is at 95%, its server's memory used).
        let leases = vec![share_of(2, 1000)];
        let s = select(&gpus, &leases, &count(1), &policy, &[], &sharer(1000));
        assert_eq!(chosen(&s), [0]);
        assert_eq!(s.grant[0].share, Some(twenty));
        assert_eq!(s.gpus[1].why, "not shared through MPS ([mps] gpus)");
        let pack = GpuSection {
            strategy: Strategy::Pack,
            ..GpuSection::default()
        };
        let s = select(&gpus, &leases, &count(1), &pack, &[], &sharer(1000));
        assert_eq!(chosen(&s), [2]);
        // Four 20G shares fill an 80G GPU; the fifth is refused with the sums.
        let full: Vec<LiveLease> = (0..4).map(|_| share_of(2, 1000)).collect();
        let only2 = vec![gpu(2, 0, 79)];
        let s = select(&only2, &full, &count(1), &policy, &[], &sharer(1000));
        assert_eq!(
            s.refusal.as_deref(),
            Some("1 GPU requested, 0 free: GPU 2 (GPU-22222222): pinned memory 80G + 20G requested > 80G (80G x 1) ([mps] memory_oversubscription)")
        );
        // Another uid on a GPU serving uid 1000.
        let s = select(&only2, &full[..1], &count(1), &policy, &[], &sharer(2000));
        assert!(s.refusal.unwrap().contains("([mps] mixed_users)"));
        // A request for whole GPUs never lands on an MPS GPU.
        let whole_only = Asker {
            share: None,
            ..sharer(1000)
        };
        let s = select(&only2, &[], &count(1), &policy, &[], &whole_only);
        assert_eq!(
            s.refusal.as_deref(),
            Some("1 GPU requested, 0 free: GPU 2 (GPU-22222222): shared through MPS ([mps] gpus): ask for a share with MLENV_GPU_MEMORY")
        );
        // When every GPU is shared, a plain request gets the default share.
        let all = MpsSection {
            gpus: MpsGpus::All("all".into()),
            ..MpsSection::default()
        };
        assert!(wants_share(&only2, &all, false));
        assert!(!wants_share(&gpus, &mps, false));
        assert!(wants_share(&gpus, &mps, true));
    }

    #[test]
    fn blocked_gpus_are_not_free_and_say_why() {
        let gpus = vec![gpu(0, 0, 79), gpu(1, 0, 79)];
        let blocked = vec![(0, "no device node /dev/nvidia0".to_string())];
        let s = select(
            &gpus,
            &[],
            &count(1),
            &GpuSection::default(),
            &blocked,
            &whole(),
        );
        assert_eq!(chosen(&s), vec![1]);
        assert_eq!(s.gpus[0].why, "no device node /dev/nvidia0");
        assert!(!s.gpus[0].free);
        assert_eq!((s.gpus[1].why.as_str(), s.gpus[1].chosen), ("free", true));
        assert_eq!(s.asked, 1);
    }

    #[test]
    fn explicit_uuid_and_duplicates() {
        let gpus = vec![gpu(0, 0, 79), gpu(1, 0, 79)];
        let req = GpuRequest::Devices {
            ids: vec![
                DeviceId::Uuid(gpus[1].uuid.clone()),
                DeviceId::Index(1),
                DeviceId::Uuid("MIG-abc".into()),
            ],
            source: Source::NvidiaVisibleDevices,
        };
        let s = select(&gpus, &[], &req, &GpuSection::default(), &[], &whole());
        assert_eq!(
            s.refusal.as_deref(),
            Some("MIG-abc requested: MIG devices are not managed by mlenv; ask for whole GPUs")
        );
        let req = GpuRequest::Devices {
            ids: vec![DeviceId::Uuid(gpus[1].uuid.clone()), DeviceId::Index(1)],
            source: Source::NvidiaVisibleDevices,
        };
        let s = select(&gpus, &[], &req, &GpuSection::default(), &[], &whole());
        assert_eq!(chosen(&s), vec![1]);
    }
}
