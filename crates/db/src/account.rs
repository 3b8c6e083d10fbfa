//! The personal data of the built-in identity tables (docs/keys.md): an account's `email` and
//! `name` (`orgbase.users`) and an invitation's `email` (`orgbase.invitations`) are pii. They reach
//! PostgreSQL encrypted — the account's under the person's own **account key** ([`account_key`]),
//! an invitation's under a key of its own ([`invitation_key`]) — and accounts are found by the
//! email's **blind index** (`email_hash`, [`orgbase_keys::BlindIndex`]), never by the email.
//! Erasing the person destroys the account key and the keys of the invitations sent to them, so
//! their email and name in old backups and audit entries become noise.
//!
//! With field encryption off the values are stored in clear, as before; the blind index is used
//! all the same. [`backfill`] brings rows written before accounts were encrypted (or while encryption was
//! off) up to date.

use orgbase_keys::{CipherError, FieldAad, KeyError, KeyId, is_ciphertext};
use serde_json::{Map, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::fields::{Fields, subject_key};
use crate::request::ReqError;

/// How many characters a password has: sign-up and `orgbase admin create` check the same.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=1024;

/// The address in lower case, when it looks like one: no spaces or control characters (a NUL
/// would cut it short in C code reading it), one `@`, a dotted domain.
pub fn normalize_email(email: &str) -> Option<String> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 320
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    valid.then_some(e)
}

/// The table name in the bindings of account values.
pub const USERS: &str = "orgbase.users";
/// The table name in the bindings of invitation emails.
pub const INVITATIONS: &str = "orgbase.invitations";
/// Where anonymized accounts' emails point (erasure).
pub const ERASED_DOMAIN: &str = "@erased.invalid";

/// The key of an invitation's email: one per invitation, a subject key (the invitee is a data
/// subject who may have no account yet). The invitee's erasure destroys it.
pub fn invitation_key(org: Uuid, invitation: Uuid) -> KeyId {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"orgbase.invitation-key.v1\0");
    ctx.update(org.as_bytes());
    ctx.update(invitation.as_bytes());
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    KeyId::subject(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// The key of a person's account values: their subject key in no organization (the nil
/// organization, like the account audit chain). Destroyed by the erasure of the person, not by
/// an organization's erasure of a member.
pub fn account_key(user: Uuid) -> KeyId {
    subject_key(Uuid::nil(), user)
}

fn keys_error(e: CipherError) -> ReqError {
    crate::fields::keys_failed(e)
}

impl Fields {
    /// The blind index of `email` (any case): what `email_hash` holds.
    pub fn email_hash(&self, email: &str) -> Result<Vec<u8>, ReqError> {
        self.blind_index()
            .map(|b| b.email(email).to_vec())
            .ok_or_else(|| ReqError::Keys("no blind-index key is configured".into()))
    }

    fn seal_at(&self, value: &str, place: &FieldAad<'_>, key: KeyId) -> Result<String, ReqError> {
        if !self.encrypts() {
            return Ok(value.to_string());
        }
        self.cipher()?
            .encrypt(value.as_bytes(), place, key)
            .map_err(keys_error)
    }

    /// Opens a stored value: plaintext as is, a ciphertext decrypted, `None` when its key was
    /// destroyed (an erased person).
    fn open_at(&self, stored: &str, place: &FieldAad<'_>) -> Result<Option<String>, ReqError> {
        if !is_ciphertext(stored) {
            return Ok(Some(stored.to_string()));
        }
        match self.cipher()?.decrypt(stored, place) {
            Ok(plain) => String::from_utf8(plain).map(Some).map_err(|_| {
                ReqError::Undecryptable(format!(
                    "{}.{} of {}: not UTF-8",
                    place.table, place.column, place.row
                ))
            }),
            Err(e) if e.is_key_destroyed() => Ok(None),
            Err(CipherError::Key(e @ (KeyError::Io { .. } | KeyError::Random))) => {
                Err(ReqError::Keys(e.to_string()))
            }
            Err(e) => Err(ReqError::Undecryptable(format!(
                "{}.{} of {}: {e}",
                place.table, place.column, place.row
            ))),
        }
    }

    /// `value` of account `user`'s `column` (`email` or `name`) as stored: encrypted under the
    /// account key, or as is when field encryption is off.
    pub fn seal_account(&self, user: Uuid, column: &str, value: &str) -> Result<String, ReqError> {
        let row = user.to_string();
        let place = FieldAad {
            org: Uuid::nil(),
            table: USERS,
            column,
            row: &row,
        };
        self.seal_at(value, &place, account_key(user))
    }

    /// The plaintext of account `user`'s `column` as stored; `None` once the person is erased.
    pub fn open_account(
        &self,
        user: Uuid,
        column: &str,
        stored: &str,
    ) -> Result<Option<String>, ReqError> {
        let row = user.to_string();
        let place = FieldAad {
            org: Uuid::nil(),
            table: USERS,
            column,
            row: &row,
        };
        self.open_at(stored, &place)
    }

    /// Opens `email` and `name` of a JSON object about account `obj[id]` in place (a value whose
    /// key is gone becomes `null`).
    pub fn open_account_json(
        &self,
        obj: &mut Map<String, Value>,
        id: &str,
    ) -> Result<(), ReqError> {
        let Some(user) = obj
            .get(id)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            return Ok(());
        };
        for column in ["email", "name"] {
            if let Some(Value::String(stored)) = obj.get(column)
                && is_ciphertext(stored)
            {
                let plain = self.open_account(user, column, stored)?;
                obj.insert(column.to_string(), plain.map_or(Value::Null, Value::String));
            }
        }
        Ok(())
    }

    /// An invitation's email as stored: encrypted under the invitation's key.
    pub fn seal_invitation(&self, org: Uuid, id: Uuid, email: &str) -> Result<String, ReqError> {
        let row = id.to_string();
        let place = FieldAad {
            org,
            table: INVITATIONS,
            column: "email",
            row: &row,
        };
        self.seal_at(email, &place, invitation_key(org, id))
    }

    /// An invitation's email in clear (`None` once the invitee was erased).
    pub fn open_invitation(
        &self,
        org: Uuid,
        id: Uuid,
        stored: &str,
    ) -> Result<Option<String>, ReqError> {
        let row = id.to_string();
        let place = FieldAad {
            org,
            table: INVITATIONS,
            column: "email",
            row: &row,
        };
        self.open_at(stored, &place)
    }
}

/// Brings account and invitation rows up to date with account encryption and the configuration:
/// fills a missing `email_hash`, and (field encryption on) encrypts an email or name still in
/// clear. Runs as administrator in batches of `batch` rows, without row triggers (one audit
/// entry for the run, not one per row with the plaintext in it); resumable and idempotent.
/// Anonymized accounts (erased before accounts were encrypted) get their index only. When the
/// stored index turns out to be made with another blind-index key, every row's index is
/// recomputed. Returns the rows updated.
pub async fn backfill(
    client: &mut Client,
    fields: &Fields,
    batch: i64,
) -> Result<u64, crate::DbError> {
    let migrated: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                             WHERE table_schema = 'orgbase' AND table_name = 'users'
                               AND column_name = 'email_hash')",
            &[],
        )
        .await?
        .get(0);
    if !migrated {
        return Ok(0);
    }
    let bad = |e: ReqError| crate::DbError::Crypto(e.to_string());
    let encrypt = fields.encrypts();
    let reindex = stale_index(client, fields).await.map_err(bad)?;
    let mut users = 0u64;
    let mut after = Uuid::nil();
    loop {
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL session_replication_role = replica")
            .await?;
        let rows = tx
            .query(
                "SELECT id, email, name FROM orgbase.users
                  WHERE id > $1
                    AND ($4 OR email_hash IS NULL
                         OR ($2 AND email NOT LIKE '%@erased.invalid'
                             AND (email NOT LIKE 'enc:v1:%' OR name NOT LIKE 'enc:v1:%')))
                  ORDER BY id LIMIT $3 FOR UPDATE",
                &[&after, &encrypt, &batch, &reindex],
            )
            .await?;
        let Some(last) = rows.last() else {
            tx.commit().await?;
            break;
        };
        after = last.get(0);
        for r in &rows {
            let (id, email, name): (Uuid, String, String) = (r.get(0), r.get(1), r.get(2));
            let plain = fields.open_account(id, "email", &email).map_err(bad)?;
            let Some(plain) = plain else {
                // The account key is gone but the account was not anonymized: nothing to index.
                tracing::warn!(user = %id, "account email cannot be read: left as is");
                continue;
            };
            let hash = fields.email_hash(&plain).map_err(bad)?;
            let erased = email.ends_with(ERASED_DOMAIN);
            let seal = |column: &str, stored: String| -> Result<String, crate::DbError> {
                if encrypt && !erased && !is_ciphertext(&stored) {
                    fields.seal_account(id, column, &stored).map_err(bad)
                } else {
                    Ok(stored)
                }
            };
            let (email, name) = (seal("email", email)?, seal("name", name)?);
            users += tx
                .execute(
                    "UPDATE orgbase.users SET email_hash = $2, email = $3, name = $4 WHERE id = $1",
                    &[&id, &hash, &email, &name],
                )
                .await?;
        }
        tx.commit().await?;
    }
    let mut invitations = 0u64;
    let mut after = (Uuid::nil(), Uuid::nil());
    loop {
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL session_replication_role = replica")
            .await?;
        let rows = tx
            .query(
                "SELECT org_id, id, email FROM orgbase.invitations
                  WHERE (org_id, id) > ($1, $2)
                    AND ($5 OR email_hash IS NULL
                         OR ($3 AND email NOT LIKE 'enc:v1:%' AND email NOT LIKE '%@erased.invalid'))
                  ORDER BY org_id, id LIMIT $4 FOR UPDATE",
                &[&after.0, &after.1, &encrypt, &batch, &reindex],
            )
            .await?;
        let Some(last) = rows.last() else {
            tx.commit().await?;
            break;
        };
        after = (last.get(0), last.get(1));
        for r in &rows {
            let (org, id, email): (Uuid, Uuid, String) = (r.get(0), r.get(1), r.get(2));
            let Some(plain) = fields.open_invitation(org, id, &email).map_err(bad)? else {
                continue;
            };
            let hash = fields.email_hash(&plain).map_err(bad)?;
            // An invitation anonymized by an erasure stays as it is: its key is destroyed.
            let email = if encrypt && !is_ciphertext(&email) && !email.ends_with(ERASED_DOMAIN) {
                fields.seal_invitation(org, id, &plain).map_err(bad)?
            } else {
                email
            };
            invitations += tx
                .execute(
                    "UPDATE orgbase.invitations SET email_hash = $3, email = $4
                      WHERE org_id = $1 AND id = $2",
                    &[&org, &id, &hash, &email],
                )
                .await?;
        }
        tx.commit().await?;
    }
    if users + invitations > 0 {
        let detail =
            serde_json::json!({"users": users, "invitations": invitations, "encrypted": encrypt});
        client
            .execute(
                "INSERT INTO orgbase.audit_log (org_id, actor_kind, action, table_name, record_id, new)
                 VALUES ('00000000-0000-0000-0000-000000000000', 'system', 'account.pii.backfill',
                         'orgbase.users', NULL, $1)",
                &[&detail],
            )
            .await?;
        tracing::info!(
            users,
            invitations,
            encrypted = encrypt,
            "account emails indexed and encrypted"
        );
    }
    Ok(users + invitations)
}

/// Whether the stored index was made with another blind-index key (the key file was lost or
/// replaced): then nobody could log in, and [`backfill`] recomputes every row's index from the
/// email. Checks the newest indexed account that can be read.
async fn stale_index(client: &Client, fields: &Fields) -> Result<bool, ReqError> {
    let rows = client
        .query(
            "SELECT id, email, email_hash FROM orgbase.users
              WHERE email_hash IS NOT NULL AND email NOT LIKE '%@erased.invalid'
              ORDER BY id DESC LIMIT 5",
            &[],
        )
        .await?;
    for r in &rows {
        let (id, email, stored): (Uuid, String, Vec<u8>) = (r.get(0), r.get(1), r.get(2));
        if let Some(plain) = fields.open_account(id, "email", &email)? {
            let stale = fields.email_hash(&plain)? != stored;
            if stale {
                tracing::warn!(
                    "the email blind index was made with another key (blind-index.key lost or replaced): rebuilding it"
                );
            }
            return Ok(stale);
        }
    }
    Ok(false)
}

/// [`crate::fields::reencrypt`] for the identity tables: moves account emails and names and
/// invitation emails under an old key version to the current one (compare-and-set, without row
/// triggers). Returns the number of values re-encrypted.
pub(crate) async fn reencrypt(
    keys: &orgbase_keys::Keys,
    client: &mut Client,
    batch: i64,
    on_value: &mut impl FnMut(),
) -> Result<u64, crate::DbError> {
    const NIL: &str = "'00000000-0000-0000-0000-000000000000'::uuid";
    let mut moved = 0u64;
    for (table, column, org) in [
        (USERS, "email", NIL),
        (USERS, "name", NIL),
        (INVITATIONS, "email", "org_id"),
    ] {
        let mut after = (Uuid::nil(), Uuid::nil());
        loop {
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL session_replication_role = replica")
                .await?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT {org}, id, {column} FROM {table} WHERE ({org}, id) > ($1, $2)
                           AND {column} LIKE 'enc:v1:%' ORDER BY {org}, id LIMIT $3"
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
                let (org_id, id, stored): (Uuid, Uuid, String) = (r.get(0), r.get(1), r.get(2));
                let row = id.to_string();
                let place = FieldAad {
                    org: org_id,
                    table,
                    column,
                    row: &row,
                };
                match keys.cipher().reencrypt(&stored, &place) {
                    Ok(orgbase_keys::Reencrypted::Rewritten(new)) => {
                        moved += tx
                            .execute(
                                &format!(
                                    "UPDATE {table} SET {column} = $3 WHERE {org} = $1 AND id = $2 AND {column} = $4"
                                ),
                                &[&org_id, &id, &new, &stored],
                            )
                            .await?;
                    }
                    Ok(orgbase_keys::Reencrypted::AlreadyCurrent) => {}
                    Err(e) if e.is_key_destroyed() => {}
                    Err(e) => {
                        tracing::warn!(table, column, row = %id, error = %e, "value not re-encrypted");
                    }
                }
                on_value();
            }
            tx.commit().await?;
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_invitation_keys_are_their_own() {
        let (org, user) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(account_key(user), account_key(user));
        assert_ne!(account_key(user), subject_key(org, user));
        assert_ne!(account_key(user), account_key(Uuid::now_v7()));
        assert_ne!(invitation_key(org, user), subject_key(org, user));
        assert_ne!(
            invitation_key(org, user),
            invitation_key(Uuid::now_v7(), user)
        );
    }

    #[test]
    fn without_encryption_values_stay_and_without_a_blind_index_lookups_fail() {
        let plain = Fields::disabled();
        let user = Uuid::now_v7();
        assert_eq!(
            plain.seal_account(user, "email", "a@b.example").unwrap(),
            "a@b.example"
        );
        assert_eq!(
            plain
                .open_account(user, "email", "a@b.example")
                .unwrap()
                .as_deref(),
            Some("a@b.example")
        );
        assert!(matches!(
            plain.email_hash("a@b.example"),
            Err(ReqError::Keys(_))
        ));
        let indexed = Fields::disabled().with_blind_index(std::sync::Arc::new(
            orgbase_keys::BlindIndex::from_secret(&[7; 32]),
        ));
        assert_eq!(
            indexed.email_hash("A@B.example").unwrap(),
            indexed.email_hash("a@b.example").unwrap()
        );
    }
}
