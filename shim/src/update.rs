//! `update` (`docker update`, `podman update`, Kubernetes in-place resize): the new
//! limits are held to the policy's maxima, so a running container cannot be raised
//! past what a create would be allowed. Engines send the resources as JSON on stdin
//! (`update --resources - ID`, containerd's runc shim) or as flags.

use crate::policy::LimitsSection;
use crate::units::{ByteSize, Cpus};
use serde_json::Value;

/// runc's default CFS period, when an update gives a quota alone.
const DEFAULT_PERIOD: i64 = 100_000;

/// The limits an update sets; `None`: left as they are. Negative: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Update {
    pub memory: Option<i64>,
    /// Memory plus swap, as runc takes it.
    pub memory_swap: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    pub pids: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot read the update's resources {source_name}: {message}")]
    Read {
        source_name: String,
        message: String,
    },
    #[error("update flag --{flag}: cannot read {value:?}")]
    Flag { flag: String, value: String },
}

impl Update {
    /// From runc's `--resources` JSON (an OCI `LinuxResources` object).
    pub fn from_json(text: &[u8], source_name: &str) -> Result<Update, UpdateError> {
        let v: Value = serde_json::from_slice(text).map_err(|e| UpdateError::Read {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        let int = |p: &str| v.pointer(p).and_then(Value::as_i64);
        Ok(Update {
            memory: int("/memory/limit"),
            memory_swap: int("/memory/swap"),
            cpu_quota: int("/cpu/quota"),
            cpu_period: int("/cpu/period").or_else(|| {
                v.pointer("/cpu/period")
                    .and_then(Value::as_u64)
                    .map(|p| p as i64)
            }),
            pids: int("/pids/limit"),
        })
    }

    /// From runc's update flags (`--memory 1g`, `--cpu-quota 50000`, ...).
    pub fn from_flags(flags: &[(String, String)]) -> Result<Update, UpdateError> {
        let mut u = Update::default();
        for (flag, value) in flags {
            let bad = || UpdateError::Flag {
                flag: flag.clone(),
                value: value.clone(),
            };
            let bytes = || -> Result<i64, UpdateError> {
                match value.trim() {
                    "-1" => Ok(-1),
                    v => v.parse::<ByteSize>().map(|b| b.0 as i64).map_err(|_| bad()),
                }
            };
            let int = || value.trim().parse::<i64>().map_err(|_| bad());
            match flag.as_str() {
                "memory" => u.memory = Some(bytes()?),
                "memory-swap" => u.memory_swap = Some(bytes()?),
                "cpu-quota" => u.cpu_quota = Some(int()?),
                "cpu-period" => u.cpu_period = Some(int()?),
                "pids-limit" => u.pids = Some(int()?),
                _ => {}
            }
        }
        Ok(u)
    }

    /// The limits to record for the container: per limit, `None` when the update
    /// leaves it, `Some(None)` when it lifts it.
    pub fn recorded(&self) -> crate::inventory::LimitChange {
        let memory = self
            .memory
            .filter(|m| *m != 0)
            .map(|m| (m > 0).then_some(m as u64));
        let cpus = self.cpu_quota.filter(|q| *q != 0).map(|q| {
            let period = self.cpu_period.filter(|p| *p > 0).unwrap_or(DEFAULT_PERIOD);
            (q > 0).then(|| q as f64 / period as f64)
        });
        let pids = self.pids.filter(|p| *p != 0).map(|p| (p > 0).then_some(p));
        crate::inventory::LimitChange { memory, cpus, pids }
    }

    /// One clause per limit raised past the policy's maximum (or lifted while one
    /// is set). 0 leaves a limit as it is, as runc reads it.
    pub fn refusals(&self, l: &LimitsSection) -> Vec<String> {
        let mut out = Vec::new();
        let show = |v: i64| {
            if v < 0 {
                "unlimited".to_string()
            } else {
                ByteSize(v as u64).to_string()
            }
        };
        if let (Some(m), Some(max)) = (self.memory.filter(|m| *m != 0), l.max_memory) {
            if m < 0 || m as u64 > max.0 {
                out.push(format!(
                    "update: memory limit {} > {max} allowed ([limits] max_memory)",
                    show(m)
                ));
            }
        }
        if let (Some(total), Some(max)) = (self.memory_swap.filter(|s| *s != 0), l.max_swap) {
            let swap = match self.memory.filter(|m| *m > 0) {
                _ if total < 0 => -1,
                Some(m) => (total - m).max(0),
                // Swap alone: measured against the whole of it.
                None => total,
            };
            if swap < 0 || swap as u64 > max.0 {
                out.push(format!(
                    "update: swap {} > {max} allowed ([limits] max_swap)",
                    show(swap)
                ));
            }
        }
        if let (Some(q), Some(max)) = (self.cpu_quota.filter(|q| *q != 0), l.max_cpus) {
            let period = self.cpu_period.filter(|p| *p > 0).unwrap_or(DEFAULT_PERIOD);
            if q < 0 {
                out.push(format!(
                    "update: cpus unlimited > {max} allowed ([limits] max_cpus)"
                ));
            } else if q as f64 / period as f64 > max.0 + 1e-9 {
                out.push(format!(
                    "update: cpus {} > {max} allowed ([limits] max_cpus)",
                    Cpus(q as f64 / period as f64)
                ));
            }
        }
        if let (Some(p), Some(max)) = (self.pids.filter(|p| *p != 0), l.max_pids) {
            if p < 0 || p > max.0 {
                out.push(format!(
                    "update: pids limit {} > {max} allowed ([limits] max_pids)",
                    if p < 0 {
                        "unlimited".to_string()
                    } else {
                        p.to_string()
                    }
                ));
            }
        }
        out
    }
}

/// The reservations and quotas a raise is held to: the container admitted again with
/// its new limits beside every other live container (`others`), as a create would be.
/// Only a limit that now counts for more than the inventory holds for it is checked: a
/// lowered or lifted limit is not (lifting is for the maxima, and an unlimited
/// container counts for nothing here as at create). Without `host` (it could not be
/// read) reservations are not checked.
pub fn quota_refusals(
    policy: &crate::policy::Policy,
    host: Option<&crate::host::HostState>,
    held: &crate::inventory::Held,
    others: &crate::admission::LiveUsage,
    change: &crate::inventory::LimitChange,
) -> Vec<String> {
    use crate::admission::{self, Request};
    let memory = change
        .memory
        .flatten()
        .filter(|m| *m > held.memory.unwrap_or(0));
    let cpus = change
        .cpus
        .flatten()
        .filter(|c| *c > held.cpus.unwrap_or(0.0) + 1e-9);
    if memory.is_none() && cpus.is_none() {
        return Vec::new();
    }
    let request = Request {
        uid: held.uid,
        project: held.project.clone(),
        memory,
        cpus,
        gpus: 0,
    };
    let mut checks = Vec::new();
    if let Some(h) = host {
        checks.extend(admission::reservation_checks(
            &policy.admission,
            h,
            &others.all,
            &request,
        ));
    }
    checks.extend(admission::quota_checks_counting(
        policy, others, &request, false,
    ));
    checks
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| format!("update: {}", c.text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Pids;

    fn limits() -> LimitsSection {
        LimitsSection {
            max_memory: Some(ByteSize(1 << 30)),
            max_swap: Some(ByteSize(512 << 20)),
            max_cpus: Some(Cpus(2.0)),
            max_pids: Some(Pids(100)),
            ..Default::default()
        }
    }

    #[test]
    fn update_table() {
        let json = |t: &str| Update::from_json(t.as_bytes(), "stdin").unwrap();
        let cases: Vec<(&str, Update, Vec<&str>)> = vec![
            // What Docker sends for `docker update -m 512m` (fields it does not change
            // are absent).
            (
                "within",
                json(r#"{"memory":{"limit":536870912},"cpu":{"shares":0}}"#),
                vec![],
            ),
            (
                "memory above",
                json(r#"{"memory":{"limit":2147483648}}"#),
                vec!["update: memory limit 2G > 1G allowed ([limits] max_memory)"],
            ),
            (
                "memory lifted",
                json(r#"{"memory":{"limit":-1}}"#),
                vec!["update: memory limit unlimited > 1G allowed ([limits] max_memory)"],
            ),
            (
                "zero leaves it",
                json(r#"{"memory":{"limit":0},"pids":{"limit":0}}"#),
                vec![],
            ),
            (
                "swap on top",
                json(r#"{"memory":{"limit":536870912,"swap":1610612736}}"#),
                vec!["update: swap 1G > 512M allowed ([limits] max_swap)"],
            ),
            (
                "swap unlimited",
                json(r#"{"memory":{"swap":-1}}"#),
                vec!["update: swap unlimited > 512M allowed ([limits] max_swap)"],
            ),
            (
                "cpus",
                json(r#"{"cpu":{"quota":300000,"period":100000}}"#),
                vec!["update: cpus 3 > 2 allowed ([limits] max_cpus)"],
            ),
            (
                "cpus at max",
                json(r#"{"cpu":{"quota":200000,"period":100000}}"#),
                vec![],
            ),
            (
                "cpus lifted",
                json(r#"{"cpu":{"quota":-1}}"#),
                vec!["update: cpus unlimited > 2 allowed ([limits] max_cpus)"],
            ),
            (
                "pids",
                json(r#"{"pids":{"limit":-1}}"#),
                vec!["update: pids limit unlimited > 100 allowed ([limits] max_pids)"],
            ),
        ];
        for (name, u, want) in cases {
            assert_eq!(u.refusals(&limits()), want, "{name}");
            assert_eq!(
                u.refusals(&LimitsSection::default()),
                Vec::<String>::new(),
                "{name}: no maxima"
            );
        }
    }

    #[test]
    fn flags_as_runc_reads_them() {
        let f = |pairs: &[(&str, &str)]| {
            Update::from_flags(
                &pairs
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let u = f(&[
            ("memory", "2g"),
            ("cpu-quota", "50000"),
            ("pids-limit", "-1"),
            ("blkio-weight", "10"),
        ])
        .unwrap();
        assert_eq!(u.memory, Some(2 << 30));
        assert_eq!(u.cpu_quota, Some(50000));
        assert_eq!(u.pids, Some(-1));
        assert_eq!(u.refusals(&limits()).len(), 2);
        assert!(f(&[("memory", "lots")])
            .unwrap_err()
            .to_string()
            .contains("--memory: cannot read \"lots\""));
        assert!(Update::from_json(b"{", "stdin")
            .unwrap_err()
            .to_string()
            .starts_with("cannot read the update's resources stdin"));
    }

    #[test]
    fn a_raise_is_held_to_quotas_and_reservations() {
        use crate::admission::{LiveUsage, Usage};
        use crate::inventory::{Held, LimitChange};
        const G: u64 = 1 << 30;
        let mut policy: crate::policy::Policy = toml::from_str(
            "[admission]\nmemory_overcommit = 1.0\n\n[[quota]]\nuser = 1000\nmax_memory = \"4G\"\nmax_cpus = 4\nmax_containers = 1\n",
        )
        .unwrap();
        policy.validate().unwrap();
        let host = crate::host::HostState {
            mem_total: 10 * G,
            mem_available: 10 * G,
            swap_total: 0,
            swap_free: 0,
            load1: 0.0,
            cpus: 8.0,
            pressure: Default::default(),
        };
        let held = Held {
            uid: 1000,
            project: None,
            memory: Some(G),
            cpus: Some(1.0),
            gpus: 0,
        };
        // One other container of the same user holds 2G and 2 CPUs; the host has 5G
        // reserved all told, this one's 1G not among it.
        let others = LiveUsage {
            all: Usage {
                containers: 3,
                memory: 5 * G,
                cpus: 3.0,
                gpus: 0,
            },
            user: Usage {
                containers: 1,
                memory: 2 * G,
                cpus: 2.0,
                gpus: 0,
            },
            ..Default::default()
        };
        let change = |memory: Option<Option<u64>>, cpus: Option<Option<f64>>| LimitChange {
            memory,
            cpus,
            pids: None,
        };
        let cases: Vec<(&str, LimitChange, Vec<&str>)> = vec![
            ("within the quota", change(Some(Some(2 * G)), None), vec![]),
            (
                "memory past the user's quota",
                change(Some(Some(3 * G)), None),
                vec!["update: quota user=1000: memory 2G live + 3G requested > 4G"],
            ),
            (
                "cpus past the quota",
                change(None, Some(Some(3.0))),
                vec!["update: quota user=1000: cpus 2 live + 3 requested > 4"],
            ),
            (
                "past the host's reservations too",
                change(Some(Some(4 * G)), None),
                vec![
                    "update: memory reservations 5G + 4G requested > 8G (MemTotal 10G x 1 - 2G) ([admission] memory_overcommit, reserved_memory)",
                    "update: quota user=1000: memory 2G live + 4G requested > 4G",
                ],
            ),
            ("lowered: never held back", change(Some(Some(G / 2)), Some(Some(0.5))), vec![]),
            ("lifted: the maxima's business", change(Some(None), Some(None)), vec![]),
            ("nothing changed", change(None, None), vec![]),
        ];
        for (name, c, want) in cases {
            assert_eq!(
                quota_refusals(&policy, Some(&host), &held, &others, &c),
                want,
                "{name}"
            );
        }
        // max_containers is not counted again: the container is already live.
        assert!(quota_refusals(
            &policy,
            None,
            &held,
            &others,
            &change(Some(Some(G + 1)), None)
        )
        .is_empty());
        // An unlimited container given a limit counts from nothing.
        let unlimited = Held {
            memory: None,
            ..held.clone()
        };
        assert_eq!(
            quota_refusals(
                &policy,
                None,
                &unlimited,
                &others,
                &change(Some(Some(3 * G)), None)
            ),
            vec!["update: quota user=1000: memory 2G live + 3G requested > 4G"]
        );
    }
}
