//! Applying a bundle: resources in dependency order, templates rendered with this
//! machine's facts, each resource through its executor; a failed resource skips
//! everything that depends on it, directly or not, and nothing else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use vigo_common::templates::Renderer;
use vigo_common::traits::TraitMap;
use vigo_proto::v1 as pb;

use super::executors::{
    Applied, DEFAULT_TIMEOUT, ExecPlan, Outcome, apply_directory, apply_exec, apply_file,
    apply_file_line, apply_symlink,
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

/// The facts templates see.
pub struct Facts<'a> {
    pub hostname: &'a str,
    pub traits: &'a TraitMap,
}

/// Applies every resource of `modules` and returns their outcomes in application order.
pub fn apply(
    modules: &[pb::Module],
    variables: &BTreeMap<String, String>,
    facts: &Facts<'_>,
    dry_run: bool,
) -> Vec<ResourceResult> {
    let renderer = Renderer::new(facts.hostname, facts.traits, variables);
    let resources: Vec<&pb::Resource> = modules.iter().flat_map(|m| &m.resources).collect();
    let (order, unordered) = dependency_order(&resources);
    let mut results: Vec<ResourceResult> = Vec::with_capacity(resources.len());
    let mut broken: HashMap<&str, &str> = HashMap::new();
    for i in order {
        let r = resources[i];
        let started = Instant::now();
        let blocked = r
            .depends_on
            .iter()
            .find_map(|d| broken.get(d.as_str()).map(|why| (d.as_str(), *why)));
        let result = match blocked {
            Some((dep, why)) => {
                broken.insert(&r.id, "skipped");
                ResourceResult {
                    id: r.id.clone(),
                    outcome: pb::Outcome::Skipped,
                    message: format!("dependency {dep} {why}"),
                    duration: started.elapsed(),
                }
            }
            None => {
                let outcome = apply_one(r, &renderer, dry_run);
                let (outcome, message) = match outcome {
                    Ok(Applied::InPolicy) => (pb::Outcome::Ok, String::new()),
                    Ok(Applied::Changed(m)) => (pb::Outcome::Changed, m),
                    Ok(Applied::WouldChange(m)) => (pb::Outcome::WouldChange, m),
                    Err(m) => {
                        broken.insert(&r.id, "failed");
                        (pb::Outcome::Failed, m)
                    }
                };
                ResourceResult {
                    id: r.id.clone(),
                    outcome,
                    message,
                    duration: started.elapsed(),
                }
            }
        };
        results.push(result);
    }
    // Resources left out of the order sit on a cycle or depend on something missing;
    // publishing refuses both, so this only guards against a damaged bundle.
    for i in unordered {
        results.push(ResourceResult {
            id: resources[i].id.clone(),
            outcome: pb::Outcome::Failed,
            message: "unresolvable dependencies (cycle or unknown resource)".into(),
            duration: Duration::ZERO,
        });
    }
    results
}

fn apply_one(r: &pb::Resource, renderer: &Renderer, dry_run: bool) -> Outcome {
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
        Some(Spec::Exec(e)) => {
            let (command, creates) = (renderer.render(&e.command)?, renderer.render(&e.creates)?);
            let (unless, onlyif) = (renderer.render(&e.unless)?, renderer.render(&e.onlyif)?);
            let timeout = if e.timeout_ms == 0 {
                DEFAULT_TIMEOUT
            } else {
                Duration::from_millis(e.timeout_ms.into())
            };
            apply_exec(
                &ExecPlan {
                    command: &command,
                    creates: &creates,
                    unless: &unless,
                    onlyif: &onlyif,
                    timeout,
                    environment: &e.environment,
                },
                dry_run,
            )
        }
        None => Err(format!(
            "unsupported resource type {:?} (this envoy knows file, directory, symlink, file_line, exec)",
            r.r#type
        )),
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
        for d in &r.depends_on {
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
mod tests {
    use super::*;

    fn exec(id: &str, command: &str, deps: &[&str]) -> pb::Resource {
        pb::Resource {
            id: id.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            r#type: "exec".into(),
            spec: Some(pb::resource::Spec::Exec(pb::ExecSpec {
                command: command.into(),
                ..Default::default()
            })),
        }
    }

    fn run(resources: Vec<pb::Resource>) -> Vec<(String, pb::Outcome)> {
        let module = pb::Module {
            name: "m".into(),
            resources,
        };
        let traits = TraitMap::new();
        let facts = Facts {
            hostname: "h",
            traits: &traits,
        };
        apply(&[module], &BTreeMap::new(), &facts, false)
            .into_iter()
            .map(|r| (r.id, r.outcome))
            .collect()
    }

    #[test]
    fn a_failure_skips_exactly_its_dependents() {
        use pb::Outcome::*;
        let got = run(vec![
            exec("m/c", "true", &["m/b"]),
            exec("m/a", "false", &[]),
            exec("m/b", "true", &["m/a"]),
            exec("m/d", "true", &[]),
            exec("m/e", "true", &["m/d"]),
        ]);
        assert_eq!(
            got,
            [
                ("m/a".to_string(), Failed),
                ("m/d".to_string(), Changed),
                ("m/b".to_string(), Skipped),
                ("m/e".to_string(), Changed),
                ("m/c".to_string(), Skipped),
            ]
        );
    }

    #[test]
    fn unknown_types_and_broken_graphs_fail_by_name() {
        let unknown = pb::Resource {
            id: "m/pkg".into(),
            r#type: "package".into(),
            ..Default::default()
        };
        let got = run(vec![
            unknown,
            exec("m/x", "true", &["m/y"]),
            exec("m/y", "true", &["m/x"]),
            exec("m/z", "true", &["m/ghost"]),
        ]);
        assert_eq!(got[0], ("m/pkg".to_string(), pb::Outcome::Failed));
        assert!(got[1..].iter().all(|(_, o)| *o == pb::Outcome::Failed));
        let module = pb::Module {
            name: "m".into(),
            resources: vec![pb::Resource {
                id: "m/pkg".into(),
                r#type: "package".into(),
                ..Default::default()
            }],
        };
        let traits = TraitMap::new();
        let r = apply(
            &[module],
            &BTreeMap::new(),
            &Facts {
                hostname: "h",
                traits: &traits,
            },
            false,
        );
        assert!(r[0].message.contains("\"package\""), "{}", r[0].message);
    }
}
