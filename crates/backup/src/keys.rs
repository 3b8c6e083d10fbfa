//! Backup master keys: versions kept under `<data_dir>/keys/backup/` (directory 0700, files
//! 0600), never in PostgreSQL and never inside a backup; or given from outside (`backup.master_key`,
//! `backup.key_file`). Everything about where keys come from is in this module, so a general key
//! provider can replace it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::BackupError;

/// One master key version.
pub struct MasterKey {
    /// A fingerprint of the key (`bk-` and 16 hex digits): recorded in every backup it protects.
    pub id: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    fn new(bytes: [u8; 32], version: u32, created_at: DateTime<Utc>) -> Self {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"orgbase backup master key id\0");
        ctx.update(&bytes);
        let digest = ctx.finish();
        Self {
            id: format!("bk-{}", hex::encode(&digest.as_ref()[..8])),
            version,
            created_at,
            bytes: Zeroizing::new(bytes),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    id: String,
    version: u32,
    created_at: DateTime<Utc>,
    key: String,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `<data_dir>/keys/backup`: orgbase makes and rotates them.
    Dir(PathBuf),
    /// Hex keys given by the operator (environment or file), first one current.
    External {
        origin: String,
        text: orgbase_core::Secret,
    },
}

/// Every known master key version; the newest encrypts.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<MasterKey>,
    source: KeySource,
}

fn random_key() -> Result<[u8; 32], BackupError> {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k)
        .map_err(|_| BackupError::Crypto("the system random generator failed".into()))?;
    Ok(k)
}

fn parse_hex_key(text: &str, origin: &str) -> Result<[u8; 32], BackupError> {
    let bytes = hex::decode(text.trim())
        .map_err(|_| BackupError::Key(format!("{origin}: a master key must be 64 hex digits")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| BackupError::Key(format!("{origin}: a master key must be 64 hex digits")))
}

impl KeyRing {
    /// The key source configured for `config`.
    pub fn source(config: &orgbase_core::Config) -> Result<KeySource, BackupError> {
        if let Some(k) = &config.backup.master_key {
            return Ok(KeySource::External {
                origin: "backup.master_key (ORGBASE_BACKUP__MASTER_KEY)".into(),
                text: k.clone(),
            });
        }
        if let Some(path) = &config.backup.key_file {
            let text = fs::read_to_string(path).map_err(|e| {
                BackupError::Key(format!("backup.key_file {}: {e}", path.display()))
            })?;
            return Ok(KeySource::External {
                origin: format!("backup.key_file {}", path.display()),
                text: orgbase_core::Secret::new(text),
            });
        }
        Ok(KeySource::Dir(config.data_dir.join("keys").join("backup")))
    }

    /// Load the keys; with `create`, make the first key when the directory holds none.
    pub fn load(source: KeySource, create: bool) -> Result<Self, BackupError> {
        let mut keys = Vec::new();
        match &source {
            KeySource::External { origin, text } => {
                let lines: Vec<&str> = text
                    .expose()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect();
                let n = lines.len() as u32;
                for (i, line) in lines.iter().enumerate() {
                    let bytes = parse_hex_key(line, &format!("{origin} line {}", i + 1))?;
                    // The first line is current: give it the highest version.
                    keys.push(MasterKey::new(
                        bytes,
                        n - i as u32,
                        DateTime::<Utc>::MIN_UTC,
                    ));
                }
                if keys.is_empty() {
                    return Err(BackupError::Key(format!("{origin} holds no key")));
                }
            }
            KeySource::Dir(dir) => {
                let entries = match fs::read_dir(dir) {
                    Ok(e) => e.flatten().collect::<Vec<_>>(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(BackupError::io(format!("reading {}", dir.display()))(e)),
                };
                for entry in entries {
                    let path = entry.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("key") {
                        continue;
                    }
                    let text = Zeroizing::new(
                        fs::read_to_string(&path)
                            .map_err(BackupError::io(format!("reading {}", path.display())))?,
                    );
                    let file: KeyFile = serde_json::from_str(&text).map_err(|e| {
                        BackupError::Key(format!("{}: not a backup key file: {e}", path.display()))
                    })?;
                    let bytes = parse_hex_key(&file.key, &path.display().to_string())?;
                    let key = MasterKey::new(bytes, file.version, file.created_at);
                    if key.id != file.id {
                        return Err(BackupError::Key(format!(
                            "{}: the key does not match its id {} (damaged file)",
                            path.display(),
                            file.id
                        )));
                    }
                    keys.push(key);
                }
            }
        }
        keys.sort_by_key(|k| k.version);
        let mut ring = Self { keys, source };
        if ring.keys.is_empty() {
            if !create {
                let KeySource::Dir(dir) = &ring.source else {
                    return Err(BackupError::Key("no backup master key".into()));
                };
                return Err(BackupError::Key(format!(
                    "no backup master key in {}: backups made elsewhere need their key files \
                     copied there (or set backup.master_key / backup.key_file)",
                    dir.display()
                )));
            }
            ring.rotate()?;
        }
        Ok(ring)
    }

    /// The key new backups are encrypted with.
    pub fn current(&self) -> Result<&MasterKey, BackupError> {
        self.keys
            .last()
            .ok_or_else(|| BackupError::Key("no backup master key".into()))
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn all(&self) -> &[MasterKey] {
        &self.keys
    }

    pub fn dir(&self) -> Option<&Path> {
        match &self.source {
            KeySource::Dir(d) => Some(d),
            KeySource::External { .. } => None,
        }
    }

    /// Make a new current key version; older versions stay to decrypt older backups.
    pub fn rotate(&mut self) -> Result<&MasterKey, BackupError> {
        let KeySource::Dir(dir) = &self.source else {
            return Err(BackupError::Key(
                "the backup master key is given from outside (backup.master_key or \
                 backup.key_file): rotate it there by putting the new key on the first line \
                 of the key file and keeping the old ones below it"
                    .into(),
            ));
        };
        let version = self.keys.last().map_or(1, |k| k.version + 1);
        let key = MasterKey::new(random_key()?, version, Utc::now());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(BackupError::io(format!("creating {}", dir.display())))?;
        let file = KeyFile {
            id: key.id.clone(),
            version,
            created_at: key.created_at,
            key: hex::encode(key.bytes()),
        };
        let text = Zeroizing::new(
            serde_json::to_string_pretty(&file).map_err(|e| BackupError::Key(e.to_string()))?,
        );
        let path = dir.join(format!("v{version:04}-{}.key", key.id));
        let tmp = dir.join(format!(".v{version:04}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(BackupError::io(format!("creating {}", tmp.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(BackupError::io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path)
            .map_err(BackupError::io(format!("renaming to {}", path.display())))?;
        tracing::info!(key_id = %key.id, version, path = %path.display(), "new backup master key version");
        self.keys.push(key);
        self.current()
    }

    /// Rotate when the current key is older than `max_age` (keys from outside are left alone).
    pub fn rotate_if_older(&mut self, max_age: Duration) -> Result<bool, BackupError> {
        if self.dir().is_none() {
            return Ok(false);
        }
        let age = Utc::now() - self.current()?.created_at;
        if age.to_std().unwrap_or_default() > max_age {
            self.rotate()?;
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_created_rotated_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("keys");
        let mut ring = KeyRing::load(KeySource::Dir(d.clone()), true).unwrap();
        let first = ring.current().unwrap().id.clone();
        ring.rotate().unwrap();
        let second = ring.current().unwrap().id.clone();
        assert_ne!(first, second);
        let again = KeyRing::load(KeySource::Dir(d.clone()), false).unwrap();
        assert_eq!(again.current().unwrap().id, second);
        assert!(again.get(&first).is_some());
        use std::os::unix::fs::PermissionsExt;
        for e in fs::read_dir(&d).unwrap() {
            let mode = e.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!ring.rotate_if_older(Duration::from_secs(3600)).unwrap());
    }

    #[test]
    fn missing_and_bad_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeyRing::load(KeySource::Dir(dir.path().join("none")), false).unwrap_err();
        assert!(err.to_string().contains("no backup master key"), "{err}");
        let err = KeyRing::load(
            KeySource::External {
                origin: "backup.key_file /x".into(),
                text: orgbase_core::Secret::new("abcd\n"),
            },
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("backup.key_file /x line 1"),
            "{err}"
        );
        let ring = KeyRing::load(
            KeySource::External {
                origin: "env".into(),
                text: orgbase_core::Secret::new(format!(
                    "{}\n{}\n",
                    "11".repeat(32),
                    "22".repeat(32)
                )),
            },
            false,
        )
        .unwrap();
        assert_eq!(ring.current().unwrap().bytes(), &[0x11; 32]);
        assert_eq!(ring.all().len(), 2);
    }
}
