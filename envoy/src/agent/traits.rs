//! Facts about this machine, sent to the spoke when they change.
//!
//! Uptime is reported as `boot_time` (Unix seconds): it says the same and stays put, so
//! the traits hash — and with it the check-in — does not change every second.

use std::net::IpAddr;

use vigo_common::traits::TraitMap;

/// Collects the traits; `hostname` overrides the machine's own name.
pub fn collect(hostname: &str) -> TraitMap {
    let mut t = TraitMap::new();
    t.insert("hostname".into(), hostname.to_string());
    let os = os_release();
    t.insert("os".into(), os.0);
    t.insert("os_version".into(), os.1);
    t.insert("kernel".into(), read_trimmed("/proc/sys/kernel/osrelease"));
    t.insert("arch".into(), std::env::consts::ARCH.into());
    t.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    t.insert("memory_mb".into(), memory_mb().unwrap_or_default());
    let (v4, v6) = addresses();
    t.insert("ipv4".into(), v4.join(","));
    t.insert("ipv6".into(), v6.join(","));
    t.insert("boot_time".into(), boot_time().unwrap_or_default());
    t
}

/// The machine's own host name.
pub fn machine_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| read_trimmed("/proc/sys/kernel/hostname"))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// (ID, VERSION_ID) from /etc/os-release.
fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (field("ID"), field("VERSION_ID"))
}

fn memory_mb() -> Option<String> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((kib / 1024).to_string())
}

fn boot_time() -> Option<String> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .to_string(),
    )
}

/// Non-loopback addresses, sorted so the hash does not depend on interface order.
fn addresses() -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            let ip: Option<IpAddr> = if let Some(sin) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(sin.ip()))
            } else {
                addr.as_sockaddr_in6().map(|sin6| IpAddr::V6(sin6.ip()))
            };
            match ip {
                Some(IpAddr::V4(ip)) if !ip.is_loopback() => v4.push(ip.to_string()),
                Some(IpAddr::V6(ip)) if !ip.is_loopback() => v6.push(ip.to_string()),
                _ => {}
            }
        }
    }
    v4.sort();
    v4.dedup();
    v6.sort();
    v6.dedup();
    (v4, v6)
}

#[cfg(test)]
mod tests {
    #[test]
    fn traits_are_collected_and_stable() {
        let a = super::collect("h");
        for key in [
            "hostname",
            "os",
            "kernel",
            "arch",
            "cpus",
            "memory_mb",
            "boot_time",
        ] {
            assert!(!a[key].is_empty(), "{key} is empty");
        }
        assert_eq!(a, super::collect("h"), "nothing volatile in the traits");
        let known: Vec<&str> = vigo_common::traits::KNOWN_TRAITS
            .iter()
            .map(|(name, _)| *name)
            .collect();
        let mut reported: Vec<&str> = a.keys().map(String::as_str).collect();
        let mut expected = known.clone();
        reported.sort();
        expected.sort();
        assert_eq!(
            reported, expected,
            "conditions know exactly the traits reported"
        );
    }
}
