//! One writer per data directory: an exclusive lock on `DIR/lock`, taken
//! before recovery and held for the process's life. Two daemons on one
//! directory would each replay, append and snapshot over the other's
//! files, and orders one of them answered would be lost.
//!
//! The lock is the kernel's (`flock` through [`std::fs::File::try_lock`]),
//! so it goes with the process however it ends, kill -9 included: a stale
//! lock file never keeps a restarted daemon out. The file holds the
//! holder's PID, for the message the next one prints.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "lock";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("the data directory {dir} is in use by another omniroute process (PID {holder}); one process per data directory: stop it first{hint}")]
    Held {
        dir: PathBuf,
        /// The holder's PID as its lock file says, or "unknown".
        holder: String,
        /// What the refused command could do instead.
        hint: &'static str,
    },
    /// The lock file could not be opened, locked or written.
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// The held lock: dropping it (or the process ending) lets the next one in.
#[derive(Debug)]
pub struct DirLock {
    /// The directory it holds.
    dir: PathBuf,
    /// Kept open: the lock lives as long as this descriptor.
    _file: File,
}

impl DirLock {
    /// The directory this lock holds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What the lock is for: a writer holds it alone; a reader shares it with
/// other readers and is kept out while a writer holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `serve` and every command that writes the directory.
    Write,
    /// `replay`: reads the journal, which a running daemon appends to and
    /// deletes segments of.
    Read,
}

/// Locks `dir` for `access`, at once or not at all. A writer creates the
/// directory if it is missing; a reader needs it to exist.
pub fn lock(dir: &Path, access: Access) -> Result<DirLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |e: std::io::Error| LockError::Io {
        path: path.clone(),
        message: e.to_string(),
    };
    if access == Access::Write {
        crate::private_files::create_dir_all(dir).map_err(io)?;
        if let Some(was) = crate::private_files::tighten_dir(dir).map_err(io)? {
            tracing::warn!(
                "the data directory {} was readable by others (mode {was:o}): narrowed to 700",
                dir.display()
            );
        }
    } else if !dir.is_dir() {
        return Err(LockError::Io {
            path: dir.to_path_buf(),
            message: "no such data directory".into(),
        });
    }
    let mut file = crate::private_files::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let locked = match access {
        Access::Write => file.try_lock(),
        Access::Read => file.try_lock_shared(),
    };
    match locked {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder: holder_of(&mut file),
                hint: match access {
                    Access::Write => "",
                    Access::Read => {
                        " (replay reads a stopped daemon's data directory, or a copy of it)"
                    }
                },
            })
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    if access == Access::Write {
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
    }
    Ok(DirLock {
        dir: dir.to_path_buf(),
        _file: file,
    })
}

/// The PID a lock file names, or "unknown" if it names none.
fn holder_of(file: &mut File) -> String {
    let mut text = String::new();
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text));
    match read.ok().and_then(|_| text.trim().parse::<u32>().ok()) {
        Some(pid) => pid.to_string(),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a second writer is refused with the holder's PID while the
    // first holds the lock, a reader too, and that the lock is free again
    // once the first lets go.
    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("omniroute-lock-{}", std::process::id()));
        let first = lock(&dir, Access::Write).unwrap();
        let refused = lock(&dir, Access::Write).unwrap_err().to_string();
        assert!(
            refused.contains(&std::process::id().to_string()),
            "{refused}"
        );
        assert!(refused.contains(&dir.display().to_string()), "{refused}");
        let reader = lock(&dir, Access::Read).unwrap_err().to_string();
        assert!(reader.contains("replay reads"), "{reader}");
        drop(first);
        let reader = lock(&dir, Access::Read).unwrap();
        assert!(
            lock(&dir, Access::Write).is_err(),
            "a reader keeps writers out"
        );
        drop(reader);
        lock(&dir, Access::Write).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
