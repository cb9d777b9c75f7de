//! Envoy traits (facts about a machine) and their content hash.
//!
//! The envoy sends the hash on every check-in and the traits only when the hash changed;
//! the spoke stores each distinct trait set once, keyed by this hash.

use std::collections::BTreeMap;

use ring::digest::{Context, SHA256};

pub type TraitMap = BTreeMap<String, String>;

/// Whether a trait holds a number or text, for conditions (`when:`) checked at publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraitKind {
    Text,
    Number,
}

/// Every trait an envoy reports, and its kind: a condition naming another is refused at
/// publish. The envoy's collector reports exactly these keys.
pub const KNOWN_TRAITS: &[(&str, TraitKind)] = &[
    ("hostname", TraitKind::Text),
    ("os", TraitKind::Text),
    ("os_version", TraitKind::Text),
    ("kernel", TraitKind::Text),
    ("arch", TraitKind::Text),
    ("cpus", TraitKind::Number),
    ("memory_mb", TraitKind::Number),
    ("ipv4", TraitKind::Text),
    ("ipv6", TraitKind::Text),
    ("boot_time", TraitKind::Number),
];

/// The kind of a known trait.
pub fn trait_kind(name: &str) -> Option<TraitKind> {
    KNOWN_TRAITS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
}

/// SHA-256 over the sorted pairs, each field length-prefixed so that no two different
/// maps share an encoding.
pub fn traits_hash(traits: &TraitMap) -> [u8; 32] {
    sha256_fields(
        b"vigo.v1.Traits\0",
        traits.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]),
    )
}

/// SHA-256 of a domain tag and a sequence of fields, each prefixed by its length: an
/// unambiguous digest of structured data.
pub fn sha256_fields<S: AsRef<[u8]>>(
    domain: &[u8],
    fields: impl IntoIterator<Item = S>,
) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(domain);
    for field in fields {
        let field = field.as_ref();
        ctx.update(&(field.len() as u64).to_le_bytes());
        ctx.update(field);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA-256 of arbitrary bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_boundaries_not_just_bytes() {
        let a = TraitMap::from([("ab".into(), "c".into())]);
        let b = TraitMap::from([("a".into(), "bc".into())]);
        assert_ne!(traits_hash(&a), traits_hash(&b));
        assert_eq!(traits_hash(&a), traits_hash(&a.clone()));
    }
}
