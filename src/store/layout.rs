//! The data directory's own description: `names.toml` (the ids of its
//! channels, markets and nodes, and the format version) and the snapshot
//! set's `layout.toml` (shards and routers).
//!
//! `DIR/snapshots` is a symbolic link to the set in use,
//! `DIR/snapshots-{generation}`. The layout lives inside the set, so a set
//! written for other shard or router counts replaces the old one in one
//! step: the new set is written whole beside the old, then the link is
//! swapped by a rename. A crash leaves the old set or the new, never a mix.

use std::path::{Path, PathBuf};

use super::durable::write_durably;
use super::{io, StoreError};
use crate::schema::{Layout, Names};

/// The names file, in the data directory.
pub const NAMES_FILE: &str = "names.toml";
/// The layout file, in the snapshot set.
pub const LAYOUT_FILE: &str = "layout.toml";
/// What format 0 (before names) kept in the data directory.
const FORMAT_0_LAYOUT_FILE: &str = "layout";
/// The link to the snapshot set in use.
const SNAPSHOTS_LINK: &str = "snapshots";
/// A snapshot set's directory is this followed by its generation.
const GENERATION_PREFIX: &str = "snapshots-";

/// The ids the directory has given (`None`: a new directory). A directory
/// of another format version is an error that says what to do.
pub fn read_names(dir: &Path) -> Result<Option<Names>, StoreError> {
    let path = dir.join(NAMES_FILE);
    let damaged = |reason: String| StoreError::Format {
        dir: dir.to_path_buf(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Names::parse(&text)
            .map(Some)
            .map_err(|e| damaged(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(FORMAT_0_LAYOUT_FILE).exists() {
                return Err(damaged(
                    crate::schema::NamesError::Older { found: 0 }.to_string(),
                ));
            }
            Ok(None)
        }
        Err(e) => Err(io(&path, e)),
    }
}

/// The format version `names.toml` states (as written, before
/// [`read_names`] takes it to this build's). Call after `read_names` has
/// checked the file.
pub fn read_format_version(dir: &Path) -> Result<u32, StoreError> {
    let path = dir.join(NAMES_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    crate::schema::format_version_of(&text).map_err(|e| StoreError::Format {
        dir: dir.to_path_buf(),
        reason: format!("{}: {e}", path.display()),
    })
}

/// Writes the names durably: before any record that uses a new id.
pub fn write_names(dir: &Path, names: &Names) -> Result<(), StoreError> {
    write_durably(&dir.join(NAMES_FILE), names.encode().as_bytes())
}

/// The generation of a snapshot set directory's name.
fn generation_of(name: &str) -> Option<u64> {
    name.strip_prefix(GENERATION_PREFIX)?.parse().ok()
}

/// The generation the link points at.
fn linked_generation(dir: &Path) -> Option<u64> {
    let target = std::fs::read_link(dir.join(SNAPSHOTS_LINK)).ok()?;
    generation_of(target.file_name()?.to_str()?)
}

/// Makes `DIR/snapshots` a link to a set and removes the sets it does not
/// point at (one a crash left half-written). A plain directory there (as
/// tools write) becomes generation 0.
pub fn prepare_snapshot_sets(dir: &Path) -> Result<(), StoreError> {
    let link = dir.join(SNAPSHOTS_LINK);
    let is_link = link
        .symlink_metadata()
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    if !is_link {
        let first = dir.join(format!("{GENERATION_PREFIX}0"));
        if link.is_dir() {
            std::fs::rename(&link, &first).map_err(|e| io(&link, e))?;
        } else {
            crate::private_files::create_dir_all(&first).map_err(|e| io(&first, e))?;
        }
        swap_link(dir, 0)?;
    }
    let current = linked_generation(dir);
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(generation) = name.to_str().and_then(generation_of) else {
            continue;
        };
        if Some(generation) != current {
            std::fs::remove_dir_all(entry.path()).map_err(|e| io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Points the link at `generation`'s set, atomically and durably.
fn swap_link(dir: &Path, generation: u64) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{SNAPSHOTS_LINK}.link-tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("{GENERATION_PREFIX}{generation}"), &tmp)
        .map_err(|e| io(&tmp, e))?;
    super::durable::publish(&tmp, &dir.join(SNAPSHOTS_LINK))
}

/// The layout of the snapshot set in use (`None`: not written yet).
pub fn read_layout(dir: &Path) -> Result<Option<Layout>, StoreError> {
    let path = super::snapshot_dir(dir).join(LAYOUT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Layout::parse(&text)
            .map(Some)
            .map_err(|e| StoreError::Format {
                dir: dir.to_path_buf(),
                reason: format!("{}: {e}", path.display()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path, e)),
    }
}

/// Writes the layout of the set in `snapshots`.
pub fn write_layout(snapshots: &Path, layout: Layout) -> Result<(), StoreError> {
    write_durably(&snapshots.join(LAYOUT_FILE), layout.encode().as_bytes())
}

/// Writes a whole new snapshot set by `write` (into the directory it is
/// given, which it must fill and sync), then puts it in place of the old
/// one in one step and removes the old.
pub fn replace_snapshot_set(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let old = linked_generation(dir);
    let generation = old.map_or(0, |g| g + 1);
    let next: PathBuf = dir.join(format!("{GENERATION_PREFIX}{generation}"));
    let _ = std::fs::remove_dir_all(&next);
    crate::private_files::create_dir_all(&next).map_err(|e| io(&next, e))?;
    write(&next)?;
    swap_link(dir, generation)?;
    if let Some(old) = old {
        let old = dir.join(format!("{GENERATION_PREFIX}{old}"));
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(())
}

/// Puts the whole, synced set in `staged` (a replica received it from its
/// leader) in place of the set in use, in one step, and removes the old:
/// the staged directory becomes the next generation (renamed, durably),
/// then the link is swapped. Returns the generation.
pub fn install_snapshot_set(dir: &Path, staged: &Path) -> Result<u64, StoreError> {
    let old = linked_generation(dir);
    let generation = old.map_or(0, |g| g + 1);
    let next: PathBuf = dir.join(format!("{GENERATION_PREFIX}{generation}"));
    let _ = std::fs::remove_dir_all(&next);
    std::fs::rename(staged, &next).map_err(|e| io(&next, e))?;
    super::durable::sync_dir(dir)?;
    swap_link(dir, generation)?;
    if let Some(old) = old {
        let old = dir.join(format!("{GENERATION_PREFIX}{old}"));
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(generation)
}
