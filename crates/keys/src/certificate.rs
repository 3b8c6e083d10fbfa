//! Certificates of deletion: a JSON document, signed with the server's Ed25519 key, listing the
//! pseudonymous subject, the stores touched, the keys destroyed (with versions and times), the
//! time and the audit entry that records the shred. Verifiable offline with the public key.
//!
//! File form:
//!
//! ```json
//! { "certificate": { "format": "orgbase.deletion-certificate.v1", … },
//!   "signature": "<base64 of the 64-byte Ed25519 signature>" }
//! ```
//!
//! The signature covers the canonical JSON of the `certificate` object ([`canonical_json`]):
//! object keys sorted (by UTF-16 code units, as RFC 8785), no whitespace, strings escaped as
//! `serde_json` does (`\"`, `\\`, `\b \f \n \r \t`, other control characters `\u00xx`,
//! everything else as UTF-8), integers only. For the values a certificate holds this is the
//! RFC 8785 (JCS) form, and Python's
//! `json.dumps(c, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` gives the same
//! bytes. It is written here (about 40 lines) rather than taken from a crate because the JCS
//! crates are little used and a certificate only needs strings, integers and arrays; the
//! output does not depend on `serde_json`'s `preserve_order` feature.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::sign::{
    PSEUDONYM_PREFIX, PUBLIC_KEY_LEN, ServerSigner, signing_key_id, verify_signature,
};
use crate::store::Tombstone;
use crate::{KeyId, KeyVersion};

/// The `format` of version 1 certificates.
pub const CERTIFICATE_FORMAT: &str = "orgbase.deletion-certificate.v1";
/// The only signature algorithm.
pub const ALGORITHM: &str = "Ed25519";

/// A key destroyed by the erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyedKey {
    pub key_id: KeyId,
    pub versions: Vec<KeyVersion>,
    pub destroyed_at: DateTime<Utc>,
}

impl From<&Tombstone> for DestroyedKey {
    fn from(t: &Tombstone) -> Self {
        Self {
            key_id: t.key_id,
            versions: t.versions_destroyed.clone(),
            destroyed_at: t.destroyed_at,
        }
    }
}

/// Who signed: the algorithm, the key id and the public key (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub algorithm: String,
    pub key_id: String,
    pub public_key: String,
}

/// The signed content of a certificate of deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionCertificate {
    pub format: String,
    pub certificate_id: Uuid,
    /// The pseudonymous subject id ([`crate::Pseudonymizer::pseudonym`]).
    pub subject: String,
    /// Names of the places the erasure reached, e.g. `database`, `audit`, `backups`.
    pub stores_touched: Vec<String>,
    pub keys_destroyed: Vec<DestroyedKey>,
    pub issued_at: DateTime<Utc>,
    /// The audit entry that records the shred (its id or sequence number, opaque here).
    pub audit_entry: String,
    pub issuer: Issuer,
}

/// A certificate with its signature, as written to a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCertificate {
    pub certificate: DeletionCertificate,
    /// base64 of the Ed25519 signature over [`canonical_json`] of `certificate`.
    pub signature: String,
}

/// Why a certificate did not verify (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("not a JSON certificate: {0}")]
    NotJson(String),
    /// A field is missing, has the wrong type, an invalid value, or is not expected.
    #[error("malformed field `{field}`: {reason}")]
    Malformed { field: String, reason: String },
    #[error("unsupported certificate format {0:?} (expected {CERTIFICATE_FORMAT})")]
    UnsupportedFormat(String),
    /// The signature does not match the content: the certificate was altered (or signed by
    /// another key than the one it names).
    #[error("bad signature: the certificate was altered or not signed by its issuer key")]
    BadSignature,
    /// Signed correctly, but by a key other than the one the verifier trusts.
    #[error("signed by {found}, not by the trusted key {expected}")]
    UntrustedIssuer { found: String, expected: String },
    #[error("canonical JSON: {0}")]
    Canonical(String),
}

fn malformed(field: impl Into<String>, reason: impl Into<String>) -> CertificateError {
    CertificateError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

impl DeletionCertificate {
    /// A new certificate (fresh id, issued now) for the keys in `tombstones`.
    pub fn new(
        subject_pseudonym: String,
        stores_touched: Vec<String>,
        tombstones: &[Tombstone],
        audit_entry: impl Into<String>,
        signer: &ServerSigner,
    ) -> Self {
        Self {
            format: CERTIFICATE_FORMAT.to_string(),
            certificate_id: Uuid::now_v7(),
            subject: subject_pseudonym,
            stores_touched,
            keys_destroyed: tombstones.iter().map(DestroyedKey::from).collect(),
            issued_at: Utc::now(),
            audit_entry: audit_entry.into(),
            issuer: Issuer {
                algorithm: ALGORITHM.to_string(),
                key_id: signer.key_id().to_string(),
                public_key: signer.public_key_base64(),
            },
        }
    }

    /// The bytes that are signed: [`canonical_json`] of this certificate.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, CertificateError> {
        let value =
            serde_json::to_value(self).map_err(|e| CertificateError::Canonical(e.to_string()))?;
        Ok(canonical_json(&value)?.into_bytes())
    }

    /// Signs the certificate. The issuer recorded in it must be `signer`.
    pub fn sign(self, signer: &ServerSigner) -> Result<SignedCertificate, CertificateError> {
        if self.issuer.public_key != signer.public_key_base64() {
            return Err(malformed(
                "issuer.public_key",
                "is not the public key of the signer",
            ));
        }
        let signature = B64.encode(signer.sign(&self.signing_bytes()?));
        Ok(SignedCertificate {
            certificate: self,
            signature,
        })
    }
}

impl SignedCertificate {
    /// The file form (pretty JSON; the signature does not depend on the layout).
    pub fn to_json(&self) -> Result<String, CertificateError> {
        serde_json::to_string_pretty(self).map_err(|e| CertificateError::Canonical(e.to_string()))
    }
}

/// Verifies a certificate file offline: every field is present and well formed, the Ed25519
/// signature over the canonical `certificate` object matches the public key it names, and, if
/// `trusted_public_key` is given (the server's published key), that key is the signer.
/// Returns the certificate, or the first problem found, named.
pub fn verify_certificate(
    json: &str,
    trusted_public_key: Option<&[u8]>,
) -> Result<DeletionCertificate, CertificateError> {
    let root: Value =
        serde_json::from_str(json).map_err(|e| CertificateError::NotJson(e.to_string()))?;
    let root = root
        .as_object()
        .ok_or_else(|| CertificateError::NotJson("the top level is not an object".into()))?;
    only_fields(root, "", &["certificate", "signature"])?;
    let cert_value = root
        .get("certificate")
        .ok_or_else(|| malformed("certificate", "missing"))?;
    let signature: String = field(root, "", "signature")?;
    let signature = B64
        .decode(signature.trim())
        .map_err(|_| malformed("signature", "not base64"))?;
    if signature.len() != 64 {
        return Err(malformed(
            "signature",
            format!("{} bytes, an Ed25519 signature has 64", signature.len()),
        ));
    }

    let cert = parse_certificate(cert_value)?;
    let public_key = B64
        .decode(&cert.issuer.public_key)
        .map_err(|_| malformed("certificate.issuer.public_key", "not base64"))?;

    let signed = canonical_json(cert_value)?;
    if !verify_signature(&public_key, signed.as_bytes(), &signature) {
        return Err(CertificateError::BadSignature);
    }
    if let Some(trusted) = trusted_public_key
        && trusted != public_key.as_slice()
    {
        return Err(CertificateError::UntrustedIssuer {
            found: cert.issuer.key_id.clone(),
            expected: signing_key_id(trusted),
        });
    }
    Ok(cert)
}

/// Parses a published Ed25519 public key (standard or URL-safe base64, or 64 hex digits), for
/// `verify_certificate`'s trusted key.
pub fn parse_public_key(text: &str) -> Result<[u8; PUBLIC_KEY_LEN], CertificateError> {
    let text = text.trim();
    let bytes = if text.len() == 2 * PUBLIC_KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()
    } else {
        let t = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .ok()
    };
    bytes
        .and_then(|b| <[u8; PUBLIC_KEY_LEN]>::try_from(b).ok())
        .ok_or_else(|| {
            malformed(
                "public key",
                format!("expected {PUBLIC_KEY_LEN} bytes in base64 or hex"),
            )
        })
}

fn only_fields(
    obj: &Map<String, Value>,
    at: &str,
    allowed: &[&str],
) -> Result<(), CertificateError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(malformed(format!("{at}{k}"), "unexpected field"));
        }
    }
    Ok(())
}

fn field<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    at: &str,
    name: &str,
) -> Result<T, CertificateError> {
    let v = obj
        .get(name)
        .ok_or_else(|| malformed(format!("{at}{name}"), "missing"))?;
    serde_json::from_value(v.clone()).map_err(|e| malformed(format!("{at}{name}"), e.to_string()))
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, CertificateError> {
    v.as_object()
        .ok_or_else(|| malformed(at.trim_end_matches('.'), "not an object"))
}

/// Field-by-field parsing, so that an error names the field.
fn parse_certificate(v: &Value) -> Result<DeletionCertificate, CertificateError> {
    const AT: &str = "certificate.";
    let obj = object(v, AT)?;
    only_fields(
        obj,
        AT,
        &[
            "format",
            "certificate_id",
            "subject",
            "stores_touched",
            "keys_destroyed",
            "issued_at",
            "audit_entry",
            "issuer",
        ],
    )?;
    let format: String = field(obj, AT, "format")?;
    if format != CERTIFICATE_FORMAT {
        return Err(CertificateError::UnsupportedFormat(format));
    }
    let subject: String = field(obj, AT, "subject")?;
    let valid_subject = subject
        .strip_prefix(PSEUDONYM_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid_subject {
        return Err(malformed(
            "certificate.subject",
            format!("expected {PSEUDONYM_PREFIX}<64 hex digits>"),
        ));
    }

    let keys_value = obj
        .get("keys_destroyed")
        .ok_or_else(|| malformed("certificate.keys_destroyed", "missing"))?;
    let keys_array = keys_value
        .as_array()
        .ok_or_else(|| malformed("certificate.keys_destroyed", "not an array"))?;
    let mut keys_destroyed = Vec::with_capacity(keys_array.len());
    for (i, k) in keys_array.iter().enumerate() {
        let at = format!("certificate.keys_destroyed[{i}].");
        let kobj = object(k, &at)?;
        only_fields(kobj, &at, &["key_id", "versions", "destroyed_at"])?;
        keys_destroyed.push(DestroyedKey {
            key_id: field(kobj, &at, "key_id")?,
            versions: field(kobj, &at, "versions")?,
            destroyed_at: field(kobj, &at, "destroyed_at")?,
        });
    }

    const IAT: &str = "certificate.issuer.";
    let iobj = object(
        obj.get("issuer")
            .ok_or_else(|| malformed("certificate.issuer", "missing"))?,
        IAT,
    )?;
    only_fields(iobj, IAT, &["algorithm", "key_id", "public_key"])?;
    let issuer = Issuer {
        algorithm: field(iobj, IAT, "algorithm")?,
        key_id: field(iobj, IAT, "key_id")?,
        public_key: field(iobj, IAT, "public_key")?,
    };
    if issuer.algorithm != ALGORITHM {
        return Err(malformed(
            "certificate.issuer.algorithm",
            format!("{:?} is not {ALGORITHM}", issuer.algorithm),
        ));
    }
    let pk = B64
        .decode(&issuer.public_key)
        .map_err(|_| malformed("certificate.issuer.public_key", "not base64"))?;
    if pk.len() != PUBLIC_KEY_LEN {
        return Err(malformed(
            "certificate.issuer.public_key",
            format!(
                "{} bytes, an Ed25519 public key has {PUBLIC_KEY_LEN}",
                pk.len()
            ),
        ));
    }
    if issuer.key_id != signing_key_id(&pk) {
        return Err(malformed(
            "certificate.issuer.key_id",
            "does not match issuer.public_key",
        ));
    }

    Ok(DeletionCertificate {
        format,
        certificate_id: field(obj, AT, "certificate_id")?,
        subject,
        stores_touched: field(obj, AT, "stores_touched")?,
        keys_destroyed,
        issued_at: field(obj, AT, "issued_at")?,
        audit_entry: field(obj, AT, "audit_entry")?,
        issuer,
    })
}

/// Canonical JSON (see the module documentation): sorted keys, no whitespace, integers only.
pub fn canonical_json(value: &Value) -> Result<String, CertificateError> {
    let mut out = String::new();
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut String) -> Result<(), CertificateError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                return Err(CertificateError::Canonical(format!(
                    "non-integer number {n}"
                )));
            }
        }
        Value::String(s) => out.push_str(&json_string(s)?),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(k)?);
                out.push(':');
                write_canonical(v, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn json_string(s: &str) -> Result<String, CertificateError> {
    serde_json::to_string(s).map_err(|e| CertificateError::Canonical(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn public_keys_parse_from_base64_or_hex() {
        let pk = [7u8; 32];
        assert_eq!(parse_public_key(&B64.encode(pk)).unwrap(), pk);
        assert_eq!(parse_public_key(&hex::encode(pk)).unwrap(), pk);
        assert!(parse_public_key("AAAA").is_err());
    }

    #[test]
    fn canonical_form_sorts_and_compacts() {
        let v = json!({"b": [1, {"z": true, "a": null}], "a": "x\n\"y\"", "é": -3});
        assert_eq!(
            canonical_json(&v).unwrap(),
            r#"{"a":"x\n\"y\"","b":[1,{"a":null,"z":true}],"é":-3}"#
        );
        assert!(canonical_json(&json!({"f": 1.5})).is_err());
    }
}
