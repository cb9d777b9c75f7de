//! The envoy's admission of a task (`vigo_envoy::agent::tasks::check`): arbitrary bytes
//! as a `SignedTask`, and arbitrary bodies correctly signed by a trusted key (so the
//! checks after the signature are reached too). Nothing may panic, and a task that is
//! admitted must be what the checks promise: this envoy's, inside its window, 16-byte id.

#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use vigo_common::EnvoyId;
use vigo_common::signing::{self, Domain};
use vigo_envoy::agent::tasks::{TaskPolicy, check};
use vigo_proto::v1 as pb;

const NOW: u64 = 1_764_633_600_000;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let trusted = [key.verifying_key()];
    let envoy = EnvoyId::new(0x0123_4567_89ab_cdef).expect("non-zero");
    let policy = TaskPolicy {
        exec: data.first().is_some_and(|b| b & 1 == 0),
    };
    // As it came off the wire.
    if let Ok(signed) = pb::SignedTask::decode(data) {
        let _ = check(&signed, envoy, &trusted, NOW, policy);
    }
    // A body the hub signed: everything after the signature check.
    let signed = pb::SignedTask {
        body: bytes::Bytes::copy_from_slice(data),
        signature: bytes::Bytes::copy_from_slice(
            &signing::sign(&key, Domain::Task, data).to_bytes(),
        ),
    };
    if let Ok(admitted) = check(&signed, envoy, &trusted, NOW, policy) {
        assert_eq!(admitted.body.envoy_id, envoy.get());
        assert!(admitted.body.not_after_ms >= NOW);
        assert!(admitted.body.action.is_some());
    }
});
