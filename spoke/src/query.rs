//! The spoke's answers to fleet-wide queries the hub fans out: pages of envoys in a
//! total order, compliance counters, trait distributions. Listings walk this spoke's
//! records in memory (never the disk); compliance reads counters kept incrementally.

use std::collections::BTreeMap;
use std::sync::Arc;

use vigo_common::fleet_query::{Filter, QueryError, Sort};
use vigo_common::traits::TraitMap;
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use crate::admin::Admin;
use crate::compliance::Compliance;
use crate::error::SpokeError;
use crate::fleet::{EnvoyRecord, EnvoyState, REVOKED_SLOT};
use crate::grpc::Cancel;
use crate::policy_cache::PolicySnapshot;

/// Largest page a spoke returns.
pub const MAX_PAGE: u32 = 1000;

impl From<QueryError> for SpokeError {
    fn from(e: QueryError) -> Self {
        SpokeError::Malformed {
            what: e.field,
            why: e.why,
        }
    }
}

/// The status word an envoy is listed and filtered under.
pub fn status_word(st: &EnvoyState) -> &'static str {
    st.effective_status().map_or("revoked", Compliance::as_str)
}

/// One envoy as a query sees it: its state copied once, its hostcrate under the
/// serving policy, its traits if any predicate or the caller needs them.
struct Seen<'a> {
    record: &'a Arc<EnvoyRecord>,
    state: EnvoyState,
    hostcrate: &'a str,
    traits: Option<Arc<TraitMap>>,
}

/// A listing candidate, before it is known to make the page.
struct Candidate {
    record: Arc<EnvoyRecord>,
    state: EnvoyState,
    traits: Option<Arc<TraitMap>>,
}

impl Admin {
    fn hostcrate_name<'p>(
        policy: &'p PolicySnapshot,
        record: &EnvoyRecord,
        st: &EnvoyState,
    ) -> &'p str {
        let index = if st.policy_generation == policy.generation {
            st.hostcrate
        } else {
            policy.hostcrate_of(&record.hostname)
        };
        policy.hostcrate_name(index)
    }

    /// Visits the envoys `filter` selects; stops (an error) when `cancel` is set.
    fn select(
        &self,
        filter: &Filter,
        want_traits: bool,
        cancel: &Cancel,
        mut visit: impl FnMut(Seen<'_>),
    ) -> Result<(), SpokeError> {
        let policy = self.policy.current();
        let need_traits = want_traits || !filter.traits.is_empty();
        let done = self.fleet.until(
            || cancel.is_set(),
            |record| {
                if !filter.matches_hostname(&record.hostname) {
                    return;
                }
                let state = record.state();
                if !filter.matches_status(status_word(&state)) {
                    return;
                }
                let hostcrate = Self::hostcrate_name(&policy, record, &state);
                if !filter.matches_hostcrate(hostcrate) {
                    return;
                }
                let traits = need_traits
                    .then(|| self.traits.get(&state.traits_hash))
                    .flatten();
                if !filter.matches_traits(|k| {
                    traits.as_deref().and_then(|t| t.get(k)).map(String::as_str)
                }) {
                    return;
                }
                visit(Seen {
                    record,
                    state,
                    hostcrate,
                    traits,
                });
            },
        );
        if done {
            Ok(())
        } else {
            Err(SpokeError::Abandoned)
        }
    }

    /// One page of matching envoys after `after`, in `sort` order. Candidates carry
    /// only their sort key and record; summaries (the allocations) are built for the
    /// page alone.
    pub fn list_envoys(
        &self,
        req: pb::SpokeListRequest,
        cancel: &Cancel,
    ) -> Result<pb::SpokeListResponse, SpokeError> {
        let filter = Filter::parse(req.filter.as_ref())?;
        let sort = Sort::parse(&req.sort)?;
        let limit = req.limit.clamp(1, MAX_PAGE) as usize;
        let mut matched = 0u64;
        let mut page: Vec<(pb::SortKey, Candidate)> = Vec::new();
        let by_order =
            |a: &(pb::SortKey, Candidate), b: &(pb::SortKey, Candidate)| sort.compare(&a.0, &b.0);
        self.select(&filter, req.with_traits, cancel, |seen| {
            matched += 1;
            let key = sort.key(
                seen.record.id.get(),
                &seen.record.hostname,
                seen.state.last_seen_ms,
                status_word(&seen.state),
            );
            if let Some(after) = &req.after
                && sort.compare(&key, after) != std::cmp::Ordering::Greater
            {
                return;
            }
            page.push((
                key,
                Candidate {
                    record: seen.record.clone(),
                    state: seen.state,
                    traits: seen.traits,
                },
            ));
            // Keep the candidate list near the page size: sort and cut when it doubles.
            if page.len() >= 2 * limit + 64 {
                page.sort_unstable_by(by_order);
                page.truncate(limit + 1);
            }
        })?;
        page.sort_unstable_by(by_order);
        let more = page.len() > limit;
        page.truncate(limit);
        let policy = self.policy.current();
        let envoys = page
            .into_iter()
            .map(|(_, c)| {
                let hostcrate = Self::hostcrate_name(&policy, &c.record, &c.state);
                let mut summary = summary(
                    &Seen {
                        record: &c.record,
                        state: c.state,
                        hostcrate,
                        traits: c.traits,
                    },
                    req.with_traits,
                );
                summary.streaming = self.streams.generation(c.record.id).is_some();
                summary
            })
            .collect();
        Ok(pb::SpokeListResponse {
            envoys,
            matched,
            more,
        })
    }

    /// Counters per status and per hostcrate; no scan.
    pub fn compliance(&self) -> pb::SpokeCompliance {
        let counts = self.fleet.counts();
        let mut total: BTreeMap<String, u64> = Compliance::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), counts.status(*s)))
            .collect();
        total.insert("revoked".into(), counts.revoked);
        let policy = self.policy.current();
        let (generation, rows) = self.fleet.hostcrate_counts();
        let hostcrates = if generation == policy.generation {
            rows.into_iter()
                .map(|(index, row)| api::NamedCounts {
                    name: policy.hostcrate_name(index).to_string(),
                    counts: Some(status_counts(&row)),
                })
                .collect()
        } else {
            // A policy change is being swept in: no per-hostcrate figures this instant.
            Vec::new()
        };
        pb::SpokeCompliance {
            total: Some(api::StatusCounts {
                by_status: total,
                total: counts.total,
            }),
            hostcrates,
        }
    }

    /// How many envoys hold each value of one trait.
    pub fn trait_count(
        &self,
        req: pb::SpokeTraitCountRequest,
        cancel: &Cancel,
    ) -> Result<pb::SpokeTraitCount, SpokeError> {
        if req.key.is_empty() {
            return Err(SpokeError::malformed("key", "is empty"));
        }
        let filter = Filter::parse(req.filter.as_ref())?;
        let mut values: BTreeMap<String, u64> = BTreeMap::new();
        let mut absent = 0;
        self.select(&filter, true, cancel, |seen| {
            if seen.state.revoked {
                return;
            }
            match seen.traits.as_ref().and_then(|t| t.get(&req.key)) {
                Some(v) => *values.entry(v.clone()).or_default() += 1,
                None => absent += 1,
            }
        })?;
        Ok(pb::SpokeTraitCount { values, absent })
    }

    /// The envoys a force-push names.
    pub fn push_targets(
        &self,
        req: &pb::ForcePushRequest,
    ) -> Result<Vec<Arc<EnvoyRecord>>, SpokeError> {
        let targets = [!req.envoy_ids.is_empty(), req.filter.is_some(), req.all];
        if targets.iter().filter(|t| **t).count() != 1 {
            return Err(SpokeError::malformed(
                "force push",
                "name exactly one target: envoy_ids, filter or all",
            ));
        }
        if !req.envoy_ids.is_empty() {
            return req
                .envoy_ids
                .iter()
                .map(|raw| {
                    let id = vigo_common::EnvoyId::new(*raw)
                        .ok_or_else(|| SpokeError::malformed("envoy_ids", "an id is zero"))?;
                    self.fleet.get(id).ok_or(SpokeError::UnknownEnvoy(id))
                })
                .collect();
        }
        let filter = Filter::parse(req.filter.as_ref())?;
        let mut out = Vec::new();
        self.select(&filter, false, &Cancel::default(), |seen| {
            if !seen.state.revoked {
                out.push(seen.record.clone());
            }
        })?;
        Ok(out)
    }
}

fn summary(seen: &Seen<'_>, with_traits: bool) -> api::EnvoySummary {
    api::EnvoySummary {
        envoy_id: seen.record.id.to_string(),
        hostname: seen.record.hostname.to_string(),
        spoke: String::new(),
        status: status_word(&seen.state).to_string(),
        hostcrate: seen.hostcrate.to_string(),
        last_seen_ms: seen.state.last_seen_ms,
        enrolled_at_ms: seen.record.enrolled_at_ms,
        revoked: seen.state.revoked,
        traits: match (&seen.traits, with_traits) {
            (Some(t), true) => (**t).clone(),
            _ => BTreeMap::new(),
        },
        streaming: false,
    }
}

fn status_counts(row: &[u64; 8]) -> api::StatusCounts {
    let mut by_status: BTreeMap<String, u64> = Compliance::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), row[s.index()]))
        .collect();
    by_status.insert("revoked".into(), row[REVOKED_SLOT]);
    api::StatusCounts {
        by_status,
        total: row.iter().sum(),
    }
}
