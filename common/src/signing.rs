//! Ed25519 keys and the signed-envelope rules of the protocol.
//!
//! A signature covers a domain prefix followed by the exact body bytes, so a signature
//! made for one kind of message can never be replayed as another kind.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::Error;

pub use ed25519_dalek::{PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH};

/// What a signature is for. Each domain has its own prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    CheckIn,
    ReportRun,
    Bundle,
    Locate,
    Stream,
    /// An envoy's identity key vouching for its TLS key at enrollment (over the CSR).
    EnrollKey,
    /// A task for one envoy, signed by the hub with a bundle key (DESIGN §10).
    Task,
    /// An envoy's result of a task it ran.
    TaskResult,
}

impl Domain {
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            Domain::CheckIn => b"vigo.v1.CheckIn\0",
            Domain::ReportRun => b"vigo.v1.ReportRun\0",
            Domain::Bundle => b"vigo.v1.Bundle\0",
            Domain::Locate => b"vigo.v1.Locate\0",
            Domain::Stream => b"vigo.v1.Stream\0",
            Domain::EnrollKey => b"vigo.v1.EnrollKey\0",
            Domain::Task => b"vigo.v1.Task\0",
            Domain::TaskResult => b"vigo.v1.TaskResult\0",
        }
    }

    /// The longest prefix, for sizing reusable message buffers.
    pub const MAX_PREFIX_LEN: usize = 19;
}

/// Writes `prefix || body` into `buf` (cleared first) and returns it: the exact bytes
/// a signature covers. Reusing `buf` keeps verification allocation-free.
pub fn signed_message<'a>(domain: Domain, body: &[u8], buf: &'a mut Vec<u8>) -> &'a [u8] {
    buf.clear();
    buf.extend_from_slice(domain.prefix());
    buf.extend_from_slice(body);
    buf
}

pub fn sign(key: &SigningKey, domain: Domain, body: &[u8]) -> Signature {
    let mut buf = Vec::with_capacity(domain.prefix().len() + body.len());
    key.sign(signed_message(domain, body, &mut buf))
}

/// Verifies one signature (cofactorless, as `verify_batch` falls back to).
pub fn verify(
    key: &VerifyingKey,
    domain: Domain,
    body: &[u8],
    signature: &Signature,
) -> Result<(), Error> {
    let mut buf = Vec::with_capacity(domain.prefix().len() + body.len());
    key.verify(signed_message(domain, body, &mut buf), signature)
        .map_err(|_| Error::BadSignature)
}

/// Parses a 64-byte signature.
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, Error> {
    Signature::from_slice(bytes).map_err(|_| Error::Malformed {
        what: "signature",
        why: format!("must be {SIGNATURE_LENGTH} bytes, got {}", bytes.len()),
    })
}

/// Parses a public key and refuses the small-order ("weak") keys, which would let one
/// signature verify for many messages. Batch verification does not check this, so it
/// must happen here, once, when a key enters the system.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, Error> {
    let raw: &[u8; PUBLIC_KEY_LENGTH] = bytes.try_into().map_err(|_| Error::Malformed {
        what: "public key",
        why: format!("must be {PUBLIC_KEY_LENGTH} bytes, got {}", bytes.len()),
    })?;
    let key = VerifyingKey::from_bytes(raw).map_err(|_| Error::Malformed {
        what: "public key",
        why: "not a point on Ed25519".into(),
    })?;
    if key.is_weak() {
        return Err(Error::Malformed {
            what: "public key",
            why: "weak (small-order) Ed25519 key".into(),
        });
    }
    Ok(key)
}

pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}

/// A key as PKCS#8 v1 (RFC 8410: the private key alone). v2, which adds the public
/// key, is what `SigningKey` writes by default and what OpenSSL 3.0 cannot read.
fn v1(key: &SigningKey) -> ed25519_dalek::pkcs8::KeypairBytes {
    ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
}

/// PKCS#8 DER of a signing key: what rcgen and rustls take.
pub fn key_to_pkcs8_der(key: &SigningKey) -> Vec<u8> {
    v1(key)
        .to_pkcs8_der()
        .expect("an Ed25519 key always encodes as PKCS#8")
        .as_bytes()
        .to_vec()
}

pub fn key_to_pkcs8_pem(key: &SigningKey) -> String {
    v1(key)
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key always encodes as PKCS#8")
        .to_string()
}

pub fn key_from_pkcs8_pem(pem: &str) -> Result<SigningKey, Error> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| Error::Malformed {
        what: "Ed25519 private key",
        why: e.to_string(),
    })
}

/// Reads a PKCS#8 PEM Ed25519 private key from a file.
pub fn read_key_file(path: &Path) -> Result<SigningKey, Error> {
    let pem = crate::fsutil::read_to_string(path)?;
    key_from_pkcs8_pem(&pem).map_err(|e| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_bound_to_its_domain() {
        let key = generate_key();
        let body = b"envoy body";
        let sig = sign(&key, Domain::CheckIn, body);
        verify(&key.verifying_key(), Domain::CheckIn, body, &sig).unwrap();
        assert!(verify(&key.verifying_key(), Domain::ReportRun, body, &sig).is_err());
        assert!(verify(&key.verifying_key(), Domain::CheckIn, b"other body", &sig).is_err());
    }

    #[test]
    fn weak_and_short_keys_are_refused() {
        // The identity point (y = 1) has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_public_key(&identity).is_err());
        assert!(parse_public_key(&[1u8; 31]).is_err());
        let good = generate_key().verifying_key();
        assert_eq!(parse_public_key(good.as_bytes()).unwrap(), good);
    }

    #[test]
    fn pkcs8_pem_round_trip() {
        let key = generate_key();
        let back = key_from_pkcs8_pem(&key_to_pkcs8_pem(&key)).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
    }

    #[test]
    fn prefixes_fit_the_declared_maximum() {
        for d in [
            Domain::CheckIn,
            Domain::ReportRun,
            Domain::Bundle,
            Domain::Locate,
            Domain::Stream,
            Domain::EnrollKey,
            Domain::Task,
            Domain::TaskResult,
        ] {
            assert!(d.prefix().len() <= Domain::MAX_PREFIX_LEN);
        }
    }
}
