//! The admin's policy: /etc/mlenv/mlenv.toml, then /etc/mlenv/conf.d/*.toml in name
//! order, later files winning key by key.
//!
//! Parsing is strict: an unknown key, a bad size or an out-of-range value is an error
//! naming the file, the line and the key. There is no daemon: every create loads the
//! policy afresh, so a change applies to the next container.

use crate::units::{ByteSize, Cpus, Percent, Pids, Positive, Switch};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The main policy file when `MLENV_CONFIG` is not set.
pub const DEFAULT_MAIN: &str = "/etc/mlenv/mlenv.toml";
/// Where the inventory lives when the policy does not say.
pub const DEFAULT_INVENTORY: &str = "/var/lib/mlenv/mlenv.db";
/// Suffix of the last policy that validated, kept beside the main file
/// (`/etc/mlenv/mlenv.toml.last-known-good`): found even when the main file is
/// garbage and so cannot say where anything else is. Not read as a drop-in.
pub const LAST_KNOWN_GOOD: &str = ".last-known-good";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// What a create does when the policy does not validate.
    pub on_invalid_policy: OnInvalidPolicy,
    pub runtime: RuntimeSection,
    pub inventory: InventorySection,
    pub limits: LimitsSection,
    pub admission: AdmissionSection,
    pub gpu: GpuSection,
    pub mps: crate::gpu::mps::MpsSection,
    pub user: crate::user::UserSection,
    pub security: crate::security::SecuritySection,
    /// `[[quota]]` blocks. Drop-ins add blocks; a block for the same user, project or
    /// `others` replaces the earlier one.
    #[serde(rename = "quota", skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<Quota>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInvalidPolicy {
    /// Refuse every create until the policy is fixed (fail closed).
    #[default]
    Refuse,
    /// Use the last policy that validated, and say so in the log.
    LastKnownGood,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSection {
    /// The low-level runtime; unset: the first of runc, crun on the search path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Whether mlenv-hook is added to admitted containers' poststop hooks.
    #[serde(skip_serializing_if = "HookSetting::is_off")]
    pub hook: HookSetting,
}

/// `[runtime] hook`: `false` (the default) adds no hook, since every delete through
/// mlenv-runtime ends the container itself and a container deleted past it is found
/// gone by its init process; `true` adds mlenv-hook found beside mlenv-runtime or in
/// /usr/local/bin, /usr/bin; a path adds that binary. The hook is a process runc
/// starts in every delete: 2 to 3 ms of `docker run` (docs/benchmarks.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum HookSetting {
    #[default]
    Off,
    Found,
    At(PathBuf),
}

impl HookSetting {
    pub fn is_off(&self) -> bool {
        *self == HookSetting::Off
    }
}

impl Serialize for HookSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HookSetting::Off => s.serialize_bool(false),
            HookSetting::Found => s.serialize_bool(true),
            HookSetting::At(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for HookSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HookSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or the path of mlenv-hook")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<HookSetting, E> {
                Ok(if v {
                    HookSetting::Found
                } else {
                    HookSetting::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HookSetting, E> {
                if v.is_empty() {
                    return Err(E::custom("an empty path: write true, false, or a path"));
                }
                Ok(HookSetting::At(PathBuf::from(v)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventorySection {
    pub path: PathBuf,
    /// Decisions (and ended containers) older than this many days are pruned;
    /// `false` keeps them all.
    pub retention_days: Switch<u32>,
}

/// Days of decisions kept when the policy does not say.
pub const DEFAULT_RETENTION_DAYS: u32 = 7;

impl Default for InventorySection {
    fn default() -> Self {
        InventorySection {
            path: PathBuf::from(DEFAULT_INVENTORY),
            retention_days: Switch::On(DEFAULT_RETENTION_DAYS),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverLimit {
    /// A request above the maximum is refused.
    #[default]
    Refuse,
    /// A request above the maximum is lowered to it.
    Clamp,
}

/// Resource limits: a container without a limit gets the default; one above the
/// maximum is refused or clamped. A maximum without a default also caps containers
/// that set no limit at all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    pub over_limit: OverLimit,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_memory: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<ByteSize>,
    /// Swap on top of the memory limit (Docker's --memory-swap minus --memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_swap: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_swap: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_cpus: Option<Cpus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<Cpus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_pids: Option<Pids>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pids: Option<Pids>,
}

/// Whether the host can take one more container. Every threshold can be switched off
/// with `false`; the defaults protect a shared server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSection {
    /// What happens when the host probe or the inventory fails.
    pub on_error: OnError,
    /// Refuse while more than this percentage of host memory is in use.
    pub max_memory_percent: Switch<Percent>,
    /// Refuse while less than this much memory is available.
    pub min_available_memory: Switch<ByteSize>,
    /// Refuse while the one-minute load average per usable CPU is above this.
    pub max_load_per_cpu: Switch<Positive>,
    /// Refuse while PSI `some avg10` is above this percentage.
    pub max_psi_cpu: Switch<Percent>,
    pub max_psi_memory: Switch<Percent>,
    pub max_psi_io: Switch<Percent>,
    /// The memory limits of live containers plus this one must fit in
    /// MemTotal x memory_overcommit - reserved_memory.
    pub memory_overcommit: Switch<Positive>,
    pub reserved_memory: ByteSize,
    /// The same for CPU limits against the usable CPUs.
    pub cpu_overcommit: Switch<Positive>,
    pub reserved_cpus: f64,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        AdmissionSection {
            on_error: OnError::Refuse,
            max_memory_percent: Switch::On(Percent(85.0)),
            min_available_memory: Switch::On(ByteSize(4 << 30)),
            max_load_per_cpu: Switch::On(Positive(2.0)),
            max_psi_cpu: Switch::On(Percent(90.0)),
            max_psi_memory: Switch::On(Percent(20.0)),
            max_psi_io: Switch::Off,
            memory_overcommit: Switch::On(Positive(1.0)),
            reserved_memory: ByteSize(2 << 30),
            cpu_overcommit: Switch::On(Positive(1.0)),
            reserved_cpus: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// A failed probe or inventory refuses the container.
    #[default]
    Refuse,
    /// It is admitted without the checks that could not run.
    Admit,
}

/// GPUs: where NVML is, which GPUs count as free, how they are chosen and how the
/// chosen ones reach the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuSection {
    /// libnvidia-ml.so.1 from the loader's search path when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvml_library: Option<PathBuf>,
    /// A GPU busier than this (percent) is not free.
    pub max_utilization: Switch<Percent>,
    /// A GPU with less free memory than this is not free.
    pub min_free_memory: Switch<ByteSize>,
    /// Whether a compute process that mlenv did not place makes a GPU busy.
    pub foreign_processes: ForeignProcesses,
    pub strategy: Strategy,
    /// Docker's `--gpus N` (seen as 0..N-1): choose the best N, or take 0..N-1.
    pub docker_gpus_count: DockerGpusCount,
    /// A request for every GPU of the host.
    pub all: AllGpus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_container: Option<u32>,
    pub inject: Inject,
    /// Where the host's NVIDIA device nodes are (`devices` mode).
    pub device_dir: PathBuf,
    /// NVIDIA's prestart hook (`nvidia` mode adds it when the spec has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvidia_hook: Option<PathBuf>,
    /// Where CDI specs are read (`cdi` mode), in priority order.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// The CDI device kind of NVIDIA GPUs.
    pub cdi_kind: String,
}

impl Default for GpuSection {
    fn default() -> Self {
        GpuSection {
            nvml_library: None,
            max_utilization: Switch::On(Percent(30.0)),
            min_free_memory: Switch::On(ByteSize(1 << 30)),
            foreign_processes: ForeignProcesses::Busy,
            strategy: Strategy::Spread,
            docker_gpus_count: DockerGpusCount::Reselect,
            all: AllGpus::Refuse,
            max_per_container: None,
            inject: Inject::Nvidia,
            device_dir: PathBuf::from("/dev"),
            nvidia_hook: None,
            cdi_spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
            cdi_kind: "nvidia.com/gpu".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForeignProcesses {
    /// A GPU running a compute process that no mlenv lease placed there is busy.
    #[default]
    Busy,
    /// Such processes are ignored (utilization and memory still count).
    Ignore,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The least busy free GPUs: lowest utilization, then most free memory.
    #[default]
    Spread,
    /// The busiest free GPUs, lowest index first on ties: keeps whole GPUs idle for
    /// big jobs.
    Pack,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DockerGpusCount {
    #[default]
    Reselect,
    AsIs,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllGpus {
    /// Refused, with how to ask for a number instead.
    #[default]
    Refuse,
    /// Every GPU free right now (at least one).
    Free,
    /// Left as asked: no selection, no lease, no edit.
    Pass,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Inject {
    /// NVIDIA_VISIBLE_DEVICES = the chosen UUIDs; NVIDIA's hook mounts the driver.
    #[default]
    Nvidia,
    /// The CDI edits of the chosen devices.
    Cdi,
    /// The device nodes and their cgroup rules, in the spec.
    Devices,
}

/// A user, by uid or by name (resolved on this host when the policy loads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserRef {
    Uid(u32),
    Name(String),
}

/// Limits on the sum over live containers of one user, one project, or (`others`)
/// each user that no user block names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub others: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_containers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<Cpus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_gpus: Option<u32>,
    /// The uid `user` names, filled in when the policy loads.
    #[serde(skip)]
    pub uid: Option<u32>,
}

impl Quota {
    /// How the block is named in messages: `user=1000`, `project=vision`, `others`.
    pub fn selector(&self) -> String {
        match (&self.user, &self.project) {
            (Some(UserRef::Uid(u)), _) => format!("user={u}"),
            (Some(UserRef::Name(n)), _) => format!("user={n}"),
            (None, Some(p)) => format!("project={p}"),
            (None, None) => "others".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {key}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{files}: {message}")]
    Invalid { files: String, message: String },
}

/// A policy loaded from its files.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub policy: Policy,
    /// The files read, main first; empty when no main file exists (built-in
    /// defaults).
    pub files: Vec<PathBuf>,
}

/// The main policy file: `MLENV_CONFIG`, else /etc/mlenv/mlenv.toml.
pub fn main_path() -> PathBuf {
    std::env::var_os("MLENV_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MAIN))
}

/// The drop-in files for `main`: `conf.d/*.toml` beside it, in name order.
pub fn dropins(main: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let dir = main.parent().unwrap_or(Path::new("/")).join("conf.d");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PolicyError::Read { path: dir, source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Read {
            path: dir.clone(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<Option<String>, PolicyError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PolicyError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses one file strictly, on its own, so that errors carry its line numbers.
/// Returns its table for merging.
pub fn parse_file(path: &Path, text: &str) -> Result<toml::Table, PolicyError> {
    if let Err(e) = toml::from_str::<Policy>(text) {
        return Err(located(path, text, &e));
    }
    // Cannot fail: the same text just parsed as a Policy.
    toml::from_str::<toml::Table>(text).map_err(|e| located(path, text, &e))
}

/// Turns a toml error into file:line: key: message.
fn located(path: &Path, text: &str, e: &toml::de::Error) -> PolicyError {
    let start = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    let this_line = text.lines().nth(line - 1).unwrap_or("");
    let section = text
        .lines()
        .take(line)
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix('[').map(|r| {
                r.trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
        })
        .last();
    let key = match this_line.split_once('=') {
        Some((k, _)) if !this_line.trim_start().starts_with('[') => {
            let k = k.trim().trim_matches('"');
            match &section {
                Some(s) if !s.is_empty() => format!("{s}.{k}"),
                _ => k.to_string(),
            }
        }
        _ => section.unwrap_or_else(|| "(top level)".to_string()),
    };
    PolicyError::Parse {
        path: path.to_path_buf(),
        line,
        key,
        message: e.message().trim().to_string(),
    }
}

/// Later tables win key by key; nested tables merge; arrays of tables (`[[quota]]`)
/// add up.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (Some(toml::Value::Array(a)), toml::Value::Array(b))
                if b.iter().all(toml::Value::is_table) =>
            {
                a.extend(b)
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Loads and validates the policy from `main` and its drop-ins. A missing main file
/// means built-in defaults (plus any drop-ins).
pub fn load(main: &Path) -> Result<Loaded, PolicyError> {
    let mut files = Vec::new();
    let mut merged = toml::Table::new();
    if let Some(text) = read(main)? {
        merged = parse_file(main, &text)?;
        files.push(main.to_path_buf());
    }
    for path in dropins(main)? {
        if let Some(text) = read(&path)? {
            merge(&mut merged, parse_file(&path, &text)?);
            files.push(path);
        }
    }
    let names = || {
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut policy =
        Policy::deserialize(toml::Value::Table(merged)).map_err(|e| PolicyError::Invalid {
            files: names(),
            message: e.message().trim().to_string(),
        })?;
    policy.validate().map_err(|message| PolicyError::Invalid {
        files: names(),
        message,
    })?;
    Ok(Loaded { policy, files })
}

impl Policy {
    /// A policy from a parsed table (one file's, or merged), not yet validated.
    pub fn deserialize_table(table: toml::Table) -> Result<Policy, PolicyError> {
        Policy::deserialize(toml::Value::Table(table)).map_err(|e| PolicyError::Invalid {
            files: String::new(),
            message: e.message().trim().to_string(),
        })
    }

    /// Checks that span keys (a default above its maximum, quota blocks), resolves
    /// user names in quotas, and keeps the last block of each selector.
    pub fn validate(&mut self) -> Result<(), String> {
        let mut seen: Vec<String> = Vec::new();
        let mut kept: Vec<Quota> = Vec::new();
        for mut q in std::mem::take(&mut self.quotas).into_iter().rev() {
            let selectors = usize::from(q.user.is_some())
                + usize::from(q.project.is_some())
                + usize::from(q.others);
            if selectors != 1 {
                return Err(format!(
                    "[[quota]] {}: give exactly one of user, project or others = true",
                    q.selector()
                ));
            }
            if q.max_containers.is_none()
                && q.max_memory.is_none()
                && q.max_cpus.is_none()
                && q.max_gpus.is_none()
            {
                return Err(format!(
                    "[[quota]] {}: set at least one of max_containers, max_memory, max_cpus, max_gpus",
                    q.selector()
                ));
            }
            q.uid = match &q.user {
                Some(UserRef::Uid(u)) => Some(*u),
                Some(UserRef::Name(n)) => Some(lookup_user(n).ok_or_else(|| {
                    format!("[[quota]] user={n}: no such user on this host; give a uid")
                })?),
                None => None,
            };
            let sel = match q.uid {
                Some(u) => format!("user={u}"),
                None => q.selector(),
            };
            if !seen.contains(&sel) {
                seen.push(sel);
                kept.push(q);
            }
        }
        kept.reverse();
        self.quotas = kept;
        let l = &self.limits;
        fn pair<T: PartialOrd + std::fmt::Display>(
            d: Option<T>,
            m: Option<T>,
            what: &str,
        ) -> Result<(), String> {
            match (d, m) {
                (Some(d), Some(m)) if d > m => Err(format!(
                    "[limits] default_{what} = {d} is above max_{what} = {m}; lower the default or raise the maximum"
                )),
                _ => Ok(()),
            }
        }
        pair(l.default_memory, l.max_memory, "memory")?;
        pair(l.default_swap, l.max_swap, "swap")?;
        pair(l.default_cpus, l.max_cpus, "cpus")?;
        pair(l.default_pids, l.max_pids, "pids")?;
        self.mps.validate(None)?;
        self.user.validate()?;
        self.security.validate()?;
        if self.gpu.max_per_container == Some(0) {
            return Err(
                "[gpu] max_per_container = 0 would refuse every GPU request; leave it out for no limit"
                    .into(),
            );
        }
        if self
            .gpu
            .cdi_kind
            .split_once('/')
            .is_none_or(|(v, c)| v.is_empty() || c.is_empty())
        {
            return Err(format!(
                "[gpu] cdi_kind = {:?}: expected vendor/class, as \"nvidia.com/gpu\"",
                self.gpu.cdi_kind
            ));
        }
        Ok(())
    }

    /// The quota blocks that apply to a container of `uid` in `project`: the user's
    /// own block or `others`, and the project's block.
    pub fn quotas_for(&self, uid: u32, project: Option<&str>) -> Vec<&Quota> {
        let mut out = Vec::new();
        match self.quotas.iter().find(|q| q.uid == Some(uid)) {
            Some(q) => out.push(q),
            None => out.extend(self.quotas.iter().find(|q| q.others)),
        }
        if let Some(p) = project {
            out.extend(self.quotas.iter().find(|q| q.project.as_deref() == Some(p)));
        }
        out
    }

    /// The policy as TOML, as `policy check` shows it and last-known-good keeps it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// A user name's uid: from the C library, else from `getent passwd`. mlenv-runtime is
/// linked statically against musl, whose lookups read /etc/passwd only; getent asks
/// the host's glibc and its NSS modules (LDAP, SSSD), at the cost of a process.
fn lookup_user(name: &str) -> Option<u32> {
    if let Some(u) = nix::unistd::User::from_name(name).ok().flatten() {
        return Some(u.uid.as_raw());
    }
    // Not through the engine's PATH, where it is there.
    let getent = ["/usr/bin/getent", "/bin/getent"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("getent");
    let out = std::process::Command::new(getent)
        .args(["passwd", "--", name])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    passwd_uid(&String::from_utf8_lossy(&out.stdout), name)
}

/// The uid in what `getent passwd NAME` printed. A numeric name is also looked up as a
/// uid, so the line must be that name's; any other name gives one line, whose name
/// may differ in case (SSSD, AD with case_sensitive = false), as glibc's own lookup
/// accepts.
fn passwd_uid(text: &str, name: &str) -> Option<u32> {
    let numeric = name.bytes().all(|b| b.is_ascii_digit());
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let user = f.next()?;
        (!numeric || user == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// What can be read from policy files that may not validate: the keys a passthrough
/// call or a fail-closed create needs. Every error is ignored; a file that does not
/// parse is skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lenient {
    pub runtime_path: Option<PathBuf>,
    pub inventory_path: Option<PathBuf>,
    /// `[inventory] retention_days`: None when no file sets it.
    pub retention_days: Option<Switch<u32>>,
    pub on_invalid_policy: Option<OnInvalidPolicy>,
}

impl Lenient {
    /// Days of decisions kept: what the files say, or the default.
    pub fn retention(&self) -> Option<u32> {
        self.retention_days
            .unwrap_or(Switch::On(DEFAULT_RETENTION_DAYS))
            .get()
    }

    /// The inventory the files name, or the default. For a policy that validates,
    /// the same path [`load`] gives: the last file that sets it wins either way.
    pub fn inventory(&self) -> PathBuf {
        self.inventory_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_INVENTORY))
    }
}

pub fn lenient(main: &Path) -> Lenient {
    let mut out = Lenient::default();
    let mut files = vec![main.to_path_buf()];
    files.extend(dropins(main).unwrap_or_default());
    for path in files {
        // An untrusted file could name any binary as the runtime: skipped here, and
        // refused on create.
        if crate::trust::check_policy(&path, &[], &crate::hostfs::RealFiles).is_err() {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Ok(table) = toml::from_str::<toml::Table>(&text) else {
            continue;
        };
        let get = |section: &str, key: &str| {
            table
                .get(section)
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
        };
        if let Some(p) = get("runtime", "path") {
            out.runtime_path = Some(p);
        }
        if let Some(p) = get("inventory", "path") {
            out.inventory_path = Some(p);
        }
        match table.get("inventory").and_then(|s| s.get("retention_days")) {
            Some(toml::Value::Integer(n)) if *n > 0 => {
                out.retention_days = u32::try_from(*n).ok().map(Switch::On)
            }
            Some(toml::Value::Boolean(false)) => out.retention_days = Some(Switch::Off),
            _ => {}
        }
        if let Some(v) = table.get("on_invalid_policy").and_then(|v| v.as_str()) {
            out.on_invalid_policy = match v {
                "last-known-good" => Some(OnInvalidPolicy::LastKnownGood),
                "refuse" => Some(OnInvalidPolicy::Refuse),
                _ => out.on_invalid_policy,
            };
        }
    }
    out
}

/// The last-known-good copy of the policy whose main file is `main`.
pub fn last_known_good_path(main: &Path) -> PathBuf {
    let mut name = main.as_os_str().to_owned();
    name.push(LAST_KNOWN_GOOD);
    PathBuf::from(name)
}

/// The policy to use instead of an invalid one at `main`: `Ok(None)` when the policy
/// does not say to fall back, the last-known-good copy when it does. What the files
/// say is read leniently; when they say nothing readable (the main file is garbage),
/// the copy's own `on_invalid_policy` decides.
pub fn last_known_good_fallback(main: &Path) -> Result<Option<Loaded>, PolicyError> {
    let configured = lenient(main).on_invalid_policy;
    if configured == Some(OnInvalidPolicy::Refuse) {
        return Ok(None);
    }
    match load_last_known_good(main) {
        Ok(l)
            if configured.is_some()
                || l.policy.on_invalid_policy == OnInvalidPolicy::LastKnownGood =>
        {
            Ok(Some(l))
        }
        Ok(_) => Ok(None),
        Err(e) if configured.is_some() => Err(e),
        Err(_) => Ok(None),
    }
}

/// Keeps `policy`, read from `main`, as the last known good one, if it differs from
/// what is kept. Written atomically; failures are returned for the caller to log,
/// never fatal.
pub fn save_last_known_good(policy: &Policy, main: &Path) -> io::Result<()> {
    let path = last_known_good_path(main);
    let text = policy.to_toml();
    if fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600)
}

/// Reads the last-known-good copy of the policy at `main`.
pub fn load_last_known_good(main: &Path) -> Result<Loaded, PolicyError> {
    let path = last_known_good_path(main);
    let text = match read(&path)? {
        Some(t) => t,
        None => {
            return Err(PolicyError::Invalid {
                files: path.display().to_string(),
                message: "no last-known-good policy is kept yet".into(),
            })
        }
    };
    let table = parse_file(&path, &text)?;
    let policy =
        Policy::deserialize(toml::Value::Table(table)).map_err(|e| PolicyError::Invalid {
            files: path.display().to_string(),
            message: e.message().to_string(),
        })?;
    Ok(Loaded {
        policy,
        files: vec![path],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn user_names_resolve_through_libc_or_getent() {
        assert_eq!(
            passwd_uid("alice:x:1000:1000::/home/alice:/bin/sh\n", "alice"),
            Some(1000)
        );
        // The canonical name of a case-insensitive directory.
        assert_eq!(
            passwd_uid("alice:x:1000:1000::/home/alice:/bin/sh\n", "Alice"),
            Some(1000)
        );
        // A numeric name: the line of that name, not the user of that uid.
        assert_eq!(passwd_uid("root:x:0:0:root:/root:/bin/bash\n", "0"), None);
        assert_eq!(passwd_uid("0:x:1500:1500::/:/bin/sh\n", "0"), Some(1500));
        assert_eq!(passwd_uid("", "alice"), None);
        assert_eq!(passwd_uid("bob:x:notanumber:0::/:/bin/sh\n", "bob"), None);
        assert_eq!(lookup_user("root"), Some(0));
        assert_eq!(lookup_user("mlenv-no-such-user"), None);
    }

    fn setup(main: Option<&str>, dropins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let main_path = dir.path().join("mlenv.toml");
        if let Some(m) = main {
            fs::write(&main_path, m).unwrap();
        }
        if !dropins.is_empty() {
            fs::create_dir(dir.path().join("conf.d")).unwrap();
        }
        for (name, text) in dropins {
            fs::write(dir.path().join("conf.d").join(name), text).unwrap();
        }
        (dir, main_path)
    }

    #[test]
    fn hook_setting_reads_and_writes_back() {
        type Row = (&'static str, Result<HookSetting, &'static str>);
        let rows: Vec<Row> = vec![
            ("", Ok(HookSetting::Off)),
            ("hook = false", Ok(HookSetting::Off)),
            ("hook = true", Ok(HookSetting::Found)),
            (
                "hook = \"/opt/mlenv/bin/mlenv-hook\"",
                Ok(HookSetting::At(PathBuf::from("/opt/mlenv/bin/mlenv-hook"))),
            ),
            ("hook = \"\"", Err("an empty path")),
            ("hook = 1", Err("true, false, or the path of mlenv-hook")),
        ];
        for (text, want) in rows {
            let got = toml::from_str::<RuntimeSection>(text);
            match want {
                Ok(w) => {
                    let got = got.unwrap();
                    assert_eq!(got.hook, w, "{text}");
                    let again: RuntimeSection =
                        toml::from_str(&toml::to_string(&got).unwrap()).unwrap();
                    assert_eq!(again, got, "{text} written back");
                }
                Err(w) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(w), "{text}: {e}");
                }
            }
        }
    }

    /// Every key the code accepts is documented in docs/policy.md, under its table.
    #[test]
    fn reference_documents_every_key() {
        let doc = include_str!("../../docs/policy.md");
        let mut full = Policy::default();
        full.runtime.path = Some(PathBuf::from("/x"));
        full.runtime.hook = HookSetting::Found;
        full.limits.default_memory = Some(ByteSize(1));
        full.limits.max_memory = Some(ByteSize(1));
        full.limits.default_swap = Some(ByteSize(1));
        full.limits.max_swap = Some(ByteSize(1));
        full.limits.default_cpus = Some(Cpus(1.0));
        full.limits.max_cpus = Some(Cpus(1.0));
        full.limits.default_pids = Some(Pids(1));
        full.limits.max_pids = Some(Pids(1));
        full.gpu.nvml_library = Some(PathBuf::from("/x"));
        full.gpu.max_per_container = Some(1);
        full.gpu.nvidia_hook = Some(PathBuf::from("/x"));
        full.mps.max_memory = Some(ByteSize(1));
        full.quotas.push(Quota {
            project: Some("p".into()),
            max_containers: Some(1),
            max_memory: Some(ByteSize(1)),
            max_cpus: Some(Cpus(1.0)),
            max_gpus: Some(1),
            ..Quota::default()
        });
        full.quotas.push(Quota {
            user: Some(UserRef::Uid(1)),
            others: true,
            ..Quota::default()
        });
        let table: toml::Table = toml::from_str(&full.to_toml()).unwrap();
        for (key, value) in &table {
            let (section, heading) = match value {
                toml::Value::Table(t) => (Some(t.clone()), format!("## `[{key}]`")),
                toml::Value::Array(a) => {
                    let mut merged = toml::Table::new();
                    for t in a.iter().filter_map(|v| v.as_table()) {
                        merged.extend(t.clone());
                    }
                    (Some(merged), format!("## `[[{key}]]`"))
                }
                _ => (None, String::new()),
            };
            match section {
                Some(section) => {
                    let start = doc
                        .find(&heading)
                        .unwrap_or_else(|| panic!("no {heading} in docs/policy.md"));
                    let body = &doc[start + heading.len()..];
                    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
                    for k in section.keys() {
                        assert!(
                            body.contains(&format!("| `{k}` |")),
                            "[{key}] {k} not documented"
                        );
                    }
                }
                None => assert!(
                    doc.contains(&format!("| `{key}` |")),
                    "{key} not documented"
                ),
            }
        }
    }

    /// Every refusal that names a policy key (`([limits] max_memory)`) is in
    /// docs/troubleshooting.md: the keys in the code's messages, outside tests.
    #[test]
    fn troubleshooting_names_every_policy_key_the_messages_name() {
        let doc = include_str!("../../docs/troubleshooting.md");
        let sections: Vec<String> = toml::from_str::<toml::Table>(&Policy::default().to_toml())
            .unwrap()
            .keys()
            .cloned()
            .chain(["quota".to_string()])
            .collect();
        let mut missing = Vec::new();
        let mut seen = 0;
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            // In string literals: after a quote on the line, not in comments.
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                let Some((_, lit)) = line.split_once('"') else {
                    continue;
                };
                for (i, _) in lit.match_indices('[') {
                    let rest = &lit[i + 1..];
                    let Some((section, after)) = rest.split_once("] ") else {
                        continue;
                    };
                    let key: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !sections.iter().any(|s| s == section) || key.is_empty() {
                        continue;
                    }
                    seen += 1;
                    let tag = format!("[{section}] {key}");
                    if !doc.contains(&tag) {
                        missing.push(format!("{tag} ({})", p.display()));
                    }
                }
            }
        }
        assert!(seen > 30, "only {seen} keys found: the scan is broken");
        assert!(
            missing.is_empty(),
            "not in docs/troubleshooting.md: {missing:?}"
        );
    }

    /// The shared-server profile validates as a drop-in over the shipped policy.
    #[test]
    fn shared_server_profile_validates_as_a_dropin() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../config/mlenv.toml"),
            &main,
        )
        .unwrap();
        fs::create_dir(dir.path().join("conf.d")).unwrap();
        fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../config/profiles/shared-server.toml"
            ),
            dir.path().join("conf.d/50-shared-server.toml"),
        )
        .unwrap();
        let l = load(&main).unwrap();
        assert_eq!(l.files.len(), 2);
        assert_eq!(l.policy.user.mapping, crate::user::Mapping::WorkdirOwner);
        assert_eq!(l.policy.quotas.len(), 1);
        assert_eq!(l.policy.limits.max_memory, Some(ByteSize(128 << 30)));
    }

    #[test]
    fn shipped_policy_validates() {
        let main = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/mlenv.toml"));
        let l = load(main).unwrap();
        assert_eq!(l.policy.limits.default_memory, Some(ByteSize(16 << 30)));
        assert_eq!(l.policy.on_invalid_policy, OnInvalidPolicy::Refuse);
        assert_eq!(
            l.policy.admission,
            AdmissionSection::default(),
            "shipped = built-in admission defaults"
        );
        assert_eq!(
            l.policy.gpu,
            GpuSection::default(),
            "shipped = built-in GPU defaults"
        );
        assert_eq!(l.policy.user, crate::user::UserSection::default());
        assert_eq!(
            l.policy.security,
            crate::security::SecuritySection::default()
        );
    }

    #[test]
    fn missing_main_gives_defaults() {
        let (_d, main) = setup(None, &[]);
        let l = load(&main).unwrap();
        assert_eq!(l.policy, Policy::default());
        assert!(l.files.is_empty());
        assert_eq!(l.policy.inventory.path, PathBuf::from(DEFAULT_INVENTORY));
    }

    #[test]
    fn full_policy_parses() {
        let (_d, main) = setup(
            Some(
                r#"
on_invalid_policy = "last-known-good"
[runtime]
path = "/usr/bin/crun"
[inventory]
path = "/tmp/x.db"
[limits]
over_limit = "clamp"
default_memory = "8G"
max_memory = "64G"
default_swap = 0
max_swap = "1G"
default_cpus = 2
max_cpus = 15.5
default_pids = 4096
max_pids = 32768
[gpu]
nvml_library = "/opt/nvidia/libnvidia-ml.so.1"
max_utilization = false
min_free_memory = "20G"
foreign_processes = "ignore"
strategy = "pack"
docker_gpus_count = "as-is"
all = "free"
max_per_container = 4
inject = "devices"
device_dir = "/tmp/dev"
cdi_spec_dirs = ["/etc/cdi"]
"#,
            ),
            &[],
        );
        let p = load(&main).unwrap().policy;
        let g = &p.gpu;
        assert_eq!(g.max_utilization, Switch::Off);
        assert_eq!(g.min_free_memory, Switch::On(ByteSize(20 << 30)));
        assert_eq!(
            (g.foreign_processes, g.strategy, g.docker_gpus_count, g.all),
            (
                ForeignProcesses::Ignore,
                Strategy::Pack,
                DockerGpusCount::AsIs,
                AllGpus::Free
            )
        );
        assert_eq!((g.max_per_container, g.inject), (Some(4), Inject::Devices));
        assert_eq!(g.cdi_kind, "nvidia.com/gpu");
        assert_eq!(p.on_invalid_policy, OnInvalidPolicy::LastKnownGood);
        assert_eq!(p.runtime.path, Some(PathBuf::from("/usr/bin/crun")));
        assert_eq!(p.limits.over_limit, OverLimit::Clamp);
        assert_eq!(p.limits.default_memory, Some(ByteSize(8 << 30)));
        assert_eq!(p.limits.default_swap, Some(ByteSize(0)));
        assert_eq!(p.limits.max_cpus, Some(Cpus(15.5)));
        assert_eq!(p.limits.default_cpus, Some(Cpus(2.0)));
        assert_eq!(p.limits.max_pids, Some(Pids(32768)));
        // What is shown and kept reads back to the same policy.
        let again: Policy = toml::from_str(&p.to_toml()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn dropins_apply_in_name_order_later_wins() {
        let (_d, main) = setup(
            Some("[limits]\ndefault_memory = \"1G\"\nmax_memory = \"8G\"\n"),
            &[
                ("20-b.toml", "[limits]\ndefault_memory = \"3G\"\n"),
                (
                    "10-a.toml",
                    "[limits]\ndefault_memory = \"2G\"\nmax_pids = 100\n",
                ),
                ("30-ignored.conf", "this is not toml"),
            ],
        );
        let l = load(&main).unwrap();
        assert_eq!(l.policy.limits.default_memory, Some(ByteSize(3 << 30)));
        assert_eq!(l.policy.limits.max_memory, Some(ByteSize(8 << 30)));
        assert_eq!(l.policy.limits.max_pids, Some(Pids(100)));
        assert_eq!(l.files.len(), 3);
        assert!(l.files[1].ends_with("10-a.toml"));
    }

    fn parse_error(text: &str) -> (usize, String, String) {
        let (_d, main) = setup(Some(text), &[]);
        match load(&main).unwrap_err() {
            PolicyError::Parse {
                path,
                line,
                key,
                message,
            } => {
                assert_eq!(path, main);
                (line, key, message)
            }
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn errors_name_line_and_key() {
        let (line, key, msg) = parse_error("[limits]\nmax_memory = \"8G\"\nmemroy = \"1G\"\n");
        assert_eq!((line, key.as_str()), (3, "limits.memroy"));
        assert!(msg.contains("unknown field"), "{msg}");

        let (line, key, msg) = parse_error("# c\n[limits]\n\ndefault_memory = \"16Q\"\n");
        assert_eq!((line, key.as_str()), (4, "limits.default_memory"));
        assert!(msg.contains("invalid size \"16Q\""), "{msg}");

        let (line, key, msg) = parse_error("[limits]\nmax_cpus = 0\n");
        assert_eq!((line, key.as_str()), (2, "limits.max_cpus"));
        assert!(msg.contains("must be above 0"), "{msg}");

        let (line, key, msg) = parse_error("[limits]\nmax_pids = -5\n");
        assert_eq!((line, key.as_str()), (2, "limits.max_pids"));
        assert!(msg.contains("at least 1"), "{msg}");

        let (line, key, msg) = parse_error("[limits]\nover_limit = \"maybe\"\n");
        assert_eq!((line, key.as_str()), (2, "limits.over_limit"));
        assert!(msg.contains("unknown variant"), "{msg}");

        let (line, key, _) = parse_error("[limitz]\nx = 1\n");
        assert_eq!((line, key.as_str()), (1, "limitz"));

        let (line, _, msg) = parse_error("[limits\n");
        assert_eq!(line, 1);
        assert!(!msg.is_empty());
    }

    #[test]
    fn error_in_dropin_names_the_dropin() {
        let (_d, main) = setup(
            Some(""),
            &[("50-x.toml", "[limits]\nmax_memory = \"lots\"\n")],
        );
        let err = load(&main).unwrap_err().to_string();
        assert!(
            err.contains("conf.d/50-x.toml:2: limits.max_memory: invalid size"),
            "{err}"
        );
    }

    #[test]
    fn default_above_max_across_files() {
        let (_d, main) = setup(
            Some("[limits]\nmax_memory = \"4G\"\n"),
            &[("10.toml", "[limits]\ndefault_memory = \"8G\"\n")],
        );
        let err = load(&main).unwrap_err().to_string();
        assert!(
            err.contains("default_memory = 8G is above max_memory = 4G"),
            "{err}"
        );
        assert!(err.contains("mlenv.toml + "), "{err}");
    }

    #[test]
    fn lenient_reads_what_it_can() {
        let (_d, main) = setup(
            Some("on_invalid_policy = \"last-known-good\"\n[runtime]\npath = \"/x/runc\"\n[limits]\nbogus = 1\n"),
            &[
                ("10.toml", "[inventory]\npath = \"/d/m.db\"\n"),
                ("20.toml", "not = [ toml"),
            ],
        );
        assert!(load(&main).is_err());
        let l = lenient(&main);
        assert_eq!(l.runtime_path, Some(PathBuf::from("/x/runc")));
        assert_eq!(l.inventory_path, Some(PathBuf::from("/d/m.db")));
        assert_eq!(l.inventory(), PathBuf::from("/d/m.db"));
        assert_eq!(
            Lenient::default().inventory(),
            PathBuf::from(DEFAULT_INVENTORY)
        );
        assert_eq!(l.on_invalid_policy, Some(OnInvalidPolicy::LastKnownGood));
    }

    #[test]
    fn last_known_good_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        let mut p = Policy::default();
        p.inventory.path = dir.path().join("inv/mlenv.db");
        p.limits.max_memory = Some(ByteSize(1 << 30));
        save_last_known_good(&p, &main).unwrap();
        assert!(dir.path().join("mlenv.toml.last-known-good").is_file());
        let l = load_last_known_good(&main).unwrap();
        assert_eq!(l.policy, p);
        // Unchanged: no rewrite (same modification time is not guaranteed, content is).
        save_last_known_good(&p, &main).unwrap();
        let err = load_last_known_good(&dir.path().join("none.toml")).unwrap_err();
        assert!(
            err.to_string().contains("no last-known-good policy"),
            "{err}"
        );
    }

    #[test]
    fn the_fallback_is_found_when_the_main_file_is_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        let mut p = Policy::default();
        p.inventory.path = dir.path().join("elsewhere/mlenv.db");
        // Garbage, and a copy that does not say to fall back: refuse.
        fs::write(&main, "[gpu\n]]] garbage").unwrap();
        save_last_known_good(&p, &main).unwrap();
        assert!(last_known_good_fallback(&main).unwrap().is_none());
        // A copy that says to fall back: used, inventory path and all.
        p.on_invalid_policy = OnInvalidPolicy::LastKnownGood;
        save_last_known_good(&p, &main).unwrap();
        let l = last_known_good_fallback(&main).unwrap().unwrap();
        assert_eq!(l.policy.inventory.path, p.inventory.path);
        // What the files say wins when it can be read.
        fs::write(
            &main,
            "on_invalid_policy = \"refuse\"\n[limits]\nbogus = 1\n",
        )
        .unwrap();
        assert!(last_known_good_fallback(&main).unwrap().is_none());
        // Asked for, but none kept: an error to show.
        let other = dir.path().join("other.toml");
        fs::write(
            &other,
            "on_invalid_policy = \"last-known-good\"\n[limits]\nbogus = 1\n",
        )
        .unwrap();
        assert!(last_known_good_fallback(&other).is_err());
    }
}
