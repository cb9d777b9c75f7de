//! Hub figures (run: `cargo bench -p vigo-tests --bench hub`): enrollments per second
//! through a 3-hub, 3-spoke cluster on this machine, failover time with the default raft
//! timings, raft log bytes per enrollment, and snapshot size and time at 100,000 pins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use tokio::task::JoinSet;
use vigo_hub::raft::log_store::LogStore;
use vigo_hub::raft::state_machine::StateMachineStore;
use vigo_hub::state::{Command, EnrollEntry, Token};
use vigo_tests::cluster::Cluster;

const SPOKES: &[&str] = &["spoke-a", "spoke-b", "spoke-c"];

async fn enroll_many(cluster: &Arc<Cluster>, prefix: &str, n: usize, parallel: usize) -> usize {
    let mut tasks = JoinSet::new();
    let mut ok = 0;
    let mut next = 0;
    while ok < n {
        while next < n && tasks.len() < parallel {
            let c = cluster.clone();
            let host = format!("{prefix}-{next:06}");
            let hub = next % 3;
            tasks.spawn(async move { c.enroll(hub, &host).await.is_ok() });
            next += 1;
        }
        match tasks.join_next().await {
            Some(Ok(true)) => ok += 1,
            Some(_) => {}
            None => break,
        }
    }
    ok
}

fn log_bytes(dir: &std::path::Path) -> (u64, u64) {
    let path = dir.join("raft-log.redb");
    let store = LogStore::open(&path).expect("log");
    let (_, entries) = store.entry_stats().expect("log stats");
    (entries, LogStore::file_bytes(&path))
}

async fn snapshot_at(pins: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, view) =
        StateMachineStore::open(&dir.path().join("snap.redb"), Default::default()).unwrap();
    {
        let mut v = view.write().unwrap();
        v.state.apply(Command::RegisterSpoke {
            id: "spoke-a".into(),
            address: "127.0.0.1:1".into(),
            weight: 1,
            at_ms: 1,
        });
        v.state.apply(Command::CreateToken {
            hash: [1; 32],
            token: Token {
                name: "t".into(),
                uses: pins,
                used: 0,
                expires_ms: 0,
                allow_rekey: false,
                revoked: false,
                hostnames: Vec::new(),
            },
        });
        for chunk in (1..=pins).collect::<Vec<_>>().chunks(256) {
            let entries = chunk
                .iter()
                .map(|&i| EnrollEntry {
                    envoy_id: i,
                    hostname: format!("host-{i:06}.example.com"),
                    key: [(i % 251) as u8; 32],
                    spoke: "spoke-a".into(),
                    token: [1; 32],
                    at_ms: 1,
                })
                .collect();
            v.state.apply(Command::Enroll(entries));
        }
    }
    let mut builder = sm.get_snapshot_builder().await;
    let started = Instant::now();
    let snap = builder.build_snapshot().await.unwrap();
    let built = started.elapsed();
    let bytes = snap.snapshot.get_ref().len();
    let (mut sm2, _) =
        StateMachineStore::open(&dir.path().join("snap2.redb"), Default::default()).unwrap();
    let started = Instant::now();
    sm2.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    println!(
        "snapshot at {pins} pins: {:.1} MiB ({:.0} B per pin), built and fsynced in {:.0} ms, installed in {:.0} ms",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / pins as f64,
        built.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Enrollment throughput and log cost, default raft timings.
    let cluster = Arc::new(Cluster::start_with(3, SPOKES, "{}").await);
    enroll_many(&cluster, "warm", 100, 32).await;
    let leader = cluster.leader().await;
    let log_dir = cluster.dir.path().join(format!("hub-{}", leader + 1));
    let n = 3000;
    for parallel in [8, 64] {
        let started = Instant::now();
        let ok = enroll_many(&cluster, &format!("p{parallel}"), n, parallel).await;
        println!(
            "enrollments through the hub, {parallel} in flight: {ok} in {:.1} s = {:.0}/s",
            started.elapsed().as_secs_f64(),
            ok as f64 / started.elapsed().as_secs_f64()
        );
    }
    let pins = cluster.state(leader).pins.len();

    // Failover: the leader stops; how long until a write commits again.
    let killed = Instant::now();
    cluster.stop_hub(leader).await;
    let survivor = cluster.running_hubs()[0];
    while cluster.enroll(survivor, "after-failover").await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "failover (default timings: election timeout 1-2 s): leader stopped -> first committed enrollment in {} ms",
        killed.elapsed().as_millis()
    );
    for i in cluster.running_hubs() {
        cluster.stop_hub(i).await;
    }
    let (entry_bytes, file_bytes) = log_bytes(&log_dir);
    println!(
        "raft log: {:.0} B of entries per enrollment ({pins} pins), redb file {:.1} MiB",
        entry_bytes as f64 / pins as f64,
        file_bytes as f64 / (1 << 20) as f64
    );
    snapshot_at(100_000).await;
}
