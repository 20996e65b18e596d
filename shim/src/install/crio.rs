//! CRI-O: a crio.conf.d drop-in adding mlenv-runtime as a runtime handler (and with
//! `--default` as the default), and mlenv-hook in the hooks directory. CRI-O reads
//! runtimes at start: restart it.

use super::{InstallError, Plan};
use std::path::PathBuf;

pub const CONF_D: &str = "/etc/crio/crio.conf.d";
pub const HOOKS_D: &str = "/usr/share/containers/oci/hooks.d";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub conf_d: PathBuf,
    pub hooks_d: PathBuf,
    pub name: String,
    pub runtime: PathBuf,
    /// mlenv-hook for the hooks directory; None: not installed. On a Kubernetes
    /// node the hook applies to every container, system pods included, so it is
    /// only installed when asked for.
    pub hook: Option<PathBuf>,
    pub default: bool,
}

pub fn conf_text(o: &Options) -> String {
    let mut t =
        String::from("# Written by `mlenv install crio`; removed by `mlenv uninstall crio`.\n");
    if o.default {
        t.push_str(&format!(
            "[crio.runtime]\ndefault_runtime = {:?}\n\n",
            o.name
        ));
    }
    t.push_str(&format!(
        "[crio.runtime.runtimes.{}]\nruntime_path = {:?}\nruntime_type = \"oci\"\n",
        o.name,
        o.runtime.display().to_string()
    ));
    t
}

pub fn plan(o: &Options, install: bool) -> Result<Plan, InstallError> {
    Ok(Plan {
        changes: vec![
            super::dropin(&o.conf_d.join("50-mlenv.conf"), install.then(|| conf_text(o)))?,
            super::dropin(
                &o.hooks_d.join("mlenv.json"),
                o.hook
                    .as_deref()
                    .filter(|_| install)
                    .map(super::podman::hook_json),
            )?,
        ],
        notes: vec![format!(
            "restart CRI-O (systemctl restart crio) to load the runtime; a RuntimeClass with handler: {} selects it",
            o.name
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropin_text() {
        let o = Options {
            conf_d: CONF_D.into(),
            hooks_d: HOOKS_D.into(),
            name: "mlenv".into(),
            runtime: "/usr/bin/mlenv-runtime".into(),
            hook: None,
            default: true,
        };
        let t: toml::Table = toml::from_str(&conf_text(&o)).unwrap();
        assert_eq!(
            t["crio"]["runtime"]["default_runtime"].as_str(),
            Some("mlenv")
        );
        assert_eq!(
            t["crio"]["runtime"]["runtimes"]["mlenv"]["runtime_path"].as_str(),
            Some("/usr/bin/mlenv-runtime")
        );
    }
}
