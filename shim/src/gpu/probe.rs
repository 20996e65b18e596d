//! The GPUs of the host, read through NVML (nvml-wrapper): index, UUID, name, minor
//! number, memory, utilization, running compute processes, MIG mode.
//!
//! `[gpu] nvml_library` (issue 4) will name the library; tests and machines without a
//! GPU use the stand-in under tests/fake-nvml.

use nvml_wrapper::structs::device::MigMode;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cannot load NVML from {lib}: {source}; is the NVIDIA driver installed? ([gpu] nvml_library)")]
    Init {
        lib: String,
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("NVML: {what} of GPU {index}: {source}")]
    Query {
        what: &'static str,
        index: u32,
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("NVML: counting GPUs: {0}")]
    Count(nvml_wrapper::error::NvmlError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// Bytes, when the driver reports them.
    pub used_memory: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// N of /dev/nvidiaN.
    pub minor: u32,
    pub memory_total: u64,
    pub memory_used: u64,
    pub memory_free: u64,
    /// Percent of the last sample period the GPU was busy.
    pub utilization: u32,
    pub processes: Vec<GpuProcess>,
    /// MIG mode currently on (None where the GPU does not support MIG).
    pub mig: Option<bool>,
    /// Persistence mode (None where NVML cannot say): without it every nvmlInit
    /// may wait seconds for the driver to load the GPU.
    pub persistence: Option<bool>,
}

/// Reads every GPU through the NVML library at `lib` (the system's
/// libnvidia-ml.so.1 when `None`).
pub fn probe(lib: Option<&Path>) -> Result<Vec<GpuInfo>, GpuError> {
    let nvml = match lib {
        Some(p) => Nvml::builder().lib_path(p.as_os_str()).init(),
        None => Nvml::init(),
    }
    .map_err(|source| GpuError::Init {
        lib: lib
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "libnvidia-ml.so.1".into()),
        source,
    })?;
    let count = nvml.device_count().map_err(GpuError::Count)?;
    let mut out = Vec::with_capacity(count as usize);
    for index in 0..count {
        let q = |what| {
            move |source| GpuError::Query {
                what,
                index,
                source,
            }
        };
        let dev = nvml.device_by_index(index).map_err(q("handle"))?;
        let mem = dev.memory_info().map_err(q("memory"))?;
        let processes = dev
            .running_compute_processes()
            .map_err(q("compute processes"))?
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory: match p.used_gpu_memory {
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
                    nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                },
            })
            .collect();
        out.push(GpuInfo {
            index,
            uuid: dev.uuid().map_err(q("UUID"))?,
            name: dev.name().map_err(q("name"))?,
            minor: dev.minor_number().map_err(q("minor number"))?,
            memory_total: mem.total,
            memory_used: mem.used,
            memory_free: mem.free,
            utilization: dev.utilization_rates().map_err(q("utilization"))?.gpu,
            processes,
            persistence: dev.is_in_persistent_mode().ok(),
            mig: match dev.mig_mode() {
                Ok(MigMode { current, .. }) => Some(current == 1),
                Err(nvml_wrapper::error::NvmlError::NotSupported) => None,
                Err(source) => {
                    return Err(GpuError::Query {
                        what: "MIG mode",
                        index,
                        source,
                    })
                }
            },
        });
    }
    Ok(out)
}

/// Reads every GPU through `helper` (`mlenv-nvml`), for a process that cannot load
/// NVML itself: mlenv-runtime is linked statically (docs/design.md). The same GPUs as
/// [`probe`], or its message.
pub fn through(helper: &Path, lib: Option<&Path>) -> Result<Vec<GpuInfo>, String> {
    start_through(helper, lib).finish()
}

/// [`through`], started now and read by [`Reading::finish`]: the helper runs while
/// the caller goes on.
pub fn start_through(helper: &Path, lib: Option<&Path>) -> Reading {
    let mut args = Vec::new();
    if let Some(lib) = lib {
        args.push("--nvml-library".to_string());
        args.push(lib.display().to_string());
    }
    match super::helper::start(helper, &args) {
        Ok(running) => Reading::Running(running),
        Err(e) => Reading::Ready(Err(e)),
    }
}

/// The GPUs, read already or being read by a helper.
#[derive(Debug)]
pub enum Reading {
    Ready(Result<Vec<GpuInfo>, String>),
    Running(super::helper::Running),
}

impl Reading {
    /// The GPUs, or why they cannot be read.
    pub fn finish(self) -> Result<Vec<GpuInfo>, String> {
        match self {
            Reading::Ready(read) => read,
            Reading::Running(running) => running.finish(),
        }
    }
}

/// The file name of the test NVML library (tests/fake-nvml).
pub const FAKE_NVML: &str = "libmlenv_fake_nvml.so";

/// Where the test NVML library is built: beside the test binaries' directory.
pub fn fake_nvml_path(target_dir: &Path) -> PathBuf {
    target_dir.join(FAKE_NVML)
}

/// Puts the test NVML library built in `target_dir` into `dir` (created) as
/// libnvidia-ml.so.1, with `gpus_json` beside it as fake-nvml.json, where the library
/// reads its GPUs when $MLENV_FAKE_NVML_CONFIG is not set (mlenv-runtime under an
/// engine does not inherit a test's environment). Returns the library's path. For
/// tests and benchmarks.
pub fn install_fake_nvml(
    target_dir: &Path,
    dir: &Path,
    gpus_json: &str,
) -> Result<PathBuf, String> {
    let built = fake_nvml_path(target_dir);
    if !built.exists() {
        return Err(format!(
            "{} not built: run cargo build --workspace",
            built.display()
        ));
    }
    let lib = dir.join("libnvidia-ml.so.1");
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::copy(&built, &lib))
        .and_then(|_| std::fs::write(dir.join("fake-nvml.json"), gpus_json))
        .map_err(|e| {
            format!(
                "cannot install the test NVML library in {}: {e}",
                dir.display()
            )
        })?;
    Ok(lib)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A file built by `cargo build --workspace` into target/debug (the library of
    /// the test NVML, the `mlenv` binary), seen from target/debug/deps/<test binary>.
    /// None, and the test skipped, when it is not built; a failure under
    /// MLENV_E2E_REQUIRED=1.
    pub(crate) fn built(name: &str) -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let path = exe.parent()?.parent()?.join(name);
        if path.exists() {
            return Some(path);
        }
        let msg = format!("{} not built: run cargo build --workspace", path.display());
        if std::env::var("MLENV_E2E_REQUIRED").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        None
    }

    /// An idle GPU with no memory figures, for tables that set what they test.
    pub(crate) fn gpu(index: u32, uuid: &str) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.into(),
            name: String::new(),
            minor: index,
            memory_total: 0,
            memory_used: 0,
            memory_free: 0,
            utilization: 0,
            processes: vec![],
            mig: None,
            persistence: Some(true),
        }
    }

    pub(crate) fn fake() -> Option<PathBuf> {
        built(FAKE_NVML)
    }

    const GPUS: &str = r#"{"driver_version": "550.54.15", "gpus": [
        {"uuid": "GPU-00000000-0000-0000-0000-000000000000", "minor": 0,
         "memory_total": 85899345920, "memory_used": 1073741824,
         "utilization_gpu": 90, "utilization_memory": 40,
         "processes": [{"pid": 4242, "used_memory": 1073741824}, {"pid": 4343, "used_memory": 0}]},
        {"uuid": "GPU-11111111-1111-1111-1111-111111111111", "name": "NVIDIA A100-SXM4-40GB",
         "minor": 3, "memory_total": 42949672960, "mig_mode": 1, "persistence_mode": 0}
    ]}"#;

    #[test]
    fn probes_through_nvml_wrapper() {
        let Some(lib) = fake() else { return };
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gpus.json");
        std::fs::write(&cfg, GPUS).unwrap();
        // The stand-in reads its file from the environment at nvmlInit; tests in this
        // binary that set it run one at a time through this lock.
        let _g = ENV_LOCK.lock().unwrap();
        std::env::set_var("MLENV_FAKE_NVML_CONFIG", &cfg);
        let gpus = probe(Some(&lib)).unwrap();
        assert_eq!(gpus.len(), 2);
        let g0 = &gpus[0];
        assert_eq!(g0.index, 0);
        assert_eq!(g0.uuid, "GPU-00000000-0000-0000-0000-000000000000");
        assert_eq!(g0.name, "NVIDIA H100 80GB HBM3");
        assert_eq!((g0.minor, g0.utilization), (0, 90));
        assert_eq!(
            (g0.persistence, gpus[1].persistence),
            (Some(true), Some(false))
        );
        assert_eq!(
            (g0.memory_total, g0.memory_used, g0.memory_free),
            (80 << 30, 1 << 30, 79 << 30)
        );
        assert_eq!(
            g0.processes,
            vec![
                GpuProcess {
                    pid: 4242,
                    used_memory: Some(1 << 30)
                },
                GpuProcess {
                    pid: 4343,
                    used_memory: Some(0)
                }
            ]
        );
        assert_eq!(g0.mig, Some(false));
        let g1 = &gpus[1];
        assert_eq!(
            (g1.minor, g1.name.as_str(), g1.mig),
            (3, "NVIDIA A100-SXM4-40GB", Some(true))
        );
        assert!(g1.processes.is_empty());

        // A broken file: init fails with a message naming the library.
        std::fs::write(&cfg, "{").unwrap();
        let err = probe(Some(&lib)).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot load NVML from ") && err.contains("libmlenv_fake_nvml.so"),
            "{err}"
        );
        std::env::remove_var("MLENV_FAKE_NVML_CONFIG");
    }

    #[test]
    fn through_the_helper_reads_what_nvml_reads() {
        let Some(helper) = built("mlenv-nvml") else {
            return;
        };
        let Some((_g, lib, _d)) = fake_gpus(GPUS) else {
            return;
        };
        let here = probe(Some(&lib)).unwrap();
        assert_eq!(here.len(), 2);
        assert_eq!(through(&helper, Some(&lib)).unwrap(), here);
        // The helper's message, as a probe here gives it.
        let err = through(&helper, Some(Path::new("/nonexistent/libnvidia-ml.so.1"))).unwrap_err();
        assert!(
            err.starts_with("cannot load NVML from /nonexistent/libnvidia-ml.so.1")
                && err.contains("[gpu] nvml_library"),
            "{err}"
        );
        let err =
            super::super::helper::call::<Vec<GpuInfo>>(&helper, &["--bogus".into()]).unwrap_err();
        assert_eq!(err, "usage: mlenv-nvml [--nvml-library PATH]");
        let err = through(Path::new("/nonexistent/mlenv-nvml"), Some(&lib)).unwrap_err();
        assert!(
            err.starts_with("cannot run /nonexistent/mlenv-nvml: "),
            "{err}"
        );
    }

    /// As the driver's library does, so that loading it costs what it costs on a host
    /// with a GPU (tests/fake-nvml/src/not_supported.rs).
    #[test]
    fn the_test_library_exports_every_function_nvml_wrapper_looks_up() {
        let Some(lib) = built(FAKE_NVML) else {
            return;
        };
        // The names, from the source of nvml-wrapper-sys as this build uses it. For
        // this platform only: offline, cargo has the sources of no other platform's
        // dependencies where it only ever built for this one (a fresh CI machine).
        let platform = format!(
            "{}-unknown-linux-{}",
            std::env::consts::ARCH,
            if cfg!(target_env = "musl") {
                "musl"
            } else {
                "gnu"
            }
        );
        let meta = std::process::Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--offline",
                "--filter-platform",
                &platform,
                "--manifest-path",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .output()
            .unwrap();
        assert!(meta.status.success(), "{meta:?}");
        let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
        let manifest = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "nvml-wrapper-sys")
            .and_then(|p| p["manifest_path"].as_str())
            .unwrap();
        let bindings = Path::new(manifest).with_file_name("src/bindings.rs");
        let bindings = std::fs::read_to_string(&bindings).unwrap();
        let names: Vec<&str> = bindings
            .split("get(b\"")
            .skip(1)
            .filter_map(|rest| rest.split_once("\\0\"").map(|(name, _)| name))
            .collect();
        assert!(names.len() > 300, "{} names", names.len());
        let path = std::ffi::CString::new(lib.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the test library has no constructors; the handle stays open.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null());
        let missing: Vec<&str> = names
            .into_iter()
            .filter(|name| {
                let c = std::ffi::CString::new(*name).unwrap();
                // SAFETY: a lookup only; nothing is called.
                unsafe { libc::dlsym(handle, c.as_ptr()) }.is_null()
            })
            .collect();
        assert!(
            missing.is_empty(),
            "add to tests/fake-nvml/src/not_supported.rs: {}",
            missing.join(" ")
        );
    }

    #[test]
    fn missing_library_is_a_clear_error() {
        let err = probe(Some(Path::new("/nonexistent/libnvidia-ml.so.1")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot load NVML from /nonexistent/libnvidia-ml.so.1"),
            "{err}"
        );
        assert!(err.contains("[gpu] nvml_library"), "{err}");
    }

    pub static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The test NVML library serving `json`, for as long as the guard lives; None
    /// (test skipped) when it is not built.
    #[allow(clippy::type_complexity)]
    pub(crate) fn fake_gpus(
        json: &str,
    ) -> Option<(
        std::sync::MutexGuard<'static, ()>,
        PathBuf,
        tempfile::TempDir,
    )> {
        let lib = fake()?;
        let guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gpus.json");
        std::fs::write(&cfg, json).unwrap();
        std::env::set_var("MLENV_FAKE_NVML_CONFIG", &cfg);
        Some((guard, lib, dir))
    }
}
