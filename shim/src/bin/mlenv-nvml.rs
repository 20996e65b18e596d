//! mlenv-nvml: the host's GPUs as NVML reports them, as one line of JSON, for
//! mlenv-runtime, which is linked statically and cannot load NVML (docs/design.md).
//! A small program of its own, because the runtime runs it on every create that asks
//! for GPUs; people read the same through `mlenv gpus`.
//!
//!   mlenv-nvml [--nvml-library PATH]
//!
//! Exit status 1 with NVML's message on stderr when the GPUs cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut lib = None;
    while let Some(arg) = args.next() {
        match (arg.to_str(), args.next()) {
            (Some("--nvml-library"), Some(path)) => lib = Some(PathBuf::from(path)),
            _ => {
                eprintln!("mlenv: usage: mlenv-nvml [--nvml-library PATH]");
                return ExitCode::from(2);
            }
        }
    }
    let line = mlenv::gpu::probe(lib.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|gpus| serde_json::to_string(&gpus).map_err(|e| e.to_string()));
    match line {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mlenv: {e}");
            ExitCode::FAILURE
        }
    }
}
