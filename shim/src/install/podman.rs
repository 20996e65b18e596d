//! podman: a containers.conf drop-in naming mlenv-runtime as an OCI runtime (and with
//! `--default` as podman's runtime), and mlenv-hook in the admin's hooks directory.
//! Podman reads both at each command: nothing to reload.

use super::{DropIns, InstallError, Plan};
use std::path::Path;

pub const CONF_D: &str = "/etc/containers/containers.conf.d";
pub const HOOKS_D: &str = "/etc/containers/oci/hooks.d";

pub fn conf_text(o: &DropIns) -> String {
    let mut t = format!(
        "# Written by `mlenv install podman`; removed by `mlenv uninstall podman`.\n[engine.runtimes]\n{} = [{:?}]\n",
        o.name,
        o.runtime.display().to_string()
    );
    if o.default {
        t.push_str(&format!("\n[engine]\nruntime = {:?}\n", o.name));
    }
    t
}

/// The hooks-directory entry: mlenv-hook at prestart (admission, or recording for a
/// container mlenv-runtime admitted) and poststop, for every container.
pub fn hook_json(hook: &Path) -> String {
    let v = serde_json::json!({
        "version": "1.0.0",
        "hook": {"path": hook, "args": ["mlenv-hook"]},
        "when": {"always": true},
        "stages": ["prestart", "poststop"],
    });
    let mut s = serde_json::to_string_pretty(&v).expect("a JSON tree always serializes");
    s.push('\n');
    s
}

pub fn plan(o: &DropIns, install: bool) -> Result<Plan, InstallError> {
    Ok(Plan {
        changes: vec![
            super::dropin(&o.conf_d.join("mlenv.conf"), install.then(|| conf_text(o)))?,
            super::hooks_entry(o, install)?,
        ],
        notes: vec![format!(
            "podman reads these at each command; choose the runtime with `podman run --runtime {}`{}",
            o.name,
            if o.default { " (now the default)" } else { "" }
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropin_and_hook() {
        let dir = tempfile::tempdir().unwrap();
        let o = DropIns {
            conf_d: dir.path().join("containers.conf.d"),
            hooks_d: dir.path().join("hooks.d"),
            name: "mlenv".into(),
            runtime: "/usr/bin/mlenv-runtime".into(),
            hook: Some("/usr/bin/mlenv-hook".into()),
            default: true,
        };
        let conf: toml::Table = toml::from_str(&conf_text(&o)).unwrap();
        assert_eq!(
            conf["engine"]["runtimes"]["mlenv"][0].as_str(),
            Some("/usr/bin/mlenv-runtime")
        );
        assert_eq!(conf["engine"]["runtime"].as_str(), Some("mlenv"));
        // The same hook JSON as shipped in config/, with the path given.
        let shipped: serde_json::Value =
            serde_json::from_str(include_str!("../../../config/oci-hooks.d/mlenv.json")).unwrap();
        let ours: serde_json::Value =
            serde_json::from_str(&hook_json(Path::new("/usr/bin/mlenv-hook"))).unwrap();
        assert_eq!(ours, shipped);
        let p = plan(&o, true).unwrap();
        super::super::apply(&p).unwrap();
        assert!(plan(&o, true).unwrap().changes.iter().all(|c| !c.changes()));
        let u = plan(&o, false).unwrap();
        super::super::apply(&u).unwrap();
        assert!(!o.conf_d.join("mlenv.conf").exists() && !o.hooks_d.join("mlenv.json").exists());
    }
}
