//! The policy pipeline: load and validate a tree, compile it, sign bundles and verify
//! them as an envoy does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vigo_common::policy::bundle::{BundleError, Seal, SignedBundle, verify_delivery};
use vigo_common::policy::{PolicyErrors, compile, load_dir, parse_tree, validate};
use vigo_common::signing::generate_key;

fn tree(files: &[(&str, &str)]) -> Result<vigo_common::policy::PolicyTree, PolicyErrors> {
    let map: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    parse_tree(&map)
}

fn messages(err: PolicyErrors) -> String {
    err.to_string()
}

const HOSTS: &str = "hostcrates:\n  - name: all\n    match: '*'\n    roles: [r]\n";
const ROLE: &str = "configcrates: [c]\n";

#[test]
fn example_policy_loads_and_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy");
    let tree = load_dir(&dir).expect("example policy is valid");
    let compiled = compile(&tree).expect("compiles");
    let web = compiled.match_hostname("web-01");
    assert_eq!(compiled.hostcrates[web].name, "web");
    assert_eq!(
        compiled.hostcrates[compiled.match_hostname("db-1")].name,
        "everything-else"
    );
    // Precedence: configcrate default 8000 < role 80 < hostcrate 8080.
    assert_eq!(compiled.hostcrates[web].variables["http_port"], "8080");
    assert_eq!(
        compiled.hostcrates[web].variables["greeting"],
        "Managed by Vigo"
    );
    let names: Vec<_> = compiled.hostcrates[web]
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["motd", "vigo-layout", "webapp"]);
    // The nginx server: its configcrate only where the package manager is Debian's, the
    // role's port over the configcrate's, the hostcrate's revision over both.
    let www = &compiled.hostcrates[compiled.match_hostname("www-1")];
    assert_eq!(www.name, "www");
    let with_conditions: Vec<_> = www
        .modules
        .iter()
        .zip(&www.conditions)
        .map(|(m, c)| (m.name.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        with_conditions,
        [
            ("motd", ""),
            ("vigo-layout", ""),
            ("nginx", "traits.os in [\"debian\", \"ubuntu\"]")
        ]
    );
    assert_eq!(www.variables["web_port"], "80");
    assert_eq!(www.variables["site_revision"], "1");
}

#[test]
fn hostname_patterns_are_case_insensitive_and_first_match_wins() {
    let t = tree(&[
        (
            "hostcrates.yaml",
            "hostcrates:\n  - name: a\n    match: 'WEB-*'\n    roles: [r]\n  - name: b\n    match: 'web-1'\n    roles: [r]\n",
        ),
        ("roles/r.yaml", ROLE),
        ("configcrates/c.yaml", "resources: []\n"),
    ])
    .unwrap();
    let c = compile(&t).expect("compiles");
    assert_eq!(c.hostcrates[c.match_hostname("web-1")].name, "a");
    assert_eq!(c.match_hostname("db-1"), c.fallback_index());
}

#[test]
fn unknown_keys_name_file_and_item() {
    let err = tree(&[
        ("hostcrates.yaml", HOSTS),
        ("roles/r.yaml", ROLE),
        (
            "configcrates/c.yaml",
            "resources:\n  - id: f\n    type: file\n    path: /x\n    contnet: hi\n",
        ),
    ])
    .unwrap_err();
    let msg = messages(err);
    assert!(msg.contains("configcrates/c.yaml: resource c/f"), "{msg}");
    assert!(msg.contains("contnet"), "{msg}");
}

#[test]
fn missing_role_and_configcrate_are_named() {
    let err = tree(&[
        (
            "hostcrates.yaml",
            "hostcrates:\n  - name: all\n    match: '*'\n    roles: [r, ghost]\n",
        ),
        ("roles/r.yaml", "configcrates: [c, phantom]\n"),
        ("configcrates/c.yaml", "resources: []\n"),
    ])
    .unwrap_err();
    let msg = messages(err);
    assert!(
        msg.contains("hostcrates.yaml: hostcrate all: unknown role \"ghost\""),
        "{msg}"
    );
    assert!(
        msg.contains("roles/r.yaml: role r: unknown configcrate \"phantom\""),
        "{msg}"
    );
}

#[test]
fn dependency_cycles_are_named() {
    let err = tree(&[
        ("hostcrates.yaml", HOSTS),
        ("roles/r.yaml", ROLE),
        (
            "configcrates/c.yaml",
            "resources:\n  - {id: a, type: directory, path: /a, depends_on: [b]}\n  - {id: b, type: directory, path: /b, depends_on: [c]}\n  - {id: c, type: directory, path: /c, depends_on: [a]}\n",
        ),
    ])
    .unwrap_err();
    let msg = messages(err);
    assert!(
        msg.contains("dependency cycle: c/a -> c/b -> c/c -> c/a"),
        "{msg}"
    );
}

#[test]
fn bad_values_are_refused_with_reasons() {
    let err = tree(&[
        ("hostcrates.yaml", HOSTS),
        ("roles/r.yaml", ROLE),
        (
            "configcrates/c.yaml",
            concat!(
                "resources:\n",
                "  - {id: m, type: file, path: /m, mode: 644}\n",
                "  - {id: rel, type: directory, path: relative}\n",
                "  - {id: t, type: helm_chart, name: nginx}\n",
                "  - {id: re, type: file_line, path: /f, line: x, match: '('}\n",
                "  - {id: dep, type: directory, path: /d, depends_on: [nowhere]}\n",
                "  - {id: tpl, type: file, path: /t, content: '{{ unclosed'}\n",
            ),
        ),
        ("stray.yaml", "x: 1\n"),
    ])
    .unwrap_err();
    let msg = messages(err);
    for needle in [
        "resource c/m: mode must be a quoted octal string",
        "resource c/rel: path \"relative\" must be absolute",
        "resource c/t: unknown type \"helm_chart\"",
        "resource c/re: match: bad regular expression",
        "resource c/dep: depends on unknown resource \"c/nowhere\"",
        "resource c/tpl: content: bad template",
        "stray.yaml: unexpected file",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
}

#[test]
fn cross_crate_dependency_must_be_in_the_same_bundle() {
    let err = tree(&[
        (
            "hostcrates.yaml",
            "hostcrates:\n  - name: small\n    match: '*'\n    roles: [r]\n",
        ),
        ("roles/r.yaml", "configcrates: [app]\n"),
        ("roles/other.yaml", "configcrates: [lib]\n"),
        (
            "configcrates/app.yaml",
            "resources:\n  - {id: a, type: directory, path: /a, depends_on: [lib/base]}\n",
        ),
        (
            "configcrates/lib.yaml",
            "resources:\n  - {id: base, type: directory, path: /b}\n",
        ),
    ])
    .unwrap_err();
    assert!(
        messages(err).contains("configcrate lib is not in this hostcrate's roles"),
        "cross-bundle dependency accepted"
    );
}

#[test]
fn same_tree_compiles_to_same_fingerprint_and_changes_move_it() {
    let files = [
        ("hostcrates.yaml", HOSTS),
        ("roles/r.yaml", ROLE),
        (
            "configcrates/c.yaml",
            "resources:\n  - {id: a, type: file, path: /a, content: one}\n",
        ),
    ];
    let key = generate_key();
    let sign = |files: &[(&str, &str)]| {
        let t = tree(files).unwrap();
        let c = compile(&t).expect("compiles");
        SignedBundle::sign(&c.hostcrates[0], &Seal::own(c.version, 1, &key), &key)
    };
    let a = sign(&files);
    let b = sign(&files);
    assert_eq!(a.fingerprint, b.fingerprint);
    let mut changed = files;
    changed[2].1 = "resources:\n  - {id: a, type: file, path: /a, content: two}\n";
    assert_ne!(sign(&changed).fingerprint, a.fingerprint);
}

#[test]
fn bundles_verify_with_stubs_and_refuse_tampering() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy");
    let compiled = compile(&load_dir(&dir).unwrap()).unwrap();
    let key = generate_key();
    let trusted = [key.verifying_key()];
    let web = &compiled.hostcrates[compiled.match_hostname("web-1")];
    let bundle = SignedBundle::sign(web, &Seal::own(compiled.version, 1, &key), &key);

    let full = bundle.delivery(|_| false);
    assert_eq!(full.modules.len(), 3);
    let verified = verify_delivery(&full, &trusted, |_| None).unwrap();
    assert_eq!(verified.fingerprint, bundle.fingerprint);
    assert_eq!(verified.decode_modules().unwrap().len(), 3);

    // The envoy holds every module: the delivery carries stubs only, and verifies from
    // the envoy's own cache.
    let held: BTreeMap<[u8; 32], bytes::Bytes> = verified.modules.iter().cloned().collect();
    let stubs = bundle.delivery(|h| held.contains_key(h));
    assert!(stubs.modules.is_empty());
    verify_delivery(&stubs, &trusted, |h| held.get(h).cloned()).unwrap();
    assert_eq!(
        verify_delivery(&stubs, &trusted, |_| None).unwrap_err(),
        BundleError::MissingModule("motd".into())
    );

    let mut tampered = full.clone();
    tampered.modules[0].body = bytes::Bytes::from_static(b"evil");
    assert_eq!(
        verify_delivery(&tampered, &trusted, |_| None).unwrap_err(),
        BundleError::ModuleHash("motd".into())
    );
    let mut resigned = full.clone();
    let mut sig = resigned.signature.to_vec();
    sig[0] ^= 1;
    resigned.signature = sig.into();
    assert_eq!(
        verify_delivery(&resigned, &trusted, |_| None).unwrap_err(),
        BundleError::BadSignature
    );
    let stranger = [generate_key().verifying_key()];
    assert_eq!(
        verify_delivery(&full, &stranger, |_| None).unwrap_err(),
        BundleError::UntrustedKey
    );
    let mut truncated = full;
    truncated.manifest = truncated.manifest.slice(..truncated.manifest.len() / 2);
    assert!(verify_delivery(&truncated, &trusted, |_| None).is_err());
}

fn hostcrates_with_patterns(patterns: &[String]) -> String {
    let list: Vec<String> = patterns.iter().map(|p| format!("'{p}'")).collect();
    format!(
        "hostcrates:\n  - name: big\n    match: [{}]\n    roles: [r]\n",
        list.join(", ")
    )
}

fn files(entries: &[(&str, String)]) -> BTreeMap<PathBuf, String> {
    entries
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.clone()))
        .collect()
}

/// What parses but cannot be served is refused at validation, by name — never a panic
/// in the compiler on a spoke.
#[test]
fn patterns_the_matcher_cannot_build_fail_validation_not_compilation() {
    let long = "?".repeat(1_000_000);
    let err = validate(&files(&[
        ("hostcrates.yaml", hostcrates_with_patterns(&[long])),
        ("roles/r.yaml", ROLE.into()),
        ("configcrates/c.yaml", "resources: []\n".into()),
    ]))
    .unwrap_err();
    assert!(
        messages(err).contains("hostcrate big: a pattern of 1000000 bytes"),
        "an oversized pattern is named"
    );

    // Each pattern within the length limit, together too large for the regex set.
    let many: Vec<String> = (0..4_000)
        .map(|i| format!("{}-{i}", "?".repeat(200)))
        .collect();
    let tree = tree(&[
        ("hostcrates.yaml", &hostcrates_with_patterns(&many)),
        ("roles/r.yaml", ROLE),
        ("configcrates/c.yaml", "resources: []\n"),
    ])
    .expect("parses: every pattern is a valid glob");
    let compiled = std::panic::catch_unwind(|| compile(&tree)).expect("compile never panics");
    let msg = messages(compiled.unwrap_err());
    assert!(
        msg.contains("hostcrates.yaml: hostcrate big: its 4000 pattern(s) do not compile"),
        "{msg}"
    );
}

/// YAML aliases let a small tree expand into a large bundle: the bundle is measured
/// after compiling, against what an envoy decodes.
#[test]
fn a_bundle_larger_than_an_envoy_accepts_fails_validation() {
    let content = "x".repeat(9 << 20);
    let crate_text = |copies: usize| {
        let mut text = format!(
            "resources:\n  - {{id: f0, type: file, path: /f0, template: false, content: &big '{content}'}}\n"
        );
        for i in 1..copies {
            text.push_str(&format!(
                "  - {{id: f{i}, type: file, path: /f{i}, template: false, content: *big}}\n"
            ));
        }
        text
    };
    let with = |copies| {
        validate(&files(&[
            (
                "hostcrates.yaml",
                "hostcrates:\n  - name: fat\n    match: '*'\n    roles: [r]\n".into(),
            ),
            ("roles/r.yaml", ROLE.into()),
            ("configcrates/c.yaml", crate_text(copies)),
        ]))
    };
    assert!(with(1).is_ok(), "a 9 MiB bundle is deliverable");
    let msg = messages(with(2).unwrap_err());
    assert!(
        msg.contains("hostcrate fat: its bundle is") && msg.contains("an envoy accepts at most"),
        "{msg}"
    );
}

#[test]
fn the_tree_walk_refuses_links_and_does_not_follow_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("policy");
    std::fs::create_dir_all(root.join("roles")).unwrap();
    std::fs::create_dir_all(root.join("configcrates")).unwrap();
    std::fs::write(root.join("hostcrates.yaml"), HOSTS).unwrap();
    std::fs::write(root.join("roles/r.yaml"), ROLE).unwrap();
    // A file outside the tree, linked in; and two directory links that loop.
    let outside = dir.path().join("secret.yaml");
    std::fs::write(&outside, "resources: []\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("configcrates/c.yaml")).unwrap();
    std::os::unix::fs::symlink(&root, root.join("configcrates/loop")).unwrap();
    std::os::unix::fs::symlink(root.join("configcrates"), root.join("roles/loop")).unwrap();
    let err = load_dir(&root).unwrap_err();
    let msg = messages(err);
    assert!(
        msg.contains("configcrates/c.yaml: is a symbolic link"),
        "{msg}"
    );
    assert!(
        msg.contains("configcrates/loop: is a symbolic link"),
        "{msg}"
    );
    assert!(msg.contains("roles/loop: is a symbolic link"), "{msg}");
}

/// A bundle names the hostnames it is for (first match wins) and its generation; an
/// envoy checks both before taking it.
#[test]
fn bundles_say_which_hosts_they_are_for_and_how_new_they_are() {
    use vigo_common::policy::bundle::check_applicable;
    let t = tree(&[
        (
            "hostcrates.yaml",
            "hostcrates:\n  - {name: web, match: ['WEB-*', 'www'], roles: [r]}\n  - {name: rest, match: '*', roles: [r]}\n",
        ),
        ("roles/r.yaml", ROLE),
        ("configcrates/c.yaml", "resources: []\n"),
    ])
    .unwrap();
    let c = compile(&t).unwrap();
    let key = generate_key();
    let manifest = |i: usize, generation: u64| {
        let b = SignedBundle::sign(
            &c.hostcrates[i],
            &Seal::own(c.version, generation, &key),
            &key,
        );
        let d = b.delivery(|_| false);
        verify_delivery(&d, &[key.verifying_key()], |_| None)
            .unwrap()
            .manifest
    };
    let (web, rest, fallback) = (manifest(0, 7), manifest(1, 7), manifest(2, 7));
    assert_eq!(web.generation, 7);
    assert!(check_applicable(&web, "web-1", None).is_ok());
    assert!(
        check_applicable(&web, "Web-1", Some(7)).is_ok(),
        "case-insensitive, same generation"
    );
    assert!(check_applicable(&web, "db-1", None).is_err());
    assert!(check_applicable(&rest, "db-1", None).is_ok());
    assert!(
        check_applicable(&rest, "web-1", None).is_err(),
        "web-1 belongs to an earlier hostcrate"
    );
    assert!(
        check_applicable(&fallback, "db-1", None).is_err(),
        "`*` matches db-1"
    );
    assert_eq!(
        check_applicable(&web, "web-1", Some(8)).unwrap_err(),
        BundleError::Older { held: 8, got: 7 }
    );
}
