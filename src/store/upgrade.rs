//! Upgrading a data directory of an older format in place, at open,
//! before recovery reads it. Format 3 changed the journal's record (a
//! header with its own checksum): the segments of an older directory are
//! rewritten (`journal::upgrade_segments`, crash-safe and idempotent), and
//! only then is the version in `names.toml` bumped.

use std::path::Path;

use super::{journal_dir, layout, StoreError};
use crate::journal::RecordFormat;
use crate::schema::Names;

/// The first format whose journal records have a header checksum.
const HEADER_CHECKSUM_FORMAT: u32 = 3;

/// Brings the directory's journal to this build's format; `names` are the
/// directory's, as read (a new directory has none and nothing to do).
pub(super) fn upgrade(dir: &Path, names: Option<&Names>) -> Result<(), StoreError> {
    let Some(names) = names else { return Ok(()) };
    let found = layout::read_format_version(dir)?;
    if found >= HEADER_CHECKSUM_FORMAT {
        return Ok(());
    }
    let rewritten = crate::journal::upgrade_segments(&journal_dir(dir))?;
    layout::write_names(dir, names)?;
    tracing::info!(
        "the data directory {} was upgraded from format {found} to {}: {rewritten} journal segments rewritten with header checksums",
        dir.display(),
        crate::schema::FORMAT_VERSION
    );
    Ok(())
}

/// How the journal of the data directory `dir` is laid out as it is on
/// disk: an older directory's until a daemon's start upgrades it. For
/// tools that only read (`omniroute replay`), which must not upgrade a
/// directory behind its daemon's back. A newer format than this build's,
/// or format 0, is refused as the daemon refuses it.
pub fn journal_record_format(dir: &Path) -> Result<RecordFormat, StoreError> {
    // A directory without names is new, or written by a tool of this build.
    if layout::read_names(dir)?.is_none() {
        return Ok(RecordFormat::HeaderChecksum);
    }
    Ok(
        if layout::read_format_version(dir)? >= HEADER_CHECKSUM_FORMAT {
            RecordFormat::HeaderChecksum
        } else {
            RecordFormat::BeforeHeaderChecksum
        },
    )
}
