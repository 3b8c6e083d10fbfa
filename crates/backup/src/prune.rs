//! Retention: which backups the tiers no longer keep. The newest backup of each kind is never
//! pruned, and WAL is kept back to the oldest base backup that stays.

use chrono::{DateTime, Utc};
use orgbase_core::config::Tier;

use crate::manifest::Manifest;

/// What to delete.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Backups (dumps and base backups) past their tier's retention.
    pub backups: Vec<Manifest>,
    /// WAL objects older than every kept base backup.
    pub wal: Vec<String>,
}

/// Which tier is due now: the longest-kept tier whose interval has passed since the last backup
/// of that tier or of a longer-kept one.
pub fn due_tier<'a>(tiers: &'a [Tier], dumps: &[Manifest], now: DateTime<Utc>) -> Option<&'a Tier> {
    let keep_of = |name: &str| tiers.iter().find(|t| t.name == name).map(|t| t.keep);
    tiers
        .iter()
        .filter(|t| {
            let last = dumps
                .iter()
                .filter(|m| keep_of(&m.tier).is_some_and(|k| k >= t.keep))
                .map(|m| m.started_at)
                .max();
            last.is_none_or(|l| (now - l).to_std().unwrap_or_default() >= t.every)
        })
        .max_by_key(|t| t.keep)
}

/// Plan a prune. Dumps of tiers not in `tiers` (e.g. `manual`) are kept.
pub fn plan(
    tiers: &[Tier],
    dumps: &[Manifest],
    bases: &[Manifest],
    base_keep: std::time::Duration,
    wal: &[String],
    now: DateTime<Utc>,
) -> Plan {
    let age = |m: &Manifest| (now - m.finished_at).to_std().unwrap_or_default();
    let newest = |v: &[Manifest]| v.iter().max_by_key(|m| m.started_at).map(|m| m.id.clone());
    let newest_dump = newest(dumps);
    let mut out = Plan::default();
    for m in dumps {
        let Some(t) = tiers.iter().find(|t| t.name == m.tier) else {
            continue;
        };
        if age(m) > t.keep && Some(&m.id) != newest_dump.as_ref() {
            out.backups.push(m.clone());
        }
    }
    let newest_base = newest(bases);
    let mut kept_bases = Vec::new();
    for m in bases {
        if age(m) > base_keep && Some(&m.id) != newest_base.as_ref() {
            out.backups.push(m.clone());
        } else {
            kept_bases.push(m);
        }
    }
    // WAL before the oldest kept base backup is needed by nothing (compare log/segment numbers,
    // which grow across timelines). Without base backups, no WAL is pruned.
    if let Some(oldest) = kept_bases
        .iter()
        .filter_map(|m| m.wal_start.as_deref())
        .map(|w| w.get(8..24).unwrap_or(w).to_string())
        .min()
    {
        for name in wal {
            let file = name.trim_start_matches("wal/").trim_end_matches(".obk");
            let segment = file.len() >= 24 && file[..24].chars().all(|c| c.is_ascii_hexdigit());
            if segment && !file.ends_with(".history") && file[8..24] < *oldest {
                out.wal.push(name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::manifest::Kind;
    use std::time::Duration;

    fn m(id: &str, kind: Kind, tier: &str, days_ago: i64, now: DateTime<Utc>) -> Manifest {
        let at = now - chrono::Duration::days(days_ago);
        Manifest {
            manifest_version: 1,
            id: id.into(),
            kind,
            tier: tier.into(),
            started_at: at,
            finished_at: at,
            duration_ms: 1,
            raw_bytes: 1,
            compressed_bytes: 1,
            stored_bytes: 1,
            sha256: String::new(),
            object: String::new(),
            key_id: String::new(),
            key_version: 1,
            schema_version: None,
            orgbase_version: String::new(),
            postgres_version: String::new(),
            database: String::new(),
            row_counts: Default::default(),
            wal_start: None,
        }
    }

    fn tiers() -> Vec<Tier> {
        orgbase_core::config::BackupConfig::default()
            .parse_tiers()
            .unwrap()
    }

    #[test]
    fn tiers_expire_and_the_newest_stays() {
        let now = Utc::now();
        let dumps = vec![
            m("a", Kind::Dump, "6h", 31, now),
            m("b", Kind::Dump, "1d", 31, now),
            m("c", Kind::Dump, "7d", 300, now),
            m("d", Kind::Dump, "7d", 400, now),
            m("e", Kind::Dump, "manual", 1000, now),
            m("f", Kind::Dump, "6h", 1, now),
        ];
        let p = plan(
            &tiers(),
            &dumps,
            &[],
            Duration::from_secs(7 * 86400),
            &[],
            now,
        );
        let ids: Vec<_> = p.backups.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "d"]);
        // Only expired backups left: the newest one still stays.
        let old = vec![
            m("x", Kind::Dump, "6h", 100, now),
            m("y", Kind::Dump, "6h", 90, now),
        ];
        let p = plan(&tiers(), &old, &[], Duration::from_secs(86400), &[], now);
        assert_eq!(
            p.backups.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["x"]
        );
    }

    #[test]
    fn wal_is_kept_back_to_the_oldest_kept_base_backup() {
        let now = Utc::now();
        let mut b1 = m("b1", Kind::Base, "base", 10, now);
        b1.wal_start = Some("000000010000000000000005".into());
        let mut b2 = m("b2", Kind::Base, "base", 2, now);
        b2.wal_start = Some("000000010000000000000009".into());
        let wal: Vec<String> = [
            "000000010000000000000004",
            "000000010000000000000008",
            "000000020000000000000009",
            "00000002.history",
        ]
        .iter()
        .map(|w| format!("wal/{w}.obk"))
        .collect();
        let p = plan(
            &tiers(),
            &[],
            &[b1, b2],
            Duration::from_secs(7 * 86400),
            &wal,
            now,
        );
        assert_eq!(p.backups.len(), 1);
        assert_eq!(
            p.wal,
            [
                "wal/000000010000000000000004.obk",
                "wal/000000010000000000000008.obk"
            ]
        );
    }

    #[test]
    fn the_longest_due_tier_is_chosen() {
        let now = Utc::now();
        let t = tiers();
        assert_eq!(due_tier(&t, &[], now).unwrap().name, "7d");
        let recent = vec![m("w", Kind::Dump, "7d", 0, now)];
        assert!(due_tier(&t, &recent, now).is_none());
        let older = vec![m("w", Kind::Dump, "7d", 2, now)];
        assert_eq!(due_tier(&t, &older, now).unwrap().name, "1d");
    }
}
