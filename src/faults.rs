//! The fault-injection seam: every I/O call of the journal and the
//! snapshot path goes through [`io`] under a name, so that tests can make
//! that call fail (ENOSPC, EIO, EMFILE, ...) in a real daemon. Compiled in
//! only with the `fault-injection` feature, which the test suite turns on
//! (a self dev-dependency in Cargo.toml): a release build has no seam and
//! calls straight through.
//!
//! A test sets `FAILPOINTS="journal-fsync=20*off->return(ENOSPC)"` in the
//! daemon's environment (the `fail` crate's syntax: here the first twenty
//! fsyncs pass and every one after fails). The argument is an errno by
//! name ([`errno_of`]) or by number.

/// The names of the points, one per kind of call, as tests set them.
pub mod points {
    /// Opening or creating a journal segment or the directory.
    pub const JOURNAL_OPEN: &str = "journal-open";
    /// Writing a commit's records.
    pub const JOURNAL_WRITE: &str = "journal-write";
    /// The commit's fdatasync.
    pub const JOURNAL_FSYNC: &str = "journal-fsync";
    /// Renaming the prepared segment into place at rotation.
    pub const JOURNAL_RENAME: &str = "journal-rename";
    /// The journal directory's fsync after a segment is created or renamed.
    pub const JOURNAL_DIR_FSYNC: &str = "journal-dir-fsync";
    /// Zero-filling the next segment ahead of need (allocation).
    pub const JOURNAL_ALLOCATE: &str = "journal-allocate";
    /// Creating a snapshot's temporary file.
    pub const SNAPSHOT_OPEN: &str = "snapshot-open";
    /// Writing a snapshot's bytes.
    pub const SNAPSHOT_WRITE: &str = "snapshot-write";
    /// A snapshot file's fsync.
    pub const SNAPSHOT_FSYNC: &str = "snapshot-fsync";
    /// Renaming a snapshot (or the set's link) into place.
    pub const SNAPSHOT_RENAME: &str = "snapshot-rename";
    /// The fsync of a directory a snapshot was renamed into.
    pub const SNAPSHOT_DIR_FSYNC: &str = "snapshot-dir-fsync";

    /// A replica's hard-state file's fsync (`replica::hard_state`): apart
    /// from the journal's, so a test can fail the one and not the other.
    /// Not in [`ALL`]: the single-node daemon never reaches it.
    pub const RAFT_STATE_FSYNC: &str = "raft-state-fsync";

    /// Every point, for tests that walk them all.
    pub const ALL: [&str; 11] = [
        JOURNAL_OPEN,
        JOURNAL_WRITE,
        JOURNAL_FSYNC,
        JOURNAL_RENAME,
        JOURNAL_DIR_FSYNC,
        JOURNAL_ALLOCATE,
        SNAPSHOT_OPEN,
        SNAPSHOT_WRITE,
        SNAPSHOT_FSYNC,
        SNAPSHOT_RENAME,
        SNAPSHOT_DIR_FSYNC,
    ];
}

/// Runs the I/O call `call` at the point `point`, unless a test made that
/// point fail: then the call is not made and the injected error returned.
#[inline]
pub fn io<T>(point: &'static str, call: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    injected(point)?;
    call()
}

#[cfg(feature = "fault-injection")]
fn injected(point: &'static str) -> std::io::Result<()> {
    fail::fail_point!(point, |errno: Option<String>| {
        let errno = errno.as_deref().map_or(libc::EIO, errno_of);
        Err(std::io::Error::from_raw_os_error(errno))
    });
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
fn injected(_point: &'static str) -> std::io::Result<()> {
    Ok(())
}

/// Set in the child process that runs one failpoint test alone.
#[cfg(test)]
const ALONE_ENV: &str = "OMNIROUTE_FAILPOINT_TEST_ALONE";

/// Runs `body` in a child process of this test binary that runs the test
/// `name` of `module` (its `module_path!()`) alone. Failpoints are global
/// to a process, and other unit tests write journals through the same
/// points: a fault meant for one test would fail them, or be taken by them.
#[cfg(test)]
pub(crate) fn alone(module: &str, name: &str, body: impl FnOnce()) {
    if std::env::var_os(ALONE_ENV).is_some() {
        if !cfg!(feature = "fault-injection") {
            panic!("the test build lacks the fault seam (feature fault-injection)");
        }
        let _scenario = fail::FailScenario::setup();
        body();
        return;
    }
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    let test = format!("{module}::{name}");
    // The running binary itself, even if a build replaced the file since.
    let proc_exe = std::path::Path::new("/proc/self/exe");
    let exe = match proc_exe.exists() {
        true => proc_exe.to_path_buf(),
        false => std::env::current_exe().expect("the test binary"),
    };
    let output = std::process::Command::new(exe)
        .args(["--exact", &test, "--test-threads=1"])
        .env(ALONE_ENV, "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test} alone:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An errno by name (ENOSPC, EIO, EMFILE, ENFILE, EDQUOT, EROFS) or
/// number; anything else is EIO.
pub fn errno_of(name: &str) -> i32 {
    match name {
        "ENOSPC" => libc::ENOSPC,
        "EIO" => libc::EIO,
        "EMFILE" => libc::EMFILE,
        "ENFILE" => libc::ENFILE,
        "EDQUOT" => libc::EDQUOT,
        "EROFS" => libc::EROFS,
        number => number.parse().unwrap_or(libc::EIO),
    }
}
