//! The encrypted object format: a header, then fixed-size AES-256-GCM segments.
//!
//! ```text
//! header   "ORGBKUP\x01" | u16 format version | u32 segment size | u16+object id | u16+key id
//!          | u32 key version | 12-byte nonce | u16+wrapped data key (AES-256-GCM under the master key)
//! segment  ciphertext of `segment size` plaintext bytes (the last one shorter, maybe empty) + 16-byte tag
//! ```
//!
//! Every object gets a fresh random data key. Segment `i` uses the nonce `0u32 ‖ i` and the
//! associated data `SHA-256(header) ‖ i ‖ final-flag`, so a changed header, a flipped byte, a
//! removed, repeated or reordered segment, and truncation (no final segment) all fail.

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use zeroize::Zeroizing;

use crate::keys::{KeyRing, MasterKey};

const MAGIC: &[u8; 8] = b"ORGBKUP\x01";
const FORMAT_VERSION: u16 = 1;
const TAG_LEN: usize = 16;
/// Plaintext bytes per segment.
pub const SEGMENT_SIZE: usize = 1 << 20;

/// Why an object could not be read. Shown to operators as is.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not an orgbase backup object (bad magic bytes)")]
    Magic,
    #[error("unsupported backup format version {0}")]
    Version(u16),
    #[error("damaged header: {0}")]
    Header(&'static str),
    #[error(
        "wrong key: encrypted with master key {id} (version {version}), which this orgbase does \
         not have (copy that key version into keys/backup or give it via backup.key_file)"
    )]
    UnknownKey { id: String, version: u32 },
    #[error(
        "the data key does not decrypt with master key {0}: wrong key, or the header was altered"
    )]
    WrongKey(String),
    #[error(
        "segment {0} failed authentication: the object was altered, or segments were removed \
         or reordered"
    )]
    Segment(u64),
    #[error(
        "truncated: the object ends after segment {0} without its final segment (incomplete \
         upload or cut-off file)"
    )]
    Truncated(u64),
    #[error("trailing data after the final segment {0}")]
    Trailing(u64),
    #[error("cryptography failure: {0}")]
    Crypto(&'static str),
}

impl From<FormatError> for io::Error {
    fn from(e: FormatError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// The format error inside an I/O error, if that is what it is.
pub fn format_error(e: &io::Error) -> Option<&FormatError> {
    e.get_ref().and_then(|i| i.downcast_ref::<FormatError>())
}

fn aead_key(bytes: &[u8; 32]) -> Result<LessSafeKey, FormatError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| FormatError::Crypto("AES-256-GCM key"))
}

fn segment_nonce(index: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn segment_aad(header_hash: &[u8; 32], index: u64, last: bool) -> [u8; 41] {
    let mut a = [0u8; 41];
    a[..32].copy_from_slice(header_hash);
    a[32..40].copy_from_slice(&index.to_be_bytes());
    a[40] = u8::from(last);
    a
}

fn wrap_aad(object_id: &str, key_id: &str) -> Vec<u8> {
    [
        b"orgbase data key\0",
        object_id.as_bytes(),
        b"\0",
        key_id.as_bytes(),
    ]
    .concat()
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Encrypts what is written into segments on `inner`. Call [`EncryptWriter::finish`].
pub struct EncryptWriter<W: Write> {
    inner: W,
    key: LessSafeKey,
    header_hash: [u8; 32],
    buf: Vec<u8>,
    index: u64,
}

impl<W: Write> std::fmt::Debug for EncryptWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptWriter")
            .field("segment", &self.index)
            .finish_non_exhaustive()
    }
}

impl<W: Write> EncryptWriter<W> {
    /// Write the header for `object_id` (a fresh data key wrapped by `master`) to `inner`.
    pub fn new(mut inner: W, object_id: &str, master: &MasterKey) -> io::Result<Self> {
        let mut dek = Zeroizing::new([0u8; 32]);
        let mut wrap_nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(dek.as_mut())
            .and_then(|()| aws_lc_rs::rand::fill(&mut wrap_nonce))
            .map_err(|_| FormatError::Crypto("random generator"))?;
        let mut wrapped = dek.to_vec();
        aead_key(master.bytes())?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(wrap_nonce),
                Aad::from(wrap_aad(object_id, &master.id)),
                &mut wrapped,
            )
            .map_err(|_| FormatError::Crypto("wrapping the data key"))?;
        let mut header = Vec::with_capacity(160);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        header.extend_from_slice(&(SEGMENT_SIZE as u32).to_be_bytes());
        put_str(&mut header, object_id.as_bytes());
        put_str(&mut header, master.id.as_bytes());
        header.extend_from_slice(&master.version.to_be_bytes());
        header.extend_from_slice(&wrap_nonce);
        put_str(&mut header, &wrapped);
        inner.write_all(&header)?;
        Ok(Self {
            inner,
            key: aead_key(&dek)?,
            header_hash: sha256(&header),
            buf: Vec::with_capacity(SEGMENT_SIZE + TAG_LEN),
            index: 0,
        })
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let aad = segment_aad(&self.header_hash, self.index, last);
        let tag = self
            .key
            .seal_in_place_separate_tag(segment_nonce(self.index), Aad::from(aad), &mut self.buf)
            .map_err(|_| FormatError::Crypto("sealing a segment"))?;
        self.inner.write_all(&self.buf)?;
        self.inner.write_all(tag.as_ref())?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Write the final (short, possibly empty) segment and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = SEGMENT_SIZE - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SEGMENT_SIZE {
            // A full segment is never the last: the final segment is always shorter.
            self.seal(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// What the header of an object says.
#[derive(Debug, Clone)]
pub struct Header {
    pub object_id: String,
    pub key_id: String,
    pub key_version: u32,
}

/// Decrypts an object written by [`EncryptWriter`], failing on any alteration.
pub struct DecryptReader<R: Read> {
    inner: R,
    key: LessSafeKey,
    header_hash: [u8; 32],
    header: Header,
    seg: Vec<u8>,
    pos: usize,
    index: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for DecryptReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptReader")
            .field("header", &self.header)
            .field("segment", &self.index)
            .finish_non_exhaustive()
    }
}

fn read_exact_or(inner: &mut impl Read, n: usize, what: &'static str) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    inner.read_exact(&mut v).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FormatError::Header(what).into()
        } else {
            e
        }
    })?;
    Ok(v)
}

fn read_str(inner: &mut impl Read, raw: &mut Vec<u8>, what: &'static str) -> io::Result<Vec<u8>> {
    let len = read_exact_or(inner, 2, what)?;
    raw.extend_from_slice(&len);
    let n = u16::from_be_bytes([len[0], len[1]]) as usize;
    let s = read_exact_or(inner, n, what)?;
    raw.extend_from_slice(&s);
    Ok(s)
}

impl<R: Read> DecryptReader<R> {
    /// Read and check the header; find the master key in `ring` and unwrap the data key.
    pub fn new(mut inner: R, ring: &KeyRing) -> io::Result<Self> {
        let mut raw = read_exact_or(&mut inner, 14, "too short")?;
        if &raw[..8] != MAGIC {
            return Err(FormatError::Magic.into());
        }
        let version = u16::from_be_bytes([raw[8], raw[9]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version).into());
        }
        let seg = u32::from_be_bytes([raw[10], raw[11], raw[12], raw[13]]) as usize;
        if seg != SEGMENT_SIZE {
            return Err(FormatError::Header("unexpected segment size").into());
        }
        let object_id = String::from_utf8(read_str(&mut inner, &mut raw, "object id")?)
            .map_err(|_| FormatError::Header("object id"))?;
        let key_id = String::from_utf8(read_str(&mut inner, &mut raw, "key id")?)
            .map_err(|_| FormatError::Header("key id"))?;
        let v = read_exact_or(&mut inner, 4, "key version")?;
        raw.extend_from_slice(&v);
        let key_version = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        let nonce = read_exact_or(&mut inner, NONCE_LEN, "nonce")?;
        raw.extend_from_slice(&nonce);
        let mut wrapped = Zeroizing::new(read_str(&mut inner, &mut raw, "wrapped key")?);
        let master = ring.get(&key_id).ok_or_else(|| FormatError::UnknownKey {
            id: key_id.clone(),
            version: key_version,
        })?;
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&nonce);
        let dek = aead_key(master.bytes())?
            .open_in_place(
                Nonce::assume_unique_for_key(n),
                Aad::from(wrap_aad(&object_id, &key_id)),
                &mut wrapped,
            )
            .map_err(|_| FormatError::WrongKey(key_id.clone()))?;
        let dek: [u8; 32] = dek
            .try_into()
            .map_err(|_| FormatError::Header("data key length"))?;
        let key = aead_key(&dek)?;
        Ok(Self {
            inner,
            key,
            header_hash: sha256(&raw),
            header: Header {
                object_id,
                key_id,
                key_version,
            },
            seg: Vec::with_capacity(SEGMENT_SIZE + TAG_LEN),
            pos: 0,
            index: 0,
            done: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Read the next segment into `self.seg` (plaintext).
    fn next_segment(&mut self) -> io::Result<()> {
        self.seg.resize(SEGMENT_SIZE + TAG_LEN, 0);
        let mut filled = 0;
        while filled < self.seg.len() {
            match self.inner.read(&mut self.seg[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let last = filled < self.seg.len();
        if filled == 0 || (last && filled < TAG_LEN) {
            return Err(FormatError::Truncated(self.index.saturating_sub(1)).into());
        }
        self.seg.truncate(filled);
        let aad = segment_aad(&self.header_hash, self.index, last);
        let plain = self
            .key
            .open_in_place(segment_nonce(self.index), Aad::from(aad), &mut self.seg)
            .map_err(|_| FormatError::Segment(self.index))?
            .len();
        self.seg.truncate(plain);
        self.pos = 0;
        self.index += 1;
        if last {
            self.done = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.seg.len() {
            if self.done {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let n = out.len().min(self.seg.len() - self.pos);
        out[..n].copy_from_slice(&self.seg[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Counts and hashes (SHA-256) the bytes passing through a reader or writer.
pub struct Hashing<T> {
    inner: T,
    ctx: digest::Context,
    pub bytes: u64,
}

impl<T> std::fmt::Debug for Hashing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hashing")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            ctx: digest::Context::new(&digest::SHA256),
            bytes: 0,
        }
    }

    /// The hex SHA-256 so far, the byte count and the inner value.
    pub fn finish(self) -> (String, u64, T) {
        (
            hex::encode(self.ctx.finish().as_ref()),
            self.bytes,
            self.inner,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.ctx.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.ctx.update(&out[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::keys::{KeyRing, KeySource};

    fn ring(hex_key: &str) -> KeyRing {
        KeyRing::load(
            KeySource::External {
                origin: "test".into(),
                text: orgbase_core::Secret::new(hex_key),
            },
            false,
        )
        .unwrap()
    }

    fn encrypt(ring: &KeyRing, data: &[u8]) -> Vec<u8> {
        let mut w = EncryptWriter::new(Vec::new(), "obj-1", ring.current().unwrap()).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn decrypt(ring: &KeyRing, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        DecryptReader::new(data, ring)
            .and_then(|mut r| r.read_to_end(&mut out))
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let r = ring(&"ab".repeat(32));
        for n in [
            0,
            1,
            SEGMENT_SIZE - 1,
            SEGMENT_SIZE,
            SEGMENT_SIZE + 1,
            3 * SEGMENT_SIZE,
        ] {
            let data = sample(n);
            assert_eq!(decrypt(&r, &encrypt(&r, &data)).unwrap(), data, "size {n}");
        }
    }

    #[test]
    fn every_alteration_is_detected() {
        let r = ring(&"ab".repeat(32));
        let data = sample(3 * SEGMENT_SIZE + 100);
        let enc = encrypt(&r, &data);
        let header = enc.len() - (data.len() + 4 * TAG_LEN);
        let seg = SEGMENT_SIZE + TAG_LEN;

        let mut flipped = enc.clone();
        flipped[header + seg + 10] ^= 1;
        let e = decrypt(&r, &flipped).unwrap_err();
        assert!(e.contains("segment 1 failed authentication"), "{e}");

        let e = decrypt(&r, &enc[..header + 2 * seg]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = decrypt(&r, &enc[..enc.len() - 5]).unwrap_err();
        assert!(e.contains("segment 3 failed"), "{e}");

        let removed = [&enc[..header + seg], &enc[header + 2 * seg..]].concat();
        let e = decrypt(&r, &removed).unwrap_err();
        assert!(e.contains("segment 1 failed"), "{e}");

        let swapped = [
            &enc[..header],
            &enc[header + seg..header + 2 * seg],
            &enc[header..header + seg],
            &enc[header + 2 * seg..],
        ]
        .concat();
        let e = decrypt(&r, &swapped).unwrap_err();
        assert!(e.contains("segment 0 failed"), "{e}");

        let mut header_changed = enc.clone();
        header_changed[20] ^= 1; // inside the object id
        assert!(decrypt(&r, &header_changed).is_err());

        let e = decrypt(&ring(&"cd".repeat(32)), &enc).unwrap_err();
        assert!(e.contains("this orgbase does not have"), "{e}");
        let e = decrypt(&r, b"PK\x03\x04 not a backup").unwrap_err();
        assert!(e.contains("magic"), "{e}");
    }
}
