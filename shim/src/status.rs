//! `mlenv status`: at a glance, the host against its thresholds, who holds which
//! GPU, the policy in force and the inventory's health. Gathered into one
//! serializable [`Status`] (`--json`), rendered as text for people.

use crate::admission::{self, Check};
use crate::host::{Host, HostState};
use crate::inventory::Inventory;
use crate::policy;
use serde::Serialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub policy: PolicyStatus,
    pub host: Result<HostStatus, String>,
    pub gpus: Result<Vec<GpuRow>, String>,
    pub inventory: Result<InventoryStatus, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    /// The files in force (main and drop-ins, or the last-known-good copy).
    pub files: Vec<PathBuf>,
    /// Why the files do not validate or are not trusted; None when they are fine.
    pub error: Option<String>,
    /// What a create does now: `files`, `last-known-good` or `refuse`.
    pub creates: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub state: HostState,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuRow {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub utilization: u32,
    pub memory_used: u64,
    pub memory_total: u64,
    pub leases: Vec<LeaseRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaseRow {
    pub container_id: String,
    pub project: Option<String>,
    pub uid: u32,
    /// MPS pinned memory; None for the whole GPU.
    pub mps_memory: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InventoryStatus {
    pub path: PathBuf,
    pub schema: i64,
    pub size_bytes: u64,
    pub live: usize,
    pub decisions: u64,
    /// Corrupt inventories moved aside beside it, oldest first.
    pub set_aside: Vec<PathBuf>,
}

pub fn gather(main: &Path, host: &dyn Host) -> Status {
    let files = crate::hostfs::RealFiles;
    let trusted =
        crate::trust::check_policy(main, &policy::dropins(main).unwrap_or_default(), &files);
    let (loaded, policy_status) = match (trusted, policy::load(main)) {
        (Ok(()), Ok(l)) => {
            let s = PolicyStatus {
                files: l.files.clone(),
                error: None,
                creates: "files",
            };
            (Some(l), s)
        }
        (trust, load) => {
            let error = match (trust, load) {
                (Err(t), _) => t.to_string(),
                (_, Err(e)) => e.to_string(),
                _ => unreachable!("one of them failed"),
            };
            let fallback = policy::last_known_good_fallback(main).ok().flatten();
            match fallback {
                Some(l) => {
                    let s = PolicyStatus {
                        files: l.files.clone(),
                        error: Some(error),
                        creates: "last-known-good",
                    };
                    (Some(l), s)
                }
                None => (
                    None,
                    PolicyStatus {
                        files: vec![main.to_path_buf()],
                        error: Some(error),
                        creates: "refuse",
                    },
                ),
            }
        }
    };
    let p = loaded.map(|l| l.policy).unwrap_or_default();
    let host_status = host
        .probe()
        .map(|state| HostStatus {
            checks: admission::host_checks(&p.admission, &state),
            state,
        })
        .map_err(|e| e.to_string());
    let inventory_path = if p.inventory.path.exists() {
        p.inventory.path.clone()
    } else {
        policy::lenient(main).inventory()
    };
    let inv = if inventory_path.exists() {
        // Containers gone (or never created: a runc create that failed) stop
        // counting and holding GPUs first, as `mlenv ps` has them. Best effort: a
        // check that cannot write leaves the rows as they are.
        Inventory::open(&inventory_path)
            .map(|mut i| {
                use crate::clock::Clock;
                let _ = i.reconcile(host, crate::clock::SystemClock.now_ms());
                i
            })
            .map_err(|e| e.to_string())
    } else {
        Err(format!(
            "no inventory at {} yet: no container created through mlenv-runtime",
            inventory_path.display()
        ))
    };
    let leases = inv
        .as_ref()
        .ok()
        .and_then(|i| i.leases().ok())
        .unwrap_or_default();
    let gpus = crate::gpu::probe(p.gpu.nvml_library.as_deref())
        .map(|gpus| {
            gpus.into_iter()
                .map(|g| GpuRow {
                    leases: leases
                        .iter()
                        .filter(|l| l.uuid == g.uuid)
                        .map(|l| LeaseRow {
                            container_id: l.container_id.clone(),
                            project: l.project.clone(),
                            uid: l.uid,
                            mps_memory: l.share.map(|s| s.memory),
                        })
                        .collect(),
                    index: g.index,
                    uuid: g.uuid,
                    name: g.name,
                    utilization: g.utilization,
                    memory_used: g.memory_used,
                    memory_total: g.memory_total,
                })
                .collect()
        })
        .map_err(|e| e.to_string());
    let inventory = inv.and_then(|i| {
        let e = |e: crate::inventory::InventoryError| e.to_string();
        Ok(InventoryStatus {
            schema: i.schema_version().map_err(e)?,
            size_bytes: std::fs::metadata(&inventory_path)
                .map(|m| m.len())
                .unwrap_or(0),
            live: i.live().map_err(e)?.len(),
            decisions: i.outcome_counts().map_err(e)?.values().sum(),
            set_aside: Inventory::set_aside_files(&inventory_path),
            path: inventory_path.clone(),
        })
    });
    Status {
        policy: policy_status,
        host: host_status,
        gpus,
        inventory,
    }
}

fn size(b: u64) -> String {
    crate::units::rounded(b)
}

pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let names: Vec<String> = s
        .policy
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    match (&s.policy.error, s.policy.creates) {
        (None, _) if names.is_empty() => {
            let _ = writeln!(o, "policy     built-in defaults (no policy file)");
        }
        (None, _) => {
            let _ = writeln!(o, "policy     ok: {}", names.join(" + "));
        }
        (Some(e), "last-known-good") => {
            let _ = writeln!(
                o,
                "policy     INVALID: {e}\n           creates use the last known good policy {}",
                names.join(" + ")
            );
        }
        (Some(e), _) => {
            let _ = writeln!(o, "policy     INVALID: {e}\n           every create is refused until it is fixed (mlenv policy check)");
        }
    }
    match &s.host {
        Ok(h) => {
            let _ = writeln!(
                o,
                "host       memory {} of {} available, load {:.2} per CPU on {} CPUs",
                size(h.state.mem_available),
                size(h.state.mem_total),
                h.state.load_per_cpu(),
                h.state.cpus
            );
            for c in &h.checks {
                let _ = writeln!(
                    o,
                    "  {}  {}",
                    if c.passed { "ok  " } else { "FAIL" },
                    c.text
                );
            }
        }
        Err(e) => {
            let _ = writeln!(o, "host       not read: {e}");
        }
    }
    match &s.gpus {
        Ok(gpus) if gpus.is_empty() => {
            let _ = writeln!(o, "gpus       none");
        }
        Ok(gpus) => {
            let _ = writeln!(o, "gpus");
            let _ = writeln!(
                o,
                "  {:<4} {:<24} {:>5} {:>15}  LEASES",
                "GPU", "NAME", "UTIL", "MEMORY"
            );
            for g in gpus {
                let leases: Vec<String> = g
                    .leases
                    .iter()
                    .map(|l| {
                        let id: String = l.container_id.chars().take(12).collect();
                        let project = l
                            .project
                            .as_deref()
                            .map(|p| format!(" ({p})"))
                            .unwrap_or_default();
                        let share = l
                            .mps_memory
                            .map(|m| format!(" mps {}", size(m)))
                            .unwrap_or_default();
                        format!("{id}{project}{share}")
                    })
                    .collect();
                let _ = writeln!(
                    o,
                    "  {:<4} {:<24} {:>4}% {:>15}  {}",
                    g.index,
                    g.name.chars().take(24).collect::<String>(),
                    g.utilization,
                    format!("{}/{}", size(g.memory_used), size(g.memory_total)),
                    if leases.is_empty() {
                        "free".to_string()
                    } else {
                        leases.join(", ")
                    }
                );
            }
        }
        Err(e) => {
            let _ = writeln!(o, "gpus       not read: {e}");
        }
    }
    match &s.inventory {
        Ok(i) => {
            let _ = writeln!(
                o,
                "inventory  ok: {} (schema {}, {}), {} live containers, {} decisions kept",
                i.path.display(),
                i.schema,
                size(i.size_bytes),
                i.live,
                i.decisions
            );
            for f in &i.set_aside {
                let _ = writeln!(
                    o,
                    "inventory  warning: a corrupt inventory was moved aside to {}; containers running then are not counted until recreated; remove it once looked at",
                    f.display()
                );
            }
        }
        Err(e) => {
            let _ = writeln!(o, "inventory  {e}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_policy_and_a_fixture_host() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        std::fs::write(&main, format!("[inventory]\npath = {:?}\n[gpu]\nnvml_library = \"/nonexistent/libnvidia-ml.so.1\"\n", dir.path().join("inv.db"))).unwrap();
        let (_h, host) = crate::host::tests::fixture(&[]);
        let s = gather(&main, &host);
        assert_eq!(s.policy.creates, "files");
        let text = render(&s);
        assert!(
            text.starts_with(&format!("policy     ok: {}\n", main.display())),
            "{text}"
        );
        assert!(text.contains("host       memory "), "{text}");
        assert!(text.contains("  ok    host memory "), "{text}");
        assert!(text.contains("gpus       not read: "), "{text}");
        assert!(text.contains("inventory  no inventory at"), "{text}");
        // Broken: creates refused, said plainly.
        std::fs::write(&main, "bogus = 1\n").unwrap();
        let s = gather(&main, &host);
        assert_eq!(s.policy.creates, "refuse");
        let text = render(&s);
        assert!(text.contains("policy     INVALID: "), "{text}");
        assert!(
            text.contains("every create is refused until it is fixed"),
            "{text}"
        );
        serde_json::to_string(&s).unwrap();
    }

    /// A row whose create failed (its creator gone, no runtime state) neither counts
    /// as live nor holds its GPU in what status shows.
    #[test]
    fn containers_gone_stop_counting_first() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = dir.path().join("inv.db");
        let main = dir.path().join("mlenv.toml");
        std::fs::write(&main, format!("[inventory]\npath = {inventory:?}\n")).unwrap();
        let stat = crate::host::tests::proc_stat(91, 100);
        let (_h, host) = crate::host::tests::fixture(&[("proc/91/stat", &stat)]);
        let mut inv = Inventory::open(&inventory).unwrap();
        for (id, creator) in [("failed", 90), ("creating", 91)] {
            crate::inventory::tests::admit_created_by(&mut inv, &host, id, creator);
        }
        let s = gather(&main, &host);
        assert_eq!(s.inventory.unwrap().live, 1);
    }
}
