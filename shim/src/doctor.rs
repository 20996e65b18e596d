//! `mlenv doctor`: is this host set up for mlenv? One line per check, ok / warn /
//! fail, each failure with its fix. Nothing is changed.

use crate::policy::{self, Inject, Policy};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub level: Level,
    pub what: &'static str,
    pub detail: String,
    /// What to do, for warn and fail.
    pub fix: Option<String>,
}

fn line(level: Level, what: &'static str, detail: String, fix: Option<&str>) -> Line {
    Line {
        level,
        what,
        detail,
        fix: fix.map(str::to_string),
    }
}

/// Where the engines' configurations are, to look for mlenv in them.
#[derive(Debug, Clone)]
pub struct EnginePaths {
    pub docker: PathBuf,
    pub containerd: PathBuf,
    pub podman_conf_d: PathBuf,
    pub crio_conf_d: PathBuf,
}

impl Default for EnginePaths {
    fn default() -> Self {
        EnginePaths {
            docker: crate::install::docker::DAEMON_JSON.into(),
            containerd: crate::install::containerd::CONFIG.into(),
            podman_conf_d: crate::install::podman::CONF_D.into(),
            crio_conf_d: crate::install::crio::CONF_D.into(),
        }
    }
}

/// Runs every check. `runtime_dir`: where mlenv-runtime, mlenv-hook and mlenv-nvml are expected.
pub fn check(main: &Path, runtime_dir: &Path, engines: &EnginePaths) -> Vec<Line> {
    use Level::*;
    let mut out = Vec::new();
    let files = crate::hostfs::RealFiles;
    let trust =
        crate::trust::check_policy(main, &policy::dropins(main).unwrap_or_default(), &files);
    let loaded = policy::load(main);
    let p: Policy = match (&trust, &loaded) {
        (Err(e), _) => {
            out.push(line(
                Fail,
                "policy",
                e.to_string(),
                Some("fix the ownership or mode the message names"),
            ));
            Policy::default()
        }
        (Result::Ok(()), Err(e)) => {
            out.push(line(
                Fail,
                "policy",
                e.to_string(),
                Some("fix the file, then `mlenv policy check`"),
            ));
            Policy::default()
        }
        (Result::Ok(()), Result::Ok(l)) => {
            let names: Vec<String> = l.files.iter().map(|f| f.display().to_string()).collect();
            let detail = if names.is_empty() {
                format!("{} does not exist: built-in defaults", main.display())
            } else {
                format!("valid and trusted: {}", names.join(" + "))
            };
            out.push(line(Ok, "policy", detail, None));
            l.policy.clone()
        }
    };
    out.push(match crate::lowlevel::locate(p.runtime.path.as_deref()) {
        Result::Ok(r) => line(
            Ok,
            "runtime",
            format!("low-level runtime {}", r.display()),
            None,
        ),
        Err(e) => line(
            Fail,
            "runtime",
            e.to_string(),
            Some("install runc (apt install runc) or set [runtime] path"),
        ),
    });
    // Each binary, and what its absence costs.
    for (name, missing, fix) in [
        (
            "mlenv-runtime",
            Fail,
            "install mlenv-runtime beside mlenv",
        ),
        (
            "mlenv-hook",
            Warn,
            "install it beside mlenv-runtime: without it liveness falls back to runc's state and leases end only on delete",
        ),
        (
            "mlenv-nvml",
            Warn,
            "install it beside mlenv-runtime: it reads the GPUs for mlenv-runtime, which refuses GPU requests without it",
        ),
    ] {
        let path = runtime_dir.join(name);
        out.push(if path.is_file() {
            line(Ok, name, path.display().to_string(), None)
        } else {
            line(missing, name, format!("{} not found", path.display()), Some(fix))
        });
    }
    let inv_path = &p.inventory.path;
    out.push(match crate::trust::check_inventory(inv_path, &files) {
        Err(e) => line(
            Fail,
            "inventory",
            e.to_string(),
            Some("fix the ownership or mode the message names"),
        ),
        Result::Ok(()) => {
            let dir = inv_path.parent().unwrap_or(Path::new("/"));
            if inv_path.exists() {
                match crate::inventory::Inventory::open(inv_path) {
                    Result::Ok(i) => {
                        let found =
                            format!("{} (schema {})", inv_path.display(), i.schema_version().unwrap_or(0));
                        match crate::inventory::Inventory::set_aside_files(inv_path).last() {
                            Some(aside) => line(
                                Warn,
                                "inventory",
                                format!(
                                    "{found}; a corrupt inventory was moved aside to {}: containers running then are not counted until recreated",
                                    aside.display()
                                ),
                                Some("look at the old file if needed, then remove it"),
                            ),
                            None => line(Ok, "inventory", found, None),
                        }
                    }
                    Err(e) => line(
                        Fail,
                        "inventory",
                        e.to_string(),
                        Some("see docs/troubleshooting.md (inventory)"),
                    ),
                }
            } else if writable_dir(dir) {
                line(
                    Ok,
                    "inventory",
                    format!("{} will be created on the first create", inv_path.display()),
                    None,
                )
            } else {
                line(
                    Fail,
                    "inventory",
                    format!(
                        "{} cannot be created: its directory is not writable",
                        inv_path.display()
                    ),
                    Some("create the directory, owned by root, mode 0755"),
                )
            }
        }
    });
    match crate::gpu::probe(p.gpu.nvml_library.as_deref()) {
        Result::Ok(gpus) => {
            out.push(line(Ok, "nvml", format!("{} GPU(s) through NVML", gpus.len()), None));
            let off: Vec<String> = gpus
                .iter()
                .filter(|g| g.persistence == Some(false))
                .map(|g| g.index.to_string())
                .collect();
            out.push(if off.is_empty() {
                line(Ok, "persistence", "persistence mode on (or not reported)".into(), None)
            } else {
                line(Warn, "persistence", format!("persistence mode off on GPU {}: each probe may wait seconds for the driver", off.join(",")), Some("nvidia-smi -pm 1, or run nvidia-persistenced"))
            });
        }
        Err(e) => out.push(line(Warn, "nvml", format!("NVML not loadable: {e}"), Some("fine on a host without GPUs; else install the NVIDIA driver or set [gpu] nvml_library"))),
    }
    if p.gpu.inject == Inject::Cdi {
        let found = p
            .gpu
            .cdi_spec_dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "json" || x == "yaml")
            });
        out.push(if found {
            line(Ok, "cdi", "CDI specs present".into(), None)
        } else {
            line(
                Fail,
                "cdi",
                "inject = \"cdi\" but no CDI spec in [gpu] cdi_spec_dirs".into(),
                Some("nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"),
            )
        });
    }
    let registered = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .is_some_and(|t| t.contains("mlenv-runtime"))
    };
    let in_dir = |dir: &Path| {
        std::fs::read_dir(dir)
            .ok()
            .is_some_and(|d| d.filter_map(|e| e.ok()).any(|e| registered(&e.path())))
    };
    let engines_found = [
        ("docker", registered(&engines.docker)),
        ("containerd", registered(&engines.containerd)),
        ("podman", in_dir(&engines.podman_conf_d)),
        ("crio", in_dir(&engines.crio_conf_d)),
    ];
    let names: Vec<&str> = engines_found
        .iter()
        .filter(|(_, f)| *f)
        .map(|(n, _)| *n)
        .collect();
    out.push(if names.is_empty() {
        line(
            Warn,
            "engines",
            "mlenv-runtime is registered with no engine".into(),
            Some("mlenv install docker (or containerd, podman, crio)"),
        )
    } else {
        line(
            Ok,
            "engines",
            format!("registered with {}", names.join(", ")),
            None,
        )
    });
    out
}

fn writable_dir(dir: &Path) -> bool {
    let mut d = dir;
    // The first existing ancestor decides whether it can be made.
    loop {
        if d.exists() {
            return nix::unistd::access(d, nix::unistd::AccessFlags::W_OK).is_ok();
        }
        match d.parent() {
            Some(p) => d = p,
            None => return false,
        }
    }
}

pub fn render(lines: &[Line]) -> String {
    let mut o = String::new();
    for l in lines {
        let tag = match l.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        o.push_str(&format!("{tag}  {:<14} {}\n", l.what, l.detail));
        if let Some(fix) = &l.fix {
            o.push_str(&format!("      {:<14} fix: {fix}\n", ""));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_described_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        std::fs::write(
            &main,
            format!(
                "[inventory]\npath = {:?}\n[gpu]\nnvml_library = \"/nonexistent/libnvidia-ml.so.1\"\n",
                dir.path().join("inv/mlenv.db")
            ),
        )
        .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("mlenv-runtime"), "").unwrap();
        let daemon = dir.path().join("daemon.json");
        std::fs::write(
            &daemon,
            r#"{"runtimes": {"mlenv": {"path": "/usr/bin/mlenv-runtime"}}}"#,
        )
        .unwrap();
        let engines = EnginePaths {
            docker: daemon,
            containerd: dir.path().join("none.toml"),
            podman_conf_d: dir.path().join("none.d"),
            crio_conf_d: dir.path().join("none.d"),
        };
        let lines = check(&main, &bin, &engines);
        let level = |what: &str| lines.iter().find(|l| l.what == what).map(|l| l.level);
        assert_eq!(level("policy"), Some(Level::Ok));
        assert_eq!(level("mlenv-runtime"), Some(Level::Ok));
        assert_eq!(level("mlenv-hook"), Some(Level::Warn));
        assert_eq!(level("mlenv-nvml"), Some(Level::Warn));
        assert_eq!(level("inventory"), Some(Level::Ok));
        assert_eq!(level("nvml"), Some(Level::Warn));
        assert_eq!(level("engines"), Some(Level::Ok));
        let text = render(&lines);
        assert!(
            text.contains("ok    engines        registered with docker"),
            "{text}"
        );
        assert!(
            text.contains("fix: install it beside mlenv-runtime"),
            "{text}"
        );
        // A broken policy fails, with the fix.
        std::fs::write(&main, "bogus = 1\n").unwrap();
        let lines = check(&main, &bin, &engines);
        assert_eq!(lines[0].level, Level::Fail);
        assert!(render(&lines).contains("fix: fix the file, then `mlenv policy check`"));
    }
}
