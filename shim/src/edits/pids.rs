//! Process count limit: `linux.resources.pids.limit`.

use super::bound::{decide, Step};
use super::{Edit, EditLog};
use crate::policy::Policy;
use crate::spec::{Spec, SpecError};
use crate::units;
use serde_json::json;

pub struct Pids;

impl Edit for Pids {
    fn name(&self) -> &'static str {
        "pids"
    }

    fn apply(&self, spec: &mut Spec, policy: &Policy, log: &mut EditLog) -> Result<(), SpecError> {
        let limits = &policy.limits;
        let requested = spec
            .int("/linux/resources/pids/limit")?
            .filter(|v| *v > 0)
            .map(units::Pids);
        log.requested.pids = requested.map(|p| p.0);
        let step = decide(
            "pids limit",
            "max_pids",
            requested,
            limits.default_pids,
            limits.max_pids,
            limits.over_limit,
        );
        log.effective.pids = step.effective(requested).map(|p| p.0);
        let value = match step {
            Step::Keep => return Ok(()),
            Step::Refuse(r) => {
                log.refusals.push(r);
                return Ok(());
            }
            Step::Default(v) => {
                log.actions
                    .push(format!("pids limit set to the default {v}"));
                v
            }
            Step::Clamp(v) => {
                log.actions.push(format!(
                    "pids limit {} clamped to {v}",
                    requested.map(|p| p.0).unwrap_or(0)
                ));
                v
            }
        };
        spec.object_mut(&["linux", "resources", "pids"])?
            .insert("limit".into(), json!(value.0));
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

    fn policy(default: Option<i64>, max: Option<i64>, over: OverLimit) -> Policy {
        let mut p = Policy::default();
        p.limits.default_pids = default.map(units::Pids);
        p.limits.max_pids = max.map(units::Pids);
        p.limits.over_limit = over;
        p
    }

    #[test]
    fn table() {
        use OverLimit::*;
        let rows: Vec<(Value, Policy, Value, Vec<&str>)> = vec![
            (json!({}), Policy::default(), json!({}), vec![]),
            (
                json!({}),
                policy(Some(100), None, Refuse),
                json!({"pids": {"limit": 100}}),
                vec![],
            ),
            (
                json!({"pids": {"limit": 0}}),
                policy(Some(100), None, Refuse),
                json!({"pids": {"limit": 100}}),
                vec![],
            ),
            (
                json!({"pids": {"limit": -1}}),
                policy(None, Some(500), Refuse),
                json!({"pids": {"limit": 500}}),
                vec![],
            ),
            (
                json!({"pids": {"limit": 200}}),
                policy(Some(100), Some(500), Refuse),
                json!({"pids": {"limit": 200}}),
                vec![],
            ),
            (
                json!({"pids": {"limit": 2048}}),
                policy(None, Some(500), Clamp),
                json!({"pids": {"limit": 500}}),
                vec![],
            ),
            (
                json!({"pids": {"limit": 2048}}),
                policy(None, Some(500), Refuse),
                json!({"pids": {"limit": 2048}}),
                vec!["pids limit 2048 requested > 500 allowed ([limits] max_pids)"],
            ),
        ];
        for (i, (input, policy, want, refusals)) in rows.into_iter().enumerate() {
            let mut spec = Spec {
                path: PathBuf::from("/c"),
                json: json!({"linux": {"resources": input.clone()}}),
            };
            let mut log = EditLog::default();
            Pids.apply(&mut spec, &policy, &mut log).unwrap();
            assert_eq!(spec.json["linux"]["resources"], want, "row {i}: {input}");
            assert_eq!(log.refusals, refusals, "row {i}");
            if refusals.is_empty() {
                let before = spec.json.clone();
                let mut log2 = EditLog::default();
                Pids.apply(&mut spec, &policy, &mut log2).unwrap();
                assert_eq!(spec.json, before, "row {i}: not idempotent");
                assert!(!log2.changed, "row {i}");
            }
        }
    }
}
