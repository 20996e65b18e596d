//! Whether the host can take one more container: host thresholds, reservations and
//! quotas, each a check with the measured value, the threshold and the policy key.
//!
//! Pure functions of the policy, the host state, what live containers hold and what
//! this one asks for; the inventory calls them inside the transaction that records the
//! decision, so that racing creates see each other.

use crate::host::HostState;
use crate::policy::{AdmissionSection, Policy, Quota};
use crate::units::{rounded, ByteSize, Cpus};
use serde::Serialize;

/// What live containers hold: a count and the sums of their limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub containers: u32,
    pub memory: u64,
    pub cpus: f64,
    /// GPUs leased.
    pub gpus: u32,
}

impl Usage {
    /// Takes one live container out of the sums: an update is decided against the
    /// others.
    pub fn remove(&mut self, c: &crate::inventory::Held) {
        self.containers = self.containers.saturating_sub(1);
        self.memory = self.memory.saturating_sub(c.memory.unwrap_or(0));
        self.cpus = (self.cpus - c.cpus.unwrap_or(0.0)).max(0.0);
        self.gpus = self.gpus.saturating_sub(c.gpus);
    }
}

/// What the inventory knows when a decision is made.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LiveUsage {
    pub all: Usage,
    pub user: Usage,
    pub project: Usage,
    /// Who holds which GPU.
    pub leases: Vec<crate::gpu::select::LiveLease>,
}

/// What the container asks for, after the limit edits.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub uid: u32,
    pub project: Option<String>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    /// GPUs to be leased.
    pub gpus: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Host,
    Reservation,
    Quota,
}

/// One check, passed or failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub kind: Kind,
    pub passed: bool,
    /// The refusal clause when failed, the same sentence with its verdict when passed:
    /// `host memory 91% used > 85% ([admission] max_memory_percent)`.
    pub text: String,
}

fn check(kind: Kind, passed: bool, text: String) -> Check {
    Check { kind, passed, text }
}

fn pct(v: f64) -> String {
    format!("{}%", Cpus(v))
}

/// The host thresholds.
pub fn host_checks(a: &AdmissionSection, h: &HostState) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(max) = a.max_memory_percent.get() {
        let used = h.memory_used_percent();
        let ok = used <= max.0;
        out.push(check(
            Kind::Host,
            ok,
            format!(
                "host memory {} used {} {} ([admission] max_memory_percent)",
                pct((used * 10.0).round() / 10.0),
                if ok { "<=" } else { ">" },
                pct(max.0)
            ),
        ));
    }
    if let Some(min) = a.min_available_memory.get() {
        let ok = h.mem_available >= min.0;
        out.push(check(
            Kind::Host,
            ok,
            format!(
                "host memory available {} {} {min} ([admission] min_available_memory)",
                rounded(h.mem_available),
                if ok { ">=" } else { "<" },
            ),
        ));
    }
    if let Some(max) = a.max_load_per_cpu.get() {
        let load = h.load_per_cpu();
        let ok = load <= max.0;
        out.push(check(
            Kind::Host,
            ok,
            format!(
                "host load {} per cpu {} {max} ([admission] max_load_per_cpu)",
                Cpus((load * 100.0).round() / 100.0),
                if ok { "<=" } else { ">" },
            ),
        ));
    }
    for (name, key, value, max) in [
        ("cpu", "max_psi_cpu", h.pressure.cpu, a.max_psi_cpu.get()),
        (
            "memory",
            "max_psi_memory",
            h.pressure.memory,
            a.max_psi_memory.get(),
        ),
        ("io", "max_psi_io", h.pressure.io, a.max_psi_io.get()),
    ] {
        // A kernel without PSI has nothing to check.
        if let (Some(v), Some(max)) = (value, max) {
            let ok = v <= max.0;
            out.push(check(
                Kind::Host,
                ok,
                format!(
                    "host {name} pressure {} {} {} ([admission] {key})",
                    pct(v),
                    if ok { "<=" } else { ">" },
                    pct(max.0)
                ),
            ));
        }
    }
    out
}

/// Reservations: the limits of live containers plus this one must fit in what the
/// host has, times the overcommit factor, less what is reserved for the host.
pub fn reservation_checks(
    a: &AdmissionSection,
    h: &HostState,
    all: &Usage,
    r: &Request,
) -> Vec<Check> {
    let mut out = Vec::new();
    if let (Some(over), Some(req)) = (a.memory_overcommit.get(), r.memory) {
        let capacity = (h.mem_total as f64 * over.0) as u64;
        let capacity = capacity.saturating_sub(a.reserved_memory.0);
        let ok = all.memory.saturating_add(req) <= capacity;
        out.push(check(
            Kind::Reservation,
            ok,
            format!(
                "memory reservations {} + {} requested {} {} (MemTotal {} x {over} - {}) ([admission] memory_overcommit, reserved_memory)",
                ByteSize(all.memory),
                ByteSize(req),
                if ok { "<=" } else { ">" },
                rounded(capacity),
                rounded(h.mem_total),
                a.reserved_memory
            ),
        ));
    }
    if let (Some(over), Some(req)) = (a.cpu_overcommit.get(), r.cpus) {
        let capacity = (h.cpus * over.0 - a.reserved_cpus).max(0.0);
        let ok = all.cpus + req <= capacity + 1e-9;
        out.push(check(
            Kind::Reservation,
            ok,
            format!(
                "cpu reservations {} + {} requested {} {} ({} cpus x {over} - {}) ([admission] cpu_overcommit, reserved_cpus)",
                Cpus(all.cpus),
                Cpus(req),
                if ok { "<=" } else { ">" },
                Cpus(capacity),
                Cpus(h.cpus),
                Cpus(a.reserved_cpus)
            ),
        ));
    }
    out
}

/// The quotas that apply to this container, each against what its user or project
/// already holds.
pub fn quota_checks(policy: &Policy, live: &LiveUsage, r: &Request) -> Vec<Check> {
    quota_checks_counting(policy, live, r, true)
}

/// [`quota_checks`], with `count` false for a container already counted in
/// `max_containers` (an update of its limits).
pub fn quota_checks_counting(
    policy: &Policy,
    live: &LiveUsage,
    r: &Request,
    count: bool,
) -> Vec<Check> {
    let mut out = Vec::new();
    for q in policy.quotas_for(r.uid, r.project.as_deref()) {
        let held = if q.project.is_some() {
            &live.project
        } else {
            &live.user
        };
        let who = quota_name(q, r.uid);
        if let Some(max) = q.max_containers.filter(|_| count) {
            let ok = held.containers < max;
            out.push(check(
                Kind::Quota,
                ok,
                format!("quota {who}: {} of {max} containers live", held.containers),
            ));
        }
        if let (Some(max), Some(req)) = (q.max_memory, r.memory) {
            let ok = held.memory.saturating_add(req) <= max.0;
            out.push(check(
                Kind::Quota,
                ok,
                format!(
                    "quota {who}: memory {} live + {} requested {} {max}",
                    ByteSize(held.memory),
                    ByteSize(req),
                    if ok { "<=" } else { ">" }
                ),
            ));
        }
        if let (Some(max), Some(req)) = (q.max_cpus, r.cpus) {
            let ok = held.cpus + req <= max.0 + 1e-9;
            out.push(check(
                Kind::Quota,
                ok,
                format!(
                    "quota {who}: cpus {} live + {} requested {} {max}",
                    Cpus(held.cpus),
                    Cpus(req),
                    if ok { "<=" } else { ">" }
                ),
            ));
        }
        if let Some(max) = q.max_gpus.filter(|_| r.gpus > 0) {
            let ok = held.gpus.saturating_add(r.gpus) <= max;
            out.push(check(
                Kind::Quota,
                ok,
                format!(
                    "quota {who}: {} GPUs leased + {} requested {} {max}",
                    held.gpus,
                    r.gpus,
                    if ok { "<=" } else { ">" }
                ),
            ));
        }
    }
    out
}

fn quota_name(q: &Quota, uid: u32) -> String {
    if q.others {
        format!("user={uid} (others)")
    } else {
        q.selector()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Pressure;
    use crate::units::{Positive, Switch};

    const G: u64 = 1 << 30;

    fn host() -> HostState {
        HostState {
            mem_total: 64 * G,
            mem_available: 32 * G,
            swap_total: 0,
            swap_free: 0,
            load1: 4.0,
            cpus: 16.0,
            pressure: Pressure {
                cpu: Some(5.0),
                memory: Some(0.0),
                io: None,
            },
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.text.as_str())
            .collect()
    }

    #[test]
    fn host_table() {
        let a = AdmissionSection::default();
        // (host change, expected failures)
        type Row = (Box<dyn Fn(&mut HostState)>, Vec<&'static str>);
        let rows: Vec<Row> = vec![
            (Box::new(|_| {}), vec![]),
            (
                Box::new(|h| h.mem_available = 5 * G),
                vec!["host memory 92.2% used > 85% ([admission] max_memory_percent)"],
            ),
            (
                Box::new(|h| {
                    h.mem_total = 8 * G;
                    h.mem_available = 3 * G
                }),
                vec!["host memory available 3G < 4G ([admission] min_available_memory)"],
            ),
            (
                Box::new(|h| h.load1 = 40.0),
                vec!["host load 2.5 per cpu > 2 ([admission] max_load_per_cpu)"],
            ),
            (
                Box::new(|h| h.pressure.cpu = Some(95.5)),
                vec!["host cpu pressure 95.5% > 90% ([admission] max_psi_cpu)"],
            ),
            (
                Box::new(|h| h.pressure.memory = Some(30.0)),
                vec!["host memory pressure 30% > 20% ([admission] max_psi_memory)"],
            ),
            // io is off by default, and no PSI means nothing to check.
            (
                Box::new(|h| {
                    h.pressure = Pressure {
                        cpu: None,
                        memory: None,
                        io: Some(99.0),
                    }
                }),
                vec![],
            ),
        ];
        for (i, (change, want)) in rows.into_iter().enumerate() {
            let mut h = host();
            change(&mut h);
            assert_eq!(failed(&host_checks(&a, &h)), want, "row {i}");
        }
        // Passed checks are sentences too, for explain.
        let all = host_checks(&a, &host());
        assert_eq!(all.len(), 5);
        assert_eq!(
            all[0].text,
            "host memory 50% used <= 85% ([admission] max_memory_percent)"
        );
    }

    #[test]
    fn switched_off_checks_do_not_run() {
        let a = AdmissionSection {
            max_memory_percent: Switch::Off,
            min_available_memory: Switch::Off,
            max_load_per_cpu: Switch::Off,
            max_psi_cpu: Switch::Off,
            max_psi_memory: Switch::Off,
            ..AdmissionSection::default()
        };
        let mut h = host();
        h.mem_available = 0;
        h.load1 = 1000.0;
        assert!(host_checks(&a, &h).is_empty());
    }

    fn req(memory: Option<u64>, cpus: Option<f64>) -> Request {
        Request {
            uid: 1000,
            project: Some("vision".into()),
            memory,
            cpus,
            gpus: 0,
        }
    }

    #[test]
    fn reservations_table() {
        let a = AdmissionSection::default(); // x1, 2G reserved, cpus x1
        let rows = [
            (Usage { containers: 3, memory: 48 * G, cpus: 12.0, gpus: 0 }, req(Some(8 * G), Some(4.0)), vec![]),
            (Usage { containers: 3, memory: 56 * G, cpus: 12.0, gpus: 0 }, req(Some(8 * G), Some(4.0)),
             vec!["memory reservations 56G + 8G requested > 62G (MemTotal 64G x 1 - 2G) ([admission] memory_overcommit, reserved_memory)"]),
            (Usage { containers: 3, memory: 0, cpus: 14.5, gpus: 0 }, req(Some(G), Some(2.0)),
             vec!["cpu reservations 14.5 + 2 requested > 16 (16 cpus x 1 - 0) ([admission] cpu_overcommit, reserved_cpus)"]),
            // No limit: nothing to reserve.
            (Usage { containers: 3, memory: 63 * G, cpus: 16.0, gpus: 0 }, req(None, None), vec![]),
        ];
        for (i, (all, r, want)) in rows.into_iter().enumerate() {
            assert_eq!(
                failed(&reservation_checks(&a, &host(), &all, &r)),
                want,
                "row {i}"
            );
        }
        let a = AdmissionSection {
            memory_overcommit: Switch::On(Positive(1.5)),
            reserved_memory: ByteSize(0),
            ..AdmissionSection::default()
        };
        let all = Usage {
            containers: 9,
            memory: 90 * G,
            cpus: 0.0,
            gpus: 0,
        };
        assert!(failed(&reservation_checks(
            &a,
            &host(),
            &all,
            &req(Some(6 * G), None)
        ))
        .is_empty());
        assert_eq!(
            failed(&reservation_checks(
                &a,
                &host(),
                &all,
                &req(Some(7 * G), None)
            ))
            .len(),
            1
        );
    }

    fn policy(text: &str) -> Policy {
        let mut p: Policy = toml::from_str(text).unwrap();
        p.validate().unwrap();
        p
    }

    #[test]
    fn quotas_table() {
        let p = policy(
            r#"
[[quota]]
project = "vision"
max_containers = 3
max_memory = "64G"
[[quota]]
user = 1000
max_cpus = 8
[[quota]]
others = true
max_containers = 2
"#,
        );
        let live = |user: Usage, project: Usage| LiveUsage {
            all: Usage::default(),
            user,
            project,
            leases: vec![],
        };
        let u = |containers, memory, cpus| Usage {
            containers,
            memory,
            cpus,
            gpus: 0,
        };
        let rows = [
            (
                live(u(1, 0, 2.0), u(2, 10 * G, 0.0)),
                req(Some(G), Some(2.0)),
                vec![],
            ),
            (
                live(u(1, 0, 2.0), u(3, 10 * G, 0.0)),
                req(Some(G), Some(2.0)),
                vec!["quota project=vision: 3 of 3 containers live"],
            ),
            (
                live(u(1, 0, 7.0), u(0, 60 * G, 0.0)),
                req(Some(8 * G), Some(2.0)),
                vec![
                    "quota user=1000: cpus 7 live + 2 requested > 8",
                    "quota project=vision: memory 60G live + 8G requested > 64G",
                ],
            ),
        ];
        for (i, (l, r, want)) in rows.into_iter().enumerate() {
            assert_eq!(failed(&quota_checks(&p, &l, &r)), want, "row {i}");
        }
        // Another user falls under `others`, counted per user; no project, no project quota.
        let r = Request {
            uid: 2000,
            project: None,
            memory: None,
            cpus: None,
            gpus: 0,
        };
        let l = live(u(2, 0, 0.0), Usage::default());
        assert_eq!(
            failed(&quota_checks(&p, &l, &r)),
            vec!["quota user=2000 (others): 2 of 2 containers live"]
        );
        // GPUs: leased plus requested against max_gpus; no GPU asked, no GPU check.
        let p = policy("[[quota]]\nproject = \"vision\"\nmax_gpus = 4\n");
        let held = Usage {
            gpus: 3,
            ..Usage::default()
        };
        let l = live(Usage::default(), held);
        let mut r = req(None, None);
        assert!(quota_checks(&p, &l, &r).is_empty());
        r.gpus = 1;
        assert_eq!(
            quota_checks(&p, &l, &r)[0].text,
            "quota project=vision: 3 GPUs leased + 1 requested <= 4"
        );
        r.gpus = 2;
        assert_eq!(
            failed(&quota_checks(&p, &l, &r)),
            vec!["quota project=vision: 3 GPUs leased + 2 requested > 4"]
        );
    }

    #[test]
    fn quota_blocks_validate() {
        for (text, want) in [
            (
                "[[quota]]\nmax_containers = 1\n",
                "give exactly one of user, project or others",
            ),
            (
                "[[quota]]\nproject = \"a\"\nuser = 1\nmax_containers = 1\n",
                "give exactly one of",
            ),
            ("[[quota]]\nproject = \"a\"\n", "set at least one of"),
            (
                "[[quota]]\nuser = \"no-such-user-here\"\nmax_containers = 1\n",
                "no such user on this host",
            ),
        ] {
            let mut p: Policy = toml::from_str(text).unwrap();
            let err = p.validate().unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        // The same selector later replaces the earlier block; names resolve to uids.
        let p = policy("[[quota]]\nproject = \"a\"\nmax_containers = 1\n[[quota]]\nproject = \"a\"\nmax_containers = 5\n[[quota]]\nuser = \"root\"\nmax_containers = 2\n");
        assert_eq!(p.quotas.len(), 2);
        assert_eq!(p.quotas[0].max_containers, Some(5));
        assert_eq!(p.quotas[1].uid, Some(0));
    }
}
