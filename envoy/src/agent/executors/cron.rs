//! `cron` resources: one job per file under /etc/cron.d, which the policy owns whole.
//! The file is written by the `file` executor (root-owned, 0644, atomically replaced),
//! so cron never reads half a file; every field is checked to be one line, so a value
//! cannot add a second job.

use vigo_common::policy::checks;
use vigo_proto::v1 as pb;

use super::remove::{Removes, apply_absent};
use super::{Failure, Outcome, apply_file};

/// Where cron reads system jobs.
pub const CRON_DIR: &str = "/etc/cron.d";

/// Applies a cron entry; `command` is the rendered command, `resource` the resource id
/// written in the file's header.
pub fn apply_cron(spec: &pb::CronSpec, command: &str, resource: &str, dry_run: bool) -> Outcome {
    apply_cron_in(CRON_DIR, spec, command, resource, dry_run)
}

pub(super) fn apply_cron_in(
    dir: &str,
    spec: &pb::CronSpec,
    command: &str,
    resource: &str,
    dry_run: bool,
) -> Outcome {
    checks::cron_name(&spec.name)?;
    let path = format!("{dir}/{}", spec.name);
    if spec.absent {
        return apply_absent(&path, Removes::File, false, dry_run);
    }
    let content = render(spec, command, resource)?;
    let file = pb::FileSpec {
        path,
        mode: 0o644,
        owner: "root".into(),
        group: "root".into(),
        ..Default::default()
    };
    apply_file(&file, &content, dry_run)
}

fn render(spec: &pb::CronSpec, command: &str, resource: &str) -> Result<String, Failure> {
    checks::cron_schedule(&spec.schedule)?;
    checks::account_name(&spec.user)?;
    checks::one_line(command, "command")?;
    let mut out = format!(
        "# Managed by Vigo Spanner (resource {resource}): changes made here are overwritten.\n"
    );
    for (k, v) in &spec.environment {
        checks::env_name(k)?;
        checks::one_line(v, &format!("environment {k}"))?;
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push_str(&format!("{} {} {command}\n", spec.schedule, spec.user));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::executors::Applied;

    #[test]
    fn one_file_per_job_and_nothing_smuggled() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_string_lossy().into_owned();
        let spec = pb::CronSpec {
            name: "backup".into(),
            schedule: "15 3 * * *".into(),
            user: "root".into(),
            environment: [("MAILTO".to_string(), "ops@example.com".to_string())].into(),
            ..Default::default()
        };
        let r = apply_cron_in(&base, &spec, "/usr/local/bin/backup", "db/backup", false);
        assert_eq!(r, Ok(Applied::Changed("created".into())));
        let text = std::fs::read_to_string(format!("{base}/backup")).unwrap();
        assert_eq!(
            text,
            "# Managed by Vigo Spanner (resource db/backup): changes made here are overwritten.\n\
             MAILTO=ops@example.com\n15 3 * * * root /usr/local/bin/backup\n"
        );
        assert_eq!(
            apply_cron_in(&base, &spec, "/usr/local/bin/backup", "db/backup", false),
            Ok(Applied::InPolicy)
        );
        // A rendered command holding a line break would add a job: refused, file kept.
        let err = apply_cron_in(
            &base,
            &spec,
            "true\n* * * * * root evil",
            "db/backup",
            false,
        )
        .unwrap_err();
        assert!(err.contains("one non-empty line"), "{err}");
        assert_eq!(
            std::fs::read_to_string(format!("{base}/backup")).unwrap(),
            text
        );
        let gone = pb::CronSpec {
            absent: true,
            ..spec.clone()
        };
        assert!(matches!(
            apply_cron_in(&base, &gone, "", "db/backup", false),
            Ok(Applied::Changed(_))
        ));
        assert!(!std::path::Path::new(&format!("{base}/backup")).exists());
    }
}
