//! The server's Ed25519 signing key (`DATA/keys/signing.pk8`, PKCS#8, 0600), used for
//! certificates of deletion, and the salt-keyed pseudonym of a data subject
//! (`DATA/keys/pseudonym.key`, 32 bytes, 0600).

use std::fmt;
use std::path::Path;

use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::KeyError;
use crate::fsutil;

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// The server's signing key.
pub struct ServerSigner {
    pair: Ed25519KeyPair,
    public_key: [u8; PUBLIC_KEY_LEN],
    key_id: String,
}

impl fmt::Debug for ServerSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ServerSigner {
    /// Loads the PKCS#8 key at `path`, generating it (0600, directory 0700) on first use.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let pkcs8 = fsutil::read_or_create_secret(path, || {
            let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
                .map_err(|_| KeyError::Random)?;
            Ok(Zeroizing::new(doc.as_ref().to_vec()))
        })?;
        Self::from_pkcs8(&pkcs8).map_err(|e| match e {
            KeyError::MasterKey(m) => KeyError::CorruptKeyFile {
                path: path.to_path_buf(),
                reason: m,
            },
            other => other,
        })
    }

    /// A signer from a PKCS#8 (v1 or v2) Ed25519 private key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| KeyError::MasterKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let mut public_key = [0u8; PUBLIC_KEY_LEN];
        public_key.copy_from_slice(pair.public_key().as_ref());
        let key_id = signing_key_id(&public_key);
        Ok(Self {
            pair,
            public_key,
            key_id,
        })
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public_key
    }

    /// The public key in standard base64, as certificates carry it.
    pub fn public_key_base64(&self) -> String {
        B64.encode(self.public_key)
    }

    /// `ed25519:` + the first 8 bytes of SHA-256(public key), hex.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// An Ed25519 signature (64 bytes) over `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// The id of an Ed25519 public key: `ed25519:` + hex of the first 8 bytes of its SHA-256.
pub fn signing_key_id(public_key: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, public_key);
    format!("ed25519:{}", hex::encode(&d.as_ref()[..8]))
}

/// Checks an Ed25519 signature.
pub fn verify_signature(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(msg, sig)
        .is_ok()
}

/// Turns a subject (person) id into a stable pseudonymous id for certificates and reports:
/// `hmac-sha256:` + hex(HMAC-SHA256(server salt, `orgbase.subject.v1` NUL ‖ uuid bytes)).
///
/// Keyed, so that someone holding a certificate cannot confirm a guessed user id, while the
/// operator (who has the salt) can answer "was this person erased?" by recomputing it. The salt
/// lives in `DATA/keys/pseudonym.key`, backed up with the keys; losing it only means old
/// certificates can no longer be matched to a user id.
pub struct Pseudonymizer {
    key: hmac::Key,
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer([redacted])")
    }
}

/// The prefix of a pseudonymous subject id.
pub const PSEUDONYM_PREFIX: &str = "hmac-sha256:";

impl Pseudonymizer {
    /// Loads the salt at `path`, creating 32 random bytes (0600) on first use.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let salt = fsutil::read_or_create_secret(path, || {
            Ok(Zeroizing::new(fsutil::random::<32>()?.to_vec()))
        })?;
        Ok(Self::from_salt(&salt))
    }

    pub fn from_salt(salt: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, salt),
        }
    }

    /// The pseudonymous id of `subject`.
    pub fn pseudonym(&self, subject: Uuid) -> String {
        let mut msg = Vec::with_capacity(36);
        msg.extend_from_slice(b"orgbase.subject.v1\0");
        msg.extend_from_slice(subject.as_bytes());
        let tag = hmac::sign(&self.key, &msg);
        format!("{PSEUDONYM_PREFIX}{}", hex::encode(tag.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_persists_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("signing.pk8");
        let a = ServerSigner::open_or_create(&p).unwrap();
        let b = ServerSigner::open_or_create(&p).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert!(a.key_id().starts_with("ed25519:"));
        let sig = a.sign(b"hello");
        assert_eq!(sig.len(), 64);
        assert!(verify_signature(&b.public_key(), b"hello", &sig));
        assert!(!verify_signature(&b.public_key(), b"hellO", &sig));
    }

    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let s = Uuid::new_v4();
        let a = Pseudonymizer::from_salt(&[1; 32]);
        let b = Pseudonymizer::from_salt(&[2; 32]);
        assert_eq!(a.pseudonym(s), a.pseudonym(s));
        assert_ne!(a.pseudonym(s), b.pseudonym(s));
        assert_ne!(a.pseudonym(s), a.pseudonym(Uuid::new_v4()));
        assert!(a.pseudonym(s).starts_with(PSEUDONYM_PREFIX));
        assert_eq!(a.pseudonym(s).len(), PSEUDONYM_PREFIX.len() + 64);
    }
}
