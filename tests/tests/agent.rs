//! The agent against a real spoke on loopback: it converges a directory, repairs drift,
//! refuses bundles it cannot trust, and keeps working while its spoke is away.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vigo_envoy::agent::state::StateDir;
use vigo_envoy::agent::{Agent, traits};
use vigo_envoy::client;
use vigo_proto::v1 as pb;
use vigo_tests::{SpokeHome, binary, init};

/// A policy that manages files under `root` only.
fn policy(root: &Path, greeting: &str) -> Vec<(&'static str, String)> {
    let r = root.display();
    vec![
        (
            "hostcrates.yaml",
            "hostcrates:\n  - name: all\n    match: '*'\n    roles: [app]\n    vars: {port: '8080'}\n"
                .into(),
        ),
        ("roles/app.yaml", "configcrates: [layout, app]\n".into()),
        (
            "configcrates/layout.yaml",
            format!("resources:\n  - {{id: srv, type: directory, path: {r}/srv, mode: '0755'}}\n"),
        ),
        (
            "configcrates/app.yaml",
            format!(
                "vars: {{greeting: {greeting}}}\n\
                 resources:\n\
                 \x20 - id: conf\n\
                 \x20   type: file\n\
                 \x20   path: {r}/srv/app.conf\n\
                 \x20   mode: '0640'\n\
                 \x20   content: \"{{{{ vars.greeting }}}} from {{{{ hostname }}}} on {{{{ traits.os }}}} port {{{{ vars.port }}}}\\n\"\n\
                 \x20   depends_on: [layout/srv]\n\
                 \x20 - {{id: current, type: symlink, path: {r}/srv/current.conf, target: {r}/srv/app.conf, depends_on: [conf]}}\n\
                 \x20 - {{id: hosts, type: file_line, path: {r}/hosts, line: '127.0.0.1 app.local', match: 'app\\.local$'}}\n\
                 \x20 - {{id: stamp, type: exec, command: 'echo installed > {r}/srv/stamp', creates: {r}/srv/stamp, depends_on: [layout/srv]}}\n"
            ),
        ),
    ]
}

struct Setup {
    home: SpokeHome,
    spoke: Option<vigo_spoke::Spoke>,
    machine: tempfile::TempDir,
    state: StateDir,
}

impl Setup {
    async fn new(hostname: &str) -> Self {
        init();
        let home = SpokeHome::new();
        let machine = tempfile::tempdir().unwrap();
        std::fs::write(machine.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        home.replace_policy(&policy(machine.path(), "hello"));
        let spoke = home.start().await;
        let state = StateDir::new(machine.path().join("state"));
        let (identity, _) = client::enroll(
            &spoke.addr.to_string(),
            &home.ca_pem(),
            &home.tokens.fleet,
            hostname,
            vigo_common::signing::generate_key(),
        )
        .await
        .unwrap();
        state.save_identity(&identity, false).unwrap();
        Self {
            home,
            spoke: Some(spoke),
            machine,
            state,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.machine.path().join(rel)
    }

    async fn status(&self, agent: &Agent) -> pb::EnvoyInfo {
        self.home
            .admin(&self.home.address())
            .get_envoy(pb::GetEnvoyRequest {
                envoy_id: agent.identity().envoy_id.get(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn stop_spoke(&mut self) {
        self.spoke.take().unwrap().shutdown().await.unwrap();
    }

    async fn start_spoke(&mut self) {
        self.spoke = Some(self.home.start().await);
    }
}

fn expected_conf(hostname: &str) -> String {
    let os = traits::collect(hostname)["os"].clone();
    format!("hello from {hostname} on {os} port 8080\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_converges_repairs_drift_and_dry_runs() {
    let setup = Setup::new("app-01").await;
    let mut agent = Agent::load(setup.state.clone()).unwrap();

    let first = agent.run_once(false).await.unwrap();
    assert!(first.checked_in && first.new_bundle);
    assert_eq!(first.tally.failed, 0, "{first:?}");
    assert_eq!(first.tally.changed, 5, "{first:?}");
    assert_eq!(first.exit_code(), 2);
    assert_eq!(
        std::fs::read_to_string(setup.path("srv/app.conf")).unwrap(),
        expected_conf("app-01")
    );
    assert_eq!(
        std::fs::read_link(setup.path("srv/current.conf")).unwrap(),
        setup.path("srv/app.conf")
    );
    assert!(
        std::fs::read_to_string(setup.path("hosts"))
            .unwrap()
            .contains("127.0.0.1 app.local")
    );
    assert!(setup.path("srv/stamp").exists());
    assert_eq!(first.reports_sent, 1);

    let second = agent.run_once(false).await.unwrap();
    assert_eq!(second.tally.changed, 0, "{second:?}");
    assert_eq!(second.tally.ok, 5);
    assert_eq!(second.exit_code(), 0, "converged");
    assert_eq!(
        setup.status(&agent).await.status,
        pb::ComplianceStatus::Converged as i32
    );

    // Drift: a dry run sees it and changes nothing, and says so in its run rather than
    // in the status; the next real run repairs it.
    std::fs::write(setup.path("srv/app.conf"), "edited by hand\n").unwrap();
    let dry = agent.run_once(true).await.unwrap();
    assert_eq!(dry.tally.would_change, 1, "{dry:?}");
    assert_eq!(dry.exit_code(), 2);
    assert_eq!(
        std::fs::read_to_string(setup.path("srv/app.conf")).unwrap(),
        "edited by hand\n"
    );
    assert_eq!(
        setup.status(&agent).await.status,
        pb::ComplianceStatus::Converged as i32
    );
    let repair = agent.run_once(false).await.unwrap();
    assert_eq!(repair.tally.changed, 1, "{repair:?}");
    assert_eq!(
        std::fs::read_to_string(setup.path("srv/app.conf")).unwrap(),
        expected_conf("app-01")
    );
    assert_eq!(
        setup.status(&agent).await.status,
        pb::ComplianceStatus::Converged as i32,
        "one repair is converging"
    );
    // Something keeps undoing the policy: two runs in a row with changes relapsed,
    // three diverged; a run without changes converged again.
    for want in [
        pb::ComplianceStatus::Relapsed,
        pb::ComplianceStatus::Diverged,
        pb::ComplianceStatus::Diverged,
    ] {
        std::fs::write(setup.path("srv/app.conf"), "edited by hand\n").unwrap();
        assert_eq!(agent.run_once(false).await.unwrap().tally.changed, 1);
        assert_eq!(setup.status(&agent).await.status, want as i32);
    }
    agent.run_once(false).await.unwrap();
    assert_eq!(
        setup.status(&agent).await.status,
        pb::ComplianceStatus::Converged as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_signed_by_an_untrusted_key_is_refused_and_the_old_one_stays() {
    let mut setup = Setup::new("app-02").await;
    let mut agent = Agent::load(setup.state.clone()).unwrap();
    agent.run_once(false).await.unwrap();
    let held = agent.held_fingerprint().expect("a bundle in force");

    // The spoke now signs with a key this envoy was never told to trust, and the policy
    // changes: the new bundle must not be applied.
    setup.stop_spoke().await;
    let rogue = vigo_common::signing::generate_key();
    std::fs::write(
        setup.home.path("pki/bundle-signing.key"),
        vigo_common::signing::key_to_pkcs8_pem(&rogue),
    )
    .unwrap();
    setup
        .home
        .replace_policy(&policy(setup.machine.path(), "tampered"));
    setup.start_spoke().await;

    let run = agent.run_once(false).await.unwrap();
    let refused = run.refused_bundle.expect("the bundle is refused");
    assert!(refused.contains("does not trust"), "{refused}");
    assert!(!run.new_bundle);
    assert_eq!(run.tally.failed, 0);
    assert_eq!(
        std::fs::read_to_string(setup.path("srv/app.conf")).unwrap(),
        expected_conf("app-02"),
        "the previous bundle stays in force"
    );
    assert_eq!(agent.held_fingerprint(), Some(held));
    assert_eq!(
        setup.status(&agent).await.bundle_fingerprint.as_ref(),
        held.as_slice(),
        "and it tells the spoke it still holds the old one"
    );

    // Truncated and re-signed deliveries are refused too, the stored bundle untouched.
    let truncated = pb::BundleDelivery {
        manifest: bytes::Bytes::from_static(b"\x0a\x05ab"),
        ..Default::default()
    };
    assert!(agent.accept_bundle(&truncated).await.is_err());
    assert_eq!(agent.held_fingerprint(), Some(held));
}

/// Signs, with the spoke's own bundle key, the bundle `hostcrate` of a policy `files`
/// would have, at `generation`: what a spoke (or anything holding its key) could replay.
fn signed(
    home: &SpokeHome,
    files: &[(&str, String)],
    hostcrate: &str,
    generation: u64,
) -> pb::BundleDelivery {
    let key = vigo_common::signing::read_key_file(&home.path("pki/bundle-signing.key")).unwrap();
    signed_with(files, hostcrate, generation, &key, Vec::new())
}

/// As [`signed`], with any key and a trusted key set for the envoy to adopt.
fn signed_with(
    files: &[(&str, String)],
    hostcrate: &str,
    generation: u64,
    key: &ed25519_dalek::SigningKey,
    trusted: Vec<[u8; 32]>,
) -> pb::BundleDelivery {
    let tree: std::collections::BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.clone()))
        .collect();
    let compiled = vigo_common::policy::validate(&tree).unwrap();
    let h = compiled
        .hostcrates
        .iter()
        .find(|h| h.name == hostcrate)
        .expect("hostcrate");
    let mut seal = vigo_common::policy::bundle::Seal::own(compiled.version, generation, key);
    seal.trusted = trusted;
    vigo_common::policy::bundle::SignedBundle::sign(h, &seal, key).delivery(|_| false)
}

/// Key rotation as the envoy sees it: a bundle signed by a key it trusts carries the set
/// it trusts from then on; the set survives a restart, and a key dropped from it signs
/// nothing the envoy takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envoy_adopts_the_trusted_key_set_a_bundle_carries() {
    let setup = Setup::new("app-05").await;
    let mut agent = Agent::load(setup.state.clone()).unwrap();
    agent.run_once(false).await.unwrap();
    let generation = setup
        .spoke
        .as_ref()
        .unwrap()
        .policy
        .current()
        .bundle_generation;
    let files = policy(setup.machine.path(), "rotated");
    let old =
        vigo_common::signing::read_key_file(&setup.home.path("pki/bundle-signing.key")).unwrap();
    let new = vigo_common::signing::generate_key();
    let (old_pub, new_pub) = (
        old.verifying_key().to_bytes(),
        new.verifying_key().to_bytes(),
    );
    let trusted = |agent: &Agent| -> Vec<[u8; 32]> {
        agent
            .identity()
            .bundle_keys
            .iter()
            .map(|k| k.to_bytes())
            .collect()
    };
    assert_eq!(trusted(&agent), [old_pub]);

    // A set that leaves out the key that signed it is refused, and nothing changes.
    let err = agent
        .accept_bundle(&signed_with(
            &files,
            "all",
            generation + 1,
            &old,
            vec![new_pub],
        ))
        .await
        .unwrap_err();
    assert!(
        err.contains("does not include the key that signed"),
        "{err}"
    );
    // The new key cannot introduce itself.
    let err = agent
        .accept_bundle(&signed_with(
            &files,
            "all",
            generation + 1,
            &new,
            vec![old_pub, new_pub],
        ))
        .await
        .unwrap_err();
    assert!(err.contains("does not trust"), "{err}");
    assert_eq!(trusted(&agent), [old_pub]);

    // Add: the old key signs a bundle naming both.
    agent
        .accept_bundle(&signed_with(
            &files,
            "all",
            generation + 1,
            &old,
            vec![old_pub, new_pub],
        ))
        .await
        .expect("the old key adds the new one");
    assert_eq!(trusted(&agent), [old_pub, new_pub]);
    let stored = setup.state.load_identity().unwrap().bundle_keys;
    assert_eq!(
        stored.iter().map(|k| k.to_bytes()).collect::<Vec<_>>(),
        [old_pub, new_pub],
        "kept across a restart"
    );
    // An older bundle with a smaller set is a replay: refused, the set stays.
    let err = agent
        .accept_bundle(&signed_with(&files, "all", generation, &old, vec![old_pub]))
        .await
        .unwrap_err();
    assert!(err.contains("older"), "{err}");
    assert_eq!(trusted(&agent), [old_pub, new_pub]);

    // Use, then retire: the new key signs, then the set drops the old key.
    agent
        .accept_bundle(&signed_with(
            &files,
            "all",
            generation + 2,
            &new,
            vec![old_pub, new_pub],
        ))
        .await
        .expect("signed by the new key");
    let retired = agent
        .accept_bundle(&signed_with(
            &files,
            "all",
            generation + 3,
            &new,
            vec![new_pub],
        ))
        .await
        .expect("the old key retired");
    drop(agent);
    let mut agent = Agent::load(setup.state.clone()).unwrap();
    assert_eq!(trusted(&agent), [new_pub], "kept across a restart");
    assert_eq!(agent.held_fingerprint(), Some(retired));
    // The retired key signs nothing the envoy takes, however new.
    let err = agent
        .accept_bundle(&signed_with(
            &files,
            "all",
            generation + 9,
            &old,
            vec![old_pub],
        ))
        .await
        .unwrap_err();
    assert!(err.contains("does not trust"), "{err}");
    assert_eq!(agent.held_fingerprint(), Some(retired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_bundles_and_bundles_of_other_hostcrates_are_refused() {
    let setup = Setup::new("app-03").await;
    let mut agent = Agent::load(setup.state.clone()).unwrap();
    agent.run_once(false).await.unwrap();
    let held = agent.held_fingerprint().expect("a bundle in force");
    let generation = setup
        .spoke
        .as_ref()
        .unwrap()
        .policy
        .current()
        .bundle_generation;
    assert!(generation > 0);
    let files = policy(setup.machine.path(), "replayed");

    let older = signed(&setup.home, &files, "all", generation - 1);
    let err = agent.accept_bundle(&older).await.unwrap_err();
    assert!(err.contains("older than the one in force"), "{err}");

    // A policy where app-03 belongs to `apps`: the `db` bundle and the catch-all one
    // (which app-03 would reach only if `apps` did not match) are not its own.
    let mut split = files.clone();
    split[0].1 = "hostcrates:\n  - {name: db, match: 'db-*', roles: [app]}\n  - {name: apps, match: 'app-*', roles: [app]}\n  - {name: all, match: '*', roles: [app]}\n".into();
    for other in ["db", "all"] {
        let err = agent
            .accept_bundle(&signed(&setup.home, &split, other, generation + 1))
            .await
            .unwrap_err();
        assert!(
            err.contains("not meant for hostname \"app-03\""),
            "{other}: {err}"
        );
    }
    assert_eq!(
        agent.held_fingerprint(),
        Some(held),
        "nothing replaced the bundle"
    );

    // Its own hostcrate at a newer generation is taken.
    let newer = signed(&setup.home, &split, "apps", generation + 1);
    let fp = agent
        .accept_bundle(&newer)
        .await
        .expect("a newer bundle of its own");
    assert_eq!(agent.held_fingerprint(), Some(fp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_spoke_the_agent_converges_from_cache_and_reports_later() {
    let mut setup = Setup::new("app-03").await;
    let mut agent = Agent::load(setup.state.clone()).unwrap();
    agent.run_once(false).await.unwrap();
    let before = setup.status(&agent).await.stored_runs;
    assert_eq!(before, 1);

    setup.stop_spoke().await;
    std::fs::remove_file(setup.path("srv/app.conf")).unwrap();
    let offline = agent.run_once(false).await.unwrap();
    assert!(!offline.checked_in);
    assert_eq!(
        offline.tally.changed, 1,
        "drift repaired from the cached bundle"
    );
    assert!(setup.path("srv/app.conf").exists());
    assert_eq!(offline.reports_pending, 1);

    // A crash between runs loses nothing: a new agent finds the queued report.
    drop(agent);
    let mut agent = Agent::load(setup.state.clone()).unwrap();
    let still_offline = agent.run_once(false).await.unwrap();
    assert_eq!(still_offline.reports_pending, 2);

    setup.start_spoke().await;
    let back = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let run = agent.run_once(false).await.unwrap();
            if run.checked_in {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the spoke comes back");
    assert_eq!(
        back.reports_sent, 3,
        "two queued reports, oldest first, and this run's"
    );
    assert_eq!(back.reports_pending, 0);
    assert_eq!(setup.status(&agent).await.stored_runs, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_enrolls_runs_once_and_reports_status() {
    init();
    let home = SpokeHome::new();
    let machine = tempfile::tempdir().unwrap();
    std::fs::write(machine.path().join("hosts"), "").unwrap();
    home.replace_policy(&policy(machine.path(), "hello"));
    let spoke = home.start().await;
    let state = machine.path().join("state");
    let envoy = |args: &[&str]| {
        Command::new(binary("vigo-envoy"))
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap()
    };
    let ca = home.path("pki/ca.pem");
    let enroll = [
        "enroll",
        "--server",
        &home.address(),
        "--token",
        &home.tokens.fleet,
        "--ca",
        ca.to_str().unwrap(),
        "--hostname",
        "cli-01",
    ];
    let out = envoy(&enroll);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = envoy(&enroll);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let out = envoy(&["once"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "changes made: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = envoy(&["once"]);
    assert_eq!(out.status.code(), Some(0), "converged");
    std::fs::write(machine.path().join("srv/app.conf"), "x").unwrap();
    assert_eq!(envoy(&["once", "--dry-run"]).status.code(), Some(2));

    let out = envoy(&["status", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("\"hostname\": \"cli-01\"") && text.contains("\"reports_queued\": 0"),
        "{text}"
    );
    assert!(text.contains("\"would_change\": 1"), "{text}");

    // The daemon holds the local database; status still answers, and SIGTERM stops it.
    let mut daemon = Command::new(binary("vigo-envoy"))
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = envoy(&["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if String::from_utf8_lossy(&out.stdout).contains("\"would_change\": 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the daemon never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(machine.path().join("srv/app.conf")).unwrap(),
        expected_conf("cli-01"),
        "the daemon repaired the drift"
    );
    // SAFETY: signals our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let code = daemon.wait().unwrap();
    assert!(code.success(), "clean exit on SIGTERM: {code:?}");
    spoke.shutdown().await.unwrap();
}
