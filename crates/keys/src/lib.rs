//! Key management and field encryption for orgbase: a master key behind a [`KeyProvider`],
//! versioned per-subject and per-organization data keys in a [`KeyStore`] kept outside the
//! database and its backups, AES-256-GCM field encryption bound to (org, table, column, row)
//! ([`FieldCipher`]), crypto-shredding, and signed certificates of deletion.
//!
//! Start with [`Keys::open`]; `docs/keys.md` describes the design and the files.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use orgbase_keys::{FieldAad, KeyId, Keys, KeysConfig};
//! use uuid::Uuid;
//!
//! let keys = Keys::open(std::path::Path::new("/var/lib/orgbase"), &KeysConfig::default())?;
//! let (org, user, row) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::now_v7().to_string());
//! let place = FieldAad { org, table: "members", column: "email", row: &row };
//! let stored = keys.cipher().encrypt(b"alice@example.com", &place, KeyId::subject(user))?;
//! assert_eq!(keys.cipher().decrypt(&stored, &place)?, b"alice@example.com");
//!
//! // erasure: destroy the person's key, audit it, certify it
//! let tombstone = keys.shred_subject(user)?;
//! assert!(keys.cipher().decrypt(&stored, &place).unwrap_err().is_key_destroyed());
//! let certificate = keys.certify_deletion(user, vec!["database".into()], &[tombstone], "audit:1")?;
//! std::fs::write("certificate.json", certificate.to_json()?)?;
//! # Ok(()) }
//! ```

pub mod blind;
pub mod certificate;
pub mod cipher;
pub mod config;
mod error;
mod fsutil;
mod keyid;
pub mod provider;
pub mod sign;
pub mod store;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use zeroize::Zeroizing;

pub use blind::BlindIndex;
pub use certificate::{
    CertificateError, DeletionCertificate, DestroyedKey, SignedCertificate, parse_public_key,
    verify_certificate,
};
pub use cipher::{CiphertextHeader, FieldAad, FieldCipher, Opener, Reencrypted, is_ciphertext};
pub use config::{KeyPaths, KeysConfig, KeysConfigError};
pub use error::{CipherError, KeyError};
pub use keyid::{KeyId, KeyIdParseError, KeyVersion, Scope};
pub use provider::{KeyProvider, LocalKeyProvider, MasterKeyOrigin, WrapContext};
pub use sign::{Pseudonymizer, ServerSigner};
pub use store::{DataKey, KeyInfo, KeyStore, StoreConfig, Tombstone, VersionInfo};

/// Everything key-related the server needs, opened once at start and shared (`Arc<Keys>` or
/// clones of the parts).
#[derive(Debug)]
pub struct Keys {
    config: KeysConfig,
    paths: KeyPaths,
    store: Arc<KeyStore>,
    cipher: FieldCipher,
    signer: Arc<ServerSigner>,
    pseudonymizer: Arc<Pseudonymizer>,
    blind_index: Arc<BlindIndex>,
}

impl Keys {
    /// Opens the key material under `data_dir` (see [`KeysConfig::paths`]) with the local
    /// master key: from the configured environment variable when set, else from the master
    /// key file, created on first use. Creates the signing key, pseudonym salt and
    /// blind-index key on first use.
    pub fn open(data_dir: &Path, config: &KeysConfig) -> Result<Self, KeyError> {
        let paths = config.paths(data_dir);
        let env = match std::env::var(&config.master_key_env) {
            Ok(v) => Some(Zeroizing::new(v)),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(KeyError::MasterKey(format!(
                    "{} is not valid UTF-8 base64",
                    config.master_key_env
                )));
            }
        };
        let provider = LocalKeyProvider::from_env_value_or_file(
            &config.master_key_env,
            env,
            &paths.master_key,
        )?;
        tracing::info!(kek = provider.kek_id(), origin = ?provider.origin(), "master key loaded");
        Self::open_with_provider(data_dir, config, Arc::new(provider))
    }

    /// Opens the key material with another master key provider (KMS, Vault, tests).
    pub fn open_with_provider(
        data_dir: &Path,
        config: &KeysConfig,
        provider: Arc<dyn KeyProvider>,
    ) -> Result<Self, KeyError> {
        let paths = config.paths(data_dir);
        fsutil::ensure_private_dir(&paths.dir)?;
        let store = Arc::new(KeyStore::open(
            &paths.store,
            provider,
            config.store_config(),
        )?);
        let signer = Arc::new(ServerSigner::open_or_create(&paths.signing_key)?);
        let pseudonymizer = Arc::new(Pseudonymizer::open_or_create(&paths.pseudonym_key)?);
        let blind_index = Arc::new(BlindIndex::open_or_create(&paths.blind_index_key)?);
        Ok(Self {
            config: config.clone(),
            paths,
            cipher: FieldCipher::new(Arc::clone(&store)),
            store,
            signer,
            pseudonymizer,
            blind_index,
        })
    }

    pub fn config(&self) -> &KeysConfig {
        &self.config
    }

    pub fn paths(&self) -> &KeyPaths {
        &self.paths
    }

    pub fn store(&self) -> &Arc<KeyStore> {
        &self.store
    }

    pub fn cipher(&self) -> &FieldCipher {
        &self.cipher
    }

    pub fn signer(&self) -> &Arc<ServerSigner> {
        &self.signer
    }

    pub fn pseudonymizer(&self) -> &Arc<Pseudonymizer> {
        &self.pseudonymizer
    }

    /// The key of the account emails' blind index.
    pub fn blind_index(&self) -> &Arc<BlindIndex> {
        &self.blind_index
    }

    /// Crypto-shreds a person's data key (see [`KeyStore::destroy`]).
    pub fn shred_subject(&self, subject: Uuid) -> Result<Tombstone, KeyError> {
        self.store.destroy(KeyId::subject(subject))
    }

    /// A signed certificate of deletion for `subject`, listing the keys in `tombstones`. Call
    /// it after the audit entry recording the shred was written, with that entry's id.
    pub fn certify_deletion(
        &self,
        subject: Uuid,
        stores_touched: Vec<String>,
        tombstones: &[Tombstone],
        audit_entry: impl Into<String>,
    ) -> Result<SignedCertificate, CertificateError> {
        DeletionCertificate::new(
            self.pseudonymizer.pseudonym(subject),
            stores_touched,
            tombstones,
            audit_entry,
            &self.signer,
        )
        .sign(&self.signer)
    }

    /// Rotates every live key whose current version is older than the configured maximum age
    /// at `now`; returns the keys rotated with their new versions. Each should be audited.
    pub fn rotate_due(&self, now: DateTime<Utc>) -> Result<Vec<(KeyId, KeyVersion)>, KeyError> {
        let mut rotated = Vec::new();
        for info in self
            .store
            .due_for_rotation(self.config.rotation_max_age(), now)?
        {
            rotated.push((info.key, self.store.rotate(info.key)?));
        }
        Ok(rotated)
    }
}
