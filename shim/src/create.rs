//! What `mlenv-runtime create` does before handing over: load the policy, run the
//! edits on config.json, decide, record, and say which runtime to exec.

use crate::admission::{self, Check, Kind, Request};
use crate::argv::Invocation;
use crate::clock::Clock;
use crate::edits::{self, EditLog};
use crate::gpu::inject::{self, Prepared};
use crate::gpu::probe::Reading;
use crate::gpu::request::GpuRequest;
use crate::gpu::select::{self, Selection};
use crate::gpu::GpuInfo;
use crate::host::Host;
use crate::inventory::{Decision, Inventory, InventoryError, Outcome};
use crate::lowlevel::{self, LowLevelError};
use crate::policy::{self, Loaded, OnError, PolicyError};
use crate::runclog::RuncLog;
use crate::spec::{Spec, SpecError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("policy invalid: {0}; fix it and check with `mlenv policy check`")]
    Policy(PolicyError),
    #[error("policy invalid: {error}; and no last-known-good policy to fall back on: {fallback}; fix the policy and check with `mlenv policy check`")]
    NoFallback {
        error: Box<PolicyError>,
        fallback: Box<PolicyError>,
    },
    /// The policy or inventory is not trusted: [`decide`] turns it into a refusal.
    #[error(transparent)]
    Untrusted(#[from] crate::trust::TrustError),
    #[error("no container id in the {0} command")]
    NoId(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    LowLevel(#[from] LowLevelError),
}

/// The outcome of a create.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Exec this runtime with the original argv.
    Admitted { runtime: PathBuf },
    /// Refused: the reason, one clause per failed check.
    Refused(String),
}

/// The policy in force: the files, or the last known good one when the files do not
/// validate and the policy says to fall back (said in the log as a warning).
pub fn policy_in_force(
    main: &Path,
    log: &mut RuncLog,
    now_ms: i64,
) -> Result<(Loaded, KeepGood), CreateError> {
    // A policy someone else can write is no policy: refuse rather than fall back.
    let files = crate::hostfs::RealFiles;
    crate::trust::check_policy(main, &policy::dropins(main).unwrap_or_default(), &files)?;
    let (loaded, keep) = load_policy(main, log, now_ms)?;
    crate::trust::check_inventory(&loaded.policy.inventory.path, &files)?;
    Ok((loaded, keep))
}

/// Whether the policy in force was read from the files, and is to be kept as the last
/// known good one. The caller does it when it has work under way: comparing with
/// the kept copy serializes the policy, 0.01 to 0.04 ms of a create that the
/// inventory's opening hides (docs/benchmarks.md).
#[must_use = "keep the policy read as the last known good one"]
pub struct KeepGood(bool);

impl KeepGood {
    /// Best effort: a read-only /etc must not block creates.
    pub fn keep(self, policy: &policy::Policy, main: &Path) {
        if self.0 {
            let _ = policy::save_last_known_good(policy, main);
        }
    }
}

fn load_policy(
    main: &Path,
    log: &mut RuncLog,
    now_ms: i64,
) -> Result<(Loaded, KeepGood), CreateError> {
    match policy::load(main) {
        Ok(loaded) => Ok((loaded, KeepGood(true))),
        Err(error) => match policy::last_known_good_fallback(main) {
            Ok(None) => Err(CreateError::Policy(error)),
            Ok(Some(lkg)) => {
                log.warn(
                    &format!(
                        "mlenv: policy invalid: {error}; using the last known good policy {}",
                        lkg.files[0].display()
                    ),
                    now_ms,
                );
                Ok((lkg, KeepGood(false)))
            }
            Err(fallback) => Err(CreateError::NoFallback {
                error: Box::new(error),
                fallback: Box::new(fallback),
            }),
        },
    }
}

/// Who decides: the runtime wrapper, which can still rewrite config.json, or
/// mlenv-hook alone (podman's or CRI-O's hooks directory), called once the container
/// exists, which can only admit or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Runtime,
    /// The container's init process (pid, start time), from the OCI state.
    Hook {
        init: (u32, u64),
    },
}

/// After the runtime's `create` returned 0: the container's init process, from the
/// pid file the engine asked for, recorded with its start time so that liveness is
/// exact. Done here rather than by a `createRuntime` hook, which costs runc a process
/// on every create (docs/benchmarks.md). Best effort: the container exists either way.
pub fn record_init(
    inventory: &mut Inventory,
    container_id: &str,
    pid_file: &Path,
    host: &dyn Host,
) -> Result<(), String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read the pid file {}: {e}", pid_file.display()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("pid file {} holds {text:?}, not a pid", pid_file.display()))?;
    let start = host
        .process_start(pid)
        .ok_or_else(|| format!("init process {pid} is already gone"))?;
    inventory
        .started(container_id, (pid, start))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Runs a create up to the hand-over: policy, edits, admission, record. Every decision
/// that gets as far as a container id is recorded, errors included. An admitted
/// container comes with the inventory still open (runtime mode; `None` in hook mode):
/// for [`record_init`] once the runtime has created it, where liveness would not find
/// the runtime's state ([`crate::liveness::finds_state_of`]); a wrapper that execs the
/// runtime next need not close it. In hook mode nothing is
/// written to the bundle: what the policy would change (a default or clamped limit, a
/// user mapping, GPUs chosen by count) cannot happen any more and is refused, saying
/// so.
pub fn decide(
    mode: Mode,
    inv: &Invocation,
    cwd: &Path,
    main: &Path,
    clock: &dyn Clock,
    host: &dyn Host,
    log: &mut RuncLog,
) -> Result<(Verdict, Option<Inventory>), CreateError> {
    let now = clock.now_ms();
    // SQLite reads the inventory's schema and WAL while the spec is edited and the
    // host read, on a thread started while the policy is read (docs/benchmarks.md).
    let opener = Inventory::open_in_background();
    let (mut loaded, keep) = match policy_in_force(main, log, now) {
        Err(CreateError::Untrusted(e)) => return Ok((Verdict::Refused(e.to_string()), None)),
        other => other?,
    };
    let runtime = match mode {
        Mode::Runtime => lowlevel::locate(loaded.policy.runtime.path.as_deref())?,
        Mode::Hook { .. } => PathBuf::new(),
    };
    let id = inv
        .container_id
        .clone()
        .ok_or_else(|| CreateError::NoId(inv.subcommand.clone().unwrap_or_default()))?;
    let bundle = inv.bundle_dir(cwd);
    let opening = opener.open(&loaded.policy.inventory.path);
    keep.keep(&loaded.policy, main);
    if mode != Mode::Runtime {
        // Defaults cannot be applied and clamps cannot lower anything from a hook.
        let l = &mut loaded.policy.limits;
        (
            l.default_memory,
            l.default_swap,
            l.default_cpus,
            l.default_pids,
        ) = (None, None, None, None);
        l.over_limit = crate::policy::OverLimit::Refuse;
    }
    let policy = &loaded.policy;

    let mut decision = Decision::new(now, &id, &bundle);
    decision.root = inv.root_text();
    // A helper that reads the GPUs (mlenv-nvml) runs while the spec is edited and the
    // host read (docs/benchmarks.md).
    let mut early = None;
    let edited = Spec::load(&bundle).and_then(|spec| {
        early = Gpus::start_reading(&spec, policy, host);
        edit(spec, policy, &mut decision)
    });
    let (spec, mut edits) = match edited {
        Ok(done) => done,
        Err(e) => {
            decision.outcome = Outcome::Error;
            decision.reason = e.to_string();
            decision.detail = serde_json::json!({ "subcommand": inv.subcommand });
            // The error is what the user must see; a failed record must not hide it.
            if let Ok(mut inventory) = opening.wait() {
                let _ = inventory.record(&decision);
            }
            return Err(e.into());
        }
    };

    if mode != Mode::Runtime && edits.changed {
        edits.refusals.push(format!(
            "mlenv-hook cannot change a container that exists: {}; ask for it in the run command, or register mlenv-runtime with the engine",
            edits.actions.join("; ")
        ));
    }

    // The host, once, before the transaction: its checks do not depend on the
    // inventory, and the write lock is not held while /proc is read.
    let a = &policy.admission;
    let mut notes = Vec::new();
    let probe = host.probe();
    let host_checks = match &probe {
        Ok(h) => admission::host_checks(a, h),
        Err(e) => match a.on_error {
            OnError::Refuse => vec![Check {
                kind: Kind::Host,
                passed: false,
                text: format!("cannot check the host: {e} ([admission] on_error = \"refuse\")"),
            }],
            OnError::Admit => {
                notes.push(format!(
                    "host not checked: {e} ([admission] on_error = \"admit\")"
                ));
                Vec::new()
            }
        },
    };
    let mut gpus = Gpus::read(&spec, policy, mode, host, early, &mut notes);
    let mut request = Request {
        uid: decision.uid,
        project: decision.project.clone(),
        memory: edits.effective.memory,
        cpus: edits.effective.cpus,
        gpus: 0,
    };
    // The spec with the granted GPUs injected, made in the transaction and used only
    // once the decision that leases them is committed.
    let mut injected: Option<Spec> = None;
    let track = match mode {
        Mode::Runtime => crate::inventory::Track {
            creator: host
                .process_start(std::process::id())
                .map(|start| (std::process::id(), start)),
            init: None,
        },
        Mode::Hook { init } => crate::inventory::Track {
            creator: None,
            init: Some(init),
        },
    };

    // A corrupt inventory is moved aside and the decision made again on a new one,
    // once; said in the decision and the log.
    let mut opened = opening.wait();
    let mut recovered = false;
    let recorded = loop {
        let mut inventory = match opened {
            Ok(i) => i,
            Err(e) => break Err(e),
        };
        if let Some(msg) = inventory.set_aside_warning() {
            log.warn(&format!("mlenv: warning: {msg}"), now);
            notes.push(msg);
        }
        let admitted = inventory.admit(&mut decision, track, host, |usage, d| {
            // Stamped under the write lock: a container ended before this decision
            // is committed before it, so lease intervals never overlap in the record.
            d.time_ms = clock.now_ms();
            let mut checks = host_checks.clone();
            let mut gpu_actions = Vec::new();
            injected = None;
            let selection = gpus.select(&usage.leases, policy);
            let mut gpu_refusals: Vec<String> = gpus.refusals.clone();
            if let Some(s) = &selection {
                request.gpus = s.asked;
                match &s.refusal {
                    Some(r) => gpu_refusals.push(r.clone()),
                    // The engine put the GPUs it was asked for in place: lease them.
                    None if mode != Mode::Runtime => match &gpus.request {
                        GpuRequest::Devices { .. } => match share_in_place(&spec, &s.grant, policy) {
                            None => {
                                gpu_actions = vec![leased(&s.grant)];
                                injected = Some(spec.clone());
                            }
                            Some(refusal) => gpu_refusals.push(refusal),
                        },
                        other => gpu_refusals.push(format!(
                            "mlenv-hook cannot choose GPUs for a container that exists ({other} asked); name them (NVIDIA_VISIBLE_DEVICES=1), or register mlenv-runtime with the engine"
                        )),
                    },
                    None => match gpus.inject(&spec, s, policy) {
                        Ok((done, actions)) => {
                            gpu_actions = actions;
                            injected = Some(done);
                        }
                        Err(e) => gpu_refusals.push(e.to_string()),
                    },
                }
            }
            d.leases = match (&selection, &injected) {
                (Some(s), Some(_)) => s.grant.clone(),
                _ => Vec::new(),
            };
            if let Ok(h) = &probe {
                checks.extend(admission::reservation_checks(a, h, &usage.all, &request));
            }
            checks.extend(admission::quota_checks(policy, usage, &request));
            let failed: Vec<&str> = edits
                .refusals
                .iter()
                .chain(&gpu_refusals)
                .map(String::as_str)
                .chain(checks.iter().filter(|c| !c.passed).map(|c| c.text.as_str()))
                .collect();
            if failed.is_empty() {
                d.outcome = Outcome::Admitted;
                let said: Vec<&str> = edits
                    .actions
                    .iter()
                    .chain(&gpu_actions)
                    .chain(&notes)
                    .map(String::as_str)
                    .collect();
                d.reason = if said.is_empty() {
                    "admitted".into()
                } else {
                    format!("admitted: {}", said.join("; "))
                };
            } else {
                d.outcome = Outcome::Refused;
                d.reason = failed.join("; ");
                d.leases.clear();
            }
            d.detail = serde_json::json!({
                "subcommand": inv.subcommand,
                "runtime": runtime,
                "policy_files": loaded.files,
                "actions": edits.actions.iter().chain(&gpu_actions).collect::<Vec<_>>(),
                "refusals": edits.refusals.iter().chain(&gpu_refusals).collect::<Vec<_>>(),
                "checks": checks,
                "notes": notes,
                "host": probe.as_ref().ok(),
                "usage": usage,
                "gpu_request": (gpus.request != GpuRequest::None).then(|| gpus.request.to_string()),
                "gpus": selection.as_ref().map(|s| &s.gpus),
            });
            // Capacity refusals are worth a second look once dead containers are
            // dropped; limits and host thresholds are not.
            checks.iter().any(|c| !c.passed && c.kind != Kind::Host)
                || selection.as_ref().is_some_and(|s| s.refusal.is_some())
        });
        match admitted {
            Ok(_) => break Ok(inventory),
            Err(e) if !recovered && e.is_corrupt() => {
                recovered = true;
                opened = inventory.recover(e);
            }
            Err(e) => break Err(e),
        }
    };
    let mut inventory = match recorded {
        Ok(inventory) => inventory,
        Err(e) => {
            let clean = edits.refusals.is_empty() && host_checks.iter().all(|c| c.passed);
            if a.on_error == OnError::Admit && clean {
                let msg = format!(
                    "mlenv: warning: admitted without quotas or reservations and not recorded: {e} ([admission] on_error = \"admit\")"
                );
                log.warn(&msg, now);
                keep_unrecorded(&policy.inventory.path, &id, &msg, now);
                if edits.changed {
                    spec.save()?;
                }
                return Ok((Verdict::Admitted { runtime }, None));
            }
            return Err(e.into());
        }
    };
    if decision.outcome != Outcome::Admitted {
        return Ok((Verdict::Refused(decision.reason), None));
    }
    let mut changed = edits.changed || injected.is_some();
    let mut spec = injected.unwrap_or(spec);
    if mode != Mode::Runtime {
        return Ok((Verdict::Admitted { runtime }, None));
    }
    let hook = match &policy.runtime.hook {
        policy::HookSetting::Off => None,
        policy::HookSetting::Found => crate::lifecycle::locate(),
        policy::HookSetting::At(p) => Some(p.clone()),
    };
    if let Some(hook) = hook {
        let main = cwd.join(main);
        let config = (main != Path::new(policy::DEFAULT_MAIN)).then_some(main.as_path());
        changed |= crate::lifecycle::inject(&mut spec, &hook, config)?;
    }
    if changed {
        if let Err(e) = spec.save() {
            let _ = inventory.end(
                &id,
                decision.root.as_deref(),
                now,
                "config.json not written",
            );
            return Err(e.into());
        }
    }
    Ok((Verdict::Admitted { runtime }, Some(inventory)))
}

/// The GPU side of a create: the request, and for a request that needs selection the
/// GPUs as NVML sees them and what injection needs. Read once, before the
/// transaction.
struct Gpus {
    request: GpuRequest,
    /// Set when GPUs are to be selected.
    host: Option<HostGpus>,
    /// The MPS share to place, when the request goes to MPS GPUs.
    share: Option<crate::gpu::mps::Share>,
    uid: u32,
    /// Reasons to refuse found before selection (a malformed request, NVML missing).
    refusals: Vec<String>,
}

/// The host's GPUs, the prepared injection, and the GPUs it cannot inject (why).
type HostGpus = (Vec<GpuInfo>, Prepared, Vec<(u32, String)>);

impl Gpus {
    /// Starts reading the host's GPUs when the spec asks for GPUs that [`Gpus::read`]
    /// will select, before the spec is edited: none of the edits changes a request.
    fn start_reading(
        spec: &Spec,
        policy: &crate::policy::Policy,
        host: &dyn Host,
    ) -> Option<Reading> {
        let request = crate::gpu::request::parse(spec).ok()?;
        Gpus::selects(&request, policy).then(|| host.start_gpus(policy.gpu.nvml_library.as_deref()))
    }

    /// Whether selecting for `request` needs the host's GPUs: every GPU asked for is
    /// passed through or refused without them, as `[gpu] all` says.
    fn selects(request: &GpuRequest, policy: &crate::policy::Policy) -> bool {
        match request {
            GpuRequest::None => false,
            GpuRequest::All { .. } => policy.gpu.all == crate::policy::AllGpus::Free,
            _ => true,
        }
    }

    /// The request in `spec` and what selecting for it needs. `early` is the reading
    /// [`Gpus::start_reading`] started, used if the request still needs it (and
    /// otherwise dropped, which stops its helper).
    fn read(
        spec: &Spec,
        policy: &crate::policy::Policy,
        mode: Mode,
        host: &dyn Host,
        early: Option<Reading>,
        notes: &mut Vec<String>,
    ) -> Gpus {
        let mut out = Gpus {
            request: GpuRequest::None,
            host: None,
            share: None,
            uid: spec.user().0,
            refusals: Vec::new(),
        };
        out.request = match crate::gpu::request::parse(spec) {
            Ok(r) => r,
            Err(e) => {
                out.refusals.push(e.to_string());
                return out;
            }
        };
        match out.request {
            GpuRequest::None => return out,
            GpuRequest::All { .. } if policy.gpu.all == crate::policy::AllGpus::Pass => {
                notes.push("every GPU requested, passed through ([gpu] all = \"pass\")".into());
                return out;
            }
            // Refused whatever the GPUs are: no need to load NVML to say so.
            GpuRequest::All { .. } if policy.gpu.all == crate::policy::AllGpus::Refuse => {
                let asker = select::Asker {
                    uid: out.uid,
                    share: None,
                    mps: &policy.mps,
                };
                let s = select::select(&[], &[], &out.request, &policy.gpu, &[], &asker);
                out.refusals.extend(s.refusal);
                return out;
            }
            _ => {}
        }
        // From a hook nothing is injected, nor where the device nodes are in the spec
        // already: nothing to prepare.
        let in_place = mode != Mode::Runtime
            || matches!(
                out.request,
                GpuRequest::Devices {
                    source: crate::gpu::request::Source::DeviceNodes,
                    ..
                }
            );
        debug_assert!(Gpus::selects(&out.request, policy));
        let read = early
            .unwrap_or_else(|| host.start_gpus(policy.gpu.nvml_library.as_deref()))
            .finish()
            .map_err(|e| format!("cannot read the GPUs: {e}"))
            .and_then(|gpus| {
                if in_place {
                    return Ok((gpus, Prepared::InPlace, Vec::new()));
                }
                inject::prepare(&policy.gpu, spec, &gpus)
                    .map(|(prepared, blocked)| (gpus, prepared, blocked))
                    .map_err(|e| e.to_string())
            });
        match (read, policy.admission.on_error) {
            (Ok(host), _) => {
                match crate::gpu::request::settle_nodes(out.request.clone(), spec, &host.0) {
                    Ok((request, dropped)) => {
                        if dropped {
                            notes.push("device nodes of GPUs in MIG mode passed through, not leased (MIG devices are not managed by mlenv)".into());
                        }
                        out.request = request;
                    }
                    Err(e) => {
                        out.refusals.push(e.to_string());
                        return out;
                    }
                }
                if out.request == GpuRequest::None {
                    return out;
                }
                // MPS: a share asked for, or every GPU shared.
                let asked = crate::gpu::mps::MpsSection::asked(spec);
                if select::wants_share(&host.0, &policy.mps, asked) {
                    match crate::gpu::mps::ask(spec, &policy.mps) {
                        Ok(share) => out.share = Some(share),
                        Err(e) => out.refusals.extend(e),
                    }
                }
                out.host = Some(host)
            }
            (Err(e), OnError::Refuse) => out
                .refusals
                .push(format!("{e} ([admission] on_error = \"refuse\")")),
            (Err(e), OnError::Admit) => notes.push(format!(
                "GPUs not selected, leased or injected: {e} ([admission] on_error = \"admit\")"
            )),
        }
        out
    }

    /// Chooses against the live leases; None when there is nothing to choose.
    fn select(
        &self,
        leases: &[crate::gpu::select::LiveLease],
        policy: &crate::policy::Policy,
    ) -> Option<Selection> {
        let (gpus, _, blocked) = self.host.as_ref()?;
        let asker = select::Asker {
            uid: self.uid,
            share: self.share,
            mps: &policy.mps,
        };
        Some(select::select(
            gpus,
            leases,
            &self.request,
            &policy.gpu,
            blocked,
            &asker,
        ))
    }

    /// A copy of `spec` with the granted GPUs injected, and what was done.
    fn inject(
        &mut self,
        spec: &Spec,
        s: &Selection,
        policy: &crate::policy::Policy,
    ) -> Result<(Spec, Vec<String>), inject::InjectError> {
        let mps = &policy.mps;
        let Some((gpus, prepared, _)) = self.host.as_mut() else {
            return Ok((spec.clone(), Vec::new()));
        };
        let mut out = spec.clone();
        let mut actions = vec![leased(&s.grant)];
        actions.extend(prepared.apply(&mut out, &s.grant, gpus)?);
        if policy.user.gpu_groups {
            let added = crate::user::add_device_groups(
                &mut out,
                &device_nodes(&policy.gpu.device_dir, &s.grant),
                &crate::hostfs::RealFiles,
            )?;
            if !added.is_empty() {
                let added: Vec<String> = added.iter().map(u32::to_string).collect();
                actions.push(format!(
                    "group{} {} of the GPU device nodes added",
                    if added.len() == 1 { "" } else { "s" },
                    added.join(",")
                ));
            }
        }
        if let Some((share, uuids)) = granted_share(&s.grant) {
            actions.extend(crate::gpu::mps::apply(&mut out, &uuids, share, mps)?);
        }
        Ok((out, actions))
    }
}

/// From a hook, on MPS GPUs: the refusal of a container that does not carry its share
/// already (the variables and mounts mlenv-runtime would have written), naming the
/// flags that give it. None where no share is granted, or the container carries it.
fn share_in_place(
    spec: &Spec,
    grant: &[select::Granted],
    policy: &crate::policy::Policy,
) -> Option<String> {
    let (share, uuids) = granted_share(grant)?;
    let missing = crate::gpu::mps::missing(spec, &uuids, share, &policy.mps);
    (!missing.is_empty()).then(|| {
        format!(
            "mlenv-hook cannot give a container that exists its MPS share of GPU {} ({} pinned, {}% threads); run it with {}, or register mlenv-runtime with the engine",
            indexes(grant).join(","),
            crate::units::ByteSize(share.memory),
            share.threads,
            missing.join(" ")
        )
    })
}

/// The MPS share granted on `grant` (the same on each of its GPUs), with their UUIDs;
/// None where the GPUs are not shared through MPS.
fn granted_share(grant: &[select::Granted]) -> Option<(crate::gpu::mps::Share, Vec<&str>)> {
    let share = grant.first().and_then(|g| g.share)?;
    Some((share, grant.iter().map(|g| g.uuid.as_str()).collect()))
}

/// The indexes of the granted GPUs, in grant order.
fn indexes(grant: &[select::Granted]) -> Vec<String> {
    grant.iter().map(|g| g.index.to_string()).collect()
}

/// `GPUs 2,3 leased`.
fn leased(grant: &[select::Granted]) -> String {
    let indexes = indexes(grant);
    format!(
        "GPU{} {} leased",
        if indexes.len() == 1 { "" } else { "s" },
        indexes.join(",")
    )
}

/// The host device nodes a container with these GPUs uses.
fn device_nodes(dir: &Path, grant: &[select::Granted]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = grant
        .iter()
        .map(|g| dir.join(format!("nvidia{}", g.minor)))
        .collect();
    out.extend(
        ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"]
            .iter()
            .map(|n| dir.join(n)),
    );
    out
}

/// A line kept beside the inventory for a decision the inventory could not take.
/// Best effort: the inventory's directory may be what failed.
fn keep_unrecorded(inventory: &Path, id: &str, msg: &str, now_ms: i64) {
    use std::io::Write;
    let path = inventory.with_file_name("unrecorded.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{} {id} {msg}", crate::clock::rfc3339(now_ms));
    }
}

/// Checks the security rules on the spec as the engine wrote it, maps the user, runs
/// the edits; fills in who asks and what.
fn edit(
    mut spec: Spec,
    policy: &crate::policy::Policy,
    decision: &mut Decision,
) -> Result<(Spec, EditLog), SpecError> {
    let files = crate::hostfs::RealFiles;
    let rules = crate::security::check(
        &spec.json,
        Some(&decision.container_id),
        &policy.security,
        &files,
    );
    let mapped = crate::user::map(&mut spec, &policy.user, &files)?;
    (decision.uid, decision.gid) = spec.user();
    decision.project = spec.env("MLENV_PROJECT").map(str::to_string);
    let mut edits = edits::apply_all(&mut spec, policy)?;
    edits.refusals.splice(0..0, rules);
    match mapped {
        crate::user::Mapped::Kept => {}
        crate::user::Mapped::Changed(what) => {
            edits.changed = true;
            edits.actions.insert(0, what);
        }
        crate::user::Mapped::Refused(why) => edits.refusals.insert(0, why),
    }
    decision.requested = edits.requested;
    decision.effective = edits.effective;
    Ok((spec, edits))
}

/// The end reason of an admitted container the low-level runtime then failed to create.
pub const NOT_CREATED: &str = "not created: the runtime failed";

/// After a successful `delete` (or a foreground `run` that returned), the container no
/// longer counts. Best effort: a broken policy or inventory must never make a delete
/// fail. Returns the warnings of the inventory's opening ([`Ending::warnings`]) and
/// of housekeeping done on the way ([`Housekeeping::run`]).
pub fn record_end(
    inv: &Invocation,
    main: &Path,
    clock: &dyn Clock,
    reason: &str,
) -> Result<Vec<String>, String> {
    // Read leniently: a policy broken since the create still names its inventory.
    let Some(mut ending) = Ending::open(inv, &policy::lenient(main))? else {
        return Ok(Vec::new());
    };
    ending.record(clock.now_ms(), reason)?;
    let mut warnings = ending.warnings();
    if let Some(due) = ending.close() {
        warnings.extend(due.run(clock.now_ms()));
    }
    Ok(warnings)
}

/// The bookkeeping of a delete, in steps: [`Ending::open`] while the runtime deletes
/// (opening the inventory is most of the cost), [`Ending::record`] once it has
/// succeeded, so that the delete waits only for the write; and, when
/// [`Ending::close`] says it is due, [`Housekeeping`], which nobody need wait for.
pub struct Ending {
    inventory: Inventory,
    id: String,
    root: Option<String>,
    retention_days: Option<u32>,
}

impl Ending {
    /// `None`: nothing to end in (no container id, or no inventory was ever made).
    pub fn open(inv: &Invocation, lenient: &policy::Lenient) -> Result<Option<Ending>, String> {
        let Some(id) = &inv.container_id else {
            return Ok(None);
        };
        let path = lenient.inventory();
        if !path.exists() {
            return Ok(None);
        }
        let mut inventory = Inventory::open(&path).map_err(|e| e.to_string())?;
        // The container is gone (or being deleted): a locked inventory must not hold
        // the engine's delete, or a foreground run's exit, for the full wait of a create.
        inventory.wait_briefly().map_err(|e| e.to_string())?;
        inventory.prepare_end();
        Ok(Some(Ending {
            inventory,
            id: id.clone(),
            root: inv.root_text(),
            retention_days: lenient.retention(),
        }))
    }

    /// What the admin is to hear of the opening: a corrupt inventory moved aside (the
    /// delete ends nothing in the new one, and says so nowhere else).
    pub fn warnings(&self) -> Vec<String> {
        self.inventory.set_aside_warning().into_iter().collect()
    }

    pub fn record(&mut self, now_ms: i64, reason: &str) -> Result<(), String> {
        self.inventory
            .end(&self.id, self.root.as_deref(), now_ms, reason)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Closes the inventory, and says what housekeeping is due: some once the WAL
    /// has grown past [`crate::inventory::WAL_SETTLE_FRAMES`] (about every tenth
    /// container, as a create and its end change some 11 pages).
    pub fn close(self) -> Option<Housekeeping> {
        self.inventory.settle_due().then(|| Housekeeping {
            path: self.inventory.path().to_path_buf(),
            retention_days: self.retention_days,
        })
    }
}

/// Retention (old decisions pruned) and a checkpoint of the WAL, on a connection of
/// its own (mlenv-runtime runs it in a process of its own, after the delete).
pub struct Housekeeping {
    path: PathBuf,
    retention_days: Option<u32>,
}

impl Housekeeping {
    /// Best effort: a failure here is not a failed end, and a later delete tries
    /// again. Returns what went wrong, each a message for the admin: by the time it
    /// runs, the engine has its answer and reads nothing more from this process.
    pub fn run(&self, now_ms: i64) -> Vec<String> {
        let mut warnings = Vec::new();
        // Never made again here: whoever removed it meant it.
        if !self.path.exists() {
            return warnings;
        }
        let mut inventory = match Inventory::open(&self.path) {
            Ok(i) => i,
            Err(e) => {
                warnings.push(format!("inventory housekeeping skipped: {e}"));
                return warnings;
            }
        };
        warnings.extend(inventory.set_aside_warning());
        if let Some(days) = self.retention_days {
            if let Err(e) = inventory.prune_if_due(now_ms, days) {
                warnings.push(format!("old decisions not pruned: {e}"));
            }
        }
        warnings.extend(inventory.settle_or_say());
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::scan;
    use crate::clock::FixedClock;
    use std::ffi::OsString;
    use std::fs;

    struct Fixture {
        dir: tempfile::TempDir,
        main: PathBuf,
        bundle: PathBuf,
    }

    fn fixture(policy_extra: &str, spec: serde_json::Value) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("mlenv.toml");
        let runtime = dir.path().join("runc");
        fs::write(&runtime, "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        fs::write(
            &main,
            format!(
                "[runtime]\npath = {:?}\n[inventory]\npath = {:?}\n{policy_extra}",
                runtime,
                dir.path().join("inv/mlenv.db")
            ),
        )
        .unwrap();
        let bundle = dir.path().join("bundle");
        fs::create_dir(&bundle).unwrap();
        fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        Fixture { dir, main, bundle }
    }

    fn invocation(f: &Fixture, id: &str) -> Invocation {
        let args: Vec<OsString> = [
            "--root",
            "/run/r",
            "create",
            "--bundle",
            f.bundle.to_str().unwrap(),
            id,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        scan(&args)
    }

    fn run_create(
        f: &Fixture,
        id: &str,
        host: &dyn Host,
        log: &mut RuncLog,
    ) -> Result<Verdict, CreateError> {
        decide(
            Mode::Runtime,
            &invocation(f, id),
            Path::new("/"),
            &f.main,
            &FixedClock(5),
            host,
            log,
        )
        .map(|(verdict, _)| verdict)
    }

    /// A fixture host that owns its directory, removed when the host is dropped.
    struct OwnedHost {
        _dir: tempfile::TempDir,
        host: crate::host::ProcHost,
    }

    impl Host for OwnedHost {
        fn probe(&self) -> Result<crate::host::HostState, crate::host::HostError> {
            self.host.probe()
        }
        fn process_start(&self, pid: u32) -> Option<u64> {
            self.host.process_start(pid)
        }
        fn read(&self, path: &Path) -> Option<String> {
            self.host.read(path)
        }
        fn gpus(&self, lib: Option<&Path>) -> Result<Vec<GpuInfo>, String> {
            self.host.gpus(lib)
        }
    }

    /// A roomy fixture host.
    fn host() -> OwnedHost {
        let (_dir, host) = crate::host::tests::fixture(&[]);
        OwnedHost { _dir, host }
    }

    fn spec() -> serde_json::Value {
        serde_json::json!({
            "process": {"user": {"uid": 1000, "gid": 1000}, "env": ["MLENV_PROJECT=vision"]},
            "linux": {"resources": {"memory": {"limit": 2147483648u64}}}
        })
    }

    #[test]
    fn admitted_spec_written_and_recorded() {
        let f = fixture(
            "[limits]\nmax_memory = \"1G\"\nover_limit = \"clamp\"\ndefault_pids = 64\n",
            spec(),
        );
        let mut log = RuncLog::stderr_only();
        let v = run_create(&f, "c1", &host(), &mut log).unwrap();
        assert_eq!(
            v,
            Verdict::Admitted {
                runtime: f.dir.path().join("runc")
            }
        );
        let written: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(f.bundle.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(written["linux"]["resources"]["memory"]["limit"], 1u64 << 30);
        assert_eq!(written["linux"]["resources"]["pids"]["limit"], 64);
        assert_eq!(written["process"], spec()["process"]);

        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        let d = inv.find("c1").unwrap().unwrap();
        assert_eq!(d.outcome, Outcome::Admitted);
        assert_eq!(
            (d.uid, d.gid, d.project.as_deref()),
            (1000, 1000, Some("vision"))
        );
        assert_eq!(d.root.as_deref(), Some("/run/r"));
        assert_eq!(d.requested.memory, Some(2 << 30));
        assert_eq!(d.effective.memory, Some(1 << 30));
        assert!(
            d.reason.contains("memory limit 2G clamped to 1G"),
            "{}",
            d.reason
        );
        assert_eq!(inv.live().unwrap().len(), 1);
        // The policy that validated is kept.
        assert!(policy::last_known_good_path(&f.main).exists());
    }

    #[test]
    fn refused_spec_untouched_and_recorded() {
        let f = fixture("[limits]\nmax_memory = \"1G\"\n", spec());
        let before = fs::read(f.bundle.join("config.json")).unwrap();
        let mut log = RuncLog::stderr_only();
        let v = run_create(&f, "c2", &host(), &mut log).unwrap();
        assert_eq!(
            v,
            Verdict::Refused("memory limit 2G requested > 1G allowed ([limits] max_memory)".into())
        );
        assert_eq!(fs::read(f.bundle.join("config.json")).unwrap(), before);
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        assert_eq!(inv.find("c2").unwrap().unwrap().outcome, Outcome::Refused);
        assert!(inv.live().unwrap().is_empty());
    }

    #[test]
    fn invalid_policy_fails_closed_or_falls_back() {
        let f = fixture("[limits]\nmax_memory = \"4G\"\n", spec());
        let mut log = RuncLog::stderr_only();
        run_create(&f, "c3", &host(), &mut log).unwrap();
        // Break it: fail closed, naming file, line and key and how to check.
        let good = fs::read_to_string(&f.main).unwrap();
        fs::write(&f.main, format!("{good}bogus_key = 1\n")).unwrap();
        let err = run_create(&f, "c4", &host(), &mut log)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("policy invalid: "), "{err}");
        assert!(
            err.contains("mlenv.toml:7: limits.bogus_key: unknown field"),
            "{err}"
        );
        assert!(err.ends_with("check with `mlenv policy check`"), "{err}");
        // Opt in to last-known-good: admitted under the old policy, said in the log.
        fs::write(
            &f.main,
            format!("on_invalid_policy = \"last-known-good\"\n{good}bogus_key = 1\n"),
        )
        .unwrap();
        let logfile = f.dir.path().join("log.json");
        let mut log = RuncLog::open(Some(&logfile), true).unwrap();
        let v = run_create(&f, "c5", &host(), &mut log).unwrap();
        assert!(matches!(v, Verdict::Admitted { .. }));
        let text = fs::read_to_string(&logfile).unwrap();
        assert!(text.contains("using the last known good policy"), "{text}");
    }

    #[test]
    fn untrusted_policy_or_inventory_refuses_and_names_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let f = fixture("[limits]\nmax_memory = \"4G\"\n", spec());
        let mut log = RuncLog::stderr_only();
        let mode =
            |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        mode(&f.main, 0o664);
        assert_eq!(
            run_create(&f, "t1", &host(), &mut log).unwrap(),
            Verdict::Refused(format!(
                "policy {0} is writable by group or others (mode 0664): it is not honoured; run `chmod go-w {0}`",
                f.main.display()
            ))
        );
        let refusal = |id: &str, log: &mut RuncLog| match run_create(&f, id, &host(), log).unwrap()
        {
            Verdict::Refused(why) => why,
            other => panic!("{other:?}"),
        };
        // A drop-in someone else can write counts the same.
        mode(&f.main, 0o644);
        let conf_d = f.dir.path().join("conf.d");
        fs::create_dir(&conf_d).unwrap();
        fs::write(conf_d.join("x.toml"), "").unwrap();
        mode(&conf_d, 0o777);
        let err = refusal("t2", &mut log);
        assert!(
            err.contains(&format!("policy drop-in {} is writable", conf_d.display())),
            "{err}"
        );
        mode(&conf_d, 0o755);
        run_create(&f, "t3", &host(), &mut log).unwrap();
        // The inventory's directory too; and nothing is recorded in it.
        let inv_dir = f.dir.path().join("inv");
        mode(&inv_dir, 0o777);
        let err = refusal("t4", &mut log);
        assert!(
            err.contains(&format!("inventory {} is writable", inv_dir.display())),
            "{err}"
        );
        mode(&inv_dir, 0o755);
        let inv = Inventory::open(&inv_dir.join("mlenv.db")).unwrap();
        assert!(inv.find("t4").unwrap().is_none());
        // A passthrough call does not take the runtime an untrusted file names.
        mode(&f.main, 0o666);
        assert_eq!(policy::lenient(&f.main).runtime_path, None);
        mode(&f.main, 0o644);
        assert!(policy::lenient(&f.main).runtime_path.is_some());
    }

    #[test]
    fn spec_errors_are_recorded() {
        let f = fixture(
            "",
            serde_json::json!({"linux": {"resources": {"pids": {"limit": "many"}}}}),
        );
        let mut log = RuncLog::stderr_only();
        let err = run_create(&f, "c6", &host(), &mut log)
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux.resources.pids.limit"), "{err}");
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        let d = inv.find("c6").unwrap().unwrap();
        assert_eq!(d.outcome, Outcome::Error);
        assert_eq!(d.reason, err);
    }

    #[test]
    fn delete_ends_the_live_row() {
        let f = fixture("", spec());
        let mut log = RuncLog::stderr_only();
        run_create(&f, "c7", &host(), &mut log).unwrap();
        let del = scan(&["--root", "/run/r", "delete", "--force", "c7"].map(OsString::from));
        record_end(&del, &f.main, &FixedClock(9), "deleted").unwrap();
        let db = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        assert!(db.live().unwrap().is_empty());
    }

    #[test]
    fn a_delete_and_housekeeping_say_they_moved_a_corrupt_inventory_aside() {
        let f = fixture("", spec());
        let path = f.dir.path().join("inv/mlenv.db");
        run_create(&f, "c8", &host(), &mut RuncLog::stderr_only()).unwrap();
        let corrupt = || {
            fs::write(&path, vec![0x5a_u8; 8192]).unwrap();
            let _ = fs::remove_file(path.with_extension("db-wal"));
        };
        let said = |n: usize| {
            let mut aside = Inventory::set_aside_files(&path);
            assert_eq!(aside.len(), n, "{aside:?}");
            aside.sort();
            format!(
                "inventory {} was corrupt: moved aside to {}; a new one was started, and containers already running are not counted until they are recreated",
                path.display(),
                aside[n - 1].display()
            )
        };
        corrupt();
        let del = scan(&["--root", "/run/r", "delete", "c8"].map(OsString::from));
        assert_eq!(
            record_end(&del, &f.main, &FixedClock(9), "deleted").unwrap(),
            vec![said(1)]
        );
        // Nothing in the new one to end, nothing more to say.
        assert_eq!(
            record_end(&del, &f.main, &FixedClock(9), "deleted").unwrap(),
            Vec::<String>::new()
        );
        corrupt();
        let due = Housekeeping {
            path: path.clone(),
            retention_days: Some(30),
        };
        assert_eq!(due.run(10), vec![said(2)]);
    }

    #[test]
    fn a_delete_leaves_the_checkpoint_to_housekeeping_when_due() {
        let f = fixture("", spec());
        let lenient = policy::lenient(&f.main);
        let mut log = RuncLog::stderr_only();
        let mut cycle = |id: &str| {
            run_create(&f, id, &host(), &mut log).unwrap();
            let del = scan(&["--root", "/run/r", "delete", id].map(OsString::from));
            let mut ending = Ending::open(&del, &lenient).unwrap().unwrap();
            ending.record(9, "deleted").unwrap();
            ending.close()
        };
        // A short WAL is left as it is; once long, the end says housekeeping is due,
        // and leaves it long.
        assert!(cycle("h0").is_none());
        let mut n = 1;
        let due = loop {
            if let Some(due) = cycle(&format!("h{n}")) {
                break due;
            }
            n += 1;
        };
        assert!(n > 1);
        let db = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        let frames = db.wal_frames();
        assert!(frames > crate::inventory::WAL_SETTLE_FRAMES, "{frames}");
        assert_eq!(due.run(10), Vec::<String>::new());
        assert!(db.wal_frames() < frames, "{}", db.wal_frames());
        assert!(db.wal_frames() <= crate::inventory::WAL_SETTLE_FRAMES);
        assert!(db.live().unwrap().is_empty());
        assert_eq!(db.history(0, 1000).unwrap().len(), n + 1);
        // Nothing to end in: no inventory made yet.
        let none = policy::Lenient {
            inventory_path: Some(f.dir.path().join("elsewhere/mlenv.db")),
            ..Default::default()
        };
        let del = scan(&["delete", "h3"].map(OsString::from));
        assert!(Ending::open(&del, &none).unwrap().is_none());
    }

    #[test]
    fn housekeeping_says_what_it_could_not_do() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the inventory should be: SQLite cannot open it.
        let path = dir.path().join("mlenv.db");
        fs::create_dir(&path).unwrap();
        let due = Housekeeping {
            path: path.clone(),
            retention_days: Some(30),
        };
        let warnings = due.run(10);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("inventory housekeeping skipped: ")
                && warnings[0].contains(&path.display().to_string()),
            "{warnings:?}"
        );
        // Gone meanwhile: nothing to do, nothing to say.
        fs::remove_dir(&path).unwrap();
        assert!(due.run(10).is_empty());
        assert!(!path.exists(), "never made again by housekeeping");
    }

    #[test]
    fn project_quota_counts_live_containers_and_drops_dead_ones() {
        let f = fixture(
            "[[quota]]\nproject = \"vision\"\nmax_containers = 1\n",
            spec(),
        );
        let state = r#"{"init_process_pid":77,"init_process_start":5000}"#;
        let stat = crate::host::tests::proc_stat(77, 5000);
        let (dir, host) =
            crate::host::tests::fixture(&[("run/r/c1/state.json", state), ("proc/77/stat", &stat)]);
        let mut log = RuncLog::stderr_only();
        let mut create = |id: &str| run_create(&f, id, &host, &mut log).unwrap();
        assert!(matches!(create("c1"), Verdict::Admitted { .. }));
        assert_eq!(
            create("c2"),
            Verdict::Refused("quota project=vision: 1 of 1 containers live".into())
        );
        // c1's process dies without a delete: the next create finds out and admits.
        fs::remove_file(dir.path().join("proc/77/stat")).unwrap();
        assert!(matches!(create("c3"), Verdict::Admitted { .. }));
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        assert_eq!(crate::inventory::tests::live_ids(&inv), ["c3"]);
        // The refusal's record has every check with its values.
        let d = inv.find("c2").unwrap().unwrap();
        let checks = d.detail["checks"].as_array().unwrap();
        assert!(checks
            .iter()
            .any(|c| c["kind"] == "host" && c["passed"] == true));
        assert!(checks.iter().any(
            |c| c["text"] == "quota project=vision: 1 of 1 containers live" && c["passed"] == false
        ));
    }

    #[test]
    fn host_threshold_refuses_with_value_threshold_and_key() {
        let f = fixture("[admission]\nmax_memory_percent = 50\n", spec());
        let mut log = RuncLog::stderr_only();
        let v = run_create(&f, "h1", &host(), &mut log).unwrap();
        assert_eq!(
            v,
            Verdict::Refused("host memory 75% used > 50% ([admission] max_memory_percent)".into())
        );
        // Limits and host clauses together, limits first.
        let f = fixture(
            "[admission]\nmax_memory_percent = 50\n[limits]\nmax_memory = \"1G\"\n",
            spec(),
        );
        let v = run_create(&f, "h2", &host(), &mut log).unwrap();
        assert_eq!(
            v,
            Verdict::Refused(
                "memory limit 2G requested > 1G allowed ([limits] max_memory); host memory 75% used > 50% ([admission] max_memory_percent)".into()
            )
        );
    }

    #[test]
    fn on_error_decides_when_the_probe_or_inventory_fails() {
        let (d, broken) = crate::host::tests::fixture(&[]);
        fs::remove_file(d.path().join("proc/meminfo")).unwrap();
        let mut log = RuncLog::stderr_only();
        let f = fixture("", spec());
        match run_create(&f, "e1", &broken, &mut log).unwrap() {
            Verdict::Refused(r) => {
                assert!(r.starts_with("cannot check the host: cannot read "), "{r}");
                assert!(r.ends_with("([admission] on_error = \"refuse\")"), "{r}");
            }
            v => panic!("{v:?}"),
        }
        let f = fixture("[admission]\non_error = \"admit\"\n", spec());
        assert!(matches!(
            run_create(&f, "e2", &broken, &mut log).unwrap(),
            Verdict::Admitted { .. }
        ));
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        let r = inv.find("e2").unwrap().unwrap().reason;
        assert!(r.contains("host not checked: cannot read "), "{r}");

        // An inventory that cannot be opened: refused with the error, or admitted.
        let blocked = |extra: &str| {
            let f = fixture(extra, spec());
            let text = fs::read_to_string(&f.main).unwrap();
            let file = f.dir.path().join("file");
            fs::write(&file, "").unwrap();
            let text = text.replace(
                &format!("{:?}", f.dir.path().join("inv/mlenv.db")),
                &format!("{:?}", file.join("mlenv.db")),
            );
            fs::write(&f.main, text).unwrap();
            f
        };
        let f = blocked("");
        let err = run_create(&f, "e3", &host(), &mut log).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot create inventory directory"),
            "{err}"
        );
        let f = blocked("[admission]\non_error = \"admit\"\n");
        assert!(matches!(
            run_create(&f, "e4", &host(), &mut log).unwrap(),
            Verdict::Admitted { .. }
        ));
    }

    /// A host on which the containers `ids` (under root /run/r) run: their state.json
    /// names a live init process.
    fn running(ids: &[&str]) -> OwnedHost {
        let state = r#"{"init_process_pid":77,"init_process_start":5000}"#;
        let stat = crate::host::tests::proc_stat(77, 5000);
        let paths: Vec<String> = ids
            .iter()
            .map(|id| format!("run/r/{id}/state.json"))
            .collect();
        let mut files: Vec<(&str, &str)> = paths.iter().map(|p| (p.as_str(), state)).collect();
        files.push(("proc/77/stat", &stat));
        let (_dir, host) = crate::host::tests::fixture(&files);
        OwnedHost { _dir, host }
    }

    /// Four GPUs; GPU 0 is at 90% utilization.
    const FOUR_GPUS: &str = r#"{"gpus": [
        {"uuid": "GPU-00000000-0000-0000-0000-000000000000", "minor": 0, "utilization_gpu": 90},
        {"uuid": "GPU-11111111-1111-1111-1111-111111111111", "minor": 1},
        {"uuid": "GPU-22222222-2222-2222-2222-222222222222", "minor": 2},
        {"uuid": "GPU-33333333-3333-3333-3333-333333333333", "minor": 3}
    ]}"#;

    /// A device directory whose nodes are links to /dev/null (a character device
    /// any user can stat).
    fn device_dir(f: &Fixture) -> PathBuf {
        let dir = f.dir.path().join("dev");
        fs::create_dir(&dir).unwrap();
        for name in ["nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl"] {
            std::os::unix::fs::symlink("/dev/null", dir.join(name)).unwrap();
        }
        dir
    }

    fn gpu_spec(env: &[&str]) -> serde_json::Value {
        let mut s = spec();
        for e in env {
            s["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push((*e).into());
        }
        s
    }

    fn written(f: &Fixture) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(f.bundle.join("config.json")).unwrap()).unwrap()
    }

    /// Each live container of the inventory at `db`, with the GPUs it holds.
    fn live_gpus(db: &Path) -> Vec<(String, Vec<u32>)> {
        Inventory::open(db)
            .unwrap()
            .live()
            .unwrap()
            .into_iter()
            .map(|l| (l.container_id, l.gpus))
            .collect()
    }

    /// `docker run --device /dev/nvidia2`: the GPU is in the container whatever mlenv
    /// does, so it is leased (nothing injected), and a second container given the
    /// same node is refused.
    #[test]
    fn gpu_device_nodes_given_directly_are_leased() {
        let Some((_g, lib, _d)) = crate::gpu::probe::tests::fake_gpus(FOUR_GPUS) else {
            return;
        };
        let with_node = |minor: u32| {
            let mut s = spec();
            s["linux"]["devices"] = serde_json::json!([
                {"path": format!("/dev/nvidia{minor}"), "type": "c", "major": 195, "minor": minor},
                {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255}
            ]);
            s
        };
        let f = fixture("", with_node(2));
        let text = fs::read_to_string(&f.main).unwrap();
        // Injection through NVIDIA's hook, which this host lacks: not needed here.
        fs::write(
            &f.main,
            format!("{text}[gpu]\nnvml_library = {lib:?}\ninject = \"nvidia\"\nnvidia_hook = \"/nonexistent/hook\"\n"),
        )
        .unwrap();
        let mut log = RuncLog::stderr_only();
        let host = running(&["n1", "n2"]);
        let v = run_create(&f, "n1", &host, &mut log).unwrap();
        assert!(matches!(v, Verdict::Admitted { .. }), "{v:?}");
        assert_eq!(written(&f), with_node(2), "nothing injected");
        let db = f.dir.path().join("inv/mlenv.db");
        let inv = Inventory::open(&db).unwrap();
        assert_eq!(inv.live().unwrap()[0].gpus, [2]);
        let d = inv.find("n1").unwrap().unwrap();
        assert!(d.reason.contains("GPU 2 leased"), "{}", d.reason);
        assert_eq!(d.detail["gpu_request"], "GPUs /dev/nvidia2 (device nodes)");

        fs::write(f.bundle.join("config.json"), with_node(2).to_string()).unwrap();
        match run_create(&f, "n2", &host, &mut log).unwrap() {
            Verdict::Refused(r) => assert!(
                r.contains("GPU 2 (GPU-22222222) requested: leased to n1"),
                "{r}"
            ),
            v => panic!("{v:?}"),
        }

        let host = running(&["n1", "n3", "n4", "n5", "n6"]);
        let create = |id: &str, spec: &serde_json::Value| {
            fs::write(f.bundle.join("config.json"), spec.to_string()).unwrap();
            run_create(&f, id, &host, &mut RuncLog::stderr_only()).unwrap()
        };
        let with_env = |minor: u32, env: &str| {
            let mut s = with_node(minor);
            s["process"]["env"] = serde_json::json!([env]);
            s
        };
        // The GPU named beside its node (a device plugin passing both): leased, the
        // environment kept.
        let named = with_env(
            3,
            "NVIDIA_VISIBLE_DEVICES=GPU-33333333-3333-3333-3333-333333333333",
        );
        assert!(matches!(create("n3", &named), Verdict::Admitted { .. }));
        assert_eq!(written(&f), named);
        // Another GPU named: which one would the container use?
        match create("n4", &with_env(1, "NVIDIA_VISIBLE_DEVICES=0")) {
            Verdict::Refused(r) => assert!(
                r.starts_with("GPU device nodes /dev/nvidia1 given to the container directly and GPUs 0 (NVIDIA_VISIBLE_DEVICES) asked for"),
                "{r}"
            ),
            v => panic!("{v:?}"),
        }
        // A CUDA image's NVIDIA_VISIBLE_DEVICES=all does not count beside the nodes.
        assert!(matches!(
            create("n5", &with_env(1, "NVIDIA_VISIBLE_DEVICES=all")),
            Verdict::Admitted { .. }
        ));
        // --privileged lists every node, leased ones too: not a request.
        let mut privileged = with_node(2);
        privileged["linux"]["devices"].as_array_mut().unwrap().push(
            serde_json::json!({"path": "/dev/nvidia3", "type": "c", "major": 195, "minor": 3}),
        );
        privileged["linux"]["resources"] =
            serde_json::json!({"devices": [{"allow": true, "access": "rwm"}]});
        let text = fs::read_to_string(&f.main).unwrap();
        fs::write(
            &f.main,
            format!("{text}[security]\nrefuse_privileged = false\n"),
        )
        .unwrap();
        assert!(matches!(
            create("n6", &privileged),
            Verdict::Admitted { .. }
        ));
        assert_eq!(
            live_gpus(&db),
            [
                ("n1".to_string(), vec![2]),
                ("n3".to_string(), vec![3]),
                ("n5".to_string(), vec![1]),
                ("n6".to_string(), vec![]),
            ]
        );
    }

    #[test]
    fn a_mig_slices_device_nodes_pass_through_unleased() {
        let gpus = FOUR_GPUS.replace(r#""minor": 3}"#, r#""minor": 3, "mig_mode": 1}"#);
        let Some((_g, lib, _d)) = crate::gpu::probe::tests::fake_gpus(&gpus) else {
            return;
        };
        // As the device plugin's MIG strategy passes a slice: the parent's node, the
        // slice's capability node, the slice by UUID.
        let mut spec = spec();
        spec["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/nvidia3", "type": "c", "major": 195, "minor": 3},
            {"path": "/dev/nvidia-caps/nvidia-cap30", "type": "c", "major": 236, "minor": 30}
        ]);
        spec["process"]["env"] = serde_json::json!(["NVIDIA_VISIBLE_DEVICES=MIG-5c8d2a7e"]);
        let f = fixture(&format!("[gpu]\nnvml_library = {lib:?}\n"), spec.clone());
        let v = run_create(&f, "mig1", &running(&["mig1"]), &mut RuncLog::stderr_only()).unwrap();
        assert!(matches!(v, Verdict::Admitted { .. }), "{v:?}");
        assert_eq!(written(&f), spec, "nothing injected");
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        assert_eq!(inv.live().unwrap()[0].gpus, Vec::<u32>::new());
        let d = inv.find("mig1").unwrap().unwrap();
        assert!(
            d.reason
                .contains("device nodes of GPUs in MIG mode passed through, not leased"),
            "{}",
            d.reason
        );
        // A whole GPU's node beside MIG capability nodes is leased as any other.
        spec["linux"]["devices"][0] =
            serde_json::json!({"path": "/dev/nvidia2", "type": "c", "major": 195, "minor": 2});
        spec["process"]["env"] = serde_json::json!([]);
        fs::write(f.bundle.join("config.json"), spec.to_string()).unwrap();
        let v = run_create(
            &f,
            "mig2",
            &running(&["mig1", "mig2"]),
            &mut RuncLog::stderr_only(),
        )
        .unwrap();
        assert!(matches!(v, Verdict::Admitted { .. }), "{v:?}");
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        assert_eq!(inv.live().unwrap()[1].gpus, [2]);
    }

    /// GPU 2 of FOUR_GPUS shared through MPS, and a spec given its device node that
    /// asks for an 8G share.
    fn mps_gpu_2(lib: &Path) -> (serde_json::Value, Fixture) {
        let mut spec = spec();
        spec["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/nvidia2", "type": "c", "major": 195, "minor": 2}
        ]);
        spec["process"]["env"] = serde_json::json!(["MLENV_GPU_MEMORY=8G"]);
        let f = fixture(
            &format!("[gpu]\nnvml_library = {lib:?}\n[mps]\ngpus = [2]\n"),
            spec.clone(),
        );
        (spec, f)
    }

    #[test]
    fn gpu_device_nodes_on_an_mps_gpu_get_the_share_applied() {
        let Some((_g, lib, _d)) = crate::gpu::probe::tests::fake_gpus(FOUR_GPUS) else {
            return;
        };
        let (mut spec, f) = mps_gpu_2(&lib);
        let v = run_create(&f, "m1", &running(&["m1"]), &mut RuncLog::stderr_only()).unwrap();
        assert!(matches!(v, Verdict::Admitted { .. }), "{v:?}");
        let w = written(&f);
        let env = w["process"]["env"].as_array().unwrap();
        assert!(
            env.contains(
                &"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=GPU-22222222-2222-2222-2222-222222222222=8G"
                    .into()
            ),
            "{env:?}"
        );
        assert_eq!(
            w["linux"]["devices"], spec["linux"]["devices"],
            "no device added"
        );
        // Without a share the MPS GPU is not handed over whole.
        spec["process"]["env"] = serde_json::json!([]);
        fs::write(f.bundle.join("config.json"), spec.to_string()).unwrap();
        match run_create(
            &f,
            "m2",
            &running(&["m1", "m2"]),
            &mut RuncLog::stderr_only(),
        )
        .unwrap()
        {
            Verdict::Refused(r) => assert!(r.contains("shared through MPS"), "{r}"),
            v => panic!("{v:?}"),
        }
    }

    /// mlenv-hook alone (podman's hooks directory) cannot write the MPS share into a
    /// container that exists: without it the GPU is refused, naming the flags that
    /// give it; with them (podman's own mounts) it is leased.
    #[test]
    fn from_a_hook_an_mps_gpu_needs_its_share_in_the_run_command() {
        let Some((_g, lib, _d)) = crate::gpu::probe::tests::fake_gpus(FOUR_GPUS) else {
            return;
        };
        let (mut spec, f) = mps_gpu_2(&lib);
        let hook = |id: &str| {
            decide(
                Mode::Hook { init: (77, 5000) },
                &invocation(&f, id),
                Path::new("/"),
                &f.main,
                &FixedClock(5),
                &running(&[id]),
                &mut RuncLog::stderr_only(),
            )
            .map(|(verdict, _)| verdict)
            .unwrap()
        };
        let uuid = "GPU-22222222-2222-2222-2222-222222222222";
        match hook("h1") {
            Verdict::Refused(r) => assert_eq!(
                r,
                format!("mlenv-hook cannot give a container that exists its MPS share of GPU 2 (8G pinned, 100% threads); run it with -e CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={uuid}=8G -e CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 -e CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps -v /tmp/nvidia-mps:/tmp/nvidia-mps -v /dev/shm/mlenv-mps:/dev/shm, or register mlenv-runtime with the engine")
            ),
            v => panic!("{v:?}"),
        }
        assert_eq!(written(&f), spec, "a hook writes nothing");
        let db = f.dir.path().join("inv/mlenv.db");
        assert!(live_gpus(&db).is_empty(), "nothing leased");

        spec["process"]["env"] = serde_json::json!([
            "MLENV_GPU_MEMORY=8G",
            format!("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={uuid}=8G"),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100",
            "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps"
        ]);
        spec["mounts"] = serde_json::json!([
            {"destination": "/tmp/nvidia-mps", "type": "bind", "source": "/tmp/nvidia-mps", "options": ["rbind", "rprivate"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm/mlenv-mps", "options": ["rbind", "rprivate"]}
        ]);
        fs::write(f.bundle.join("config.json"), spec.to_string()).unwrap();
        let v = hook("h2");
        assert!(matches!(v, Verdict::Admitted { .. }), "{v:?}");
        assert_eq!(live_gpus(&db), [("h2".to_string(), vec![2])]);
    }

    #[test]
    fn gpus_are_chosen_leased_injected_and_released() {
        let Some((_g, lib, _d)) = crate::gpu::probe::tests::fake_gpus(FOUR_GPUS) else {
            return;
        };
        let policy = |f: &Fixture, dev: &Path| {
            let text = fs::read_to_string(&f.main).unwrap();
            fs::write(
                &f.main,
                format!(
                    "{text}[gpu]\nnvml_library = {lib:?}\ninject = \"devices\"\ndevice_dir = {dev:?}\n"
                ),
            )
            .unwrap();
        };
        let f = fixture(
            "",
            gpu_spec(&["MLENV_GPUS=2", "NVIDIA_VISIBLE_DEVICES=all"]),
        );
        let dev = device_dir(&f);
        policy(&f, &dev);
        let mut log = RuncLog::stderr_only();
        let host = running(&["g1", "g2", "g3", "g4", "g5"]);
        let v = run_create(&f, "g1", &host, &mut log).unwrap();
        assert!(matches!(v, Verdict::Admitted { .. }), "{v:?}");
        let w = written(&f);
        let paths: Vec<&str> = w["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/dev/nvidia1", "/dev/nvidia2", "/dev/nvidiactl"]);
        let env = w["process"]["env"].as_array().unwrap();
        assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=GPU-11111111-1111-1111-1111-111111111111,GPU-22222222-2222-2222-2222-222222222222".into()), "{env:?}");
        assert_eq!(
            env.iter()
                .filter(|e| e.as_str().unwrap().starts_with("NVIDIA_VISIBLE_DEVICES="))
                .count(),
            1
        );
        let db = f.dir.path().join("inv/mlenv.db");
        let inv = Inventory::open(&db).unwrap();
        assert_eq!(inv.live().unwrap()[0].gpus, [1, 2]);
        let d = inv.find("g1").unwrap().unwrap();
        assert!(d.reason.contains("GPUs 1,2 leased"), "{}", d.reason);
        let gpus = d.detail["gpus"].as_array().unwrap();
        assert_eq!(gpus.len(), 4);
        assert_eq!(
            gpus[0]["why"],
            "utilization 90% > 30% ([gpu] max_utilization)"
        );
        assert_eq!(gpus[1]["chosen"], true);

        // The next one gets GPU 3; then none is left, and the refusal names each.
        let mut create = |id: &str, env: &[&str]| {
            fs::write(f.bundle.join("config.json"), gpu_spec(env).to_string()).unwrap();
            run_create(&f, id, &host, &mut log).unwrap()
        };
        assert!(matches!(
            create("g2", &["MLENV_GPUS=1"]),
            Verdict::Admitted { .. }
        ));
        assert_eq!(written(&f)["linux"]["devices"][0]["path"], "/dev/nvidia3");
        match create("g3", &["MLENV_GPUS=1"]) {
            Verdict::Refused(r) => assert_eq!(
                r,
                "1 GPU requested, 0 free: GPU 0 (GPU-00000000): utilization 90% > 30% ([gpu] max_utilization); GPU 1 (GPU-11111111): leased to g1 (user 1000, project vision); GPU 2 (GPU-22222222): leased to g1 (user 1000, project vision); GPU 3 (GPU-33333333): leased to g2 (user 1000, project vision)"
            ),
            v => panic!("{v:?}"),
        }
        // Deleting g1 releases its two GPUs.
        let del = scan(&["--root", "/run/r", "delete", "g1"].map(OsString::from));
        record_end(&del, &f.main, &FixedClock(9), "deleted").unwrap();
        assert!(matches!(
            create("g4", &["MLENV_GPUS=2"]),
            Verdict::Admitted { .. }
        ));
        assert_eq!(
            live_gpus(&db),
            [("g2".to_string(), vec![3]), ("g4".to_string(), vec![1, 2])]
        );
        // A container without a GPU request is untouched by all of this.
        let plain = spec();
        fs::write(f.bundle.join("config.json"), plain.to_string()).unwrap();
        assert!(matches!(
            run_create(&f, "g5", &host, &mut log).unwrap(),
            Verdict::Admitted { .. }
        ));
        assert_eq!(written(&f), plain);
    }

    /// Records what a create asks of the host, in order; it has no NVML.
    struct Asked {
        inner: OwnedHost,
        calls: std::cell::RefCell<Vec<&'static str>>,
    }

    impl Host for Asked {
        fn probe(&self) -> Result<crate::host::HostState, crate::host::HostError> {
            self.calls.borrow_mut().push("probe");
            self.inner.probe()
        }
        fn process_start(&self, pid: u32) -> Option<u64> {
            self.inner.process_start(pid)
        }
        fn read(&self, path: &Path) -> Option<String> {
            self.inner.read(path)
        }
        fn gpus(&self, _lib: Option<&Path>) -> Result<Vec<GpuInfo>, String> {
            self.calls.borrow_mut().push("gpus");
            Err("no NVML here".into())
        }
        fn start_gpus(&self, _lib: Option<&Path>) -> Reading {
            self.calls.borrow_mut().push("start_gpus");
            Reading::Ready(Err("no NVML here".into()))
        }
    }

    #[test]
    fn gpus_are_read_once_before_the_host_and_only_to_select() {
        let cases: [(&[&str], &str, &[&str]); 6] = [
            (&[], "", &["probe"]),
            (&["MLENV_GPUS=1"], "", &["start_gpus", "probe"]),
            (
                &["NVIDIA_VISIBLE_DEVICES=0,1"],
                "",
                &["start_gpus", "probe"],
            ),
            (&["MLENV_GPUS=two"], "", &["probe"]),
            (&["NVIDIA_VISIBLE_DEVICES=all"], "", &["probe"]),
            (
                &["NVIDIA_VISIBLE_DEVICES=all"],
                "all = \"free\"\n",
                &["start_gpus", "probe"],
            ),
        ];
        for (env, gpu, expected) in cases {
            let f = fixture(&format!("[gpu]\n{gpu}"), gpu_spec(env));
            let host = Asked {
                inner: host(),
                calls: Default::default(),
            };
            run_create(&f, "c1", &host, &mut RuncLog::stderr_only()).unwrap();
            assert_eq!(host.calls.into_inner(), expected, "{env:?} {gpu}");
        }
    }

    #[test]
    fn without_nvml_gpu_requests_are_refused_or_admitted_blind() {
        let nvml = "[gpu]\nnvml_library = \"/nonexistent/libnvidia-ml.so.1\"\n";
        let mut log = RuncLog::stderr_only();
        // No GPU asked: NVML is never loaded.
        let f = fixture(nvml, spec());
        assert!(matches!(
            run_create(&f, "n1", &host(), &mut log).unwrap(),
            Verdict::Admitted { .. }
        ));
        let f = fixture(nvml, gpu_spec(&["MLENV_GPUS=1"]));
        match run_create(&f, "n2", &host(), &mut log).unwrap() {
            Verdict::Refused(r) => {
                assert!(
                    r.starts_with("cannot read the GPUs: cannot load NVML from /nonexistent/libnvidia-ml.so.1"),
                    "{r}"
                );
                assert!(r.ends_with("([admission] on_error = \"refuse\")"), "{r}");
            }
            v => panic!("{v:?}"),
        }
        let f = fixture(
            &format!("{nvml}[admission]\non_error = \"admit\"\n"),
            gpu_spec(&["MLENV_GPUS=1"]),
        );
        let before = fs::read(f.bundle.join("config.json")).unwrap();
        assert!(matches!(
            run_create(&f, "n3", &host(), &mut log).unwrap(),
            Verdict::Admitted { .. }
        ));
        assert_eq!(fs::read(f.bundle.join("config.json")).unwrap(), before);
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        let r = inv.find("n3").unwrap().unwrap().reason;
        assert!(r.contains("GPUs not selected, leased or injected"), "{r}");
        // MPS variables without a GPU request change nothing.
        let f = fixture(
            nvml,
            gpu_spec(&["MLENV_GPU_MEMORY=8G", "MLENV_GPU_THREADS=25"]),
        );
        let before = fs::read(f.bundle.join("config.json")).unwrap();
        assert!(matches!(
            run_create(&f, "n7", &host(), &mut log).unwrap(),
            Verdict::Admitted { .. }
        ));
        assert_eq!(fs::read(f.bundle.join("config.json")).unwrap(), before);
        // all = "pass": every GPU asked, passed through without NVML, lease or edit.
        let f = fixture(
            &format!("{nvml}all = \"pass\"\n"),
            gpu_spec(&["NVIDIA_VISIBLE_DEVICES=all"]),
        );
        let before = fs::read(f.bundle.join("config.json")).unwrap();
        assert!(matches!(
            run_create(&f, "n5", &host(), &mut log).unwrap(),
            Verdict::Admitted { .. }
        ));
        assert_eq!(fs::read(f.bundle.join("config.json")).unwrap(), before);
        let inv = Inventory::open(&f.dir.path().join("inv/mlenv.db")).unwrap();
        let r = inv.find("n5").unwrap().unwrap().reason;
        assert!(
            r.contains("every GPU requested, passed through ([gpu] all = \"pass\")"),
            "{r}"
        );
        // The default refuses it, saying how to ask.
        let f = fixture(nvml, gpu_spec(&["NVIDIA_VISIBLE_DEVICES=all"]));
        match run_create(&f, "n6", &host(), &mut log).unwrap() {
            Verdict::Refused(r) => assert_eq!(
                r,
                "every GPU requested (NVIDIA_VISIBLE_DEVICES=all); ask for a number with MLENV_GPUS=N or --gpus N ([gpu] all = \"refuse\")"
            ),
            v => panic!("{v:?}"),
        }
        // A malformed request is the user's to fix.
        let f = fixture(nvml, gpu_spec(&["MLENV_GPUS=two"]));
        assert_eq!(
            run_create(&f, "n4", &host(), &mut log).unwrap(),
            Verdict::Refused("MLENV_GPUS=\"two\": expected a number of GPUs (or all)".into())
        );
    }

    #[test]
    fn gpu_quota_counts_leases() {
        let Some((_g, lib, _d)) = crate::gpu::probe::tests::fake_gpus(FOUR_GPUS) else {
            return;
        };
        let f = fixture(
            &format!(
                "[gpu]\nnvml_library = {lib:?}\ninject = \"nvidia\"\nnvidia_hook = \"/bin/true\"\n[[quota]]\nproject = \"vision\"\nmax_gpus = 2\n"
            ),
            gpu_spec(&["MLENV_GPUS=1"]),
        );
        let mut log = RuncLog::stderr_only();
        let host = running(&["q1"]);
        assert!(matches!(
            run_create(&f, "q1", &host, &mut log).unwrap(),
            Verdict::Admitted { .. }
        ));
        // nvidia mode: the hook added first, the UUID set.
        let w = written(&f);
        assert_eq!(w["hooks"]["prestart"][0]["path"], "/bin/true");
        assert!(w["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&"NVIDIA_VISIBLE_DEVICES=GPU-11111111-1111-1111-1111-111111111111".into()));
        fs::write(
            f.bundle.join("config.json"),
            gpu_spec(&["MLENV_GPUS=2"]).to_string(),
        )
        .unwrap();
        assert_eq!(
            run_create(&f, "q2", &host, &mut log).unwrap(),
            Verdict::Refused("quota project=vision: 1 GPUs leased + 2 requested > 2".into())
        );
    }
}
