//! Wall-clock timestamps as the public contract spells them: RFC 3339, UTC,
//! millisecond precision (`2026-01-01T00:00:00.000Z`). Deadlines never use
//! this clock; see [`crate::deadline`].

use chrono::{SecondsFormat, Utc};

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape() {
        let s = super::now_rfc3339();
        assert_eq!(s.len(), "2026-01-01T00:00:00.000Z".len(), "{s}");
        assert!(s.ends_with('Z'));
    }
}
