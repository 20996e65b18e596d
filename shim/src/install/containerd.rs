//! containerd: a runc v2 shim runtime whose `BinaryName` is mlenv-runtime, for
//! `ctr run --runtime`, nerdctl and Kubernetes RuntimeClass (`handler: <name>`).
//!
//! containerd 1.x merges an imported file's plugin section by replacing the whole
//! section (containerd#5837): a drop-in naming the CRI plugin would wipe the admin's
//! CRI settings. So on 1.x the main config.toml is edited in place (toml_edit keeps
//! every other table, key, comment and its layout); on 2.x, which merges imports key
//! by key, a drop-in in `conf.d` is written and imported.

use super::{Change, InstallError, Plan};
use std::path::{Path, PathBuf};
use toml_edit::{value, DocumentMut, Item, Table};

pub const CONFIG: &str = "/etc/containerd/config.toml";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub name: String,
    pub runtime: PathBuf,
    pub default: bool,
    /// containerd's major version (`containerd --version`).
    pub major: u32,
}

/// The CRI plugin's id and the config version it lives under.
fn cri(major: u32) -> (&'static str, i64) {
    if major >= 2 {
        ("io.containerd.cri.v1.runtime", 3)
    } else {
        ("io.containerd.grpc.v1.cri", 2)
    }
}

/// Where the 2.x drop-in goes: `conf.d/mlenv.toml` beside config.toml.
pub fn dropin_path(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(Path::new("/"))
        .join("conf.d")
        .join("mlenv.toml")
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, InstallError> {
    text.parse::<DocumentMut>()
        .map_err(|e| InstallError::Parse {
            path: path.to_path_buf(),
            format: "TOML",
            message: e.to_string(),
        })
}

/// A table at `keys` under `doc`, created (implicit, so no empty headers) when
/// missing.
fn table_at<'a>(
    doc: &'a mut Table,
    keys: &[&str],
    path: &Path,
) -> Result<&'a mut Table, InstallError> {
    let mut t = doc;
    for k in keys {
        let item = t.entry(k).or_insert_with(|| {
            let mut new = Table::new();
            new.set_implicit(true);
            Item::Table(new)
        });
        t = item.as_table_mut().ok_or_else(|| InstallError::Shape {
            path: path.to_path_buf(),
            message: format!("{k} is not a table"),
        })?;
    }
    Ok(t)
}

/// Adds or removes the runtime in a config document of the given version.
fn edit_doc(
    doc: &mut DocumentMut,
    o: &Options,
    install: bool,
    path: &Path,
) -> Result<(), InstallError> {
    let (plugin, _) = cri(o.major);
    let containerd = table_at(doc.as_table_mut(), &["plugins", plugin, "containerd"], path)?;
    if install {
        let runtimes = table_at(containerd, &["runtimes"], path)?;
        // The cgroup driver must match the kubelet's: take runc's.
        let systemd = runtimes
            .get("runc")
            .and_then(|r| r.get("options"))
            .and_then(|o| o.get("SystemdCgroup"))
            .and_then(Item::as_bool);
        let rt = table_at(runtimes, &[o.name.as_str()], path)?;
        rt.set_implicit(false);
        rt.insert("runtime_type", value("io.containerd.runc.v2"));
        let opts = table_at(rt, &["options"], path)?;
        opts.set_implicit(false);
        opts.insert("BinaryName", value(o.runtime.display().to_string()));
        if let Some(systemd) = systemd {
            opts.insert("SystemdCgroup", value(systemd));
        }
        if o.default {
            containerd.insert("default_runtime_name", value(o.name.as_str()));
        }
    } else {
        if let Some(runtimes) = containerd.get_mut("runtimes").and_then(Item::as_table_mut) {
            runtimes.remove(&o.name);
        }
        if containerd
            .get("default_runtime_name")
            .and_then(Item::as_str)
            == Some(o.name.as_str())
        {
            containerd.remove("default_runtime_name");
        }
    }
    Ok(())
}

/// The new config.toml text (1.x, in place).
pub fn edit_config(
    path: &Path,
    before: Option<&str>,
    o: &Options,
    install: bool,
) -> Result<Option<String>, InstallError> {
    let (_, version) = cri(o.major);
    let text = before.unwrap_or("");
    if text.trim().is_empty() && !install {
        return Ok(before.map(str::to_string));
    }
    let mut doc = parse(path, text)?;
    if text.trim().is_empty() {
        doc.insert("version", value(version));
    }
    let found = doc.get("version").and_then(Item::as_integer).unwrap_or(1);
    if found != version {
        return Err(InstallError::Shape {
            path: path.to_path_buf(),
            message: format!(
                "config version {found}, expected {version} for containerd {}.x; migrate it (`containerd config migrate`) or add the runtime by hand (docs/kubernetes.md)",
                o.major
            ),
        });
    }
    edit_doc(&mut doc, o, install, path)?;
    // toml_edit gives an unchanged document back byte for byte.
    Ok(Some(doc.to_string()))
}

/// The 2.x drop-in's text.
pub fn dropin_text(o: &Options) -> String {
    let (_, version) = cri(o.major);
    let mut doc = DocumentMut::new();
    doc.insert("version", value(version));
    // Cannot fail on a fresh document.
    let _ = edit_doc(&mut doc, o, true, Path::new("drop-in"));
    format!(
        "# Written by `mlenv install containerd`; removed by `mlenv uninstall containerd`.\n{doc}"
    )
}

/// config.toml with `imports` naming `dropin` (added or removed), for 2.x.
fn edit_imports(
    path: &Path,
    before: Option<&str>,
    dropin: &Path,
    add: bool,
) -> Result<Option<String>, InstallError> {
    let text = before.unwrap_or("");
    let mut doc = parse(path, text)?;
    if text.trim().is_empty() {
        if !add {
            return Ok(before.map(str::to_string));
        }
        doc.insert("version", value(3));
    }
    let entry = dropin.display().to_string();
    let glob = dropin.with_file_name("*.toml").display().to_string();
    let imports = doc
        .entry("imports")
        .or_insert_with(|| value(toml_edit::Array::new()))
        .as_array_mut()
        .ok_or_else(|| InstallError::Shape {
            path: path.to_path_buf(),
            message: "imports is not an array".into(),
        })?;
    let has = |a: &toml_edit::Array, s: &str| a.iter().any(|v| v.as_str() == Some(s));
    if add && !has(imports, &entry) && !has(imports, &glob) {
        imports.push(entry.as_str());
    } else if !add {
        imports.retain(|v| v.as_str() != Some(entry.as_str()));
    }
    Ok(Some(doc.to_string()))
}

pub fn plan(o: &Options, install: bool) -> Result<Plan, InstallError> {
    let before = super::read(&o.config)?;
    let mut notes = vec![
        "containerd does not reload its configuration: restart it (systemctl restart containerd) to load this".to_string(),
    ];
    let changes = if o.major >= 2 {
        let dropin = dropin_path(&o.config);
        let after = edit_imports(&o.config, before.as_deref(), &dropin, install)?;
        vec![
            Change {
                path: o.config.clone(),
                before,
                after,
            },
            super::dropin(&dropin, install.then(|| dropin_text(o)))?,
        ]
    } else {
        let after = edit_config(&o.config, before.as_deref(), o, install)?;
        vec![Change {
            path: o.config.clone(),
            before,
            after,
        }]
    };
    if install {
        notes.push(format!(
            "for Kubernetes, a RuntimeClass with handler: {} selects it (docs/kubernetes.md)",
            o.name
        ));
    }
    Ok(Plan { changes, notes })
}

/// containerd's major version from `containerd --version`, where it runs.
pub fn detect_major() -> Option<u32> {
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// `containerd github.com/containerd/containerd 1.6.20~ds1 ...` or `... v2.0.1 ...`.
pub fn parse_version(text: &str) -> Option<u32> {
    text.split_whitespace()
        .nth(2)?
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(major: u32, default: bool) -> Options {
        Options {
            config: PathBuf::from("/etc/containerd/config.toml"),
            name: "mlenv".into(),
            runtime: PathBuf::from("/usr/bin/mlenv-runtime"),
            default,
            major,
        }
    }

    const V2: &str = r#"# the admin's config
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
"#;

    #[test]
    fn in_place_on_1x_keeps_everything_else() {
        let p = Path::new(CONFIG);
        let after = edit_config(p, Some(V2), &o(1, false), true)
            .unwrap()
            .unwrap();
        assert!(
            after
                .starts_with("# the admin's config\nversion = 2\nroot = \"/var/lib/containerd\"\n"),
            "{after}"
        );
        assert!(after.contains("sandbox_image = \"registry.k8s.io/pause:3.6\""));
        let v: toml::Table = toml::from_str(&after).unwrap();
        let c = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert_eq!(
            c["runtimes"]["mlenv"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(
            c["runtimes"]["mlenv"]["options"]["BinaryName"].as_str(),
            Some("/usr/bin/mlenv-runtime")
        );
        assert_eq!(
            c["runtimes"]["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(c["default_runtime_name"].as_str(), Some("runc"));
        // Idempotent, and --default switches the default.
        assert_eq!(
            edit_config(p, Some(&after), &o(1, false), true)
                .unwrap()
                .unwrap(),
            after
        );
        let d = edit_config(p, Some(&after), &o(1, true), true)
            .unwrap()
            .unwrap();
        let v: toml::Table = toml::from_str(&d).unwrap();
        assert_eq!(
            v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["default_runtime_name"]
                .as_str(),
            Some("mlenv")
        );
        // Uninstall takes out what install put in.
        let back = edit_config(p, Some(&d), &o(1, false), false)
            .unwrap()
            .unwrap();
        let v: toml::Table = toml::from_str(&back).unwrap();
        let c = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert!(c["runtimes"].get("mlenv").is_none());
        assert!(
            c.get("default_runtime_name").is_none(),
            "containerd's default (runc) again"
        );
        assert!(back.contains("sandbox_image"));
    }

    #[test]
    fn no_config_and_wrong_versions() {
        let p = Path::new(CONFIG);
        let fresh = edit_config(p, None, &o(1, false), true).unwrap().unwrap();
        assert!(fresh.starts_with("version = 2\n"), "{fresh}");
        assert!(toml::from_str::<toml::Table>(&fresh).is_ok());
        let e = edit_config(p, Some("root = \"/x\"\n"), &o(1, false), true).unwrap_err();
        assert!(
            e.to_string()
                .contains("config version 1, expected 2 for containerd 1.x"),
            "{e}"
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1"),
            Some(1)
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd/v2 v2.0.1 abc"),
            Some(2)
        );
    }

    #[test]
    fn a_dropin_on_2x() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = o(2, true);
        opts.config = dir.path().join("config.toml");
        std::fs::write(
            &opts.config,
            "version = 3\nimports = [\"/opt/other.toml\"]\n",
        )
        .unwrap();
        let plan = plan(&opts, true).unwrap();
        let main = plan.changes[0].after.as_deref().unwrap();
        let v: toml::Table = toml::from_str(main).unwrap();
        let imports: Vec<&str> = v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.as_str())
            .collect();
        assert_eq!(
            imports,
            [
                "/opt/other.toml",
                dropin_path(&opts.config).to_str().unwrap()
            ]
        );
        let d: toml::Table = toml::from_str(plan.changes[1].after.as_deref().unwrap()).unwrap();
        assert_eq!(d["version"].as_integer(), Some(3));
        let c = &d["plugins"]["io.containerd.cri.v1.runtime"]["containerd"];
        assert_eq!(
            c["runtimes"]["mlenv"]["options"]["BinaryName"].as_str(),
            Some("/usr/bin/mlenv-runtime")
        );
        assert_eq!(c["default_runtime_name"].as_str(), Some("mlenv"));
        super::super::apply(&plan).unwrap();
        let again = super::plan(&opts, true).unwrap();
        assert!(again.changes.iter().all(|c| !c.changes()), "{again:?}");
        let un = super::plan(&opts, false).unwrap();
        assert_eq!(un.changes[1].after, None);
        assert!(!un.changes[0]
            .after
            .as_deref()
            .unwrap()
            .contains("mlenv.toml"));
    }
}
