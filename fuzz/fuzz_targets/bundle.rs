//! What an envoy decodes from a check-in answer: a bundle delivery verified against its
//! trusted key, and — with the manifest signed by the harness, so the fuzzer reaches past
//! the signature — module hashes, the hostcrate and generation checks and the module
//! decoding. Nothing may panic.

#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use vigo_common::policy::bundle::{check_applicable, verify_delivery};
use vigo_common::signing::{self, Domain};
use vigo_proto::v1 as pb;

fn key() -> &'static ed25519_dalek::SigningKey {
    static K: OnceLock<ed25519_dalek::SigningKey> = OnceLock::new();
    K.get_or_init(signing::generate_key)
}

fn check(delivery: &pb::BundleDelivery) {
    let trusted = [key().verifying_key()];
    let held = |h: &[u8; 32]| (h[0] == 0).then(|| Bytes::from_static(b"\x0a\x01m"));
    if let Ok(verified) = verify_delivery(delivery, &trusted, held) {
        let _ = check_applicable(&verified.manifest, "web-1.example.com", Some(5));
        let _ = check_applicable(&verified.manifest, "db-1", None);
        let _ = verified.decode_modules();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(delivery) = pb::BundleDelivery::decode(input) {
            check(&delivery);
        }
        return;
    }
    // The input is a delivery whose manifest the harness signs.
    if let Ok(mut delivery) = pb::BundleDelivery::decode(input) {
        let mut manifest =
            pb::BundleManifest::decode(delivery.manifest.as_ref()).unwrap_or_default();
        manifest.signing_key = Bytes::copy_from_slice(key().verifying_key().as_bytes());
        delivery.manifest = Bytes::from(manifest.encode_to_vec());
        let signature = signing::sign(key(), Domain::Bundle, &delivery.manifest);
        delivery.signature = Bytes::copy_from_slice(&signature.to_bytes());
        check(&delivery);
    }
});
