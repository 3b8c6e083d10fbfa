//! Field encryption in the record API (docs/keys.md): values of columns classified `confidential`,
//! `pii` or `phi` are encrypted before they reach PostgreSQL and decrypted for authorized callers
//! on the way out.
//!
//! Which key: a row's values are encrypted under the data key of its **subject** — the person
//! who created it (`created_by`) — in that organization ([`subject_key`]); rows without a
//! creator use the organization's key. Erasing a person in an organization destroys that one
//! key, and every copy of those values (audit entries, old dumps, backups) becomes noise.
//!
//! The ciphertext is bound to (organization, table, column, row id): copied to another row or
//! organization it does not decrypt.

use std::borrow::Cow;
use std::sync::Arc;

use orgbase_keys::{
    BlindIndex, CipherError, FieldAad, KeyError, KeyId, Keys, Opener, Reencrypted, is_ciphertext,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::catalog::{Catalog, Column, Kind, Table, quote_ident};
use crate::json::write_str;
use crate::request::ReqError;

/// The key store failed while sealing: a full disk is said as such (the store lives in the
/// data directory), anything else is the key store being unavailable.
pub(crate) fn keys_failed(e: CipherError) -> ReqError {
    match &e {
        CipherError::Key(KeyError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::StorageFull =>
        {
            ReqError::StorageFull
        }
        _ => ReqError::Keys(e.to_string()),
    }
}

/// The data key of person `user` in organization `org`: one key per (organization, person), so
/// that an organization can erase a member without touching their data elsewhere, and a
/// person's own erasure destroys the keys of every organization they belonged to.
pub fn subject_key(org: Uuid, user: Uuid) -> KeyId {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"orgbase.subject-key.v1\0");
    ctx.update(org.as_bytes());
    ctx.update(user.as_bytes());
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    KeyId::subject(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// True for a column whose values are encrypted: classified confidential, pii or phi, and of a
/// type that can hold the ciphertext (text, or JSON holding it as a string).
pub fn is_sealed(c: &Column) -> bool {
    matches!(c.class.as_str(), "confidential" | "pii" | "phi")
        && matches!(c.kind, Kind::Text | Kind::Json)
}

/// The table's name in ciphertext bindings: `schema.table`.
fn aad_table(table: &Table) -> &str {
    &table.aad_name
}

/// Encrypts and decrypts the classified values of records.
#[derive(Debug, Clone)]
pub struct Fields {
    keys: Option<Arc<Keys>>,
    encrypt: bool,
    /// The key of the account emails' blind index (`crate::account`): the key store's, or, with
    /// no key store, one the caller supplies ([`Fields::with_blind_index`]).
    blind: Option<Arc<BlindIndex>>,
}

impl Fields {
    /// `encrypt: false` stores new values in clear (existing ciphertexts still decrypt).
    pub fn new(keys: Arc<Keys>, encrypt: bool) -> Self {
        Self {
            blind: Some(keys.blind_index().clone()),
            keys: Some(keys),
            encrypt,
        }
    }

    /// No key store: values are stored as given, and a ciphertext cannot be read. Accounts
    /// cannot be looked up by email until a blind-index key is given
    /// ([`Fields::with_blind_index`]).
    pub fn disabled() -> Self {
        Self {
            keys: None,
            encrypt: false,
            blind: None,
        }
    }

    /// The same, with `blind` as the blind-index key.
    pub fn with_blind_index(mut self, blind: Arc<BlindIndex>) -> Self {
        self.blind = Some(blind);
        self
    }

    pub fn keys(&self) -> Option<&Arc<Keys>> {
        self.keys.as_ref()
    }

    /// Whether new values are encrypted (`[keys] field_encryption`).
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// The blind-index key, when there is one.
    pub fn blind_index(&self) -> Option<&BlindIndex> {
        self.blind.as_deref()
    }

    pub(crate) fn cipher(&self) -> Result<&orgbase_keys::FieldCipher, ReqError> {
        self.keys
            .as_deref()
            .map(Keys::cipher)
            .ok_or_else(|| ReqError::Undecryptable("no key store is configured".into()))
    }

    /// Whether writing these fields of `table` needs encryption (and so the row's subject).
    pub fn seals(&self, table: &Table, body: &Map<String, Value>) -> bool {
        self.encrypt
            && table
                .columns
                .iter()
                .any(|c| is_sealed(c) && body.get(&c.name).is_some_and(|v| !v.is_null()))
    }

    /// Encrypts the classified values of `body` in place for row `row` of `org`, under the key
    /// of `subject` (the row's creator) or of the organization.
    pub fn seal(
        &self,
        table: &Table,
        org: Uuid,
        row: Uuid,
        subject: Option<Uuid>,
        body: &mut Map<String, Value>,
    ) -> Result<(), ReqError> {
        if !self.encrypt {
            return Ok(());
        }
        let cipher = self.cipher()?;
        let key = subject.map_or(KeyId::org(org), |u| subject_key(org, u));
        let name = aad_table(table);
        let row = row.to_string();
        for c in table.columns.iter().filter(|c| is_sealed(c)) {
            let Some(v) = body.get_mut(&c.name) else {
                continue;
            };
            let plain = match (&*v, c.kind) {
                (Value::Null, _) => continue,
                (Value::String(s), Kind::Text) => Cow::Borrowed(s.as_bytes()),
                (other, _) => Cow::Owned(serde_json::to_vec(other).map_err(|e| {
                    ReqError::Invalid(Some(c.name.clone()), format!("cannot encode: {e}"))
                })?),
            };
            let place = FieldAad {
                org,
                table: name,
                column: &c.name,
                row: &row,
            };
            let sealed = cipher.encrypt(&plain, &place, key).map_err(keys_failed)?;
            *v = Value::String(sealed);
        }
        Ok(())
    }

    /// Decrypts the classified values of one row rendered as JSON. Values whose key was
    /// destroyed (an erased person) come back as `null`; a value that does not decrypt for its
    /// place (moved, altered) is an error naming the row and column.
    pub fn open<'a>(&self, table: &Table, json: &'a str) -> Result<Cow<'a, str>, ReqError> {
        if !json.contains("\"enc:v1:") || !table.columns.iter().any(is_sealed) {
            return Ok(Cow::Borrowed(json));
        }
        let mut row: Map<String, Value> = serde_json::from_str(json)
            .map_err(|e| ReqError::Undecryptable(format!("row is not JSON: {e}")))?;
        self.open_map(table, &mut row)?;
        serde_json::to_string(&row)
            .map(Cow::Owned)
            .map_err(|e| ReqError::Undecryptable(e.to_string()))
    }

    /// [`Fields::open`] on a parsed row (with its `org_id` and `id`).
    pub fn open_map(&self, table: &Table, row: &mut Map<String, Value>) -> Result<(), ReqError> {
        let id = row.get("id").and_then(Value::as_str).map(str::to_owned);
        let org = row
            .get("org_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok());
        let (Some(id), Some(org)) = (id, org) else {
            return Err(ReqError::Undecryptable(format!(
                "a row of {} without id or org_id",
                table.name
            )));
        };
        let name = aad_table(table);
        let mut opener = None;
        for c in table.columns.iter().filter(|c| is_sealed(c)) {
            let Some(v) = row.get_mut(&c.name) else {
                continue;
            };
            let Some(text) = v.as_str().filter(|s| is_ciphertext(s)) else {
                continue;
            };
            let Some(plain) = self.open_value(&mut opener, table, name, c, org, &id, text)? else {
                *v = Value::Null;
                continue;
            };
            *v = match c.kind {
                Kind::Text => String::from_utf8(plain)
                    .map(Value::String)
                    .map_err(|_| not_utf8(table, c, &id))?,
                _ => serde_json::from_slice(&plain).map_err(|e| {
                    ReqError::Undecryptable(format!("{}.{} of row {id}: {e}", table.name, c.name))
                })?,
            };
        }
        Ok(())
    }

    /// One stored value of column `c` of row `id` decrypted (`name` is the table's
    /// [`aad_table`]); `None` for a value whose key was destroyed (erasure), which reads as
    /// null. `opener` keeps the data key of the row's previous value.
    #[allow(clippy::too_many_arguments)] // the place of the value, in parts the caller holds
    fn open_value<'a>(
        &'a self,
        opener: &mut Option<Opener<'a>>,
        table: &Table,
        name: &str,
        c: &Column,
        org: Uuid,
        id: &str,
        text: &str,
    ) -> Result<Option<Vec<u8>>, ReqError> {
        let place = FieldAad {
            org,
            table: name,
            column: &c.name,
            row: id,
        };
        let opener = match opener {
            Some(o) => o,
            None => opener.insert(self.cipher()?.opener()),
        };
        match opener.decrypt(text, &place) {
            Ok(plain) => Ok(Some(plain)),
            Err(e) if e.is_key_destroyed() => Ok(None),
            Err(CipherError::Key(e @ (KeyError::Io { .. } | KeyError::Random))) => {
                Err(ReqError::Keys(e.to_string()))
            }
            Err(e) => Err(ReqError::Undecryptable(format!(
                "{}.{} of row {id}: {e}",
                table.name, c.name
            ))),
        }
    }

    /// A row read as its JSON without the sealed text columns, plus those columns as stored
    /// (`apart`, in [`Fields::apart`] order): the JSON with them decrypted and added. Saves
    /// PostgreSQL escaping every ciphertext into the JSON and the server parsing it back.
    pub fn open_apart(
        &self,
        table: &Table,
        json: &str,
        org: Uuid,
        id: Uuid,
        apart: &[Option<&str>],
    ) -> Result<String, ReqError> {
        let json = self.open(table, json)?;
        let Some(body) = json.strip_suffix('}') else {
            return Err(ReqError::Undecryptable(format!(
                "a row of {} is not a JSON object",
                table.name
            )));
        };
        let mut out = Vec::with_capacity(
            json.len() + apart.iter().flatten().map(|v| v.len() + 16).sum::<usize>(),
        );
        out.extend_from_slice(body.as_bytes());
        self.write_apart(table, &mut out, org, id, apart)?;
        out.push(b'}');
        // Valid UTF-8: the row's JSON, and strings that were `str`s, escaped.
        String::from_utf8(out).map_err(|e| ReqError::Undecryptable(e.to_string()))
    }

    /// Appends the sealed text columns of row `id` of `org`, as stored (`apart`, in
    /// [`Fields::apart`] order), decrypted, as members `,"col":"value"` to the unfinished JSON
    /// object `out` (which holds at least its `{`).
    pub fn write_apart(
        &self,
        table: &Table,
        out: &mut Vec<u8>,
        org: Uuid,
        id: Uuid,
        apart: &[Option<&str>],
    ) -> Result<(), ReqError> {
        let name = aad_table(table);
        let mut id_buf = Uuid::encode_buffer();
        let id: &str = id.hyphenated().encode_lower(&mut id_buf);
        let mut opener = None;
        for (c, stored) in Self::apart(table).zip(apart) {
            if out.len() > 1 {
                out.push(b',');
            }
            write_str(out, &c.name);
            out.push(b':');
            match stored {
                None => out.extend_from_slice(b"null"),
                Some(text) if is_ciphertext(text) => {
                    match self.open_value(&mut opener, table, name, c, org, id, text)? {
                        Some(plain) => {
                            let s =
                                std::str::from_utf8(&plain).map_err(|_| not_utf8(table, c, id))?;
                            write_str(out, s);
                        }
                        None => out.extend_from_slice(b"null"),
                    }
                }
                Some(text) => write_str(out, text),
            }
        }
        Ok(())
    }

    /// The sealed text columns of `table`, which reads select apart from the row's JSON.
    pub fn apart(table: &Table) -> impl Iterator<Item = &Column> {
        table
            .columns
            .iter()
            .filter(|c| is_sealed(c) && matches!(c.kind, Kind::Text))
    }

    /// Opens a JSON array of rows (a list page).
    pub fn open_all(&self, table: &Table, rows: &mut [String]) -> Result<(), ReqError> {
        for r in rows.iter_mut() {
            if let Cow::Owned(s) = self.open(table, r)? {
                *r = s;
            }
        }
        Ok(())
    }
}

fn not_utf8(table: &Table, c: &Column, id: &str) -> ReqError {
    ReqError::Undecryptable(format!("{}.{} of row {id}: not UTF-8", table.name, c.name))
}

/// Moves every value under an old key version to the current one (the rotation's background
/// work; compare-and-set, so a concurrent update wins), calling `on_value` per value seen. Runs
/// as administrator: no update trigger and no audit entry per value (the content does not
/// change). Covers the identity tables' emails and names too (`crate::account`). Resumable.
/// Old versions stay in the store: audit entries and backups still hold
/// values under them. Returns the number of values re-encrypted.
pub async fn reencrypt(
    keys: &Keys,
    client: &mut tokio_postgres::Client,
    batch: i64,
    mut on_value: impl FnMut(),
) -> Result<u64, crate::DbError> {
    let catalog = Catalog::load(&*client).await?;
    let mut moved = 0u64;
    for t in catalog.tables.values() {
        let cols: Vec<&str> = t
            .columns
            .iter()
            .filter(|c| is_sealed(c))
            .map(|c| c.name.as_str())
            .collect();
        if cols.is_empty() {
            continue;
        }
        let name = aad_table(t);
        for col in cols {
            let q = quote_ident(col);
            let mut after: (Uuid, Uuid) = (Uuid::nil(), Uuid::nil());
            loop {
                let tx = client.transaction().await?;
                // Re-encryption changes no content: no audit entry per value (one for the run),
                // no update trigger (updated_at and ETags stay).
                tx.batch_execute("SET LOCAL session_replication_role = replica")
                    .await?;
                let rows = tx
                    .query(
                        &format!(
                            "SELECT org_id, id, {q}::text FROM {} WHERE (org_id, id) > ($1, $2)
                               AND {q}::text LIKE '%enc:v1:%' ORDER BY org_id, id LIMIT $3",
                            t.qualified
                        ),
                        &[&after.0, &after.1, &batch],
                    )
                    .await?;
                let Some(last) = rows.last() else {
                    tx.commit().await?;
                    break;
                };
                after = (last.get(0), last.get(1));
                for r in &rows {
                    let (org, id, stored): (Uuid, Uuid, String) = (r.get(0), r.get(1), r.get(2));
                    // JSON columns hold the ciphertext as a JSON string.
                    let (text, is_json) = match serde_json::from_str::<String>(&stored) {
                        Ok(s) => (s, true),
                        Err(_) => (stored.clone(), false),
                    };
                    let row = id.to_string();
                    let place = FieldAad {
                        org,
                        table: name,
                        column: col,
                        row: &row,
                    };
                    match keys.cipher().reencrypt(&text, &place) {
                        Ok(Reencrypted::Rewritten(new)) => {
                            let new = if is_json {
                                Value::String(new).to_string()
                            } else {
                                new
                            };
                            let n = tx
                                .execute(
                                    &format!(
                                        "UPDATE {} SET {q} = $3::text::{ty} WHERE org_id = $1 AND id = $2 AND {q}::text = $4",
                                        t.qualified,
                                        ty = t.column(col).map_or("text", |c| c.sql_type.as_str())
                                    ),
                                    &[&org, &id, &new, &stored],
                                )
                                .await?;
                            moved += n;
                        }
                        Ok(Reencrypted::AlreadyCurrent) => {}
                        Err(e) if e.is_key_destroyed() => {}
                        Err(e) => {
                            tracing::warn!(table = %t.name, column = col, row = %id, error = %e, "value not re-encrypted");
                        }
                    }
                    on_value();
                }
                tx.commit().await?;
            }
        }
    }
    moved += crate::account::reencrypt(keys, client, batch, &mut on_value).await?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_keys_differ_per_org_and_person() {
        let (a, b, u, v) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        assert_eq!(subject_key(a, u), subject_key(a, u));
        assert_ne!(subject_key(a, u), subject_key(b, u));
        assert_ne!(subject_key(a, u), subject_key(a, v));
    }
}
