//! The plan's tests: dependency order and failures, conditions, refreshes.

use super::*;

fn exec(id: &str, command: &str, deps: &[&str]) -> pb::Resource {
    pb::Resource {
        id: id.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        r#type: "exec".into(),
        spec: Some(pb::resource::Spec::Exec(pb::ExecSpec {
            command: command.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn run(resources: Vec<pb::Resource>) -> Vec<(String, pb::Outcome)> {
    let module = pb::Module {
        name: "m".into(),
        resources,
    };
    let traits = TraitMap::new();
    let facts = Facts {
        hostname: "h",
        traits: &traits,
    };
    apply(&[module], &pb::BundleManifest::default(), &facts, false)
        .into_iter()
        .map(|r| (r.id, r.outcome))
        .collect()
}

#[test]
fn a_failure_skips_exactly_its_dependents() {
    use pb::Outcome::*;
    let got = run(vec![
        exec("m/c", "true", &["m/b"]),
        exec("m/a", "false", &[]),
        exec("m/b", "true", &["m/a"]),
        exec("m/d", "true", &[]),
        exec("m/e", "true", &["m/d"]),
    ]);
    assert_eq!(
        got,
        [
            ("m/a".to_string(), Failed),
            ("m/d".to_string(), Changed),
            ("m/b".to_string(), Skipped),
            ("m/e".to_string(), Changed),
            ("m/c".to_string(), Skipped),
        ]
    );
}

#[test]
fn unknown_types_and_broken_graphs_fail_by_name() {
    let unknown = pb::Resource {
        id: "m/pkg".into(),
        r#type: "package".into(),
        ..Default::default()
    };
    let got = run(vec![
        unknown,
        exec("m/x", "true", &["m/y"]),
        exec("m/y", "true", &["m/x"]),
        exec("m/z", "true", &["m/ghost"]),
    ]);
    assert_eq!(got[0], ("m/pkg".to_string(), pb::Outcome::Failed));
    assert!(got[1..].iter().all(|(_, o)| *o == pb::Outcome::Failed));
    let module = pb::Module {
        name: "m".into(),
        resources: vec![pb::Resource {
            id: "m/pkg".into(),
            r#type: "package".into(),
            ..Default::default()
        }],
    };
    let traits = TraitMap::new();
    let r = apply(
        &[module],
        &pb::BundleManifest::default(),
        &Facts {
            hostname: "h",
            traits: &traits,
        },
        false,
    );
    assert!(r[0].message.contains("\"package\""), "{}", r[0].message);
}

fn resource(id: &str, spec: pb::resource::Spec) -> pb::Resource {
    pb::Resource {
        id: id.into(),
        spec: Some(spec),
        ..Default::default()
    }
}

fn file(path: &str, content: &str) -> pb::resource::Spec {
    pb::resource::Spec::File(pb::FileSpec {
        path: path.into(),
        content: content.into(),
        ..Default::default()
    })
}

/// Applies `resources` as module `m` included under `include`, on a debian machine.
fn apply_with(resources: Vec<pb::Resource>, include: &str) -> Vec<ResourceResult> {
    let module = pb::Module {
        name: "m".into(),
        resources,
    };
    let manifest = pb::BundleManifest {
        modules: vec![pb::ModuleRef {
            name: "m".into(),
            when: include.into(),
            ..Default::default()
        }],
        variables: [("tier".to_string(), "prod".to_string())].into(),
        ..Default::default()
    };
    let traits = TraitMap::from([("os".to_string(), "debian".to_string())]);
    let facts = Facts {
        hostname: "h",
        traits: &traits,
    };
    apply(&[module], &manifest, &facts, false)
}

#[test]
fn conditions_skip_a_resource_and_its_dependents_still_run() {
    use pb::Outcome::*;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let mut off = resource("m/off", file(&p("off"), "x"));
    off.when = "traits.os == 'ubuntu'".into();
    let mut on = resource("m/on", file(&p("on"), "x"));
    on.when = "traits.os == 'debian' and vars.tier != 'dev'".into();
    let mut after = resource("m/after", file(&p("after"), "x"));
    after.depends_on = vec!["m/off".into()];
    let mut broken = resource("m/broken", file(&p("broken"), "x"));
    broken.when = "traits.cpus > 2".into(); // no cpus trait here: not a number
    let got = apply_with(vec![off, on, after, broken], "");
    let outcomes: Vec<_> = got.iter().map(|r| (r.id.as_str(), r.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            ("m/off", Skipped),
            ("m/on", Changed),
            ("m/broken", Failed),
            ("m/after", Changed)
        ]
    );
    assert!(
        got[0].message.contains("condition is false"),
        "{}",
        got[0].message
    );
    assert!(
        got[2]
            .message
            .contains("traits.cpus is \"\" here, not a number"),
        "{}",
        got[2].message
    );
    assert!(!std::path::Path::new(&p("off")).exists());

    // The configcrate's own condition holds back every resource of it.
    let got = apply_with(
        vec![resource("m/x", file(&p("x"), "x"))],
        "vars.tier == 'dev'",
    );
    assert_eq!(got[0].outcome, Skipped);
    assert!(!std::path::Path::new(&p("x")).exists());
}

#[test]
fn a_change_refreshes_its_subscribers_once_and_no_change_none() {
    use pb::Outcome::*;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let handler = |id: &str, refresh_only: bool| {
        let mut r = resource(
            id,
            pb::resource::Spec::Exec(pb::ExecSpec {
                command: format!("echo {id} >> {}", p("runs")),
                creates: p("conf"), // exists after the first run: a plain run skips
                refresh_only,
                ..Default::default()
            }),
        );
        r.subscribes = vec!["m/conf".into(), "m/other".into()];
        r
    };
    let run = |content: &str| {
        apply_with(
            vec![
                handler("m/reload", true),
                handler("m/rebuild", false),
                resource("m/conf", file(&p("conf"), content)),
                resource("m/other", file(&p("other"), content)),
            ],
            "",
        )
    };
    let got = run("v1");
    // Both handlers are ordered after what they subscribe to, and run once though
    // two of their subscriptions changed.
    let ids: Vec<_> = got.iter().map(|r| (r.id.as_str(), r.outcome)).collect();
    assert_eq!(
        ids,
        [
            ("m/conf", Changed),
            ("m/other", Changed),
            ("m/reload", Changed),
            ("m/rebuild", Changed)
        ]
    );
    assert!(
        got[2].message.contains("(m/conf changed)"),
        "{}",
        got[2].message
    );
    let runs = || std::fs::read_to_string(p("runs")).unwrap_or_default();
    assert_eq!(runs(), "m/reload\nm/rebuild\n");
    // Nothing changed: the refresh-only handler stays put, the other's `creates`
    // holds.
    let got = run("v1");
    assert!(got.iter().all(|r| r.outcome == Ok), "{got:?}");
    assert_eq!(runs(), "m/reload\nm/rebuild\n");
    // A failed subscription skips the handler rather than refreshing it.
    std::fs::create_dir(p("blocker")).unwrap();
    let mut broken = handler("m/reload", true);
    broken.subscribes = vec!["m/bad".into()];
    let got = apply_with(
        vec![broken, resource("m/bad", file(&p("blocker"), "x"))],
        "",
    );
    assert_eq!(got[1].outcome, Skipped);
    assert_eq!(runs(), "m/reload\nm/rebuild\n");
}
