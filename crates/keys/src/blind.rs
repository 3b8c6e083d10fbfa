//! The blind index of account emails (`DATA/keys/blind-index.key`, 32 bytes, 0600): a keyed
//! hash under which orgbase finds an account by email while the email itself is stored only
//! encrypted (docs/keys.md).
//!
//! `HMAC-SHA256(key, "orgbase.email.v1" NUL ‖ lower(trim(email)))`. Keyed, so that a database
//! or a backup alone does not let anyone test guessed emails against it; whoever also holds the
//! key can (that is what a lookup is) — and learns nothing more than "this email has an account".

use std::fmt;
use std::path::Path;

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use crate::KeyError;
use crate::fsutil;

/// Length of a blind index value.
pub const BLIND_INDEX_LEN: usize = 32;

/// The blind-index key.
pub struct BlindIndex {
    key: hmac::Key,
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndex([redacted])")
    }
}

impl BlindIndex {
    /// Loads the key at `path`, creating 32 random bytes (0600) on first use.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let secret = fsutil::read_or_create_secret(path, || {
            Ok(Zeroizing::new(fsutil::random::<32>()?.to_vec()))
        })?;
        Ok(Self::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The index value of an email: case and surrounding blanks do not matter.
    pub fn email(&self, email: &str) -> [u8; BLIND_INDEX_LEN] {
        let normalized = Zeroizing::new(email.trim().to_lowercase());
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"orgbase.email.v1\0");
        ctx.update(normalized.as_bytes());
        let mut out = [0u8; BLIND_INDEX_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_keyed_and_persistent() {
        let a = BlindIndex::from_secret(&[1; 32]);
        let b = BlindIndex::from_secret(&[2; 32]);
        assert_eq!(a.email("Ada@Example.com "), a.email("ada@example.com"));
        assert_ne!(a.email("ada@example.com"), a.email("bob@example.com"));
        assert_ne!(a.email("ada@example.com"), b.email("ada@example.com"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blind-index.key");
        let x = BlindIndex::open_or_create(&p).unwrap();
        let y = BlindIndex::open_or_create(&p).unwrap();
        assert_eq!(x.email("a@b.c"), y.email("a@b.c"));
    }
}
