//! The chain of spec edits run on every create.
//!
//! Each edit is a small, idempotent unit: it reads the spec and the policy, changes
//! only what it owns, and writes what it did into the [`EditLog`]. A refusal is not an
//! error: every edit runs, so that one message can name every reason at once.

pub mod bound;
pub mod cpus;
pub mod memory;
pub mod pids;

use crate::policy::Policy;
use crate::spec::{Spec, SpecError};
use serde::{Deserialize, Serialize};

/// Resource limits as mlenv records them. `swap` is swap on top of memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory: Option<u64>,
    pub swap: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
}

/// What the edits did to one spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EditLog {
    /// Whether the spec needs writing back.
    pub changed: bool,
    /// One clause per reason to refuse, each naming the value and the policy key.
    pub refusals: Vec<String>,
    /// One line per change, for `mlenv explain` and the history.
    pub actions: Vec<String>,
    pub requested: Limits,
    pub effective: Limits,
}

pub trait Edit {
    fn name(&self) -> &'static str;
    fn apply(&self, spec: &mut Spec, policy: &Policy, log: &mut EditLog) -> Result<(), SpecError>;
}

/// The edits in the order they run.
pub fn chain() -> Vec<Box<dyn Edit>> {
    vec![
        Box::new(memory::Memory),
        Box::new(cpus::Cpus),
        Box::new(pids::Pids),
    ]
}

/// Runs every edit on `spec`.
pub fn apply_all(spec: &mut Spec, policy: &Policy) -> Result<EditLog, SpecError> {
    let mut log = EditLog::default();
    for edit in chain() {
        edit.apply(spec, policy, &mut log)?;
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{ByteSize, Cpus, Pids};
    use std::path::PathBuf;

    fn fixtures() -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(crate::SPEC_FIXTURES).expect("tests/fixtures/specs") {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((
                path.display().to_string(),
                serde_json::from_str(&text).unwrap(),
            ));
        }
        out.push((
            "future spec version".into(),
            serde_json::from_str(include_str!("../../../tests/fixtures/future-spec.json")).unwrap(),
        ));
        assert!(out.len() >= 7, "fixtures missing");
        out
    }

    fn spec(json: serde_json::Value) -> Spec {
        Spec {
            path: PathBuf::from("/b/config.json"),
            json,
        }
    }

    /// The copies in tests/fixtures/specs are the shared captures, where the shared
    /// directory is beside the checkout.
    #[test]
    fn fixture_copies_match_the_shared_captures() {
        let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/specs");
        let Ok(entries) = std::fs::read_dir(shared) else {
            eprintln!("skipped: {shared} not beside the checkout");
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let copy = std::path::Path::new(crate::SPEC_FIXTURES).join(path.file_name().unwrap());
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(&copy).unwrap_or_default(),
                "{} differs from {}: copy it again",
                copy.display(),
                path.display()
            );
        }
    }

    #[test]
    fn no_edit_applies_everything_kept() {
        for (name, json) in fixtures() {
            let mut s = spec(json.clone());
            let log = apply_all(&mut s, &Policy::default()).unwrap();
            assert!(!log.changed, "{name}");
            assert!(log.refusals.is_empty(), "{name}");
            assert_eq!(s.json, json, "{name}");
            // Byte-for-byte too: key order and number forms survive.
            assert_eq!(
                serde_json::to_string(&s.json).unwrap(),
                serde_json::to_string(&json).unwrap()
            );
        }
    }

    #[test]
    fn edits_keep_every_other_field_and_are_idempotent() {
        let mut policy = Policy::default();
        policy.limits.max_memory = Some(ByteSize(256 << 20));
        policy.limits.default_memory = Some(ByteSize(128 << 20));
        policy.limits.default_cpus = Some(Cpus(1.0));
        policy.limits.default_pids = Some(Pids(100));
        policy.limits.max_pids = Some(Pids(1000));
        policy.limits.over_limit = crate::policy::OverLimit::Clamp;
        for (name, json) in fixtures() {
            let mut s = spec(json.clone());
            apply_all(&mut s, &policy).unwrap();
            let once = s.json.clone();
            let log = apply_all(&mut s, &policy).unwrap();
            assert!(!log.changed, "{name}: second run changed the spec");
            assert_eq!(s.json, once, "{name}");
            // Only linux.resources may differ.
            let mut a = json.clone();
            let mut b = once.clone();
            for v in [&mut a, &mut b] {
                if let Some(l) = v.get_mut("linux").and_then(|l| l.as_object_mut()) {
                    l.remove("resources");
                }
            }
            assert_eq!(a, b, "{name}: a field outside linux.resources changed");
            let res = once.pointer("/linux/resources").unwrap();
            assert!(
                res.pointer("/memory/limit").unwrap().as_i64().unwrap() <= 256 << 20,
                "{name}"
            );
            assert!(
                res.pointer("/pids/limit").unwrap().as_i64().unwrap() <= 1000,
                "{name}"
            );
            // Device rules and everything else under resources kept.
            assert_eq!(
                res.get("devices"),
                json.pointer("/linux/resources/devices"),
                "{name}"
            );
        }
    }
}
