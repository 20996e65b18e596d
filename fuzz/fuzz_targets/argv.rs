//! argv scanning: any argument list, NUL-separated, scans without panicking, and what
//! it finds comes from the arguments.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = data
        .split(|b| *b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let inv = mlenv::argv::scan(&args);
    if let Some(id) = &inv.container_id {
        assert!(args
            .iter()
            .any(|a| a.to_string_lossy().contains(id.as_str())));
    }
});
