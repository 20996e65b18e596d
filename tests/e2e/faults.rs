//! Fault injection: mlenv-runtime killed mid-create, dockerd crashing with live
//! containers, the inventory locked by another writer, corrupt, or on a full disk
//! (under a create, a delete, and the housekeeping after one), and the policy replaced
//! by garbage while containers start. Each checks that the
//! calls that only pass through keep working, that no lease or live row is left
//! behind, and that what the user sees is the message docs/troubleshooting.md gives.

use crate::docker::{docker, engine};
use crate::gpu::{uuid, GpuHost};
use crate::runc::{bundle, Rt};
use crate::support::*;
use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A bundle of a container that sleeps, and a pid file for runc, in `policy`'s dir.
fn sleeper(policy: &Policy) -> (std::path::PathBuf, std::path::PathBuf) {
    let b = policy.dir.path().join("bundle");
    bundle(&b, &["sleep", "600"], json!({}));
    (b, policy.dir.path().join("init.pid"))
}

/// Garbage over the whole inventory, as a bad disk or a stray write leaves it.
fn corrupt(inventory: &Path) {
    fs::write(inventory, vec![0x5a_u8; 64 * 1024]).unwrap();
    let _ = fs::remove_file(format!("{}-wal", inventory.display()));
    let _ = fs::remove_file(format!("{}-shm", inventory.display()));
}

/// Polls `f` until it holds, 10 s at most: waiting for an event, not a guess.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Leases not released, straight from the inventory.
fn open_leases(inventory: &Path) -> i64 {
    rusqlite::Connection::open(inventory)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM leases WHERE released_ms IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

fn one_gpu() -> String {
    format!(r#"{{"gpus": [{{"uuid": "{}", "minor": 0}}]}}"#, uuid(0))
}

/// kill -9 of mlenv-runtime once it has leased a GPU and handed over (the runtime
/// blocks), and at random points of 20 more creates: the row is found dead at the next
/// check, the GPU goes to the next container, and the database stays whole. runc is
/// exec'd: the process killed is the runtime.
#[test]
fn killed_mid_create_leaks_no_lease() {
    killed_mid_create("runc");
}

/// As [`killed_mid_create_leaks_no_lease`], with a runtime mlenv-runtime waits for
/// (one whose state liveness does not read): it is killed with mlenv-runtime
/// (PR_SET_PDEATHSIG).
#[test]
fn killed_mid_create_of_a_waited_runtime_leaks_no_lease() {
    killed_mid_create("other-runtime");
}

fn killed_mid_create(runtime_name: &str) {
    if !require("fault_kill", &["runc", "mknod"], &[]) {
        return;
    }
    let host = GpuHost::new(&one_gpu(), 1);
    let dir = tempfile::tempdir().unwrap();
    // A runtime that blocks in create while `block` exists, and is runc otherwise.
    let stand_in = dir.path().join(runtime_name);
    let block = dir.path().join("block");
    let blocked = dir.path().join("blocked");
    fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" create \"*) if [ -e {b:?} ]; then echo $$ > {d:?}; exec sleep 600; fi;; esac\nexec runc \"$@\"\n",
            b = block,
            d = blocked
        ),
    )
    .unwrap();
    fs::set_permissions(&stand_in, fs::Permissions::from_mode(0o755)).unwrap();
    let policy = Policy::write(
        None,
        &format!("[runtime]\npath = {stand_in:?}\n{}", host.policy("devices")),
    );
    let rt = Rt::new(&policy);
    let b = policy.dir.path().join("bundle");
    bundle(&b, &["sleep", "600"], json!({}));
    let pristine = fs::read(b.join("config.json")).unwrap();
    let mut spec: serde_json::Value = serde_json::from_slice(&pristine).unwrap();
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("MLENV_GPUS=1".into());
    let gpu_spec = serde_json::to_vec(&spec).unwrap();
    let pid_file = policy.dir.path().join("init.pid");

    fs::write(&block, "").unwrap();
    fs::write(b.join("config.json"), &gpu_spec).unwrap();
    let mut create = rt.create_cmd(&b, &pid_file, "killed").spawn().unwrap();
    // The file exists a moment before the shell has written its pid into it.
    let read_pid = || -> Option<i32> { fs::read_to_string(&blocked).ok()?.trim().parse().ok() };
    until("the runtime to block", || read_pid().is_some());
    let runtime_pid = read_pid().unwrap();
    assert_eq!(open_leases(&policy.inventory), 1, "decided and leased");
    assert_eq!(
        runtime_pid == create.id() as i32,
        runtime_name == "runc",
        "exec'd, or waited for"
    );
    create.kill().unwrap();
    create.wait().unwrap();
    until("the runtime to die with mlenv-runtime", || {
        !alive(runtime_pid)
    });
    fs::remove_file(&block).unwrap();

    // Nothing lives: the creator is gone and runc has no state for it.
    assert!(policy.live().is_empty());
    // The next container gets the GPU; its pass-through calls work.
    fs::write(b.join("config.json"), &gpu_spec).unwrap();
    rt.create_detached(&b, &pid_file, "next");
    assert_eq!(rt.status("next").as_deref(), Some("created"));
    ok(&mut rt.cmd(&["start", "next"]));
    ok(&mut rt.cmd(&["kill", "next", "KILL"]));
    assert!(rt.wait_stopped("next"));
    ok(&mut rt.cmd(&["delete", "next"]));
    assert_eq!(open_leases(&policy.inventory), 0);

    // Killed at random points, mid-decision included.
    for i in 0..20u64 {
        fs::write(b.join("config.json"), &gpu_spec).unwrap();
        let id = format!("random{i}");
        let mut c = rt.create_cmd(&b, &pid_file, &id).spawn().unwrap();
        // The injection point: 0 to 9.5 ms into the create.
        std::thread::sleep(Duration::from_micros((i * 7919) % 20 * 500));
        let _ = c.kill();
        c.wait().unwrap();
        // What runc made before it died is deleted as an engine would.
        let _ = run(&mut rt.cmd(&["delete", "--force", &id]));
    }
    let db = rusqlite::Connection::open(&policy.inventory).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    policy.cli(&["gc"]);
    assert!(policy.live().is_empty(), "{:?}", policy.live());
    assert_eq!(open_leases(&policy.inventory), 0);
    fs::write(b.join("config.json"), &gpu_spec).unwrap();
    rt.create_detached(&b, &pid_file, "after");
    assert_eq!(open_leases(&policy.inventory), 1);
    ok(&mut rt.cmd(&["delete", "--force", "after"]));
    assert_eq!(open_leases(&policy.inventory), 0);
}

/// dockerd dies (kill -9) with GPU containers running and comes back: whatever it
/// does with them, a container docker shows running holds its lease, one it does not
/// holds none, and docker's own calls all work.
#[test]
fn dockerd_crash_with_live_containers() {
    let host = GpuHost::new(
        &format!(
            r#"{{"gpus": [{{"uuid": "{}", "minor": 0}}, {{"uuid": "{}", "minor": 1}}]}}"#,
            uuid(0),
            uuid(1)
        ),
        2,
    );
    let Some((_g, policy)) = engine("fault_dockerd", &["mknod"], &host.policy("devices")) else {
        return;
    };
    for name in ["crash-a", "crash-b"] {
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "-e",
            "MLENV_GPUS=1",
            IMAGE,
            "sleep",
            "600",
        ]);
    }
    assert_eq!(open_leases(&policy.inventory), 2);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e-env.sh");
    ok(Command::new("bash").arg(&script).arg("crash-dockerd"));

    let running = |name: &str| docker(&["inspect", "-f", "{{.State.Running}}", name]) == "true";
    let live = policy.live();
    for name in ["crash-a", "crash-b"] {
        let id = docker(&["inspect", "-f", "{{.Id}}", name]);
        let counted = live.iter().any(|l| l["container_id"] == id.as_str());
        assert_eq!(
            counted,
            running(name),
            "{name}: docker and mlenv disagree: {live:?}"
        );
    }
    // Docker's calls pass through: restart one, exec in it, stop and remove all.
    docker(&["start", "crash-a"]);
    assert!(running("crash-a"));
    assert_eq!(docker(&["exec", "crash-a", "echo", "in"]), "in");
    docker(&["rm", "-f", "crash-a", "crash-b"]);
    assert!(policy.live().is_empty(), "{:?}", policy.live());
    assert_eq!(open_leases(&policy.inventory), 0);
    // Both GPUs are free again.
    let out = docker(&[
        "run",
        "--rm",
        "-e",
        "MLENV_GPUS=2",
        IMAGE,
        "sh",
        "-c",
        "ls /dev | grep -c 'nvidia[0-9]'",
    ]);
    assert_eq!(out, "2");
}

/// Another process holds the inventory's write lock: creates wait for it (10 s) and
/// then fail with the reason, or are admitted unrecorded under `on_error = "admit"`;
/// deletes delete, wait 2 s to record the end and warn; every other call answers at
/// once; once the lock is gone nothing is left.
#[test]
fn inventory_locked_by_another_writer() {
    if !require("fault_locked", &["runc"], &[]) {
        return;
    }
    let policy = Policy::write(None, "");
    let rt = Rt::new(&policy);
    let (b, pid_file) = sleeper(&policy);
    rt.create_detached(&b, &pid_file, "before");

    let mut holder = rusqlite::Connection::open(&policy.inventory).unwrap();
    let tx = holder
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    // While it is held: pass-through calls answer at once.
    assert_eq!(rt.status("before").as_deref(), Some("created"));
    // A create and a delete, at the same time.
    let b2 = policy.dir.path().join("bundle2");
    bundle(&b2, &["sleep", "600"], json!({}));
    let started = Instant::now();
    let mut create = rt
        .cmd(&["create", "--bundle", b2.to_str().unwrap(), "blocked"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let delete = rt
        .cmd(&["delete", "--force", "before"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deleted = delete.wait_with_output().unwrap();
    // The delete gives up on the lock sooner (2 s) than the create (10 s).
    assert!(
        create.try_wait().unwrap().is_none(),
        "the delete returned while the create still waits for the lock"
    );
    let created = create.wait_with_output().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "waited for the lock"
    );
    assert!(!created.status.success());
    let msg = rt.last_log_error();
    assert_eq!(
        msg,
        format!(
            "mlenv: inventory {}: starting a transaction: database is locked",
            policy.inventory.display()
        )
    );
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(
        stderr(&deleted).contains(
            "mlenv: warning: container deleted, but not marked ended in the inventory: inventory "
        ),
        "{}",
        stderr(&deleted)
    );
    assert_eq!(rt.status("before"), None, "deleted by runc");
    assert_eq!(rt.status("blocked"), None, "never handed to runc");
    drop(tx);
    drop(holder);
    // The unrecorded end is found at the next check: nothing stays live.
    policy.cli(&["gc"]);
    assert!(policy.live().is_empty(), "{:?}", policy.live());

    // on_error = "admit": admitted, said, and kept beside the inventory.
    policy.append("\n[admission]\non_error = \"admit\"\n");
    let mut holder = rusqlite::Connection::open(&policy.inventory).unwrap();
    let tx = holder
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    rt.create_detached(&b2, &pid_file, "admitted");
    drop(tx);
    drop(holder);
    let kept = fs::read_to_string(policy.inventory.with_file_name("unrecorded.log")).unwrap();
    assert!(
        kept.contains("admitted mlenv: warning: admitted without quotas or reservations and not recorded: inventory "),
        "{kept}"
    );
    ok(&mut rt.cmd(&["delete", "--force", "admitted"]));
    assert!(policy.live().is_empty());
}

/// A corrupt inventory is moved aside, a new one started, and the next create is
/// admitted; the decision, `mlenv status` and `mlenv doctor` say so.
#[test]
fn corrupt_inventory_is_moved_aside_and_reported() {
    let Some((_g, policy)) = engine("fault_corrupt", &[], "") else {
        return;
    };
    assert_eq!(docker(&["run", "--rm", IMAGE, "echo", "one"]), "one");
    corrupt(&policy.inventory);
    docker(&[
        "run",
        "-d",
        "--name",
        "after-corrupt",
        IMAGE,
        "sleep",
        "600",
    ]);
    let id = docker(&["inspect", "-f", "{{.Id}}", "after-corrupt"]);
    let aside: Vec<_> = fs::read_dir(policy.inventory.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| {
            n.starts_with("mlenv.db.corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        fs::read(policy.inventory.with_file_name(&aside[0])).unwrap(),
        vec![0x5a_u8; 64 * 1024]
    );
    let explained = policy.cli(&["explain", &id]);
    assert!(
        explained.contains(&format!(
            "was corrupt: moved aside to {}",
            policy.inventory.with_file_name(&aside[0]).display()
        )),
        "{explained}"
    );
    let status = policy.cli(&["status"]);
    assert!(
        status.contains("a corrupt inventory was moved aside to"),
        "{status}"
    );
    let doctor = run(Command::new(cli())
        .env("MLENV_CONFIG", &policy.main)
        .arg("doctor"));
    assert!(
        stdout(&doctor).contains("a corrupt inventory was moved aside to"),
        "{}",
        stdout(&doctor)
    );
    docker(&["rm", "-f", "after-corrupt"]);
    assert!(policy.live().is_empty());
}

/// A policy whose inventory is on a 1 MiB tmpfs of its own, a bundle and a pid file
/// for runc; the tmpfs unmounted when dropped.
struct SmallDisk {
    policy: Policy,
    inv_dir: std::path::PathBuf,
    bundle: std::path::PathBuf,
    pid_file: std::path::PathBuf,
}

impl SmallDisk {
    fn new() -> SmallDisk {
        let policy = Policy::write(None, "");
        let inv_dir = policy.inventory.parent().unwrap().to_path_buf();
        fs::create_dir_all(&inv_dir).unwrap();
        ok(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"])
            .arg(&inv_dir));
        let bundle_dir = policy.dir.path().join("bundle");
        bundle(&bundle_dir, &["sleep", "600"], json!({}));
        let pid_file = policy.dir.path().join("init.pid");
        SmallDisk {
            policy,
            inv_dir,
            bundle: bundle_dir,
            pid_file,
        }
    }

    /// Takes every block but `leave_kib` KiB with a file named `fill`.
    fn fill(&self, leave_kib: u32) -> std::path::PathBuf {
        let fill = self.inv_dir.join("fill");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", fill.display()))
            .stderr(Stdio::null())
            .status();
        ok(Command::new("truncate")
            .arg(format!("-s-{leave_kib}K"))
            .arg(&fill));
        fill
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.inv_dir).status();
    }
}

/// The inventory's filesystem is full: a create fails with SQLite's reason (or is
/// admitted unrecorded under `on_error = "admit"`), deletes and the rest work, and
/// once there is room again nothing is left behind.
#[test]
fn disk_full_under_the_inventory() {
    if !require("fault_disk_full", &["runc", "mount", "dd"], &[]) {
        return;
    }
    let disk = SmallDisk::new();
    let (policy, inv_dir) = (&disk.policy, &disk.inv_dir);
    let rt = Rt::new(policy);
    let (b, pid_file) = (&disk.bundle, &disk.pid_file);
    rt.create_detached(b, pid_file, "before");
    // The WAL folded in and emptied, then every block taken.
    rusqlite::Connection::open(&policy.inventory)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let fill = disk.fill(0);

    let b2 = policy.dir.path().join("bundle2");
    bundle(&b2, &["sleep", "600"], json!({}));
    let o = run(&mut rt.cmd(&["create", "--bundle", b2.to_str().unwrap(), "full"]));
    assert!(!o.status.success());
    let msg = rt.last_log_error();
    assert!(
        msg.starts_with(&format!(
            "mlenv: inventory {}: ",
            policy.inventory.display()
        )) && msg.ends_with(&format!(
            "the filesystem of {} is full; free space there",
            inv_dir.display()
        )),
        "{msg}"
    );
    assert_eq!(rt.status("full"), None);
    // Pass-through and delete work; the end cannot be recorded yet.
    assert_eq!(rt.status("before").as_deref(), Some("created"));
    let o = run(&mut rt.cmd(&["delete", "--force", "before"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not marked ended in the inventory"),
        "{}",
        stderr(&o)
    );

    // on_error = "admit": admitted, said in the log.
    policy.append("\n[admission]\non_error = \"admit\"\n");
    rt.create_detached(&b2, pid_file, "admitted-full");
    let log = fs::read_to_string(&rt.log).unwrap();
    assert!(
        log.contains(
            "mlenv: warning: admitted without quotas or reservations and not recorded: inventory "
        ),
        "{log}"
    );
    ok(&mut rt.cmd(&["delete", "--force", "admitted-full"]));

    // Room again: the dead row is ended, and creates are recorded.
    fs::remove_file(&fill).unwrap();
    policy.cli(&["gc"]);
    assert!(policy.live().is_empty(), "{:?}", policy.live());
    rt.create_detached(&b2, pid_file, "after");
    assert_eq!(policy.live().len(), 1);
    ok(&mut rt.cmd(&["delete", "--force", "after"]));
    assert!(policy.live().is_empty());
}

/// The inventory's filesystem fills up just before a delete whose housekeeping is due:
/// the delete succeeds and says nothing to the engine, and the housekeeping, which
/// runs after it, says why the WAL was not folded in to the system log (`/dev/log`,
/// bound here as journald or rsyslog would). The next delete with room does it.
#[test]
fn housekeeping_on_a_full_disk_says_so_in_the_system_log() {
    let test = "fault_housekeeping_syslog";
    if !require(test, &["runc", "mount", "dd", "truncate"], &[]) {
        return;
    }
    let Some(syslog) = syslog(test) else {
        return;
    };
    let disk = SmallDisk::new();
    let (policy, inv_dir) = (&disk.policy, &disk.inv_dir);
    let rt = Rt::new(policy);
    let (b, pid_file) = (&disk.bundle, &disk.pid_file);
    let page_size = mlenv::inventory::NEW_PAGE_SIZE.into();
    let frames = || mlenv::inventory::wal_frames_at(&policy.inventory, page_size);
    // Containers come and go until one more end makes housekeeping due.
    let mut n = 0;
    let due = mlenv::inventory::WAL_SETTLE_FRAMES - 10;
    while frames() < due {
        let id = format!("c{n}");
        rt.create_detached(b, pid_file, &id);
        ok(&mut rt.cmd(&["delete", "--force", &id]));
        n += 1;
    }
    rt.create_detached(b, pid_file, "last");
    // Full but for 8 KiB: room for the end's few frames, not for the checkpoint, which
    // writes every page in the WAL into a database file that holds almost none.
    let fill = disk.fill(8);

    let o = run(&mut rt.cmd(&["delete", "--force", "last"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "the engine hears nothing of housekeeping");
    assert!(frames() > mlenv::inventory::WAL_SETTLE_FRAMES);
    // Other tests' mlenv calls may speak too: this inventory's line is the one.
    let expected = format!(
        "]: the WAL was not folded into the inventory (creates read it whole until it is): inventory {}: checkpointing the WAL: database or disk is full: the filesystem of {} is full; free space there",
        policy.inventory.display(),
        inv_dir.display()
    );
    let line = syslog.line_with(&format!("inventory {}:", policy.inventory.display()));
    assert!(
        line.starts_with("<28>mlenv-runtime[") && line.ends_with(&expected),
        "{line}"
    );

    // Room again: the next delete's housekeeping folds the WAL in.
    fs::remove_file(&fill).unwrap();
    rt.create_detached(b, pid_file, "after");
    ok(&mut rt.cmd(&["delete", "--force", "after"]));
    until("the WAL folded in", || {
        frames() <= mlenv::inventory::WAL_SETTLE_FRAMES
    });
    assert!(policy.live().is_empty(), "{:?}", policy.live());
}

/// A corrupt inventory met by a create, a delete, or the hook at poststop or recording
/// a container's init, is moved aside and a new one started. Each call still
/// succeeds, and says so on stderr and in the system log: an engine keeps a runtime's
/// or a hook's stderr only when the call fails.
#[test]
fn corrupt_inventory_is_said_in_the_system_log_by_every_call() {
    let test = "fault_corrupt_syslog";
    if !require(test, &["runc"], &[]) {
        return;
    }
    let Some(syslog) = syslog(test) else {
        return;
    };
    let policy = Policy::write(None, "");
    let rt = Rt::new(&policy);
    let (b, pid_file) = sleeper(&policy);
    let inv = &policy.inventory;
    // What each call says, naming the file it moved the inventory to: the newest.
    let said = || {
        let mut aside = mlenv::inventory::Inventory::set_aside_files(inv);
        aside.sort();
        format!(
            "inventory {} was corrupt: moved aside to {}; a new one was started, and containers already running are not counted until they are recreated",
            inv.display(),
            aside.last().expect("the corrupt inventory moved aside").display()
        )
    };
    let hook = |args: &[&str], state: serde_json::Value| {
        let mut c = Command::new(Path::new(runtime()).with_file_name("mlenv-hook"));
        c.env("MLENV_CONFIG", &policy.main)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            state.to_string().as_bytes(),
        )
        .unwrap();
        child.wait_with_output().unwrap()
    };

    // The system log has the newest move from `ident`; stderr too, where the call's
    // `out` is at hand (a detached create's streams are closed).
    let told = |ident: &str, out: Option<&std::process::Output>| {
        let msg = said();
        if let Some(o) = out {
            assert!(o.status.success(), "{}", stderr(o));
            let prefix = if ident == "mlenv-hook" {
                ident
            } else {
                "mlenv"
            };
            assert!(
                stderr(o).contains(&format!("{prefix}: warning: {msg}")),
                "{}",
                stderr(o)
            );
        }
        let line = syslog.line_with(&msg);
        assert!(line.starts_with(&format!("<28>{ident}[")), "{line}");
        assert!(line.ends_with(&format!("]: {msg}")), "{line}");
    };

    // A create.
    rt.create_detached(&b, &pid_file, "c0");
    corrupt(inv);
    rt.create_detached(&b, &pid_file, "c1");
    told("mlenv-runtime", None);
    ok(&mut rt.cmd(&["delete", "--force", "c0"]));

    // A delete.
    corrupt(inv);
    let o = run(&mut rt.cmd(&["delete", "--force", "c1"]));
    told("mlenv-runtime", Some(&o));

    // The hook at poststop.
    corrupt(inv);
    let o = hook(
        &["poststop"],
        json!({"id": "c2", "bundle": b, "status": "stopped"}),
    );
    told("mlenv-hook", Some(&o));

    // The hook recording the init process of a container mlenv-runtime admitted (this
    // test process stands in for it).
    corrupt(inv);
    let o = hook(
        &["createRuntime", "--recorded"],
        json!({"id": "c3", "pid": std::process::id(), "bundle": b, "status": "creating"}),
    );
    told("mlenv-hook", Some(&o));
    assert_eq!(mlenv::inventory::Inventory::set_aside_files(inv).len(), 4);
    assert!(policy.live().is_empty(), "{:?}", policy.live());
}

/// While containers start one after another, the policy file is replaced by garbage
/// and back again and again. Each create is admitted under a valid policy or refused
/// with the documented message; under `on_invalid_policy = "last-known-good"` each is
/// admitted. Every delete works and nothing stays live or leased.
#[test]
fn policy_replaced_by_garbage_while_containers_start() {
    if !require("fault_policy", &["runc", "mknod"], &[]) {
        return;
    }
    let host = GpuHost::new(&one_gpu(), 1);
    for fallback in [false, true] {
        let policy = Policy::write(None, &host.policy("devices"));
        if fallback {
            fs::write(
                policy.main.with_file_name("conf.d/10-fallback.toml"),
                "on_invalid_policy = \"last-known-good\"\n",
            )
            .unwrap();
        }
        let good = fs::read(&policy.main).unwrap();
        let rt = Rt::new(&policy);
        let b = policy.dir.path().join("bundle");
        bundle(&b, &["sleep", "600"], json!({}));
        let pristine = fs::read(b.join("config.json")).unwrap();
        let pid_file = policy.dir.path().join("init.pid");
        // One valid create first: the last-known-good copy.
        rt.create_detached(&b, &pid_file, "first");
        ok(&mut rt.cmd(&["delete", "--force", "first"]));

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (main, stop) = (policy.main.clone(), stop.clone());
            let good = good.clone();
            std::thread::spawn(move || {
                let mut garbage = true;
                let tmp = main.with_extension("tmp");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Replaced whole (renamed over), as an editor or config tool does.
                    let bytes: &[u8] = if garbage {
                        b"[gpu\ninject = ]]] \x00garbage"
                    } else {
                        &good
                    };
                    fs::write(&tmp, bytes).unwrap();
                    fs::rename(&tmp, &main).unwrap();
                    garbage = !garbage;
                    std::thread::sleep(Duration::from_millis(3));
                }
                fs::write(&tmp, &good).unwrap();
                fs::rename(&tmp, &main).unwrap();
            })
        };
        let (mut admitted, mut refused) = (0, 0);
        for i in 0..30 {
            fs::write(b.join("config.json"), &pristine).unwrap();
            let id = format!("flip{i}");
            let created = rt.create_cmd(&b, &pid_file, &id).status().unwrap();
            if created.success() {
                admitted += 1;
                ok(&mut rt.cmd(&["start", &id]));
                ok(&mut rt.cmd(&["delete", "--force", &id]));
            } else {
                refused += 1;
                let msg = rt.last_log_error();
                assert!(
                    msg.starts_with("mlenv: policy invalid: ")
                        && msg.ends_with("fix it and check with `mlenv policy check`"),
                    "{msg}"
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().unwrap();
        if fallback {
            assert_eq!(refused, 0, "the last-known-good policy stands in");
        }
        assert!(admitted > 0);
        assert!(policy.live().is_empty(), "{:?}", policy.live());
        assert_eq!(open_leases(&policy.inventory), 0);
    }
}
