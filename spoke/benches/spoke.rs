//! Spoke benchmarks that print figures (run: `cargo bench -p vigo-spoke --bench spoke`).
//!
//! CPU figures are this thread's CPU time per operation (medians of 5 samples), which
//! other load on a shared machine disturbs far less than wall-clock time. Memory figures
//! count live heap bytes through a counting allocator. Storage figures use real redb
//! files in a temporary directory, fsync included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey};
use prost::Message;
use vigo_common::EnvoyId;
use vigo_common::signing::{Domain, signed_message};
use vigo_common::telemetry::heap::{CountingAllocator, live_bytes};
use vigo_proto::v1 as pb;
use vigo_spoke::fleet::{EnvoyRecord, EnvoyState, FleetIndex};
use vigo_spoke::flush_rows::StateRowsBuilder;
use vigo_spoke::flusher::Flusher;
use vigo_spoke::gateway::{Gateway, GatewaySettings};
use vigo_spoke::policy_cache::PolicyCache;
use vigo_spoke::server::rehydrate;
use vigo_spoke::store::{Store, StoredEnvoy, StoredState, WriteOp};
use vigo_spoke::traits_store::TraitsStore;
use vigo_spoke::verifier::BatchVerifier;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a stack timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the whole process (the redb writer works on its own thread).
fn process_cpu() -> Duration {
    Duration::from_micros(vigo_common::procfs::cpu_micros(std::process::id()).unwrap_or(0))
}

/// Median over 5 samples of CPU time per operation; `f` runs `n` operations.
fn cpu_per_op(n: u64, mut f: impl FnMut(u64)) -> Duration {
    let mut samples: Vec<Duration> = (0..5)
        .map(|_| {
            let start = thread_cpu();
            f(n);
            (thread_cpu() - start) / n as u32
        })
        .collect();
    samples.sort();
    samples[2]
}

fn key(i: u64) -> SigningKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

fn record(i: u64) -> EnvoyRecord {
    EnvoyRecord::new(
        EnvoyId::new(i + 1).unwrap(),
        vigo_spoke::fleet::EnvoyKey::parsed(key(i).verifying_key()),
        &format!("host-{i:06}.example.com"),
        1,
    )
}

fn fleet_memory(n: u64) {
    let before = live_bytes();
    let fleet = FleetIndex::new();
    for i in 0..n {
        fleet.insert(record(i), EnvoyState::new(1));
    }
    let bytes = live_bytes() - before;
    println!(
        "fleet_index_bytes_per_envoy: {:.0} B ({} envoys, {:.1} MiB heap; record {} B + state {} B inline)",
        bytes as f64 / n as f64,
        n,
        bytes as f64 / (1 << 20) as f64,
        std::mem::size_of::<EnvoyRecord>(),
        std::mem::size_of::<EnvoyState>(),
    );
}

fn policy(dir: &std::path::Path) -> Arc<PolicyCache> {
    let _ = dir;
    let policy_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy");
    let compiled = vigo_spoke::policy_cache::compile_dir(&policy_dir).expect("example policy");
    Arc::new(
        PolicyCache::new(
            vigo_spoke::policy_cache::PolicySource::Directory(policy_dir),
            compiled,
            Some(key(u64::MAX)),
            &vigo_spoke::policy_cache::Sealing::Own { generation: 1 },
        )
        .expect("sealed"),
    )
}

fn hot_path(store: &Store, dir: &std::path::Path) {
    const N: u64 = 10_000;
    let fleet = Arc::new(FleetIndex::new());
    let traits = Arc::new(TraitsStore::default());
    let policy = policy(dir);
    let gateway = Gateway::new(
        fleet.clone(),
        traits,
        policy.clone(),
        vigo_spoke::gateway::Checking {
            verifier: BatchVerifier::new(64),
            shares: Default::default(),
        },
        store.clone(),
        GatewaySettings {
            interval_ms: 60_000,
            jitter_ms: 6_000,
            timestamp_window_ms: 300_000,
            max_checkin_body: 64 << 10,
            max_report_body: 1 << 20,
            max_traits: 256,
            allow_relay: false,
            keep_runs: 10,
        },
        Default::default(),
    );
    for i in 0..N {
        fleet.insert(record(i), EnvoyState::new(1));
    }
    // Every envoy holds its current bundle: the no-change path.
    let snapshot = policy.current();
    let bodies: Vec<(Bytes, [u8; 32])> = (0..N)
        .map(|i| {
            let r = fleet.get(EnvoyId::new(i + 1).unwrap()).unwrap();
            let hc = snapshot.hostcrate_of(&r.hostname);
            let fp = snapshot.bundle(hc).expect("signed").fingerprint;
            let body = pb::CheckInBody {
                envoy_id: i + 1,
                sequence: 1,
                timestamp_ms: 1,
                bundle_fingerprint: Bytes::copy_from_slice(&fp),
                traits_hash: Bytes::from(vec![0u8; 32]),
                traits: None,
            };
            (Bytes::from(body.encode_to_vec()), fp)
        })
        .collect();
    let mut seq = 1u64;
    let mut out = Vec::with_capacity(128);
    let per = cpu_per_op(200_000, |n| {
        for k in 0..n {
            let (raw, _) = &bodies[(k % N) as usize];
            let mut body = pb::CheckInBody::decode(raw.clone()).unwrap();
            seq += 1;
            body.sequence = seq;
            let id = EnvoyId::new(body.envoy_id).unwrap();
            let record = fleet.get(id).unwrap();
            let response = gateway.answer_check_in(&record, body, seq).unwrap();
            out.clear();
            response.encode(&mut out).unwrap();
            std::hint::black_box(&out);
        }
    });
    println!(
        "no_change_path_without_verify: {:.2} µs per check-in (decode, lookup, replay check, compare, mark dirty, encode {} B answer)",
        per.as_secs_f64() * 1e6,
        out.len()
    );
}

fn signatures() {
    let n = 1024;
    let keys: Vec<SigningKey> = (0..n as u64).map(key).collect();
    let vks: Vec<_> = keys.iter().map(|k| k.verifying_key()).collect();
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 100]).collect();
    let mut buf = Vec::new();
    let msgs: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| signed_message(Domain::CheckIn, b, &mut buf).to_vec())
        .collect();
    let sigs: Vec<Signature> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
    let single = cpu_per_op(n as u64, |count| {
        for i in 0..count as usize {
            ed25519_dalek::Verifier::verify(&vks[i % n], &msgs[i % n], &sigs[i % n]).unwrap();
        }
    });
    print!("ed25519: verify {:.1} µs", single.as_secs_f64() * 1e6);
    for batch in [2usize, 4, 8, 16, 32, 64, 128] {
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        let per = cpu_per_op((n / batch) as u64, |count| {
            for c in 0..count as usize {
                let r = c * batch..(c + 1) * batch;
                ed25519_dalek::verify_batch(&refs[r.clone()], &sigs[r.clone()], &vks[r]).unwrap();
            }
        });
        print!(
            ", verify_batch/{batch} {:.1} µs",
            per.as_secs_f64() * 1e6 / batch as f64
        );
    }
    println!(" per signature");
}

fn enroll_rows(store: &Store, n: u64) {
    let chunk = 5_000;
    for start in (0..n).step_by(chunk) {
        let envoys: Vec<StoredEnvoy> = (start..(start + chunk as u64).min(n))
            .map(|i| StoredEnvoy {
                id: i + 1,
                hostname: format!("host-{i:06}.example.com"),
                public_key: key(i).verifying_key().to_bytes().to_vec(),
                enrolled_at_ms: 1,
                ..Default::default()
            })
            .collect();
        let mut states = StateRowsBuilder::default();
        for e in &envoys {
            states.push(
                e.id,
                &StoredState {
                    sequence: 5,
                    last_seen_ms: vigo_common::time::now_ms(),
                    traits_hash: vec![0; 32],
                    bundle_fingerprint: vec![1; 32],
                },
            );
        }
        let states = states.into_chunks(usize::MAX).pop().unwrap_or_default();
        store
            .write_blocking(WriteOp::PutEnvoys {
                envoys,
                token: None,
            })
            .unwrap();
        store
            .write_blocking(WriteOp::Flush {
                states,
                traits: vec![],
            })
            .unwrap();
    }
}

fn flush(dir: &std::path::Path, batch_rows: usize, n: u64) {
    let (store, _writer) = Store::open(&dir.join(format!("flush-{n}-{batch_rows}.redb"))).unwrap();
    let fleet = Arc::new(FleetIndex::new());
    for i in 0..n {
        fleet.insert(record(i), EnvoyState::new(1));
    }
    let flusher = Flusher {
        fleet: fleet.clone(),
        traits: Arc::new(TraitsStore::default()),
        store: store.clone(),
        batch_rows,
    };
    let mut walls = Vec::new();
    let cpu_start = process_cpu();
    for round in 0..5u64 {
        fleet.for_each(|r| {
            fleet.update(r, |st| {
                st.last_seen_ms = round;
                st.mark_dirty();
            })
        });
        let stats = flusher.flush_all();
        assert_eq!(stats.rows, n as usize);
        walls.push((stats.elapsed, stats.transactions));
    }
    let cpu = (process_cpu() - cpu_start) / 5;
    walls.sort();
    println!(
        "flush_{}k_dirty_envoys: {:.1} ms median wall, {:.1} ms CPU incl. the redb writer ({} transactions of {batch_rows} rows, fsync each)",
        n / 1000,
        walls[2].0.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3,
        walls[2].1
    );
}

fn rehydrate_100k(dir: &std::path::Path) {
    const N: u64 = 100_000;
    let path = dir.join("rehydrate.redb");
    {
        let (store, writer) = Store::open(&path).unwrap();
        enroll_rows(&store, N);
        drop(store);
        writer.join().unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..3 {
        let (store, writer) = Store::open(&path).unwrap();
        let started = Instant::now();
        let loaded = store.load().unwrap();
        let fleet = FleetIndex::new();
        let stats = rehydrate(
            loaded,
            &fleet,
            &TraitsStore::default(),
            &store,
            Duration::from_secs(180),
        )
        .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(stats.envoys, N as usize);
        times.push(elapsed);
        drop(store);
        writer.join().unwrap();
    }
    times.sort();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "rehydrate_100k_envoys: {:.0} ms median wall (read redb + decode; keys parsed at first use; file {:.1} MiB)",
        times[1].as_secs_f64() * 1e3,
        size as f64 / (1 << 20) as f64
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Optional filter: `cargo bench -p vigo-spoke --bench spoke -- flush` runs one part.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = Store::open(&dir.path().join("hot.redb")).unwrap();
    if run("memory") {
        fleet_memory(100_000);
    }
    if run("hot_path") {
        hot_path(&store, dir.path());
    }
    if run("signatures") {
        signatures();
    }
    if run("flush") {
        for rows in [500, 2_000, 10_000] {
            flush(dir.path(), rows, 10_000);
        }
        for rows in [2_000, 10_000] {
            flush(dir.path(), rows, 50_000);
        }
    }
    if run("rehydrate") {
        rehydrate_100k(dir.path());
    }
}
