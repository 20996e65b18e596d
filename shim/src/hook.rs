//! mlenv-hook: an OCI hook reading the container's state on stdin.
//!
//! - `prestart` / `createRuntime` (the container exists, its init process waits):
//!   for a container mlenv-runtime admitted, records the init process and its start
//!   time, so liveness is exact (mlenv-runtime now records it itself; specs it wrote
//!   before still name the hook here). For any other container — mlenv-hook installed alone
//!   in podman's or CRI-O's hooks directory — it decides admission (security rules,
//!   limits, thresholds, quotas, GPU leases) and refuses by exiting non-zero with the
//!   reason on stderr.
//! - `poststop`: marks the container ended, which releases its GPU leases and what it
//!   reserved.
//!
//! The stage is the first argument; without one it is read from the state's status
//! (`creating`, `stopped`), so one hooks-directory entry can serve both stages.

use crate::argv::{Command, Invocation};
use crate::clock::Clock;
use crate::create::{self, Mode, Verdict};
use crate::host::Host;
use crate::inventory::Inventory;
use crate::policy;
use crate::runclog::RuncLog;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot read the container state on stdin: {0}")]
    State(String),
    #[error("unknown hook stage {0:?}: expected prestart, createRuntime, createContainer, poststart, startContainer or poststop")]
    Stage(String),
    #[error("the container state has no pid at {0}: install mlenv-hook for the prestart or createRuntime stage")]
    NoPid(String),
    #[error("the container's init process {0} is gone")]
    InitGone(u32),
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    #[error(transparent)]
    Create(#[from] create::CreateError),
}

/// The OCI state, as far as the hook needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct State {
    pub id: String,
    #[serde(default)]
    pub pid: Option<u32>,
    pub bundle: PathBuf,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// prestart, createRuntime, createContainer: the container exists, not started.
    Create,
    Poststop,
    /// poststart, startContainer: nothing to do.
    Other,
}

impl Stage {
    pub fn parse(arg: Option<&str>, state: &State) -> Result<Stage, HookError> {
        let name = arg.or(match state.status.as_deref() {
            Some("creating") => Some("createRuntime"),
            Some("stopped") => Some("poststop"),
            _ => None,
        });
        match name {
            Some("prestart" | "createRuntime" | "createContainer") => Ok(Stage::Create),
            Some("poststop") => Ok(Stage::Poststop),
            Some("poststart" | "startContainer") | None => Ok(Stage::Other),
            Some(other) => Err(HookError::Stage(other.to_string())),
        }
    }
}

/// What the hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The init process of an admitted container recorded.
    Recorded,
    /// Admitted here (standalone).
    Admitted,
    /// Refused here (standalone): the reason.
    Refused(String),
    /// Rows ended at poststop.
    Ended(usize),
    Nothing,
}

/// What the hook did, and what the admin is to hear of it: an engine keeps a hook's
/// stderr only when the hook fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub outcome: Outcome,
    pub warnings: Vec<String>,
}

impl From<Outcome> for Ran {
    fn from(outcome: Outcome) -> Ran {
        Ran {
            outcome,
            warnings: Vec::new(),
        }
    }
}

/// Runs the hook. `recorded`: mlenv-runtime added this hook to a container it
/// admitted (`--recorded`), so there is nothing to decide. `log`: where a decision
/// made here says its warnings (stderr, and the system log from mlenv-hook).
pub fn run(
    stage: Stage,
    state: &State,
    recorded: bool,
    main: &Path,
    clock: &dyn Clock,
    host: &dyn Host,
    log: &mut RuncLog,
) -> Result<Ran, HookError> {
    let inventory_path = policy::lenient(main).inventory();
    match stage {
        Stage::Other => Ok(Outcome::Nothing.into()),
        Stage::Poststop => {
            if !inventory_path.exists() {
                return Ok(Outcome::Ended(0).into());
            }
            let mut inv = Inventory::open(&inventory_path)?;
            let n = inv.end_any(&state.id, clock.now_ms(), "stopped (poststop hook)")?;
            let warnings = inv
                .set_aside_warning()
                .into_iter()
                .chain(inv.settle_or_say())
                .collect();
            Ok(Ran {
                outcome: Outcome::Ended(n),
                warnings,
            })
        }
        Stage::Create => {
            let pid = state
                .pid
                .ok_or_else(|| HookError::NoPid(state.status.clone().unwrap_or_default()))?;
            let start = host.process_start(pid).ok_or(HookError::InitGone(pid))?;
            // One connection: is it mlenv-runtime's (then record), or ours to decide.
            if recorded || inventory_path.exists() {
                let mut inventory = Inventory::open(&inventory_path)?;
                if recorded || inventory.is_live(&state.id)? {
                    inventory.started(&state.id, (pid, start))?;
                    return Ok(Ran {
                        outcome: Outcome::Recorded,
                        warnings: inventory.set_aside_warning().into_iter().collect(),
                    });
                }
            }
            let inv = Invocation {
                command: Command::Create,
                subcommand: Some("hook".into()),
                log: None,
                log_format: None,
                root: None,
                bundle: Some(state.bundle.clone()),
                pid_file: None,
                container_id: Some(state.id.clone()),
                detach: false,
                update: Vec::new(),
            };
            let mode = Mode::Hook { init: (pid, start) };
            match create::decide(mode, &inv, &state.bundle, main, clock, host, log)?.0 {
                Verdict::Admitted { .. } => Ok(Outcome::Admitted.into()),
                Verdict::Refused(why) => Ok(Outcome::Refused(why).into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use std::fs;

    /// [`run`] for a container mlenv-runtime did not admit, its log on stderr alone.
    fn hook(
        stage: Stage,
        state: &State,
        main: &Path,
        clock: &dyn Clock,
        host: &dyn Host,
    ) -> Result<Ran, HookError> {
        run(
            stage,
            state,
            false,
            main,
            clock,
            host,
            &mut RuncLog::stderr_only(),
        )
    }

    fn state(id: &str, pid: Option<u32>, status: &str, bundle: &Path) -> State {
        State {
            id: id.into(),
            pid,
            bundle: bundle.into(),
            status: Some(status.into()),
        }
    }

    #[test]
    fn stages_from_arguments_or_status() {
        let s = state("c", Some(1), "creating", Path::new("/b"));
        assert_eq!(Stage::parse(None, &s).unwrap(), Stage::Create);
        assert_eq!(Stage::parse(Some("prestart"), &s).unwrap(), Stage::Create);
        assert_eq!(Stage::parse(Some("poststop"), &s).unwrap(), Stage::Poststop);
        assert_eq!(Stage::parse(Some("poststart"), &s).unwrap(), Stage::Other);
        let stopped = state("c", None, "stopped", Path::new("/b"));
        assert_eq!(Stage::parse(None, &stopped).unwrap(), Stage::Poststop);
        assert!(Stage::parse(Some("prestop"), &s)
            .unwrap_err()
            .to_string()
            .contains("unknown hook stage \"prestop\""));
        let parsed: State = serde_json::from_str(
            r#"{"ociVersion":"1.0.2-dev","id":"abc","status":"creating","pid":42,"bundle":"/b","annotations":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(parsed, state("abc", Some(42), "creating", Path::new("/b")));
    }

    /// Standalone: admitted and recorded with its init process, refused by quota,
    /// ended at poststop; a container the wrapper admitted only gets its init
    /// process recorded.
    #[test]
    fn standalone_admission_and_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        let inventory = dir.path().join("inv/mlenv.db");
        fs::write(
            &main,
            format!(
                "[inventory]\npath = {inventory:?}\n[limits]\ndefault_memory = \"1G\"\nmax_memory = \"4G\"\n[[quota]]\nproject = \"p\"\nmax_containers = 1\n[admission]\nmax_memory_percent = false\nmin_available_memory = false\nmax_load_per_cpu = false\nmax_psi_cpu = false\nmax_psi_memory = false\nmemory_overcommit = false\ncpu_overcommit = false\n"
            ),
        )
        .unwrap();
        let bundle = dir.path().join("bundle");
        fs::create_dir(&bundle).unwrap();
        let spec = serde_json::json!({
            "process": {"user": {"uid": 1000, "gid": 1000}, "env": ["MLENV_PROJECT=p"]},
            "linux": {"resources": {"memory": {"limit": 1073741824u64}}}
        });
        fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        let before = fs::read(bundle.join("config.json")).unwrap();
        // Our own process stands in for the container's init.
        let me = std::process::id();
        let live = crate::host::ProcHost::default();
        let clock = FixedClock(7);
        let a = state("a", Some(me), "creating", &bundle);
        assert_eq!(
            hook(Stage::Create, &a, &main, &clock, &live)
                .unwrap()
                .outcome,
            Outcome::Admitted
        );
        assert_eq!(
            fs::read(bundle.join("config.json")).unwrap(),
            before,
            "the bundle is not written"
        );
        // The policy kept as the last known good is the one read, not the copy the
        // hook decided with (defaults taken out).
        let kept = fs::read_to_string(policy::last_known_good_path(&main)).unwrap();
        assert!(kept.contains("default_memory = \"1G\""), "{kept}");
        let b = state("b", Some(me), "creating", &bundle);
        match hook(Stage::Create, &b, &main, &clock, &live)
            .unwrap()
            .outcome
        {
            Outcome::Refused(why) => assert!(
                why.starts_with("quota project=p: 1 of 1 containers live"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        // A second create stage for the same container (prestart then createRuntime)
        // records, it does not decide again.
        assert_eq!(
            hook(Stage::Create, &a, &main, &clock, &live)
                .unwrap()
                .outcome,
            Outcome::Recorded
        );
        let inv = Inventory::open(&inventory).unwrap();
        assert_eq!(inv.live().unwrap().len(), 1);
        drop(inv);
        // Poststop has no pid; it ends the row and frees the quota.
        let stopped = state("a", None, "stopped", &bundle);
        assert_eq!(
            hook(Stage::Poststop, &stopped, &main, &clock, &live)
                .unwrap()
                .outcome,
            Outcome::Ended(1)
        );
        assert_eq!(
            hook(Stage::Poststop, &stopped, &main, &clock, &live)
                .unwrap()
                .outcome,
            Outcome::Ended(0)
        );
        assert_eq!(
            hook(Stage::Create, &b, &main, &clock, &live)
                .unwrap()
                .outcome,
            Outcome::Admitted
        );

        // What the policy would change cannot be changed from a hook: refused, saying so.
        let mut no_limit = spec.clone();
        no_limit["linux"]["resources"] = serde_json::json!({});
        no_limit["process"]["env"] = serde_json::json!([]);
        fs::write(bundle.join("config.json"), no_limit.to_string()).unwrap();
        let c = state("c", Some(me), "creating", &bundle);
        // A maximum caps a container without a limit: from a hook that is a refusal
        // naming what to ask for.
        match hook(Stage::Create, &c, &main, &clock, &live).unwrap().outcome {
            Outcome::Refused(why) => assert_eq!(why, "mlenv-hook cannot change a container that exists: memory limit set to the default 4G; ask for it in the run command, or register mlenv-runtime with the engine"),
            other => panic!("{other:?}"),
        }
        let mut big = no_limit.clone();
        big["linux"]["resources"] = serde_json::json!({"memory": {"limit": 8589934592u64}});
        fs::write(bundle.join("config.json"), big.to_string()).unwrap();
        let d = state("d", Some(me), "creating", &bundle);
        match hook(Stage::Create, &d, &main, &clock, &live)
            .unwrap()
            .outcome
        {
            Outcome::Refused(why) => assert!(
                why.contains("memory limit 8G requested > 4G allowed ([limits] max_memory)"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        // A gone init process is an error, not an admission.
        let gone = state("e", Some(u32::MAX - 1), "creating", &bundle);
        assert!(hook(Stage::Create, &gone, &main, &clock, &live).is_err());
    }

    #[test]
    fn poststop_says_it_moved_a_corrupt_inventory_aside() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        let inventory = dir.path().join("inv/mlenv.db");
        fs::write(&main, format!("[inventory]\npath = {inventory:?}\n")).unwrap();
        fs::create_dir_all(inventory.parent().unwrap()).unwrap();
        fs::write(&inventory, vec![0x5a_u8; 8192]).unwrap();
        let stopped = state("a", None, "stopped", dir.path());
        let live = crate::host::ProcHost::default();
        let ran = hook(Stage::Poststop, &stopped, &main, &FixedClock(7), &live).unwrap();
        let aside = Inventory::set_aside_files(&inventory);
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(ran.outcome, Outcome::Ended(0));
        assert_eq!(ran.warnings, vec![format!(
            "inventory {} was corrupt: moved aside to {}; a new one was started, and containers already running are not counted until they are recreated",
            inventory.display(),
            aside[0].display()
        )]);
        // The new one is sound: nothing more to say.
        let ran = hook(Stage::Poststop, &stopped, &main, &FixedClock(8), &live).unwrap();
        assert_eq!(ran.warnings, Vec::<String>::new());
    }
}
