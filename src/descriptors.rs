//! The process's file descriptor limit, raised at start. Every HTTP
//! connection holds a descriptor (QUIC's share one socket), and so do the
//! journal's segment, its directory and its prepared spare, and each
//! snapshot file while it is written. A daemon that runs out cannot make
//! its next snapshot or spare, and stops; so it takes all the kernel
//! allows it, and caps connections below that.

use crate::http::HttpLimits;

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

/// Descriptors kept for the daemon itself whatever its clients hold: the
/// journal (segment, directory, spare, a retiring segment), a snapshot's
/// files (one per router's book at once, plus the image being written),
/// the QUIC socket, the listeners, the runtime's epoll and wakers, stdio,
/// the lock and the TLS files. 256 covers them with room; the book
/// writer's share grows with the routers, added on top.
pub const DESCRIPTORS_RESERVED: u64 = 256;

/// Lowers the connection caps of the HTTP ports (the gateway, the admin
/// port) if their connections and the refusals they answer at once would
/// not fit in `limit` descriptors beside [`DESCRIPTORS_RESERVED`] and one
/// per router: then no client can take the descriptor the next snapshot
/// or journal segment needs. Each is lowered in proportion, to at least 1.
/// Returns whether any was lowered.
pub fn fit_connection_caps(limit: u64, routers: u32, ports: &mut [&mut HttpLimits]) -> bool {
    let room = limit.saturating_sub(DESCRIPTORS_RESERVED + u64::from(routers));
    let need: u64 = ports
        .iter()
        .map(|p| (p.max_connections + p.max_refusals_in_flight) as u64)
        .sum();
    if need <= room {
        return false;
    }
    let scaled = |n: usize| ((n as u64 * room / need.max(1)) as usize).max(1);
    for port in ports.iter_mut() {
        port.max_connections = scaled(port.max_connections);
        port.max_refusals_in_flight = scaled(port.max_refusals_in_flight);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::HttpLimits;

    #[test]
    fn caps_that_fit_are_kept_and_others_lowered_below_the_limit() {
        // Proves the caps are lowered only when they, the refusals and the reserve pass the limit.
        let (mut http, mut admin) = (HttpLimits::default(), HttpLimits::default());
        admin.max_connections = 64;
        assert!(!super::fit_connection_caps(
            1 << 20,
            4,
            &mut [&mut http, &mut admin]
        ));
        assert_eq!(http, HttpLimits::default());
        assert!(super::fit_connection_caps(
            1024,
            4,
            &mut [&mut http, &mut admin]
        ));
        let held = http.max_connections
            + http.max_refusals_in_flight
            + admin.max_connections
            + admin.max_refusals_in_flight;
        assert!(
            held as u64 + super::DESCRIPTORS_RESERVED + 4 <= 1024,
            "{held}"
        );
        assert!(admin.max_connections >= 1 && http.max_connections > admin.max_connections);
    }

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
