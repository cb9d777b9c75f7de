//! Applying a bundle: resources in dependency order, conditions and templates evaluated
//! with this machine's facts, each resource through its executor; a failed resource
//! skips everything that depends on it, directly or not, and nothing else; a resource
//! that changed refreshes the resources subscribed to it, once, after it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use vigo_common::templates::Renderer;
use vigo_common::traits::TraitMap;
use vigo_proto::v1 as pb;

use vigo_common::policy::when::Condition;

use super::executors::{
    Applied, DEFAULT_TIMEOUT, ExecPlan, Outcome, apply_cron, apply_directory, apply_exec,
    apply_file, apply_file_line, apply_group, apply_packages, apply_service, apply_symlink,
    apply_user,
};

/// What happened to one resource in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceResult {
    pub id: String,
    pub outcome: pb::Outcome,
    pub message: String,
    pub duration: Duration,
}

impl ResourceResult {
    pub fn to_proto(&self) -> pb::ResourceOutcome {
        pb::ResourceOutcome {
            resource_id: self.id.clone(),
            outcome: self.outcome as i32,
            message: self.message.clone(),
            duration_ms: self.duration.as_millis().min(u32::MAX as u128) as u32,
        }
    }
}

/// The facts templates and conditions see.
pub struct Facts<'a> {
    pub hostname: &'a str,
    pub traits: &'a TraitMap,
}

/// How a resource ended, for the resources that depend on or subscribe to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Done {
    /// Changed (or would have, in a dry run): refreshes its subscribers.
    Changed,
    Unchanged,
    /// Its condition was false: dependents go on.
    Off,
    /// Failed, or skipped for a dependency: dependents are skipped.
    Broken(&'static str),
}

/// One resource of the bundle and the include condition of its configcrate.
struct Item<'a> {
    r: &'a pb::Resource,
    include: &'a str,
}

/// Applies every resource of `modules` and returns their outcomes in application order.
///
/// Order of checks per resource: a dependency (or a resource it subscribes to) that
/// failed or was skipped skips it; then its configcrate's condition and its own (false:
/// skipped, and its dependents still run); then it is applied, with the name of a
/// subscribed resource that changed in this run when there is one (a refresh). Package
/// resources ready at the same point are applied together (one package-manager call).
pub fn apply(
    modules: &[pb::Module],
    manifest: &pb::BundleManifest,
    facts: &Facts<'_>,
    dry_run: bool,
) -> Vec<ResourceResult> {
    let renderer = Renderer::new(facts.hostname, facts.traits, &manifest.variables);
    let includes: HashMap<&str, &str> = manifest
        .modules
        .iter()
        .map(|m| (m.name.as_str(), m.when.as_str()))
        .collect();
    let items: Vec<Item<'_>> = modules
        .iter()
        .flat_map(|m| {
            let include = includes.get(m.name.as_str()).copied().unwrap_or("");
            m.resources.iter().map(move |r| Item { r, include })
        })
        .collect();
    let resources: Vec<&pb::Resource> = items.iter().map(|i| i.r).collect();
    let (order, unordered) = dependency_order(&resources);
    let mut run = Run {
        items: &items,
        facts,
        variables: &manifest.variables,
        dry_run,
        done: HashMap::new(),
        results: Vec::with_capacity(items.len()),
    };
    for i in order {
        if run.done.contains_key(items[i].r.id.as_str()) {
            continue; // applied early, in a batch of packages
        }
        run.step(i, &renderer);
    }
    // Resources left out of the order sit on a cycle or depend on something missing;
    // publishing refuses both, so this only guards against a damaged bundle.
    for i in unordered {
        run.results.push(ResourceResult {
            id: resources[i].id.clone(),
            outcome: pb::Outcome::Failed,
            message: "unresolvable dependencies (cycle or unknown resource)".into(),
            duration: Duration::ZERO,
        });
    }
    run.results
}

/// A run in progress.
struct Run<'a> {
    items: &'a [Item<'a>],
    facts: &'a Facts<'a>,
    variables: &'a BTreeMap<String, String>,
    dry_run: bool,
    done: HashMap<&'a str, Done>,
    results: Vec<ResourceResult>,
}

impl<'a> Run<'a> {
    fn step(&mut self, i: usize, renderer: &Renderer) {
        let started = Instant::now();
        let r = self.items[i].r;
        if let Some((dep, why)) = self.blocked(r) {
            let message = format!("dependency {dep} {why}");
            return self.record(
                r,
                Done::Broken("skipped"),
                pb::Outcome::Skipped,
                message,
                started,
            );
        }
        match self.condition(i) {
            Ok(true) => {}
            Ok(false) => {
                let message = "skipped: its condition is false".to_string();
                return self.record(r, Done::Off, pb::Outcome::Skipped, message, started);
            }
            Err(e) => {
                return self.record(r, Done::Broken("failed"), pb::Outcome::Failed, e, started);
            }
        }
        if let Some(pb::resource::Spec::Package(_)) = &r.spec {
            return self.packages(i, started);
        }
        let refresh = r
            .subscribes
            .iter()
            .find(|s| self.done.get(s.as_str()) == Some(&Done::Changed))
            .map(String::as_str);
        let outcome = apply_one(r, renderer, self.dry_run, refresh);
        self.record_outcome(r, outcome, started);
    }

    /// The first dependency or subscription that failed or was skipped.
    fn blocked(&self, r: &pb::Resource) -> Option<(&'a str, &'static str)> {
        r.depends_on.iter().chain(&r.subscribes).find_map(|d| {
            match self.done.get_key_value(d.as_str()) {
                Some((id, Done::Broken(why))) => Some((*id, *why)),
                _ => None,
            }
        })
    }

    /// The configcrate's condition and the resource's, both true.
    fn condition(&self, i: usize) -> Result<bool, String> {
        let item = &self.items[i];
        for (what, source) in [("its configcrate's", item.include), ("its", &item.r.when)] {
            if source.is_empty() {
                continue;
            }
            let holds = Condition::parse(source)
                .and_then(|c| c.eval(self.facts.hostname, self.facts.traits, self.variables))
                .map_err(|e| format!("{what} condition cannot be evaluated: {e}"))?;
            if !holds {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Applies package resource `first` with every other package resource that is
    /// ready now: not applied yet, its dependencies done and unbroken, its condition
    /// true.
    fn packages(&mut self, first: usize, started: Instant) {
        let mut batch = vec![first];
        for j in 0..self.items.len() {
            let r = self.items[j].r;
            let ready = j != first
                && matches!(r.spec, Some(pb::resource::Spec::Package(_)))
                && !self.done.contains_key(r.id.as_str())
                && r.depends_on.iter().chain(&r.subscribes).all(|d| {
                    matches!(
                        self.done.get(d.as_str()),
                        Some(Done::Changed | Done::Unchanged | Done::Off)
                    )
                })
                && self.condition(j) == Ok(true);
            if ready {
                batch.push(j);
            }
        }
        let specs: Vec<&pb::PackageSpec> = batch
            .iter()
            .filter_map(|&j| match &self.items[j].r.spec {
                Some(pb::resource::Spec::Package(p)) => Some(p),
                _ => None,
            })
            .collect();
        let outcomes = apply_packages(&specs, self.dry_run);
        for (j, outcome) in batch.into_iter().zip(outcomes) {
            self.record_outcome(self.items[j].r, outcome, started);
        }
    }

    fn record_outcome(&mut self, r: &'a pb::Resource, outcome: Outcome, started: Instant) {
        let (done, outcome, message) = match outcome {
            Ok(Applied::InPolicy) => (Done::Unchanged, pb::Outcome::Ok, String::new()),
            Ok(Applied::Changed(m)) => (Done::Changed, pb::Outcome::Changed, m),
            Ok(Applied::WouldChange(m)) => (Done::Changed, pb::Outcome::WouldChange, m),
            Err(m) => (Done::Broken("failed"), pb::Outcome::Failed, m),
        };
        self.record(r, done, outcome, message, started);
    }

    fn record(
        &mut self,
        r: &'a pb::Resource,
        done: Done,
        outcome: pb::Outcome,
        message: String,
        started: Instant,
    ) {
        self.done.insert(&r.id, done);
        self.results.push(ResourceResult {
            id: r.id.clone(),
            outcome,
            message,
            duration: started.elapsed(),
        });
    }
}

/// Applies one resource; `refresh` names a subscribed resource that changed.
fn apply_one(
    r: &pb::Resource,
    renderer: &Renderer,
    dry_run: bool,
    refresh: Option<&str>,
) -> Outcome {
    use pb::resource::Spec;
    match &r.spec {
        Some(Spec::File(f)) => {
            let content = if f.template {
                renderer.render(&f.content)?
            } else {
                f.content.clone()
            };
            apply_file(f, &content, dry_run)
        }
        Some(Spec::Directory(d)) => apply_directory(d, dry_run),
        Some(Spec::Symlink(s)) => apply_symlink(s, dry_run),
        Some(Spec::FileLine(l)) => apply_file_line(l, &renderer.render(&l.line)?, dry_run),
        Some(Spec::Exec(e)) => exec(e, renderer, dry_run, refresh),
        Some(Spec::Service(s)) => apply_service(s, refresh, dry_run),
        Some(Spec::User(u)) => apply_user(u, dry_run),
        Some(Spec::Group(g)) => apply_group(g, dry_run),
        Some(Spec::Cron(c)) => apply_cron(c, &renderer.render(&c.command)?, &r.id, dry_run),
        Some(Spec::Package(p)) => apply_packages(&[p], dry_run)
            .pop()
            .unwrap_or_else(|| Err("no outcome".into())),
        None => Err(format!(
            "unsupported resource type {:?} (this envoy knows {})",
            r.r#type, KNOWN_TYPES
        )),
    }
}

/// What this envoy applies, for the message about a type it does not know.
const KNOWN_TYPES: &str =
    "file, directory, symlink, file_line, exec, package, service, user, group, cron";

/// An exec: run when its conditions say so; a refresh runs its command once whatever
/// `creates`, `unless` and `onlyif` say; a `refresh_only` exec runs on a refresh only.
fn exec(e: &pb::ExecSpec, renderer: &Renderer, dry_run: bool, refresh: Option<&str>) -> Outcome {
    if e.refresh_only && refresh.is_none() {
        return Ok(Applied::InPolicy);
    }
    let command = renderer.render(&e.command)?;
    let (creates, unless, onlyif) = if refresh.is_some() {
        Default::default()
    } else {
        (
            renderer.render(&e.creates)?,
            renderer.render(&e.unless)?,
            renderer.render(&e.onlyif)?,
        )
    };
    let timeout = if e.timeout_ms == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(e.timeout_ms.into())
    };
    let outcome = apply_exec(
        &ExecPlan {
            command: &command,
            creates: &creates,
            unless: &unless,
            onlyif: &onlyif,
            timeout,
            environment: &e.environment,
        },
        dry_run,
    );
    match (outcome, refresh) {
        (Ok(Applied::Changed(m)), Some(why)) => {
            Ok(Applied::Changed(format!("{m} ({why} changed)")))
        }
        (Ok(Applied::WouldChange(m)), Some(why)) => {
            Ok(Applied::WouldChange(format!("{m} ({why} changed)")))
        }
        (other, _) => other,
    }
}

/// Indices in an order where every resource follows its dependencies, keeping bundle
/// order among independent ones; and the indices that cannot be ordered.
fn dependency_order(resources: &[&pb::Resource]) -> (Vec<usize>, Vec<usize>) {
    let index: HashMap<&str, usize> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let mut waiting_on = vec![0usize; resources.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); resources.len()];
    let mut unresolvable = vec![false; resources.len()];
    for (i, r) in resources.iter().enumerate() {
        for d in r.depends_on.iter().chain(&r.subscribes) {
            match index.get(d.as_str()) {
                Some(&j) => {
                    waiting_on[i] += 1;
                    dependents[j].push(i);
                }
                None => unresolvable[i] = true,
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..resources.len())
        .filter(|&i| waiting_on[i] == 0 && !unresolvable[i])
        .collect();
    let mut order = Vec::with_capacity(resources.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &j in &dependents[i] {
            waiting_on[j] -= 1;
            if waiting_on[j] == 0 && !unresolvable[j] {
                ready.push_back(j);
            }
        }
    }
    let placed: std::collections::HashSet<usize> = order.iter().copied().collect();
    let left = (0..resources.len())
        .filter(|i| !placed.contains(i))
        .collect();
    (order, left)
}

/// Counts by outcome, for exit codes and summaries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub ok: usize,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub would_change: usize,
}

pub fn tally(results: &[ResourceResult]) -> Tally {
    let mut t = Tally::default();
    for r in results {
        match r.outcome {
            pb::Outcome::Ok => t.ok += 1,
            pb::Outcome::Changed => t.changed += 1,
            pb::Outcome::Failed => t.failed += 1,
            pb::Outcome::Skipped => t.skipped += 1,
            pb::Outcome::WouldChange => t.would_change += 1,
            pb::Outcome::Unspecified => {}
        }
    }
    t
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
