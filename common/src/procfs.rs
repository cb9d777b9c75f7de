//! Process facts from /proc: CPU time and memory (how benchmarks measure a server),
//! and the open-file limit.

/// utime + stime of every thread of `pid`, in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / clock_ticks())
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Raises this process's open-file limit to its hard limit: one connection per envoy
/// needs thousands of descriptors.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain syscalls on a stack value.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// The glibc allocator's figures (`mallinfo2`): bytes in use, and bytes it holds from
/// the OS (heap arenas plus mmapped blocks). Free memory inside the arenas may or may
/// not be resident; the difference bounds what fragmentation costs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn glibc_heap() -> Option<crate::telemetry::HeapStats> {
    // SAFETY: mallinfo2 only reads allocator statistics.
    let info = unsafe { libc::mallinfo2() };
    Some(crate::telemetry::HeapStats {
        allocated: (info.uordblks + info.hblkhd) as u64,
        held: (info.arena + info.hblkhd) as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn glibc_heap() -> Option<crate::telemetry::HeapStats> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(super::cpu_micros(pid).is_some());
        assert!(super::rss_kib(pid).unwrap() > 0);
    }
}
