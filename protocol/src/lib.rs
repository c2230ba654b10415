//! The omniroute wire protocol, as specified in `docs/PROTOCOL.md`.
//!
//! Every frame is `u32 length | u8 kind | u64 request id | payload`, all
//! little-endian, where `length` counts the bytes after itself. Decoding is
//! two steps, as in mini-redis: [`check_frame`] says whether a whole frame is
//! buffered and within [`MAX_FRAME_BYTES`] before anything is allocated,
//! then [`Request::decode`] / [`Response::decode`] build it. Every read is
//! bounds-checked; malformed input is a [`DecodeError`], never a panic.

mod batch;
mod codec;
mod messages;

pub use batch::{batch_too_large, BatchOrder, Judged, MAX_ORDERS_PER_SUBMIT_BATCH};
pub use codec::{DecodeError, Reader, Writer};
pub use messages::*;

/// ALPN protocol id; the version is part of it.
pub const ALPN: &[u8] = b"omniroute/1";
/// Version carried in `Hello`; a server refuses any other.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest value of the length prefix (kind + request id + payload). Large
/// enough for a bulk stock feed of thousands of entries, small enough that
/// a connection's buffer stays bounded.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Smallest legal length value: kind + request id.
pub const MIN_FRAME_BYTES: usize = 1 + 8;
/// Longest id string (SKU, node, channel, client order id), in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest token in `Hello`.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Longest error or rejection message.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Lines in one order. Real baskets rarely exceed a few dozen lines; the
/// bound keeps a plan's work and a hold batch's size predictable (the
/// daemon's planner keeps a line set in a 64-bit mask).
pub const MAX_LINES_PER_ORDER: usize = 64;
/// `lat` and `lon` of a pickup order that gives no ship-to: the store's
/// own location stands for it.
pub const NO_SHIP_TO: f64 = f64::NAN;
/// Entries in one stock set / adjust frame.
pub const MAX_STOCK_ENTRIES_PER_FRAME: usize = 16_384;
/// Counts reported with one node rejection.
pub const MAX_COUNTS_PER_REJECT: usize = 64;
/// Nodes in one availability answer.
pub const MAX_NODES_PER_ANSWER: usize = 16_384;

/// The request id of an `Unframeable` answer to bytes too few to hold one.
pub const UNFRAMED_REQUEST_ID: u64 = u64::MAX;

/// Application error codes: why the server stops reading a stream
/// (`STOP_SENDING`, named in the `Unframeable` answer too) or resets one,
/// or closes a connection (`CONNECTION_CLOSE`).
pub mod close_codes {
    /// A length prefix above `MAX_FRAME_BYTES`: the server stops reading.
    pub const FRAME_TOO_LARGE: u32 = 0x10;
    /// A length prefix below `MIN_FRAME_BYTES`: the server stops reading.
    pub const FRAME_TOO_SHORT: u32 = 0x11;
    /// The stream ended in the middle of a frame.
    pub const TRUNCATED: u32 = 0x12;
    /// `Hello` asked for a protocol version the server does not speak.
    /// Closes the connection.
    pub const VERSION_MISMATCH: u32 = 0x13;
    /// The server is shutting down. Closes the connection.
    pub const SHUTDOWN: u32 = 0x14;
    /// A subscriber fell too far behind its event stream. Closes the stream;
    /// the subscriber resumes from its last cursor.
    pub const SLOW_CONSUMER: u32 = 0x15;
    /// No valid `Hello` within the server's `hello_timeout_ms`, or the
    /// oldest of more connections without one than the server admits
    /// (the reason says which). Closes the connection.
    pub const NO_HELLO: u32 = 0x16;
}

/// How many bytes the next frame occupies in `buffer`, length prefix
/// included: `Ok(None)` while it is not all there yet. Checks the length
/// before any allocation.
pub fn check_frame(buffer: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(length) = length_prefix(buffer) else {
        return Ok(None);
    };
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(length));
    }
    if length < MIN_FRAME_BYTES {
        return Err(FrameError::TooShort(length));
    }
    Ok((buffer.len() >= LENGTH_BYTES + length).then_some(LENGTH_BYTES + length))
}

/// The value of the length prefix at the start of `buffer`, once its
/// four bytes are there (unchecked: [`check_frame`] checks it).
pub fn length_prefix(buffer: &[u8]) -> Option<usize> {
    let prefix = buffer.get(..LENGTH_BYTES)?;
    Some(u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize)
}

/// Splits a whole frame (as measured by [`check_frame`]) into kind, request
/// id and payload.
pub fn split_frame(frame: &[u8]) -> (u8, u64, &[u8]) {
    let kind = frame[LENGTH_BYTES];
    let id = u64::from_le_bytes(
        frame[LENGTH_BYTES + 1..LENGTH_BYTES + 9]
            .try_into()
            .expect("eight bytes"),
    );
    (kind, id, &frame[LENGTH_BYTES + 9..])
}

/// Bytes that cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} exceeds MAX_FRAME_BYTES")]
    TooLarge(usize),
    #[error("frame length {0} is below the 9 bytes of kind and request id")]
    TooShort(usize),
}

impl FrameError {
    /// The application code the stream is closed with.
    pub fn close_code(self) -> u32 {
        match self {
            FrameError::TooLarge(_) => close_codes::FRAME_TOO_LARGE,
            FrameError::TooShort(_) => close_codes::FRAME_TOO_SHORT,
        }
    }
}
