//! Times as people read and write them: ISO 8601 (RFC 3339, UTC) next to
//! the Unix milliseconds the protocol carries. For the command line and the
//! HTTP gateway.

/// `epoch_ms` as RFC 3339 with milliseconds, in UTC (`2026-12-05T13:48:36.313Z`).
pub fn iso(epoch_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(epoch_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// A time given as Unix ms (`1796479416313`) or as RFC 3339 in UTC
/// (`2026-12-05T13:48:36Z`, fractions allowed).
pub fn parse_time_ms(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("{text:?} is neither Unix ms nor an ISO 8601 time like 2026-12-05T13:48:36Z ({e})")
    })?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("{text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_ms_or_iso_and_print_back() {
        // Proves both spellings of a time read the same, and ISO prints to the millisecond.
        assert_eq!(parse_time_ms("1796478516313"), Ok(1_796_478_516_313));
        assert_eq!(
            parse_time_ms("2026-12-05T13:48:36.313Z"),
            Ok(1_796_478_516_313)
        );
        assert_eq!(iso(1_796_478_516_313), "2026-12-05T13:48:36.313Z");
        assert!(parse_time_ms("yesterday").unwrap_err().contains("ISO 8601"));
    }
}
