//! The wrapper's side of mlenv-hook: where the hook binary is, and the hook it adds to
//! an admitted container's spec when `[runtime] hook` asks for it: `poststop`, which
//! ends the container and releases its leases even when something deletes it past
//! mlenv-runtime. Every hook the engine put there stays, in its order; mlenv's comes
//! after them.
//!
//! Off by default: every delete through mlenv-runtime ends the container itself, and
//! one deleted past it is found gone by its init process at the next capacity check.
//! The hook is a process runc starts inside every delete (docs/benchmarks.md).
//!
//! The init process is not recorded by a `createRuntime` hook, a process that runc
//! starts inside every create, 1.4 to 2.6 ms (docs/benchmarks.md): for runc and crun
//! the first liveness check records it from the runtime's state, and for any other
//! runtime mlenv-runtime waits for the create and records it
//! ([`crate::create::record_init`]).
//! mlenv-hook still records it at `createRuntime` when a spec from an older
//! mlenv-runtime names it there, and when it runs alone from a hooks directory.

use crate::spec::{Spec, SpecError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub const HOOK_NAME: &str = "mlenv-hook";

/// Where the hook is looked for with `[runtime] hook = true`: beside the running
/// binary first (an install keeps them together), then the usual bin directories.
const HOOK_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin"];

/// The first hook binary found. `None` when there is none (the container is still
/// admitted, and ended as without the hook).
pub fn locate() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(HOOK_NAME)));
    beside
        .into_iter()
        .chain(HOOK_DIRS.iter().map(|d| Path::new(d).join(HOOK_NAME)))
        .find(|p| p.is_file())
}

/// One hook entry: runc runs it with exactly this environment, so the policy file in
/// force (when it is not the default) goes with it.
fn entry(hook: &Path, stage: &str, config: Option<&Path>) -> Value {
    let mut e = json!({
        "path": hook,
        "args": [HOOK_NAME, stage, "--recorded"],
    });
    if let Some(c) = config {
        e["env"] = json!([format!("MLENV_CONFIG={}", c.display())]);
    }
    e
}

/// Adds mlenv's hook after the engine's. Idempotent. Returns whether the spec
/// changed.
pub fn inject(spec: &mut Spec, hook: &Path, config: Option<&Path>) -> Result<bool, SpecError> {
    spec.push_unique(&["hooks"], "poststop", entry(hook, "poststop", config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_appended_after_the_engines_in_order_once() {
        let text = std::fs::read_to_string(
            Path::new(crate::SPEC_FIXTURES).join("docker-20.10-gpus2.json"),
        )
        .unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        let mut s = Spec {
            path: PathBuf::from("/b/config.json"),
            json: original.clone(),
        };
        let hook = Path::new("/usr/bin/mlenv-hook");
        assert!(inject(&mut s, hook, Some(Path::new("/etc/x/mlenv.toml"))).unwrap());
        let hooks = &s.json["hooks"];
        // Docker's prestart hooks (NVIDIA's, libnetwork's) untouched, in order.
        assert_eq!(hooks["prestart"], original["hooks"]["prestart"]);
        assert_eq!(
            hooks["poststop"],
            json!([{"path": "/usr/bin/mlenv-hook", "args": ["mlenv-hook", "poststop", "--recorded"],
                    "env": ["MLENV_CONFIG=/etc/x/mlenv.toml"]}])
        );
        // No hook inside runc's create: the wrapper records the init process itself.
        assert!(hooks.get("createRuntime").is_none());
        // Everything outside hooks kept.
        let mut a = s.json.clone();
        let mut b = original.clone();
        a.as_object_mut().unwrap().remove("hooks");
        b.as_object_mut().unwrap().remove("hooks");
        assert_eq!(a, b);
        let once = s.json.clone();
        assert!(!inject(&mut s, hook, Some(Path::new("/etc/x/mlenv.toml"))).unwrap());
        assert_eq!(s.json, once);
        // An engine's own poststop hook comes first.
        let mut p = Spec {
            path: PathBuf::from("/b/config.json"),
            json: json!({"hooks": {"poststop": [{"path": "/bin/engine-cleanup"}]}}),
        };
        inject(&mut p, hook, None).unwrap();
        assert_eq!(
            p.json["hooks"]["poststop"][0]["path"],
            "/bin/engine-cleanup"
        );
        assert_eq!(
            p.json["hooks"]["poststop"][1]["path"],
            "/usr/bin/mlenv-hook"
        );
        assert!(p.json["hooks"]["poststop"][1].get("env").is_none());
    }
}
