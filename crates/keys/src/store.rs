//! The key store: versioned data keys per subject and per organization, kept only wrapped by
//! the master key, one small JSON file per key under `DATA/keys/store/`, outside the
//! database and its backups. Destroying a key replaces its file with a tombstone.
//!
//! Concurrency: every change (create, rotate, retire, destroy) runs under an in-process mutex
//! and an exclusive `flock` on `store/.lock`, re-reads the key file, and replaces it
//! atomically (temp file, fsync, rename, fsync of the directory). Unwrapped keys are cached
//! in memory; a cached entry is re-checked against its file (inode, size, times) once per
//! `cache_revalidate`, so a rotation or destruction made by another process (the CLI) is seen
//! within that interval, and one made by this process at once.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, io};
use crate::provider::{KEY_LEN, KeyProvider, WrapContext};
use crate::{KeyError, KeyId, KeyVersion};

/// The version of the key file format.
const FILE_FORMAT: u32 = 1;
const LOCK_FILE: &str = ".lock";

/// Key store tuning. `Default` gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long a cached key is trusted before its file is checked again for changes made by
    /// another process. Zero checks on every use.
    pub cache_revalidate: Duration,
    /// Most keys kept unwrapped in memory; past it, arbitrary entries are dropped (and
    /// zeroized) and unwrapped again on next use.
    pub cache_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_revalidate: Duration::from_secs(1),
            cache_capacity: 100_000,
        }
    }
}

/// An unwrapped data key (AES-256-GCM), usable for field encryption. The key schedule lives in
/// aws-lc memory, which is cleansed when the key is dropped; the raw bytes are zeroized as soon
/// as the key is built. It has no accessor for its bytes.
pub struct DataKey {
    aead: LessSafeKey,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

impl DataKey {
    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::Provider {
            provider: "store".into(),
            message: format!("data key has {} bytes, expected {KEY_LEN}", bytes.len()),
        })?;
        Ok(Self {
            aead: LessSafeKey::new(key),
        })
    }

    pub(crate) fn aead(&self) -> &LessSafeKey {
        &self.aead
    }
}

/// One version of a data key as the store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionRecord {
    version: KeyVersion,
    created_at: DateTime<Utc>,
    /// The master key that wrapped `wrapped`; absent once retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kek_id: Option<String>,
    /// base64url of the provider's wrapped key; absent once retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveFile {
    format: u32,
    key_id: KeyId,
    current: KeyVersion,
    versions: Vec<VersionRecord>,
}

/// The record a destroyed key leaves behind: proof of when it was crypto-shredded and which
/// versions went with it. It holds no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    pub format: u32,
    pub key_id: KeyId,
    pub destroyed_at: DateTime<Utc>,
    pub versions_destroyed: Vec<KeyVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum KeyFile {
    Live(LiveFile),
    Destroyed(Tombstone),
}

/// What [`KeyStore::list`] and [`KeyStore::info`] report about one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub version: KeyVersion,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    /// The master key that wraps this version (`None` once retired).
    pub kek_id: Option<String>,
}

/// What the store knows about one key, without unwrapping it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub key: KeyId,
    /// `None` when destroyed.
    pub current: Option<KeyVersion>,
    pub versions: Vec<VersionInfo>,
    pub destroyed: Option<Tombstone>,
}

impl KeyInfo {
    /// When the current version was created.
    pub fn current_created_at(&self) -> Option<DateTime<Utc>> {
        let current = self.current?;
        self.versions
            .iter()
            .find(|v| v.version == current)
            .map(|v| v.created_at)
    }

    /// Age of the current version at `now`.
    pub fn age(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.current_created_at().map(|c| now - c)
    }

    /// Whether the current version is older than `max_age` (90 days by default).
    pub fn rotation_due(&self, max_age: Duration, now: DateTime<Utc>) -> bool {
        match (self.age(now), chrono::Duration::from_std(max_age)) {
            (Some(age), Ok(max)) => age >= max,
            _ => false,
        }
    }

    /// Versions that still decrypt but are not current: what a re-encryption job moves off.
    pub fn old_active_versions(&self) -> Vec<KeyVersion> {
        self.versions
            .iter()
            .filter(|v| Some(v.version) != self.current && v.retired_at.is_none())
            .map(|v| v.version)
            .collect()
    }
}

impl From<&KeyFile> for KeyInfo {
    fn from(f: &KeyFile) -> Self {
        match f {
            KeyFile::Live(l) => KeyInfo {
                key: l.key_id,
                current: Some(l.current),
                versions: l
                    .versions
                    .iter()
                    .map(|v| VersionInfo {
                        version: v.version,
                        created_at: v.created_at,
                        retired_at: v.retired_at,
                        kek_id: v.kek_id.clone(),
                    })
                    .collect(),
                destroyed: None,
            },
            KeyFile::Destroyed(t) => KeyInfo {
                key: t.key_id,
                current: None,
                versions: Vec::new(),
                destroyed: Some(t.clone()),
            },
        }
    }
}

/// Identity of a key file's content, to notice a replacement by another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime().wrapping_mul(1_000_000_000) + meta.mtime_nsec(),
            ctime_ns: meta.ctime().wrapping_mul(1_000_000_000) + meta.ctime_nsec(),
        }
    }
}

enum Slot {
    Active(Arc<DataKey>),
    Retired(DateTime<Utc>),
}

enum State {
    Live {
        current: KeyVersion,
        versions: BTreeMap<KeyVersion, Slot>,
    },
    Destroyed(Tombstone),
}

struct Cached {
    key: KeyId,
    state: State,
    stamp: Option<Stamp>,
    /// Nanoseconds since the store's epoch when `stamp` was last compared with the file.
    checked: AtomicU64,
}

impl Cached {
    fn current(&self) -> Result<(KeyVersion, Arc<DataKey>), KeyError> {
        match &self.state {
            State::Destroyed(t) => Err(destroyed(t)),
            State::Live { current, versions } => match versions.get(current) {
                Some(Slot::Active(k)) => Ok((*current, Arc::clone(k))),
                // A file whose current version is retired is refused when loaded.
                _ => Err(KeyError::UnknownKey(self.key)),
            },
        }
    }

    fn version(&self, version: KeyVersion) -> Result<Arc<DataKey>, KeyError> {
        match &self.state {
            State::Destroyed(t) => Err(destroyed(t)),
            State::Live { current, versions } => match versions.get(&version) {
                Some(Slot::Active(k)) => Ok(Arc::clone(k)),
                Some(Slot::Retired(at)) => Err(KeyError::KeyVersionRetired {
                    key: self.key,
                    version,
                    retired_at: *at,
                }),
                None => Err(KeyError::UnknownKeyVersion {
                    key: self.key,
                    version,
                    current: *current,
                }),
            },
        }
    }
}

fn destroyed(t: &Tombstone) -> KeyError {
    KeyError::KeyDestroyed {
        key: t.key_id,
        destroyed_at: t.destroyed_at,
    }
}

/// Versioned data keys, wrapped at rest, unwrapped and cached in memory. Cheap to share
/// (`Arc<KeyStore>`); all methods take `&self` and are safe to call from many threads.
pub struct KeyStore {
    dir: PathBuf,
    provider: Arc<dyn KeyProvider>,
    config: StoreConfig,
    cache: RwLock<HashMap<KeyId, Arc<Cached>>>,
    /// Serializes changes and cache fills in this process; holds the `flock`ed lock file.
    write: Mutex<File>,
    epoch: Instant,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("provider", &self.provider)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Holds the process mutex and the exclusive file lock; both released on drop.
struct WriteGuard<'a> {
    file: MutexGuard<'a, File>,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl KeyStore {
    /// Opens (creating, mode 0700) the store directory `dir`.
    pub fn open(
        dir: impl Into<PathBuf>,
        provider: Arc<dyn KeyProvider>,
        config: StoreConfig,
    ) -> Result<Self, KeyError> {
        let dir = dir.into();
        fsutil::ensure_private_dir(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        let store = Self {
            dir,
            provider,
            config,
            cache: RwLock::new(HashMap::new()),
            write: Mutex::new(lock),
            epoch: Instant::now(),
        };
        {
            let _g = store.lock()?;
            store.remove_temp_files(None)?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// The current version of `key`, created (v1) if the key does not exist yet. Fails with
    /// [`KeyError::KeyDestroyed`] for a destroyed key: a shredded subject gets no new key.
    pub fn current(&self, key: KeyId) -> Result<(KeyVersion, Arc<DataKey>), KeyError> {
        if let Some(c) = self.lookup(key)? {
            return c.current();
        }
        let g = self.lock()?;
        let c = match self.read_file(key)? {
            Some((file, stamp)) => self.fill(&g, key, file, Some(stamp))?,
            None => {
                let now = Utc::now();
                let record = self.new_version(key, KeyVersion(1), now)?;
                let file = KeyFile::Live(LiveFile {
                    format: FILE_FORMAT,
                    key_id: key,
                    current: KeyVersion(1),
                    versions: vec![record],
                });
                self.write_file(&g, key, &file)?
            }
        };
        c.current()
    }

    /// A specific version of `key`, for decryption.
    pub fn get(&self, key: KeyId, version: KeyVersion) -> Result<Arc<DataKey>, KeyError> {
        match self.lookup(key)? {
            Some(c) => c.version(version),
            None => Err(KeyError::UnknownKey(key)),
        }
    }

    /// Adds a new version and makes it current at once. Older versions keep decrypting
    /// until retired. Returns the new version.
    pub fn rotate(&self, key: KeyId) -> Result<KeyVersion, KeyError> {
        let g = self.lock()?;
        let mut live = self.read_live(key)?;
        let next = live
            .versions
            .iter()
            .map(|v| v.version.0)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .map(KeyVersion)
            .ok_or_else(|| KeyError::CorruptKeyFile {
                path: self.path(key),
                reason: "version numbers exhausted".into(),
            })?;
        live.versions.push(self.new_version(key, next, Utc::now())?);
        live.current = next;
        self.write_file(&g, key, &KeyFile::Live(live))?;
        tracing::info!(key = %key, version = %next, "data key rotated");
        Ok(next)
    }

    /// Retires an old version: its wrapped key is deleted, so values still encrypted under it
    /// no longer decrypt ([`KeyError::KeyVersionRetired`]). Run it only after the
    /// re-encryption job has moved every value to a newer version. Idempotent.
    pub fn retire(&self, key: KeyId, version: KeyVersion) -> Result<(), KeyError> {
        let g = self.lock()?;
        let mut live = self.read_live(key)?;
        if live.current == version {
            return Err(KeyError::RetireCurrent { key, version });
        }
        let current = live.current;
        let record = live
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or(KeyError::UnknownKeyVersion {
                key,
                version,
                current,
            })?;
        if record.retired_at.is_some() {
            return Ok(());
        }
        record.retired_at = Some(Utc::now());
        record.wrapped = None;
        record.kek_id = None;
        self.write_file(&g, key, &KeyFile::Live(live))?;
        tracing::info!(key = %key, version = %version, "data key version retired");
        Ok(())
    }

    /// Crypto-shreds `key`: all its versions are removed from the store (the file is
    /// atomically replaced by a [`Tombstone`] and the directory fsynced) and from the cache.
    /// Every value encrypted under it, in the database, the audit trail and every backup,
    /// becomes unrecoverable; later use fails with [`KeyError::KeyDestroyed`]. Destroying a
    /// key that never existed records a tombstone too (so it is never created later).
    /// Idempotent: destroying again returns the first tombstone.
    pub fn destroy(&self, key: KeyId) -> Result<Tombstone, KeyError> {
        let g = self.lock()?;
        let versions_destroyed = match self.read_file(key)? {
            Some((KeyFile::Destroyed(t), _)) => return Ok(t),
            Some((KeyFile::Live(l), _)) => l.versions.iter().map(|v| v.version).collect(),
            None => Vec::new(),
        };
        let tombstone = Tombstone {
            format: FILE_FORMAT,
            key_id: key,
            destroyed_at: Utc::now(),
            versions_destroyed,
        };
        self.write_file(&g, key, &KeyFile::Destroyed(tombstone.clone()))?;
        // A crash while writing this key's file could have left a temp copy of the wrapped key.
        self.remove_temp_files(Some(key))?;
        tracing::info!(key = %key, "data key destroyed (crypto-shredded)");
        Ok(tombstone)
    }

    /// The tombstone of a destroyed key, if it was destroyed.
    pub fn tombstone(&self, key: KeyId) -> Result<Option<Tombstone>, KeyError> {
        Ok(match self.read_file(key)? {
            Some((KeyFile::Destroyed(t), _)) => Some(t),
            _ => None,
        })
    }

    /// What the store records about `key` (read from disk, no unwrapping).
    pub fn info(&self, key: KeyId) -> Result<Option<KeyInfo>, KeyError> {
        Ok(self.read_file(key)?.map(|(f, _)| KeyInfo::from(&f)))
    }

    /// Every key in the store, live and destroyed, sorted by id.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        let entries =
            fs::read_dir(&self.dir).map_err(io(format!("listing {}", self.dir.display())))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", self.dir.display())))?;
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(KeyId::from_file_name) else {
                continue;
            };
            if let Some((f, _)) = self.read_file(key)? {
                out.push(KeyInfo::from(&f));
            }
        }
        out.sort_by_key(|k| k.key);
        Ok(out)
    }

    /// Live keys whose current version is at least `max_age` old at `now`.
    pub fn due_for_rotation(
        &self,
        max_age: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<KeyInfo>, KeyError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|k| k.rotation_due(max_age, now))
            .collect())
    }

    /// Master key rotation: re-wraps, under this store's provider, every live version that was
    /// wrapped by `old` (unwrapping with `old`). Data keys and ciphertexts do not change.
    /// Resumable: versions already under the new master key are skipped. Returns how many
    /// versions were re-wrapped. Once it has run, the old master key can be destroyed, which
    /// also makes any stray copy of a destroyed key's old file (on a disk block, in an old key
    /// backup) unrecoverable. Run it while no other process uses the store with `old`.
    pub fn rewrap_from(&self, old: &dyn KeyProvider) -> Result<usize, KeyError> {
        let mut count = 0;
        for info in self.list()? {
            if info.destroyed.is_some() {
                continue;
            }
            let key = info.key;
            let g = self.lock()?;
            let mut live = self.read_live(key)?;
            let mut changed = false;
            for v in &mut live.versions {
                let (Some(kek_id), Some(wrapped)) = (&v.kek_id, &v.wrapped) else {
                    continue;
                };
                if kek_id == self.provider.kek_id() {
                    continue;
                }
                if !old.can_unwrap(kek_id) {
                    return Err(KeyError::WrongMasterKey {
                        key,
                        version: v.version,
                        wrapped_by: kek_id.clone(),
                        configured: old.kek_id().to_string(),
                    });
                }
                let context = WrapContext {
                    key,
                    version: v.version,
                };
                let raw = B64
                    .decode(wrapped)
                    .map_err(|_| KeyError::CorruptKeyFile {
                        path: self.path(key),
                        reason: format!("{}: wrapped key is not base64", v.version),
                    })
                    .and_then(|w| old.unwrap(&w, &context))?;
                v.wrapped = Some(B64.encode(self.provider.wrap(&raw, &context)?));
                v.kek_id = Some(self.provider.kek_id().to_string());
                changed = true;
                count += 1;
            }
            if changed {
                self.write_file(&g, key, &KeyFile::Live(live))?;
            }
        }
        if count > 0 {
            tracing::info!(
                versions = count,
                kek = self.provider.kek_id(),
                "data keys re-wrapped under a new master key"
            );
        }
        Ok(count)
    }

    /// Drops every unwrapped key from memory (they are unwrapped again on next use).
    pub fn clear_cache(&self) {
        self.cache_write().clear();
    }

    // ---- internals ----

    fn path(&self, key: KeyId) -> PathBuf {
        self.dir.join(key.file_name())
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyId, Arc<Cached>>> {
        // The map holds only complete entries, so a panic elsewhere leaves it consistent.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<KeyId, Arc<Cached>>> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> Result<WriteGuard<'_>, KeyError> {
        let file = self.write.lock().unwrap_or_else(|e| e.into_inner());
        file.lock().map_err(io(format!(
            "locking {}",
            self.dir.join(LOCK_FILE).display()
        )))?;
        Ok(WriteGuard { file })
    }

    /// The cached entry for `key`, refreshed from disk when stale; `None` when the key file
    /// does not exist.
    fn lookup(&self, key: KeyId) -> Result<Option<Arc<Cached>>, KeyError> {
        let hit = self.cache_read().get(&key).cloned();
        let was_cached = hit.is_some();
        if let Some(c) = hit {
            let now = self.now_ns();
            let checked = c.checked.load(Ordering::Relaxed);
            let window = u64::try_from(self.config.cache_revalidate.as_nanos()).unwrap_or(u64::MAX);
            if now.saturating_sub(checked) < window {
                return Ok(Some(c));
            }
            if self.stamp(key)? == c.stamp {
                c.checked.store(now, Ordering::Relaxed);
                return Ok(Some(c));
            }
        }
        let g = self.lock()?;
        match self.read_file(key)? {
            Some((file, stamp)) => Ok(Some(self.fill(&g, key, file, Some(stamp))?)),
            None => {
                self.cache_write().remove(&key);
                if was_cached {
                    // Never silently make a new v1 over a key that existed: its values would
                    // then fail as tampered instead of naming the cause.
                    return Err(KeyError::CorruptKeyFile {
                        path: self.path(key),
                        reason: "the key file was removed outside orgbase; restore it from the key backup, or destroy the key".into(),
                    });
                }
                Ok(None)
            }
        }
    }

    fn stamp(&self, key: KeyId) -> Result<Option<Stamp>, KeyError> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(Stamp::of(&m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    fn read_file(&self, key: KeyId) -> Result<Option<(KeyFile, Stamp)>, KeyError> {
        let path = self.path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("opening {}", path.display()))(e)),
        };
        let stamp = file
            .metadata()
            .map(|m| Stamp::of(&m))
            .map_err(io(format!("reading {}", path.display())))?;
        let parsed: KeyFile =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
                KeyError::CorruptKeyFile {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
        let (format, id) = match &parsed {
            KeyFile::Live(l) => (l.format, l.key_id),
            KeyFile::Destroyed(t) => (t.format, t.key_id),
        };
        if format != FILE_FORMAT {
            return Err(KeyError::CorruptKeyFile {
                path,
                reason: format!("unsupported format {format}"),
            });
        }
        if id != key {
            return Err(KeyError::CorruptKeyFile {
                path,
                reason: format!("holds key {id}, not {key}"),
            });
        }
        Ok(Some((parsed, stamp)))
    }

    fn read_live(&self, key: KeyId) -> Result<LiveFile, KeyError> {
        match self.read_file(key)? {
            Some((KeyFile::Live(l), _)) => Ok(l),
            Some((KeyFile::Destroyed(t), _)) => Err(destroyed(&t)),
            None => Err(KeyError::UnknownKey(key)),
        }
    }

    fn new_version(
        &self,
        key: KeyId,
        version: KeyVersion,
        now: DateTime<Utc>,
    ) -> Result<VersionRecord, KeyError> {
        let dek = fsutil::random::<KEY_LEN>()?;
        let wrapped = self
            .provider
            .wrap(dek.as_ref(), &WrapContext { key, version })?;
        Ok(VersionRecord {
            version,
            created_at: now,
            kek_id: Some(self.provider.kek_id().to_string()),
            wrapped: Some(B64.encode(wrapped)),
            retired_at: None,
        })
    }

    /// Writes `file` for `key` and puts its unwrapped form in the cache.
    fn write_file(
        &self,
        g: &WriteGuard<'_>,
        key: KeyId,
        file: &KeyFile,
    ) -> Result<Arc<Cached>, KeyError> {
        let path = self.path(key);
        let mut bytes = serde_json::to_vec_pretty(file).map_err(|e| KeyError::CorruptKeyFile {
            path: path.clone(),
            reason: format!("encoding: {e}"),
        })?;
        bytes.push(b'\n');
        fsutil::write_atomic(&path, &bytes)?;
        let stamp = self.stamp(key)?;
        self.fill(g, key, file.clone(), stamp)
    }

    /// Unwraps `file` into a cache entry and inserts it. Only called with the write lock held,
    /// so a slower reader never replaces a newer entry with an older one.
    fn fill(
        &self,
        _g: &WriteGuard<'_>,
        key: KeyId,
        file: KeyFile,
        stamp: Option<Stamp>,
    ) -> Result<Arc<Cached>, KeyError> {
        let state = match file {
            KeyFile::Destroyed(t) => State::Destroyed(t),
            KeyFile::Live(l) => self.unwrap_all(&l)?,
        };
        let cached = Arc::new(Cached {
            key,
            state,
            stamp,
            checked: AtomicU64::new(self.now_ns()),
        });
        let mut cache = self.cache_write();
        if cache.len() >= self.config.cache_capacity.max(1) && !cache.contains_key(&key) {
            // Drop about a tenth of the entries; they are unwrapped again when used.
            let n = (self.config.cache_capacity / 10).max(1);
            let victims: Vec<KeyId> = cache.keys().take(n).copied().collect();
            for v in victims {
                cache.remove(&v);
            }
        }
        cache.insert(key, Arc::clone(&cached));
        Ok(cached)
    }

    fn unwrap_all(&self, l: &LiveFile) -> Result<State, KeyError> {
        let path = self.path(l.key_id);
        let corrupt = |reason: String| KeyError::CorruptKeyFile {
            path: path.clone(),
            reason,
        };
        let mut versions = BTreeMap::new();
        for v in &l.versions {
            let slot = match (&v.retired_at, &v.wrapped, &v.kek_id) {
                (Some(at), _, _) => Slot::Retired(*at),
                (None, Some(wrapped), Some(kek_id)) => {
                    if !self.provider.can_unwrap(kek_id) {
                        return Err(KeyError::WrongMasterKey {
                            key: l.key_id,
                            version: v.version,
                            wrapped_by: kek_id.clone(),
                            configured: self.provider.kek_id().to_string(),
                        });
                    }
                    let wrapped = B64.decode(wrapped).map_err(|_| {
                        corrupt(format!("{}: wrapped key is not base64", v.version))
                    })?;
                    let context = WrapContext {
                        key: l.key_id,
                        version: v.version,
                    };
                    let raw = self.provider.unwrap(&wrapped, &context)?;
                    Slot::Active(Arc::new(DataKey::from_bytes(&raw)?))
                }
                _ => return Err(corrupt(format!("{}: no wrapped key", v.version))),
            };
            if versions.insert(v.version, slot).is_some() {
                return Err(corrupt(format!("{} appears twice", v.version)));
            }
        }
        match versions.get(&l.current) {
            Some(Slot::Active(_)) => Ok(State::Live {
                current: l.current,
                versions,
            }),
            _ => Err(corrupt(format!(
                "current version {} is missing or retired",
                l.current
            ))),
        }
    }

    /// Removes temp files left by interrupted writes (all, or those of one key). Called with
    /// the write lock held, so no writer is between creating and renaming one.
    fn remove_temp_files(&self, key: Option<KeyId>) -> Result<(), KeyError> {
        let prefix = key.map(|k| format!(".{}.", k.file_name()));
        let entries =
            fs::read_dir(&self.dir).map_err(io(format!("listing {}", self.dir.display())))?;
        let mut removed = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let matches = match &prefix {
                Some(p) => name.starts_with(p.as_str()),
                None => name.starts_with('.') && name != LOCK_FILE,
            };
            if matches && name.ends_with(".tmp") {
                fs::remove_file(entry.path())
                    .map_err(io(format!("removing {}", entry.path().display())))?;
                removed = true;
            }
        }
        if removed {
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
