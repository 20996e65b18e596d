//! mlenv: an OCI runtime wrapper for shared GPU servers.
//!
//! `mlenv-runtime` sits between the engine and runc: on `create` it rewrites the
//! bundle's config.json by policy, decides admission, records the decision in a SQLite
//! inventory and execs the low-level runtime with the original argv. Every other
//! subcommand passes straight through.

pub mod admission;
pub mod affinity;
pub mod argv;
pub mod clock;
pub mod create;
pub mod doctor;
pub mod edits;
pub mod fsutil;
pub mod gpu;
pub mod hook;
pub mod host;
pub mod hostfs;
pub mod install;
pub mod inventory;
pub mod lifecycle;
pub mod liveness;
pub mod lowlevel;
pub mod metrics;
pub mod policy;
pub mod runclog;
pub mod security;
pub mod spec;
pub mod sqlmem;
pub mod status;
pub mod syslog;
pub mod trust;
pub mod units;
pub mod update;
pub mod user;

/// The real config.json files captured from Docker, podman and containerd, copied
/// from the workspace's shared fixtures so that a clone tests on its own.
#[cfg(test)]
pub(crate) const SPEC_FIXTURES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/specs");
