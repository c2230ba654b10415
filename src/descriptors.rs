//! The process's file descriptor limit, raised at start. Every HTTP
//! connection holds a descriptor (QUIC's share one socket), and so do the
//! journal's segment, its directory and its prepared spare, and each
//! snapshot file while it is written. A daemon that runs out cannot make
//! its next snapshot or spare, and stops; so it takes all the kernel
//! allows it, and caps connections below that.

/// Raises the soft limit on open descriptors to the hard one; returns the
/// limit in force afterwards (`None` where it cannot be read).
pub fn raise_to_hard_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the rlimit we pass,
    // which lives on this stack frame for the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_is_the_hard_one_after_raising() {
        // Proves the raise leaves the soft limit at the hard one.
        let raised = super::raise_to_hard_limit().expect("readable");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the rlimit on this stack frame.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(raised, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
