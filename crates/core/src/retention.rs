//! Retention and consent domain types: the data types a retention policy covers, keep periods as
//! the API writes them (`24h`, `90d`, `1y`), and consent purposes and sources. Parsing happens
//! here, once; the database checks the same rules again.

use std::fmt;

/// What a retention policy applies to (docs/retention.md says what each one deletes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    Sessions,
    SoftDeleted,
    Accounts,
    Audit,
    AccessLog,
    Exports,
    Backups,
}

impl DataType {
    pub const ALL: [DataType; 7] = [
        DataType::Sessions,
        DataType::SoftDeleted,
        DataType::Accounts,
        DataType::Audit,
        DataType::AccessLog,
        DataType::Exports,
        DataType::Backups,
    ];

    /// The name used in the API, the database and the CLI output.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Sessions => "sessions",
            DataType::SoftDeleted => "soft_deleted",
            DataType::Accounts => "accounts",
            DataType::Audit => "audit",
            DataType::AccessLog => "access_log",
            DataType::Exports => "exports",
            DataType::Backups => "backups",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The default keep period (seed 000's retention table).
    pub fn default_keep(self, hipaa: bool) -> Keep {
        match self {
            DataType::Sessions => Keep::new(24, Unit::Hours),
            DataType::SoftDeleted => Keep::new(90, Unit::Days),
            DataType::Accounts => Keep::new(7, Unit::Years),
            DataType::Audit | DataType::AccessLog if hipaa => Keep::new(6, Unit::Years),
            DataType::Audit | DataType::AccessLog => Keep::new(1, Unit::Years),
            DataType::Exports => Keep::new(7, Unit::Days),
            DataType::Backups => Keep::new(1, Unit::Years),
        }
    }

    /// Whether the default is also the shortest keep period a policy may set.
    pub fn default_is_floor(self) -> bool {
        matches!(self, DataType::Audit | DataType::AccessLog)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Hours,
    Days,
    Weeks,
    Months,
    Years,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Hours => "h",
            Unit::Days => "d",
            Unit::Weeks => "w",
            Unit::Months => "mo",
            Unit::Years => "y",
        }
    }

    /// Rough length in hours, for the bounds only (a month is 30 days, a year 365).
    fn hours(self) -> u64 {
        match self {
            Unit::Hours => 1,
            Unit::Days => 24,
            Unit::Weeks => 24 * 7,
            Unit::Months => 24 * 30,
            Unit::Years => 24 * 365,
        }
    }
}

/// A keep period: a whole number of one unit, from 1 hour to 100 years. Written `24h`, `90d`,
/// `2w`, `18mo`, `6y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    n: u32,
    unit: Unit,
}

const MAX_HOURS: u64 = 100 * 24 * 365;

impl Keep {
    const fn new(n: u32, unit: Unit) -> Self {
        Self { n, unit }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (num, suffix) = s.split_at(digits);
        let unit = match suffix {
            "h" => Unit::Hours,
            "d" => Unit::Days,
            "w" => Unit::Weeks,
            "mo" => Unit::Months,
            "y" => Unit::Years,
            _ => {
                return Err(format!(
                    "{s:?} is not a keep period: write a whole number and a unit h, d, w, mo or y \
                     (e.g. 24h, 90d, 6y)"
                ));
            }
        };
        let n: u32 = num.parse().map_err(|_| {
            format!("{s:?} is not a keep period: the number is missing or too large")
        })?;
        let hours = u64::from(n) * unit.hours();
        if hours == 0 || hours > MAX_HOURS {
            return Err(format!("{s:?}: a keep period is from 1h to 100y"));
        }
        Ok(Self { n, unit })
    }

    /// From an interval's parts as PostgreSQL stores them (months, days, microseconds), when it
    /// is a whole number of one unit; otherwise in hours.
    pub fn from_interval(months: i32, days: i32, micros: i64) -> Self {
        let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        match (months, days, micros) {
            (m, 0, 0) if m > 0 && m % 12 == 0 => Self::new(n(i64::from(m / 12)), Unit::Years),
            (m, 0, 0) if m > 0 => Self::new(n(i64::from(m)), Unit::Months),
            (0, d, 0) if d > 0 && d % 7 == 0 => Self::new(n(i64::from(d / 7)), Unit::Weeks),
            (0, d, 0) if d > 0 => Self::new(n(i64::from(d)), Unit::Days),
            (m, d, us) => {
                let hours = (i64::from(m) * 30 + i64::from(d)) * 24 + us / 3_600_000_000;
                Self::new(n(hours), Unit::Hours)
            }
        }
    }

    /// The PostgreSQL interval literal, e.g. `90 days`.
    pub fn sql(&self) -> String {
        let unit = match self.unit {
            Unit::Hours => "hours",
            Unit::Days => "days",
            Unit::Weeks => "weeks",
            Unit::Months => "months",
            Unit::Years => "years",
        };
        format!("{} {unit}", self.n)
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.n, self.unit.suffix())
    }
}

/// A consent purpose: 1–100 characters, lowercase letters, digits and `_ . : -`, starting with a
/// letter (`marketing_email`, `analytics`, `terms:v3`).
pub fn valid_purpose(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=100).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b':' | b'-')
        })
}

/// Where a consent decision came from.
pub const CONSENT_SOURCES: [&str; 3] = ["api", "ui", "import"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_periods_parse_and_print() {
        for s in ["24h", "90d", "2w", "18mo", "6y", "100y", "1h"] {
            assert_eq!(Keep::parse(s).map(|k| k.to_string()), Ok(s.to_string()));
        }
        for bad in [
            "",
            "0h",
            "101y",
            "1.5d",
            "-1d",
            "10",
            "d",
            "3 days",
            "5x",
            "99999999999h",
        ] {
            assert!(Keep::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_come_back_in_their_unit() {
        assert_eq!(Keep::from_interval(72, 0, 0).to_string(), "6y");
        assert_eq!(Keep::from_interval(18, 0, 0).to_string(), "18mo");
        assert_eq!(Keep::from_interval(0, 90, 0).to_string(), "90d");
        assert_eq!(Keep::from_interval(0, 14, 0).to_string(), "2w");
        assert_eq!(
            Keep::from_interval(0, 0, 24 * 3_600_000_000).to_string(),
            "24h"
        );
        assert_eq!(Keep::from_interval(0, 1, 3_600_000_000).to_string(), "25h");
    }

    #[test]
    fn data_types_round_trip_and_defaults_follow_the_seed() {
        for t in DataType::ALL {
            assert_eq!(DataType::parse(t.as_str()), Some(t));
        }
        assert_eq!(DataType::parse("logs"), None);
        assert_eq!(DataType::Audit.default_keep(true).to_string(), "6y");
        assert_eq!(DataType::Audit.default_keep(false).to_string(), "1y");
        assert_eq!(DataType::Sessions.default_keep(false).to_string(), "24h");
        assert_eq!(DataType::SoftDeleted.default_keep(false).to_string(), "90d");
    }

    #[test]
    fn purposes() {
        assert!(valid_purpose("marketing_email"));
        assert!(valid_purpose("terms:v3"));
        assert!(!valid_purpose("Marketing"));
        assert!(!valid_purpose("1x"));
        assert!(!valid_purpose(""));
        assert!(!valid_purpose(&"a".repeat(101)));
    }
}
