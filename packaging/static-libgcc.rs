//! Build script of mlenv's glibc binaries (and of the test NVML library): libgcc
//! linked in statically, so that they load no libgcc_s.so.1.
//!
//! Rust's standard library asks the linker for `-lgcc_s` (its unwinder, which a
//! release build, `panic = "abort"`, never runs). Loading that library costs every
//! process that starts about 0.13 ms on the VM of docs/benchmarks.md, and these start
//! on a container's path: `mlenv-nvml` on each create that asks for GPUs,
//! `mlenv-hook` at each start and stop where it is injected. A directory in which
//! `libgcc_s.a` is gcc's own static `libgcc_eh.a` comes first in the search path, so
//! that `-lgcc_s` finds it. Where the linker has no libgcc_eh.a, nothing changes.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Run again when the linker changes (cargo also runs it again when it changes).
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    // musl (mlenv-runtime as it ships) links statically, with Rust's own unwinder.
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu") {
        return;
    }
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".into());
    let found = Command::new(&linker)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        // Not found, gcc prints the bare name back.
        .filter(|p| p.is_absolute() && p.exists());
    let Some(libgcc_eh) = found else {
        println!("cargo:warning={linker} has no libgcc_eh.a: libgcc_s.so.1 stays a dependency");
        return;
    };
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("static-libgcc");
    let link = dir.join("libgcc_s.a");
    std::fs::create_dir_all(&dir).expect("OUT_DIR is writable");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libgcc_eh, &link).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-arg=-L{}", dir.display());
}
