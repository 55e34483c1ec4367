//! Whether a reading's position is worth anything (DESIGN §14). A GPS module without a fix
//! still reports: (0, 0), the last position with `"fix": false`, or a fix with a huge hdop.
//! Such a reading is stored (its hydrogen and lock state are real), but its position must not
//! move the vehicle, end a ride at sea, or become "plausible" by repeating itself.

use crate::domain::Reading;

/// Why a reading's position is of no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFix {
    /// Exactly (0, 0): a module that has never had a fix.
    NullIsland,
    /// The firmware said so: `"fix": false`.
    Flagged,
    /// `hdop` above `rules.max_hdop`.
    Hdop,
}

impl NoFix {
    pub fn as_str(self) -> &'static str {
        match self {
            NoFix::NullIsland => "null_island",
            NoFix::Flagged => "fix_false",
            NoFix::Hdop => "hdop",
        }
    }
}

/// `None` when the reading's position may be used, else why not.
pub fn no_value_fix(r: &Reading, max_hdop: f32) -> Option<NoFix> {
    if r.lat == 0.0 && r.lon == 0.0 {
        return Some(NoFix::NullIsland);
    }
    let flagged = r
        .extra
        .as_ref()
        .and_then(|e| e.get("fix"))
        .is_some_and(|f| *f == serde_json::Value::Bool(false));
    if flagged {
        return Some(NoFix::Flagged);
    }
    if r.hdop.is_some_and(|h| h > max_hdop) {
        return Some(NoFix::Hdop);
    }
    None
}

/// The same test over a stored row, for SQL that reads `telemetry`: `$n` is `rules.max_hdop`.
pub fn sql_has_fix(max_hdop_param: &str) -> String {
    format!(
        "(NOT (lat = 0 AND lon = 0) AND (extra -> 'fix') IS DISTINCT FROM 'false'::jsonb \
         AND (hdop IS NULL OR hdop <= {max_hdop_param}))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn r(lat: f64, lon: f64) -> Reading {
        Reading::bare("XY-B0001", Utc::now(), lat, lon, 40.0)
    }

    #[test]
    fn null_island_flagged_and_wide_fixes_have_no_value() {
        assert_eq!(no_value_fix(&r(37.1, 111.7), 10.0), None);
        assert_eq!(no_value_fix(&r(0.0, 0.0), 10.0), Some(NoFix::NullIsland));
        assert_eq!(
            no_value_fix(&r(0.0, 111.7), 10.0),
            None,
            "the equator is a place"
        );
        let mut flagged = r(37.1, 111.7);
        flagged.extra = Some(
            serde_json::json!({"fix": false})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(no_value_fix(&flagged, 10.0), Some(NoFix::Flagged));
        flagged.extra = Some(
            serde_json::json!({"fix": true})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(no_value_fix(&flagged, 10.0), None);
        let mut wide = r(37.1, 111.7);
        wide.hdop = Some(10.5);
        assert_eq!(no_value_fix(&wide, 10.0), Some(NoFix::Hdop));
        wide.hdop = Some(10.0);
        assert_eq!(no_value_fix(&wide, 10.0), None);
    }
}
