//! The wrapper's side of mlenv-hook: where the hook binary is, and the two hooks it
//! adds to an admitted container's spec — `createRuntime` (records the init process,
//! so liveness is exact) and `poststop` (ends the container, releasing its leases).
//! Every hook the engine put there stays, in its order; mlenv's come after them.

use crate::spec::{Spec, SpecError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub const HOOK_NAME: &str = "mlenv-hook";

/// Where the hook is looked for when `[runtime] hook` is unset: beside the running
/// binary first (an install keeps them together), then the usual bin directories.
const HOOK_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin"];

/// The hook binary: the configured path, else the first found. `None` when there is
/// none (the container is still admitted; liveness falls back to runtime state).
pub fn locate(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
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

/// Adds mlenv's hooks after the engine's. Idempotent. Returns whether the spec
/// changed.
pub fn inject(spec: &mut Spec, hook: &Path, config: Option<&Path>) -> Result<bool, SpecError> {
    let mut changed = false;
    for stage in ["createRuntime", "poststop"] {
        changed |= spec.push_unique(&["hooks"], stage, entry(hook, stage, config))?;
    }
    Ok(changed)
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
            hooks["createRuntime"],
            json!([{"path": "/usr/bin/mlenv-hook", "args": ["mlenv-hook", "createRuntime", "--recorded"],
                    "env": ["MLENV_CONFIG=/etc/x/mlenv.toml"]}])
        );
        assert_eq!(hooks["poststop"][0]["args"][1], "poststop");
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
