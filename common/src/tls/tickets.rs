//! TLS session tickets that survive a restart.
//!
//! A restarted spoke is reconnected to by every envoy it held, at once. With tickets
//! sealed under a key only the old process knew, each of them pays a full handshake
//! (certificate chains, signatures, ~1 ms of server CPU). The ticket keys here live in
//! the server's data directory (`tls-tickets.key`, 0600), so a reconnecting envoy
//! resumes its session instead: no certificate exchange, no signature checks.
//!
//! What a ticket holds: the session's resumption secret and the client's certificate
//! chain, sealed with AES-256-GCM. Whoever reads the key file can forge a ticket naming
//! any client certificate; every envoy request is still signed with the envoy's own
//! Ed25519 key, which the file does not give (DESIGN §9), and the file sits beside the
//! server's TLS key, which gives as much. Keys rotate every [`ROTATE`]; the previous key
//! still opens tickets, so a ticket lives at most [`LIFETIME`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::{Error, fsutil};

/// A new key seals tickets after this long.
pub const ROTATE: Duration = Duration::from_secs(12 * 3600);
/// What clients are told a ticket is good for.
pub const LIFETIME: Duration = ROTATE;
/// The key file in the data directory.
pub const FILE: &str = "tls-tickets.key";

/// Bytes of a key's id at the front of each ticket.
const ID_LEN: usize = 4;

struct Key {
    id: [u8; ID_LEN],
    secret: [u8; 32],
    created: u64,
    sealing: LessSafeKey,
}

impl Key {
    fn new(id: [u8; ID_LEN], secret: [u8; 32], created: u64) -> Option<Self> {
        let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &secret).ok()?);
        Some(Self {
            id,
            secret,
            created,
            sealing,
        })
    }

    fn random(created: u64) -> Option<Self> {
        let mut bytes = [0u8; ID_LEN + 32];
        SystemRandom::new().fill(&mut bytes).ok()?;
        let (id, secret) = bytes.split_at(ID_LEN);
        Self::new(id.try_into().ok()?, secret.try_into().ok()?, created)
    }

    fn line(&self) -> String {
        format!(
            "{} {} {}",
            self.created,
            hex::encode(self.id),
            hex::encode(self.secret)
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        let created = parts.next()?.parse().ok()?;
        let id = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        let secret = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        Self::new(id, secret, created)
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// The ticket keys of one server, kept in its data directory.
pub struct TicketKeys {
    path: PathBuf,
    keys: RwLock<Keys>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TicketKeys {
    /// Loads the keys of `dir`, or makes and saves new ones; rotates them when due.
    pub fn load_or_create(dir: &Path) -> Result<Arc<Self>, Error> {
        let path = dir.join(FILE);
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = stored.lines().map(Key::parse);
        let keys = match (lines.next().flatten(), lines.next().flatten()) {
            (Some(current), previous) => Keys { current, previous },
            (None, _) => Keys {
                current: Key::random(unix_now()).ok_or_else(no_random)?,
                previous: None,
            },
        };
        let this = Arc::new(Self {
            path,
            keys: RwLock::new(keys),
        });
        this.rotate_if_due(unix_now())?;
        this.save()?;
        Ok(this)
    }

    fn save(&self) -> Result<(), Error> {
        let text = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let mut text = keys.current.line() + "\n";
            if let Some(previous) = &keys.previous {
                text += &(previous.line() + "\n");
            }
            text
        };
        fsutil::write_atomic(&self.path, text.as_bytes(), 0o600)
    }

    /// Starts a new key when the current one is older than [`ROTATE`] at `now` (Unix
    /// seconds); the current one becomes the previous.
    fn rotate_if_due(&self, now: u64) -> Result<bool, Error> {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(keys.current.created) < ROTATE.as_secs() {
            return Ok(false);
        }
        let fresh = Key::random(now).ok_or_else(no_random)?;
        keys.previous = Some(std::mem::replace(&mut keys.current, fresh));
        Ok(true)
    }
}

fn no_random() -> Error {
    Error::Tls {
        what: "session ticket key",
        why: "the system's random source failed".into(),
    }
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("path", &self.path)
            .finish()
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME.as_secs() as u32
    }

    /// `id ‖ nonce ‖ AES-256-GCM(plain)`, the id in the associated data.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if self.rotate_if_due(unix_now()).ok()? {
            // A rotation not saved still seals; the file catches up at the next one.
            let _ = self.save();
        }
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = &keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (id, rest) = ticket.split_at_checked(ID_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|k| k.id == id)?;
        let mut opened = sealed.to_vec();
        let plain = key
            .sealing
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(key.id),
                &mut opened,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_outlive_the_process_and_one_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let first = TicketKeys::load_or_create(dir.path()).unwrap();
        let ticket = first.encrypt(b"session state").unwrap();
        assert_eq!(first.decrypt(&ticket).unwrap(), b"session state");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the key file is the server's alone");

        // A restarted server opens the tickets the old one sealed.
        let restarted = TicketKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(restarted.decrypt(&ticket).unwrap(), b"session state");

        // After one rotation the old ticket still opens; after two it does not.
        let later = unix_now() + ROTATE.as_secs();
        assert!(restarted.rotate_if_due(later).unwrap());
        assert_eq!(restarted.decrypt(&ticket).unwrap(), b"session state");
        let newer = restarted.encrypt(b"x").unwrap();
        assert_ne!(
            newer[..ID_LEN],
            ticket[..ID_LEN],
            "sealed under the new key"
        );
        assert!(restarted.rotate_if_due(later + ROTATE.as_secs()).unwrap());
        assert_eq!(restarted.decrypt(&ticket), None);
    }

    #[test]
    fn a_forged_or_damaged_ticket_opens_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TicketKeys::load_or_create(dir.path()).unwrap();
        let ticket = keys.encrypt(b"session state").unwrap();
        for i in [0, ID_LEN, ID_LEN + NONCE_LEN, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(keys.decrypt(&bad), None, "byte {i} flipped");
        }
        assert_eq!(keys.decrypt(&ticket[..ID_LEN + 3]), None, "short");
        assert_eq!(keys.decrypt(&[]), None, "empty");
        // Another server's keys open none of this one's tickets.
        let other = tempfile::tempdir().unwrap();
        let stranger = TicketKeys::load_or_create(other.path()).unwrap();
        assert_eq!(stranger.decrypt(&ticket), None);
        // A damaged key file is replaced, not trusted.
        std::fs::write(dir.path().join(FILE), "garbage\n").unwrap();
        let replaced = TicketKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(replaced.decrypt(&ticket), None);
    }
}
