//! Helpers of mlenv-runtime, for what it keeps out of its own process: NVML
//! (`mlenv-nvml`), which a statically linked binary cannot load, and CDI (`mlenv cdi`),
//! whose crate would weigh on every call (docs/design.md).

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary `name` beside the running one (mlenv's are installed together).
pub fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| Path::new("/usr/bin").join(name))
}

/// Runs `helper` with `args` and reads its JSON output as a `T`; on failure, its
/// message (the last line of stderr that starts `mlenv: `, without the prefix).
pub fn call<T: DeserializeOwned>(helper: &Path, args: &[String]) -> Result<T, String> {
    let out = Command::new(helper)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", helper.display()))?;
    if !out.status.success() {
        // Its own message, without what a library printed before it.
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("mlenv: "))
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{} {} failed ({}): {}",
                    helper.display(),
                    args.join(" "),
                    out.status,
                    stderr.trim()
                )
            }));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} {}: bad output: {e}", helper.display(), args.join(" ")))
}
