//! mlenv-hook: the OCI hook of mlenv. Reads the container state on stdin; the stage
//! is the first argument (or read from the state's status). See `mlenv::hook`.
//!
//! Exit status: non-zero refuses the container (the reason on stderr, which runc and
//! podman show the user). A hook that only records (`--recorded`, added by
//! mlenv-runtime) or a poststop never fails a container over bookkeeping.

use mlenv::clock::SystemClock;
use mlenv::hook::{self, HookError, Outcome, Stage, State};
use mlenv::host::ProcHost;
use mlenv::runclog::RuncLog;
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let recorded = args.iter().any(|a| a == "--recorded");
    let stage_arg = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);
    let mut stage = None;
    let result = read_state().and_then(|state| {
        let s = Stage::parse(stage_arg, &state)?;
        stage = Some(s);
        let main = mlenv::policy::main_path();
        hook::run(
            s,
            &state,
            recorded,
            &main,
            &SystemClock,
            &ProcHost::default(),
            &mut RuncLog::stderr_only()
                .with_syslog(std::path::Path::new(mlenv::syslog::SOCKET), "mlenv-hook"),
        )
    });
    let result = result.map(|ran| {
        ran.warnings.iter().for_each(|w| warn(w));
        ran.outcome
    });
    match result {
        Ok(Outcome::Refused(why)) => {
            eprintln!("mlenv: refused: {why}");
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        // Bookkeeping never fails a container; a decision that cannot be made does
        // (fail closed).
        Err(e) if recorded || stage.is_some_and(|s| s != Stage::Create) => {
            warn(&e.to_string());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mlenv: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_state() -> Result<State, HookError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| HookError::State(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| HookError::State(e.to_string()))
}

/// A warning for the admin, on stderr and in the system log: an engine keeps a hook's
/// stderr only when the hook fails.
fn warn(msg: &str) {
    mlenv::syslog::warn_admin("mlenv-hook", "mlenv-hook", msg);
}
