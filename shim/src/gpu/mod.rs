//! GPUs: what the host has (`probe`, through NVML) and what a container asks for
//! (`request`). Selection, leases and injection build on these (issue 4).

pub mod cdi;
pub mod devices;
pub mod helper;
pub mod inject;
pub mod mps;
pub mod probe;
pub mod request;
pub mod select;

pub use probe::{fake_nvml_path, install_fake_nvml, probe, GpuError, GpuInfo, GpuProcess};
