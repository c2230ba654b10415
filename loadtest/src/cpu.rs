//! CPU time of a process from /proc, to put each side's cost per order
//! next to its latency.

/// `/proc` counts CPU time in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds of every thread of `pid` so far; None when
/// the process is gone or /proc is not there.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line are the 12th and 13th after the name.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / USER_HZ)
}

/// CPU seconds of the server (if its pid is known) and of this process.
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuSample {
    server: Option<f64>,
    generator: Option<f64>,
}

impl CpuSample {
    pub(crate) fn now(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            server: server_pid.and_then(cpu_seconds),
            generator: cpu_seconds(std::process::id()),
        }
    }

    /// Per answered request, in µs, since `before`: (server, generator);
    /// and the server's cores busy over `seconds`.
    pub(crate) fn since(
        &self,
        before: &CpuSample,
        requests: u64,
        seconds: f64,
    ) -> (Option<f64>, Option<f64>, Option<f64>) {
        let per_order = |after: Option<f64>, before: Option<f64>| match (after, before) {
            (Some(a), Some(b)) if requests > 0 => Some((a - b) * 1e6 / requests as f64),
            _ => None,
        };
        let cores = match (self.server, before.server) {
            (Some(a), Some(b)) if seconds > 0.0 => Some((a - b) / seconds),
            _ => None,
        };
        (
            per_order(self.server, before.server),
            per_order(self.generator, before.generator),
            cores,
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_cpu_time_that_grows() {
        // Proves /proc is read for a live process (this one) and a missing pid gives None.
        let before = super::cpu_seconds(std::process::id()).unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(super::cpu_seconds(std::process::id()).unwrap() > before);
        assert!(super::cpu_seconds(u32::MAX).is_none());
    }
}
