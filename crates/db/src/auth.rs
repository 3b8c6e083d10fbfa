//! Credentials: password hashing (argon2id), opaque tokens stored as SHA-256 hashes, the server
//! key that proves to the database that the orgbase server (not SQL run as the runtime role)
//! asked for a session, and TOTP.

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tokio_postgres::Client;

use crate::DbError;

/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "obs_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "obr_";
/// Prefix of API keys.
pub const API_KEY_PREFIX: &str = "obk_";
/// Prefix of invitation tokens.
pub const INVITATION_PREFIX: &str = "obi_";

/// A new random token (prefix + 64 hex digits) and the SHA-256 the database keeps.
pub fn new_token(prefix: &str) -> Result<(String, [u8; 32]), DbError> {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| DbError::Crypto("the system random generator failed".into()))?;
    let token = format!("{prefix}{}", hex::encode(raw));
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The hash under which a token is stored and looked up.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Random bytes (TOTP secrets).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], DbError> {
    let mut raw = [0u8; N];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| DbError::Crypto("the system random generator failed".into()))?;
    Ok(raw)
}

/// The key shared by the orgbase server and its database (`orgbase.context_key`), read once at
/// start over the administrative connection. The runtime role cannot read it, so a proof made
/// with it shows that the call comes from this server's code, not from SQL injected into a
/// request.
#[derive(Clone)]
pub struct ServerKey {
    inner: zeroize::Zeroizing<Vec<u8>>,
    outer: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey([redacted])")
    }
}

impl ServerKey {
    /// Read the key with an administrative connection.
    pub async fn load(admin: &Client) -> Result<Self, DbError> {
        let row = admin
            .query_opt(
                "SELECT inner_key, outer_key FROM orgbase.context_key WHERE id = 1",
                &[],
            )
            .await?
            .ok_or_else(|| {
                DbError::NotMigrated("orgbase.context_key is empty: run migrations".into())
            })?;
        Ok(Self {
            inner: zeroize::Zeroizing::new(row.get(0)),
            outer: zeroize::Zeroizing::new(row.get(1)),
        })
    }

    /// A blind-index key derived from this key, for a server that runs without a key store
    /// (tests, an unconfigured library user). It is as secret as `orgbase.context_key`, which
    /// backups hold: it hides nothing from a backup — which, without a key store, holds the
    /// emails in clear anyway. A server with a key store uses the store's blind-index key.
    pub fn fallback_blind_index(&self) -> orgbase_keys::BlindIndex {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.outer);
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        ctx.update(b"orgbase.blind-index.fallback.v1\0");
        ctx.update(&self.inner);
        orgbase_keys::BlindIndex::from_secret(ctx.sign().as_ref())
    }

    /// NMAC-SHA256 over `srv|purpose|msg|issued_at`, as `orgbase.require_proof` checks it.
    pub fn proof(&self, purpose: &str, msg: &str) -> (i64, Vec<u8>) {
        let issued_at = chrono::Utc::now().timestamp();
        let text = format!("srv|{purpose}|{msg}|{issued_at}");
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.inner);
        ctx.update(text.as_bytes());
        let inner = ctx.finish();
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.outer);
        ctx.update(inner.as_ref());
        (issued_at, ctx.finish().as_ref().to_vec())
    }
}

fn argon2() -> Result<argon2::Argon2<'static>, DbError> {
    // OWASP password storage cheat sheet: argon2id, m = 19 MiB, t = 2, p = 1.
    let params = argon2::Params::new(19 * 1024, 2, 1, None)
        .map_err(|e| DbError::Crypto(format!("argon2 parameters: {e}")))?;
    Ok(argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// Hash a password (PHC string). CPU-heavy: runs on the blocking pool.
pub async fn hash_password(password: String) -> Result<String, DbError> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt_bytes = random_bytes::<16>()?;
        let salt = SaltString::encode_b64(&salt_bytes)
            .map_err(|e| DbError::Crypto(format!("salt: {e}")))?;
        argon2()?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| DbError::Crypto(format!("hashing: {e}")))
    })
    .await
    .map_err(|e| DbError::Crypto(format!("hashing task: {e}")))?
}

/// A PHC string that matches no password, verified when the account does not exist so that
/// unknown emails cost as much as wrong passwords.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$y1Y8t2KX0sM4Qm1O0G7eQ7cJ7Yq8d5vYzHn3T0c8kXw";

/// Check a password against a PHC string (or the dummy when `hash` is `None`). Blocking pool.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, DbError> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let known = hash.is_some();
        let phc = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return Ok(false);
        };
        let ok = argon2()?
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && known)
    })
    .await
    .map_err(|e| DbError::Crypto(format!("verifying task: {e}")))?
}

/// TOTP with the usual authenticator-app parameters: SHA-1, 6 digits, 30 s steps, ±1 step.
pub fn totp(secret: &[u8], account: &str) -> Result<totp_rs::TOTP, DbError> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret.to_vec(),
        Some("orgbase".to_string()),
        account.to_string(),
    )
    .map_err(|e| DbError::Crypto(format!("TOTP: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let (a, ha) = new_token(SESSION_PREFIX).unwrap();
        let (b, _) = new_token(SESSION_PREFIX).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("obs_") && a.len() == 4 + 64);
        assert_eq!(token_hash(&a), ha);
    }

    #[tokio::test]
    async fn passwords_verify_and_unknown_accounts_never_do() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            verify_password("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong".into(), Some(h)).await.unwrap());
        assert!(!verify_password("anything".into(), None).await.unwrap());
    }

    #[test]
    fn totp_codes_check() {
        let secret = random_bytes::<20>().unwrap();
        let t = totp(&secret, "a@example.com").unwrap();
        let code = t.generate_current().unwrap();
        assert!(t.check_current(&code).unwrap());
        assert!(!t.check_current("000000").unwrap() || code == "000000");
    }
}
