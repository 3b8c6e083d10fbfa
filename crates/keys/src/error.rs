//! The errors of key management ([`KeyError`]) and of field encryption ([`CipherError`]).

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::{KeyId, KeyVersion};

/// Key provider and key store failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the system random generator failed")]
    Random,
    #[error("{path} is readable or writable by others (mode {mode:o}); run `chmod 600` on it")]
    InsecurePermissions { path: PathBuf, mode: u32 },
    /// The master key could not be loaded (bad length, bad base64, unreadable).
    #[error("master key: {0}")]
    MasterKey(String),
    /// The key was wrapped by another master key than the one configured: the wrong
    /// `master.key` or `ORGBASE_MASTER_KEY` is in use.
    #[error(
        "key {key} {version} was wrapped by master key {wrapped_by}, but the configured master key is {configured}: wrong master key"
    )]
    WrongMasterKey {
        key: KeyId,
        version: KeyVersion,
        wrapped_by: String,
        configured: String,
    },
    /// The wrapped key did not authenticate under the right master key: the key file was
    /// altered or a wrapped key was copied between keys or versions.
    #[error("key {key} {version}: the wrapped key does not authenticate (key file altered?)")]
    UnwrapFailed { key: KeyId, version: KeyVersion },
    /// The key was crypto-shredded: its data is unrecoverable, by design.
    #[error("key {key} was destroyed at {destroyed_at}")]
    KeyDestroyed {
        key: KeyId,
        destroyed_at: DateTime<Utc>,
    },
    #[error("no key {0} in the key store")]
    UnknownKey(KeyId),
    #[error("key {key} has no version {version} (current is {current})")]
    UnknownKeyVersion {
        key: KeyId,
        version: KeyVersion,
        current: KeyVersion,
    },
    /// The version was retired after its data was re-encrypted; it no longer decrypts.
    #[error("key {key} {version} was retired at {retired_at}")]
    KeyVersionRetired {
        key: KeyId,
        version: KeyVersion,
        retired_at: DateTime<Utc>,
    },
    #[error("key {key} {version} is the current version and cannot be retired; rotate first")]
    RetireCurrent { key: KeyId, version: KeyVersion },
    #[error("key file {path}: {reason}")]
    CorruptKeyFile { path: PathBuf, reason: String },
    /// A failure inside a key provider (KMS, Vault, …) that none of the above describes.
    #[error("key provider {provider}: {message}")]
    Provider { provider: String, message: String },
}

/// Field encryption and decryption failures. Each names one cause, so that callers (and
/// operators reading logs) can tell a moved ciphertext from a tampered one or a shredded key.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    /// Not a ciphertext of this format: wrong prefix, bad base64, too short, unknown scope.
    #[error("malformed ciphertext: {0}")]
    Malformed(String),
    #[error("unsupported ciphertext format {0:#04x}")]
    UnsupportedFormat(u8),
    /// The ciphertext was made for another organization, table, column or row: it was
    /// moved or copied. (Authentication failed; the context fingerprint in the header
    /// differs from the context given.)
    #[error(
        "ciphertext belongs to another organization, table, column or row (moved or copied value)"
    )]
    ContextMismatch,
    /// The ciphertext did not authenticate although it claims to belong here: it was altered.
    #[error("ciphertext failed authentication (tampered or corrupted)")]
    Tampered,
    /// The plaintext decrypted but is not UTF-8 (from [`crate::FieldCipher::decrypt_string`]).
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
    /// A key problem: destroyed, unknown version, retired, wrong master key, I/O.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl CipherError {
    /// True when the value is unrecoverable because its key was crypto-shredded. Callers
    /// usually show such a value as erased rather than fail.
    pub fn is_key_destroyed(&self) -> bool {
        matches!(self, CipherError::Key(KeyError::KeyDestroyed { .. }))
    }
}
