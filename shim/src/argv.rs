//! Scanning the argv that an engine passes to an OCI runtime.
//!
//! Engines call the runtime the way they call runc: global flags, a subcommand, its
//! flags and a container id. runc parses with Go's flag rules, so `-root x`,
//! `--root x`, `--root=x` and `-root=x` all mean the same, and (urfave/cli) the
//! subcommand's flags may come after the container id. We only scan: the original argv
//! is what the low-level runtime gets, untouched.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Global flags of runc and crun that take a value. Any other flag is taken as a
/// boolean; `--flag=value` is always read correctly whatever the flag.
const GLOBAL_VALUE_FLAGS: &[&str] = &[
    "log",
    "log-format",
    "log-level",
    "root",
    "criu",
    "rootless",
    "cgroup-manager",
];

/// Flags of `create` and `run` that take a value.
const CREATE_VALUE_FLAGS: &[&str] = &["bundle", "b", "console-socket", "pid-file", "preserve-fds"];

/// Flags of `update` that take a value (all of runc's do).
const UPDATE_VALUE_FLAGS: &[&str] = &[
    "resources",
    "r",
    "blkio-weight",
    "cpu-period",
    "cpu-quota",
    "cpu-rt-period",
    "cpu-rt-runtime",
    "cpu-share",
    "cpuset-cpus",
    "cpuset-mems",
    "kernel-memory",
    "kernel-memory-tcp",
    "memory",
    "memory-reservation",
    "memory-swap",
    "pids-limit",
    "l3-cache-schema",
    "mem-bw-schema",
];

/// Flags of `exec` that take a value.
const EXEC_VALUE_FLAGS: &[&str] = &[
    "console-socket",
    "pidfd-socket",
    "cwd",
    "env",
    "e",
    "user",
    "u",
    "additional-gids",
    "g",
    "process",
    "p",
    "pid-file",
    "process-label",
    "apparmor",
    "cap",
    "c",
    "preserve-fds",
    "cgroup",
];

/// The subcommands mlenv acts on; everything else passes straight through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `create`, or `run` (create and start in one call).
    Create,
    /// `delete`, with or without `--force`.
    Delete,
    /// `update`: new resource limits for a running container.
    Update,
    /// `exec`: a new process in a running container (`docker exec`).
    Exec,
    /// Any other subcommand, or none (`--version`, `--help`).
    Other,
}

/// What an argv says, as far as mlenv needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// The subcommand word as given (`create`, `run`, `state`, ...).
    pub subcommand: Option<String>,
    /// `--log`: where the engine reads runtime errors from.
    pub log: Option<PathBuf>,
    /// `--log-format`: `json` (Docker, containerd) or `text` (runc's default).
    pub log_format: Option<String>,
    /// `--root`: the low-level runtime's state directory.
    pub root: Option<PathBuf>,
    /// `--bundle` of create/run, as given (relative to the current directory).
    pub bundle: Option<PathBuf>,
    /// `--pid-file` of create/run.
    pub pid_file: Option<PathBuf>,
    /// The container id: the first positional argument after the subcommand.
    pub container_id: Option<String>,
    /// `run --detach`: without it, `run` stays in the foreground until the container
    /// exits and removes it itself.
    pub detach: bool,
    /// `update`'s and `exec`'s flags with values, as given (`resources`, `memory`,
    /// `process`, `cap`, ...), short names spelled long.
    pub update: Vec<(String, String)>,
}

impl Invocation {
    /// `--root` as the inventory keeps it (a container id is live per runtime root).
    pub fn root_text(&self) -> Option<String> {
        self.root.as_ref().map(|r| r.display().to_string())
    }

    /// The bundle directory, resolved against `cwd`; runc's default is the current
    /// directory.
    pub fn bundle_dir(&self, cwd: &Path) -> PathBuf {
        match &self.bundle {
            Some(b) if b.is_absolute() => b.clone(),
            Some(b) => cwd.join(b),
            None => cwd.to_path_buf(),
        }
    }

    /// Whether the engine wants JSON lines in the log file.
    pub fn log_is_json(&self) -> bool {
        self.log_format.as_deref() == Some("json")
    }
}

/// A flag token split into its name (dashes removed) and an inline `=value`.
fn split_flag(token: &str) -> Option<(&str, Option<&str>)> {
    if token == "-" || token == "--" || !token.starts_with('-') {
        return None;
    }
    let body = token.strip_prefix("--").unwrap_or_else(|| &token[1..]);
    match body.split_once('=') {
        Some((name, value)) => Some((name, Some(value))),
        None => Some((body, None)),
    }
}

/// Scans `args` (argv without the program name). Never fails: what it cannot read
/// is left to the low-level runtime, which gives its own error.
pub fn scan(args: &[OsString]) -> Invocation {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut inv = Invocation {
        command: Command::Other,
        subcommand: None,
        log: None,
        log_format: None,
        root: None,
        bundle: None,
        pid_file: None,
        container_id: None,
        detach: false,
        update: Vec::new(),
    };

    // Global flags, up to the first non-flag word (Go's flag package stops there).
    let mut i = 0;
    while i < args.len() {
        let token = &args[i];
        if token == "--" {
            i += 1;
            break;
        }
        let Some((name, inline)) = split_flag(token) else {
            break;
        };
        let value = if let Some(v) = inline {
            Some(v.to_string())
        } else if GLOBAL_VALUE_FLAGS.contains(&name) {
            i += 1;
            args.get(i).cloned()
        } else {
            None
        };
        match (name, value) {
            ("log", Some(v)) => inv.log = Some(PathBuf::from(v)),
            ("log-format", Some(v)) => inv.log_format = Some(v),
            ("root", Some(v)) => inv.root = Some(PathBuf::from(v)),
            _ => {}
        }
        i += 1;
    }

    let Some(sub) = args.get(i) else {
        return inv;
    };
    inv.subcommand = Some(sub.clone());
    inv.command = match sub.as_str() {
        "create" | "run" => Command::Create,
        "delete" => Command::Delete,
        "update" => Command::Update,
        "exec" => Command::Exec,
        _ => return inv,
    };

    // The subcommand's own flags and positionals, in any order (urfave/cli reorders
    // flags before arguments); after `--` everything is positional.
    let mut positional = Vec::new();
    let mut only_positional = false;
    i += 1;
    while i < args.len() {
        let token = &args[i];
        if only_positional {
            positional.push(token.clone());
        } else if token == "--" {
            only_positional = true;
        } else if let Some((name, inline)) = split_flag(token) {
            let takes_value = match inv.command {
                Command::Create => CREATE_VALUE_FLAGS.contains(&name),
                Command::Update => UPDATE_VALUE_FLAGS.contains(&name),
                Command::Exec => EXEC_VALUE_FLAGS.contains(&name),
                _ => false,
            };
            let value = match inline {
                Some(v) => Some(v.to_string()),
                None if takes_value => {
                    i += 1;
                    args.get(i).cloned()
                }
                None => None,
            };
            match (name, value) {
                (n, Some(v)) if matches!(inv.command, Command::Update | Command::Exec) => {
                    let n = match n {
                        "r" => "resources",
                        "p" => "process",
                        "c" => "cap",
                        "u" => "user",
                        other => other,
                    };
                    inv.update.push((n.to_string(), v));
                }
                ("bundle" | "b", Some(v)) => inv.bundle = Some(PathBuf::from(v)),
                ("pid-file", Some(v)) => inv.pid_file = Some(PathBuf::from(v)),
                ("detach" | "d", v) => inv.detach = v.is_none_or(|v| v == "true"),
                _ => {}
            }
        } else {
            positional.push(token.clone());
        }
        i += 1;
    }
    inv.container_id = positional.into_iter().next();
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(line: &str) -> Invocation {
        let args: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
        scan(&args)
    }

    #[test]
    fn update_as_containerd_and_runc_users_call_it() {
        let inv = s("--root /r --log /t/log.json --log-format json update --resources=- abc");
        assert_eq!(inv.command, Command::Update);
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        assert_eq!(inv.update, vec![("resources".to_string(), "-".to_string())]);
        let inv = s("update -r /tmp/res.json --memory 1g abc --pids-limit 10");
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        assert_eq!(
            inv.update,
            [
                ("resources", "/tmp/res.json"),
                ("memory", "1g"),
                ("pids-limit", "10")
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn exec_as_docker_calls_it() {
        let inv = s("--root /r --log /l --log-format json exec --process /p/process.json --detach --pid-file /p abc");
        assert_eq!(inv.command, Command::Exec);
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        assert_eq!(
            inv.update[0],
            ("process".to_string(), "/p/process.json".to_string())
        );
        let inv = s("exec -c CAP_SYS_ADMIN --cap=CAP_NET_ADMIN abc sh");
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        assert_eq!(inv.update.len(), 2);
    }

    #[test]
    fn docker_create() {
        let inv = s("--root /var/run/docker/runtime-runc/moby --log /t/log.json --log-format json create --bundle /t --pid-file /t/init.pid abc123");
        assert_eq!(inv.command, Command::Create);
        assert_eq!(inv.subcommand.as_deref(), Some("create"));
        assert_eq!(
            inv.root,
            Some(PathBuf::from("/var/run/docker/runtime-runc/moby"))
        );
        assert_eq!(inv.log, Some(PathBuf::from("/t/log.json")));
        assert!(inv.log_is_json());
        assert_eq!(inv.bundle, Some(PathBuf::from("/t")));
        assert_eq!(inv.pid_file, Some(PathBuf::from("/t/init.pid")));
        assert_eq!(inv.container_id.as_deref(), Some("abc123"));
    }

    #[test]
    fn podman_create_has_no_log() {
        let inv = s("create --bundle /u --pid-file /u/pidfile id1");
        assert_eq!(inv.command, Command::Create);
        assert_eq!(inv.log, None);
        assert!(!inv.log_is_json());
        assert_eq!(inv.container_id.as_deref(), Some("id1"));
    }

    #[test]
    fn go_style_and_equals_flags() {
        let inv = s("-root /r -log=/l.json -log-format=json create -bundle /b -pid-file=/p x");
        assert_eq!(inv.root, Some(PathBuf::from("/r")));
        assert_eq!(inv.log, Some(PathBuf::from("/l.json")));
        assert_eq!(inv.log_format.as_deref(), Some("json"));
        assert_eq!(inv.bundle, Some(PathBuf::from("/b")));
        assert_eq!(inv.pid_file, Some(PathBuf::from("/p")));
        assert_eq!(inv.container_id.as_deref(), Some("x"));
        let inv = s("--root=/r create --bundle=/b -b=/c y");
        assert_eq!(
            inv.bundle,
            Some(PathBuf::from("/c")),
            "last flag wins, as in Go"
        );
        assert_eq!(inv.container_id.as_deref(), Some("y"));
    }

    #[test]
    fn short_bundle_and_flags_after_id() {
        let inv = s("create -b /b id --pid-file /p --no-pivot");
        assert_eq!(inv.bundle, Some(PathBuf::from("/b")));
        assert_eq!(inv.pid_file, Some(PathBuf::from("/p")));
        assert_eq!(inv.container_id.as_deref(), Some("id"));
    }

    #[test]
    fn container_named_create() {
        let inv = s("--root /r create --bundle /b create");
        assert_eq!(inv.command, Command::Create);
        assert_eq!(inv.container_id.as_deref(), Some("create"));
        let inv = s("--root /r delete create");
        assert_eq!(inv.command, Command::Delete);
        assert_eq!(inv.container_id.as_deref(), Some("create"));
        let inv = s("start create");
        assert_eq!(inv.command, Command::Other);
        assert_eq!(inv.subcommand.as_deref(), Some("start"));
    }

    #[test]
    fn run_is_create() {
        let inv = s("run -d --bundle /b --console-socket /s id");
        assert!(inv.detach);
        assert_eq!(inv.command, Command::Create);
        assert_eq!(inv.subcommand.as_deref(), Some("run"));
        assert_eq!(inv.container_id.as_deref(), Some("id"));
        assert!(!s("run --bundle /b id").detach);
        assert!(!s("run --detach=false id").detach);
        assert!(s("run id --detach").detach);
        assert!(!s("create --bundle /b id").detach);
    }

    #[test]
    fn boolean_globals_do_not_eat_the_subcommand() {
        let inv = s("--debug --systemd-cgroup --log /l create --bundle /b id");
        assert_eq!(inv.command, Command::Create);
        assert_eq!(inv.container_id.as_deref(), Some("id"));
        let inv = s("--rootless false --cgroup-manager cgroupfs create id");
        assert_eq!(inv.command, Command::Create);
        assert_eq!(inv.container_id.as_deref(), Some("id"));
    }

    #[test]
    fn delete_force() {
        let inv = s("--root /r --log /l --log-format json delete --force abc");
        assert_eq!(inv.command, Command::Delete);
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        let inv = s("delete -f abc");
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn passthrough_shapes() {
        for line in [
            "--version",
            "-v",
            "",
            "--root /r state abc",
            "--root /r kill abc 9",
            "--root /r checkpoint --image-path /i abc",
            "--root /r --log /l --log-format json start abc",
            "features",
        ] {
            assert_eq!(s(line).command, Command::Other, "{line}");
        }
    }

    #[test]
    fn double_dash_ends_flags() {
        let inv = s("create --bundle /b -- -weird-id");
        assert_eq!(inv.container_id.as_deref(), Some("-weird-id"));
    }

    #[test]
    fn missing_values_do_not_panic() {
        let inv = s("--root");
        assert_eq!(inv.root, None);
        assert_eq!(inv.subcommand, None);
        let inv = s("create --bundle");
        assert_eq!(inv.bundle, None);
        assert_eq!(inv.container_id, None);
    }

    #[test]
    fn bundle_defaults_to_cwd() {
        let inv = s("create id");
        assert_eq!(inv.bundle_dir(Path::new("/cwd")), PathBuf::from("/cwd"));
        let inv = s("create -b rel id");
        assert_eq!(inv.bundle_dir(Path::new("/cwd")), PathBuf::from("/cwd/rel"));
        let inv = s("create -b /abs id");
        assert_eq!(inv.bundle_dir(Path::new("/cwd")), PathBuf::from("/abs"));
    }
}
