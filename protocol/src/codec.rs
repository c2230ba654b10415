//! Little-endian primitives with checked reads.

/// A payload that does not decode. The request id was readable, so the
/// peer gets an error response naming what was wrong (its message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ends inside a field.
    #[error("payload ends inside {0}")]
    Truncated(&'static str),
    /// A string longer than its limit.
    #[error("{what} is {length} bytes; the limit is {max}")]
    TooLong {
        what: &'static str,
        length: usize,
        max: usize,
    },
    /// A string that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A count above its limit.
    #[error("{count} {what}; the limit is {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// Bytes left after the last field.
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
    /// A field whose value is none of those it may take.
    #[error("{what} {value} is not {allowed}")]
    NotOneOf {
        what: &'static str,
        value: u64,
        allowed: &'static str,
    },
}

/// Reads a payload front to back; every read checks the bounds.
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, position: 0 }
    }

    fn take(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .position
            .checked_add(count)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated(what))?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    /// The next `count` bytes, as they are.
    pub fn slice(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        self.take(count, what)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    /// A flag byte: 0 or 1, anything else refused.
    pub fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::NotOneOf {
                what,
                value: other.into(),
                allowed: "0 or 1",
            }),
        }
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn f64(&mut self, what: &'static str) -> Result<f64, DecodeError> {
        Ok(f64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    /// `u16 length | UTF-8 bytes`, at most `max` bytes.
    pub fn string(&mut self, max: usize, what: &'static str) -> Result<String, DecodeError> {
        let length = self.u16(what)? as usize;
        if length > max {
            return Err(DecodeError::TooLong { what, length, max });
        }
        let bytes = self.take(length, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8(what))
    }

    /// A count that must not exceed `max`, checked before anything is
    /// allocated for the entries it announces.
    pub fn count_u16(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let count = self.u16(what)? as usize;
        if count > max {
            return Err(DecodeError::TooMany { what, count, max });
        }
        Ok(count)
    }

    pub fn count_u32(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let count = self.u32(what)? as usize;
        if count > max {
            return Err(DecodeError::TooMany { what, count, max });
        }
        Ok(count)
    }

    /// Fails if bytes are left over: a payload must be exactly its fields.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.position == self.bytes.len() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.bytes.len() - self.position))
        }
    }
}

/// Builds one frame: length prefix patched in when done.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Writer<'a> {
    /// Starts a frame of `kind` for `request_id`, appended to `out`.
    pub fn frame(out: &'a mut Vec<u8>, kind: u8, request_id: u64) -> Writer<'a> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(kind);
        out.extend_from_slice(&request_id.to_le_bytes());
        Writer { out, start }
    }

    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.out.push(value);
        self
    }

    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn f64(&mut self, value: f64) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Writes `u16 length | what write wrote` (at most `u16::MAX` bytes:
    /// callers keep entries within the protocol's limits).
    pub fn sized_u16(&mut self, write: impl FnOnce(&mut Self)) -> &mut Self {
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 2]);
        write(self);
        let length = (self.out.len() - at - 2).min(u16::MAX as usize) as u16;
        self.out[at..at + 2].copy_from_slice(&length.to_le_bytes());
        self
    }

    /// Writes `u16 length | bytes`, cut at `u16::MAX` bytes (callers keep
    /// strings within the protocol's limits).
    pub fn string(&mut self, value: &str) -> &mut Self {
        let bytes = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        self.u16(bytes.len() as u16);
        self.out.extend_from_slice(bytes);
        self
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let length = (self.out.len() - self.start - 4) as u32;
        self.out[self.start..self.start + 4].copy_from_slice(&length.to_le_bytes());
    }
}
