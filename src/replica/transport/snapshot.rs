//! A snapshot on a stream of its own (docs/RAFT-SNAPSHOTS.md, 3.6, 3.7).
//!
//! raft-rs's `MsgSnapshot` carries only the pinned set's descriptor
//! (`snapshot_files`). The leader opens a new uni stream for it, below the
//! other two in priority, and writes:
//!
//! ```text
//! u32 length (LE) | protobuf MsgSnapshot       the usual frame, first
//! per file, in the descriptor's order:
//!   its bytes (exactly the size the descriptor gives) | u32 crc32c (LE)
//! ```
//!
//! The leader does not finish the stream: the follower answers by
//! stopping it, with [`STOP_SNAPSHOT_STAGED`] once the files are durable
//! and the message is with its driver, or with a refusal. (A finished
//! stream's acknowledgement says only that the bytes arrived.)
//!
//! A stream whose first frame is a `MsgSnapshot` is one of these. The
//! follower checks the descriptor before it allocates anything (names,
//! counts, room on its disk), writes each file into its staging directory
//! checking its size and checksum, syncs every file and the directory,
//! checks the set's raft point against the message, and only then hands
//! the message to its driver. Anything wrong removes what was staged and
//! stops the stream.
//!
//! The leader's driver hears of each transfer exactly once ([`Report`]):
//! delivered once the follower says it is staged, failed on any error, a
//! refusal, a timeout, or a transfer dropped unsent.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use quinn::{Connection, RecvStream, VarInt};
use raft::eraftpb::Message;

use crate::replica::driver::SnapshotReport;
use crate::replica::raft_point;
use crate::replica::snapshot_files::{self, Descriptor};

/// Bytes read or written per step: one buffer per transfer.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// A transfer may take this long, plus [`SNAPSHOT_MIN_BYTES_PER_S`]'s
/// time for its bytes, before it is given up (and sent again).
pub const SNAPSHOT_TRANSFER_BASE_MS: u64 = 30_000;
/// The slowest rate a transfer is allowed.
pub const SNAPSHOT_MIN_BYTES_PER_S: u64 = 4 << 20;
/// Room a received snapshot must leave free on the follower's disk: two
/// journal segments' worth, so its journal can go on after it.
pub const SNAPSHOT_FREE_MARGIN_BYTES: u64 = 128 << 20;

/// Stream stop codes a follower answers a transfer with: its files are
/// staged, whole and synced, and its message is with the driver.
/// Not 0: quinn stops a stream dropped unread with 0.
pub const STOP_SNAPSHOT_STAGED: u32 = 1;
/// Something in it did not check out, or the driver could not take it.
pub const STOP_SNAPSHOT_REFUSED: u32 = 2;
/// Another transfer is being received.
pub const STOP_SNAPSHOT_BUSY: u32 = 3;

/// Where a replica's snapshot files are, and where the driver hears how
/// the transfers it asked for went.
#[derive(Clone)]
pub struct SnapshotIo {
    /// The replica's data directory (pins and staging are under it).
    pub dir: PathBuf,
    /// Each transfer's outcome, exactly once; unbounded (at most one
    /// transfer per peer is under way or queued).
    pub reports: crossbeam_channel::Sender<SnapshotReport>,
    /// The shards and routers this replica's sets must be written for (a
    /// set of another layout is refused before it is installed).
    pub layout: Option<crate::schema::Layout>,
}

/// How long a transfer of `bytes` may take.
pub fn transfer_deadline(bytes: u64) -> Duration {
    let for_bytes_ms = bytes / SNAPSHOT_MIN_BYTES_PER_S * 1000;
    Duration::from_millis(SNAPSHOT_TRANSFER_BASE_MS.saturating_add(for_bytes_ms))
}

/// Tells the driver how a transfer went, once: failed unless
/// [`Report::delivered`] was called first.
pub struct Report {
    peer: u64,
    index: u64,
    reports: Option<crossbeam_channel::Sender<SnapshotReport>>,
}

impl Report {
    pub fn new(message: &Message, io: Option<&SnapshotIo>) -> Report {
        Report {
            peer: message.to,
            index: message.get_snapshot().get_metadata().index,
            reports: io.map(|io| io.reports.clone()),
        }
    }

    pub fn delivered(mut self) {
        self.tell(true);
    }

    fn tell(&mut self, delivered: bool) {
        if let Some(reports) = self.reports.take() {
            let outcome = if delivered { "delivered" } else { "failed" };
            metrics::counter!(crate::telemetry::REPLICA_SNAPSHOTS_SENT_TOTAL, "outcome" => outcome)
                .increment(1);
            let _ = reports.send(SnapshotReport {
                peer: self.peer,
                index: self.index,
                delivered,
            });
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.tell(false);
    }
}

/// Streams the pinned set `message` describes to the peer on
/// `connection`; `Ok` once the peer says it is staged.
pub async fn send(connection: &Connection, message: &Message, dir: &Path) -> Result<(), String> {
    let descriptor = Descriptor::decode(message.get_snapshot().get_data())?;
    let pin = snapshot_files::pin_dir(dir, descriptor.index, descriptor.term);
    // Every file opened first: a pin removed later stays readable.
    let opened = {
        let (pin, files) = (pin.clone(), descriptor.files.clone());
        tokio::task::spawn_blocking(move || open_pinned(&pin, &files))
            .await
            .map_err(|e| e.to_string())??
    };
    let deadline = transfer_deadline(descriptor.total_bytes());
    tokio::time::timeout(deadline, write_stream(connection, message, opened))
        .await
        .map_err(|_| format!("not delivered within {} ms", deadline.as_millis()))?
}

fn open_pinned(pin: &Path, files: &[(String, u64)]) -> Result<Vec<(Arc<File>, u64)>, String> {
    files
        .iter()
        .map(|(name, bytes)| {
            let path = pin.join(name);
            let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let length = file.metadata().map_err(|e| e.to_string())?.len();
            if length != *bytes {
                return Err(format!(
                    "{}: {length} bytes, pinned at {bytes}",
                    path.display()
                ));
            }
            Ok((Arc::new(file), *bytes))
        })
        .collect()
}

async fn write_stream(
    connection: &Connection,
    message: &Message,
    files: Vec<(Arc<File>, u64)>,
) -> Result<(), String> {
    let error = |e: &dyn std::fmt::Display| e.to_string();
    let mut stream = connection.open_uni().await.map_err(|e| error(&e))?;
    // Below the control and append streams: heartbeats and appends to the
    // other followers go first.
    let _ = stream.set_priority(-1);
    let body = message.write_to_bytes().map_err(|e| error(&e))?;
    let length = u32::try_from(body.len()).map_err(|e| error(&e))?;
    stream
        .write_all(&length.to_le_bytes())
        .await
        .map_err(|e| error(&e))?;
    stream.write_all(&body).await.map_err(|e| error(&e))?;
    for (file, bytes) in files {
        let mut crc = 0u32;
        let mut at = 0u64;
        while at < bytes {
            let n = (bytes - at).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
            let chunk = read_at(file.clone(), at, n).await?;
            crc = crc32c::crc32c_append(crc, &chunk);
            stream.write_all(&chunk).await.map_err(|e| error(&e))?;
            at += n as u64;
        }
        stream
            .write_all(&crc.to_le_bytes())
            .await
            .map_err(|e| error(&e))?;
    }
    match stream.stopped().await {
        Ok(Some(code)) if code == VarInt::from_u32(STOP_SNAPSHOT_STAGED) => Ok(()),
        Ok(Some(code)) => Err(format!("the follower refused it (code {code})")),
        Ok(None) => Err("the stream ended without an answer".into()),
        Err(e) => Err(error(&e)),
    }
}

async fn read_at(file: Arc<File>, at: u64, n: usize) -> Result<Vec<u8>, String> {
    tokio::task::spawn_blocking(move || {
        let mut chunk = vec![0; n];
        file.read_exact_at(&mut chunk, at).map(|()| chunk)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("reading a pinned file: {e}"))
}

/// Receives the snapshot `message` announces from `stream` into a new
/// staging directory of `dir`; the directory once every file in it is
/// whole, checked and synced. Removes what it staged on any error.
pub async fn receive(
    stream: &mut RecvStream,
    message: &Message,
    dir: &Path,
    layout: Option<crate::schema::Layout>,
    transfer: u64,
) -> Result<PathBuf, String> {
    let descriptor = check(message, dir)?;
    let staging = snapshot_files::staging_dir(dir, descriptor.index, descriptor.term, transfer);
    let deadline = transfer_deadline(descriptor.total_bytes());
    let files = read_files(stream, &descriptor, &staging, layout);
    let received = tokio::time::timeout(deadline, files).await;
    let outcome = match received {
        Ok(Ok(())) => Ok(staging.clone()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("not received within {} ms", deadline.as_millis())),
    };
    if outcome.is_err() {
        let staging = staging.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(staging)).await;
    }
    outcome
}

/// The message's descriptor, if it names the message's own point and
/// there is room for it on this disk.
fn check(message: &Message, dir: &Path) -> Result<Descriptor, String> {
    let descriptor = Descriptor::decode(message.get_snapshot().get_data())?;
    let metadata = message.get_snapshot().get_metadata();
    if (metadata.index, metadata.term) != (descriptor.index, descriptor.term) {
        return Err(format!(
            "a descriptor of entry {} in a snapshot of entry {}",
            descriptor.index, metadata.index
        ));
    }
    let needed = descriptor
        .total_bytes()
        .saturating_add(SNAPSHOT_FREE_MARGIN_BYTES);
    if let Some(free) = crate::journal::free_bytes(dir) {
        if free < needed {
            return Err(format!(
                "{} bytes of snapshot, and {free} bytes free on the disk (a margin of {SNAPSHOT_FREE_MARGIN_BYTES} kept)",
                descriptor.total_bytes()
            ));
        }
    }
    Ok(descriptor)
}

async fn read_files(
    stream: &mut RecvStream,
    descriptor: &Descriptor,
    staging: &Path,
    layout: Option<crate::schema::Layout>,
) -> Result<(), String> {
    {
        let staging = staging.to_path_buf();
        blocking(move || {
            let _ = std::fs::remove_dir_all(&staging);
            crate::private_files::create_dir_all(&staging)
        })
        .await?;
    }
    let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES.min(descriptor.total_bytes() as usize)];
    for (name, bytes) in &descriptor.files {
        let path = staging.join(name);
        let file = {
            let path = path.clone();
            Arc::new(blocking(move || crate::private_files::create(&path)).await?)
        };
        let mut crc = 0u32;
        let mut at = 0u64;
        while at < *bytes {
            let n = (bytes - at).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
            read_exact(stream, &mut buffer[..n]).await?;
            crc = crc32c::crc32c_append(crc, &buffer[..n]);
            let (file, chunk) = (file.clone(), buffer[..n].to_vec());
            blocking(move || file.write_all_at(&chunk, at)).await?;
            at += n as u64;
        }
        let mut stored = [0u8; 4];
        read_exact(stream, &mut stored).await?;
        if u32::from_le_bytes(stored) != crc {
            return Err(format!("{name}: its checksum does not hold"));
        }
        blocking(move || file.sync_all()).await?;
    }
    let (staging, expected) = (staging.to_path_buf(), descriptor.clone());
    tokio::task::spawn_blocking(move || check_staged(&staging, &expected, layout))
        .await
        .map_err(|e| e.to_string())?
}

/// Syncs the staged directory and checks it before anything is replaced
/// by it: its raft point is the one the descriptor names, its layout this
/// replica's, and every snapshot file's frame and checksum hold (a set
/// damaged on the leader's disk is refused here, not found at the next
/// start with the old log gone).
fn check_staged(
    staging: &Path,
    descriptor: &Descriptor,
    layout: Option<crate::schema::Layout>,
) -> Result<(), String> {
    File::open(staging)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", staging.display()))?;
    for (name, _) in &descriptor.files {
        if name == raft_point::RAFT_POINT_FILE || name == crate::store::layout::LAYOUT_FILE {
            continue;
        }
        crate::store::check_snapshot_file(&staging.join(name))
            .map_err(|e| format!("{name}: {e}"))?;
    }
    if let Some(layout) = layout {
        let path = staging.join(crate::store::layout::LAYOUT_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let staged =
            crate::schema::Layout::parse(&text).map_err(|e| format!("layout.toml: {e}"))?;
        if staged != layout {
            return Err(format!(
                "a set written for {staged:?}, and this replica has {layout:?}"
            ));
        }
        // Every actor of the layout (an actor missing would load empty,
        // with the log before the set gone). Nodes may be missing: one
        // added to the network since has no file yet.
        let shards = (0..layout.shards).map(|s| format!("shard-{s}.snap"));
        let routers = (0..layout.routers).map(|r| format!("router-{r}.snap"));
        let required = ["catalog.snap".to_string(), "feed.snap".to_string()];
        for name in required.into_iter().chain(shards).chain(routers) {
            if !descriptor.files.iter().any(|(file, _)| *file == name) {
                return Err(format!("a set without {name}"));
            }
        }
    }
    let point = raft_point::read(staging)?.ok_or("a snapshot without a raft point")?;
    let named = (descriptor.index, descriptor.term, descriptor.next_lsn);
    if (point.index, point.term, point.next_lsn) != named {
        return Err(format!(
            "a raft point at entry {} of term {} (LSN {}) in a snapshot of entry {} of term {} (LSN {})",
            point.index, point.term, point.next_lsn, named.0, named.1, named.2
        ));
    }
    Ok(())
}

async fn read_exact(stream: &mut RecvStream, into: &mut [u8]) -> Result<(), String> {
    stream
        .read_exact(into)
        .await
        .map_err(|e| format!("the stream ended early: {e}"))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// The stop code a refused stream gets.
pub fn refused() -> VarInt {
    VarInt::from_u32(STOP_SNAPSHOT_REFUSED)
}

/// The stop code a staged stream gets.
pub fn staged() -> VarInt {
    VarInt::from_u32(STOP_SNAPSHOT_STAGED)
}
