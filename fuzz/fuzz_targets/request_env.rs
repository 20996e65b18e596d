//! Request parsing from a container's environment: any set of `NAME=value` lines (the
//! request variables and NVIDIA's), with or without NVIDIA's hook, parses to a request
//! or an error, and an MPS share within bounds or refusals; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mlenv::spec::Spec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let hook = text.starts_with('!');
    let env: Vec<&str> = text.lines().collect();
    let mut json = serde_json::json!({"process": {"env": env}});
    if hook {
        json["hooks"] =
            serde_json::json!({"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook"}]});
    }
    let spec = Spec {
        path: "/b/config.json".into(),
        json,
    };
    let _ = mlenv::gpu::request::parse(&spec);
    let mps = mlenv::gpu::mps::MpsSection::default();
    if let Ok(share) = mlenv::gpu::mps::ask(&spec, &mps) {
        assert!(share.threads >= 1 && share.threads <= 100, "{share:?}");
        assert!(share.memory >= 512 << 20, "{share:?}");
    }
});
