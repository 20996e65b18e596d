//! Policy parsing: any text is either a policy that validates, and survives a round
//! trip through `to_toml`, or an error naming a line; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/mlenv/mlenv.toml");
    let Ok(table) = mlenv::policy::parse_file(path, text) else {
        return;
    };
    let Ok(mut policy) = mlenv::policy::Policy::deserialize_table(table) else {
        return;
    };
    if policy.validate().is_err() {
        return;
    }
    // What mlenv writes as the last-known-good copy must read back the same.
    let again = mlenv::policy::parse_file(path, &policy.to_toml()).expect("to_toml parses");
    let mut back = mlenv::policy::Policy::deserialize_table(again).expect("to_toml deserializes");
    back.validate().expect("to_toml validates");
    assert_eq!(back, policy);
});
