//! End-to-end tests: real containers through mlenv-runtime, by runc directly, through a
//! real dockerd (and docker-compose), and through containerd's `ctr`.
//!
//! They need root, runc, and for the engine tests the engines started by
//! `tests/e2e-env.sh start` (which `.ci/run` does). Without them a test says it is
//! skipped and why, unless MLENV_E2E_REQUIRED=1 (set by CI), where that is a failure.

mod admission;
mod cli;
mod containerd;
mod docker;
mod faults;
mod gpu;
mod install;
mod package;
mod podman;
mod runc;
mod security;
mod support;
