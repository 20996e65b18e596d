//! CPU limit: `linux.resources.cpu.quota` over `period`, as Docker's --cpus writes it.
//! Shares and cpusets are left alone.

use super::bound::{decide, Step};
use super::{Edit, EditLog};
use crate::policy::Policy;
use crate::spec::{Spec, SpecError};
use crate::units;
use serde_json::json;

pub struct Cpus;

/// The CFS period Docker uses, and the one set when the spec has none.
pub const DEFAULT_PERIOD: i64 = 100_000;

impl Edit for Cpus {
    fn name(&self) -> &'static str {
        "cpus"
    }

    fn apply(&self, spec: &mut Spec, policy: &Policy, log: &mut EditLog) -> Result<(), SpecError> {
        let limits = &policy.limits;
        let quota = spec.int("/linux/resources/cpu/quota")?.filter(|q| *q > 0);
        let period = spec.int("/linux/resources/cpu/period")?.filter(|p| *p > 0);
        let used_period = period.unwrap_or(DEFAULT_PERIOD);
        let requested = quota.map(|q| units::Cpus(q as f64 / used_period as f64));
        log.requested.cpus = requested.map(|c| c.0);

        let step = decide(
            "cpus",
            "max_cpus",
            requested,
            limits.default_cpus,
            limits.max_cpus,
            limits.over_limit,
        );
        log.effective.cpus = step.effective(requested).map(|c| c.0);
        let value = match step {
            Step::Keep => return Ok(()),
            Step::Refuse(r) => {
                log.refusals.push(r);
                return Ok(());
            }
            Step::Default(v) => {
                log.actions.push(format!("cpus set to the default {v}"));
                v
            }
            Step::Clamp(v) => {
                log.actions.push(format!(
                    "cpus {} clamped to {v}",
                    requested.unwrap_or(units::Cpus(0.0))
                ));
                v
            }
        };
        // At least 1 ms of quota, the kernel's minimum.
        let new_quota = ((value.0 * used_period as f64).round() as i64).max(1000);
        let cpu = spec.object_mut(&["linux", "resources", "cpu"])?;
        cpu.insert("quota".into(), json!(new_quota));
        if period.is_none() {
            cpu.insert("period".into(), json!(used_period));
        }
        log.changed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OverLimit;
    use serde_json::{json, Value};
    use std::path::PathBuf;

    fn policy(default: Option<f64>, max: Option<f64>, over: OverLimit) -> Policy {
        let mut p = Policy::default();
        p.limits.default_cpus = default.map(units::Cpus);
        p.limits.max_cpus = max.map(units::Cpus);
        p.limits.over_limit = over;
        p
    }

    #[test]
    fn table() {
        use OverLimit::*;
        let rows: Vec<(Value, Policy, Value, Vec<&str>)> = vec![
            (json!({}), Policy::default(), json!({}), vec![]),
            (
                json!({"cpu": {"shares": 0, "quota": 150000, "period": 100000}}),
                Policy::default(),
                json!({"cpu": {"shares": 0, "quota": 150000, "period": 100000}}),
                vec![],
            ),
            (
                json!({}),
                policy(Some(2.0), None, Refuse),
                json!({"cpu": {"quota": 200000, "period": 100000}}),
                vec![],
            ),
            (
                json!({"cpu": {"shares": 512}}),
                policy(Some(0.5), None, Refuse),
                json!({"cpu": {"shares": 512, "quota": 50000, "period": 100000}}),
                vec![],
            ),
            (
                json!({"cpu": {"quota": -1, "period": 50000}}),
                policy(None, Some(4.0), Refuse),
                json!({"cpu": {"quota": 200000, "period": 50000}}),
                vec![],
            ),
            (
                json!({"cpu": {"quota": 800000, "period": 100000}}),
                policy(None, Some(4.0), Clamp),
                json!({"cpu": {"quota": 400000, "period": 100000}}),
                vec![],
            ),
            (
                json!({"cpu": {"quota": 800000, "period": 100000}}),
                policy(None, Some(4.0), Refuse),
                json!({"cpu": {"quota": 800000, "period": 100000}}),
                vec!["cpus 8 requested > 4 allowed ([limits] max_cpus)"],
            ),
            (
                json!({"cpu": {"quota": 150000, "period": 100000}}),
                policy(Some(1.0), Some(4.0), Refuse),
                json!({"cpu": {"quota": 150000, "period": 100000}}),
                vec![],
            ),
            // Tiny CPU shares still get the kernel's minimum quota.
            (
                json!({}),
                policy(Some(0.001), None, Refuse),
                json!({"cpu": {"quota": 1000, "period": 100000}}),
                vec![],
            ),
        ];
        for (i, (input, policy, want, refusals)) in rows.into_iter().enumerate() {
            let mut spec = Spec {
                path: PathBuf::from("/c"),
                json: json!({"linux": {"resources": input.clone()}}),
            };
            let mut log = EditLog::default();
            Cpus.apply(&mut spec, &policy, &mut log).unwrap();
            assert_eq!(spec.json["linux"]["resources"], want, "row {i}: {input}");
            assert_eq!(log.refusals, refusals, "row {i}");
            if refusals.is_empty() {
                let mut log2 = EditLog::default();
                let before = spec.json.clone();
                Cpus.apply(&mut spec, &policy, &mut log2).unwrap();
                assert_eq!(spec.json, before, "row {i}: not idempotent");
                assert!(!log2.changed, "row {i}");
            }
        }
    }
}
