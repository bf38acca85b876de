//! RFC 3339 timestamps on the wire, [`Millis`] inside.

use chrono::{DateTime, SecondsFormat, Utc};
use dispatch_core::Millis;

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339(ms: Millis) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp (any offset) into epoch milliseconds.
/// Times before the epoch are refused.
pub fn parse_rfc3339(s: &str) -> Result<Millis, String> {
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("not an RFC 3339 timestamp ({e}), e.g. 2026-01-31T09:30:00Z"))?;
    Millis::try_from(t.timestamp_millis()).map_err(|_| "must not be before 1970".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let ms = 1_767_225_600_123;
        let s = format_rfc3339(ms);
        assert_eq!(s, "2026-01-01T00:00:00.123Z");
        assert_eq!(parse_rfc3339(&s), Ok(ms));
        assert_eq!(parse_rfc3339("2026-01-01T01:00:00.123+01:00"), Ok(ms));
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("1960-01-01T00:00:00Z").is_err());
    }
}
