//! The policy language of the operator's day: the package, service, user, group and cron
//! types, `ensure: absent`, conditions (`when:`), notifications, and where each variable
//! of a hostcrate comes from. Every refusal names its file and item.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use vigo_common::policy::{VarSource, resolve_vars, validate};
use vigo_proto::v1 as pb;

fn files(entries: &[(&str, &str)]) -> BTreeMap<PathBuf, String> {
    entries
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect()
}

/// A one-hostcrate tree whose configcrate `c` holds `resources` (YAML list items).
fn one_crate(resources: &str) -> BTreeMap<PathBuf, String> {
    files(&[
        (
            "hostcrates.yaml",
            "hostcrates:\n  - name: all\n    match: '*'\n    roles: [r]\n    vars: {tier: prod}\n",
        ),
        ("roles/r.yaml", "configcrates: [c]\n"),
        ("configcrates/c.yaml", &format!("resources:\n{resources}")),
    ])
}

fn refusal(tree: &BTreeMap<PathBuf, String>) -> String {
    validate(tree).unwrap_err().to_string()
}

fn resources(tree: &BTreeMap<PathBuf, String>) -> Vec<pb::Resource> {
    let compiled = validate(tree).unwrap_or_else(|e| panic!("{e}"));
    pb::Module::decode(compiled.hostcrates[0].modules[0].body.as_ref())
        .unwrap()
        .resources
}

#[test]
fn the_everyday_types_compile_to_what_the_envoy_applies() {
    let got = resources(&one_crate(concat!(
        "  - {id: nginx, type: package}\n",
        "  - {id: tool, type: package, name: vigo-fixture, ensure: 1.0-1, source: /srv/pkg/vigo-fixture_1.0-1_all.deb}\n",
        "  - {id: old, type: package, name: telnet, ensure: absent}\n",
        "  - {id: web, type: service, name: nginx, ensure: running, enable: true, subscribes: [conf]}\n",
        "  - {id: conf, type: file, path: /etc/nginx/nginx.conf, content: x, notify: [reload]}\n",
        "  - {id: reload, type: exec, command: 'nginx -s reload', refresh_only: true}\n",
        "  - {id: deploy, type: user, group: deploy, groups: [www-data], shell: /bin/bash, home: /home/deploy}\n",
        "  - {id: deploy-group, type: group, name: deploy, gid: 1500}\n",
        "  - {id: backup, type: cron, schedule: '15 3 * * *', command: '/usr/local/bin/backup {{ hostname }}', environment: {MAILTO: ops}}\n",
        "  - {id: tmp, type: directory, path: /srv/old, ensure: absent, recursive: true}\n",
        "  - {id: link, type: symlink, path: /etc/motd.old, ensure: absent}\n",
        "  - {id: debian-only, type: file, path: /etc/x, content: y, when: 'traits.os == \"debian\" and vars.tier != \"dev\"'}\n",
    )));
    use pb::resource::Spec;
    let by_id = |id: &str| got.iter().find(|r| r.id == id).unwrap().clone();
    assert!(matches!(by_id("c/nginx").spec, Some(Spec::Package(p))
        if p.name == "nginx" && p.state() == pb::PackageState::Present));
    assert!(matches!(by_id("c/tool").spec, Some(Spec::Package(p))
        if p.state() == pb::PackageState::Pinned && p.version == "1.0-1" && p.source.ends_with(".deb")));
    assert!(
        matches!(by_id("c/old").spec, Some(Spec::Package(p)) if p.state() == pb::PackageState::Absent)
    );
    let web = by_id("c/web");
    assert!(matches!(&web.spec, Some(Spec::Service(s))
        if s.state() == pb::RunState::Running && s.boot() == pb::BootState::Enabled));
    assert_eq!(web.subscribes, ["c/conf"]);
    // `notify:` on the file lands as a subscription of the exec it names.
    assert_eq!(by_id("c/reload").subscribes, ["c/conf"]);
    assert!(matches!(by_id("c/reload").spec, Some(Spec::Exec(e)) if e.refresh_only));
    assert!(matches!(by_id("c/deploy").spec, Some(Spec::User(u))
        if u.name == "deploy" && u.manage_groups && u.groups == ["www-data"] && !u.has_uid));
    assert!(
        matches!(by_id("c/deploy-group").spec, Some(Spec::Group(g)) if g.has_gid && g.gid == 1500)
    );
    assert!(matches!(by_id("c/backup").spec, Some(Spec::Cron(c))
        if c.name == "backup" && c.user == "root" && c.environment["MAILTO"] == "ops"));
    assert!(matches!(by_id("c/tmp").spec, Some(Spec::Directory(d)) if d.absent && d.recursive));
    assert!(matches!(by_id("c/link").spec, Some(Spec::Symlink(s)) if s.absent));
    assert_eq!(
        by_id("c/debian-only").when,
        "traits.os == \"debian\" and vars.tier != \"dev\""
    );
}

#[test]
fn bad_resources_are_refused_by_file_and_item() {
    let msg = refusal(&one_crate(concat!(
        "  - {id: opt, type: package, name: --force-yes}\n",
        "  - {id: src, type: package, ensure: latest, source: /x.deb}\n",
        "  - {id: svc, type: service, ensure: started}\n",
        "  - {id: root2, type: user, name: toor, uid: 0}\n",
        "  - {id: noroot, type: user, name: root, ensure: absent}\n",
        "  - {id: home, type: user, home: '/home/x:0:0'}\n",
        "  - {id: job, type: cron, schedule: '* * *', command: x}\n",
        "  - {id: job.sh, type: cron, schedule: '@daily', command: x}\n",
        "  - {id: all, type: directory, path: /etc, ensure: absent, recursive: true}\n",
        "  - {id: rec, type: directory, path: /srv/a, recursive: true}\n",
        "  - {id: gone, type: file, path: /srv/f, ensure: absent, content: x}\n",
        "  - {id: cond, type: file, path: /srv/g, content: x, when: 'traits.colour == \"red\"'}\n",
        "  - {id: typed, type: file, path: /srv/h, content: x, when: 'traits.cpus == \"four\"'}\n",
        "  - {id: sub, type: file, path: /srv/i, content: x, subscribes: [opt]}\n",
        "  - {id: tell, type: file, path: /srv/j, content: x, notify: [plain, ghost]}\n",
        "  - {id: plain, type: file, path: /srv/k, content: x}\n",
    )));
    for needle in [
        "configcrates/c.yaml: resource c/opt: package name \"--force-yes\" may not start with '-'",
        "resource c/src: source: a package file is installed, not removed or upgraded",
        "resource c/svc: ensure: \"started\" must be running or stopped",
        "resource c/root2: uid 0 would make a second root account",
        "resource c/noroot: the root account cannot be removed",
        "resource c/home: home \"/home/x:0:0\" must be an absolute path without ':'",
        "resource c/job: schedule \"* * *\" must be five fields",
        "resource c/job.sh: cron file name \"job.sh\" may not contain '.'",
        "resource c/all: \"/etc\": a recursive removal needs an absolute path at least two directories deep",
        "resource c/rec: recursive: applies to `ensure: absent` only",
        "resource c/gone: an absent file takes no other settings",
        "resource c/cond: when: unknown trait \"colour\"",
        "resource c/typed: when: cannot compare a number with text",
        "resource c/sub: subscribes: a file cannot be refreshed",
        "resource c/tell: notifies c/plain, which cannot be refreshed",
        "resource c/tell: notifies unknown resource \"c/ghost\"",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
}

#[test]
fn conditions_read_only_vars_their_hostcrate_defines() {
    let tree = files(&[
        (
            "hostcrates.yaml",
            concat!(
                "hostcrates:\n",
                "  - {name: prod, match: 'p-*', roles: [web], vars: {tier: prod}}\n",
                "  - {name: lab, match: '*', roles: [web]}\n",
            ),
        ),
        (
            "roles/web.yaml",
            "configcrates:\n  - {name: nginx, when: 'traits.os == \"debian\"'}\n",
        ),
        (
            "configcrates/nginx.yaml",
            "resources:\n  - {id: conf, type: file, path: /x, content: y, when: 'vars.tier == \"prod\"'}\n",
        ),
    ]);
    let msg = refusal(&tree);
    assert!(
        msg.contains("hostcrates.yaml: hostcrate lab: resource nginx/conf: when: vars.tier is not defined for this hostcrate"),
        "{msg}"
    );
    assert!(!msg.contains("hostcrate prod:"), "{msg}");
    let bad_include = files(&[
        (
            "hostcrates.yaml",
            "hostcrates:\n  - {name: a, match: '*', roles: [web]}\n",
        ),
        (
            "roles/web.yaml",
            "configcrates:\n  - {name: nginx, when: 'traits.os = \"debian\"'}\n",
        ),
        ("configcrates/nginx.yaml", "resources: []\n"),
    ]);
    let msg = refusal(&bad_include);
    assert!(
        msg.contains("roles/web.yaml: role web: configcrate nginx: when: unexpected character '='"),
        "{msg}"
    );
}

#[test]
fn include_conditions_travel_in_the_manifest_joined_with_or() {
    let tree = files(&[
        (
            "hostcrates.yaml",
            "hostcrates:\n  - {name: a, match: '*', roles: [one, two, three]}\n",
        ),
        (
            "roles/one.yaml",
            "configcrates:\n  - {name: nginx, when: 'traits.os == \"debian\"'}\n  - {name: cond, when: 'traits.cpus > 2'}\n",
        ),
        (
            "roles/two.yaml",
            "configcrates:\n  - {name: nginx, when: 'traits.os == \"ubuntu\"'}\n",
        ),
        ("roles/three.yaml", "configcrates: [plain]\n"),
        ("configcrates/nginx.yaml", "resources: []\n"),
        ("configcrates/cond.yaml", "resources: []\n"),
        ("configcrates/plain.yaml", "resources: []\n"),
    ]);
    let compiled = validate(&tree).unwrap();
    let h = &compiled.hostcrates[0];
    assert_eq!(
        h.conditions,
        [
            "(traits.os == \"debian\") or (traits.os == \"ubuntu\")",
            "traits.cpus > 2",
            ""
        ]
    );
}

#[test]
fn every_variable_says_where_it_came_from() {
    let tree = files(&[
        (
            "hostcrates.yaml",
            "hostcrates:\n  - {name: web, match: '*', roles: [base, webserver], vars: {port: '8080'}}\n",
        ),
        (
            "roles/base.yaml",
            "configcrates: [motd]\nvars: {greeting: hello, port: '81'}\n",
        ),
        (
            "roles/webserver.yaml",
            "configcrates: [nginx]\nvars: {port: '80'}\n",
        ),
        (
            "configcrates/motd.yaml",
            "vars: {greeting: hi, owner: ops}\nresources: []\n",
        ),
        (
            "configcrates/nginx.yaml",
            "vars: {port: '8000'}\nresources: []\n",
        ),
    ]);
    let parsed = vigo_common::policy::parse_tree(&tree).unwrap();
    let vars = resolve_vars(&parsed, &parsed.hostcrates[0]);
    let port = &vars["port"];
    assert_eq!(port.value, "8080");
    assert_eq!(port.from, VarSource::Hostcrate("web".into()));
    assert_eq!(
        port.overrides,
        [
            (VarSource::Configcrate("nginx".into()), "8000".to_string()),
            (VarSource::Role("base".into()), "81".to_string()),
            (VarSource::Role("webserver".into()), "80".to_string()),
        ]
    );
    assert_eq!(vars["greeting"].from, VarSource::Role("base".into()));
    assert_eq!(vars["owner"].from, VarSource::Configcrate("motd".into()));
    let compiled = validate(&tree).unwrap();
    assert_eq!(compiled.hostcrates[0].variables["port"], "8080");
}

#[test]
fn notifications_order_and_cycles_are_checked() {
    let msg = refusal(&one_crate(concat!(
        "  - {id: a, type: exec, command: x, subscribes: [b]}\n",
        "  - {id: b, type: exec, command: y, notify: [a], depends_on: [a]}\n",
    )));
    assert!(msg.contains("dependency cycle"), "{msg}");
}

#[test]
fn a_trace_names_the_hostcrate_roles_configcrates_and_var_sources() {
    use vigo_common::policy::{compile, parse_tree, trace::trace};
    let tree = files(&[
        (
            "hostcrates.yaml",
            concat!(
                "hostcrates:\n",
                "  - {name: web, match: 'web-*', roles: [base, webserver], vars: {port: '8080'}}\n",
                "  - {name: rest, match: '*', roles: [base]}\n",
            ),
        ),
        (
            "roles/base.yaml",
            "configcrates: [motd]\nvars: {port: '81'}\n",
        ),
        (
            "roles/webserver.yaml",
            "configcrates:\n  - motd\n  - {name: nginx, when: 'traits.os == \"debian\"'}\n",
        ),
        (
            "configcrates/motd.yaml",
            "resources:\n  - {id: m, type: file, path: /etc/motd, content: x}\n",
        ),
        (
            "configcrates/nginx.yaml",
            "vars: {port: '8000'}\nresources: []\n",
        ),
    ]);
    let parsed = parse_tree(&tree).unwrap();
    let compiled = compile(&parsed).unwrap();
    let t = trace(&parsed, &compiled, "web-7");
    assert_eq!(t.hostcrate, "web");
    assert_eq!(t.roles, ["base", "webserver"]);
    let crates: Vec<_> = t
        .configcrates
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.roles.clone(),
                c.when.as_str(),
                c.resources,
            )
        })
        .collect();
    assert_eq!(
        crates,
        [
            (
                "motd",
                vec!["base".to_string(), "webserver".to_string()],
                "",
                1
            ),
            (
                "nginx",
                vec!["webserver".to_string()],
                "traits.os == \"debian\"",
                0
            ),
        ]
    );
    assert_eq!(t.vars["port"].from, VarSource::Hostcrate("web".into()));
    assert_eq!(trace(&parsed, &compiled, "db-1").hostcrate, "rest");
}
