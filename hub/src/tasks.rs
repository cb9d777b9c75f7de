//! Tasks as the admin API and the envoys see them (DESIGN §10): a `RunTaskRequest`
//! checked into the replicated `TaskSpec`, a `TaskRecord` shown as `TaskInfo`, and the
//! signed per-envoy copy (`SignedTask`) the leader sends through the spokes.
//!
//! What the hub refuses here, the envoy would refuse too, later and once per envoy:
//! an empty argv, a copy too large to sign, a collector of no known kind.

use ed25519_dalek::SigningKey;
use prost::Message;
use vigo_common::signing::{self, Domain};
use vigo_proto::admin::v1 as api;
use vigo_proto::v1 as pb;

use crate::error::HubError;
use crate::state::tasks::{Portion, TaskAction, TaskSpec};
use crate::state::{RequestTag, TaskId, TaskRecord, TaskState};

/// An envoy has this long from its release to its result unless the task says.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
/// The longest a task may give an envoy (an envoy refuses a longer window).
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// The largest definition signed into a copy: the envoy reads at most 64 KiB.
const MAX_DEFINITION: usize = 48 << 10;
/// Collectors one query may ask (the envoy's own bound).
const MAX_COLLECTORS: usize = 64;
const COLLECTOR_KINDS: [&str; 5] = ["package:", "service:", "file:", "trait:", "query:"];

/// "50" or "10%"; empty: none.
pub fn parse_portion(field: &'static str, text: &str) -> Result<Option<Portion>, HubError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || HubError::malformed(field, format!("{text:?}: a count (50) or a share (10%)"));
    if let Some(share) = text.strip_suffix('%') {
        return match share.trim().parse::<u8>() {
            Ok(p @ 1..=100) => Ok(Some(Portion::Percent(p))),
            _ => Err(bad()),
        };
    }
    match text.parse::<u32>() {
        Ok(n @ 1..) => Ok(Some(Portion::Count(n))),
        _ => Err(bad()),
    }
}

fn portion_text(p: Option<Portion>) -> String {
    match p {
        None => String::new(),
        Some(Portion::Count(n)) => n.to_string(),
        Some(Portion::Percent(p)) => format!("{p}%"),
    }
}

/// The action a request asks for, checked.
fn action_of(req: &api::RunTaskRequest) -> Result<TaskAction, HubError> {
    let action = match req.kind.as_str() {
        "exec" => {
            if req.argv.is_empty() || req.argv[0].is_empty() {
                return Err(HubError::malformed("argv", "exec needs a program to run"));
            }
            if req.argv.iter().any(|a| a.contains('\0')) {
                return Err(HubError::malformed("argv", "contains a NUL byte"));
            }
            TaskAction::Exec {
                argv: req.argv.clone(),
                shell: req.shell,
            }
        }
        "apply" => {
            let name = req.configcrate.trim();
            if name.is_empty() || name.len() > 255 {
                return Err(HubError::malformed(
                    "configcrate",
                    "apply names a configcrate",
                ));
            }
            TaskAction::Apply {
                configcrate: name.to_string(),
            }
        }
        "refresh_traits" => TaskAction::RefreshTraits,
        "query" => {
            if req.collectors.is_empty() || req.collectors.len() > MAX_COLLECTORS {
                return Err(HubError::malformed(
                    "collectors",
                    format!("a query asks 1 to {MAX_COLLECTORS} collectors"),
                ));
            }
            for c in &req.collectors {
                let known = COLLECTOR_KINDS
                    .iter()
                    .any(|k| c.strip_prefix(k).is_some_and(|rest| !rest.is_empty()));
                if !known {
                    return Err(HubError::malformed(
                        "collectors",
                        format!(
                            "{c:?}: package:NAME, service:NAME, file:PATH, trait:KEY or query:NAME"
                        ),
                    ));
                }
            }
            TaskAction::Query {
                collectors: req.collectors.clone(),
            }
        }
        other => {
            return Err(HubError::malformed(
                "kind",
                format!("{other:?}: exec, apply, refresh_traits or query"),
            ));
        }
    };
    Ok(action)
}

/// Checks a request into the spec the cluster records.
pub fn spec_of(req: &api::RunTaskRequest, selector: String) -> Result<TaskSpec, HubError> {
    let action = action_of(req)?;
    let timeout_ms = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT_MS,
        ms if ms > MAX_TIMEOUT_MS => {
            return Err(HubError::malformed(
                "timeout_ms",
                format!("{ms}: at most {MAX_TIMEOUT_MS} (24 h)"),
            ));
        }
        ms => ms,
    };
    let spec = TaskSpec {
        action,
        selector,
        batch: parse_portion("batch", &req.batch)?,
        canary: (req.canary > 0).then_some(req.canary),
        max_failures: parse_portion("max_failures", &req.max_failures)?,
        timeout_ms,
    };
    let size = body(&spec.action, &[0; 16], u64::MAX, 0, 0, 0).encoded_len();
    if size > MAX_DEFINITION {
        return Err(HubError::TooLarge {
            what: "task definition",
            size,
            limit: MAX_DEFINITION,
        });
    }
    Ok(spec)
}

/// A task's id: derived from the request id, so a retried request names the task its
/// first attempt created.
pub fn task_id(tag: &RequestTag) -> TaskId {
    let digest = vigo_common::traits::sha256(format!("{}\0{}", tag.request, tag.by).as_bytes());
    digest[..16].try_into().expect("16 of 32 bytes")
}

pub fn parse_task_id(text: &str) -> Result<TaskId, HubError> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| TaskId::try_from(b.as_slice()).ok())
        .ok_or_else(|| HubError::malformed("task_id", format!("{text:?}: 32 hex digits")))
}

/// One envoy's copy of a task, before signing.
pub fn body(
    action: &TaskAction,
    id: &TaskId,
    envoy_id: u64,
    issued_ms: u64,
    not_after_ms: u64,
    timeout_ms: u64,
) -> pb::TaskBody {
    use pb::task_body::Action;
    let action = match action {
        TaskAction::Exec { argv, shell } => Action::Exec(pb::ExecAction {
            argv: argv.clone(),
            shell: *shell,
        }),
        TaskAction::Apply { configcrate } => Action::Apply(pb::ApplyAction {
            configcrate: configcrate.clone(),
        }),
        TaskAction::RefreshTraits => Action::RefreshTraits(pb::RefreshTraitsAction {}),
        TaskAction::Query { collectors } => Action::Query(pb::QueryAction {
            collectors: collectors.clone(),
        }),
    };
    pb::TaskBody {
        task_id: bytes::Bytes::copy_from_slice(id),
        envoy_id,
        issued_ms,
        not_after_ms,
        timeout_ms: timeout_ms.min(u64::from(u32::MAX)) as u32,
        action: Some(action),
    }
}

/// Signs a copy under the task domain with the cluster's bundle-signing key.
pub fn sign(key: &SigningKey, body: &pb::TaskBody) -> pb::SignedTask {
    let body = bytes::Bytes::from(body.encode_to_vec());
    let signature = signing::sign(key, Domain::Task, &body);
    pb::SignedTask {
        body,
        signature: bytes::Bytes::copy_from_slice(&signature.to_bytes()),
    }
}

/// What runs, as an operator reads it.
pub fn definition(action: &TaskAction) -> String {
    match action {
        TaskAction::Exec { argv, shell: true } => format!("sh -c {:?}", argv.join(" ")),
        TaskAction::Exec { argv, .. } => argv
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        TaskAction::Apply { configcrate } => format!("apply {configcrate}"),
        TaskAction::RefreshTraits => "refresh traits".into(),
        TaskAction::Query { collectors } => collectors.join(" "),
    }
}

/// The batches dispatch goes through when nothing fails: the canary, then windows.
pub fn batches(spec: &TaskSpec, total: u32) -> Vec<u64> {
    let mut out = Vec::new();
    let mut left = total;
    if let Some(canary) = spec.canary {
        let first = canary.clamp(1, total.max(1)).min(left);
        out.push(u64::from(first));
        left -= first;
    }
    let window = spec.batch.map_or(left, |b| b.of(total).max(1));
    while left > 0 && window > 0 {
        let next = window.min(left);
        out.push(u64::from(next));
        left -= next;
    }
    out
}

pub fn info(t: &TaskRecord) -> api::TaskInfo {
    let total = t.total();
    let ended = u64::from(total.ended());
    let cancelled_by = match &t.state {
        TaskState::Cancelled { by } => by.clone(),
        _ => String::new(),
    };
    api::TaskInfo {
        task_id: hex::encode(t.id),
        kind: t.spec.action.kind().into(),
        definition: definition(&t.spec.action),
        selector: t.spec.selector.clone(),
        requested_by: t.requested_by.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        state: t.state.as_str().into(),
        cancelled_by,
        ended_ms: t.ended_ms,
        counts: Some(api::TaskCounts {
            targets: t.targets.len() as u64,
            released: u64::from(t.released),
            ok: total.ok.into(),
            failed: total.failed.into(),
            timed_out: total.timed_out.into(),
            refused: total.refused.into(),
            unreachable: total.unreachable.into(),
            running: u64::from(t.released).saturating_sub(ended),
        }),
        timeout_ms: t.spec.timeout_ms,
        batch: portion_text(t.spec.batch),
        canary: t.spec.canary.unwrap_or(0),
        max_failures: portion_text(t.spec.max_failures),
        plan: t
            .per_spoke()
            .iter()
            .map(|(spoke, envoys)| api::SpokePlan {
                spoke: spoke.clone(),
                envoys: *envoys,
                streaming: 0,
            })
            .collect(),
        batches: Vec::new(),
        missing: Vec::new(),
        written_off: t.written_off.iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str) -> api::RunTaskRequest {
        api::RunTaskRequest {
            kind: kind.into(),
            all: true,
            ..Default::default()
        }
    }

    #[test]
    fn portions_are_counts_or_shares() {
        assert_eq!(parse_portion("batch", "").unwrap(), None);
        assert_eq!(
            parse_portion("batch", "50").unwrap(),
            Some(Portion::Count(50))
        );
        assert_eq!(
            parse_portion("batch", "10%").unwrap(),
            Some(Portion::Percent(10))
        );
        for bad in ["0", "0%", "101%", "-3", "ten", "5%%"] {
            assert!(parse_portion("batch", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_request_is_checked_before_anything_is_recorded() {
        assert!(spec_of(&request("exec"), "all".into()).is_err(), "no argv");
        assert!(spec_of(&request("reboot"), "all".into()).is_err());
        let mut q = request("query");
        q.collectors = vec!["package:openssl".into(), "cat /etc/shadow".into()];
        assert!(spec_of(&q, "all".into()).is_err(), "never a shell line");
        let mut big = request("exec");
        big.argv = vec!["echo".into(), "x".repeat(60 << 10)];
        assert!(matches!(
            spec_of(&big, "all".into()),
            Err(HubError::TooLarge { .. })
        ));
        let mut long = request("refresh_traits");
        long.timeout_ms = MAX_TIMEOUT_MS + 1;
        assert!(spec_of(&long, "all".into()).is_err());
        let ok = spec_of(&request("refresh_traits"), "all".into()).unwrap();
        assert_eq!(ok.timeout_ms, DEFAULT_TIMEOUT_MS);
    }

    #[test]
    fn batches_follow_the_canary_and_the_window() {
        let spec = |batch, canary| TaskSpec {
            action: TaskAction::RefreshTraits,
            selector: String::new(),
            batch,
            canary,
            max_failures: None,
            timeout_ms: 1,
        };
        assert_eq!(batches(&spec(None, None), 7), vec![7]);
        assert_eq!(
            batches(&spec(Some(Portion::Percent(25)), Some(1)), 10),
            vec![1, 3, 3, 3]
        );
        assert_eq!(
            batches(&spec(Some(Portion::Count(4)), None), 10),
            vec![4, 4, 2]
        );
    }

    #[test]
    fn a_retried_request_names_the_same_task() {
        let tag = |r: &str| RequestTag {
            request: r.into(),
            by: "ops".into(),
            digest: [0; 32],
        };
        assert_eq!(task_id(&tag("a")), task_id(&tag("a")));
        assert_ne!(task_id(&tag("a")), task_id(&tag("b")));
        let id = task_id(&tag("a"));
        assert_eq!(parse_task_id(&hex::encode(id)).unwrap(), id);
        assert!(parse_task_id("abc").is_err());
    }
}
