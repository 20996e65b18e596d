//! The edit chain on arbitrary JSON: the security rules, the user mapping, the limit
//! edits and the hook injection either edit or fail with an error naming the field;
//! never a panic. Edits are idempotent: a second pass changes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mlenv::spec::Spec;
use std::path::Path;

fn policy() -> mlenv::policy::Policy {
    let text = r#"
[limits]
over_limit = "clamp"
default_memory = "256M"
max_memory = "1G"
default_cpus = 1
max_cpus = 4
default_pids = 100
max_pids = 1000
max_swap = "512M"
[user]
mapping = "fixed"
root = "remap"
uid = 1000
"#;
    let table = mlenv::policy::parse_file(Path::new("p.toml"), text).unwrap();
    let mut p = mlenv::policy::Policy::deserialize_table(table).unwrap();
    p.validate().unwrap();
    p
}

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let p = policy();
    let files = mlenv::hostfs::RealFiles;
    let _ = mlenv::security::check(&json, Some("abc"), &p.security, &files);
    let mut spec = Spec {
        path: "/b/config.json".into(),
        json,
    };
    if mlenv::user::map(&mut spec, &p.user, &files).is_err() {
        return;
    }
    let Ok(_) = mlenv::edits::apply_all(&mut spec, &p) else {
        return;
    };
    let Ok(_) = mlenv::lifecycle::inject(&mut spec, Path::new("/usr/bin/mlenv-hook"), None) else {
        return;
    };
    let once = spec.json.clone();
    let _ = mlenv::user::map(&mut spec, &p.user, &files).expect("the mapped spec maps again");
    let log = mlenv::edits::apply_all(&mut spec, &p).expect("the edited spec edits again");
    let again =
        mlenv::lifecycle::inject(&mut spec, Path::new("/usr/bin/mlenv-hook"), None).unwrap();
    assert!(!log.changed && !again, "second pass changed the spec");
    assert_eq!(spec.json, once);
});
