//! The data directory holds every order, address and stock count: only the
//! daemon's own user may read it. Everything the store and the journal
//! create goes through these, so that nothing is created wider than this
//! whatever the process's umask.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Directories: owner only (rwx------).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Files: owner only (rw-------).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// `create_dir_all`, each directory it creates owner-only.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
}

/// `OpenOptions` whose `create` makes an owner-only file.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(PRIVATE_FILE_MODE);
    options
}

/// `File::create` (write, create, truncate), owner-only.
pub fn create(path: &Path) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Narrows `dir` to owner-only if it is wider (made by an older build, or
/// by hand); returns the mode it had when it changed it.
pub fn tighten_dir(dir: &Path) -> io::Result<Option<u32>> {
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & !PRIVATE_DIR_MODE == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    Ok(Some(mode))
}
