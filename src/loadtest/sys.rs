//! The two things the load generator asks of the operating system: enough file descriptors
//! for thousands of sockets, and its own CPU time (so users see what the tool costs).

/// Raises the soft open-file limit to the hard limit (each connection is one descriptor, and
/// the usual soft default of 1024 stops a run long before the hard limit would). Returns the
/// soft limit now in force.
#[cfg(unix)]
// `rlim_t` is u64 on Linux but not on every unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we hand it, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(limit.rlim_cur as u64);
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we hand it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        // An "unlimited" hard limit is refused on some systems; the old soft limit stays.
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_max as u64)
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    Err(std::io::Error::other("not supported on this platform"))
}

/// User plus system CPU seconds this process has used so far, all threads together.
#[cfg(unix)]
pub fn process_cpu_secs() -> Option<f64> {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we hand it, which lives for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

#[cfg(not(unix))]
pub fn process_cpu_secs() -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = process_cpu_secs().expect("getrusage");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_cpu_secs().expect("getrusage");
        assert!(after > before, "{before} -> {after}");
    }

    #[test]
    fn open_file_limit_is_reported() {
        assert!(raise_open_file_limit().expect("rlimit") >= 64);
    }
}
