//! Field encryption: AES-256-GCM under a subject's or an organization's data key, a fresh
//! random nonce per value, and associated data binding each ciphertext to its organization,
//! table, column and row, and to the key id and version it names.
//!
//! Binary form (all integers big-endian):
//!
//! | bytes   | field                                                             |
//! |---------|-------------------------------------------------------------------|
//! | 0       | format, `0x01`                                                     |
//! | 1       | key scope: `1` subject, `2` organization                          |
//! | 2..18   | key uuid                                                           |
//! | 18..22  | key version (u32)                                                  |
//! | 22..26  | context fingerprint: first 4 bytes of SHA-256(context)            |
//! | 26..38  | nonce (96 bits, random)                                            |
//! | 38..    | AES-256-GCM ciphertext, then the 16-byte tag                       |
//!
//! AAD = bytes 0..26 ‖ context, where context = `orgbase.field.v1` NUL ‖ org uuid (16) ‖
//! u32 len ‖ table ‖ u32 len ‖ column ‖ u32 len ‖ row id. The fingerprint is not secret
//! (organization, table, column and row id sit in the same database row in clear); it lets a
//! failed decryption say whether the value was moved ([`CipherError::ContextMismatch`]) or
//! altered ([`CipherError::Tampered`]). Either way nothing decrypts.
//!
//! Text form, for `text`/`jsonb` columns: `enc:v1:` + base64url (no padding) of the binary form.

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use uuid::Uuid;

use crate::keyid::Scope;
use crate::store::{DataKey, KeyStore};
use crate::{CipherError, KeyError, KeyId, KeyVersion};

/// Prefix of the text form; also what [`is_ciphertext`] looks for.
pub const TEXT_PREFIX: &str = "enc:v1:";
/// The format byte of the binary form.
pub const FORMAT_V1: u8 = 0x01;
const FINGERPRINT_AT: usize = 22;
const NONCE_AT: usize = 26;
/// Bytes before the encrypted body.
pub const HEADER_LEN: usize = NONCE_AT + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Bytes a value grows by when encrypted (binary form), before base64.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Where a value lives: the ciphertext only decrypts for the same organization, table,
/// column and row id. For a row not yet inserted, generate its id first (uuid v7) and use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldAad<'a> {
    pub org: Uuid,
    pub table: &'a str,
    pub column: &'a str,
    /// The row's primary key in text (a uuid, or `a|b` for a composite key).
    pub row: &'a str,
}

impl FieldAad<'_> {
    fn context(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.context_len());
        self.write_context(&mut out);
        out
    }

    fn context_len(&self) -> usize {
        17 + 16 + 12 + self.table.len() + self.column.len() + self.row.len()
    }

    fn write_context(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"orgbase.field.v1\0");
        out.extend_from_slice(self.org.as_bytes());
        for part in [self.table, self.column, self.row] {
            // Lengths past u32 are impossible for a database value; saturate rather than wrap.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
}

/// The readable part of a ciphertext: which key and version it needs. Read without any key,
/// e.g. by a re-encryption job looking for values under old versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CiphertextHeader {
    pub key: KeyId,
    pub version: KeyVersion,
}

/// What [`FieldCipher::reencrypt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reencrypted {
    /// The value is already under the current version: nothing to write.
    AlreadyCurrent,
    /// The value re-encrypted under the current version: write it back.
    Rewritten(String),
}

/// True when `value` looks like a field ciphertext (the `enc:v1:` prefix). Constant work, no
/// decoding: for deciding whether a stored value still needs encrypting (e.g. when a column
/// becomes classified and its rows are encrypted in place). A plaintext that happens to start
/// with the prefix would be taken for a ciphertext, so once a column is encrypted, treat every
/// value in it as a ciphertext and let [`FieldCipher::decrypt`] judge.
pub fn is_ciphertext(value: &str) -> bool {
    value.starts_with(TEXT_PREFIX)
}

/// The key and version named by a text ciphertext.
pub fn header(text: &str) -> Result<CiphertextHeader, CipherError> {
    let bytes = decode_text(text)?;
    parse_header(&bytes)
}

fn decode_text(text: &str) -> Result<Vec<u8>, CipherError> {
    let body = text
        .strip_prefix(TEXT_PREFIX)
        .ok_or_else(|| CipherError::Malformed(format!("does not start with {TEXT_PREFIX}")))?;
    B64.decode(body)
        .map_err(|e| CipherError::Malformed(format!("not base64url: {e}")))
}

/// Checks the binary header and returns the key reference.
pub fn parse_header(bytes: &[u8]) -> Result<CiphertextHeader, CipherError> {
    let Some(&format) = bytes.first() else {
        return Err(CipherError::Malformed("empty".into()));
    };
    if format != FORMAT_V1 {
        return Err(CipherError::UnsupportedFormat(format));
    }
    if bytes.len() < OVERHEAD {
        return Err(CipherError::Malformed(format!(
            "{} bytes, shorter than the {OVERHEAD}-byte minimum",
            bytes.len()
        )));
    }
    let scope = Scope::from_byte(bytes[1])
        .ok_or_else(|| CipherError::Malformed(format!("unknown key scope {}", bytes[1])))?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[2..18]);
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[18..22]);
    Ok(CiphertextHeader {
        key: KeyId {
            scope,
            id: Uuid::from_bytes(id),
        },
        version: KeyVersion(u32::from_be_bytes(version)),
    })
}

/// Decrypts values one after the other with the same [`FieldCipher`], keeping the last data
/// key it looked up ([`FieldCipher::opener`]). Meant for the values of one request: a key
/// rotated or destroyed meanwhile is seen by the next opener.
#[derive(Debug)]
pub struct Opener<'a> {
    cipher: &'a FieldCipher,
    last: Option<(KeyId, KeyVersion, Arc<DataKey>)>,
}

impl Opener<'_> {
    /// [`FieldCipher::decrypt`].
    pub fn decrypt(&mut self, text: &str, aad: &FieldAad<'_>) -> Result<Vec<u8>, CipherError> {
        self.open(decode_text(text)?, aad)
    }

    /// Decrypts the binary form `bytes` in place ([`FieldCipher::decrypt_bytes`] tells the
    /// errors). The context fingerprint is compared only when authentication fails, to name
    /// the cause: the AEAD covers the context anyway, and a SHA-256 per value was a tenth of
    /// the server's decryption work.
    fn open(&mut self, mut bytes: Vec<u8>, aad: &FieldAad<'_>) -> Result<Vec<u8>, CipherError> {
        let header = parse_header(&bytes)?;
        let data_key = match &self.last {
            Some((k, v, key)) if *k == header.key && *v == header.version => key.clone(),
            _ => {
                let key = self.cipher.store.get(header.key, header.version)?;
                self.last = Some((header.key, header.version, key.clone()));
                key
            }
        };
        let mut aad_buf = Vec::with_capacity(NONCE_AT + aad.context_len());
        aad_buf.extend_from_slice(&bytes[..NONCE_AT]);
        aad.write_context(&mut aad_buf);
        let nonce = Nonce::try_assume_unique_for_key(&bytes[NONCE_AT..HEADER_LEN])
            .map_err(|_| CipherError::Malformed("bad nonce".into()))?;
        let opened = data_key
            .aead()
            .open_in_place(nonce, Aad::from(&aad_buf[..]), &mut bytes[HEADER_LEN..])
            .map(|plain| plain.len());
        match opened {
            Ok(len) => {
                bytes.truncate(HEADER_LEN + len);
                bytes.drain(..HEADER_LEN);
                Ok(bytes)
            }
            Err(_) if bytes[FINGERPRINT_AT..NONCE_AT] != fingerprint(&aad_buf[NONCE_AT..]) => {
                Err(CipherError::ContextMismatch)
            }
            Err(_) => Err(CipherError::Tampered),
        }
    }
}

fn fingerprint(context: &[u8]) -> [u8; 4] {
    let d = digest::digest(&digest::SHA256, context);
    let mut out = [0u8; 4];
    out.copy_from_slice(&d.as_ref()[..4]);
    out
}

fn aad_bytes(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(NONCE_AT + context.len());
    aad.extend_from_slice(&header[..NONCE_AT]);
    aad.extend_from_slice(context);
    aad
}

/// Encrypts and decrypts field values with keys from a [`KeyStore`]. Cheap to clone; safe to
/// share between threads.
#[derive(Debug, Clone)]
pub struct FieldCipher {
    store: Arc<KeyStore>,
}

impl FieldCipher {
    pub fn new(store: Arc<KeyStore>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<KeyStore> {
        &self.store
    }

    /// Encrypts `plaintext` for the place `aad` under the current version of `key` (created
    /// if the key does not exist yet); returns the text form.
    pub fn encrypt(
        &self,
        plaintext: &[u8],
        aad: &FieldAad<'_>,
        key: KeyId,
    ) -> Result<String, CipherError> {
        let bytes = self.encrypt_bytes(plaintext, aad, key)?;
        let mut out = String::with_capacity(TEXT_PREFIX.len() + bytes.len().div_ceil(3) * 4);
        out.push_str(TEXT_PREFIX);
        B64.encode_string(&bytes, &mut out);
        Ok(out)
    }

    /// [`FieldCipher::encrypt`] returning the binary form (for `bytea` columns).
    pub fn encrypt_bytes(
        &self,
        plaintext: &[u8],
        aad: &FieldAad<'_>,
        key: KeyId,
    ) -> Result<Vec<u8>, CipherError> {
        let (version, data_key) = self.store.current(key)?;
        let context = aad.context();
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KeyError::Random)?;

        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(FORMAT_V1);
        out.push(key.scope.byte());
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&version.0.to_be_bytes());
        out.extend_from_slice(&fingerprint(&context));
        out.extend_from_slice(&nonce);
        let aad = aad_bytes(&out, &context);
        out.extend_from_slice(plaintext);
        let tag = data_key
            .aead()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[HEADER_LEN..],
            )
            .map_err(|_| CipherError::Malformed("value too long for AES-GCM".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts a text ciphertext made for the place `aad`.
    pub fn decrypt(&self, text: &str, aad: &FieldAad<'_>) -> Result<Vec<u8>, CipherError> {
        self.opener().decrypt(text, aad)
    }

    /// [`FieldCipher::decrypt`] for a value that must be UTF-8 text.
    pub fn decrypt_string(&self, text: &str, aad: &FieldAad<'_>) -> Result<String, CipherError> {
        String::from_utf8(self.decrypt(text, aad)?).map_err(|_| CipherError::NotUtf8)
    }

    /// Decrypts the binary form. Errors, in the order checked: [`CipherError::Malformed`] /
    /// [`CipherError::UnsupportedFormat`], a key error ([`KeyError::KeyDestroyed`],
    /// [`KeyError::UnknownKey`], [`KeyError::UnknownKeyVersion`],
    /// [`KeyError::KeyVersionRetired`], [`KeyError::WrongMasterKey`], …),
    /// [`CipherError::ContextMismatch`], [`CipherError::Tampered`].
    pub fn decrypt_bytes(&self, bytes: &[u8], aad: &FieldAad<'_>) -> Result<Vec<u8>, CipherError> {
        self.opener().open(bytes.to_vec(), aad)
    }

    /// Decrypts several values in a row (the fields of a record, a page of records): the data
    /// key of the last value is kept, so values under one key look it up once.
    pub fn opener(&self) -> Opener<'_> {
        Opener {
            cipher: self,
            last: None,
        }
    }

    /// Re-encrypts a value under the current version of its key, for the background
    /// rotation job: decrypt, and if the value is under an older version, encrypt again for
    /// the same place. The job writes [`Reencrypted::Rewritten`] values back (compare-and-set
    /// on the old value, so a concurrent update wins) and can resume anywhere: a value already
    /// moved reports [`Reencrypted::AlreadyCurrent`].
    pub fn reencrypt(&self, text: &str, aad: &FieldAad<'_>) -> Result<Reencrypted, CipherError> {
        let bytes = decode_text(text)?;
        let header = parse_header(&bytes)?;
        let plaintext = zeroize::Zeroizing::new(self.decrypt_bytes(&bytes, aad)?);
        let (current, _) = self.store.current(header.key)?;
        if current == header.version {
            return Ok(Reencrypted::AlreadyCurrent);
        }
        Ok(Reencrypted::Rewritten(
            self.encrypt(&plaintext, aad, header.key)?,
        ))
    }
}
