//! The rows a flush writes: every dirty envoy's state encoded (as `StoredState`) into
//! one buffer, indexed by envoy id, sorted, and cut into per-transaction chunks that
//! share the buffer. A flush of 50,000 envoys makes a handful of allocations, not five
//! per row.

use std::sync::Arc;

use prost::Message;

use crate::fleet::EnvoyState;
use crate::store::StoredState;

/// Envoy states for one flush transaction.
#[derive(Clone, Default)]
pub struct StateRows {
    buf: Arc<Vec<u8>>,
    /// (envoy id, start in `buf`, length), in key order.
    rows: Vec<(u64, u32, u32)>,
}

impl StateRows {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Each row: the envoy id and its encoded `StoredState`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.rows
            .iter()
            .map(|&(id, at, len)| (id, &self.buf[at as usize..(at + len) as usize]))
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().map(|(id, _, _)| *id)
    }
}

/// Collects rows for [`StateRows`].
#[derive(Default)]
pub struct StateRowsBuilder {
    buf: Vec<u8>,
    rows: Vec<(u64, u32, u32)>,
}

impl StateRowsBuilder {
    /// Adds a row from an envoy's in-memory state.
    pub fn push_state(&mut self, id: u64, st: &EnvoyState) {
        let at = self.buf.len();
        encode_state(st, &mut self.buf);
        self.rows
            .push((id, at as u32, (self.buf.len() - at) as u32));
    }

    /// Adds a row from a stored state (imports, tools, benchmarks).
    pub fn push(&mut self, id: u64, state: &StoredState) {
        let at = self.buf.len();
        state
            .encode(&mut self.buf)
            .expect("a Vec grows to take any message");
        self.rows
            .push((id, at as u32, (self.buf.len() - at) as u32));
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows in key order (envoy ids are random: written in key order, each B-tree
    /// page is copied once per transaction rather than once per row that lands on it),
    /// `per_chunk` rows per chunk.
    pub fn into_chunks(mut self, per_chunk: usize) -> Vec<StateRows> {
        self.rows.sort_unstable_by_key(|(id, _, _)| *id);
        let buf = Arc::new(self.buf);
        self.rows
            .chunks(per_chunk.max(1))
            .map(|rows| StateRows {
                buf: buf.clone(),
                rows: rows.to_vec(),
            })
            .collect()
    }
}

/// `StoredState` of `st`, encoded as prost would (fields at their defaults omitted),
/// without building the message.
fn encode_state(st: &EnvoyState, out: &mut Vec<u8>) {
    fn fixed64(tag: u8, v: u64, out: &mut Vec<u8>) {
        if v != 0 {
            out.push(tag << 3 | 1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn bytes32(tag: u8, v: &[u8; 32], out: &mut Vec<u8>) {
        out.push(tag << 3 | 2);
        out.push(32);
        out.extend_from_slice(v);
    }
    fixed64(1, st.sequence, out);
    fixed64(2, st.last_seen_ms, out);
    bytes32(3, &st.traits_hash, out);
    bytes32(4, &st.bundle_fingerprint, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(st: &EnvoyState) -> StoredState {
        StoredState {
            sequence: st.sequence,
            last_seen_ms: st.last_seen_ms,
            traits_hash: st.traits_hash.to_vec(),
            bundle_fingerprint: st.bundle_fingerprint.to_vec(),
        }
    }

    #[test]
    fn a_state_encodes_as_its_stored_message_does() {
        for (sequence, seen, fill) in [
            (0, 0, 0u8),
            (1, 0, 7),
            (0, 1_700_000_000_000, 0),
            (u64::MAX, 3, 255),
        ] {
            let mut st = EnvoyState::new(seen);
            st.sequence = sequence;
            st.traits_hash = [fill; 32];
            st.bundle_fingerprint = [fill.wrapping_add(1); 32];
            let mut ours = Vec::new();
            encode_state(&st, &mut ours);
            assert_eq!(
                ours,
                stored(&st).encode_to_vec(),
                "{sequence} {seen} {fill}"
            );
            assert_eq!(StoredState::decode(ours.as_slice()).unwrap(), stored(&st));
        }
    }

    #[test]
    fn chunks_hold_every_row_once_in_key_order() {
        let mut b = StateRowsBuilder::default();
        let ids = [9u64, 3, 27, 1, 14, 8, 2];
        for id in ids {
            let mut st = EnvoyState::new(id * 1000);
            st.sequence = id;
            b.push_state(id, &st);
        }
        b.push(
            5,
            &StoredState {
                sequence: 5,
                ..Default::default()
            },
        );
        let chunks = b.into_chunks(3);
        assert_eq!(
            chunks.iter().map(StateRows::len).collect::<Vec<_>>(),
            vec![3, 3, 2]
        );
        let rows: Vec<(u64, StoredState)> = chunks
            .iter()
            .flat_map(|c| {
                c.iter()
                    .map(|(id, b)| (id, StoredState::decode(b).unwrap()))
            })
            .collect();
        let order: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
        assert_eq!(order, vec![1, 2, 3, 5, 8, 9, 14, 27]);
        for (id, state) in rows {
            assert_eq!(state.sequence, id, "row {id} has its own bytes");
        }
    }
}
