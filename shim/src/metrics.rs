//! `mlenv metrics`: the inventory and the host in Prometheus' text format, for a
//! scrape through node-exporter's textfile collector (there is no daemon to serve
//! them). Built from a [`Snapshot`] so the text is table-tested.

use crate::gpu::select::LiveLease;
use crate::host::HostState;
use crate::inventory::Live;
use std::collections::BTreeMap;
use std::fmt::Write;

/// What the metrics are made of, read once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Decisions in the inventory by outcome (the retention window).
    pub outcomes: BTreeMap<String, u64>,
    /// Refusal clauses by the policy key they name (`limits.max_memory`, `quota`,
    /// `security.refuse_privileged`, ...).
    pub refusal_reasons: BTreeMap<String, u64>,
    pub live: Vec<Live>,
    pub leases: Vec<LiveLease>,
    pub host: Option<HostState>,
}

/// The policy key a refusal clause names: the last `[section] key` in it, `quota`
/// for quota clauses, `gpu` for GPU clauses without a key, else `other`.
pub fn reason_key(clause: &str) -> String {
    if clause.starts_with("quota ") {
        return "quota".into();
    }
    if let Some(open) = clause.rfind('[') {
        let rest = &clause[open + 1..];
        if let Some((section, after)) = rest.split_once(']') {
            let key: String = after
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let section = section.trim_start_matches('[');
            if !section.is_empty()
                && !key.is_empty()
                && section.chars().all(|c| c.is_ascii_lowercase())
            {
                return format!("{section}.{key}");
            }
        }
    }
    if clause.contains("GPU") {
        return "gpu".into();
    }
    "other".into()
}

/// Counts the reasons of refusal texts (clauses joined by "; ").
pub fn count_reasons<'a>(reasons: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in reasons {
        for clause in r.split("; ") {
            *out.entry(reason_key(clause)).or_insert(0) += 1;
        }
    }
    out
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "mlenv_decisions",
        "gauge",
        "Create decisions in the inventory (its retention window), by outcome.",
    );
    for outcome in ["admitted", "refused", "error"] {
        let n = s.outcomes.get(outcome).copied().unwrap_or(0);
        let _ = writeln!(out, "mlenv_decisions{{outcome=\"{outcome}\"}} {n}");
    }
    family(
        &mut out,
        "mlenv_refusals",
        "gauge",
        "Refusal clauses in the inventory, by the policy key that refused.",
    );
    for (k, n) in &s.refusal_reasons {
        let _ = writeln!(out, "mlenv_refusals{{reason=\"{}\"}} {n}", esc(k));
    }
    family(
        &mut out,
        "mlenv_live_containers",
        "gauge",
        "Live containers admitted by mlenv, by project.",
    );
    let mut by_project: BTreeMap<&str, u64> = BTreeMap::new();
    for l in &s.live {
        *by_project
            .entry(l.project.as_deref().unwrap_or(""))
            .or_insert(0) += 1;
    }
    if by_project.is_empty() {
        let _ = writeln!(out, "mlenv_live_containers{{project=\"\"}} 0");
    }
    for (p, n) in &by_project {
        let _ = writeln!(out, "mlenv_live_containers{{project=\"{}\"}} {n}", esc(p));
    }
    family(
        &mut out,
        "mlenv_reserved_memory_bytes",
        "gauge",
        "Sum of the memory limits of live containers.",
    );
    let memory: u64 = s.live.iter().filter_map(|l| l.limits.memory).sum();
    let _ = writeln!(out, "mlenv_reserved_memory_bytes {memory}");
    family(
        &mut out,
        "mlenv_reserved_cpus",
        "gauge",
        "Sum of the CPU limits of live containers.",
    );
    let cpus: f64 = s.live.iter().filter_map(|l| l.limits.cpus).sum();
    let _ = writeln!(out, "mlenv_reserved_cpus {cpus}");
    family(
        &mut out,
        "mlenv_gpu_leases",
        "gauge",
        "Live GPU leases, by GPU and kind (exclusive, or an MPS share).",
    );
    family(
        &mut out,
        "mlenv_mps_pinned_memory_bytes",
        "gauge",
        "Pinned device memory of the live MPS shares of a GPU.",
    );
    let mut leases: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut pinned: BTreeMap<&str, u64> = BTreeMap::new();
    for l in &s.leases {
        let kind = if l.share.is_some() {
            "mps"
        } else {
            "exclusive"
        };
        *leases.entry((l.uuid.as_str(), kind)).or_insert(0) += 1;
        if let Some(share) = l.share {
            *pinned.entry(l.uuid.as_str()).or_insert(0) += share.memory;
        }
    }
    for ((gpu, kind), n) in &leases {
        let _ = writeln!(
            out,
            "mlenv_gpu_leases{{gpu=\"{}\",kind=\"{kind}\"}} {n}",
            esc(gpu)
        );
    }
    for (gpu, bytes) in &pinned {
        let _ = writeln!(
            out,
            "mlenv_mps_pinned_memory_bytes{{gpu=\"{}\"}} {bytes}",
            esc(gpu)
        );
    }
    if let Some(h) = &s.host {
        family(
            &mut out,
            "mlenv_host_memory_used_ratio",
            "gauge",
            "Host memory in use (MemTotal - MemAvailable) / MemTotal.",
        );
        let _ = writeln!(
            out,
            "mlenv_host_memory_used_ratio {}",
            h.memory_used_percent() / 100.0
        );
        family(
            &mut out,
            "mlenv_host_memory_available_bytes",
            "gauge",
            "MemAvailable.",
        );
        let _ = writeln!(out, "mlenv_host_memory_available_bytes {}", h.mem_available);
        family(
            &mut out,
            "mlenv_host_load_per_cpu",
            "gauge",
            "One-minute load average per CPU mlenv can give containers.",
        );
        let _ = writeln!(out, "mlenv_host_load_per_cpu {}", h.load_per_cpu());
        family(
            &mut out,
            "mlenv_host_pressure_some_avg10",
            "gauge",
            "PSI some avg10 percentage, by resource.",
        );
        for (r, v) in [
            ("cpu", h.pressure.cpu),
            ("memory", h.pressure.memory),
            ("io", h.pressure.io),
        ] {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "mlenv_host_pressure_some_avg10{{resource=\"{r}\"}} {v}"
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edits::Limits;

    #[test]
    fn reasons_are_the_policy_keys() {
        let cases = [
            ("memory limit 2G requested > 1G allowed ([limits] max_memory)", "limits.max_memory"),
            ("quota project=vision: 2 of 2 containers live", "quota"),
            ("host memory 91% used > 85% ([admission] max_memory_percent)", "admission.max_memory_percent"),
            ("privileged container: every host device allowed (linux.resources.devices) ([security] refuse_privileged)", "security.refuse_privileged"),
            ("capability CAP_SYS_ADMIN not in [security] allowed_capabilities", "security.allowed_capabilities"),
            ("2 GPUs requested, 1 free: GPU 0 (GPU-0000): leased to abc", "gpu"),
            ("something else", "other"),
        ];
        for (clause, want) in cases {
            assert_eq!(reason_key(clause), want, "{clause}");
        }
        let counted = count_reasons(
            ["memory limit 2G requested > 1G allowed ([limits] max_memory); quota project=p: 1 of 1 containers live", "quota user=1000: x"].into_iter(),
        );
        assert_eq!(counted.get("quota"), Some(&2));
        assert_eq!(counted.get("limits.max_memory"), Some(&1));
    }

    /// The shipped Grafana dashboard asks only for metrics this module writes.
    #[test]
    fn dashboard_uses_only_metrics_that_exist() {
        let text = include_str!("../../config/grafana/mlenv-dashboard.json");
        let dash: serde_json::Value = serde_json::from_str(text).unwrap();
        let (_dir, fixture) = crate::host::tests::fixture(&[]);
        let host = crate::host::Host::probe(&fixture).unwrap();
        let families: Vec<String> = render(&Snapshot {
            host: Some(host),
            ..Default::default()
        })
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
        let panels = dash["panels"].as_array().unwrap();
        assert!(panels.len() >= 8);
        for p in panels {
            let expr = p["targets"][0]["expr"].as_str().unwrap();
            let used: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("mlenv_"))
                .collect();
            assert!(!used.is_empty(), "{expr}");
            for m in used {
                assert!(
                    families.iter().any(|f| f == m),
                    "{m} in {expr} is not written by mlenv metrics"
                );
            }
        }
    }

    #[test]
    fn text_format() {
        let live = |id: &str, project: Option<&str>, memory: u64| Live {
            container_id: id.into(),
            root: None,
            created_ms: 0,
            uid: 1000,
            gid: 1000,
            project: project.map(str::to_string),
            limits: Limits {
                memory: Some(memory),
                cpus: Some(1.5),
                ..Default::default()
            },
            decision_id: 1,
            gpus: vec![],
            pid: None,
        };
        let s = Snapshot {
            outcomes: [("admitted".to_string(), 3), ("refused".to_string(), 2)]
                .into_iter()
                .collect(),
            refusal_reasons: [("quota".to_string(), 2)].into_iter().collect(),
            live: vec![live("a", Some("vision"), 1 << 30), live("b", None, 1 << 30)],
            leases: vec![LiveLease {
                uuid: "GPU-1".into(),
                container_id: "a".into(),
                uid: 1000,
                project: None,
                share: None,
            }],
            host: None,
        };
        let text = render(&s);
        for line in [
            "mlenv_decisions{outcome=\"admitted\"} 3",
            "mlenv_decisions{outcome=\"error\"} 0",
            "mlenv_refusals{reason=\"quota\"} 2",
            "mlenv_live_containers{project=\"vision\"} 1",
            "mlenv_live_containers{project=\"\"} 1",
            "mlenv_reserved_memory_bytes 2147483648",
            "mlenv_reserved_cpus 3",
            "mlenv_gpu_leases{gpu=\"GPU-1\",kind=\"exclusive\"} 1",
            "# TYPE mlenv_live_containers gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Every sample line is NAME{labels} VALUE or NAME VALUE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("mlenv_"), "{l}");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
