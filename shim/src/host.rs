//! What the host can take right now, read from /proc and the cgroup filesystem: one
//! pass over a few small files, no sleeping or sampling on the create path.
//!
//! Everything is read under a root directory (`/` in production) so that tests can
//! point the probe at fixture files.

use crate::gpu::probe::Reading;
use crate::gpu::GpuInfo;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse {path}: {what}")]
    Parse { path: PathBuf, what: String },
}

/// Pressure stall information: the `some avg10` percentage of each resource, where the
/// kernel has PSI.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Pressure {
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub io: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HostState {
    pub mem_total: u64,
    pub mem_available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
    /// One-minute load average.
    pub load1: f64,
    /// CPUs this host can give containers: the CPUs mlenv may run on (cpuset-aware),
    /// lowered by a CPU quota on mlenv's own cgroup.
    pub cpus: f64,
    pub pressure: Pressure,
}

impl HostState {
    pub fn memory_used_percent(&self) -> f64 {
        if self.mem_total == 0 {
            return 0.0;
        }
        (self.mem_total.saturating_sub(self.mem_available)) as f64 * 100.0 / self.mem_total as f64
    }

    pub fn load_per_cpu(&self) -> f64 {
        self.load1 / self.cpus.max(1.0)
    }
}

/// The host as mlenv sees it: its state, and whether a process still lives.
pub trait Host {
    fn probe(&self) -> Result<HostState, HostError>;
    /// The start time (clock ticks since boot, /proc/PID/stat field 22) of a live
    /// process, or `None` when there is no such process.
    fn process_start(&self, pid: u32) -> Option<u64>;
    /// A file's contents, for the low-level runtime's state.
    fn read(&self, path: &Path) -> Option<String>;
    /// The GPUs, through the NVML library at `nvml_library` (the system's when None).
    fn gpus(&self, nvml_library: Option<&Path>) -> Result<Vec<GpuInfo>, String>;
    /// [`Host::gpus`], started now and read when the caller needs it: where a helper
    /// process reads them, it runs while the caller goes on.
    fn start_gpus(&self, nvml_library: Option<&Path>) -> Reading {
        Reading::Ready(self.gpus(nvml_library))
    }
}

/// How the GPUs are read.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum GpuSource {
    /// NVML loaded into this process.
    #[default]
    InProcess,
    /// `mlenv-nvml` beside the running binary (looked up only when GPUs are asked
    /// for): for mlenv-runtime, which is linked statically and cannot load NVML
    /// (docs/design.md).
    Helper,
}

/// The real host, read under `root`.
#[derive(Debug, Clone)]
pub struct ProcHost {
    pub root: PathBuf,
    pub gpus: GpuSource,
}

impl Default for ProcHost {
    fn default() -> Self {
        ProcHost {
            root: PathBuf::from("/"),
            gpus: GpuSource::InProcess,
        }
    }
}

impl ProcHost {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn text(&self, rel: &str) -> Result<String, HostError> {
        let path = self.path(rel);
        read_generated(&path).map_err(|source| HostError::Read { path, source })
    }
}

/// Reads a small file that the kernel makes up as it is read (/proc, /sys): such a
/// file says its size is 0, so `fs::read_to_string` asks its size, then probes it
/// with reads of 32, 32, 64, 128 ... bytes, some twelve system calls a file. Into
/// room for two pages, it takes one read and the one that finds the end. A create
/// reads nine of them.
fn read_generated(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl Host for ProcHost {
    fn probe(&self) -> Result<HostState, HostError> {
        let meminfo = self.text("proc/meminfo")?;
        let mem = parse_meminfo(&meminfo).map_err(|what| HostError::Parse {
            path: self.path("proc/meminfo"),
            what,
        })?;
        let loadavg = self.text("proc/loadavg")?;
        let load1 = loadavg
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| HostError::Parse {
                path: self.path("proc/loadavg"),
                what: "no load average".into(),
            })?;
        let status = self.text("proc/self/status")?;
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| count_cpu_list(v.trim()))
            .filter(|n| *n > 0)
            .ok_or_else(|| HostError::Parse {
                path: self.path("proc/self/status"),
                what: "no Cpus_allowed_list".into(),
            })?;
        let quota = self
            .text("proc/self/cgroup")
            .ok()
            .and_then(|cg| cgroup_cpu_quota(self, &cg));
        let cpus = match quota {
            Some(q) if q < allowed as f64 => q,
            _ => allowed as f64,
        };
        let psi = |name: &str| {
            self.text(&format!("proc/pressure/{name}"))
                .ok()
                .and_then(|t| parse_psi_some_avg10(&t))
        };
        Ok(HostState {
            mem_total: mem.0,
            mem_available: mem.1,
            swap_total: mem.2,
            swap_free: mem.3,
            load1,
            cpus,
            pressure: Pressure {
                cpu: psi("cpu"),
                memory: psi("memory"),
                io: psi("io"),
            },
        })
    }

    fn process_start(&self, pid: u32) -> Option<u64> {
        let stat = read_generated(&self.path(&format!("proc/{pid}/stat"))).ok()?;
        parse_stat_start(&stat)
    }

    fn read(&self, path: &Path) -> Option<String> {
        fs::read_to_string(self.path(&path.to_string_lossy())).ok()
    }

    fn gpus(&self, nvml_library: Option<&Path>) -> Result<Vec<GpuInfo>, String> {
        self.start_gpus(nvml_library).finish()
    }

    fn start_gpus(&self, nvml_library: Option<&Path>) -> Reading {
        match &self.gpus {
            GpuSource::InProcess => {
                Reading::Ready(crate::gpu::probe(nvml_library).map_err(|e| e.to_string()))
            }
            GpuSource::Helper => crate::gpu::probe::start_through(
                &crate::gpu::helper::beside_me("mlenv-nvml"),
                nvml_library,
            ),
        }
    }
}

/// (MemTotal, MemAvailable, SwapTotal, SwapFree) in bytes.
pub fn parse_meminfo(text: &str) -> Result<(u64, u64, u64, u64), String> {
    let get = |key: &str| -> Result<u64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| format!("no {key}"))
    };
    Ok((
        get("MemTotal")?,
        get("MemAvailable")?,
        get("SwapTotal").unwrap_or(0),
        get("SwapFree").unwrap_or(0),
    ))
}

/// Counts a CPU list such as `0-3,8,10-11`.
pub fn count_cpu_list(list: &str) -> usize {
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.trim().parse::<usize>().is_ok()),
        })
        .sum()
}

/// `some avg10` from a /proc/pressure file.
pub fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Field 22 of /proc/PID/stat, the start time, of a process that runs: a zombie (its
/// container's init killed, not yet reaped) is gone. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_stat_start(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The CPU quota of this process's cgroup, in CPUs, from cgroup v2 `cpu.max` or v1
/// `cpu.cfs_quota_us` / `cpu.cfs_period_us`; `None` when unlimited or unreadable.
fn cgroup_cpu_quota(host: &ProcHost, cgroup: &str) -> Option<f64> {
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            let max = host.text(&format!("sys/fs/cgroup{path}/cpu.max")).ok();
            if let Some(max) = max {
                let mut f = max.split_whitespace();
                let (q, p) = (f.next()?, f.next()?);
                if q != "max" {
                    return Some(q.parse::<f64>().ok()? / p.parse::<f64>().ok()?);
                }
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            let dir = format!("sys/fs/cgroup/{controllers}{path}");
            let q: f64 = host
                .text(&format!("{dir}/cpu.cfs_quota_us"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let p: f64 = host
                .text(&format!("{dir}/cpu.cfs_period_us"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            if q > 0.0 && p > 0.0 {
                return Some(q / p);
            }
        }
    }
    None
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub const MEMINFO: &str = "MemTotal:       32768000 kB\nMemFree:         1000000 kB\nMemAvailable:    8192000 kB\nBuffers:          100 kB\nSwapTotal:       2048000 kB\nSwapFree:        1024000 kB\n";

    #[test]
    fn generated_files_are_read_whole() {
        // Past the first buffer, and not a multiple of it.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let text: String = (0..5000).map(|i| format!("{i}\n")).collect();
        assert!(text.len() > 8192 * 2);
        fs::write(&p, &text).unwrap();
        assert_eq!(read_generated(&p).unwrap(), text);
        fs::write(&p, "").unwrap();
        assert_eq!(read_generated(&p).unwrap(), "");
        // The kernel's own, which say they are empty.
        let host = ProcHost::default();
        assert!(host.probe().unwrap().mem_total > 0);
        assert!(host.process_start(std::process::id()).is_some());
        let err = read_generated(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    /// `/proc/<pid>/stat` of a running process started at `start` (clock ticks after
    /// boot), the field liveness compares.
    pub fn proc_stat(pid: u32, start: u64) -> String {
        format!("{pid} (sleep) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 10\n")
    }

    /// A fixture host: the files a probe reads, under a temporary root.
    pub fn fixture(files: &[(&str, &str)]) -> (tempfile::TempDir, ProcHost) {
        let dir = tempfile::tempdir().unwrap();
        let defaults = [
            ("proc/meminfo", MEMINFO),
            ("proc/loadavg", "3.00 2.50 2.00 3/400 12345\n"),
            (
                "proc/self/status",
                "Name:\tmlenv\nCpus_allowed_list:\t0-7\n",
            ),
            ("proc/self/cgroup", "0::/system.slice/docker.service\n"),
        ];
        for (rel, text) in defaults.iter().chain(files.iter()) {
            let p = dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        let host = ProcHost {
            root: dir.path().to_path_buf(),
            gpus: GpuSource::InProcess,
        };
        (dir, host)
    }

    #[test]
    fn probes_fixture_host() {
        let (_d, host) = fixture(&[
            ("proc/pressure/cpu", "some avg10=12.50 avg60=3.00 avg300=1.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            ("proc/pressure/memory", "some avg10=0.25 avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
        ]);
        let s = host.probe().unwrap();
        assert_eq!(s.mem_total, 32_768_000 * 1024);
        assert_eq!(s.mem_available, 8_192_000 * 1024);
        assert_eq!(s.swap_free, 1_024_000 * 1024);
        assert_eq!(s.load1, 3.0);
        assert_eq!(s.cpus, 8.0);
        assert_eq!(s.memory_used_percent(), 75.0);
        assert_eq!(s.load_per_cpu(), 0.375);
        assert_eq!(
            s.pressure,
            Pressure {
                cpu: Some(12.5),
                memory: Some(0.25),
                io: None
            }
        );
    }

    #[test]
    fn cgroup_quota_lowers_cpus() {
        let (_d, host) = fixture(&[
            ("proc/self/cgroup", "0::/limited\n"),
            ("sys/fs/cgroup/limited/cpu.max", "250000 100000\n"),
        ]);
        assert_eq!(host.probe().unwrap().cpus, 2.5);
        let (_d, host) = fixture(&[
            ("proc/self/cgroup", "4:cpu,cpuacct:/lim\n3:memory:/lim\n"),
            ("sys/fs/cgroup/cpu,cpuacct/lim/cpu.cfs_quota_us", "300000\n"),
            (
                "sys/fs/cgroup/cpu,cpuacct/lim/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        assert_eq!(host.probe().unwrap().cpus, 3.0);
        let (_d, host) = fixture(&[
            ("proc/self/cgroup", "0::/unlimited\n"),
            ("sys/fs/cgroup/unlimited/cpu.max", "max 100000\n"),
        ]);
        assert_eq!(host.probe().unwrap().cpus, 8.0);
        // A quota above the cpuset does not raise it.
        let (_d, host) = fixture(&[
            ("proc/self/status", "Cpus_allowed_list:\t0,2\n"),
            ("proc/self/cgroup", "0::/big\n"),
            ("sys/fs/cgroup/big/cpu.max", "800000 100000\n"),
        ]);
        assert_eq!(host.probe().unwrap().cpus, 2.0);
    }

    #[test]
    fn broken_files_are_errors_naming_the_file() {
        let (_d, host) = fixture(&[("proc/meminfo", "MemTotal: 5 kB\n")]);
        let err = host.probe().unwrap_err().to_string();
        assert!(
            err.contains("proc/meminfo") && err.contains("no MemAvailable"),
            "{err}"
        );
        let (d, host) = fixture(&[]);
        fs::remove_file(d.path().join("proc/loadavg")).unwrap();
        let err = host.probe().unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read ") && err.contains("loadavg"),
            "{err}"
        );
    }

    #[test]
    fn parsers() {
        assert_eq!(count_cpu_list("0-3,8,10-11"), 7);
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(count_cpu_list(""), 0);
        assert_eq!(
            parse_psi_some_avg10("some avg10=1.5 avg60=0 avg300=0 total=0"),
            Some(1.5)
        );
        assert_eq!(parse_psi_some_avg10("full avg10=1.5"), None);
        let stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat_start(stat), Some(987654));
        let zombie =
            "1234 (sleep) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat_start(zombie), None);
    }

    #[test]
    fn real_host_probes() {
        let s = ProcHost::default().probe().unwrap();
        assert!(s.mem_total > 0 && s.mem_available <= s.mem_total);
        assert!(s.cpus >= 1.0);
        let me = std::process::id();
        assert!(ProcHost::default().process_start(me).is_some());
        assert!(ProcHost::default().process_start(u32::MAX - 1).is_none());
    }
}
