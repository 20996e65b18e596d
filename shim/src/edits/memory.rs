//! Memory and swap limits: `linux.resources.memory.limit` and `.swap`.
//!
//! The OCI `swap` value is memory plus swap (Docker's --memory-swap); the policy speaks
//! of swap on top of memory, so the two are decided together: a clamped memory limit
//! keeps the swap the container asked for on top of it.

use super::bound::{decide, Step};
use super::{Edit, EditLog};
use crate::policy::Policy;
use crate::spec::{Spec, SpecError};
use crate::units::ByteSize;
use serde_json::json;

pub struct Memory;

/// Swap as requested in the spec.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Swap {
    Unset,
    Unlimited,
    Extra(u64),
}

fn positive(v: Option<i64>) -> Option<u64> {
    v.filter(|v| *v > 0).map(|v| v as u64)
}

impl Edit for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn apply(&self, spec: &mut Spec, policy: &Policy, log: &mut EditLog) -> Result<(), SpecError> {
        let limits = &policy.limits;
        let req_mem = positive(spec.int("/linux/resources/memory/limit")?);
        let req_total = spec.int("/linux/resources/memory/swap")?;
        let req_swap = match (req_total, req_mem) {
            (Some(t), _) if t < 0 => Swap::Unlimited,
            (Some(t), Some(m)) if t as u64 >= m => Swap::Extra(t as u64 - m),
            _ => Swap::Unset,
        };
        log.requested.memory = req_mem;
        log.requested.swap = match req_swap {
            Swap::Extra(e) => Some(e),
            _ => None,
        };

        let step = decide(
            "memory limit",
            "max_memory",
            req_mem.map(ByteSize),
            limits.default_memory,
            limits.max_memory,
            limits.over_limit,
        );
        let eff_mem = step.effective(req_mem.map(ByteSize)).map(|b| b.0);
        match &step {
            Step::Refuse(r) => log.refusals.push(r.clone()),
            Step::Default(v) => log
                .actions
                .push(format!("memory limit set to the default {v}")),
            Step::Clamp(v) => log.actions.push(format!(
                "memory limit {} clamped to {v}",
                ByteSize(req_mem.unwrap_or(0))
            )),
            Step::Keep => {}
        }
        log.effective.memory = eff_mem;

        // Swap is only limited together with memory.
        let Some(mem) = eff_mem else {
            log.effective.swap = log.requested.swap;
            return Ok(());
        };
        let swap_req = match req_swap {
            Swap::Extra(e) => Some(ByteSize(e)),
            Swap::Unset | Swap::Unlimited => None,
        };
        let swap_step = decide(
            "swap",
            "max_swap",
            swap_req,
            limits.default_swap,
            limits.max_swap,
            limits.over_limit,
        );
        match &swap_step {
            Step::Refuse(r) => log.refusals.push(r.clone()),
            Step::Default(v) => log.actions.push(format!("swap set to the default {v}")),
            Step::Clamp(v) => log.actions.push(format!(
                "swap {} clamped to {v}",
                swap_req.unwrap_or(ByteSize(0))
            )),
            Step::Keep => {}
        }
        let eff_swap = swap_step.effective(swap_req).map(|b| b.0);
        log.effective.swap = eff_swap;

        let want_total = match (eff_swap, req_swap) {
            (Some(e), _) => Some(mem.saturating_add(e) as i64),
            (None, Swap::Unlimited) => Some(-1),
            (None, _) => None,
        };
        if Some(mem as i64) != spec.int("/linux/resources/memory/limit")? {
            spec.object_mut(&["linux", "resources", "memory"])?
                .insert("limit".into(), json!(mem));
            log.changed = true;
        }
        if want_total.is_some() && want_total != req_total {
            spec.object_mut(&["linux", "resources", "memory"])?
                .insert("swap".into(), json!(want_total));
            log.changed = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OverLimit;
    use serde_json::{json, Value};
    use std::path::PathBuf;

    const M: u64 = 1 << 20;

    fn run(resources: Value, policy: &Policy) -> (Value, EditLog) {
        let mut spec = Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({"ociVersion": "1.0.2", "linux": {"resources": resources, "other": 1}}),
        };
        let mut log = EditLog::default();
        Memory.apply(&mut spec, policy, &mut log).unwrap();
        // Idempotent: a second run changes nothing.
        let mut again = spec.clone();
        let mut log2 = EditLog::default();
        Memory.apply(&mut again, policy, &mut log2).unwrap();
        if log.refusals.is_empty() {
            assert!(!log2.changed, "second run changed {:?}", again.json);
            assert_eq!(again.json, spec.json);
        }
        assert_eq!(spec.json["linux"]["other"], 1);
        (spec.json["linux"]["resources"].clone(), log)
    }

    fn policy(
        default: Option<u64>,
        max: Option<u64>,
        dswap: Option<u64>,
        mswap: Option<u64>,
        over: OverLimit,
    ) -> Policy {
        let mut p = Policy::default();
        p.limits.default_memory = default.map(ByteSize);
        p.limits.max_memory = max.map(ByteSize);
        p.limits.default_swap = dswap.map(ByteSize);
        p.limits.max_swap = mswap.map(ByteSize);
        p.limits.over_limit = over;
        p
    }

    #[test]
    fn table() {
        use OverLimit::*;
        let rows: Vec<(Value, Policy, Value, Vec<&str>)> = vec![
            // No policy: untouched.
            (json!({}), Policy::default(), json!({}), vec![]),
            (
                json!({"memory": {"limit": 512 * M}}),
                Policy::default(),
                json!({"memory": {"limit": 512 * M}}),
                vec![],
            ),
            // Default applies to an unlimited container.
            (
                json!({}),
                policy(Some(256 * M), None, None, None, Refuse),
                json!({"memory": {"limit": 256 * M}}),
                vec![],
            ),
            (
                json!({"memory": {"limit": -1}}),
                policy(Some(256 * M), None, None, None, Refuse),
                json!({"memory": {"limit": 256 * M}}),
                vec![],
            ),
            // Maximum alone caps an unlimited container.
            (
                json!({}),
                policy(None, Some(M * 1024), None, None, Refuse),
                json!({"memory": {"limit": 1024 * M}}),
                vec![],
            ),
            // Within the maximum: kept, Docker's 2x swap kept.
            (
                json!({"memory": {"limit": 512 * M, "swap": 1024 * M}}),
                policy(None, Some(1024 * M), None, None, Refuse),
                json!({"memory": {"limit": 512 * M, "swap": 1024 * M}}),
                vec![],
            ),
            // Over the maximum, clamp: swap on top kept.
            (
                json!({"memory": {"limit": 2048 * M, "swap": 4096 * M}}),
                policy(None, Some(1024 * M), None, None, Clamp),
                json!({"memory": {"limit": 1024 * M, "swap": 3072 * M}}),
                vec![],
            ),
            // Over the maximum, refuse.
            (
                json!({"memory": {"limit": 2048 * M}}),
                policy(None, Some(1024 * M), None, None, Refuse),
                json!({"memory": {"limit": 2048 * M}}),
                vec!["memory limit 2G requested > 1G allowed ([limits] max_memory)"],
            ),
            // Swap default when only memory is set by default; no swap: total = memory.
            (
                json!({}),
                policy(Some(256 * M), None, Some(0), None, Refuse),
                json!({"memory": {"limit": 256 * M, "swap": 256 * M}}),
                vec![],
            ),
            // Unlimited swap capped by max_swap.
            (
                json!({"memory": {"limit": 256 * M, "swap": -1}}),
                policy(None, None, None, Some(64 * M), Refuse),
                json!({"memory": {"limit": 256 * M, "swap": 320 * M}}),
                vec![],
            ),
            // Too much swap, refuse and clamp.
            (
                json!({"memory": {"limit": 256 * M, "swap": 768 * M}}),
                policy(None, None, None, Some(256 * M), Refuse),
                json!({"memory": {"limit": 256 * M, "swap": 768 * M}}),
                vec!["swap 512M requested > 256M allowed ([limits] max_swap)"],
            ),
            (
                json!({"memory": {"limit": 256 * M, "swap": 768 * M}}),
                policy(None, None, None, Some(256 * M), Clamp),
                json!({"memory": {"limit": 256 * M, "swap": 512 * M}}),
                vec![],
            ),
            // Both over: both clauses.
            (
                json!({"memory": {"limit": 2048 * M, "swap": 8192 * M}}),
                policy(None, Some(1024 * M), None, Some(M), Refuse),
                json!({"memory": {"limit": 2048 * M, "swap": 8192 * M}}),
                vec![
                    "memory limit 2G requested > 1G allowed ([limits] max_memory)",
                    "swap 6G requested > 1M allowed ([limits] max_swap)",
                ],
            ),
            // Swap policy without any memory limit: nothing to hang swap on.
            (
                json!({}),
                policy(None, None, Some(0), Some(M), Refuse),
                json!({}),
                vec![],
            ),
            // Other memory fields survive.
            (
                json!({"memory": {"limit": 2048 * M, "reservation": 5, "disableOOMKiller": false}}),
                policy(None, Some(1024 * M), None, None, Clamp),
                json!({"memory": {"limit": 1024 * M, "reservation": 5, "disableOOMKiller": false}}),
                vec![],
            ),
        ];
        for (i, (input, policy, want, refusals)) in rows.into_iter().enumerate() {
            let (got, log) = run(input.clone(), &policy);
            assert_eq!(got, want, "row {i}: {input}");
            assert_eq!(log.refusals, refusals, "row {i}: {input}");
        }
    }

    #[test]
    fn records_requested_and_effective() {
        let p = policy(None, Some(1024 * M), None, None, OverLimit::Clamp);
        let (_, log) = run(json!({"memory": {"limit": 2048 * M, "swap": 4096 * M}}), &p);
        assert_eq!(log.requested.memory, Some(2048 * M));
        assert_eq!(log.requested.swap, Some(2048 * M));
        assert_eq!(log.effective.memory, Some(1024 * M));
        assert_eq!(log.effective.swap, Some(2048 * M));
        assert_eq!(log.actions, vec!["memory limit 2G clamped to 1G"]);
    }

    #[test]
    fn wrong_type_is_an_error() {
        let mut spec = Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({"linux": {"resources": {"memory": {"limit": "1G"}}}}),
        };
        let err = Memory
            .apply(&mut spec, &Policy::default(), &mut EditLog::default())
            .unwrap_err();
        assert!(
            err.to_string().contains("linux.resources.memory.limit"),
            "{err}"
        );
    }
}
