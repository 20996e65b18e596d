//! mlenv-nvml: the host's GPUs as NVML reports them, as one line of JSON, for
//! mlenv-runtime, which is linked statically and cannot load NVML (docs/design.md).
//! A small program of its own, because the runtime runs it on every create that asks
//! for GPUs; people read the same through `mlenv gpus`.
//!
//!   mlenv-nvml [--nvml-library PATH]
//!
//! Exit status 1 with NVML's message on stderr when the GPUs cannot be read.
//!
//! Its own C `main`, without Rust's start-up: that finds the main thread's stack
//! guard, which glibc does by reading /proc/self/maps, and this program has neither
//! deep recursion nor threads (0.08 ms less per create that asks for GPUs,
//! docs/benchmarks.md). Arguments still come from `std::env`, which glibc fills
//! before `main`; stdout is flushed before the return.
#![no_main]

use std::ffi::{c_char, c_int};
use std::io::Write;
use std::path::PathBuf;

#[no_mangle]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    let code = run();
    let _ = std::io::stdout().flush();
    code
}

fn run() -> c_int {
    let mut args = std::env::args_os().skip(1);
    let mut lib = None;
    while let Some(arg) = args.next() {
        match (arg.to_str(), args.next()) {
            (Some("--nvml-library"), Some(path)) => lib = Some(PathBuf::from(path)),
            _ => {
                eprintln!("mlenv: usage: mlenv-nvml [--nvml-library PATH]");
                return 2;
            }
        }
    }
    let line = mlenv::gpu::probe(lib.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|gpus| serde_json::to_string(&gpus).map_err(|e| e.to_string()));
    match line {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("mlenv: {e}");
            1
        }
    }
}
