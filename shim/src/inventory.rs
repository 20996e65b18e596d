//! The SQLite inventory: every create decision, and the containers that live.
//!
//! One file, WAL mode so readers (`mlenv ps`) never block a create, a busy timeout so
//! concurrent creates queue instead of failing, and a schema versioned with
//! `PRAGMA user_version` and forward-only migrations.

use crate::admission::{LiveUsage, Usage};
use crate::clock::rfc3339;
use crate::edits::Limits;
use crate::gpu::mps::Share;
use crate::gpu::select::{Granted, LiveLease};
use crate::host::Host;
use crate::liveness::{self, Liveness, Tracked};
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// A failed statement inside a transaction: what was being done, and SQLite's error.
type Failed = (&'static str, rusqlite::Error);
use std::time::Duration;

/// The page size of a new inventory. Each page a commit changes is a frame in the
/// WAL, which every first opener re-reads to index it and a checkpoint writes back;
/// a create and its end change some 11 pages for rows of a few hundred bytes, 11 KiB
/// of WAL at 1 KiB against 37 KiB at SQLite's default 4 KiB, which inventories made
/// before schema version 7 keep (docs/benchmarks.md).
pub const NEW_PAGE_SIZE: u32 = 1024;

/// The WAL frames past which a create checkpoints it itself: only reached when no
/// delete has.
pub const WAL_CHECKPOINT_FRAMES: u64 = 512;

/// The WAL frames past which a delete's housekeeping checkpoints it, about every
/// tenth container. Each first opener re-reads the WAL to index it; each checkpoint
/// costs three or four fsyncs, which delay the engine's own disk writes even from a
/// process of their own (docs/benchmarks.md).
pub const WAL_SETTLE_FRAMES: u64 = 128;

/// How long a writer waits for another before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the end a delete records waits for another writer
/// ([`Inventory::wait_briefly`]): the container is gone already and the engine is
/// waiting for the delete, while a row left live is ended by liveness at the next
/// capacity check or `mlenv gc`.
const BRIEF_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Waiting for the write lock: SQLite's default handler sleeps 1, 2, 5, 10 ... 100 ms
/// between tries, so that a create queued behind a burst of others (each holding the
/// lock for well under a millisecond) could wait a tenth of a second more than it
/// had to: 64 creates at once measured a 968 ms slowest create. This one tries every
/// 0.25 ms for the first 50 ms, then every 2 ms, up to [`BUSY_TIMEOUT`].
fn busy(tries: i32) -> bool {
    busy_within(tries, BUSY_TIMEOUT)
}

/// [`busy`], up to [`BRIEF_BUSY_TIMEOUT`].
fn busy_briefly(tries: i32) -> bool {
    busy_within(tries, BRIEF_BUSY_TIMEOUT)
}

fn busy_within(tries: i32, limit: Duration) -> bool {
    const FAST: i32 = 200;
    const FAST_SLEEP: Duration = Duration::from_micros(250);
    const SLOW_SLEEP: Duration = Duration::from_millis(2);
    let waited = if tries < FAST {
        FAST_SLEEP * tries as u32
    } else {
        FAST_SLEEP * FAST as u32 + SLOW_SLEEP * (tries - FAST) as u32
    };
    if waited >= limit {
        return false;
    }
    std::thread::sleep(if tries < FAST { FAST_SLEEP } else { SLOW_SLEEP });
    true
}

/// Forward-only migrations; entry N takes the schema from version N to N+1.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE decisions (
    id           INTEGER PRIMARY KEY,
    time_ms      INTEGER NOT NULL,
    container_id TEXT NOT NULL,
    root         TEXT,
    bundle       TEXT NOT NULL,
    uid          INTEGER NOT NULL,
    gid          INTEGER NOT NULL,
    project      TEXT,
    decision     TEXT NOT NULL CHECK (decision IN ('admitted', 'refused', 'error')),
    reason       TEXT NOT NULL,
    req_memory   INTEGER, req_swap INTEGER, req_cpus REAL, req_pids INTEGER,
    eff_memory   INTEGER, eff_swap INTEGER, eff_cpus REAL, eff_pids INTEGER,
    detail       TEXT NOT NULL
);
CREATE INDEX decisions_time ON decisions(time_ms);
CREATE INDEX decisions_container ON decisions(container_id);
CREATE TABLE containers (
    id           INTEGER PRIMARY KEY,
    decision_id  INTEGER NOT NULL REFERENCES decisions(id),
    container_id TEXT NOT NULL,
    root         TEXT,
    created_ms   INTEGER NOT NULL,
    ended_ms     INTEGER,
    end_reason   TEXT,
    uid          INTEGER NOT NULL,
    gid          INTEGER NOT NULL,
    project      TEXT,
    memory       INTEGER, swap INTEGER, cpus REAL, pids INTEGER
);
CREATE INDEX containers_live ON containers(container_id) WHERE ended_ms IS NULL;
"#,
    r#"
ALTER TABLE containers ADD COLUMN creator_pid INTEGER;
ALTER TABLE containers ADD COLUMN creator_start INTEGER;
CREATE INDEX containers_live_uid ON containers(uid) WHERE ended_ms IS NULL;
CREATE INDEX containers_live_project ON containers(project) WHERE ended_ms IS NULL;
"#,
    r#"
ALTER TABLE containers ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
CREATE TABLE leases (
    id            INTEGER PRIMARY KEY,
    container_row INTEGER NOT NULL REFERENCES containers(id),
    gpu_uuid      TEXT NOT NULL,
    gpu_index     INTEGER NOT NULL,
    exclusive     INTEGER NOT NULL DEFAULT 1,
    released_ms   INTEGER
);
-- At most one live exclusive lease per GPU: the database itself refuses a second.
CREATE UNIQUE INDEX leases_exclusive ON leases(gpu_uuid)
    WHERE released_ms IS NULL AND exclusive = 1;
CREATE INDEX leases_live ON leases(container_row) WHERE released_ms IS NULL;
-- A lease ends with its container, whichever path ends it (delete, reconciliation,
-- replacement, the poststop hook).
CREATE TRIGGER leases_release AFTER UPDATE OF ended_ms ON containers
    WHEN NEW.ended_ms IS NOT NULL AND OLD.ended_ms IS NULL
BEGIN
    UPDATE leases SET released_ms = NEW.ended_ms
    WHERE container_row = NEW.id AND released_ms IS NULL;
END;
"#,
    r#"
ALTER TABLE leases ADD COLUMN mps_memory INTEGER;
ALTER TABLE leases ADD COLUMN mps_threads INTEGER;
"#,
    // The container's own init process, recorded by mlenv-hook at prestart or by a
    // liveness check from the runtime's state: liveness is then that process, exactly.
    r#"
ALTER TABLE containers ADD COLUMN init_pid INTEGER;
ALTER TABLE containers ADD COLUMN init_start INTEGER;
"#,
    // Retention asks for the oldest ended container after every few deletes: an
    // index, not a scan of every row ever recorded.
    r#"
CREATE INDEX containers_ended ON containers(ended_ms) WHERE ended_ms IS NOT NULL;
"#,
    // Quotas are summed in one pass over the live rows (`containers_live`), not by
    // user or project: these two were written on every create and end and read by no
    // query, and each open parses every index's `CREATE`.
    r#"
DROP INDEX containers_live_uid;
DROP INDEX containers_live_project;
"#,
];

/// Ends the live container ?3 (under root ?5, or any root when ?4) at ?1 for reason ?2.
const END: &str = "UPDATE containers SET ended_ms = ?1, end_reason = ?2
                   WHERE container_id = ?3 AND (?4 OR root IS ?5) AND ended_ms IS NULL";

/// Records the init process (?1, started at ?2) of the live container ?3.
const STARTED: &str = "UPDATE containers SET init_pid = ?1, init_start = ?2
                       WHERE container_id = ?3 AND ended_ms IS NULL";

/// Whether anything is older than the cutoff ?1: by index on both sides (the
/// decisions' time, the containers' end), so that it costs the same at 100,000 rows.
const PRUNE_DUE: &str = "SELECT EXISTS (SELECT 1 FROM decisions WHERE time_ms < ?1
                                   AND id NOT IN (SELECT decision_id FROM containers))
                      OR EXISTS (SELECT 1 FROM containers WHERE ended_ms < ?1)";

/// New limits of a live container: per limit, `None` leaves it, `Some(None)` lifts
/// it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitChange {
    pub memory: Option<Option<u64>>,
    pub cpus: Option<Option<f64>>,
    pub pids: Option<Option<i64>>,
}

/// A live container as an update of its limits sees it: whose it is and what it
/// holds now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    pub uid: u32,
    pub project: Option<String>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub gpus: u32,
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub decisions: usize,
    pub containers: usize,
}

/// The thread of [`Inventory::open_in_background`]: None when it was never told a path.
type OpenerThread = std::thread::JoinHandle<Option<Result<Inventory, InventoryError>>>;

/// A thread started by [`Inventory::open_in_background`], SQLite initialised on it,
/// waiting for the inventory's path. Dropped untold, it ends without opening anything.
pub struct Opener {
    thread: Option<OpenerThread>,
    /// The thread kept off the caller's CPU while the caller works.
    moved: Option<crate::affinity::Moved>,
    path: std::sync::mpsc::SyncSender<PathBuf>,
}

impl Opener {
    /// Opens the inventory at `path` on the thread.
    pub fn open(self, path: &Path) -> Opening {
        // A thread that is gone (it panicked) leaves the open to `wait`.
        let _ = self.path.send(path.to_path_buf());
        Opening {
            path: path.to_path_buf(),
            thread: self.thread,
            moved: self.moved,
        }
    }
}

/// An inventory being opened by [`Opener::open`].
pub struct Opening {
    path: PathBuf,
    thread: Option<OpenerThread>,
    moved: Option<crate::affinity::Moved>,
}

impl Opening {
    /// The inventory, once open: as [`Inventory::open`] would have returned it.
    pub fn wait(self) -> Result<Inventory, InventoryError> {
        if let Some(moved) = self.moved {
            moved.back();
        }
        match self.thread.map(std::thread::JoinHandle::join) {
            Some(Ok(Some(opened))) => opened,
            // Never started, or panicked (a panic here again is this thread's own).
            _ => Inventory::open(&self.path),
        }
    }
}

/// How a live container is told from a dead one: the process creating it (until
/// the runtime has state), and its init process once the hook has seen it. Each is a
/// pid and its start time, so that a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Track {
    pub creator: Option<(u32, u64)>,
    pub init: Option<(u32, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot create inventory directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open inventory {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("inventory {path} has schema version {found}, newer than this mlenv knows ({known}); upgrade mlenv")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("inventory {path}: {what}: {source}")]
    Sql {
        path: PathBuf,
        what: &'static str,
        source: rusqlite::Error,
    },
    /// An [`InventoryError::Sql`] for lack of space.
    #[error("{error}: the filesystem of {dir} is full; free space there")]
    Full {
        dir: PathBuf,
        error: Box<InventoryError>,
    },
    #[error("inventory {path} is corrupt and cannot be moved aside: {source}; move it away by hand (mlenv makes a new one)")]
    SetAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An SQLite error on the inventory at `path`. A write that failed for lack of space
/// (SQLite says "disk is full", or, growing its shared-memory file, "disk I/O error")
/// is named as such when the inventory's filesystem has no room left.
fn sql_error(path: &Path, what: &'static str, source: rusqlite::Error) -> InventoryError {
    use rusqlite::ErrorCode::{DiskFull, SystemIoFailure};
    if matches!(source.sqlite_error_code(), Some(DiskFull | SystemIoFailure)) {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if nix::sys::statvfs::statvfs(dir).is_ok_and(|v| v.blocks_available() == 0) {
            return InventoryError::Full {
                dir: dir.to_path_buf(),
                error: Box::new(InventoryError::Sql {
                    path: path.to_path_buf(),
                    what,
                    source,
                }),
            };
        }
    }
    InventoryError::Sql {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The frames in the WAL of the inventory at `path` whose pages are `page_size`
/// bytes (0 when there is none), from its size: a 32-byte header, then each frame a
/// 24-byte header and a page.
pub fn wal_frames_at(path: &Path, page_size: u64) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let bytes = fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    bytes.saturating_sub(32) / (page_size.max(512) + 24)
}

/// Another connection holds what the statement needs: it may succeed later.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl InventoryError {
    /// The file is not a database, or its pages are damaged: it cannot be repaired
    /// in place.
    pub fn is_corrupt(&self) -> bool {
        let source = match self {
            InventoryError::Open { source, .. } | InventoryError::Sql { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    }
}

/// What a corrupt inventory became: the file it was moved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub moved_to: PathBuf,
}

/// The suffix of an inventory moved aside: `mlenv.db.corrupt-<ms since the epoch>`.
pub const CORRUPT_SUFFIX: &str = ".corrupt-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Admitted,
    Refused,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "admitted" => Outcome::Admitted,
            "refused" => Outcome::Refused,
            _ => Outcome::Error,
        }
    }
}

/// One create decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub id: i64,
    pub time_ms: i64,
    pub container_id: String,
    pub root: Option<String>,
    pub bundle: String,
    pub uid: u32,
    pub gid: u32,
    pub project: Option<String>,
    pub outcome: Outcome,
    pub reason: String,
    pub requested: Limits,
    pub effective: Limits,
    /// Free-form record of what was done (edits, policy files), for `explain`.
    pub detail: serde_json::Value,
    /// GPUs leased to the container when admitted (exclusive).
    pub leases: Vec<Granted>,
}

/// An admitted container not yet deleted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Live {
    pub container_id: String,
    pub root: Option<String>,
    pub created_ms: i64,
    pub uid: u32,
    pub gid: u32,
    pub project: Option<String>,
    pub limits: Limits,
    pub decision_id: i64,
    /// Indexes of the GPUs it holds.
    pub gpus: Vec<u32>,
    /// Its init process on the host, once recorded: by mlenv-hook, or by a liveness
    /// check that found it in the runtime's state (`mlenv ps` makes one).
    pub pid: Option<u32>,
}

pub struct Inventory {
    conn: Connection,
    path: PathBuf,
    /// The inode opened, so that a corrupt file is only moved aside while it is
    /// still the one at `path` (a racing create may have replaced it already).
    ino: Option<(u64, u64)>,
    /// Set when the file found at `path` was corrupt and this is a new one.
    pub set_aside: Option<SetAside>,
    /// The database's page size, which a WAL frame holds (0 where read-only: such a
    /// connection never checkpoints).
    page_size: u64,
}

impl Inventory {
    /// Opens (creating if needed) the inventory at `path` and brings its schema up to
    /// date. A file that is not a database, or whose schema cannot be read, is moved
    /// aside ([`Inventory::set_aside`]) and a new inventory made in its place.
    pub fn open(path: &Path) -> Result<Inventory, InventoryError> {
        match Inventory::open_as_is(path) {
            Err(e) if e.is_corrupt() => Inventory::start_again(path, None),
            other => other,
        }
    }

    /// [`Inventory::open`] on a thread of its own, for a caller with other work to do
    /// meanwhile: a create reads its spec and the host while SQLite reads the schema
    /// and rebuilds the WAL index, each some 0.3 to 0.4 ms (docs/benchmarks.md). The
    /// thread starts before the path is known ([`Opener::open`] tells it), so that
    /// its start and SQLite's initialisation overlap the policy's reading. It is kept
    /// off the caller's CPU until [`Opening::wait`], so that it runs beside the
    /// caller, not after it ([`crate::affinity`]). Where no thread can be started,
    /// [`Opening::wait`] opens it then.
    pub fn open_in_background() -> Opener {
        let (path, told) = std::sync::mpsc::sync_channel::<PathBuf>(1);
        let thread = std::thread::Builder::new()
            .name("inventory".into())
            .stack_size(512 * 1024)
            .spawn(move || {
                // SAFETY: no argument; safe to call at any time, from any thread, and
                // again. An error here comes back again from the open below.
                unsafe { rusqlite::ffi::sqlite3_initialize() };
                let path = told.recv().ok()?;
                Some(Inventory::open(&path))
            })
            .ok();
        let moved = thread.as_ref().and_then(crate::affinity::elsewhere);
        Opener {
            thread,
            moved,
            path,
        }
    }

    /// Opens an existing inventory to read only: no database created, migrated,
    /// recovered or checkpointed (SQLite may still create its `-shm` and `-wal`
    /// files beside it). For lookups off the decision path (`exec`), which must not
    /// change the data. A WAL reader waits on no writer, only on brief exclusive
    /// moments (another opener rebuilding the WAL index): [`BRIEF_BUSY_TIMEOUT`].
    pub fn open_to_read(path: &Path) -> Result<Inventory, InventoryError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| InventoryError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut inv = Inventory {
            conn,
            path: path.to_path_buf(),
            ino: None,
            set_aside: None,
            page_size: 0,
        };
        inv.conn
            .busy_handler(Some(busy_briefly))
            .map_err(|e| inv.sql("setting the busy timeout", e))?;
        Ok(inv)
    }

    /// After `e`, an error of this connection: when it says the file is corrupt,
    /// moves it aside and returns a new inventory in its place (the caller does
    /// again what failed); otherwise gives `e` back.
    pub fn recover(self, e: InventoryError) -> Result<Inventory, InventoryError> {
        if !e.is_corrupt() {
            return Err(e);
        }
        let Inventory {
            conn, path, ino, ..
        } = self;
        drop(conn);
        Inventory::start_again(&path, ino)
    }

    /// From now on a write waits [`BRIEF_BUSY_TIMEOUT`] for another writer, not
    /// [`BUSY_TIMEOUT`]: for work that may be left undone, not for decisions.
    pub fn wait_briefly(&mut self) -> Result<(), InventoryError> {
        self.conn
            .busy_handler(Some(busy_briefly))
            .map_err(|e| self.sql("setting the busy timeout", e))
    }

    /// Moves the corrupt file aside ([`Inventory::move_aside`]) and opens a new
    /// inventory in its place, saying what was moved.
    fn start_again(path: &Path, ino: Option<(u64, u64)>) -> Result<Inventory, InventoryError> {
        let moved = Inventory::move_aside(path, ino)?;
        let mut inv = Inventory::open_as_is(path)?;
        inv.set_aside = moved;
        Ok(inv)
    }

    /// Renames the inventory and its WAL and shm files to `<path>.corrupt-<ms>`
    /// (`-wal`, `-shm`). `ino`: only if the file is still that one. None when there
    /// was nothing to move.
    fn move_aside(
        path: &Path,
        ino: Option<(u64, u64)>,
    ) -> Result<Option<SetAside>, InventoryError> {
        use std::os::unix::fs::MetadataExt;
        let err = |source| InventoryError::SetAside {
            path: path.to_path_buf(),
            source,
        };
        match fs::symlink_metadata(path) {
            Ok(m) if ino.is_none_or(|i| i == (m.dev(), m.ino())) => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut moved_to = path.as_os_str().to_owned();
        moved_to.push(format!("{CORRUPT_SUFFIX}{ms}"));
        let moved_to = PathBuf::from(moved_to);
        fs::rename(path, &moved_to).map_err(err)?;
        for side in ["-wal", "-shm"] {
            let mut from = path.as_os_str().to_owned();
            from.push(side);
            let mut to = moved_to.as_os_str().to_owned();
            to.push(side);
            match fs::rename(&from, &to) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
                _ => {}
            }
        }
        Ok(Some(SetAside { moved_to }))
    }

    /// The inventories moved aside beside `path`, oldest first.
    pub fn set_aside_files(path: &Path) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Vec::new();
        };
        let prefix = format!("{}{CORRUPT_SUFFIX}", name.to_string_lossy());
        let mut out: Vec<PathBuf> = fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && !n.ends_with("-wal") && !n.ends_with("-shm")
            })
        })
        .collect();
        out.sort();
        out
    }

    fn open_as_is(path: &Path) -> Result<Inventory, InventoryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| InventoryError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| InventoryError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let ino = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
        };
        let mut inv = Inventory {
            conn,
            path: path.to_path_buf(),
            ino,
            set_aside: None,
            page_size: 0,
        };
        inv.conn
            .busy_handler(Some(busy))
            .map_err(|e| inv.sql("setting the busy timeout", e))?;
        // WAL: readers never block the writer. NORMAL: a commit is atomic and the file
        // stays consistent through a crash or power loss; the last commits before a
        // power loss may be lost, which the containers they describe are too.
        inv.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| inv.sql("setting synchronous", e))?;
        inv.manage_checkpoints()?;
        inv.migrate()?;
        inv.page_size = inv
            .conn
            .pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))
            .map_err(|e| inv.sql("reading the page size", e))? as u64;
        Ok(inv)
    }

    /// Every create is a new, short-lived connection. By default the last connection
    /// to close checkpoints the WAL into the database, with three fsyncs, and deletes
    /// the WAL and shm files for the next create to make again: most of mlenv's own
    /// cost on a create (docs/benchmarks.md). Instead: no checkpoint on close, the WAL
    /// file kept, and checkpoints taken where they cost nobody's latency ([`settle`]).
    /// The WAL must stay short, because every first opener re-reads it whole to
    /// rebuild its index. (SQLite's own automatic checkpoint, at 1000 pages, never
    /// comes first.)
    ///
    /// [`settle`]: Inventory::settle
    fn manage_checkpoints(&mut self) -> Result<(), InventoryError> {
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| self.sql("configuring checkpoints", e))?;
        let mut persist: std::ffi::c_int = 1;
        // SAFETY: the handle is valid while `self.conn` lives; PERSIST_WAL reads and
        // writes the int behind the pointer during the call only.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_file_control(
                self.conn.handle(),
                c"main".as_ptr(),
                rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
                (&mut persist as *mut std::ffi::c_int).cast(),
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            return Err(self.sql(
                "keeping the WAL file",
                rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), None),
            ));
        }
        Ok(())
    }

    /// The frames in the WAL (0 when there is none).
    pub fn wal_frames(&self) -> u64 {
        wal_frames_at(&self.path, self.page_size)
    }

    /// Whether [`settle`](Self::settle)`(true)` would checkpoint: the WAL is past
    /// [`WAL_SETTLE_FRAMES`]. A delete then leaves the work to a process of its own,
    /// after it has returned.
    pub fn settle_due(&self) -> bool {
        self.wal_frames() > WAL_SETTLE_FRAMES
    }

    /// [`try_settle`](Self::try_settle)`(true)`, its failure as the admin is told it:
    /// by the housekeeping after a delete, and by the hook at poststop.
    pub fn settle_or_say(&mut self) -> Option<String> {
        self.try_settle(true).err().map(|e| {
            format!(
                "the WAL was not folded into the inventory (creates read it whole until it is): {e}"
            )
        })
    }

    /// What the admin is told when this opening moved a corrupt inventory aside, by
    /// whichever call opened it.
    pub fn set_aside_warning(&self) -> Option<String> {
        self.set_aside.as_ref().map(|aside| {
            format!(
                "inventory {} was corrupt: moved aside to {}; a new one was started, and containers already running are not counted until they are recreated",
                self.path.display(),
                aside.moved_to.display()
            )
        })
    }

    /// Checkpoints the WAL into the database and truncates it once it has grown past
    /// [`WAL_CHECKPOINT_FRAMES`] (`force`: housekeeping nobody waits on, past
    /// [`WAL_SETTLE_FRAMES`]). Best effort: a checkpoint that cannot run now (a
    /// reader holds old frames) is taken by a later call.
    ///
    /// After a forced checkpoint, one page is written at once: the first write to an
    /// empty WAL syncs its new header (two fsyncs), and that belongs here, not in the
    /// next create.
    pub fn settle(&mut self, force: bool) {
        let _ = self.try_settle(force);
    }

    /// [`settle`](Self::settle), saying why a checkpoint failed (a full disk, an I/O
    /// error), for a caller that can report it. A checkpoint held off by readers or
    /// another writer is not a failure: a later call takes it.
    pub fn try_settle(&mut self, force: bool) -> Result<(), InventoryError> {
        let limit = if force {
            WAL_SETTLE_FRAMES
        } else {
            WAL_CHECKPOINT_FRAMES
        };
        if self.wal_frames() <= limit {
            return Ok(());
        }
        // PASSIVE first: the copy into the database and its fsyncs, without holding
        // off writers. TRUNCATE then blocks new writers only for what came since.
        // (busy, frames in the WAL, frames checkpointed): busy 0 and the WAL emptied.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        let done = match self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok(r.get::<_, i64>(0)? == 0 && r.get::<_, i64>(1)? == 0)
            }) {
            Ok(done) => done,
            Err(e) if is_busy(&e) => false,
            Err(e) => return Err(self.sql("checkpointing the WAL", e)),
        };
        if done && force {
            let _ = self
                .conn
                .pragma_update(None, "user_version", MIGRATIONS.len() as i64);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, what: &'static str, source: rusqlite::Error) -> InventoryError {
        sql_error(&self.path, what, source)
    }

    pub fn schema_version(&self) -> Result<i64, InventoryError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql("reading the schema version", e))
    }

    fn migrate(&mut self) -> Result<(), InventoryError> {
        let known = MIGRATIONS.len() as i64;
        if self.schema_version()? == known {
            return Ok(());
        }
        // The page size: only a new, empty database takes it, and keeps it in the
        // file; before WAL is on, which writes the first page.
        self.conn
            .pragma_update(None, "page_size", NEW_PAGE_SIZE)
            .map_err(|e| self.sql("setting the page size", e))?;
        // The journal mode is kept in the file: set once, here, not on every open.
        // (It cannot change inside a transaction.)
        // Switching to WAL needs the database to itself, and SQLite answers "locked"
        // at once (no busy handler) while racing first openers hold it: retry until
        // one of them has switched it, within the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            let mode: String = self
                .conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .map_err(|e| self.sql("reading the journal mode", e))?;
            if mode.eq_ignore_ascii_case("wal") {
                break;
            }
            match self.conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(self.sql("enabling WAL", e)),
            }
        }
        let path = self.path.clone();
        let sql = |what, source| sql_error(&path, what, source);
        // Immediate: two first creates racing must not both migrate.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql("starting the migration", e))?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| sql("reading the schema version", e))?;
        if found > known {
            return Err(InventoryError::TooNew { path, found, known });
        }
        for step in &MIGRATIONS[found as usize..] {
            tx.execute_batch(step)
                .map_err(|e| sql("migrating the schema", e))?;
        }
        tx.pragma_update(None, "user_version", known)
            .map_err(|e| sql("setting the schema version", e))?;
        tx.commit().map_err(|e| sql("committing the migration", e))
    }

    /// Runs `f` in one immediate transaction (the write lock taken up front, so that
    /// what it reads cannot change before it writes) and commits.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction) -> Result<T, Failed>,
    ) -> Result<T, InventoryError> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| ("starting a transaction", e))?;
            let out = f(&tx)?;
            tx.commit().map_err(|e| ("committing", e))?;
            Ok(out)
        })();
        result.map_err(|(what, e)| self.sql(what, e))
    }

    /// Records a decision made elsewhere (an error). Returns the decision's id.
    pub fn record(&mut self, d: &Decision) -> Result<i64, InventoryError> {
        let id = self.write(|tx| insert(tx, d, Track::default()))?;
        self.settle(false);
        Ok(id)
    }

    /// Decides and records in one immediate transaction, so that racing creates see
    /// each other: `decide` is given what live containers hold (all of them, this
    /// user's, this project's) and fills in the decision. When it refuses for lack of
    /// capacity (returns `true`), the counted containers are checked against the
    /// runtime first and, if any was gone, it decides again. An admitted container
    /// becomes live, tracked by its creating process. Returns the decision's id.
    pub fn admit<F>(
        &mut self,
        d: &mut Decision,
        track: Track,
        host: &dyn Host,
        mut decide: F,
    ) -> Result<i64, InventoryError>
    where
        F: FnMut(&LiveUsage, &mut Decision) -> bool,
    {
        let id = self.write(|tx| {
            let usage = |d: &Decision| {
                live_usage(tx, d.uid, d.project.as_deref())
                    .map_err(|e| ("summing live containers", e))
            };
            if decide(&usage(d)?, d) {
                let ended = reconcile_in(tx, host, d.time_ms)
                    .map_err(|e| ("checking live containers", e))?;
                if ended > 0 {
                    decide(&usage(d)?, d);
                }
            }
            insert(tx, d, track)
        })?;
        d.id = id;
        self.settle(false);
        Ok(id)
    }

    /// Ends every live container whose process is gone. Returns how many.
    pub fn reconcile(&mut self, host: &dyn Host, now_ms: i64) -> Result<usize, InventoryError> {
        let n = self.write(|tx| {
            reconcile_in(tx, host, now_ms).map_err(|e| ("checking live containers", e))
        })?;
        self.settle(true);
        Ok(n)
    }

    /// Marks the live container `id` (under runtime root `root`) ended. Returns how
    /// many rows changed (0: it was not live).
    pub fn end(
        &mut self,
        container_id: &str,
        root: Option<&str>,
        now_ms: i64,
        reason: &str,
    ) -> Result<usize, InventoryError> {
        self.end_where(container_id, Some(root), now_ms, reason)
    }

    /// `root`: `Some(r)` ends the row under runtime root `r` (None: no `--root`),
    /// `None` ends it under any root.
    fn end_where(
        &mut self,
        container_id: &str,
        root: Option<Option<&str>>,
        now_ms: i64,
        reason: &str,
    ) -> Result<usize, InventoryError> {
        let n = self.write(|tx| {
            tx.prepare_cached(END)
                .and_then(|mut end| {
                    end.execute(params![
                        now_ms,
                        reason,
                        container_id,
                        root.is_none(),
                        root.flatten()
                    ])
                })
                .map_err(|e| ("ending the container", e))
        })?;
        Ok(n)
    }

    /// Records the init process of the live container `id` (from the lifecycle
    /// hook, or from the pid file of a runtime mlenv-runtime waited for). Returns how
    /// many rows changed (0: no such live container).
    pub fn started(
        &mut self,
        container_id: &str,
        init: (u32, u64),
    ) -> Result<usize, InventoryError> {
        self.write(|tx| {
            tx.prepare_cached(STARTED)
                .and_then(|mut started| {
                    started.execute(params![init.0, init.1 as i64, container_id])
                })
                .map_err(|e| ("recording the init process", e))
        })
    }

    /// Compiles [`end`](Self::end)'s statement (the lease trigger coded in) into the
    /// connection's statement cache: for a delete, which holds the connection while
    /// runc deletes, so that only the commit is left once runc has returned and the
    /// engine waits. Best effort.
    pub fn prepare_end(&self) {
        let _ = self.conn.prepare_cached(END);
    }

    /// [`started`](Self::started)'s statement, compiled ahead as
    /// [`prepare_end`](Self::prepare_end) does: for a create waiting for its runtime.
    pub fn prepare_started(&self) {
        let _ = self.conn.prepare_cached(STARTED);
    }

    /// Records new limits of the live container `id` (under runtime root `root`, or
    /// recorded by the hook with none) after an update, in one immediate transaction
    /// with `check`: it is given the container and what every *other* live container
    /// holds (all, its user's, its project's), and returns the refusals; with none,
    /// memory and CPUs count in reservations and quotas from then on. As for a
    /// create, a refusal is made again after ending the counted containers that are
    /// gone ([`Host`]), if any was. `None` in `change` leaves a limit as it is.
    /// `Ok(Ok(0))`: no such live container, nothing checked.
    pub fn update_limits(
        &mut self,
        container_id: &str,
        root: Option<&str>,
        change: LimitChange,
        host: &dyn Host,
        now_ms: i64,
        mut check: impl FnMut(&Held, &LiveUsage) -> Vec<String>,
    ) -> Result<Result<usize, Vec<String>>, InventoryError> {
        let LimitChange { memory, cpus, pids } = change;
        self.write(|tx| {
            // The container, and what the others hold.
            let read = || -> Result<Option<(i64, Held, LiveUsage)>, Failed> {
                let found = tx
                    .query_row(
                        "SELECT id, uid, project, memory, cpus, gpus FROM containers
                         WHERE container_id = ?1 AND (root IS ?2 OR root IS NULL)
                           AND ended_ms IS NULL
                         ORDER BY root IS ?2 DESC, id DESC LIMIT 1",
                        params![container_id, root],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                Held {
                                    uid: r.get(1)?,
                                    project: r.get(2)?,
                                    memory: r.get::<_, Option<i64>>(3)?.map(|m| m as u64),
                                    cpus: r.get(4)?,
                                    gpus: r.get(5)?,
                                },
                            ))
                        },
                    )
                    .optional()
                    .map_err(|e| ("looking up the container", e))?;
                let Some((row, held)) = found else {
                    return Ok(None);
                };
                let mut others = live_usage(tx, held.uid, held.project.as_deref())
                    .map_err(|e| ("summing live containers", e))?;
                others.all.remove(&held);
                others.user.remove(&held);
                if held.project.is_some() {
                    others.project.remove(&held);
                }
                Ok(Some((row, held, others)))
            };
            let Some((mut row, held, others)) = read()? else {
                return Ok(Ok(0));
            };
            let mut refusals = check(&held, &others);
            if !refusals.is_empty()
                && reconcile_in(tx, host, now_ms).map_err(|e| ("checking live containers", e))? > 0
            {
                // Read again: the container itself may be among those gone.
                let Some((again, held, others)) = read()? else {
                    return Ok(Ok(0));
                };
                row = again;
                refusals = check(&held, &others);
            }
            if !refusals.is_empty() {
                return Ok(Err(refusals));
            }
            tx.execute(
                "UPDATE containers SET
                    memory = CASE WHEN ?1 THEN ?2 ELSE memory END,
                    cpus = CASE WHEN ?3 THEN ?4 ELSE cpus END,
                    pids = CASE WHEN ?5 THEN ?6 ELSE pids END
                 WHERE id = ?7",
                params![
                    memory.is_some(),
                    memory.flatten().map(|m| m as i64),
                    cpus.is_some(),
                    cpus.flatten(),
                    pids.is_some(),
                    pids.flatten(),
                    row
                ],
            )
            .map(Ok)
            .map_err(|e| ("recording updated limits", e))
        })
    }

    /// The bundle of the live container `id` under runtime root `root` (or recorded by
    /// the hook with none): where its config.json, as mlenv handed it over, says whom
    /// its process runs as.
    pub fn live_bundle(
        &self,
        container_id: &str,
        root: Option<&str>,
    ) -> Result<Option<PathBuf>, InventoryError> {
        self.conn
            .query_row(
                "SELECT d.bundle FROM containers c JOIN decisions d ON d.id = c.decision_id
                 WHERE c.container_id = ?1 AND (c.root IS ?2 OR c.root IS NULL)
                   AND c.ended_ms IS NULL
                 ORDER BY c.root IS ?2 DESC, c.id DESC LIMIT 1",
                params![container_id, root],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map(|b| b.map(PathBuf::from))
            .map_err(|e| self.sql("looking up the container's bundle", e))
    }

    /// Whether a container of this id is live (under any runtime root).
    pub fn is_live(&self, container_id: &str) -> Result<bool, InventoryError> {
        self.conn
            .prepare_cached("SELECT 1 FROM containers WHERE container_id = ?1 AND ended_ms IS NULL")
            .and_then(|mut st| st.exists(params![container_id]))
            .map_err(|e| self.sql("looking up the container", e))
    }

    /// Marks every live container of this id ended, whatever its runtime root: the
    /// poststop hook does not know the root. Returns how many rows changed.
    pub fn end_any(
        &mut self,
        container_id: &str,
        now_ms: i64,
        reason: &str,
    ) -> Result<usize, InventoryError> {
        self.end_where(container_id, None, now_ms, reason)
    }

    /// Deletes what ended before `cutoff_ms`: decisions, containers ended before it and
    /// their leases. A decision of a container still live (or ended after the
    /// cutoff) stays, so `mlenv explain` can always say why a live container runs.
    pub fn prune(&mut self, cutoff_ms: i64) -> Result<Pruned, InventoryError> {
        let p = self.write(|tx| {
            let step = |sql: &str, what| tx.execute(sql, params![cutoff_ms]).map_err(|e| (what, e));
            step(
                "DELETE FROM leases WHERE container_row IN
                    (SELECT id FROM containers WHERE ended_ms IS NOT NULL AND ended_ms < ?1)",
                "pruning leases",
            )?;
            let containers = step(
                "DELETE FROM containers WHERE ended_ms IS NOT NULL AND ended_ms < ?1",
                "pruning containers",
            )?;
            let decisions = step(
                "DELETE FROM decisions WHERE time_ms < ?1
                    AND id NOT IN (SELECT decision_id FROM containers)",
                "pruning decisions",
            )?;
            Ok(Pruned {
                decisions,
                containers,
            })
        })?;
        self.settle(true);
        Ok(p)
    }

    /// [`prune`](Self::prune) when something is older than `days` (two lookups that
    /// stop at the first row otherwise): called on deletes, which nobody waits on.
    pub fn prune_if_due(
        &mut self,
        now_ms: i64,
        days: u32,
    ) -> Result<Option<Pruned>, InventoryError> {
        let cutoff = now_ms - i64::from(days) * 86_400_000;
        let due: bool = self
            .conn
            .query_row(PRUNE_DUE, params![cutoff], |r| r.get(0))
            .map_err(|e| self.sql("looking for expired decisions", e))?;
        if due {
            self.prune(cutoff).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Decisions recorded, by outcome.
    pub fn outcome_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, InventoryError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT decision, count(*) FROM decisions GROUP BY decision")
            .map_err(|e| self.sql("counting decisions", e))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .and_then(|rows| rows.collect::<Result<_, _>>())
            .map_err(|e| self.sql("counting decisions", e))?;
        Ok(rows)
    }

    /// The reasons of every refusal recorded.
    pub fn refusal_reasons(&self) -> Result<Vec<String>, InventoryError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT reason FROM decisions WHERE decision = 'refused'")
            .map_err(|e| self.sql("reading refusals", e))?;
        let rows = st
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<_, _>>())
            .map_err(|e| self.sql("reading refusals", e))?;
        Ok(rows)
    }

    /// The GPU leases of live containers.
    pub fn leases(&self) -> Result<Vec<LiveLease>, InventoryError> {
        live_leases(&self.conn).map_err(|e| self.sql("listing GPU leases", e))
    }

    /// Live containers, oldest first.
    pub fn live(&self) -> Result<Vec<Live>, InventoryError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT container_id, root, created_ms, uid, gid, project, memory, swap, cpus,
                        pids, decision_id,
                        (SELECT group_concat(gpu_index) FROM
                            (SELECT gpu_index FROM leases
                             WHERE container_row = c.id AND released_ms IS NULL
                             ORDER BY gpu_index)),
                        init_pid
                 FROM containers c WHERE ended_ms IS NULL ORDER BY created_ms, id",
            )
            .map_err(|e| self.sql("listing live containers", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Live {
                    container_id: r.get(0)?,
                    root: r.get(1)?,
                    created_ms: r.get(2)?,
                    uid: r.get(3)?,
                    gid: r.get(4)?,
                    project: r.get(5)?,
                    limits: Limits {
                        memory: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                        swap: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                        cpus: r.get(8)?,
                        pids: r.get(9)?,
                    },
                    decision_id: r.get(10)?,
                    gpus: r
                        .get::<_, Option<String>>(11)?
                        .map(|g| g.split(',').filter_map(|i| i.parse().ok()).collect())
                        .unwrap_or_default(),
                    pid: r.get(12)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.sql("listing live containers", e))?;
        Ok(rows)
    }

    /// Decisions at or after `since_ms`, newest first, at most `limit`.
    pub fn history(&self, since_ms: i64, limit: u32) -> Result<Vec<Decision>, InventoryError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, time_ms, container_id, root, bundle, uid, gid, project, decision,
                        reason, req_memory, req_swap, req_cpus, req_pids,
                        eff_memory, eff_swap, eff_cpus, eff_pids, detail
                 FROM decisions WHERE time_ms >= ?1 ORDER BY time_ms DESC, id DESC LIMIT ?2",
            )
            .map_err(|e| self.sql("reading the history", e))?;
        let rows = stmt
            .query_map(params![since_ms, limit], decision_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.sql("reading the history", e))?;
        Ok(rows)
    }

    /// The newest decision for a container id or unique id prefix.
    pub fn find(&self, id_or_prefix: &str) -> Result<Option<Decision>, InventoryError> {
        // Escape LIKE's wildcards: ids are the user's text.
        let pattern = format!(
            "{}%",
            id_or_prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        self.conn
            .query_row(
                "SELECT id, time_ms, container_id, root, bundle, uid, gid, project, decision,
                        reason, req_memory, req_swap, req_cpus, req_pids,
                        eff_memory, eff_swap, eff_cpus, eff_pids, detail
                 FROM decisions WHERE container_id LIKE ?1 ESCAPE '\\'
                 ORDER BY time_ms DESC, id DESC LIMIT 1",
                params![pattern],
                decision_from_row,
            )
            .optional()
            .map_err(|e| self.sql("finding the decision", e))
    }
}

/// Inserts a decision and, when admitted, its live container (replacing a live row of
/// the same id and root, whose delete was missed).
fn insert(tx: &rusqlite::Transaction, d: &Decision, track: Track) -> Result<i64, Failed> {
    tx.execute(
        "INSERT INTO decisions (time_ms, container_id, root, bundle, uid, gid, project,
            decision, reason, req_memory, req_swap, req_cpus, req_pids,
            eff_memory, eff_swap, eff_cpus, eff_pids, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        params![
            d.time_ms,
            d.container_id,
            d.root,
            d.bundle,
            d.uid,
            d.gid,
            d.project,
            d.outcome.as_str(),
            d.reason,
            d.requested.memory.map(|v| v as i64),
            d.requested.swap.map(|v| v as i64),
            d.requested.cpus,
            d.requested.pids,
            d.effective.memory.map(|v| v as i64),
            d.effective.swap.map(|v| v as i64),
            d.effective.cpus,
            d.effective.pids,
            d.detail.to_string(),
        ],
    )
    .map_err(|e| ("recording the decision", e))?;
    let id = tx.last_insert_rowid();
    if d.outcome == Outcome::Admitted {
        tx.execute(
            "UPDATE containers SET ended_ms = ?1, end_reason = 'replaced'
             WHERE container_id = ?2 AND root IS ?3 AND ended_ms IS NULL",
            params![d.time_ms, d.container_id, d.root],
        )
        .map_err(|e| ("ending a replaced container", e))?;
        tx.execute(
            "INSERT INTO containers (decision_id, container_id, root, created_ms, uid, gid,
                project, memory, swap, cpus, pids, creator_pid, creator_start, gpus,
                init_pid, init_start)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                id,
                d.container_id,
                d.root,
                d.time_ms,
                d.uid,
                d.gid,
                d.project,
                d.effective.memory.map(|v| v as i64),
                d.effective.swap.map(|v| v as i64),
                d.effective.cpus,
                d.effective.pids,
                track.creator.map(|c| c.0),
                track.creator.map(|c| c.1 as i64),
                d.leases.len() as i64,
                track.init.map(|c| c.0),
                track.init.map(|c| c.1 as i64),
            ],
        )
        .map_err(|e| ("recording the live container", e))?;
        let row = tx.last_insert_rowid();
        for g in &d.leases {
            tx.prepare_cached(
                "INSERT INTO leases (container_row, gpu_uuid, gpu_index, exclusive, mps_memory,
                    mps_threads) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    row,
                    g.uuid,
                    g.index,
                    g.share.is_none(),
                    g.share.map(|s| s.memory as i64),
                    g.share.map(|s| s.threads),
                ])
            })
            .map_err(|e| ("leasing a GPU", e))?;
        }
    }
    Ok(id)
}

/// What live containers hold: all, this uid's, this project's.
fn live_usage(
    tx: &rusqlite::Transaction,
    uid: u32,
    project: Option<&str>,
) -> rusqlite::Result<LiveUsage> {
    // One pass over the live rows for all three sums: every statement a create
    // compiles costs it time, there being no statement cache across processes.
    tx.prepare_cached(
        "SELECT count(*), total(memory), total(cpus), total(gpus),
                total(uid = ?1), total(CASE WHEN uid = ?1 THEN memory END),
                total(CASE WHEN uid = ?1 THEN cpus END),
                total(CASE WHEN uid = ?1 THEN gpus END),
                total(project = ?2), total(CASE WHEN project = ?2 THEN memory END),
                total(CASE WHEN project = ?2 THEN cpus END),
                total(CASE WHEN project = ?2 THEN gpus END)
         FROM containers WHERE ended_ms IS NULL",
    )?
    .query_row(params![uid, project], |r| {
        let usage = |base: usize| -> rusqlite::Result<Usage> {
            Ok(Usage {
                containers: r.get::<_, f64>(base)? as u32,
                memory: r.get::<_, f64>(base + 1)? as u64,
                cpus: r.get(base + 2)?,
                gpus: r.get::<_, f64>(base + 3)? as u32,
            })
        };
        Ok(LiveUsage {
            all: usage(0)?,
            user: usage(4)?,
            project: usage(8)?,
            leases: Vec::new(),
        })
    })
    .and_then(|mut usage| {
        usage.leases = live_leases(tx)?;
        Ok(usage)
    })
}

/// The GPU leases of live containers.
fn live_leases(conn: &Connection) -> rusqlite::Result<Vec<LiveLease>> {
    conn.prepare_cached(
        "SELECT l.gpu_uuid, c.container_id, c.uid, c.project, l.mps_memory, l.mps_threads
         FROM leases l JOIN containers c ON c.id = l.container_row
         WHERE l.released_ms IS NULL ORDER BY l.gpu_index",
    )?
    .query_map([], |r| {
        let memory: Option<i64> = r.get(4)?;
        let threads: Option<u32> = r.get(5)?;
        Ok(LiveLease {
            uuid: r.get(0)?,
            container_id: r.get(1)?,
            uid: r.get(2)?,
            project: r.get(3)?,
            share: memory.zip(threads).map(|(m, t)| Share {
                memory: m as u64,
                threads: t,
            }),
        })
    })?
    .collect()
}

/// Ends the live containers whose process is gone; returns how many.
fn reconcile_in(
    tx: &rusqlite::Transaction,
    host: &dyn Host,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let rows: Vec<(i64, Tracked)> = tx
        .prepare_cached(
            "SELECT id, container_id, root, creator_pid, creator_start, init_pid, init_start
             FROM containers WHERE ended_ms IS NULL",
        )?
        .query_map([], |r| {
            let process = |i: usize| -> rusqlite::Result<Option<(u32, u64)>> {
                let pid: Option<u32> = r.get(i)?;
                let start: Option<i64> = r.get(i + 1)?;
                Ok(pid.zip(start.map(|s| s as u64)))
            };
            Ok((
                r.get(0)?,
                Tracked {
                    container_id: r.get(1)?,
                    root: r.get(2)?,
                    creator: process(3)?,
                    init: process(5)?,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut ended = 0;
    for (id, t) in rows {
        match liveness::check(host, &t) {
            Liveness::Gone(why) => {
                ended += tx.execute(
                    "UPDATE containers SET ended_ms = ?1, end_reason = ?2 WHERE id = ?3",
                    params![now_ms, format!("reconciled: {why}"), id],
                )?;
            }
            // mlenv-runtime hands over by exec and does not see the init process:
            // recorded here once the runtime's state names it, and from then on
            // liveness asks that process alone.
            Liveness::Alive {
                init: Some((pid, start)),
            } => {
                tx.execute(
                    "UPDATE containers SET init_pid = ?1, init_start = ?2 WHERE id = ?3",
                    params![pid, start as i64, id],
                )?;
            }
            Liveness::Alive { init: None } | Liveness::Creating => {}
        }
    }
    Ok(ended)
}

fn decision_from_row(r: &rusqlite::Row) -> rusqlite::Result<Decision> {
    let limits = |base: usize| -> rusqlite::Result<Limits> {
        Ok(Limits {
            memory: r.get::<_, Option<i64>>(base)?.map(|v| v as u64),
            swap: r.get::<_, Option<i64>>(base + 1)?.map(|v| v as u64),
            cpus: r.get(base + 2)?,
            pids: r.get(base + 3)?,
        })
    };
    let detail: String = r.get(18)?;
    Ok(Decision {
        id: r.get(0)?,
        time_ms: r.get(1)?,
        container_id: r.get(2)?,
        root: r.get(3)?,
        bundle: r.get(4)?,
        uid: r.get(5)?,
        gid: r.get(6)?,
        project: r.get(7)?,
        outcome: Outcome::parse(&r.get::<_, String>(8)?),
        reason: r.get(9)?,
        requested: limits(10)?,
        effective: limits(14)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        leases: Vec::new(),
    })
}

impl Decision {
    /// A decision not yet recorded (id 0).
    pub fn new(time_ms: i64, container_id: &str, bundle: &Path) -> Decision {
        Decision {
            id: 0,
            time_ms,
            container_id: container_id.to_string(),
            root: None,
            bundle: bundle.display().to_string(),
            uid: 0,
            gid: 0,
            project: None,
            outcome: Outcome::Error,
            reason: String::new(),
            requested: Limits::default(),
            effective: Limits::default(),
            detail: serde_json::Value::Null,
            leases: Vec::new(),
        }
    }

    pub fn time(&self) -> String {
        rfc3339(self.time_ms)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The ids of the live containers, in creation order.
    pub(crate) fn live_ids(inv: &Inventory) -> Vec<String> {
        inv.live()
            .unwrap()
            .into_iter()
            .map(|l| l.container_id)
            .collect()
    }

    /// Admits `id` under runtime root `/r`, as mlenv-runtime does: tracked by the
    /// process creating it, `creator`, started at 100.
    pub(crate) fn admit_created_by(inv: &mut Inventory, host: &dyn Host, id: &str, creator: u32) {
        let mut d = decision(id, 1, Outcome::Admitted);
        d.root = Some("/r".into());
        let track = Track {
            creator: Some((creator, 100)),
            init: None,
        };
        inv.admit(&mut d, track, host, |_, _| false).unwrap();
    }

    /// Column `col` of every row `sql` returns, as text.
    fn texts(
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
        col: usize,
    ) -> Vec<String> {
        conn.prepare(sql)
            .unwrap()
            .query_map(params, |r| r.get(col))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn decision(id: &str, t: i64, outcome: Outcome) -> Decision {
        let mut d = Decision::new(t, id, Path::new("/b"));
        d.outcome = outcome;
        d.root = Some("/run/r".into());
        d.uid = 1000;
        d.gid = 100;
        d.project = Some("vision".into());
        d.reason = "ok".into();
        d.requested.memory = Some(2 << 30);
        d.effective.memory = Some(1 << 30);
        d.effective.cpus = Some(1.5);
        d.detail = serde_json::json!({"actions": ["memory limit 2G clamped to 1G"]});
        d
    }

    /// First openers racing on a new file: each waits for the others, none fails.
    #[test]
    fn racing_first_opens_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv/mlenv.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Inventory::open(&path).map(|i| i.schema_version().unwrap())
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), MIGRATIONS.len() as i64);
        }
    }

    /// Another writer holding the lock past the brief wait: the end gives up with
    /// SQLite's reason, and the row stays live for liveness to end.
    #[test]
    fn a_brief_wait_gives_up_on_a_held_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlenv.db");
        let mut inv = Inventory::open(&path).unwrap();
        inv.record(&decision("c1", 1, Outcome::Admitted)).unwrap();
        let mut holder = Connection::open(&path).unwrap();
        let tx = holder
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        inv.wait_briefly().unwrap();
        let err = inv
            .end("c1", Some("/run/r"), 2, "deleted")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("database is locked"), "{err}");
        drop(tx);
        assert_eq!(inv.end("c1", Some("/run/r"), 3, "deleted").unwrap(), 1);
    }

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/mlenv.db");
        let inv = Inventory::open(&path).unwrap();
        assert_eq!(inv.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(inv);
        let inv = Inventory::open(&path).unwrap();
        assert_eq!(inv.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode: String = inv
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn migrates_an_older_inventory_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlenv.db");
        // An inventory as the release before the last migration left it, with a live
        // container in it.
        let old = MIGRATIONS.len() - 1;
        let conn = Connection::open(&path).unwrap();
        for m in &MIGRATIONS[..old] {
            conn.execute_batch(m).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO decisions (id, time_ms, container_id, bundle, uid, gid, decision,
                                    reason, detail)
             VALUES (1, 1, 'a', '/b', 1000, 100, 'admitted', 'ok', '{}');
             INSERT INTO containers (decision_id, container_id, root, created_ms, uid, gid)
             VALUES (1, 'a', '/run/r', 1, 1000, 100);",
        )
        .unwrap();
        conn.pragma_update(None, "user_version", old as i64)
            .unwrap();
        drop(conn);
        let mut inv = Inventory::open(&path).unwrap();
        assert_eq!(inv.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let indexes = texts(
            &inv.conn,
            "SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name",
            [],
            0,
        );
        assert_eq!(
            indexes,
            [
                "containers_ended",
                "containers_live",
                "decisions_container",
                "decisions_time",
                "leases_exclusive",
                "leases_live"
            ]
        );
        assert_eq!(inv.live().unwrap().len(), 1);
        // The quota sums still read the live rows through an index, not every row
        // ever recorded.
        let tx = inv.conn.transaction().unwrap();
        assert_eq!(live_usage(&tx, 1000, None).unwrap().all.containers, 1);
        let plan = texts(
            &tx,
            "EXPLAIN QUERY PLAN SELECT count(*), total(memory) FROM containers
             WHERE ended_ms IS NULL",
            [],
            3,
        );
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX containers_live")),
            "{plan:?}"
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlenv.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Inventory::open(&path).err().unwrap().to_string();
        assert!(err.contains("schema version 99, newer than"), "{err}");
    }

    #[test]
    fn open_to_read_creates_and_recovers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlenv.db");
        assert!(Inventory::open_to_read(&path).is_err());
        assert!(!path.exists(), "not created");
        fs::write(
            &path,
            b"not a database, not at all: garbage garbage garbage",
        )
        .unwrap();
        let reader = Inventory::open_to_read(&path);
        assert!(reader.and_then(|r| r.live_bundle("a", None)).is_err());
        assert_eq!(
            fs::read(&path).unwrap(),
            b"not a database, not at all: garbage garbage garbage",
            "left where it is"
        );
        assert!(Inventory::set_aside_files(&path).is_empty());
    }

    #[test]
    fn records_lists_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        inv.record(&decision("aaa111", 1000, Outcome::Admitted))
            .unwrap();
        inv.record(&decision("bbb222", 2000, Outcome::Refused))
            .unwrap();
        inv.record(&decision("ccc333", 3000, Outcome::Admitted))
            .unwrap();

        let live = inv.live().unwrap();
        let ids: Vec<_> = live.iter().map(|l| l.container_id.as_str()).collect();
        assert_eq!(ids, ["aaa111", "ccc333"], "refused containers never live");
        assert_eq!(live[0].limits.memory, Some(1 << 30));
        assert_eq!(live[0].limits.cpus, Some(1.5));
        assert_eq!(live[0].project.as_deref(), Some("vision"));

        assert_eq!(
            inv.end("aaa111", Some("/run/r"), 4000, "deleted").unwrap(),
            1
        );
        assert_eq!(
            inv.end("aaa111", Some("/run/r"), 4000, "deleted").unwrap(),
            0
        );
        assert_eq!(
            inv.end("ccc333", Some("/other"), 4000, "deleted").unwrap(),
            0,
            "root must match"
        );
        assert_eq!(inv.live().unwrap().len(), 1);
        assert_eq!(
            inv.live_bundle("ccc333", Some("/run/r")).unwrap(),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(inv.live_bundle("ccc333", Some("/other")).unwrap(), None);
        assert_eq!(
            inv.live_bundle("aaa111", Some("/run/r")).unwrap(),
            None,
            "ended"
        );
        assert_eq!(
            inv.live_bundle("bbb222", Some("/run/r")).unwrap(),
            None,
            "refused"
        );
        // Read only, beside the writer's open connection.
        let reader = Inventory::open_to_read(&dir.path().join("mlenv.db")).unwrap();
        assert_eq!(
            reader.live_bundle("ccc333", Some("/run/r")).unwrap(),
            Some(PathBuf::from("/b"))
        );

        let h = inv.history(0, 10).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].container_id, "ccc333");
        assert_eq!(h[1].outcome, Outcome::Refused);
        assert_eq!(h[2], {
            let mut d = decision("aaa111", 1000, Outcome::Admitted);
            d.id = h[2].id;
            d
        });
        assert_eq!(inv.history(2500, 10).unwrap().len(), 1);
    }

    #[test]
    fn an_update_is_checked_against_the_others_and_recorded_only_when_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        inv.record(&decision("aaa111", 1000, Outcome::Admitted))
            .unwrap();
        inv.record(&decision("bbb222", 2000, Outcome::Admitted))
            .unwrap();
        // Both live (crun's status files), then bbb222 gone.
        let (_h, host) = crate::host::tests::fixture(&[
            ("run/r/aaa111/status", "running"),
            ("run/r/bbb222/status", "running"),
        ]);
        let raise = LimitChange {
            memory: Some(Some(3 << 30)),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let out = inv
            .update_limits(
                "aaa111",
                Some("/run/r"),
                raise,
                &host,
                3000,
                |held, others| {
                    seen.push((held.clone(), others.clone()));
                    vec!["no".into()]
                },
            )
            .unwrap();
        assert_eq!(out, Err(vec!["no".to_string()]));
        assert_eq!(seen.len(), 1, "none gone: checked once");
        let (held, others) = seen.pop().unwrap();
        assert_eq!(
            (held.uid, held.memory, held.cpus),
            (1000, Some(1 << 30), Some(1.5))
        );
        // Only bbb222 is left in the sums.
        assert_eq!(others.user.containers, 1);
        assert_eq!(others.user.memory, 1 << 30);
        assert_eq!(others.project.containers, 1);
        assert_eq!(others.all.cpus, 1.5);
        assert_eq!(
            inv.live().unwrap()[0].limits.memory,
            Some(1 << 30),
            "refused: not recorded"
        );
        // A refusal is made again once the gone bbb222 is ended.
        fs::remove_file(host.root.join("run/r/bbb222/status")).unwrap();
        let out = inv
            .update_limits("aaa111", Some("/run/r"), raise, &host, 3000, |_, others| {
                if others.all.containers > 0 {
                    vec!["no".into()]
                } else {
                    vec![]
                }
            })
            .unwrap();
        assert_eq!(out, Ok(1));
        let live = inv.live().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].limits.memory, Some(3 << 30));
        assert_eq!(
            inv.update_limits("aaa111", Some("/other"), raise, &host, 3000, |_, _| vec![
                "x".into()
            ])
            .unwrap(),
            Ok(0),
            "another root: not this container"
        );
        // Recorded by the hook, with no root: found under any; a row under the
        // exact root first.
        let mut hooked = decision("ccc333", 4000, Outcome::Admitted);
        hooked.root = None;
        inv.record(&hooked).unwrap();
        assert_eq!(
            inv.update_limits("ccc333", Some("/run/r"), raise, &host, 5000, |_, _| vec![])
                .unwrap(),
            Ok(1)
        );
        fs::create_dir_all(host.root.join("run/r/ccc333")).unwrap();
        fs::write(host.root.join("run/r/ccc333/status"), "running").unwrap();
        let mut exact = decision("ccc333", 6000, Outcome::Admitted);
        exact.effective.memory = Some(5 << 30);
        inv.record(&exact).unwrap();
        inv.record(&hooked).unwrap();
        let mut seen = None;
        inv.update_limits("ccc333", Some("/run/r"), raise, &host, 7000, |held, _| {
            seen = held.memory;
            vec!["no".into()]
        })
        .unwrap()
        .unwrap_err();
        assert_eq!(seen, Some(5 << 30), "the row under the exact root");
        // Gone itself when the refusal is made again: nothing to update.
        let (_h2, empty) = crate::host::tests::fixture(&[]);
        assert_eq!(
            inv.update_limits("ccc333", Some("/run/r"), raise, &empty, 8000, |_, _| vec![
                "no".into()
            ])
            .unwrap(),
            Ok(0)
        );
    }

    #[test]
    fn retention_prunes_what_ended_and_keeps_what_lives() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        let day = 86_400_000;
        inv.record(&decision("old-ended", 1000, Outcome::Admitted))
            .unwrap();
        inv.record(&decision("old-refused", 2000, Outcome::Refused))
            .unwrap();
        inv.record(&decision("old-live", 3000, Outcome::Admitted))
            .unwrap();
        inv.record(&decision("new", 9 * day, Outcome::Refused))
            .unwrap();
        inv.end("old-ended", Some("/run/r"), 5000, "deleted")
            .unwrap();
        // Nothing older than 10 days at day 10.
        assert_eq!(inv.prune_if_due(10 * day, 10).unwrap(), None);
        // Seven days at day 10: the old ended container and its decision go, the
        // refusal goes, the live one and its decision stay, the recent one stays.
        let p = inv.prune_if_due(10 * day, 7).unwrap().unwrap();
        assert_eq!(
            p,
            Pruned {
                decisions: 2,
                containers: 1
            }
        );
        let ids: Vec<String> = inv
            .history(0, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.container_id)
            .collect();
        assert_eq!(ids, ["new", "old-live"]);
        assert_eq!(inv.live().unwrap().len(), 1);
        assert!(
            inv.find("old-live").unwrap().is_some(),
            "explain still works for a live container"
        );
        assert_eq!(
            inv.prune_if_due(10 * day, 7).unwrap(),
            None,
            "the live one's decision is kept, not retried"
        );
    }

    #[test]
    fn same_id_created_again_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        inv.record(&decision("x", 1000, Outcome::Admitted)).unwrap();
        inv.record(&decision("x", 2000, Outcome::Admitted)).unwrap();
        let live = inv.live().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].created_ms, 2000);
    }

    #[test]
    fn find_by_prefix_escapes_wildcards() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        inv.record(&decision("abc123", 1000, Outcome::Admitted))
            .unwrap();
        inv.record(&decision("abc123", 2000, Outcome::Refused))
            .unwrap();
        let d = inv.find("abc").unwrap().unwrap();
        assert_eq!(
            (d.container_id.as_str(), d.outcome),
            ("abc123", Outcome::Refused)
        );
        assert!(inv.find("a%").unwrap().is_none());
        assert!(inv.find("zzz").unwrap().is_none());
    }

    #[test]
    fn usage_sums_all_user_and_project() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        let host = crate::host::ProcHost::default();
        let mut add = |id: &str,
                       uid: u32,
                       project: Option<&str>,
                       mem: Option<u64>,
                       cpus: Option<f64>,
                       outcome: Outcome| {
            let mut d = decision(id, 1, outcome);
            d.uid = uid;
            d.project = project.map(str::to_string);
            d.effective.memory = mem;
            d.effective.cpus = cpus;
            let mut seen = LiveUsage::default();
            inv.admit(&mut d, Track::default(), &host, |u, _| {
                seen = u.clone();
                false
            })
            .unwrap();
            seen
        };
        add(
            "a",
            1000,
            Some("v"),
            Some(1 << 30),
            Some(1.5),
            Outcome::Admitted,
        );
        add("b", 1000, None, None, Some(2.0), Outcome::Admitted);
        add("c", 2000, Some("v"), Some(2 << 30), None, Outcome::Admitted);
        add(
            "d",
            2000,
            Some("v"),
            Some(8 << 30),
            Some(8.0),
            Outcome::Refused,
        );
        let seen = add("e", 1000, Some("v"), None, None, Outcome::Refused);
        assert_eq!(
            seen.all,
            Usage {
                containers: 3,
                memory: 3 << 30,
                cpus: 3.5,
                gpus: 0
            }
        );
        assert_eq!(
            seen.user,
            Usage {
                containers: 2,
                memory: 1 << 30,
                cpus: 3.5,
                gpus: 0
            }
        );
        assert_eq!(
            seen.project,
            Usage {
                containers: 2,
                memory: 3 << 30,
                cpus: 1.5,
                gpus: 0
            }
        );
        let seen = add("f", 3000, None, None, None, Outcome::Refused);
        assert_eq!(seen.user, Usage::default());
        assert_eq!(seen.project, Usage::default());
    }

    #[test]
    fn a_gpu_has_one_live_lease_and_it_ends_with_its_container() {
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        let lease = |index: u32| Granted {
            index,
            uuid: format!("GPU-{index}"),
            minor: index,
            share: None,
        };
        let mut a = decision("a", 1, Outcome::Admitted);
        a.leases = vec![lease(0), lease(1)];
        inv.record(&a).unwrap();
        assert_eq!(inv.live().unwrap()[0].gpus, [0, 1]);
        assert_eq!(inv.leases().unwrap().len(), 2);
        // Whatever a bug elsewhere would do, the database refuses a second lease.
        let mut b = decision("b", 2, Outcome::Admitted);
        b.leases = vec![lease(1)];
        let err = inv.record(&b).unwrap_err().to_string();
        assert!(err.contains("UNIQUE constraint failed"), "{err}");
        assert_eq!(
            inv.live().unwrap().len(),
            1,
            "the failed record left nothing"
        );
        // Ending the container releases both (the trigger), and GPU 1 can be leased.
        inv.end("a", Some("/run/r"), 3, "deleted").unwrap();
        assert!(inv.leases().unwrap().is_empty());
        inv.record(&b).unwrap();
        let held: Vec<String> = inv.leases().unwrap().into_iter().map(|l| l.uuid).collect();
        assert_eq!(held, ["GPU-1"]);
        // A refused decision leases nothing, whatever it carries.
        let mut c = decision("c", 4, Outcome::Refused);
        c.leases = vec![lease(0)];
        inv.record(&c).unwrap();
        assert_eq!(inv.leases().unwrap().len(), 1);
    }

    /// mlenv-runtime hands over by exec: a liveness check records the init process
    /// the runtime's state names, ends a create that left no state once its creator
    /// is gone, and leaves one still being created.
    #[test]
    fn reconcile_records_init_processes_and_ends_creates_that_left_nothing() {
        use crate::host::tests::{fixture, proc_stat};
        let (tree, host) = fixture(&[
            (
                "r/made/state.json",
                r#"{"id":"made","init_process_pid":77,"init_process_start":5000}"#,
            ),
            ("proc/77/stat", &proc_stat(77, 5000)),
            ("proc/91/stat", &proc_stat(91, 100)),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let mut inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        for (id, creator) in [("made", 90), ("failed", 90), ("making", 91)] {
            admit_created_by(&mut inv, &host, id, creator);
        }
        assert_eq!(inv.reconcile(&host, 2).unwrap(), 1);
        let pids: Vec<(String, Option<u32>)> = inv
            .live()
            .unwrap()
            .into_iter()
            .map(|l| (l.container_id, l.pid))
            .collect();
        assert_eq!(
            pids,
            [("made".to_string(), Some(77)), ("making".to_string(), None)]
        );
        let ended = texts(
            &inv.conn,
            "SELECT end_reason FROM containers WHERE container_id = ?1",
            ["failed"],
            0,
        );
        assert_eq!(ended, ["reconciled: no runtime state"]);
        // Recorded, the process alone says: alive without the state, gone when its
        // pid is another process's.
        std::fs::remove_dir_all(tree.path().join("r/made")).unwrap();
        assert_eq!(inv.reconcile(&host, 3).unwrap(), 0);
        std::fs::write(tree.path().join("proc/77/stat"), proc_stat(77, 5001)).unwrap();
        assert_eq!(inv.reconcile(&host, 4).unwrap(), 1);
        assert_eq!(live_ids(&inv), ["making"]);
    }

    #[test]
    fn opened_in_background_as_in_the_foreground() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/mlenv.db");
        // Created, migrated and written to as `open` does.
        let mut inv = Inventory::open_in_background().open(&path).wait().unwrap();
        assert_eq!(inv.schema_version().unwrap(), MIGRATIONS.len() as i64);
        inv.record(&decision("a", 1, Outcome::Admitted)).unwrap();
        drop(inv);
        let inv = Inventory::open_in_background().open(&path).wait().unwrap();
        assert_eq!(inv.live().unwrap().len(), 1);
        drop(inv);
        // Corrupt: moved aside on that thread, said in what comes back.
        for side in ["sub/mlenv.db-wal", "sub/mlenv.db-shm"] {
            let _ = fs::remove_file(dir.path().join(side));
        }
        fs::write(&path, vec![b'x'; 8192]).unwrap();
        let inv = Inventory::open_in_background().open(&path).wait().unwrap();
        assert!(inv.set_aside.is_some());
        assert!(inv.live().unwrap().is_empty());
        // An error comes back as open's.
        let blocked = dir.path().join("file");
        fs::write(&blocked, "").unwrap();
        let err = Inventory::open_in_background()
            .open(&blocked.join("mlenv.db"))
            .wait()
            .err()
            .expect("a file where the directory should be");
        assert!(matches!(err, InventoryError::Dir { .. }), "{err}");
    }

    #[test]
    fn an_opener_never_told_a_path_ends_without_opening() {
        // As when the policy cannot be read: the thread waiting for the path ends once
        // the opener is dropped, with nothing opened, created or waited for.
        let mut opener = Inventory::open_in_background();
        let thread = opener.thread.take().expect("a thread started");
        drop(opener);
        assert!(thread.join().unwrap().is_none());
    }

    #[test]
    fn a_corrupt_inventory_is_moved_aside_and_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlenv.db");
        // Not a database at all.
        fs::write(&path, vec![b'x'; 8192]).unwrap();
        let mut inv = Inventory::open(&path).unwrap();
        let aside = inv.set_aside.clone().expect("moved aside");
        assert!(aside
            .moved_to
            .to_string_lossy()
            .contains("mlenv.db.corrupt-"));
        assert_eq!(fs::read(&aside.moved_to).unwrap(), vec![b'x'; 8192]);
        inv.record(&decision("a", 1, Outcome::Admitted)).unwrap();
        assert_eq!(
            Inventory::set_aside_files(&path),
            std::slice::from_ref(&aside.moved_to)
        );
        drop(inv);
        // A database whose table pages are damaged: the schema reads, the first
        // query fails, and recover() moves it aside. The pages the rows below take
        // come after those the schema has (the tables' roots then point at them).
        let mut inv = Inventory::open(&path).unwrap();
        let checkpoint = |inv: &Inventory| {
            inv.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap()
        };
        checkpoint(&inv);
        let schema = fs::metadata(&path).unwrap().len() as usize;
        for i in 0..50 {
            inv.record(&decision(&format!("d{i}"), 2, Outcome::Admitted))
                .unwrap();
        }
        checkpoint(&inv);
        drop(inv);
        let mut bytes = fs::read(&path).unwrap();
        assert!(bytes.len() > schema);
        for b in &mut bytes[schema..] {
            *b = 0xA5;
        }
        fs::write(&path, &bytes).unwrap();
        let inv = Inventory::open(&path).unwrap();
        assert!(inv.set_aside.is_none(), "page 1 is intact");
        let err = inv.live().unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        let mut inv = inv.recover(err).unwrap();
        assert!(inv.set_aside.is_some());
        assert!(inv.live().unwrap().is_empty());
        inv.record(&decision("b", 3, Outcome::Admitted)).unwrap();
        assert_eq!(Inventory::set_aside_files(&path).len(), 2);
        // Another error is given back as it is.
        let busy = InventoryError::TooNew {
            path: path.clone(),
            found: 9,
            known: 5,
        };
        assert!(!busy.is_corrupt());
        assert!(matches!(
            inv.recover(busy),
            Err(InventoryError::TooNew { .. })
        ));
    }

    #[test]
    fn the_retention_check_reads_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::open(&dir.path().join("mlenv.db")).unwrap();
        let plan = texts(
            &inv.conn,
            &format!("EXPLAIN QUERY PLAN {PRUNE_DUE}"),
            [0],
            3,
        );
        let scans: Vec<&String> = plan
            .iter()
            .filter(|p| p.starts_with("SCAN") && !p.contains("USING") && !p.contains("CONSTANT"))
            .collect();
        assert!(
            plan.iter().any(|p| p.contains("containers_ended")),
            "{plan:?}"
        );
        assert!(
            plan.iter().any(|p| p.contains("decisions_time")),
            "{plan:?}"
        );
        // Only the subquery of containers a candidate decision is checked against,
        // and there is none once retention has run.
        assert!(scans.len() <= 1, "{plan:?}");
    }

    #[test]
    fn wal_is_checkpointed_when_settled_and_when_large() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlenv.db");
        let wal = dir.path().join("mlenv.db-wal");
        let size = || fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        // A create leaves its frames in the WAL: no checkpoint, no fsync.
        Inventory::open(&path)
            .unwrap()
            .record(&decision("a", 1, Outcome::Admitted))
            .unwrap();
        assert!(size() > 0);
        // Settling (a delete's housekeeping) leaves a short WAL as it is...
        let mut inv = Inventory::open(&path).unwrap();
        // New inventories have small pages, and the WAL is counted in them.
        assert_eq!(inv.page_size, u64::from(NEW_PAGE_SIZE));
        assert_eq!(size(), 32 + inv.wal_frames() * (1024 + 24));
        inv.end("a", Some("/run/r"), 2, "deleted").unwrap();
        assert!(!inv.settle_due());
        inv.settle(true);
        assert!(inv.wal_frames() > 0 && inv.wal_frames() <= WAL_SETTLE_FRAMES);
        // ...and folds a longer one into the database, leaving one page behind: the
        // WAL restarted with its header synced, so the next create appends to it.
        let mut i = 0;
        while inv.wal_frames() <= WAL_SETTLE_FRAMES {
            inv.record(&decision(&format!("b{i}"), 2, Outcome::Refused))
                .unwrap();
            i += 1;
        }
        inv.end("b0", Some("/run/r"), 3, "deleted").unwrap();
        assert!(inv.settle_due(), "an end alone does not checkpoint");
        inv.settle(true);
        assert!(!inv.settle_due());
        assert_eq!(size(), 32 + 24 + 1024, "WAL header and one frame");
        assert!(wal.exists());
        drop(inv);
        // Creates alone never let it grow far past the limit.
        for i in 0..400 {
            let mut inv = Inventory::open(&path).unwrap();
            inv.record(&decision(&format!("c{i}"), 3, Outcome::Admitted))
                .unwrap();
            assert!(
                inv.wal_frames() <= WAL_CHECKPOINT_FRAMES + 16,
                "WAL at {} frames after {i}",
                inv.wal_frames()
            );
        }
        // And nothing was lost on the way.
        assert_eq!(
            Inventory::open(&path)
                .unwrap()
                .history(0, 10_000)
                .unwrap()
                .len(),
            1 + i + 400
        );
    }
}
