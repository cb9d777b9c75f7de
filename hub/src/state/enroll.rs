//! Enrollment as the state machine applies it: the shared rules
//! (`vigo_common::enrollment`) checked again against the replicated state at commit, so
//! the leader's earlier check can never let a stale decision through.

use vigo_common::enrollment::{Denied, Guard, Terms, guard_hostname};

use super::{ClusterState, EnrollEntry, Pin, Rejection, Revoked, SpokeState};

impl ClusterState {
    /// The shared enrollment rules (`vigo_common::enrollment`) against the replicated
    /// state: a retry of a pinned hostname and key is the same envoy; otherwise the
    /// token's terms, the hostname guard, an active spoke and a free id. A re-key
    /// revokes the envoy it replaces, in the same entry.
    pub(super) fn enroll(&mut self, e: EnrollEntry) -> Result<u64, Rejection> {
        let active = self
            .hostnames
            .get(&e.hostname)
            .copied()
            .filter(|id| !self.is_envoy_revoked(*id));
        if let Some(id) = active
            && self.pins[&id].key == e.key
        {
            return Ok(id);
        }
        if self.revoked_key(&e.hostname, &e.key) {
            return Err(Rejection::EnvoyRevoked(self.hostnames[&e.hostname]));
        }
        let token = self.tokens.get(&e.token).ok_or(Denied::UnknownToken)?;
        let scope = vigo_common::hostname::Scope::new(&token.hostnames).ok();
        Terms {
            name: &token.name,
            uses: token.uses,
            taken: token.used,
            expires_ms: token.expires_ms,
            revoked: token.revoked,
            scope: scope.as_ref(),
        }
        .admit_new(&e.hostname, e.at_ms)?;
        let guard = guard_hostname(
            &e.hostname,
            active.map(|id| (id, &self.pins[&id].key)),
            &e.key,
            token.allow_rekey,
        )?;
        if !self
            .spokes
            .get(&e.spoke)
            .is_some_and(|s| s.state == SpokeState::Active)
        {
            return Err(Rejection::SpokeNotActive(e.spoke));
        }
        if self.pins.contains_key(&e.envoy_id) {
            return Err(Rejection::EnvoyIdTaken(e.envoy_id));
        }
        if let Guard::Rekey(old) = guard {
            self.pins.remove(&old);
            self.revoke(
                Revoked::Envoy(old),
                e.at_ms,
                format!("re-enrolled with a new key as {:016x}", e.envoy_id),
                "enrollment",
            );
        }
        if let Some(t) = self.tokens.get_mut(&e.token) {
            t.used = t.used.saturating_add(1);
        }
        self.hostnames.insert(e.hostname.clone(), e.envoy_id);
        self.pins.insert(
            e.envoy_id,
            Pin {
                spoke: e.spoke,
                hostname: e.hostname,
                key: e.key,
            },
        );
        Ok(e.envoy_id)
    }

    /// Whether `hostname`'s last envoy had `key` and was revoked: that key never
    /// enrolls again.
    fn revoked_key(&self, hostname: &str, key: &[u8; 32]) -> bool {
        self.hostnames
            .get(hostname)
            .is_some_and(|id| self.is_envoy_revoked(*id) && &self.pins[id].key == key)
    }
}
