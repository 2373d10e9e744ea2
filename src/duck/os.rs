//! The process as the listeners need it: how many descriptors it may open (raised toward the hard limit when a
//! listener needs more), how many are open now, and how much memory is resident.

/// The soft and hard limits on open descriptors (RLIMIT_NOFILE).
pub fn descriptor_limits() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft descriptor limit to `wanted` (at most the hard limit); returns the soft limit in force.
pub fn raise_descriptor_limit(wanted: u64) -> Option<u64> {
    let (soft, hard) = descriptor_limits()?;
    if wanted <= soft {
        return Some(soft);
    }
    let lim = libc::rlimit { rlim_cur: wanted.min(hard) as libc::rlim_t, rlim_max: hard as libc::rlim_t };
    // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the hard one needs no privilege.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc == 0 { Some(wanted.min(hard)) } else { Some(soft) }
}

/// Descriptors the process has open now.
pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Bytes of the process resident in memory now (`/proc/self/statm`), `None` where the system does not say.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
