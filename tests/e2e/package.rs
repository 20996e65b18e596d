//! The .deb built by packaging/build-deb.sh from this build's binaries, installed with
//! dpkg into a root of its own (the host's packages are left alone): the binaries
//! run, the shipped policy validates and is a conffile an upgrade keeps.

use crate::support::*;
use std::fs;
use std::path::Path;
use std::process::Command;

#[test]
fn the_deb_installs_and_keeps_the_admins_policy() {
    if !require("package_deb", &["dpkg", "dpkg-deb", "strip"], &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(runtime()).parent().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/build-deb.sh");
    let deb = ok(Command::new("bash")
        .arg(script)
        .arg(bin)
        .arg(dir.path().join("out")));
    let deb = deb.trim();
    assert!(deb.ends_with(".deb"), "{deb}");
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let install = |extra: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(extra)
            .args(["-i", deb]);
        ok(&mut c)
    };
    let out = install(&[]);
    assert!(out.contains("register it with your engine"), "{out}");
    for b in ["mlenv", "mlenv-runtime", "mlenv-hook", "mlenv-nvml"] {
        assert!(root.join("usr/bin").join(b).is_file(), "{b} not installed");
    }
    let version = ok(Command::new(root.join("usr/bin/mlenv")).arg("--version"));
    assert!(version.starts_with("mlenv "), "{version}");
    let policy = root.join("etc/mlenv/mlenv.toml");
    let check = ok(Command::new(root.join("usr/bin/mlenv"))
        .args(["policy", "check"])
        .arg(&policy));
    assert!(check.starts_with("policy ok: "), "{check}");
    assert_eq!(
        fs::read_to_string(root.join("var/lib/dpkg/info/mlenv.conffiles")).unwrap(),
        "/etc/mlenv/mlenv.toml\n"
    );
    assert!(root
        .join("usr/share/mlenv/oci-hooks.d/mlenv.json")
        .is_file());
    // An admin's edit survives an upgrade (the conffile is kept).
    let edited = format!(
        "{}\n# edited by the admin\n",
        fs::read_to_string(&policy).unwrap()
    );
    fs::write(&policy, &edited).unwrap();
    install(&["--force-confold"]);
    assert_eq!(fs::read_to_string(&policy).unwrap(), edited);
}

/// The glibc binaries, and the test NVML library (as the driver's own does not), load
/// no libgcc_s.so.1: packaging/static-libgcc.rs links libgcc in statically, which
/// saves each start of mlenv-nvml and mlenv-hook on a container's path its loading.
#[test]
fn glibc_binaries_need_no_libgcc_s() {
    if !require("package_static_libgcc", &["readelf"], &[]) {
        return;
    }
    let dir = Path::new(cli()).parent().unwrap();
    let target_dir = Path::new(env!("CARGO_BIN_EXE_mlenv")).parent().unwrap();
    let files = [
        dir.join("mlenv"),
        dir.join("mlenv-hook"),
        dir.join("mlenv-nvml"),
        mlenv::gpu::fake_nvml_path(target_dir),
    ];
    for f in &files {
        let dynamic = ok(Command::new("readelf").arg("-d").arg(f));
        assert!(dynamic.contains("(NEEDED)"), "{}: {dynamic}", f.display());
        assert!(
            !dynamic.contains("libgcc_s"),
            "{} needs libgcc_s: {dynamic}",
            f.display()
        );
    }
}

/// The .rpm of packaging/build-rpm.sh: the same files, the policy a
/// %config(noreplace) file.
#[test]
fn the_rpm_holds_the_binaries_and_the_policy_as_config() {
    if !require("package_rpm", &["rpmbuild", "rpm"], &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(runtime()).parent().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/build-rpm.sh");
    let rpm = ok(Command::new("bash")
        .arg(script)
        .arg(bin)
        .arg(dir.path().join("out")));
    let rpm = rpm.trim();
    let files = ok(Command::new("rpm").args(["-qlp", rpm]));
    for f in [
        "/usr/bin/mlenv",
        "/usr/bin/mlenv-runtime",
        "/usr/bin/mlenv-hook",
        "/usr/bin/mlenv-nvml",
        "/etc/mlenv/mlenv.toml",
        "/usr/share/mlenv/oci-hooks.d/mlenv.json",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in\n{files}");
    }
    assert_eq!(
        ok(Command::new("rpm").args(["-qcp", rpm])).trim(),
        "/etc/mlenv/mlenv.toml"
    );
}
