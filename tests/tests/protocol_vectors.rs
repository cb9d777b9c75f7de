//! The test vectors of `docs/protocol.md`, recomputed: a second implementation can
//! check itself against that document, and the document cannot drift from the code.
//! Each vector is a line `name: hex` inside the document's ```vectors blocks.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use prost::Message;
use vigo_common::signing::{Domain, sign, signed_message};
use vigo_common::traits::{sha256, traits_hash};
use vigo_proto::v1 as pb;
use vigo_tests::repo_root;

/// The vectors the document states.
fn stated() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join("docs/protocol.md")).unwrap();
    let mut vectors = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        match line.trim() {
            "```vectors" => inside = true,
            "```" => inside = false,
            l if inside && l.contains(": ") => {
                let (name, hex) = l.split_once(": ").unwrap();
                vectors.insert(name.trim().to_string(), hex.trim().to_string());
            }
            _ => {}
        }
    }
    vectors
}

/// The same vectors, computed by the code.
fn computed() -> BTreeMap<String, String> {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let traits = BTreeMap::from([
        ("hostname".to_string(), "web-1".to_string()),
        ("os".to_string(), "debian".to_string()),
    ]);
    let body = pb::CheckInBody {
        envoy_id: 0x0123_4567_89ab_cdef,
        sequence: 1_764_633_600_000_000,
        timestamp_ms: 1_764_633_600_000,
        bundle_fingerprint: Default::default(),
        traits_hash: traits_hash(&traits).to_vec().into(),
        traits: Some(pb::Traits {
            values: traits.clone(),
        }),
    }
    .encode_to_vec();
    let mut input = Vec::new();
    let signed_input = signed_message(Domain::CheckIn, &body, &mut input).to_vec();
    let signature = sign(&key, Domain::CheckIn, &body).to_bytes();
    let request = pb::SignedRequest {
        body: body.clone().into(),
        signature: signature.to_vec().into(),
    }
    .encode_to_vec();
    BTreeMap::from([
        ("identity_seed".into(), hex::encode([7u8; 32])),
        (
            "identity_public_key".into(),
            hex::encode(key.verifying_key().as_bytes()),
        ),
        ("traits_hash".into(), hex::encode(traits_hash(&traits))),
        (
            "empty_traits_hash".into(),
            hex::encode(traits_hash(&BTreeMap::new())),
        ),
        ("checkin_body".into(), hex::encode(&body)),
        ("checkin_signed_input".into(), hex::encode(signed_input)),
        ("checkin_signature".into(), hex::encode(signature)),
        ("checkin_request".into(), hex::encode(request)),
        (
            "fingerprint_of_manifest_0a00".into(),
            hex::encode(sha256(&[0x0a, 0x00])),
        ),
    ])
}

#[test]
fn the_documented_vectors_are_what_the_code_computes() {
    let computed = computed();
    for (name, value) in &computed {
        println!("{name}: {value}");
    }
    let stated = stated();
    assert_eq!(
        stated.keys().collect::<Vec<_>>(),
        computed.keys().collect::<Vec<_>>(),
        "docs/protocol.md states these vectors"
    );
    for (name, value) in &computed {
        assert_eq!(&stated[name], value, "vector {name}");
    }
}
