//! mlenv: the admin CLI.

use clap::{Parser, Subcommand};
use mlenv::clock::{age, parse_duration, Clock, SystemClock};
use mlenv::edits::Limits;
use mlenv::host::ProcHost;
use mlenv::inventory::{Decision, Inventory};
use mlenv::policy::{self, Policy};
use mlenv::units::{ByteSize, Cpus};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mlenv",
    version,
    about = "Admin CLI of mlenv, the OCI runtime wrapper for shared GPU servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Work with the policy in /etc/mlenv (or $MLENV_CONFIG).
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// List the containers mlenv admitted that are still live.
    Ps {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List create decisions, newest first.
    History {
        /// Only decisions this recent: 90s, 15m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Show the whole decision record of a container (id or unique prefix).
    Explain {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// End containers whose process is gone and prune what is older than
    /// [inventory] retention_days (deletes also prune, when something is due).
    Gc {
        /// Prune what is older than this instead: 90s, 15m, 2h, 7d.
        #[arg(long)]
        older_than: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check this host's setup: runtime, policy, inventory, NVML, CDI specs, engine
    /// registration; each line ok, warn or FAIL with its fix. Exit 1 on a FAIL.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// The host against its thresholds, who holds which GPU, the policy in force and
    /// the inventory's health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Metrics in Prometheus' text format: decisions and refusals by reason, live
    /// containers, GPU leases and MPS shares, host pressure.
    Metrics {
        /// Write DIR/mlenv.prom atomically (node-exporter's textfile collector)
        /// instead of printing.
        #[arg(long)]
        textfile_dir: Option<PathBuf>,
    },
    /// Register mlenv with a container engine: its runtime (and hook), keeping every
    /// other setting; idempotent; the previous file kept as FILE.mlenv-backup.
    Install(InstallArgs),
    /// Take mlenv out of an engine's configuration again.
    Uninstall(InstallArgs),
    /// Write man pages of mlenv and its subcommands into DIR (packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// The GPUs as NVML reports them (index, UUID, minor, memory, processes, MIG
    /// mode), as mlenv-runtime reads them (through mlenv-nvml).
    Gpus {
        #[arg(long)]
        json: bool,
        /// The NVML library (default: the policy's [gpu] nvml_library, else the
        /// system's libnvidia-ml.so.1).
        #[arg(long)]
        nvml_library: Option<PathBuf>,
    },
    /// CDI devices as mlenv sees them (inject = "cdi").
    Cdi {
        #[command(subcommand)]
        command: CdiCmd,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    Docker,
    Containerd,
    Podman,
    Crio,
}

#[derive(clap::Args)]
struct InstallArgs {
    engine: Engine,
    /// Also make mlenv the engine's default runtime (every container, compose files
    /// unchanged).
    #[arg(long)]
    default: bool,
    /// Show the files as they are and as they would be; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// The runtime's name in the engine (`--runtime NAME`, RuntimeClass handler).
    #[arg(long, default_value = "mlenv")]
    name: String,
    /// mlenv-runtime (default: beside this binary).
    #[arg(long)]
    runtime: Option<PathBuf>,
    /// mlenv-hook, for podman and CRI-O (default: beside this binary).
    #[arg(long)]
    hook: Option<PathBuf>,
    /// The engine's config file (docker: /etc/docker/daemon.json, containerd:
    /// /etc/containerd/config.toml) or drop-in directory (podman:
    /// /etc/containers/containers.conf.d, crio: /etc/crio/crio.conf.d).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The hooks directory (podman: /etc/containers/oci/hooks.d, crio:
    /// /usr/share/containers/oci/hooks.d).
    #[arg(long)]
    hooks_dir: Option<PathBuf>,
    /// crio: also put mlenv-hook in the hooks directory (it then sees every
    /// container on the node, Kubernetes system pods included).
    #[arg(long)]
    with_hook: bool,
    /// dockerd's pid file, to make it reload (SIGHUP).
    #[arg(long, default_value = mlenv::install::docker::PID_FILE)]
    pid_file: PathBuf,
    /// containerd's major version (default: asked of `containerd --version`).
    #[arg(long)]
    containerd_major: Option<u32>,
}

#[derive(Subcommand)]
enum CdiCmd {
    /// List the CDI devices of a kind in the spec directories (default: the
    /// policy's [gpu] cdi_spec_dirs and cdi_kind).
    List {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
        dirs: Vec<PathBuf>,
    },
    /// The CDI edits of devices applied to an empty spec, as JSON (what mlenv-runtime
    /// merges into config.json).
    #[command(hide = true)]
    Edits {
        #[arg(long)]
        uid: u32,
        #[arg(long)]
        gid: u32,
        dirs: Vec<PathBuf>,
        #[arg(last = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate the policy without touching anything. With FILE: that file alone;
    /// without: the main file and its conf.d drop-ins, as a create would load them.
    Check { file: Option<PathBuf> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Policy {
            command: PolicyCmd::Check { file },
        } => policy_check(file.as_deref()),
        Cmd::Ps { json } => ps(json),
        Cmd::Cdi { command } => cdi(command),
        Cmd::Gpus { json, nvml_library } => gpus(json, nvml_library),
        Cmd::Man { dir } => man(&dir),
        Cmd::Gc { older_than, json } => gc(older_than.as_deref(), json),
        Cmd::Doctor { json } => {
            let dir = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("/usr/bin"));
            let lines = mlenv::doctor::check(&policy::main_path(), &dir, &Default::default());
            let failed = lines.iter().any(|l| l.level == mlenv::doctor::Level::Fail);
            if json {
                let _ = json_out(&lines);
            } else {
                print!("{}", mlenv::doctor::render(&lines));
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Status { json } => {
            let s = mlenv::status::gather(&policy::main_path(), &ProcHost::default());
            if json {
                json_out(&s)
            } else {
                print!("{}", mlenv::status::render(&s));
                Ok(ExitCode::SUCCESS)
            }
        }
        Cmd::Metrics { textfile_dir } => metrics(textfile_dir.as_deref()),
        Cmd::Install(args) => install(&args, true),
        Cmd::Uninstall(args) => install(&args, false),
        Cmd::History { since, limit, json } => history(since.as_deref(), limit, json),
        Cmd::Explain { id, json } => explain(&id, json),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("mlenv: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn policy_check(file: Option<&Path>) -> Result<ExitCode, String> {
    let loaded = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            policy::parse_file(f, &text)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    let mut p: Policy = toml::Value::Table(t)
                        .try_into()
                        .map_err(|e: toml::de::Error| e.to_string())?;
                    p.validate()?;
                    Ok(policy::Loaded {
                        policy: p,
                        files: vec![f.to_path_buf()],
                    })
                })
        }
        None => policy::load(&policy::main_path()).map_err(|e| e.to_string()),
    };
    // The second half of MPS validation needs the GPUs: where NVML answers, a share
    // bound above the smallest MPS GPU's memory is an error.
    let loaded = loaded.and_then(|l| match mps_gpu_memory(&l.policy) {
        Some(memory) => l.policy.mps.validate(Some(memory)).map(|()| l),
        None => Ok(l),
    });
    // The policy in force must also be one mlenv believes.
    let loaded = loaded.and_then(|l| {
        if file.is_none() {
            let main = policy::main_path();
            let files = mlenv::hostfs::RealFiles;
            mlenv::trust::check_policy(&main, &policy::dropins(&main).unwrap_or_default(), &files)
                .and_then(|()| mlenv::trust::check_inventory(&l.policy.inventory.path, &files))
                .map_err(|e| e.to_string())?;
        }
        Ok(l)
    });
    match loaded {
        Ok(l) => {
            if l.files.is_empty() {
                println!(
                    "policy ok: {} does not exist; built-in defaults are in force",
                    policy::main_path().display()
                );
            } else {
                let names: Vec<String> = l.files.iter().map(|f| f.display().to_string()).collect();
                println!("policy ok: {}", names.join(" + "));
            }
            println!("\n# effective policy\n{}", l.policy.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("policy invalid: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn man(dir: &Path) -> Result<ExitCode, String> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn metrics(textfile_dir: Option<&Path>) -> Result<ExitCode, String> {
    use mlenv::host::Host;
    let mut inv = open_inventory()?;
    // Dead containers must not be counted as live.
    if let Err(e) = inv.reconcile(&ProcHost::default(), SystemClock.now_ms()) {
        eprintln!("mlenv: warning: live containers not checked: {e}");
    }
    let e = |e: mlenv::inventory::InventoryError| e.to_string();
    let refusals = inv.refusal_reasons().map_err(e)?;
    let snapshot = mlenv::metrics::Snapshot {
        outcomes: inv.outcome_counts().map_err(e)?,
        refusal_reasons: mlenv::metrics::count_reasons(refusals.iter().map(String::as_str)),
        live: inv.live().map_err(e)?,
        leases: inv.leases().map_err(e)?,
        host: ProcHost::default().probe().ok(),
    };
    let text = mlenv::metrics::render(&snapshot);
    match textfile_dir {
        None => print!("{text}"),
        Some(dir) => {
            let path = dir.join("mlenv.prom");
            mlenv::fsutil::write_atomic(&path, text.as_bytes(), 0o644)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn gc(older_than: Option<&str>, json: bool) -> Result<ExitCode, String> {
    let keep_ms = match older_than {
        Some(d) => parse_duration(d).ok_or_else(|| {
            format!("--older-than {d:?}: write a number and s, m, h or d, like 7d")
        })?,
        None => {
            let days = policy::lenient(&policy::main_path()).retention().ok_or(
                "[inventory] retention_days = false keeps every decision: give --older-than to prune anyway",
            )?;
            i64::from(days) * 86_400_000
        }
    };
    let mut inv = open_inventory()?;
    let now = SystemClock.now_ms();
    let ended = inv
        .reconcile(&ProcHost::default(), now)
        .map_err(|e| e.to_string())?;
    let pruned = inv.prune(now - keep_ms).map_err(|e| e.to_string())?;
    if json {
        return json_out(&serde_json::json!({
            "ended": ended,
            "pruned_decisions": pruned.decisions,
            "pruned_containers": pruned.containers,
        }));
    }
    println!(
        "ended {ended} container(s) whose process was gone; pruned {} decision(s) and {} ended container(s) older than {}",
        pruned.decisions,
        pruned.containers,
        age(keep_ms)
    );
    Ok(ExitCode::SUCCESS)
}

/// A binary installed beside this one (/usr/bin/mlenv-runtime beside /usr/bin/mlenv).
fn beside(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let p = exe.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found beside {}: give its path",
            p.display(),
            exe.display()
        ))
    }
}

fn install(a: &InstallArgs, install: bool) -> Result<ExitCode, String> {
    use mlenv::install::{self, containerd, crio, docker, podman};
    let runtime = match &a.runtime {
        Some(p) => p.clone(),
        None if install => beside("mlenv-runtime")?,
        None => PathBuf::from("/usr/bin/mlenv-runtime"),
    };
    let hook = || match &a.hook {
        Some(p) => Ok(p.clone()),
        None if install => beside("mlenv-hook"),
        None => Ok(PathBuf::from("/usr/bin/mlenv-hook")),
    };
    let plan = match a.engine {
        Engine::Docker => docker::plan(
            &docker::Options {
                config: a.config.clone().unwrap_or_else(|| docker::DAEMON_JSON.into()),
                name: a.name.clone(),
                runtime,
                default: a.default,
            },
            install,
        ),
        Engine::Containerd => {
            let major = match a.containerd_major.or_else(containerd::detect_major) {
                Some(m) => m,
                None => return Err("cannot tell containerd's version (`containerd --version`): give --containerd-major".into()),
            };
            containerd::plan(
                &containerd::Options {
                    config: a.config.clone().unwrap_or_else(|| containerd::CONFIG.into()),
                    name: a.name.clone(),
                    runtime,
                    default: a.default,
                    major,
                },
                install,
            )
        }
        Engine::Podman => podman::plan(
            &install::DropIns {
                conf_d: a.config.clone().unwrap_or_else(|| podman::CONF_D.into()),
                hooks_d: a.hooks_dir.clone().unwrap_or_else(|| podman::HOOKS_D.into()),
                name: a.name.clone(),
                runtime,
                hook: Some(hook()?),
                default: a.default,
            },
            install,
        ),
        Engine::Crio => crio::plan(
            &install::DropIns {
                conf_d: a.config.clone().unwrap_or_else(|| crio::CONF_D.into()),
                hooks_d: a.hooks_dir.clone().unwrap_or_else(|| crio::HOOKS_D.into()),
                name: a.name.clone(),
                runtime,
                // On a Kubernetes node the hook sees every container: only when asked.
                hook: a.with_hook.then(hook).transpose()?,
                default: a.default,
            },
            install,
        ),
    }
    .map_err(|e| e.to_string())?;
    if a.dry_run {
        print!("{}", install::describe(&plan));
        println!("dry run: nothing written");
        return Ok(ExitCode::SUCCESS);
    }
    let done = install::apply(&plan).map_err(|e| e.to_string())?;
    if done.is_empty() {
        println!(
            "{}: nothing to change",
            if install {
                "already installed"
            } else {
                "not installed"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    for line in &done {
        println!("{line}");
    }
    if a.engine == Engine::Docker {
        println!("{}", docker::reload(&a.pid_file));
    }
    for note in &plan.notes {
        println!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The memory of the smallest GPU shared through MPS, when NVML can say.
fn mps_gpu_memory(p: &Policy) -> Option<u64> {
    let empty = matches!(&p.mps.gpus, mlenv::gpu::mps::MpsGpus::List(l) if l.is_empty());
    if empty {
        return None;
    }
    mlenv::gpu::probe(p.gpu.nvml_library.as_deref())
        .ok()?
        .iter()
        .filter(|g| p.mps.shares(g.index, &g.uuid))
        .map(|g| g.memory_total)
        .min()
}

/// The inventory named by the policy; a policy that does not validate still names
/// it (read leniently), with a warning.
fn open_inventory() -> Result<Inventory, String> {
    let main = policy::main_path();
    let path = match policy::load(&main) {
        Ok(l) => l.policy.inventory.path,
        Err(e) => {
            eprintln!("mlenv: warning: policy invalid ({e}); reading the inventory it names");
            policy::lenient(&main).inventory()
        }
    };
    if !path.exists() {
        return Err(format!(
            "no inventory at {}: no container has been created through mlenv-runtime yet",
            path.display()
        ));
    }
    Inventory::open(&path).map_err(|e| e.to_string())
}

fn json_out<T: serde::Serialize>(v: &T) -> Result<ExitCode, String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(ExitCode::SUCCESS)
}

fn gpus(json: bool, nvml_library: Option<PathBuf>) -> Result<ExitCode, String> {
    let lib = nvml_library.or_else(|| {
        policy::load(&policy::main_path())
            .ok()
            .and_then(|l| l.policy.gpu.nvml_library)
    });
    let gpus = mlenv::gpu::probe(lib.as_deref()).map_err(|e| e.to_string())?;
    if json {
        return json_out(&gpus);
    }
    table(
        &[
            "INDEX",
            "UUID",
            "NAME",
            "MINOR",
            "MEMORY USED",
            "UTIL",
            "PROCESSES",
            "MIG",
        ],
        gpus.iter()
            .map(|g| {
                vec![
                    g.index.to_string(),
                    g.uuid.clone(),
                    g.name.clone(),
                    g.minor.to_string(),
                    format!(
                        "{} of {}",
                        ByteSize(g.memory_used),
                        ByteSize(g.memory_total)
                    ),
                    format!("{}%", g.utilization),
                    g.processes.len().to_string(),
                    opt(g.mig.map(|m| if m { "on" } else { "off" })),
                ]
            })
            .collect(),
    );
    Ok(ExitCode::SUCCESS)
}

fn cdi(command: CdiCmd) -> Result<ExitCode, String> {
    use mlenv::gpu::cdi::resolve;
    match command {
        CdiCmd::List { kind, json, dirs } => {
            let gpu = policy::load(&policy::main_path())
                .map(|l| l.policy.gpu)
                .unwrap_or_default();
            let kind = kind.unwrap_or(gpu.cdi_kind);
            let dirs = if dirs.is_empty() {
                gpu.cdi_spec_dirs
            } else {
                dirs
            };
            let names = resolve::devices(&dirs, &kind)?;
            if json {
                return json_out(&names);
            }
            for n in names {
                println!("{n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        CdiCmd::Edits {
            uid,
            gid,
            dirs,
            names,
        } => json_out(&resolve::edits(&dirs, uid, gid, &names)?),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn mem(v: Option<u64>) -> String {
    opt(v.map(ByteSize))
}

fn cpus(v: Option<f64>) -> String {
    opt(v.map(Cpus))
}

/// Prints rows as left-aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn ps(json: bool) -> Result<ExitCode, String> {
    let mut inv = open_inventory()?;
    // Drop containers whose process is gone before listing (needs write access).
    if let Err(e) = inv.reconcile(&ProcHost::default(), SystemClock.now_ms()) {
        eprintln!("mlenv: warning: live containers not checked: {e}");
    }
    let live = inv.live().map_err(|e| e.to_string())?;
    if json {
        return json_out(&live);
    }
    let now = SystemClock.now_ms();
    let rows = live
        .iter()
        .map(|l| {
            vec![
                short(&l.container_id).to_string(),
                opt(l.project.clone()),
                format!("{}:{}", l.uid, l.gid),
                opt(l.pid),
                mem(l.limits.memory),
                cpus(l.limits.cpus),
                opt(l.limits.pids),
                gpu_list(&l.gpus),
                age(now - l.created_ms),
            ]
        })
        .collect();
    table(
        &[
            "CONTAINER",
            "PROJECT",
            "USER",
            "PID",
            "MEMORY",
            "CPUS",
            "PIDS",
            "GPUS",
            "AGE",
        ],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn history(since: Option<&str>, limit: u32, json: bool) -> Result<ExitCode, String> {
    let since_ms = match since {
        Some(s) => {
            let d = parse_duration(s).ok_or_else(|| {
                format!("invalid --since {s:?}: write a duration like 90s, 15m, 2h or 7d")
            })?;
            SystemClock.now_ms() - d
        }
        None => 0,
    };
    let inv = open_inventory()?;
    let rows = inv.history(since_ms, limit).map_err(|e| e.to_string())?;
    if json {
        return json_out(&rows);
    }
    let rows = rows
        .iter()
        .map(|d| {
            vec![
                d.time(),
                short(&d.container_id).to_string(),
                opt(d.project.clone()),
                format!("{}:{}", d.uid, d.gid),
                d.outcome.as_str().to_string(),
                d.reason.clone(),
            ]
        })
        .collect();
    table(
        &["TIME", "CONTAINER", "PROJECT", "USER", "DECISION", "REASON"],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn gpu_list(gpus: &[u32]) -> String {
    if gpus.is_empty() {
        return "-".into();
    }
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn limits_line(l: &Limits) -> String {
    format!(
        "memory {}, swap {}, cpus {}, pids {}",
        mem(l.memory),
        mem(l.swap),
        cpus(l.cpus),
        opt(l.pids)
    )
}

fn explain(id: &str, json: bool) -> Result<ExitCode, String> {
    let inv = open_inventory()?;
    let d: Decision = inv
        .find(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no decision recorded for a container id starting with {id:?}"))?;
    if json {
        return json_out(&d);
    }
    println!("container  {}", d.container_id);
    println!("time       {}", d.time());
    println!("decision   {}", d.outcome.as_str());
    println!("reason     {}", d.reason);
    println!("user       {}:{}", d.uid, d.gid);
    println!("project    {}", opt(d.project.clone()));
    println!("bundle     {}", d.bundle);
    println!("root       {}", opt(d.root.clone()));
    println!("requested  {}", limits_line(&d.requested));
    println!("effective  {}", limits_line(&d.effective));
    if let Some(files) = d.detail.get("policy_files").and_then(|v| v.as_array()) {
        let names: Vec<&str> = files.iter().filter_map(|f| f.as_str()).collect();
        println!(
            "policy     {}",
            if names.is_empty() {
                "built-in defaults".to_string()
            } else {
                names.join(" + ")
            }
        );
    }
    if let Some(checks) = d.detail.get("checks").and_then(|v| v.as_array()) {
        for c in checks {
            let mark = if c["passed"] == true { "ok  " } else { "FAIL" };
            println!("check      {mark}  {}", c["text"].as_str().unwrap_or(""));
        }
    }
    if let Some(req) = d.detail.get("gpu_request").and_then(|r| r.as_str()) {
        println!("gpus       requested {req}");
    }
    // Every GPU as the decision saw it, and why it was or was not chosen.
    if let Some(gpus) = d.detail.get("gpus").and_then(|v| v.as_array()) {
        for g in gpus {
            let mark = if g["chosen"] == true {
                "chosen"
            } else if g["free"] == true {
                "free  "
            } else {
                "busy  "
            };
            println!(
                "gpu        {mark}  {} {} {} util {}%, {} free of {}: {}",
                g["index"],
                g["uuid"].as_str().unwrap_or(""),
                g["name"].as_str().unwrap_or(""),
                g["utilization"],
                mem(g["memory_free"].as_u64()),
                mem(g["memory_total"].as_u64()),
                g["why"].as_str().unwrap_or("")
            );
        }
    }
    for key in ["actions", "refusals", "notes"] {
        if let Some(items) = d.detail.get(key).and_then(|v| v.as_array()) {
            for item in items.iter().filter_map(|i| i.as_str()) {
                println!("{:<10} {item}", &key[..key.len() - 1]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
