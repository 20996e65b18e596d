//! A runtime that times the runtime it stands for, for `bench_create docker`: copied
//! as `<dir>/timed-<name>` and registered with the engine, it runs `<dir>/<name>` (a
//! link to runc or mlenv-runtime) with the engine's arguments, waits for it, and
//! appends `<call> <start ns> <end ns>` (wall clock) to `<dir>/calls.log`. Both
//! runtimes pay the same fork and exec of the timer, so their difference inside a
//! call is the difference of the runtimes, measured where the engine calls them.
//! tests/e2e-env.sh sets it up when it finds this example built.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{exit, Command};
use std::time::{SystemTime, UNIX_EPOCH};

/// The call an engine makes, as the bench names it: the first known subcommand
/// (global flags come before it), `delete --force` told apart from `delete`.
fn call(args: &[OsString]) -> String {
    const KNOWN: [&str; 8] = [
        "create", "start", "delete", "kill", "state", "exec", "update", "features",
    ];
    let words: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    match words.iter().position(|w| KNOWN.contains(w)) {
        Some(i) if words[i] == "delete" && words[i + 1..].contains(&"--force") => {
            "delete-force".into()
        }
        Some(i) => words[i].into(),
        None => "other".into(),
    }
}

fn ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let me = std::env::current_exe().expect("call_timer: cannot find its own path");
    let dir = me.parent().unwrap();
    let name = me.file_name().unwrap().to_string_lossy();
    let target = dir.join(name.strip_prefix("timed-").unwrap_or(&name));
    let start = ns();
    let status = Command::new(&target)
        .arg0(&args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| {
            eprintln!("call_timer: cannot run {}: {e}", target.display());
            exit(127)
        });
    let end = ns();
    let line = format!("{} {start} {end}\n", call(&args[1..]));
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("calls.log"))
    {
        // One write of one short line: appends from concurrent calls do not interleave.
        let _ = log.write_all(line.as_bytes());
    }
    exit(
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
    )
}
