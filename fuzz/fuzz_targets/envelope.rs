//! What a spoke decodes from envoys: the signed envelope of a check-in through the real
//! gateway (FleetIndex, trait staging, replay check; a real redb store in a temporary
//! directory), bodies signed by the harness so the fuzzer reaches past the signature,
//! run reports through the compliance rules, and enrollment requests through the
//! hostname, key and certificate-request checks. Nothing may panic.
//!
//! The first input byte picks the path; the rest is the input.

#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use vigo_common::EnvoyId;
use vigo_common::pki::{CertAuthority, Peer};
use vigo_common::signing::{self, Domain};
use vigo_proto::v1 as pb;
use vigo_spoke::fleet::{EnvoyRecord, EnvoyState, FleetIndex};
use vigo_spoke::gateway::{Gateway, GatewaySettings};

struct Harness {
    runtime: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
    key: ed25519_dalek::SigningKey,
    id: EnvoyId,
    ca: CertAuthority,
    sequence: std::sync::atomic::AtomicU64,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) =
            vigo_spoke::store::Store::open(&dir.path().join("spoke.redb")).unwrap();
        let fleet = Arc::new(FleetIndex::new());
        let key = signing::generate_key();
        let id = EnvoyId::new(7).unwrap();
        fleet.insert(
            EnvoyRecord::new(
                id,
                vigo_spoke::fleet::EnvoyKey::parsed(key.verifying_key()),
                "web-1",
                1,
            ),
            EnvoyState::new(1),
        );
        let policy_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy");
        let compiled = vigo_spoke::policy_cache::compile_dir(&policy_dir).unwrap();
        let policy = Arc::new(
            vigo_spoke::policy_cache::PolicyCache::new(
                vigo_spoke::policy_cache::PolicySource::Directory(policy_dir),
                compiled,
                Some(signing::generate_key()),
                &vigo_spoke::policy_cache::Sealing::Own { generation: 1 },
            )
            .unwrap(),
        );
        let gateway = runtime.block_on(async {
            Arc::new(Gateway::new(
                fleet,
                Default::default(),
                policy,
                vigo_spoke::gateway::Checking {
                    verifier: vigo_spoke::verifier::BatchVerifier::new(64),
                    shares: Default::default(),
                },
                store,
                GatewaySettings {
                    interval_ms: 60_000,
                    jitter_ms: 6_000,
                    timestamp_window_ms: u64::MAX / 4,
                    max_checkin_body: 64 << 10,
                    max_report_body: 1 << 20,
                    max_traits: 256,
                    allow_relay: false,
                    keep_runs: 3,
                },
                Default::default(),
            ))
        });
        let (ca, _) = CertAuthority::create("fuzz CA").unwrap();
        Harness {
            runtime,
            gateway,
            key,
            id,
            ca,
            sequence: std::sync::atomic::AtomicU64::new(1),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let h = harness();
    let peer = Peer::Envoy {
        id: h.id,
        key: *h.key.verifying_key().as_bytes(),
    };
    match mode % 4 {
        // The envelope as it arrives.
        0 => {
            if let Ok(request) = pb::SignedRequest::decode(input) {
                let _ = h.runtime.block_on(h.gateway.check_in(&peer, request));
            }
        }
        // A body the envoy really signed, with a fresh header: everything after the
        // signature check.
        1 => {
            if let Ok(mut body) = pb::CheckInBody::decode(input) {
                body.envoy_id = h.id.get();
                body.sequence = h
                    .sequence
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                body.timestamp_ms = vigo_common::time::now_ms();
                let raw = Bytes::from(body.encode_to_vec());
                let signature = signing::sign(&h.key, Domain::CheckIn, &raw);
                let request = pb::SignedRequest {
                    body: raw,
                    signature: Bytes::copy_from_slice(&signature.to_bytes()),
                };
                let _ = h.runtime.block_on(h.gateway.check_in(&peer, request));
            }
        }
        // A run report, as compliance reads it.
        2 => {
            if let Ok(report) = pb::RunReportBody::decode(input) {
                use vigo_spoke::compliance::{History, from_report};
                let _ = from_report(&report, History { bundle: Some(1), streak: u32::MAX });
                let _ = from_report(&report, History::default());
            }
        }
        // An enrollment request, as a spoke checks it before recording anything.
        _ => {
            if let Ok(req) = pb::EnrollRequest::decode(input) {
                let _ = vigo_common::hostname::normalize(&req.hostname);
                if let Ok(key) = signing::parse_public_key(&req.public_key) {
                    let _ =
                        h.ca.issue_envoy(h.id, key.as_bytes(), &req.csr_der, &req.key_proof);
                }
            }
        }
    }
});
