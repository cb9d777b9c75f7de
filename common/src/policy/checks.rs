//! Checks on the names and values that reach a package manager, systemctl, the account
//! tools or a cron file. Publishing refuses what fails them, and the envoy checks again
//! before it runs anything: a name that starts with `-` would be read as an option, a
//! newline in a cron field or a `:` in a home directory would write a second entry.

/// A package name as dpkg and rpm allow it.
pub fn package_name(name: &str) -> Result<(), String> {
    word(name, "package name", 128, |c| {
        c.is_ascii_alphanumeric() || "+._-".contains(c)
    })
}

/// A package version (`1.22.1-9`, `2:1.0~rc1+deb12u1`).
pub fn package_version(version: &str) -> Result<(), String> {
    word(version, "package version", 128, |c| {
        c.is_ascii_alphanumeric() || "+.~:_-".contains(c)
    })
}

/// A systemd unit name (`nginx`, `getty@tty1.service`).
pub fn unit_name(name: &str) -> Result<(), String> {
    word(name, "unit name", 200, |c| {
        c.is_ascii_alphanumeric() || ":_.@-\\".contains(c)
    })
}

/// A user or group name as useradd accepts it by default.
pub fn account_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok {
        return Err(format!(
            "account name {name:?} must start with a lowercase letter or '_'"
        ));
    }
    word(name, "account name", 32, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c)
    })
}

/// A shell or home directory for /etc/passwd: absolute, no `:` and no control bytes.
pub fn passwd_path(path: &str, what: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains(':') || path.chars().any(char::is_control) {
        return Err(format!(
            "{what} {path:?} must be an absolute path without ':' or control characters"
        ));
    }
    Ok(())
}

/// A file name under /etc/cron.d: cron ignores names with other characters (dots too).
pub fn cron_name(name: &str) -> Result<(), String> {
    word(name, "cron file name", 64, |c| {
        c.is_ascii_alphanumeric() || "_-".contains(c)
    })
}

/// A cron schedule: five fields or an @-word.
pub fn cron_schedule(schedule: &str) -> Result<(), String> {
    const WORDS: [&str; 8] = [
        "@reboot",
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if schedule.starts_with('@') {
        return if WORDS.contains(&schedule) {
            Ok(())
        } else {
            Err(format!(
                "schedule {schedule:?}: an @-schedule is one of {}",
                WORDS.join(", ")
            ))
        };
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let field_ok = |f: &&str| {
        f.chars()
            .all(|c| c.is_ascii_alphanumeric() || "*/,-".contains(c))
    };
    if fields.len() != 5 || !fields.iter().all(field_ok) {
        return Err(format!(
            "schedule {schedule:?} must be five fields (minute hour day month weekday) or an @-word"
        ));
    }
    Ok(())
}

/// One line of a generated file: no line breaks or other control characters.
pub fn one_line(value: &str, what: &str) -> Result<(), String> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be one non-empty line without control characters"
        ));
    }
    Ok(())
}

/// An environment variable name in a cron file.
pub fn env_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "environment name {name:?} must be letters, digits and '_'"
        ));
    }
    Ok(())
}

/// A path a resource may remove with everything under it: absolute, normal components
/// only, at least two deep (never `/`, `/etc` or `/home` whole).
pub fn removable_tree(path: &str) -> Result<(), String> {
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let normal = path.starts_with('/')
        && !parts.is_empty()
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..");
    if !normal || parts.len() < 2 {
        return Err(format!(
            "{path:?}: a recursive removal needs an absolute path at least two directories deep, without '.', '..' or '//'"
        ));
    }
    Ok(())
}

fn word(value: &str, what: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("{what} must be 1 to {max} characters"));
    }
    if value.starts_with('-') {
        return Err(format!("{what} {value:?} may not start with '-'"));
    }
    if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        return Err(format!("{what} {value:?} may not contain {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_line_breaks_are_refused() {
        assert!(package_name("nginx").is_ok());
        assert!(package_name("libc6-dev").is_ok());
        assert!(package_name("--force-all").is_err());
        assert!(package_name("a b").is_err());
        assert!(package_version("1:2.3~rc1+deb12u1-4").is_ok());
        assert!(package_version("1.0;rm").is_err());
        assert!(unit_name("getty@tty1.service").is_ok());
        assert!(unit_name("-H").is_err());
        assert!(account_name("deploy").is_ok());
        assert!(account_name("Root").is_err());
        assert!(account_name("a:b").is_err());
        assert!(passwd_path("/home/x:0:0", "home").is_err());
        assert!(cron_name("backup").is_ok());
        assert!(cron_name("backup.sh").is_err());
        assert!(cron_schedule("*/5 * * * 1-5").is_ok());
        assert!(cron_schedule("@daily").is_ok());
        assert!(cron_schedule("* * *").is_err());
        assert!(cron_schedule("* * * * * root").is_err());
        assert!(one_line("echo a\n* * * * * root evil", "command").is_err());
        assert!(env_name("PATH").is_ok());
        assert!(env_name("A=B").is_err());
        assert!(removable_tree("/srv/app").is_ok());
        for bad in [
            "/",
            "/etc",
            "/srv/../etc",
            "srv/app",
            "/srv//app",
            "/srv/app/.",
        ] {
            assert!(removable_tree(bad).is_err(), "{bad}");
        }
    }
}
