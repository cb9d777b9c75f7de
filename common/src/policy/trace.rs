//! Why a host gets what it gets: the hostcrate its name matches, the roles and
//! configcrates that brings (with the include conditions), and every variable with the
//! definition that won and those it overrode. What `vigocli config trace` prints.

use std::collections::BTreeMap;

use super::PolicyTree;
use super::compile::{CompiledPolicy, ResolvedVar, includes, resolve_vars};

/// What a host's name resolves to in one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// "" when no hostcrate matches (the host gets the empty fallback bundle).
    pub hostcrate: String,
    /// The hostcrate's patterns (one of them matched; none of an earlier hostcrate did).
    pub patterns: Vec<String>,
    pub roles: Vec<String>,
    /// In application order.
    pub configcrates: Vec<TracedCrate>,
    pub vars: BTreeMap<String, ResolvedVar>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TracedCrate {
    pub name: String,
    /// The roles that include it, in the hostcrate's role order.
    pub roles: Vec<String>,
    /// The include condition ("" = always).
    pub when: String,
    pub resources: usize,
}

/// Traces `hostname` (already normalized) through a validated policy.
pub fn trace(tree: &PolicyTree, compiled: &CompiledPolicy, hostname: &str) -> Trace {
    let index = compiled.match_hostname(hostname);
    let Some(h) = tree.hostcrates.get(index) else {
        return Trace {
            hostcrate: String::new(),
            patterns: Vec::new(),
            roles: Vec::new(),
            configcrates: Vec::new(),
            vars: BTreeMap::new(),
        };
    };
    let (order, conditions) = includes(tree, h);
    let configcrates = order
        .iter()
        .zip(conditions)
        .map(|(name, when)| TracedCrate {
            name: name.to_string(),
            roles: h
                .roles
                .iter()
                .filter(|r| tree.roles[*r].configcrates.iter().any(|c| c == name))
                .cloned()
                .collect(),
            when,
            resources: tree.configcrates[*name].resources.len(),
        })
        .collect();
    Trace {
        hostcrate: h.name.clone(),
        patterns: h.patterns.clone(),
        roles: h.roles.clone(),
        configcrates,
        vars: resolve_vars(tree, h),
    }
}

impl Trace {
    /// The admin API's form of this trace of `hostname` in config `version`.
    pub fn into_api(self, version: String, hostname: String) -> vigo_proto::admin::v1::ConfigTrace {
        use vigo_proto::admin::v1 as api;
        api::ConfigTrace {
            version,
            hostname,
            hostcrate: self.hostcrate,
            patterns: self.patterns,
            roles: self.roles,
            configcrates: self
                .configcrates
                .into_iter()
                .map(|c| api::TracedConfigcrate {
                    name: c.name,
                    roles: c.roles,
                    when: c.when,
                    resources: c.resources as u32,
                })
                .collect(),
            vars: self
                .vars
                .into_iter()
                .map(|(name, v)| api::TracedVar {
                    name,
                    value: v.value,
                    source: v.from.to_string(),
                    overrides: v
                        .overrides
                        .into_iter()
                        .map(|(source, value)| api::VarOverride {
                            source: source.to_string(),
                            value,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
