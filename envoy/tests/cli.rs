//! The `vigo-sim` command line.

use std::process::Command;

#[test]
fn help_lists_the_load_knobs() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigo-sim"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--target",
        "--envoys",
        "--interval",
        "--duration",
        "--ramp",
        "--connections",
        "--spoke-pid",
        "--json",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn shared_connections_without_a_relay_certificate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not read before the check").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigo-sim"))
        .args(["--envoys", "10", "--connections", "2", "--ca"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--relay-cert"), "{err}");
}

#[test]
fn envoy_help_explains_commands_and_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigo-envoy"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["enroll", "run", "once", "status", "--state-dir", "exits 0"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn envoy_without_identity_says_how_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigo-envoy"))
        .arg("--state-dir")
        .arg(dir.path().join("none"))
        .arg("once")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vigo-envoy enroll"));
}
