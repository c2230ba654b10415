//! The sans-IO core: routing and reservation as plain data and functions.
//! Nothing in `core` awaits a timer, touches a socket or a file, or reads a
//! clock: time comes in as `now_ms`, and the only awaits are on the
//! [`placement::Participants`] the shell hands in.

pub mod capacity;
pub mod events;
pub mod geo;
pub mod index;
pub mod local;
pub mod model;
pub mod network;
pub mod placement;
pub mod policy;
pub mod router;
pub mod stock;

/// Asks the CPU to bring the cache line at `at` into this core's cache. A
/// hint only: it never faults (any address will do) and changes nothing.
/// For a caller that knows the state it will touch a little ahead of
/// touching it, such as the what-if replay's placer.
#[inline]
pub fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86_64 baseline, and a prefetch reads
    // nothing the program sees and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at.cast(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
