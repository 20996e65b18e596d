//! CRI-O: a crio.conf.d drop-in adding mlenv-runtime as a runtime handler (and with
//! `--default` as the default), and with `--with-hook` mlenv-hook in the hooks
//! directory (on a Kubernetes node it sees every container, system pods included).
//! CRI-O reads runtimes at start: restart it.

use super::{DropIns, InstallError, Plan};

pub const CONF_D: &str = "/etc/crio/crio.conf.d";
pub const HOOKS_D: &str = "/usr/share/containers/oci/hooks.d";

pub fn conf_text(o: &DropIns) -> String {
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

pub fn plan(o: &DropIns, install: bool) -> Result<Plan, InstallError> {
    Ok(Plan {
        changes: vec![
            super::dropin(&o.conf_d.join("50-mlenv.conf"), install.then(|| conf_text(o)))?,
            super::hooks_entry(o, install)?,
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
        let o = DropIns {
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
