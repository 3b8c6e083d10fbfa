//! Key management settings (the `[keys]` section of `orgbase.toml`, when the integrator adds
//! it) and the paths they resolve to under the data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::StoreConfig;

/// The default environment variable holding the base64 master key.
pub const MASTER_KEY_ENV: &str = "ORGBASE_MASTER_KEY";
/// Default maximum age of a data key version before rotation is due.
pub const DEFAULT_ROTATION_MAX_AGE_DAYS: u32 = 90;

/// Settings. Every field has a default; unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Directory of all key material; default `<data_dir>/keys`. Must not be inside PGDATA
    /// or anywhere a database backup copies.
    pub dir: Option<PathBuf>,
    /// The master key file (32 raw bytes, 0600); default `<dir>/master.key`. Ignored when
    /// the environment variable is set.
    pub master_key_file: Option<PathBuf>,
    /// Environment variable holding the master key as base64; default `ORGBASE_MASTER_KEY`.
    pub master_key_env: String,
    /// Rotate a data key when its current version is this old (days).
    pub rotation_max_age_days: u32,
    /// How often (ms) a cached key is checked against its file for changes made by another
    /// process, such as a CLI `keys rotate` or `erase run`.
    pub cache_revalidate_ms: u64,
    /// Most data keys kept unwrapped in memory.
    pub cache_capacity: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        let store = StoreConfig::default();
        Self {
            dir: None,
            master_key_file: None,
            master_key_env: MASTER_KEY_ENV.to_string(),
            rotation_max_age_days: DEFAULT_ROTATION_MAX_AGE_DAYS,
            cache_revalidate_ms: u64::try_from(store.cache_revalidate.as_millis()).unwrap_or(1000),
            cache_capacity: store.cache_capacity,
        }
    }
}

/// Where the key material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPaths {
    /// `DATA/keys` (0700).
    pub dir: PathBuf,
    /// `DATA/keys/master.key`.
    pub master_key: PathBuf,
    /// `DATA/keys/store/`: one file per data key.
    pub store: PathBuf,
    /// `DATA/keys/signing.pk8`: the Ed25519 key that signs certificates of deletion.
    pub signing_key: PathBuf,
    /// `DATA/keys/pseudonym.key`: the salt of subject pseudonyms.
    pub pseudonym_key: PathBuf,
    /// `DATA/keys/blind-index.key`: the key of the account emails' blind index.
    pub blind_index_key: PathBuf,
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keys configuration `{key}`: {message}")]
pub struct KeysConfigError {
    pub key: &'static str,
    pub message: String,
}

impl KeysConfig {
    pub fn rotation_max_age(&self) -> Duration {
        Duration::from_secs(u64::from(self.rotation_max_age_days) * 86_400)
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            cache_revalidate: Duration::from_millis(self.cache_revalidate_ms),
            cache_capacity: self.cache_capacity,
        }
    }

    pub fn paths(&self, data_dir: &Path) -> KeyPaths {
        let dir = self.dir.clone().unwrap_or_else(|| data_dir.join("keys"));
        KeyPaths {
            master_key: self
                .master_key_file
                .clone()
                .unwrap_or_else(|| dir.join("master.key")),
            store: dir.join("store"),
            signing_key: dir.join("signing.pk8"),
            pseudonym_key: dir.join("pseudonym.key"),
            blind_index_key: dir.join("blind-index.key"),
            dir,
        }
    }

    /// Checks values, and that no key material would sit inside `pgdata` (the database
    /// cluster directory, which physical backups copy).
    pub fn validate(&self, data_dir: &Path, pgdata: Option<&Path>) -> Result<(), KeysConfigError> {
        if self.rotation_max_age_days == 0 {
            return Err(KeysConfigError {
                key: "keys.rotation_max_age_days",
                message: "must be at least 1".into(),
            });
        }
        if self.cache_capacity == 0 {
            return Err(KeysConfigError {
                key: "keys.cache_capacity",
                message: "must be at least 1".into(),
            });
        }
        if self.master_key_env.trim().is_empty() {
            return Err(KeysConfigError {
                key: "keys.master_key_env",
                message: "must name an environment variable".into(),
            });
        }
        if let Some(pgdata) = pgdata {
            let paths = self.paths(data_dir);
            for (key, p) in [
                ("keys.dir", &paths.dir),
                ("keys.master_key_file", &paths.master_key),
            ] {
                if is_within(p, pgdata) {
                    return Err(KeysConfigError {
                        key,
                        message: format!(
                            "{} is inside the database directory {}; keys must live outside it and its backups",
                            p.display(),
                            pgdata.display()
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether `p` is `dir` or below it, comparing canonical paths where they exist.
fn is_within(p: &Path, dir: &Path) -> bool {
    let canon = |x: &Path| {
        // Canonicalize the longest existing ancestor, then re-append the rest.
        let mut existing = x.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (
                existing.file_name().map(|n| n.to_os_string()),
                existing.parent(),
            ) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
        for name in rest.into_iter().rev() {
            out.push(name);
        }
        out
    };
    canon(p).starts_with(canon(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_paths() {
        let c = KeysConfig::default();
        assert_eq!(c.rotation_max_age(), Duration::from_secs(90 * 86_400));
        let p = c.paths(Path::new("/data"));
        assert_eq!(p.master_key, Path::new("/data/keys/master.key"));
        assert_eq!(p.store, Path::new("/data/keys/store"));
        assert!(
            c.validate(Path::new("/data"), Some(Path::new("/data/pg")))
                .is_ok()
        );
    }

    #[test]
    fn keys_inside_pgdata_are_refused() {
        let c = KeysConfig {
            dir: Some("/data/pg/keys".into()),
            ..KeysConfig::default()
        };
        let err = c
            .validate(Path::new("/data"), Some(Path::new("/data/pg")))
            .unwrap_err();
        assert_eq!(err.key, "keys.dir");
        let c = KeysConfig {
            rotation_max_age_days: 0,
            ..KeysConfig::default()
        };
        assert!(c.validate(Path::new("/data"), None).is_err());
    }

    #[test]
    fn parses_from_toml_like_json_and_rejects_unknown() {
        let c: KeysConfig = serde_json::from_str(r#"{"rotation_max_age_days": 30}"#).unwrap();
        assert_eq!(c.rotation_max_age_days, 30);
        assert_eq!(c.master_key_env, MASTER_KEY_ENV);
        assert!(serde_json::from_str::<KeysConfig>(r#"{"rotation": 30}"#).is_err());
    }
}
