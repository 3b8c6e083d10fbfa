//! The master key (key-encryption key, KEK) behind a [`KeyProvider`]: it wraps and unwraps
//! data keys and never leaves the provider. [`LocalKeyProvider`] keeps it in a file or in the
//! environment; a KMS or Vault provider implements the same trait (see `docs/keys.md`).

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::fsutil;
use crate::{KeyError, KeyId, KeyVersion};

/// Length of a data key and of the local master key: 256 bits.
pub const KEY_LEN: usize = 32;

/// What a wrapped data key is bound to. A provider must authenticate this context with the
/// wrapped key (AEAD associated data, KMS encryption context, Vault `context`), so a wrapped
/// key copied to another key id or version does not unwrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapContext {
    pub key: KeyId,
    pub version: KeyVersion,
}

impl WrapContext {
    /// The canonical bytes of the context: `orgbase.dek.v1 NUL <key id> NUL <version u32 BE>`.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"orgbase.dek.v1\0");
        out.extend_from_slice(self.key.to_string().as_bytes());
        out.push(0);
        out.extend_from_slice(&self.version.0.to_be_bytes());
        out
    }
}

/// A master key (KEK) holder. The key store calls it to wrap each new data key version and
/// to unwrap a version the first time it is used (then the unwrapped key is cached).
///
/// To add a KMS or Vault provider, implement this trait:
/// - `kek_id` names the master key *version* in use (e.g. the KMS key ARN plus its version,
///   or the Vault transit key name and version). The store records it beside every wrapped
///   key and, when the ids differ, reports [`KeyError::WrongMasterKey`] instead of a vague
///   authentication failure. A provider whose backend unwraps for several KEK versions
///   (KMS, Vault) may accept other ids: override [`KeyProvider::can_unwrap`].
/// - `wrap` / `unwrap` call the service (`Encrypt`/`Decrypt` with `context.aad()` as
///   encryption context, or `transit/encrypt` with `context`). The output of `wrap` is
///   opaque to the store and is stored base64 encoded.
/// - Calls happen on key creation and on first use of a version per process (and after a
///   cache eviction), so a network round trip there is acceptable.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Short name of the provider kind, for messages (`local`, `aws-kms`, `vault`).
    fn name(&self) -> &str;
    /// Names the master key in use; recorded next to each wrapped key.
    fn kek_id(&self) -> &str;
    /// Whether a key wrapped under `kek_id` can be unwrapped by this provider.
    fn can_unwrap(&self, kek_id: &str) -> bool {
        kek_id == self.kek_id()
    }
    /// Encrypts a data key under the master key, bound to `context`.
    fn wrap(&self, data_key: &[u8], context: &WrapContext) -> Result<Vec<u8>, KeyError>;
    /// Decrypts a wrapped data key; fails with [`KeyError::UnwrapFailed`] when it does not
    /// authenticate under this master key and `context`.
    fn unwrap(&self, wrapped: &[u8], context: &WrapContext)
    -> Result<Zeroizing<Vec<u8>>, KeyError>;
}

/// Where the local master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeyOrigin {
    /// `ORGBASE_MASTER_KEY` (or the variable named in the config), base64.
    Env(String),
    /// A file of 32 raw bytes, mode 0600.
    File(std::path::PathBuf),
    /// Given by the caller (tests, tools).
    Bytes,
}

/// The file/environment master key: AES-256-GCM key wrapping with a fresh 96-bit nonce per
/// wrap and the [`WrapContext`] as associated data. Wrapped form: `nonce(12) ‖ ct(32) ‖ tag(16)`.
///
/// AES-GCM rather than AES-KW (RFC 3394/5649, which aws-lc-rs also offers) because key wrap
/// has no associated data, and binding the wrapped key to its id and version is required.
pub struct LocalKeyProvider {
    key: LessSafeKey,
    kek_id: String,
    origin: MasterKeyOrigin,
}

impl fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("kek_id", &self.kek_id)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl LocalKeyProvider {
    /// A provider over the given 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        Self::build(bytes, MasterKeyOrigin::Bytes)
    }

    /// The master key from the environment variable `env_var` (base64 of 32 bytes) when it is
    /// set and not empty; otherwise from `file`, which is created (32 random bytes, 0600, its
    /// directory 0700) when it does not exist. A file readable by others is refused.
    pub fn from_env_or_file(env_var: &str, file: &Path) -> Result<Self, KeyError> {
        match std::env::var(env_var) {
            Ok(v) => Self::from_env_value_or_file(env_var, Some(Zeroizing::new(v)), file),
            Err(std::env::VarError::NotPresent) => {
                Self::from_env_value_or_file(env_var, None, file)
            }
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::MasterKey(format!(
                "{env_var} is not valid UTF-8 base64"
            ))),
        }
    }

    /// [`LocalKeyProvider::from_env_or_file`] with the variable's value already read.
    pub fn from_env_value_or_file(
        env_var: &str,
        value: Option<Zeroizing<String>>,
        file: &Path,
    ) -> Result<Self, KeyError> {
        match value {
            Some(v) if !v.trim().is_empty() => {
                Self::from_base64(v.trim(), MasterKeyOrigin::Env(env_var.to_string()))
            }
            _ => Self::from_file(file),
        }
    }

    /// The master key from `file`, created on first use.
    pub fn from_file(file: &Path) -> Result<Self, KeyError> {
        let bytes = fsutil::read_or_create_secret(file, || {
            Ok(Zeroizing::new(fsutil::random::<KEY_LEN>()?.to_vec()))
        })?;
        Self::build(&bytes, MasterKeyOrigin::File(file.to_path_buf())).map_err(|e| match e {
            KeyError::MasterKey(m) => KeyError::MasterKey(format!("{}: {m}", file.display())),
            other => other,
        })
    }

    /// The master key from base64 (standard or URL-safe alphabet, padding optional).
    pub fn from_base64(text: &str, origin: MasterKeyOrigin) -> Result<Self, KeyError> {
        let what = match &origin {
            MasterKeyOrigin::Env(v) => v.clone(),
            _ => "master key".to_string(),
        };
        let cleaned = text.trim().trim_end_matches('=');
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(cleaned)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cleaned))
            .map(Zeroizing::new)
            .map_err(|_| KeyError::MasterKey(format!("{what} is not valid base64")))?;
        Self::build(&bytes, origin)
    }

    fn build(bytes: &[u8], origin: MasterKeyOrigin) -> Result<Self, KeyError> {
        if bytes.len() != KEY_LEN {
            return Err(KeyError::MasterKey(format!(
                "expected {KEY_LEN} bytes, found {}",
                bytes.len()
            )));
        }
        // The id is a MAC of a constant under the key: it names the key without revealing it.
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"orgbase.kek-id.v1",
        );
        let kek_id = format!("local:{}", hex::encode(&tag.as_ref()[..8]));
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map(LessSafeKey::new)
            .map_err(|_| KeyError::MasterKey("rejected by AES-256-GCM".into()))?;
        Ok(Self {
            key,
            kek_id,
            origin,
        })
    }

    pub fn origin(&self) -> &MasterKeyOrigin {
        &self.origin
    }
}

impl KeyProvider for LocalKeyProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn kek_id(&self) -> &str {
        &self.kek_id
    }

    fn wrap(&self, data_key: &[u8], context: &WrapContext) -> Result<Vec<u8>, KeyError> {
        let nonce = fsutil::random::<NONCE_LEN>()?;
        let mut out = Vec::with_capacity(NONCE_LEN + data_key.len() + 16);
        out.extend_from_slice(nonce.as_ref());
        let mut body = data_key.to_vec();
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(context.aad()),
            &mut body,
        );
        if sealed.is_err() {
            zeroize::Zeroize::zeroize(&mut body);
            return Err(KeyError::Provider {
                provider: "local".into(),
                message: "AES-GCM seal failed".into(),
            });
        }
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
        context: &WrapContext,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let failed = || KeyError::UnwrapFailed {
            key: context.key,
            version: context.version,
        };
        if wrapped.len() < NONCE_LEN + 16 {
            return Err(failed());
        }
        let (nonce, body) = wrapped.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(context.aad()), &mut buf)
            .map_err(|_| failed())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn ctx(v: u32) -> WrapContext {
        WrapContext {
            key: KeyId::subject(Uuid::from_u128(7)),
            version: KeyVersion(v),
        }
    }

    #[test]
    fn wrap_roundtrip_and_context_binding() {
        let p = LocalKeyProvider::from_bytes(&[9u8; 32]).unwrap();
        let w = p.wrap(&[5u8; 32], &ctx(1)).unwrap();
        assert_eq!(w.len(), 12 + 32 + 16);
        assert_eq!(&p.unwrap(&w, &ctx(1)).unwrap()[..], &[5u8; 32]);
        assert!(matches!(
            p.unwrap(&w, &ctx(2)),
            Err(KeyError::UnwrapFailed { .. })
        ));
        let other = LocalKeyProvider::from_bytes(&[8u8; 32]).unwrap();
        assert_ne!(other.kek_id(), p.kek_id());
        assert!(other.unwrap(&w, &ctx(1)).is_err());
    }

    #[test]
    fn base64_and_length_checks() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        let p = LocalKeyProvider::from_base64(&b64, MasterKeyOrigin::Bytes).unwrap();
        let q = LocalKeyProvider::from_bytes(&[3u8; 32]).unwrap();
        assert_eq!(p.kek_id(), q.kek_id());
        assert!(matches!(
            LocalKeyProvider::from_base64("AAAA", MasterKeyOrigin::Bytes),
            Err(KeyError::MasterKey(_))
        ));
        assert!(matches!(
            LocalKeyProvider::from_base64("!!!", MasterKeyOrigin::Bytes),
            Err(KeyError::MasterKey(_))
        ));
    }

    #[test]
    fn file_is_created_once_with_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys").join("master.key");
        let a = LocalKeyProvider::from_file(&f).unwrap();
        let b = LocalKeyProvider::from_file(&f).unwrap();
        assert_eq!(a.kek_id(), b.kek_id());
        assert_eq!(std::fs::read(&f).unwrap().len(), 32);
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
