//! A stand-in for NVIDIA's `libnvidia-ml.so`, so that mlenv's real NVML code
//! (nvml-wrapper) runs on machines without a GPU.
//!
//! It exports the `nvml*` symbols nvml-wrapper calls on mlenv's paths, with NVML's C
//! signatures and return codes, and as "not supported" every other one nvml-wrapper
//! looks up (`not_supported.rs`). The GPUs come from a JSON file, read afresh by every
//! `nvmlInit_v2`: `$MLENV_FAKE_NVML_CONFIG`, else `fake-nvml.json` beside this library.
//!
//! ```json
//! {"driver_version": "550.54.15",
//!  "gpus": [{"uuid": "GPU-0000...", "name": "NVIDIA H100 80GB HBM3", "minor": 0,
//!            "memory_total": 85899345920, "memory_used": 0,
//!            "utilization_gpu": 0, "utilization_memory": 0,
//!            "processes": [{"pid": 4242, "used_memory": 1073741824}],
//!            "mig_mode": 0, "persistence_mode": 1}]}
//! ```
#![allow(non_snake_case)]
#![allow(clippy::missing_safety_doc)]

use serde::Deserialize;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};
use std::sync::Mutex;

type Ret = c_uint;
const SUCCESS: Ret = 0;
const ERROR_UNINITIALIZED: Ret = 1;
const ERROR_INVALID_ARGUMENT: Ret = 2;
const ERROR_NOT_SUPPORTED: Ret = 3;
const ERROR_NOT_FOUND: Ret = 6;
const ERROR_INSUFFICIENT_SIZE: Ret = 7;
const ERROR_DRIVER_NOT_LOADED: Ret = 9;

mod not_supported;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_driver")]
    pub driver_version: String,
    pub gpus: Vec<Gpu>,
}

fn default_driver() -> String {
    "550.54.15".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub uuid: String,
    #[serde(default = "default_name")]
    pub name: String,
    pub minor: u32,
    #[serde(default = "default_memory")]
    pub memory_total: u64,
    #[serde(default)]
    pub memory_used: u64,
    #[serde(default)]
    pub utilization_gpu: u32,
    #[serde(default)]
    pub utilization_memory: u32,
    #[serde(default)]
    pub processes: Vec<Process>,
    #[serde(default)]
    pub mig_mode: u32,
    /// nvmlDeviceGetPersistenceMode: 1 enabled (the default), 0 disabled.
    #[serde(default = "enabled")]
    pub persistence_mode: u32,
}

fn enabled() -> u32 {
    1
}

/// Matches the default name: 80 GiB.
fn default_memory() -> u64 {
    80 << 30
}

fn default_name() -> String {
    "NVIDIA H100 80GB HBM3".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub pid: u32,
    #[serde(default)]
    pub used_memory: u64,
}

static STATE: Mutex<Option<Config>> = Mutex::new(None);

/// The directory this library was loaded from.
fn own_dir() -> Option<std::path::PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address and fills `info`.
    let ok = unsafe { libc::dladdr(nvmlInit_v2 as *const c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    std::path::Path::new(&path)
        .parent()
        .map(|p| p.to_path_buf())
}

fn load() -> Result<Config, String> {
    let path = match std::env::var_os("MLENV_FAKE_NVML_CONFIG") {
        Some(p) => std::path::PathBuf::from(p),
        None => own_dir()
            .ok_or("cannot locate the library")?
            .join("fake-nvml.json"),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `f` on the GPU behind a device handle (index + 1).
fn with_gpu(dev: *mut c_void, f: impl FnOnce(&Gpu, u32) -> Ret) -> Ret {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cfg) = state.as_ref() else {
        return ERROR_UNINITIALIZED;
    };
    let idx = (dev as usize).wrapping_sub(1);
    match cfg.gpus.get(idx) {
        Some(g) => f(g, idx as u32),
        None => ERROR_INVALID_ARGUMENT,
    }
}

/// Copies `s` into a C buffer of `len` bytes, NUL-terminated.
unsafe fn put_str(s: &str, buf: *mut c_char, len: c_uint) -> Ret {
    if buf.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > len as usize {
        return ERROR_INSUFFICIENT_SIZE;
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, buf, bytes.len());
    *buf.add(bytes.len()) = 0;
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    match load() {
        Ok(cfg) => {
            *STATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(cfg);
            SUCCESS
        }
        Err(e) => {
            eprintln!("fake-nvml: {e}");
            ERROR_DRIVER_NOT_LOADED
        }
    }
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    nvmlInit_v2()
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlErrorString(ret: Ret) -> *const c_char {
    match ret {
        SUCCESS => c"Success".as_ptr(),
        ERROR_UNINITIALIZED => c"Uninitialized".as_ptr(),
        ERROR_INVALID_ARGUMENT => c"Invalid Argument".as_ptr(),
        ERROR_NOT_FOUND => c"Not Found".as_ptr(),
        ERROR_INSUFFICIENT_SIZE => c"Insufficient Size".as_ptr(),
        ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded".as_ptr(),
        _ => c"Unknown Error".as_ptr(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> Ret {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    match state.as_ref() {
        Some(cfg) => put_str(&cfg.driver_version, buf, len),
        None => ERROR_UNINITIALIZED,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    match (state.as_ref(), count.is_null()) {
        (None, _) => ERROR_UNINITIALIZED,
        (_, true) => ERROR_INVALID_ARGUMENT,
        (Some(cfg), false) => {
            *count = cfg.gpus.len() as c_uint;
            SUCCESS
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    dev: *mut *mut c_void,
) -> Ret {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cfg) = state.as_ref() else {
        return ERROR_UNINITIALIZED;
    };
    if dev.is_null() || index as usize >= cfg.gpus.len() {
        return ERROR_INVALID_ARGUMENT;
    }
    *dev = (index as usize + 1) as *mut c_void;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    dev: *mut *mut c_void,
) -> Ret {
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cfg) = state.as_ref() else {
        return ERROR_UNINITIALIZED;
    };
    if uuid.is_null() || dev.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    let want = CStr::from_ptr(uuid).to_string_lossy();
    match cfg.gpus.iter().position(|g| g.uuid == want) {
        Some(i) => {
            *dev = (i + 1) as *mut c_void;
            SUCCESS
        }
        None => ERROR_NOT_FOUND,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(dev: *mut c_void, index: *mut c_uint) -> Ret {
    with_gpu(dev, |_, i| {
        *index = i;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(dev: *mut c_void, buf: *mut c_char, len: c_uint) -> Ret {
    with_gpu(dev, |g, _| put_str(&g.uuid, buf, len))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(dev: *mut c_void, buf: *mut c_char, len: c_uint) -> Ret {
    with_gpu(dev, |g, _| put_str(&g.name, buf, len))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(dev: *mut c_void, minor: *mut c_uint) -> Ret {
    with_gpu(dev, |g, _| {
        *minor = g.minor;
        SUCCESS
    })
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(dev: *mut c_void, mem: *mut MemoryV2) -> Ret {
    if mem.is_null() || (*mem).version != (std::mem::size_of::<MemoryV2>() | (2 << 24)) as c_uint {
        return ERROR_INVALID_ARGUMENT;
    }
    with_gpu(dev, |g, _| {
        (*mem).total = g.memory_total;
        (*mem).reserved = 0;
        (*mem).used = g.memory_used;
        (*mem).free = g.memory_total.saturating_sub(g.memory_used);
        SUCCESS
    })
}

#[repr(C)]
pub struct MemoryV1 {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(dev: *mut c_void, mem: *mut MemoryV1) -> Ret {
    with_gpu(dev, |g, _| {
        (*mem).total = g.memory_total;
        (*mem).used = g.memory_used;
        (*mem).free = g.memory_total.saturating_sub(g.memory_used);
        SUCCESS
    })
}

#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    dev: *mut c_void,
    u: *mut Utilization,
) -> Ret {
    with_gpu(dev, |g, _| {
        (*u).gpu = g.utilization_gpu;
        (*u).memory = g.utilization_memory;
        SUCCESS
    })
}

#[repr(C)]
pub struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// NVML's two-call protocol: with no buffer (or too small a one), the count and
/// INSUFFICIENT_SIZE; with room, the records.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    dev: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    if count.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    with_gpu(dev, |g, _| {
        let n = g.processes.len() as c_uint;
        if infos.is_null() || *count < n {
            *count = n;
            return if n == 0 {
                SUCCESS
            } else {
                ERROR_INSUFFICIENT_SIZE
            };
        }
        for (i, p) in g.processes.iter().enumerate() {
            *infos.add(i) = ProcessInfo {
                pid: p.pid,
                used_gpu_memory: p.used_memory,
                gpu_instance_id: u32::MAX,
                compute_instance_id: u32::MAX,
            };
        }
        *count = n;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    dev: *mut c_void,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    with_gpu(dev, |g, _| {
        *current = g.mig_mode;
        *pending = g.mig_mode;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPersistenceMode(dev: *mut c_void, mode: *mut c_uint) -> Ret {
    with_gpu(dev, |g, _| {
        *mode = g.persistence_mode;
        SUCCESS
    })
}

/// nvml-wrapper resolves these at load and calls them from destructors.
#[no_mangle]
pub extern "C" fn nvmlEventSetFree(_set: *mut c_void) -> Ret {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlGpmSampleFree(_sample: *mut c_void) -> Ret {
    SUCCESS
}

/// Keeps the C int type in the exported ABI honest on every target.
const _: () = assert!(std::mem::size_of::<c_int>() == 4);
