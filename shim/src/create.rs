//! What `mlenv-runtime create` does before handing over: load the policy, run the
//! edits on config.json, decide, record, and say which runtime to exec.

use crate::argv::Invocation;
use crate::clock::Clock;
use crate::edits::{self, EditLog};
use crate::inventory::{Decision, Inventory, InventoryError, Outcome};
use crate::lowlevel::{self, LowLevelError};
use crate::policy::{self, Loaded, OnInvalidPolicy, PolicyError};
use crate::runclog::RuncLog;
use crate::spec::{Spec, SpecError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("policy invalid: {0}; fix it and check with `mlenv policy check`")]
    Policy(PolicyError),
    #[error("policy invalid: {error}; and no last-known-good policy to fall back on: {fallback}; fix the policy and check with `mlenv policy check`")]
    NoFallback {
        error: Box<PolicyError>,
        fallback: Box<PolicyError>,
    },
    #[error("no container id in the {0} command")]
    NoId(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    LowLevel(#[from] LowLevelError),
}

/// The outcome of a create.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Exec this runtime with the original argv.
    Admitted { runtime: PathBuf },
    /// Refused: the reason, one clause per failed check.
    Refused(String),
}

/// The policy in force: the files, or the last known good one when the files do not
/// validate and the policy says to fall back (said in the log as a warning).
pub fn policy_in_force(main: &Path, log: &mut RuncLog, now_ms: i64) -> Result<Loaded, CreateError> {
    match policy::load(main) {
        Ok(loaded) => {
            // Best effort: a read-only inventory directory must not block creates.
            let _ = policy::save_last_known_good(&loaded.policy);
            Ok(loaded)
        }
        Err(error) => {
            let lenient = policy::lenient(main);
            if lenient.on_invalid_policy != Some(OnInvalidPolicy::LastKnownGood) {
                return Err(CreateError::Policy(error));
            }
            let inventory = lenient
                .inventory_path
                .unwrap_or_else(|| PathBuf::from(policy::DEFAULT_INVENTORY));
            match policy::load_last_known_good(&inventory) {
                Ok(lkg) => {
                    log.line(
                        "warning",
                        &format!(
                            "mlenv: policy invalid: {error}; using the last known good policy {}",
                            lkg.files[0].display()
                        ),
                        now_ms,
                    );
                    Ok(lkg)
                }
                Err(fallback) => Err(CreateError::NoFallback {
                    error: Box::new(error),
                    fallback: Box::new(fallback),
                }),
            }
        }
    }
}

/// Runs a create up to the hand-over. Every decision that gets as far as a container
/// id is recorded, errors included.
pub fn prepare(
    inv: &Invocation,
    cwd: &Path,
    main: &Path,
    clock: &dyn Clock,
    log: &mut RuncLog,
) -> Result<Verdict, CreateError> {
    let now = clock.now_ms();
    let loaded = policy_in_force(main, log, now)?;
    let policy = &loaded.policy;
    let runtime = lowlevel::locate(policy.runtime.path.as_deref())?;
    let id = inv
        .container_id
        .clone()
        .ok_or_else(|| CreateError::NoId(inv.subcommand.clone().unwrap_or_default()))?;
    let bundle = inv.bundle_dir(cwd);

    let mut decision = Decision::new(now, &id, &bundle);
    decision.root = inv.root.as_ref().map(|r| r.display().to_string());
    let outcome = edit_and_decide(&bundle, &loaded, &mut decision);
    let mut inventory = Inventory::open(&policy.inventory.path)?;
    match outcome {
        Ok(edits) => {
            decision.detail = serde_json::json!({
                "subcommand": inv.subcommand,
                "runtime": runtime,
                "policy_files": loaded.files,
                "actions": edits.actions,
                "refusals": edits.refusals,
            });
            inventory.record(&decision)?;
            Ok(match decision.outcome {
                Outcome::Admitted => Verdict::Admitted { runtime },
                _ => Verdict::Refused(decision.reason),
            })
        }
        Err(e) => {
            decision.outcome = Outcome::Error;
            decision.reason = e.to_string();
            decision.detail = serde_json::json!({ "subcommand": inv.subcommand });
            // The error is what the user must see; a failed record must not hide it.
            let _ = inventory.record(&decision);
            Err(e.into())
        }
    }
}

/// Reads the spec, runs the edits, fills in the decision and, when admitted, writes
/// the spec back.
fn edit_and_decide(
    bundle: &Path,
    loaded: &Loaded,
    decision: &mut Decision,
) -> Result<EditLog, SpecError> {
    let mut spec = Spec::load(bundle)?;
    (decision.uid, decision.gid) = spec.user();
    decision.project = spec.env("MLENV_PROJECT").map(str::to_string);
    let edits = edits::apply_all(&mut spec, &loaded.policy)?;
    decision.requested = edits.requested;
    decision.effective = edits.effective;
    if edits.refusals.is_empty() {
        if edits.changed {
            spec.save()?;
        }
        decision.outcome = Outcome::Admitted;
        decision.reason = if edits.actions.is_empty() {
            "admitted".into()
        } else {
            format!("admitted: {}", edits.actions.join("; "))
        };
    } else {
        decision.outcome = Outcome::Refused;
        decision.reason = edits.refusals.join("; ");
    }
    Ok(edits)
}

/// After a successful `delete` (or a foreground `run` that returned), the container no
/// longer counts. Best effort: a broken policy or inventory must never make a delete
/// fail.
pub fn record_end(
    inv: &Invocation,
    main: &Path,
    clock: &dyn Clock,
    reason: &str,
) -> Result<(), String> {
    let Some(id) = &inv.container_id else {
        return Ok(());
    };
    let path = match policy::load(main) {
        Ok(l) => l.policy.inventory.path,
        Err(_) => policy::lenient(main)
            .inventory_path
            .unwrap_or_else(|| PathBuf::from(policy::DEFAULT_INVENTORY)),
    };
    if !path.exists() {
        return Ok(());
    }
    let root = inv.root.as_ref().map(|r| r.display().to_string());
    let mut inventory = Inventory::open(&path).map_err(|e| e.to_string())?;
    inventory
        .end(id, root.as_deref(), clock.now_ms(), reason)
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::scan;
    use crate::clock::FixedClock;
    use std::ffi::OsString;
    use std::fs;

    struct Fixture {
        dir: tempfile::TempDir,
        main: PathBuf,
        bundle: PathBuf,
    }

    fn fixture(policy_extra: &str, spec: serde_json::Value) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        let runtime = dir.path().join("runc");
        fs::write(&runtime, "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        fs::write(
            &main,
            format!(
                "[runtime]\npath = {:?}\n[inventory]\npath = {:?}\n{policy_extra}",
                runtime,
                dir.path().join("inv/mlenv.db")
            ),
        )
        .unwrap();
        let bundle = dir.path().join("bundle");
        fs::create_dir(&bundle).unwrap();
        fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        Fixture { dir, main, bundle }
    }

    fn invocation(f: &Fixture, id: &str) -> Invocation {
        let args: Vec<OsString> = [
            "--root",
            "/run/r",
            "create",
            "--bundle",
            f.bundle.to_str().unwrap(),
            id,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        scan(&args)
    }

    fn spec() -> serde_json::Value {
        serde_json::json!({
            "process": {"user": {"uid": 1000, "gid": 1000}, "env": ["MLENV_PROJECT=vision"]},
            "linux": {"resources": {"memory": {"limit": 2147483648u64}}}
        })
    }

    #[test]
    fn admitted_spec_written_and_recorded() {
        let f = fixture(
            "[limits]\nmax_memory = \"1G\"\nover_limit = \"clamp\"\ndefault_pids = 64\n",
            spec(),
        );
        let mut log = RuncLog::stderr_only();
        let v = prepare(
            &invocation(&f, "c1"),
            Path::new("/"),
            &f.main,
            &FixedClock(5),
            &mut log,
        )
        .unwrap();
        assert_eq!(
            v,
            Verdict::Admitted {
                runtime: f.dir.path().join("runc")
            }
        );
        let written: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(f.bundle.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(written["linux"]["resources"]["memory"]["limit"], 1u64 << 30);
        assert_eq!(written["linux"]["resources"]["pids"]["limit"], 64);
        assert_eq!(written["process"], spec()["process"]);

        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        let d = inv.find("c1").unwrap().unwrap();
        assert_eq!(d.outcome, Outcome::Admitted);
        assert_eq!(
            (d.uid, d.gid, d.project.as_deref()),
            (1000, 1000, Some("vision"))
        );
        assert_eq!(d.root.as_deref(), Some("/run/r"));
        assert_eq!(d.requested.memory, Some(2 << 30));
        assert_eq!(d.effective.memory, Some(1 << 30));
        assert!(
            d.reason.contains("memory limit 2G clamped to 1G"),
            "{}",
            d.reason
        );
        assert_eq!(inv.live().unwrap().len(), 1);
        // The policy that validated is kept.
        assert!(f
            .dir
            .path()
            .join("inv")
            .join(policy::LAST_KNOWN_GOOD)
            .exists());
    }

    #[test]
    fn refused_spec_untouched_and_recorded() {
        let f = fixture("[limits]\nmax_memory = \"1G\"\n", spec());
        let before = fs::read(f.bundle.join("config.json")).unwrap();
        let mut log = RuncLog::stderr_only();
        let v = prepare(
            &invocation(&f, "c2"),
            Path::new("/"),
            &f.main,
            &FixedClock(5),
            &mut log,
        )
        .unwrap();
        assert_eq!(
            v,
            Verdict::Refused("memory limit 2G requested > 1G allowed ([limits] max_memory)".into())
        );
        assert_eq!(fs::read(f.bundle.join("config.json")).unwrap(), before);
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        assert_eq!(inv.find("c2").unwrap().unwrap().outcome, Outcome::Refused);
        assert!(inv.live().unwrap().is_empty());
    }

    #[test]
    fn invalid_policy_fails_closed_or_falls_back() {
        let f = fixture("[limits]\nmax_memory = \"4G\"\n", spec());
        let mut log = RuncLog::stderr_only();
        prepare(
            &invocation(&f, "c3"),
            Path::new("/"),
            &f.main,
            &FixedClock(5),
            &mut log,
        )
        .unwrap();
        // Break it: fail closed, naming file, line and key and how to check.
        let good = fs::read_to_string(&f.main).unwrap();
        fs::write(&f.main, format!("{good}bogus_key = 1\n")).unwrap();
        let err = prepare(
            &invocation(&f, "c4"),
            Path::new("/"),
            &f.main,
            &FixedClock(5),
            &mut log,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("policy invalid: "), "{err}");
        assert!(
            err.contains("mlenv.toml:7: limits.bogus_key: unknown field"),
            "{err}"
        );
        assert!(err.ends_with("check with `mlenv policy check`"), "{err}");
        // Opt in to last-known-good: admitted under the old policy, said in the log.
        fs::write(
            &f.main,
            format!("on_invalid_policy = \"last-known-good\"\n{good}bogus_key = 1\n"),
        )
        .unwrap();
        let logfile = f.dir.path().join("log.json");
        let mut log = RuncLog::open(Some(&logfile), true).unwrap();
        let v = prepare(
            &invocation(&f, "c5"),
            Path::new("/"),
            &f.main,
            &FixedClock(5),
            &mut log,
        )
        .unwrap();
        assert!(matches!(v, Verdict::Admitted { .. }));
        let text = fs::read_to_string(&logfile).unwrap();
        assert!(text.contains("using the last known good policy"), "{text}");
    }

    #[test]
    fn spec_errors_are_recorded() {
        let f = fixture(
            "",
            serde_json::json!({"linux": {"resources": {"pids": {"limit": "many"}}}}),
        );
        let mut log = RuncLog::stderr_only();
        let err = prepare(
            &invocation(&f, "c6"),
            Path::new("/"),
            &f.main,
            &FixedClock(5),
            &mut log,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("linux.resources.pids.limit"), "{err}");
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        let d = inv.find("c6").unwrap().unwrap();
        assert_eq!(d.outcome, Outcome::Error);
        assert_eq!(d.reason, err);
    }

    #[test]
    fn delete_ends_the_live_row() {
        let f = fixture("", spec());
        let mut log = RuncLog::stderr_only();
        let inv = invocation(&f, "c7");
        prepare(&inv, Path::new("/"), &f.main, &FixedClock(5), &mut log).unwrap();
        let del = scan(&["--root", "/run/r", "delete", "--force", "c7"].map(OsString::from));
        record_end(&del, &f.main, &FixedClock(9), "deleted").unwrap();
        let db = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        assert!(db.live().unwrap().is_empty());
    }
}
