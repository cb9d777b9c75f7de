//! Size limits both ends of a connection must agree on, in one place: what a sender may
//! build and what a receiver decodes are the same numbers, so nothing that is accepted
//! at one end can be undeliverable at the other.
//!
//! Per-RPC message limits of the servers are derived from these in each server's
//! admission table (`vigo_spoke::admission`, `vigo_hub::admission`).

/// A published policy tree: paths and YAML text of every file.
pub const MAX_POLICY_BYTES: usize = 16 << 20;

/// One hostcrate's bundle with every module body, as a check-in answer carries it.
/// Validation refuses a policy whose bundle would be larger.
pub const MAX_BUNDLE_BYTES: usize = 16 << 20;

/// Room for the envelope around a payload (protobuf framing, signatures, metadata).
pub const ENVELOPE_SLACK: usize = 64 << 10;

/// The largest check-in answer an envoy decodes: a full bundle and its envelope.
pub const MAX_CHECKIN_ANSWER: usize = MAX_BUNDLE_BYTES + ENVELOPE_SLACK;

/// The largest config version a spoke decodes (pushed or pulled from the hub).
pub const MAX_CONFIG_MESSAGE: usize = MAX_POLICY_BYTES + ENVELOPE_SLACK;

/// A hostname pattern of a policy or an override: hostnames are at most 253 bytes, and
/// a glob a little longer can still match them.
pub const MAX_HOSTNAME_PATTERN: usize = 256;

/// Trait predicates one fleet query may carry (every spoke evaluates each for every
/// envoy it holds).
pub const MAX_TRAIT_PREDICATES: usize = 32;

/// Length of one trait predicate (`key<op>value`).
pub const MAX_TRAIT_PREDICATE: usize = 4096 + 128 + 2;

/// A spoke's weight on the hash ring (its share of new envoys, relative to the others):
/// the ring holds 256 points per unit of weight.
pub const MAX_SPOKE_WEIGHT: u32 = 100;

/// What a client decodes from calls whose answers are small (enrollment, registration,
/// heartbeats, acknowledgements): set explicitly on both ends rather than left to the
/// library's default.
pub const MAX_SMALL_ANSWER: usize = 1 << 20;

/// What an admin client (`vigocli`, a forwarding hub) decodes: pages of envoys with their
/// traits, drains with their results.
pub const MAX_ADMIN_ANSWER: usize = 64 << 20;

/// Envoys one hub→spoke registration call carries (a batch of concurrent enrollments).
pub const MAX_REGISTER_BATCH: usize = 256;

/// The largest task result an envoy sends (`TaskResultBody`, encoded): the envoy cuts
/// its output to fit, the spoke refuses anything larger.
pub const MAX_TASK_RESULT: usize = 200 << 10;
