//! mlenv-runtime: registered with the engine in place of runc.
//!
//! It starts without std's runtime start-up (`no_main`): that reads /proc/self/maps
//! for a stack guard and sets up an alternate signal stack, some 80 µs of every call,
//! and an engine makes four calls per `docker run` (docs/benchmarks.md). What of it
//! matters is done in [`main`].

#![no_main]

use mlenv::argv::{self, Command};
use mlenv::clock::{Clock, SystemClock};
use mlenv::create::{self, Verdict};
use mlenv::host::ProcHost;
use mlenv::runclog::RuncLog;
use mlenv::{lowlevel, policy};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::exit;

/// As it ships, linked against musl, whose allocator hands memory back to the kernel
/// as it goes: SQLite's and serde's many small allocations then cost page faults.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The process entry. As std's start-up would: fds 0 to 2 are made valid (an engine
/// may close them, and a file opened here must never become stderr), and SIGPIPE is
/// ignored here (children get it back at its default, as std's spawn gives it).
/// Arguments are read from `argv`: std keeps its own copy only on glibc, and only
/// from its start-up on musl, which this binary is linked with as it ships.
///
/// # Safety
///
/// Called by the C runtime alone, with `argc` valid strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: plain syscalls on the standard descriptors and one signal disposition,
    // before any other code runs.
    unsafe {
        for fd in 0..3 {
            // The lowest free descriptor is `fd` itself, those below it being open.
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // SAFETY: the C runtime passes argc valid NUL-terminated strings in argv.
    let args = (1..argc.max(1) as usize)
        .map(|i| unsafe {
            let arg = std::ffi::CStr::from_ptr(*argv.add(i));
            OsString::from(std::ffi::OsStr::from_bytes(arg.to_bytes()))
        })
        .collect();
    // Before any SQLite connection: afterwards SQLite keeps its own allocator.
    mlenv::sqlmem::use_global_allocator();
    run(args)
}

fn run(args: Vec<OsString>) -> ! {
    let inv = argv::scan(&args);
    let main = policy::main_path();
    match inv.command {
        Command::Create => create(&inv, &args, &main),
        Command::Delete => delete(&inv, &args, &main),
        Command::Update => update(&inv, &args, &main),
        Command::Exec => exec(&inv, &args, &main),
        Command::Other => passthrough(&inv, &args, &main),
    }
}

/// The runtime for calls that do not load the policy: `[runtime] path` read leniently,
/// so that a broken policy never breaks exec, stop, kill or delete.
fn lenient_runtime(inv: &argv::Invocation, lenient: &policy::Lenient) -> PathBuf {
    match lowlevel::locate(lenient.runtime_path.as_deref()) {
        Ok(p) => p,
        Err(e) => fail(inv, &format!("mlenv: {e}")),
    }
}

fn fail(inv: &argv::Invocation, msg: &str) -> ! {
    let mut log = RuncLog::open(inv.log.as_deref(), inv.log_is_json())
        .unwrap_or_else(|_| RuncLog::stderr_only());
    log.error(msg, SystemClock.now_ms());
    exit(1)
}

/// A warning for the admin, on stderr and in the system log: an engine keeps a
/// runtime's stderr only when the call fails, and a warning comes with one that
/// succeeds.
fn warn(msg: &str) {
    mlenv::syslog::warn_admin("mlenv", "mlenv-runtime", msg);
}

fn passthrough(inv: &argv::Invocation, args: &[OsString], main: &std::path::Path) -> ! {
    handover(inv, args, &lenient_runtime(inv, &policy::lenient(main)))
}

fn handover(inv: &argv::Invocation, args: &[OsString], runtime: &std::path::Path) -> ! {
    let err = lowlevel::exec(runtime, args);
    fail(inv, &format!("mlenv: {err}"))
}

fn delete(inv: &argv::Invocation, args: &[OsString], main: &std::path::Path) -> ! {
    let lenient = policy::lenient(main);
    let runtime = lenient_runtime(inv, &lenient);
    // Engines delete twice (containerd: `delete`, then `delete --force`); the second
    // finds nothing left to end, and is handed over as any other call.
    if let (Some(root), Some(id)) = (&inv.root, &inv.container_id) {
        if mlenv::liveness::state_gone(root, id) {
            handover(inv, args, &runtime);
        }
    }
    // The runtime first, the bookkeeping after: a broken inventory never fails a
    // delete. The inventory is opened while the runtime deletes.
    let child = match lowlevel::spawn(&runtime, args) {
        Ok(c) => c,
        Err(e) => fail(inv, &format!("mlenv: {e}")),
    };
    let ending = create::Ending::open(inv, &lenient);
    let code = match lowlevel::wait(&runtime, child) {
        Ok(code) => code,
        Err(e) => fail(inv, &format!("mlenv: {e}")),
    };
    if code != 0 {
        exit(code);
    }
    let not_ended = |e: String| {
        warn(&format!(
            "container deleted, but not marked ended in the inventory: {e}"
        ))
    };
    let due = match ending {
        Ok(Some(mut ending)) => {
            ending.warnings().iter().for_each(|w| warn(w));
            if let Err(e) = ending.record(SystemClock.now_ms(), "deleted") {
                not_ended(e);
            }
            ending.close()
        }
        Ok(None) => None,
        Err(e) => {
            not_ended(e);
            None
        }
    };
    if let Some(due) = due {
        after_exit(|| {
            // Read in the system log when this runs after the delete; on stderr
            // too when it is the delete itself (fork failed).
            due.run(SystemClock.now_ms()).iter().for_each(|w| warn(w));
        });
    }
    exit(code)
}

/// Runs `work` in a child of its own while this process exits at once: a checkpoint
/// nobody needs to wait for, not even `docker run --rm`, which waits for the delete.
/// The child lets go of the engine's pipes (it waits for them to close) and of its
/// terminal. Where fork fails, the work is done here.
fn after_exit(work: impl FnOnce()) {
    // SAFETY: this process is single-threaded, and holds no SQLite connection now
    // (the child opens its own); the child only calls async-signal-safe functions
    // before it runs `work`, and leaves with _exit.
    match unsafe { libc::fork() } {
        0 => unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
            }
            libc::setsid();
            work();
            libc::_exit(0)
        },
        -1 => work(),
        _ => {}
    }
}

/// `exec` with capabilities beyond `[security] allowed_capabilities` (`docker exec
/// --privileged`) is refused, and an exec that would run as root is held to `[user]
/// root` as the container was (its process file rewritten, or the exec refused). The
/// policy is read strictly but quietly: where it cannot be read (broken, untrusted),
/// exec passes through as every other call does.
fn exec(inv: &argv::Invocation, args: &[OsString], main: &std::path::Path) -> ! {
    let trusted = mlenv::trust::check_policy(
        main,
        &policy::dropins(main).unwrap_or_default(),
        &mlenv::hostfs::RealFiles,
    );
    if let (Ok(()), Ok(loaded)) = (trusted, policy::load(main)) {
        let values = |k: &str| -> Vec<String> {
            inv.update
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let process_file = values("process").into_iter().next().map(PathBuf::from);
        let mut process = process_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let caps = values("cap");
        let refusals =
            mlenv::security::check_exec(process.as_ref(), &caps, &loaded.policy.security);
        if !refusals.is_empty() {
            fail(inv, &format!("mlenv: refused: {}", refusals.join("; ")));
        }
        // Engines pass the process as a file; `runc exec` typed with --user on the
        // host, by root, is left as typed.
        if let (Some(path), Some(process)) = (&process_file, &mut process) {
            let inventory = &loaded.policy.inventory.path;
            match mlenv::user::map_exec(
                process,
                || container_user(inv, inventory),
                &loaded.policy.user,
            ) {
                mlenv::user::Mapped::Kept => {}
                mlenv::user::Mapped::Refused(why) => fail(inv, &format!("mlenv: refused: {why}")),
                mlenv::user::Mapped::Changed(_) => {
                    if let Err(e) = mlenv::fsutil::overwrite(path, process.to_string().as_bytes()) {
                        fail(
                            inv,
                            &format!(
                                "mlenv: cannot hold the exec to [user] root: writing {}: {e}",
                                path.display()
                            ),
                        );
                    }
                }
            }
        }
    }
    passthrough(inv, args, main)
}

/// `process.user` of the live container's config.json, as mlenv handed it over;
/// `None` where the inventory does not know the container (created past mlenv), cannot
/// be read (it is left as it is: recovery is for creates), or the bundle is gone.
fn container_user(
    inv: &argv::Invocation,
    inventory: &std::path::Path,
) -> Option<serde_json::Value> {
    let id = inv.container_id.as_deref()?;
    let bundle = mlenv::inventory::Inventory::open_to_read(inventory)
        .ok()?
        .live_bundle(id, inv.root_text().as_deref())
        .ok()??;
    let bytes = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    spec.pointer("/process/user").cloned()
}

/// An update raising a limit past the policy's maximum is refused; one within it is
/// recorded and handed over, with the resources it read from stdin given again.
fn update(inv: &argv::Invocation, args: &[OsString], main: &std::path::Path) -> ! {
    use mlenv::update::Update;
    let clock = SystemClock;
    let mut log = RuncLog::open(inv.log.as_deref(), inv.log_is_json())
        .unwrap_or_else(|_| RuncLog::stderr_only())
        .with_syslog(Path::new(mlenv::syslog::SOCKET), "mlenv-runtime");
    let refuse = |log: &mut RuncLog, msg: &str| -> ! {
        log.error(&format!("mlenv: refused: {msg}"), clock.now_ms());
        exit(1)
    };
    let loaded = match create::policy_in_force(main, &mut log, clock.now_ms()) {
        Ok((loaded, keep)) => {
            keep.keep(&loaded.policy, main);
            loaded
        }
        Err(e) => refuse(&mut log, &format!("update: {e}")),
    };
    let runtime = match lowlevel::locate(loaded.policy.runtime.path.as_deref()) {
        Ok(p) => p,
        Err(e) => fail(inv, &format!("mlenv: {e}")),
    };
    let resources = inv
        .update
        .iter()
        .find(|(k, _)| k == "resources")
        .map(|(_, v)| v.as_str());
    let mut stdin = None;
    let read = match resources {
        Some("-") => {
            let mut bytes = Vec::new();
            match std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes) {
                Ok(_) => {
                    let u = Update::from_json(&bytes, "on stdin");
                    stdin = Some(bytes);
                    u
                }
                Err(e) => Err(mlenv::update::UpdateError::Read {
                    source_name: "on stdin".into(),
                    message: e.to_string(),
                }),
            }
        }
        Some(path) => std::fs::read(path)
            .map_err(|e| mlenv::update::UpdateError::Read {
                source_name: path.to_string(),
                message: e.to_string(),
            })
            .and_then(|bytes| Update::from_json(&bytes, path)),
        None => Update::from_flags(&inv.update),
    };
    let u = match read {
        Ok(u) => u,
        Err(e) => refuse(&mut log, &e.to_string()),
    };
    let refusals = u.refusals(&loaded.policy.limits);
    if !refusals.is_empty() {
        refuse(&mut log, &refusals.join("; "));
    }
    // Held to reservations and quotas as a create is, in the transaction that
    // records the new limits: two raises at once cannot both pass on the same room.
    if let Some(id) = &inv.container_id {
        use mlenv::host::Host;
        let change = u.recorded();
        let proc_host = ProcHost::default();
        let host = proc_host.probe().ok();
        let recorded =
            mlenv::inventory::Inventory::open(&loaded.policy.inventory.path).and_then(|mut i| {
                if let Some(msg) = i.set_aside_warning() {
                    log.warn(&format!("mlenv: warning: {msg}"), clock.now_ms());
                }
                i.update_limits(
                    id,
                    inv.root_text().as_deref(),
                    change,
                    &proc_host,
                    clock.now_ms(),
                    |held, others| {
                        mlenv::update::quota_refusals(
                            &loaded.policy,
                            host.as_ref(),
                            held,
                            others,
                            &change,
                        )
                    },
                )
            });
        match recorded {
            Ok(Ok(0)) => warn(&format!(
                "limits updated, but not checked against quotas: container {id} is not live in the inventory (created past mlenv, or before the inventory was started again)"
            )),
            Ok(Ok(_)) => {}
            Ok(Err(refusals)) => refuse(&mut log, &refusals.join("; ")),
            Err(e) => warn(&format!(
                "limits updated, but not checked against quotas or recorded in the inventory: {e}"
            )),
        }
    }
    if let Some(bytes) = stdin {
        if let Err(e) = lowlevel::replace_stdin(&bytes) {
            fail(
                inv,
                &format!("mlenv: cannot pass the update's resources on: {e}"),
            );
        }
    }
    handover(inv, args, &runtime)
}

fn create(inv: &argv::Invocation, args: &[OsString], main: &std::path::Path) -> ! {
    let clock = SystemClock;
    // The log file first: an error before it is open reaches the user as "unable to
    // retrieve OCI runtime error".
    let mut log = match RuncLog::open(inv.log.as_deref(), inv.log_is_json()) {
        Ok(l) => l,
        Err(e) => {
            warn(&format!("cannot open the runtime log: {e}"));
            RuncLog::stderr_only()
        }
    }
    .with_syslog(Path::new(mlenv::syslog::SOCKET), "mlenv-runtime");
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    // NVML through mlenv-nvml installed beside this one: this one is linked
    // statically, and cannot load it (docs/design.md).
    let host = ProcHost {
        gpus: mlenv::host::GpuSource::Helper,
        ..ProcHost::default()
    };
    match create::decide(
        create::Mode::Runtime,
        inv,
        &cwd,
        main,
        &clock,
        &host,
        &mut log,
    ) {
        Ok((Verdict::Admitted { runtime }, _))
            if inv.subcommand.as_deref() == Some("run") && !inv.detach =>
        {
            // A foreground run removes its container when it exits, with no delete
            // call: wait for it and record the end.
            match lowlevel::run(&runtime, args) {
                Ok(code) => {
                    match create::record_end(inv, main, &clock, "exited") {
                        Ok(warnings) => warnings.iter().for_each(|w| warn(w)),
                        Err(e) => warn(&format!(
                            "container exited, but not marked ended in the inventory: {e}"
                        )),
                    }
                    exit(code)
                }
                Err(e) => log.error(&format!("mlenv: {e}"), clock.now_ms()),
            }
        }
        // A runtime whose state liveness cannot read (not runc or crun), and a pid file
        // (every engine asks for one): wait for the runtime, then record the init
        // process it names, with a statement compiled while the runtime worked.
        Ok((Verdict::Admitted { runtime }, Some(mut inventory)))
            if inv.pid_file.is_some() && !mlenv::liveness::finds_state_of(&runtime) =>
        {
            let ran = lowlevel::spawn(&runtime, args).and_then(|child| {
                inventory.prepare_started();
                lowlevel::wait(&runtime, child)
            });
            match ran {
                Ok(code) => {
                    match (code, &inv.container_id, &inv.pid_file) {
                        (0, Some(id), Some(pid_file)) => {
                            let pid_file = cwd.join(pid_file);
                            if let Err(e) =
                                create::record_init(&mut inventory, id, &pid_file, &host)
                            {
                                warn(&format!(
                                    "container created, but its init process is not recorded: {e}"
                                ));
                            }
                        }
                        // Nothing was created, and the engine's delete will find
                        // nothing: the admission ends here.
                        (_, Some(id), _) => {
                            if let Err(e) = inventory.end(
                                id,
                                inv.root_text().as_deref(),
                                clock.now_ms(),
                                create::NOT_CREATED,
                            ) {
                                warn(&format!("container not created, but not marked ended in the inventory: {e}"));
                            }
                        }
                        _ => {}
                    }
                    exit(code)
                }
                Err(e) => log.error(&format!("mlenv: {e}"), clock.now_ms()),
            }
        }
        // runc and crun: handed over by exec, the runtime's exit the engine's to see,
        // with no process of mlenv's left to wake (0.6 ms a create, docs/benchmarks.md).
        // The inventory stays open until the exec closes its files. The next liveness
        // check records the init process from the runtime's state, and ends a create
        // the runtime failed: its creator, whose pid and start time the exec keeps,
        // gone, and no state.
        Ok((Verdict::Admitted { runtime }, _inventory)) => {
            let err = lowlevel::exec(&runtime, args);
            log.error(&format!("mlenv: {err}"), clock.now_ms());
        }
        Ok((Verdict::Refused(reason), _)) => {
            log.error(&format!("mlenv: refused: {reason}"), clock.now_ms())
        }
        Err(e) => log.error(&format!("mlenv: {e}"), clock.now_ms()),
    }
    exit(1)
}
