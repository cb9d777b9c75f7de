//! The `vigo-spoke` command line as an operator meets it.

use std::process::Command;

fn spoke() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigo-spoke"))
}

#[test]
fn help_explains_every_command_and_flag() {
    let out = spoke().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in ["--config", "SIGHUP", "check-config", "pki", "token", "run"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let out = spoke().args(["pki", "init", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--san") && help.contains("--name"), "{help}");
}

#[test]
fn no_config_is_a_clear_error() {
    let out = spoke().output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    assert!(
        spoke()
            .args(["pki", "init"])
            .arg(&pki)
            .output()
            .unwrap()
            .status
            .success()
    );
    let again = spoke().args(["pki", "init"]).arg(&pki).output().unwrap();
    assert!(!again.status.success(), "pki init must not overwrite a CA");

    let base = "tls:\n  ca_cert: pki/ca.pem\n  ca_key: pki/ca.key\n  cert: pki/spoke.pem\n  key: pki/spoke.key\nbundle_signing_key: pki/bundle-signing.key\n";
    let cases = [
        ("checkin:\n  intervall: 30s\n", "intervall"),
        ("checkin:\n  interval: soon\n", "checkin.interval"),
        ("flush:\n  flushers: 0\n", "flush.flushers"),
        (
            "enrollment:\n  tokens:\n    - name: t\n      sha256: nothex\n",
            "enrollment.tokens[0].sha256",
        ),
    ];
    for (extra, key) in cases {
        let config = dir.path().join("spoke.yaml");
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let out = spoke().arg("--config").arg(&config).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra} accepted");
        assert!(
            err.contains(key),
            "error for {extra:?} does not name {key}:\n{err}"
        );
    }
}

#[test]
fn check_config_validates_config_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        spoke()
            .args(["pki", "init"])
            .arg(dir.path().join("pki"))
            .output()
            .unwrap()
            .status
            .success()
    );
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy");
    let config = dir.path().join("spoke.yaml");
    std::fs::write(
        &config,
        format!(
            "policy_dir: {}\ntls:\n  ca_cert: pki/ca.pem\n  ca_key: pki/ca.key\n  cert: pki/spoke.pem\n  key: pki/spoke.key\nbundle_signing_key: pki/bundle-signing.key\n",
            policy.display()
        ),
    )
    .unwrap();
    let out = spoke()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 hostcrate(s)"));
}

#[test]
fn token_new_prints_a_secret_and_its_hash() {
    let out = spoke()
        .args(["token", "new", "--uses", "5", "--ttl", "1h"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let secret = text.lines().next().unwrap().trim_start_matches("secret: ");
    let hash = vigo_common::traits::sha256(secret.as_bytes());
    assert!(text.contains(&hex::encode(hash)), "{text}");
    assert!(
        text.contains("uses: 5") && text.contains("expires:"),
        "{text}"
    );
}
