//! Field encryption, crypto-shredding and the GDPR workflows (SPEC R14–R18) over real HTTP and
//! a real database: erasure reaches the live database, the audit trail and an old `pg_dump`;
//! ciphertexts are bound to their row; rotation under load loses nothing; exports hold a
//! person's data from every organization and nobody else's; PHI needs MFA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use orgbase_db::account::{account_key, invitation_key};
use orgbase_db::fields::{Fields, subject_key};
use orgbase_db::gdpr::{self, Worker};
use orgbase_http::{HttpSettings, Privacy, Services, app};
use orgbase_keys::{FieldAad, Keys, KeysConfig};
use orgbase_testkit::{Api, TestDb, spawn_app, temp_dir};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const PII: &str = "Carol Danvers, SSN 078-05-1120, 42 Rue Lepic Paris";
/// Carol's account: what her erasure must remove everywhere, old backups included.
const CAROL_EMAIL: &str = "carol@acme.example";
const CAROL_NAME: &str = "Carol Quinlan-Danvers";
/// What confirms an erasure: the test accounts' password.
static CONFIRM: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| json!({"password": "password-1234"}));

struct World {
    db: TestDb,
    api: Api,
    keys: Arc<Keys>,
    fields: Fields,
    dir: PathBuf,
}

impl Drop for World {
    /// The key store and the export files go with the test, passed or failed.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl World {
    async fn new() -> Self {
        Self::with(TestDb::migrated().await, true).await
    }

    /// A server over `db` with its own key store, encrypting new values or not.
    async fn with(db: TestDb, encrypt: bool) -> Self {
        let dir = temp_dir("orgbase-privacy-");
        let keys = Arc::new(Keys::open(&dir, &KeysConfig::default()).unwrap());
        let fields = Fields::new(keys.clone(), encrypt);
        let admin = db.admin().await;
        let mut services = Services::load(db.pool(), &admin).await.unwrap();
        services.fields = fields.clone();
        services.privacy = Privacy {
            dir: dir.join("privacy"),
            erasure_grace: Duration::from_secs(90 * 86_400),
        };
        let settings = HttpSettings {
            request_timeout: Duration::from_secs(30),
            body_limit_bytes: 256 * 1024,
            access_log: false,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            slo: Default::default(),
            signup: Default::default(),
        };
        let base = spawn_app(app(
            services,
            orgbase_db::Migrator::embedded("t").latest(),
            &settings,
        ))
        .await;
        World {
            db,
            api: Api::new(base),
            keys,
            fields,
            dir,
        }
    }

    /// Carries out the due GDPR requests as the server's worker does (`now`: skip the grace).
    async fn run_requests(&self, now: bool) -> Vec<gdpr::Outcome> {
        let mut admin = self.db.admin().await;
        let dir = self.dir.join("privacy");
        let worker = Worker {
            keys: &self.keys,
            fields: &self.fields,
            dir: &dir,
        };
        let out = gdpr::run(&mut admin, &worker, now, None).await.unwrap();
        for o in &out {
            assert!(o.error.is_none(), "{o:?}");
        }
        out
    }

    /// Sign up with a name of its own, and log in: (user id, session token).
    async fn user_named(&self, email: &str, name: &str) -> (String, String) {
        let (s, v) = self
            .api
            .call(
                Method::POST,
                "/v1/auth/signup",
                None,
                Some(json!({"email": email, "password": "password-1234", "name": name})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(
            (v["email"].as_str(), v["name"].as_str()),
            (Some(email.to_lowercase().as_str()), Some(name))
        );
        let (s, t) = self
            .api
            .call(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"email": email, "password": "password-1234"})),
            )
            .await;
        assert_eq!(s, 200, "{t}");
        (
            v["id"].as_str().unwrap().to_string(),
            t["token"].as_str().unwrap().to_string(),
        )
    }

    /// Enrols TOTP for the session's account and verifies a first code: the generator.
    async fn enroll_totp(&self, token: &str) -> totp_rs::TOTP {
        let e = self
            .api
            .ok(Method::POST, "/v1/auth/mfa/totp/enroll", token, None)
            .await;
        let secret = totp_rs::Secret::Encoded(e["secret"].as_str().unwrap().to_string())
            .to_bytes()
            .unwrap();
        let totp = orgbase_db::auth::totp(&secret, "").unwrap();
        self.api
            .ok(
                Method::POST,
                "/v1/auth/mfa/totp/verify",
                token,
                Some(json!({"code": totp.generate_current().unwrap()})),
            )
            .await;
        totp
    }

    /// Logs in with the test password: the session.
    async fn login(&self, email: &str) -> Value {
        let (s, v) = self
            .api
            .call(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"email": email, "password": "password-1234"})),
            )
            .await;
        assert_eq!(s, 200, "{email}: {v}");
        v
    }

    async fn org(&self, token: &str, slug: &str) -> String {
        let o = self
            .api
            .ok(
                Method::POST,
                "/v1/orgs",
                token,
                Some(json!({"name": slug, "slug": slug})),
            )
            .await;
        o["id"].as_str().unwrap().to_string()
    }

    /// Adds `email` to `org` as a member with the notes editor role.
    async fn add_editor(&self, owner: &str, org: &str, email: &str) {
        let session = self.login(email).await;
        let token = session["token"].as_str().unwrap();
        self.api.join(org, owner, email, token, "member").await;
        let uid = session["user_id"].as_str().unwrap();
        self.api
            .ok(
                Method::PUT,
                &format!("/v1/orgs/{org}/members/{uid}/apps/notes"),
                owner,
                Some(json!({"role": "editor"})),
            )
            .await;
    }

    async fn note(&self, token: &str, org: &str, title: &str, body: &str) -> Value {
        self.api
            .ok(
                Method::POST,
                &format!("/v1/orgs/{org}/notes"),
                token,
                Some(json!({"title": title, "body": body})),
            )
            .await
    }

    /// `pg_dump` of a database (custom format when `file` ends in .dump, else plain SQL).
    fn dump(&self, env: &[(&'static str, String)], file: &Path) {
        let custom = file.extension().is_some_and(|e| e == "dump");
        let mut cmd = Command::new(orgbase_testkit::bin_dir().join("pg_dump"));
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .arg(if custom { "-Fc" } else { "-Fp" })
            .arg("-f")
            .arg(file);
        let st = cmd.status().unwrap();
        assert!(st.success(), "pg_dump failed");
    }
}

fn count(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_reaches_live_data_audit_and_an_old_dump() {
    let w = World::new().await;
    let (_alice, alice) = w.api.user("alice@acme.example").await;
    let (carol_id, carol) = w.user_named(CAROL_EMAIL, CAROL_NAME).await;
    let carol_uuid = Uuid::parse_str(&carol_id).unwrap();
    let org = w.org(&alice, "acme").await;
    w.add_editor(&alice, "acme", CAROL_EMAIL).await;
    // An invitation to her address too (still pending: she joined directly).
    let inv = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/acme/invitations",
            &alice,
            Some(json!({"email": "Carol@ACME.example", "role": "member"})),
        )
        .await;
    let inv_id = Uuid::parse_str(inv["id"].as_str().unwrap()).unwrap();
    let me = w.api.ok(Method::GET, "/v1/me", &carol, None).await;
    assert_eq!(
        (me["email"].as_str(), me["name"].as_str()),
        (Some(CAROL_EMAIL), Some(CAROL_NAME))
    );
    let alice_note = w.note(&alice, "acme", "Q3 plan", "ship it").await;
    let n = w.note(&carol, "acme", "About me", PII).await;
    let nid = n["id"].as_str().unwrap();
    assert_eq!(n["body"], PII, "the API answers the plaintext");
    // an update: the audit trail has old and new values
    w.api
        .ok(
            Method::PATCH,
            &format!("/v1/orgs/acme/notes/{nid}"),
            &carol,
            Some(json!({"title": PII})),
        )
        .await;
    let got = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/orgs/acme/notes/{nid}"),
            &carol,
            None,
        )
        .await;
    assert_eq!(
        (got["title"].as_str(), got["body"].as_str()),
        (Some(PII), Some(PII))
    );

    // PostgreSQL holds only ciphertext, in the table and in the audit entries.
    let admin = w.db.admin().await;
    let stored: String = admin
        .query_one(
            "SELECT body FROM orgbase.notes WHERE id = $1",
            &[&Uuid::parse_str(nid).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("enc:v1:"), "{stored}");
    let audited: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log WHERE record_id = $1 AND new::text LIKE '%enc:v1:%'",
            &[&nid],
        )
        .await
        .unwrap()
        .get(0);
    assert!(audited >= 2, "insert and update audited with ciphertexts");

    // A backup taken before the erasure.
    let work = temp_dir("orgbase-erase-dump-");
    let old_dump = work.join("before.dump");
    w.dump(&w.db.libpq_env(), &old_dump);
    let before = std::fs::read(&old_dump).unwrap();
    assert_eq!(count(&before, PII), 0, "the dump holds ciphertext only");
    let old_account = admin
        .query_one(
            "SELECT email, name, email_hash FROM orgbase.users WHERE id = $1",
            &[&carol_uuid],
        )
        .await
        .unwrap();
    let (old_email, old_name): (String, String) = (old_account.get(0), old_account.get(1));
    assert!(old_email.starts_with("enc:v1:") && old_name.starts_with("enc:v1:"));
    let old_hash: Vec<u8> = old_account.get(2);
    assert_eq!(old_hash, w.keys.blind_index().email(CAROL_EMAIL));

    // The person asks; the worker soft-deletes at once, then (--now) shreds.
    let req = w
        .api
        .ok(Method::POST, "/v1/me/erase", &carol, Some(CONFIRM.clone()))
        .await;
    assert_eq!(req["status"], "requested");
    let out = w.run_requests(false).await;
    assert_eq!(out[0].status, "pending", "grace period: soft delete only");
    w.api
        .expect(
            Method::GET,
            "/v1/me",
            Some(&carol),
            None,
            401,
            "unauthorized",
        )
        .await;
    let out = w.run_requests(true).await;
    assert_eq!(out[0].status, "done");
    let result = &out[0].detail;

    // Live database: no row, no plaintext, the account anonymized.
    let live = work.join("live.sql");
    w.dump(&w.db.libpq_env(), &live);
    let live_bytes = std::fs::read(&live).unwrap();
    assert_eq!(count(&live_bytes, PII), 0);
    for gone in [CAROL_EMAIL, CAROL_NAME] {
        assert_eq!(
            count(&live_bytes, gone),
            0,
            "{gone} gone from users and audit"
        );
    }
    let in_audit: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log
              WHERE concat(old::text, new::text) LIKE '%' || $1 || '%'
                 OR concat(old::text, new::text) LIKE '%' || $2 || '%'
                 OR concat(old::text, new::text) LIKE '%' || $3 || '%'",
            &[&CAROL_EMAIL, &CAROL_NAME, &hex::encode(&old_hash)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_audit, 0,
        "no email, name or blind index in the audit trail"
    );
    let anonymized = admin
        .query_one(
            "SELECT email, name, email_hash FROM orgbase.users WHERE id = $1",
            &[&carol_uuid],
        )
        .await
        .unwrap();
    assert!(anonymized.get::<_, String>(0).ends_with("@erased.invalid"));
    assert_eq!(anonymized.get::<_, String>(1), "");
    assert_ne!(
        anonymized.get::<_, Vec<u8>>(2),
        old_hash,
        "the blind index of the real email is gone"
    );
    // The audit entries about the invitation to her are redacted too (the chain still verifies).
    let unredacted: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log WHERE table_name = 'orgbase.invitations'
                AND record_id = $1 AND (old IS NOT NULL OR new IS NOT NULL)",
            &[&inv_id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unredacted, 0);
    // A server start after the erasure (the backfill) finds nothing to do.
    assert_eq!(
        orgbase_db::account::backfill(&mut w.db.admin().await, &w.fields, 100)
            .await
            .unwrap(),
        0
    );
    let invitations = w
        .api
        .ok(Method::GET, "/v1/orgs/acme/invitations", &alice, None)
        .await;
    let shown = invitations["items"][0]["email"].as_str().unwrap();
    assert!(shown.ends_with("@erased.invalid"), "{shown}");
    // Her email no longer logs in nor finds an account; it may sign up again, as a new person.
    w.api
        .expect(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": CAROL_EMAIL, "password": "password-1234"})),
            401,
            "unauthorized",
        )
        .await;
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.notes WHERE created_by = $1",
            &[&Uuid::parse_str(&carol_id).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // Audit table: the entries that held the note's ciphertexts are still there, unreadable.
    let rows = admin
        .query(
            "SELECT new ->> 'body' FROM orgbase.audit_log WHERE record_id = $1 AND new ->> 'body' LIKE 'enc:v1:%'",
            &[&nid],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    let org_id = Uuid::parse_str(&org).unwrap();
    let place = FieldAad {
        org: org_id,
        table: "orgbase.notes",
        column: "body",
        row: nid,
    };
    for r in &rows {
        let e = w.keys.cipher().decrypt(r.get(0), &place).unwrap_err();
        assert!(e.is_key_destroyed(), "{e}");
    }

    // The old dump, restored: the ciphertext is there, and no key opens it any more.
    let restored = TestDb::empty().await;
    let st = Command::new(orgbase_testkit::bin_dir().join("pg_restore"))
        .envs(restored.libpq_env().iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--no-owner", "--exit-on-error", "-d", &restored.name])
        .arg(&old_dump)
        .status()
        .unwrap();
    assert!(st.success(), "pg_restore");
    let r_admin = restored.admin().await;
    let old_body: String = r_admin
        .query_one(
            "SELECT body FROM orgbase.notes WHERE id = $1",
            &[&Uuid::parse_str(nid).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old_body, stored);
    let e = w.keys.cipher().decrypt(&old_body, &place).unwrap_err();
    assert!(e.is_key_destroyed(), "{e}");
    let restored_sql = work.join("restored.sql");
    w.dump(&restored.libpq_env(), &restored_sql);
    let restored_bytes = std::fs::read(&restored_sql).unwrap();
    for gone in [PII, CAROL_EMAIL, CAROL_NAME] {
        assert_eq!(count(&restored_bytes, gone), 0, "{gone} in the old dump");
    }
    // The old dump's account row: ciphertext under a destroyed key, and the blind index.
    let old_row = r_admin
        .query_one(
            "SELECT email, name, email_hash FROM orgbase.users WHERE id = $1",
            &[&carol_uuid],
        )
        .await
        .unwrap();
    assert_eq!(old_row.get::<_, String>(0), old_email);
    assert_eq!(old_row.get::<_, Vec<u8>>(2), old_hash);
    for (column, stored) in [("email", old_email.as_str()), ("name", old_name.as_str())] {
        let place = FieldAad {
            org: Uuid::nil(),
            table: "orgbase.users",
            column,
            row: &carol_id,
        };
        let e = w.keys.cipher().decrypt(stored, &place).unwrap_err();
        assert!(e.is_key_destroyed(), "{column}: {e}");
    }
    let old_invitation: String = r_admin
        .query_one(
            "SELECT email FROM orgbase.invitations WHERE id = $1",
            &[&inv_id],
        )
        .await
        .unwrap()
        .get(0);
    let inv_row = inv_id.to_string();
    let place = FieldAad {
        org: org_id,
        table: "orgbase.invitations",
        column: "email",
        row: &inv_row,
    };
    let e = w
        .keys
        .cipher()
        .decrypt(&old_invitation, &place)
        .unwrap_err();
    assert!(e.is_key_destroyed(), "invitation: {e}");

    // The audit chains still verify (redacted entries count by their digest).
    let mut admin = w.db.admin().await;
    orgbase_db::audit::seal_all(&mut admin).await.unwrap();
    let reports = orgbase_db::audit::verify(&admin, None, &[], |_| {})
        .await
        .unwrap();
    assert!(reports.iter().all(|r| r.problem.is_none()), "{reports:?}");
    assert!(reports.iter().map(|r| r.redacted).sum::<u64>() >= 1);

    // The certificate verifies offline against the server's key and names the destroyed key.
    let cert = serde_json::to_string(&result["certificate"]).unwrap();
    let c = orgbase_keys::verify_certificate(&cert, Some(&w.keys.signer().public_key())).unwrap();
    let mut destroyed: Vec<_> = c.keys_destroyed.iter().map(|k| k.key_id).collect();
    // Carol joined through an invitation too: its key holds her address as well.
    let joined: Uuid = admin
        .query_one(
            "SELECT id FROM orgbase.invitations WHERE org_id = $1 AND accepted_by = $2",
            &[&org_id, &carol_uuid],
        )
        .await
        .unwrap()
        .get(0);
    let mut expected = vec![
        subject_key(org_id, carol_uuid),
        account_key(carol_uuid),
        invitation_key(org_id, joined),
        invitation_key(org_id, inv_id),
    ];
    destroyed.sort_by_key(|k| k.id);
    expected.sort_by_key(|k| k.id);
    assert_eq!(
        destroyed, expected,
        "the organization's subject key, the account key, the invitations' keys"
    );
    assert_eq!(c.audit_entry, format!("audit:{}", result["audit_entry"]));
    let shred: String = admin
        .query_one(
            "SELECT action FROM orgbase.audit_log WHERE id = $1",
            &[&result["audit_entry"].as_i64().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shred, "gdpr.erase.shred");
    let mut tampered: Value = serde_json::from_str(&cert).unwrap();
    tampered["certificate"]["stores_touched"] = json!(["database"]);
    assert!(
        orgbase_keys::verify_certificate(
            &tampered.to_string(),
            Some(&w.keys.signer().public_key())
        )
        .is_err()
    );

    // Alice's data is untouched.
    let a = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/orgs/acme/notes/{}", alice_note["id"].as_str().unwrap()),
            &alice,
            None,
        )
        .await;
    assert_eq!(a["body"], "ship it");
    std::fs::remove_dir_all(work).unwrap();
}

#[tokio::test]
async fn ciphertext_is_bound_to_its_row_and_organization() {
    let w = World::new().await;
    let (_a, alice) = w.api.user("alice@a.example").await;
    let (_b, bob) = w.api.user("bob@b.example").await;
    w.org(&alice, "org-a").await;
    w.org(&bob, "org-b").await;
    let n1 = w.note(&alice, "org-a", "one", "first secret").await;
    let n2 = w.note(&alice, "org-a", "two", "second secret").await;
    let n3 = w.note(&bob, "org-b", "three", "third secret").await;
    let id = |n: &Value| Uuid::parse_str(n["id"].as_str().unwrap()).unwrap();
    let admin = w.db.admin().await;
    let body1: String = admin
        .query_one("SELECT body FROM orgbase.notes WHERE id = $1", &[&id(&n1)])
        .await
        .unwrap()
        .get(0);
    // moved to another row of the same organization
    admin
        .execute(
            "UPDATE orgbase.notes SET body = $1 WHERE id = $2",
            &[&body1, &id(&n2)],
        )
        .await
        .unwrap();
    let v = w
        .api
        .expect(
            Method::GET,
            &format!("/v1/orgs/org-a/notes/{}", id(&n2)),
            Some(&alice),
            None,
            500,
            "undecryptable",
        )
        .await;
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("another organization, table, column or row"),
        "{v}"
    );
    // moved to another organization
    admin
        .execute(
            "UPDATE orgbase.notes SET body = $1 WHERE id = $2",
            &[&body1, &id(&n3)],
        )
        .await
        .unwrap();
    w.api
        .expect(
            Method::GET,
            &format!("/v1/orgs/org-b/notes/{}", id(&n3)),
            Some(&bob),
            None,
            500,
            "undecryptable",
        )
        .await;
    // tampered: one byte of the encrypted body flipped
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body1.strip_prefix("enc:v1:").unwrap())
        .unwrap();
    let last = raw.len() - 20;
    raw[last] ^= 1;
    let flipped = format!(
        "enc:v1:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw)
    );
    admin
        .execute(
            "UPDATE orgbase.notes SET body = $1 WHERE id = $2",
            &[&flipped, &id(&n1)],
        )
        .await
        .unwrap();
    let v = w
        .api
        .expect(
            Method::GET,
            &format!("/v1/orgs/org-a/notes/{}", id(&n1)),
            Some(&alice),
            None,
            500,
            "undecryptable",
        )
        .await;
    assert!(v["detail"].as_str().unwrap().contains("tampered"), "{v}");
    // a key version that does not exist (bytes 18..22 of the header)
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body1.strip_prefix("enc:v1:").unwrap())
        .unwrap();
    raw[18..22].copy_from_slice(&9u32.to_be_bytes());
    let wrong = format!(
        "enc:v1:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw)
    );
    admin
        .execute(
            "UPDATE orgbase.notes SET body = $1 WHERE id = $2",
            &[&wrong, &id(&n1)],
        )
        .await
        .unwrap();
    let v = w
        .api
        .expect(
            Method::GET,
            &format!("/v1/orgs/org-a/notes/{}", id(&n1)),
            Some(&alice),
            None,
            500,
            "undecryptable",
        )
        .await;
    assert!(
        v["detail"].as_str().unwrap().contains("has no version v9"),
        "{v}"
    );
    // encrypted columns cannot be filtered or sorted on
    w.api
        .expect(
            Method::GET,
            "/v1/orgs/org-a/notes?sort=title",
            Some(&alice),
            None,
            422,
            "validation",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_loses_nothing() {
    let w = Arc::new(World::new().await);
    let (_a, alice) = w.api.user("alice@load.example").await;
    w.org(&alice, "load").await;
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let w = w.clone();
            let alice = alice.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..40 {
                    let body = format!("writer {t} value {i}");
                    let n = w.note(&alice, "load", &format!("t{t}-{i}"), &body).await;
                    // read back at once: whatever version wrote it decrypts
                    let got = w
                        .api
                        .ok(
                            Method::GET,
                            &format!("/v1/orgs/load/notes/{}", n["id"].as_str().unwrap()),
                            &alice,
                            None,
                        )
                        .await;
                    assert_eq!(got["body"], body);
                    mine.push((n["id"].as_str().unwrap().to_string(), body));
                }
                mine
            })
        })
        .collect();
    // meanwhile: rotate every key a few times and re-encrypt
    let mut admin = w.db.admin().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        for info in w.keys.store().list().unwrap() {
            w.keys.store().rotate(info.key).unwrap();
        }
        orgbase_db::fields::reencrypt(&w.keys, &mut admin, 25, || {})
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    for h in writers {
        all.extend(h.await.unwrap());
    }
    assert_eq!(all.len(), 160);
    // one more rotation: every stored value (title and body of each note, alice's account
    // email and name) moves
    for info in w.keys.store().list().unwrap() {
        w.keys.store().rotate(info.key).unwrap();
    }
    let moved = orgbase_db::fields::reencrypt(&w.keys, &mut admin, 25, || {})
        .await
        .unwrap();
    assert_eq!(moved, 320 + 2);
    // every value decrypts, and every stored value is now under its key's current version
    for (id, body) in &all {
        let got = w
            .api
            .ok(
                Method::GET,
                &format!("/v1/orgs/load/notes/{id}"),
                &alice,
                None,
            )
            .await;
        assert_eq!(&got["body"], body);
    }
    let rows = admin
        .query("SELECT body FROM orgbase.notes", &[])
        .await
        .unwrap();
    for r in rows {
        let h = orgbase_keys::cipher::header(r.get(0)).unwrap();
        let (current, _) = w.keys.store().current(h.key).unwrap();
        assert_eq!(h.version, current);
    }
    assert_eq!(
        orgbase_db::fields::reencrypt(&w.keys, &mut admin, 25, || {})
            .await
            .unwrap(),
        0,
        "a second run finds nothing to do"
    );
}

#[tokio::test]
async fn export_holds_both_organizations_and_nobody_else() {
    let w = World::new().await;
    let (_a, alice) = w.api.user("alice@x.example").await;
    let (_b, bob) = w.api.user("bob@y.example").await;
    let (dave_id, dave) = w.api.user("dave@z.example").await;
    w.org(&alice, "xco").await;
    w.org(&bob, "yco").await;
    w.add_editor(&alice, "xco", "dave@z.example").await;
    w.add_editor(&bob, "yco", "dave@z.example").await;
    w.note(&dave, "xco", "dave in x", "dave-secret-x").await;
    w.note(&dave, "yco", "dave in y", "dave-secret-y").await;
    w.note(&alice, "xco", "alice note", "alice-secret").await;
    w.note(&bob, "yco", "bob note", "bob-secret").await;
    let req = w.api.ok(Method::POST, "/v1/me/export", &dave, None).await;
    let id = req["id"].as_str().unwrap().to_string();
    w.api
        .expect(
            Method::GET,
            &format!("/v1/me/gdpr-requests/{id}/download"),
            Some(&dave),
            None,
            409,
            "conflict",
        )
        .await;
    w.run_requests(false).await;
    let r = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/me/gdpr-requests/{id}"),
            &dave,
            None,
        )
        .await;
    assert_eq!(r["status"], "done", "{r}");
    // someone else cannot see or download it
    w.api
        .expect(
            Method::GET,
            &format!("/v1/me/gdpr-requests/{id}/download"),
            Some(&alice),
            None,
            404,
            "not-found",
        )
        .await;
    let resp = w
        .api
        .http
        .get(format!("{}/v1/me/gdpr-requests/{id}/download", w.api.base))
        .bearer_auth(&dave)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/zip");
    let bytes = resp.bytes().await.unwrap().to_vec();
    let sha = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &bytes,
    ));
    assert_eq!(r["result"]["sha256"], sha);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut all = String::new();
    let mut files = std::collections::BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        all.push_str(&s);
        files.insert(f.name().to_string(), s);
    }
    for want in ["dave-secret-x", "dave-secret-y", "dave@z.example", &dave_id] {
        assert!(all.contains(want), "export lacks {want}");
    }
    for never in [
        "alice-secret",
        "bob-secret",
        "alice@x.example",
        "bob@y.example",
        "enc:v1:",
    ] {
        assert!(!all.contains(never), "export holds {never}");
    }
    let notes: Value = serde_json::from_str(&files["data/notes.json"]).unwrap();
    assert_eq!(notes.as_array().unwrap().len(), 2);
    assert!(files["data/notes.csv"].contains("dave-secret-y"));
    let manifest: Value = serde_json::from_str(&files["manifest.json"]).unwrap();
    for f in manifest["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let sha = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            files[name].as_bytes(),
        ));
        assert_eq!(f["sha256"], sha, "{name}");
    }
    // an admin exports a member: that organization only
    let dave_uuid = Uuid::parse_str(&dave_id).unwrap();
    let req = w
        .api
        .ok(
            Method::POST,
            &format!("/v1/orgs/xco/members/{dave_uuid}/export"),
            &alice,
            None,
        )
        .await;
    w.run_requests(false).await;
    let resp = w
        .api
        .http
        .get(format!(
            "{}/v1/orgs/xco/gdpr-requests/{}/download",
            w.api.base,
            req["id"].as_str().unwrap()
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(resp.bytes().await.unwrap().to_vec())).unwrap();
    let mut notes = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("data/notes.json").unwrap(), &mut notes)
        .unwrap();
    assert!(notes.contains("dave-secret-x") && !notes.contains("dave-secret-y"));
    // and bob (another org's owner) cannot ask for it
    w.api
        .expect(
            Method::POST,
            &format!("/v1/orgs/xco/members/{dave_uuid}/export"),
            Some(&bob),
            None,
            404,
            "not-found",
        )
        .await;
}

#[tokio::test]
async fn an_admin_erases_a_member_in_one_organization_only() {
    let w = World::new().await;
    let (_a, alice) = w.api.user("alice@p.example").await;
    let (_b, bob) = w.api.user("bob@q.example").await;
    let (erin_id, erin) = w.api.user("erin@r.example").await;
    let p = w.org(&alice, "pco").await;
    w.org(&bob, "qco").await;
    w.add_editor(&alice, "pco", "erin@r.example").await;
    w.add_editor(&bob, "qco", "erin@r.example").await;
    w.note(&erin, "pco", "erin p", "erin-in-p").await;
    let q_note = w.note(&erin, "qco", "erin q", "erin-in-q").await;
    let erin_uuid = Uuid::parse_str(&erin_id).unwrap();
    // a member cannot erase another member
    w.api
        .expect(
            Method::POST,
            &format!("/v1/orgs/qco/members/{erin_uuid}/erase"),
            Some(&erin),
            None,
            403,
            "forbidden",
        )
        .await;
    w.api
        .ok(
            Method::POST,
            &format!("/v1/orgs/pco/members/{erin_uuid}/erase"),
            &alice,
            None,
        )
        .await;
    w.run_requests(true).await;
    // gone from P (membership and rows), her key there destroyed
    w.api
        .expect(
            Method::GET,
            "/v1/orgs/pco/notes",
            Some(&erin),
            None,
            404,
            "not-found",
        )
        .await;
    let e = w
        .keys
        .store()
        .current(subject_key(Uuid::parse_str(&p).unwrap(), erin_uuid))
        .unwrap_err();
    assert!(e.to_string().contains("destroyed"), "{e}");
    // untouched in Q
    let got = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/orgs/qco/notes/{}", q_note["id"].as_str().unwrap()),
            &erin,
            None,
        )
        .await;
    assert_eq!(got["body"], "erin-in-q");
    let reqs = w
        .api
        .ok(Method::GET, "/v1/orgs/pco/gdpr-requests", &alice, None)
        .await;
    assert_eq!(reqs["items"][0]["status"], "done");
    assert!(reqs["items"][0]["result"]["certificate"]["signature"].is_string());
}

#[tokio::test]
async fn phi_needs_a_session_that_passed_mfa() {
    let w = World::new().await;
    let (_a, alice) = w.api.user("alice@clinic.example").await;
    w.org(&alice, "clinic").await;
    let admin = w.db.admin().await;
    admin
        .batch_execute(
            "SET ROLE orgbase_owner;
             CREATE TABLE orgbase.visits (reason text NOT NULL, diagnosis text);
             SELECT orgbase.make_tenant_table('orgbase.visits', 'notes', classes => '{\"diagnosis\": \"phi\", \"reason\": \"pii\"}');
             RESET ROLE;",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // the catalog reloads at most once a second
    w.api
        .expect(
            Method::POST,
            "/v1/orgs/clinic/visits",
            Some(&alice),
            Some(json!({"reason": "checkup", "diagnosis": "flu"})),
            403,
            "mfa-required",
        )
        .await;
    w.api
        .expect(
            Method::GET,
            "/v1/orgs/clinic/visits",
            Some(&alice),
            None,
            403,
            "mfa-required",
        )
        .await;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM orgbase.visits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "nothing written");
    // with MFA
    w.enroll_totp(&alice).await;
    let v = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/clinic/visits",
            &alice,
            Some(json!({"reason": "checkup", "diagnosis": "flu"})),
        )
        .await;
    assert_eq!(v["diagnosis"], "flu");
    let stored: String = admin
        .query_one("SELECT diagnosis FROM orgbase.visits", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("enc:v1:"));
    let list = w
        .api
        .ok(Method::GET, "/v1/orgs/clinic/visits", &alice, None)
        .await;
    assert_eq!(list["items"][0]["reason"], "checkup");
    let logged: i64 = admin
        .query_one("SELECT count(*) FROM orgbase.read_access_log", &[])
        .await
        .unwrap()
        .get(0);
    assert!(logged >= 1, "PHI reads are logged");
}

#[tokio::test]
async fn a_legal_hold_stops_an_erasure_until_released() {
    let w = World::new().await;
    let (_a, alice) = w.api.user("alice@hold.example").await;
    let (frank_id, frank) = w.api.user("frank@hold.example").await;
    w.org(&alice, "hold").await;
    w.add_editor(&alice, "hold", "frank@hold.example").await;
    let n = w.note(&frank, "hold", "frank", "frank-evidence").await;
    let hold = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/hold/legal-holds",
            &alice,
            Some(json!({"reason": "litigation", "subject": frank_id})),
        )
        .await;
    w.api
        .ok(Method::POST, "/v1/me/erase", &frank, Some(CONFIRM.clone()))
        .await;
    let mut admin = w.db.admin().await;
    let dir = w.dir.join("privacy");
    let worker = Worker {
        keys: &w.keys,
        fields: &w.fields,
        dir: &dir,
    };
    let out = gdpr::run(&mut admin, &worker, true, None).await.unwrap();
    assert!(
        out[0].error.as_deref().unwrap().contains("legal hold"),
        "{out:?}"
    );
    assert_eq!(out[0].status, "requested", "nothing happened");
    let body: String = admin
        .query_one(
            "SELECT body FROM orgbase.notes WHERE id = $1 AND deleted_at IS NULL",
            &[&Uuid::parse_str(n["id"].as_str().unwrap()).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(body.starts_with("enc:v1:"), "the row is still there");
    w.api
        .ok(
            Method::POST,
            &format!(
                "/v1/orgs/hold/legal-holds/{}/release",
                hold["id"].as_str().unwrap()
            ),
            &alice,
            None,
        )
        .await;
    let out = w.run_requests(true).await;
    assert_eq!(out[0].status, "done");
}

/// Every stored email and name of `orgbase.users` and `orgbase.invitations`, and (with `audit`)
/// every audit entry, as one text (what an administrator or a backup sees).
async fn stored_identity_text(admin: &tokio_postgres::Client, audit: bool) -> String {
    admin
        .query_one(
            "SELECT concat_ws(' ',
                 (SELECT string_agg(concat_ws(' ', email, name), ' ') FROM orgbase.users),
                 (SELECT string_agg(email, ' ') FROM orgbase.invitations),
                 (SELECT string_agg(concat(old::text, new::text), ' ') FROM orgbase.audit_log WHERE $1))",
            &[&audit],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn account_email_and_name_are_encrypted_and_found_by_blind_index() {
    let w = World::new().await;
    let (ada_id, ada) = w.user_named("Ada@Lovelace.example", "Ada Byron King").await;
    let (bob_id, _bob) = w.user_named("bob@babbage.example", "Charles Babbage").await;
    w.user_named("aaron@zuse.example", "Konrad Zuse").await;
    let admin = w.db.admin().await;
    for r in admin
        .query("SELECT id, email, name, email_hash FROM orgbase.users", &[])
        .await
        .unwrap()
    {
        let (email, name): (String, String) = (r.get(1), r.get(2));
        assert!(email.starts_with("enc:v1:"), "{email}");
        assert!(name.starts_with("enc:v1:"), "{name}");
        assert_eq!(r.get::<_, Vec<u8>>(3).len(), 32);
    }
    let ada_hash: Vec<u8> = admin
        .query_one(
            "SELECT email_hash FROM orgbase.users WHERE id = $1",
            &[&Uuid::parse_str(&ada_id).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ada_hash, w.keys.blind_index().email("ada@lovelace.example"));

    // Login by email, any case; a wrong password is audited without the email.
    for email in ["ADA@lovelace.EXAMPLE", " ada@lovelace.example "] {
        let s = w.login(email).await;
        assert_eq!(s["user_id"], ada_id.as_str());
    }
    for email in ["ada@lovelace.example", "nobody@lovelace.example"] {
        w.api
            .expect(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"email": email, "password": "wrong-password"})),
                401,
                "unauthorized",
            )
            .await;
    }
    let failures = admin
        .query(
            "SELECT actor_user, new FROM orgbase.audit_log WHERE action = 'login.failure' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(failures.len(), 2);
    assert_eq!(
        failures[0].get::<_, Option<Uuid>>(0),
        Some(Uuid::parse_str(&ada_id).unwrap())
    );
    assert_eq!(
        failures[1].get::<_, Value>(1)["email_hash"],
        hex::encode(w.keys.blind_index().email("nobody@lovelace.example"))
    );
    // The same email in another case is taken.
    w.api
        .expect(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": "ADA@LOVELACE.example", "password": "password-1234"})),
            409,
            "conflict",
        )
        .await;

    // The API answers the plaintext: the profile, the member list (sorted by email), a member.
    let me = w.api.ok(Method::GET, "/v1/me", &ada, None).await;
    assert_eq!(
        (me["email"].as_str(), me["name"].as_str()),
        (Some("ada@lovelace.example"), Some("Ada Byron King"))
    );
    w.org(&ada, "engines").await;
    for email in ["bob@babbage.example", "AARON@zuse.example"] {
        let session = w.login(email).await;
        let token = session["token"].as_str().unwrap();
        w.api.join("engines", &ada, email, token, "member").await;
    }
    let list = w
        .api
        .ok(Method::GET, "/v1/orgs/engines/members", &ada, None)
        .await;
    let emails: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        [
            "aaron@zuse.example",
            "ada@lovelace.example",
            "bob@babbage.example"
        ]
    );
    let bob = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/orgs/engines/members/{bob_id}"),
            &ada,
            None,
        )
        .await;
    assert_eq!(
        (bob["email"].as_str(), bob["name"].as_str()),
        (Some("bob@babbage.example"), Some("Charles Babbage"))
    );

    // Invitations: the invitee's email is stored encrypted, shown in clear, matched by index.
    let inv = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/engines/invitations",
            &ada,
            Some(json!({"email": "Grace@Hopper.example", "role": "member"})),
        )
        .await;
    assert_eq!(inv["email"], "grace@hopper.example");
    let token = inv["token"].as_str().unwrap();
    let list = w
        .api
        .ok(Method::GET, "/v1/orgs/engines/invitations", &ada, None)
        .await;
    assert_eq!(list["items"][0]["email"], "grace@hopper.example");
    let (_, mallory) = w.user_named("mallory@evil.example", "Mallory").await;
    w.api
        .expect(
            Method::POST,
            &format!("/v1/invitations/{token}/accept"),
            Some(&mallory),
            None,
            404,
            "not-found",
        )
        .await;
    let (_, grace) = w.user_named("GRACE@hopper.example", "Grace Hopper").await;
    w.api
        .ok(
            Method::POST,
            &format!("/v1/invitations/{token}/accept"),
            &grace,
            None,
        )
        .await;

    // What the database holds (tables and audit trail): no email, no name.
    let stored = stored_identity_text(&admin, true).await.to_lowercase();
    for plain in [
        "lovelace", "byron", "babbage", "zuse", "hopper", "mallory", "@",
    ] {
        assert!(!stored.contains(plain), "{plain} stored in clear");
    }
}

#[tokio::test]
async fn without_field_encryption_accounts_are_stored_in_clear_and_found_by_index() {
    let w = World::with(TestDb::migrated().await, false).await;
    let (id, token) = w.user_named("Lin@Clear.example", "Lin Clear").await;
    let admin = w.db.admin().await;
    let r = admin
        .query_one(
            "SELECT email, name, email_hash FROM orgbase.users WHERE id = $1",
            &[&Uuid::parse_str(&id).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "lin@clear.example");
    assert_eq!(r.get::<_, String>(1), "Lin Clear");
    assert_eq!(
        r.get::<_, Vec<u8>>(2),
        w.keys.blind_index().email("lin@clear.example")
    );
    w.login("LIN@clear.example").await;
    w.api
        .expect(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": "lin@CLEAR.example", "password": "password-1234"})),
            409,
            "conflict",
        )
        .await;
    let me = w.api.ok(Method::GET, "/v1/me", &token, None).await;
    assert_eq!(me["email"], "lin@clear.example");
    // Turned on later: the backfill encrypts what was stored in clear, and login still works.
    let on = Fields::new(w.keys.clone(), true);
    let mut admin = w.db.admin().await;
    assert_eq!(
        orgbase_db::account::backfill(&mut admin, &on, 100)
            .await
            .unwrap(),
        1
    );
    let email: String = admin
        .query_one("SELECT email FROM orgbase.users", &[])
        .await
        .unwrap()
        .get(0);
    assert!(email.starts_with("enc:v1:"));
    assert_eq!(
        orgbase_db::account::backfill(&mut admin, &on, 100)
            .await
            .unwrap(),
        0,
        "idempotent"
    );
    let me = w.api.ok(Method::GET, "/v1/me", &token, None).await;
    assert_eq!(me["name"], "Lin Clear");
}

#[tokio::test]
async fn accounts_from_before_account_encryption_are_indexed_and_encrypted_by_the_backfill() {
    // A database an earlier release migrated to its 7th migration, with accounts of then; that
    // release upgraded it, and this one recognises it as at the baseline.
    let db = TestDb::empty().await;
    let mut target = db.target.clone();
    let legacy = orgbase_testkit::legacy_migrator();
    let migrator = orgbase_db::Migrator::embedded("t");
    let mut admin = db.admin().await;
    legacy.up(&mut admin, Some(7), |_, _| {}).await.unwrap();
    target.ensure_runtime_login().await.unwrap();
    let hash = orgbase_db::auth::hash_password("password-1234".into())
        .await
        .unwrap();
    let (old_id, org) = (Uuid::now_v7(), Uuid::now_v7());
    admin
        .execute(
            "INSERT INTO orgbase.users (id, email, name, password_hash) VALUES ($1, 'old@timer.example', 'Old Timer', $2)",
            &[&old_id, &hash],
        )
        .await
        .unwrap();
    admin
        .execute(
            "INSERT INTO orgbase.organizations (id, name, slug, owner_id) VALUES ($1, 'Old', 'old-co', $2)",
            &[&org, &old_id],
        )
        .await
        .unwrap();
    admin
        .execute(
            "INSERT INTO orgbase.members (org_id, user_id, role) VALUES ($1, $2, 'owner')",
            &[&org, &old_id],
        )
        .await
        .unwrap();
    let invitation = orgbase_db::auth::token_hash("obi_old");
    admin
        .execute(
            "INSERT INTO orgbase.invitations (org_id, email, role, token_hash, invited_by)
             VALUES ($1, 'new@comer.example', 'member', $2, $3)",
            &[&org, &&invitation[..], &old_id],
        )
        .await
        .unwrap();
    legacy.up(&mut admin, None, |_, _| {}).await.unwrap();
    migrator.up(&mut admin, None, |_, _| {}).await.unwrap();

    let w = World::with(db, true).await;
    let mut admin = w.db.admin().await;
    assert_eq!(
        orgbase_db::account::backfill(&mut admin, &w.fields, 1)
            .await
            .unwrap(),
        2,
        "one account, one invitation, in batches of one"
    );
    // The tables; audit entries written before it keep what they were written with.
    let stored = stored_identity_text(&admin, false).await;
    assert!(!stored.contains("old@timer") && !stored.contains("Old Timer"));
    assert!(!stored.contains("new@comer"));
    let login = w.login("Old@Timer.example").await;
    let token = login["token"].as_str().unwrap();
    let me = w.api.ok(Method::GET, "/v1/me", token, None).await;
    assert_eq!(
        (me["email"].as_str(), me["name"].as_str()),
        (Some("old@timer.example"), Some("Old Timer"))
    );
    let list = w
        .api
        .ok(Method::GET, "/v1/orgs/old-co/invitations", token, None)
        .await;
    assert_eq!(list["items"][0]["email"], "new@comer.example");
    // The invitee signs up and accepts: matched by the backfilled index.
    let (_, newcomer) = w.user_named("new@comer.example", "New Comer").await;
    w.api
        .ok(
            Method::POST,
            "/v1/invitations/obi_old/accept",
            &newcomer,
            None,
        )
        .await;
    assert_eq!(
        orgbase_db::account::backfill(&mut admin, &w.fields, 100)
            .await
            .unwrap(),
        0
    );
    // A lost blind-index key (a new one was made): the next backfill rebuilds the index.
    admin
        .batch_execute(
            "UPDATE orgbase.users SET email_hash = sha256(convert_to(id::text, 'UTF8'));
             UPDATE orgbase.invitations SET email_hash = sha256(convert_to(id::text, 'UTF8'));",
        )
        .await
        .unwrap();
    let (s, _) = w
        .api
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "old@timer.example", "password": "password-1234"})),
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        orgbase_db::account::backfill(&mut admin, &w.fields, 100)
            .await
            .unwrap(),
        3,
        "two accounts and an invitation re-indexed"
    );
    w.login("old@timer.example").await;
    w.login("new@comer.example").await;
}

/// The audit API shows owners the values of encrypted columns decrypted, as the GDPR export
/// does, while the database holds only ciphertext.
#[tokio::test]
async fn the_audit_api_decrypts_what_the_export_decrypts() {
    let w = World::new().await;
    let (_, owner) = w.user_named("audit-owner@a.example", "Owner").await;
    w.org(&owner, "audited").await;
    let api = &w.api;
    let owner = &owner;
    let note = api
        .ok(
            Method::POST,
            "/v1/orgs/audited/notes",
            owner,
            Some(json!({"title": "audited title", "body": "audited body"})),
        )
        .await;
    let id = note["id"].as_str().unwrap();
    let page = api
        .ok(
            Method::GET,
            &format!("/v1/orgs/audited/audit?table=notes&record={id}"),
            owner,
            None,
        )
        .await;
    let entry = &page["items"][0];
    assert_eq!(entry["new"]["title"], "audited title", "{entry}");
    assert_eq!(entry["new"]["body"], "audited body", "{entry}");
    let stored: serde_json::Value = w
        .db
        .admin()
        .await
        .query_one(
            "SELECT new FROM orgbase.audit_log WHERE table_name = 'orgbase.notes' AND record_id = $1",
            &[&id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored["title"].as_str().unwrap().starts_with("enc:v1:"),
        "{stored}"
    );
}

#[tokio::test]
async fn erasure_needs_the_password_and_can_be_cancelled_in_its_grace_period() {
    let w = World::new().await;
    let (dana_id, dana) = w.api.user("dana@undo.example").await;
    let (_e, erin) = w.api.user("erin@undo.example").await;
    w.org(&dana, "undo").await;
    let kept = w.note(&dana, "undo", "kept", "dana's note").await;
    let gone = w.note(&dana, "undo", "gone", "deleted before").await;
    let gone_id = gone["id"].as_str().unwrap();
    w.api
        .ok(
            Method::DELETE,
            &format!("/v1/orgs/undo/notes/{gone_id}"),
            &dana,
            None,
        )
        .await;
    let open_erasures = |token: String| {
        let api = &w.api;
        async move {
            let v = api
                .ok(Method::GET, "/v1/me/gdpr-requests", &token, None)
                .await;
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["kind"] == "erase" && r["status"] != "cancelled")
                .count()
        }
    };

    // A session alone does not erase: no body, a wrong password, an API key.
    let (s, _) = w
        .api
        .call(Method::POST, "/v1/me/erase", Some(&dana), None)
        .await;
    assert!(s.is_client_error(), "{s}");
    w.api
        .expect(
            Method::POST,
            "/v1/me/erase",
            Some(&dana),
            Some(json!({"password": "not-her-password"})),
            403,
            "reauthentication-failed",
        )
        .await;
    let key = w
        .api
        .ok(
            Method::POST,
            "/v1/orgs/undo/api-keys",
            &dana,
            Some(json!({"name": "k", "scopes": ["*:admin", "admin"]})),
        )
        .await;
    let key = key["key"].as_str().unwrap();
    w.api
        .expect(
            Method::POST,
            "/v1/me/erase",
            Some(key),
            Some(CONFIRM.clone()),
            401,
            "unauthorized",
        )
        .await;
    assert_eq!(open_erasures(dana.clone()).await, 0, "nothing was opened");

    // Confirmed: soft phase, sessions end, no login.
    let req = w
        .api
        .ok(Method::POST, "/v1/me/erase", &dana, Some(CONFIRM.clone()))
        .await;
    assert_eq!(req["status"], "requested");
    let out = w.run_requests(false).await;
    assert_eq!(out[0].status, "pending");
    w.api
        .expect(
            Method::GET,
            "/v1/me",
            Some(&dana),
            None,
            401,
            "unauthorized",
        )
        .await;
    let login = json!({"email": "dana@undo.example", "password": "password-1234"});
    w.api
        .expect(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(login.clone()),
            401,
            "unauthorized",
        )
        .await;

    // Cancelling takes her credentials; another account, without an erasure, gets nothing.
    w.api
        .expect(
            Method::POST,
            "/v1/auth/cancel-erasure",
            None,
            Some(json!({"email": "dana@undo.example", "password": "wrong-password"})),
            401,
            "unauthorized",
        )
        .await;
    w.api
        .expect(
            Method::POST,
            "/v1/auth/cancel-erasure",
            None,
            Some(json!({"email": "erin@undo.example", "password": "password-1234"})),
            401,
            "unauthorized",
        )
        .await;
    let _ = erin;
    let (s, cancelled) = w
        .api
        .call(
            Method::POST,
            "/v1/auth/cancel-erasure",
            None,
            Some(login.clone()),
        )
        .await;
    assert_eq!(s, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["id"], req["id"]);
    // The account is back at once; the old session stays ended.
    w.api
        .expect(
            Method::GET,
            "/v1/me",
            Some(&dana),
            None,
            401,
            "unauthorized",
        )
        .await;
    let session = w.login("dana@undo.example").await;
    let dana = session["token"].as_str().unwrap().to_string();
    // The rows come back at the worker's next pass — only those the erasure deleted.
    let list = |token: String| {
        let api = &w.api;
        async move {
            let v = api
                .ok(Method::GET, "/v1/orgs/undo/notes", &token, None)
                .await;
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert!(list(dana.clone()).await.is_empty(), "not yet restored");
    let out = w.run_requests(false).await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].status, "cancelled");
    assert_eq!(out[0].detail["restored"]["notes"], 1, "{out:?}");
    assert_eq!(list(dana.clone()).await, vec![kept["id"].as_str().unwrap()]);
    assert!(w.run_requests(true).await.is_empty(), "nothing left to do");
    let admin = w.db.admin().await;
    let actions: Vec<String> = admin
        .query(
            "SELECT action FROM orgbase.audit_log WHERE actor_user = $1 AND action LIKE 'gdpr.erase.%'
              ORDER BY id",
            &[&Uuid::parse_str(&dana_id).unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, ["gdpr.erase.request", "gdpr.erase.cancel"]);

    // Nothing left to cancel; and after the grace period there is nothing to give back.
    w.api
        .expect(
            Method::POST,
            "/v1/auth/cancel-erasure",
            None,
            Some(login.clone()),
            401,
            "unauthorized",
        )
        .await;
    w.api
        .ok(Method::POST, "/v1/me/erase", &dana, Some(CONFIRM.clone()))
        .await;
    let out = w.run_requests(true).await;
    assert_eq!(out[0].status, "done", "{out:?}");
    w.api
        .expect(
            Method::POST,
            "/v1/auth/cancel-erasure",
            None,
            Some(login),
            401,
            "unauthorized",
        )
        .await;
}

#[tokio::test]
async fn erasure_with_mfa_needs_the_current_code_too() {
    let w = World::new().await;
    let (_id, fay) = w.api.user("fay@mfa-erase.example").await;
    let totp = w.enroll_totp(&fay).await;
    // A wrong code: the current one with its last digit changed.
    let current = totp.generate_current().unwrap();
    let last = current.as_bytes()[5] - b'0';
    let wrong = format!("{}{}", &current[..5], (last + 5) % 10);
    for body in [
        CONFIRM.clone(),
        json!({"password": "password-1234", "totp": wrong}),
    ] {
        w.api
            .expect(
                Method::POST,
                "/v1/me/erase",
                Some(&fay),
                Some(body),
                403,
                "mfa-required",
            )
            .await;
    }
    let code = totp.generate_current().unwrap();
    let req = w
        .api
        .ok(
            Method::POST,
            "/v1/me/erase",
            &fay,
            Some(json!({"password": "password-1234", "totp": code})),
        )
        .await;
    assert_eq!(req["status"], "requested");
    w.run_requests(false).await;
    let creds = json!({"email": "fay@mfa-erase.example", "password": "password-1234"});
    w.api
        .expect(
            Method::POST,
            "/v1/auth/cancel-erasure",
            None,
            Some(creds.clone()),
            403,
            "mfa-required",
        )
        .await;
    let mut with_code = creds;
    with_code["totp"] = json!(totp.generate_current().unwrap());
    let (s, v) = w
        .api
        .call(
            Method::POST,
            "/v1/auth/cancel-erasure",
            None,
            Some(with_code),
        )
        .await;
    assert_eq!(
        (s.as_u16(), v["status"].as_str()),
        (200, Some("cancelled")),
        "{v}"
    );
}

#[tokio::test]
async fn an_admin_cancels_a_member_erasure_in_its_grace_period() {
    let w = World::new().await;
    let (_a, alice) = w.api.user("alice@cancel.example").await;
    let (_b, bob) = w.api.user("bob@cancel.example").await;
    let (erin_id, erin) = w.api.user("erin@cancel.example").await;
    w.org(&alice, "keepco").await;
    w.org(&bob, "otherco").await;
    w.add_editor(&alice, "keepco", "erin@cancel.example").await;
    let note = w.note(&erin, "keepco", "erin's", "kept after all").await;
    let req = w
        .api
        .ok(
            Method::POST,
            &format!("/v1/orgs/keepco/members/{erin_id}/erase"),
            &alice,
            None,
        )
        .await;
    let id = req["id"].as_str().unwrap();
    let out = w.run_requests(false).await;
    assert_eq!(out[0].status, "pending");
    w.api
        .expect(
            Method::GET,
            "/v1/orgs/keepco/notes",
            Some(&erin),
            None,
            404,
            "not-found",
        )
        .await;
    let cancel = format!("/v1/orgs/keepco/gdpr-requests/{id}/cancel");
    // Erin herself (no longer a member), another organization's owner (with its own slug and
    // with this one's), a random id: nothing is cancelled.
    let (s, _) = w.api.call(Method::POST, &cancel, Some(&erin), None).await;
    assert_eq!(s, 404);
    w.api
        .expect(
            Method::POST,
            &format!("/v1/orgs/otherco/gdpr-requests/{id}/cancel"),
            Some(&bob),
            None,
            404,
            "not-found",
        )
        .await;
    let (s, _) = w.api.call(Method::POST, &cancel, Some(&bob), None).await;
    assert_eq!(s, 404);
    w.api
        .expect(
            Method::POST,
            &format!("/v1/orgs/keepco/gdpr-requests/{}/cancel", Uuid::now_v7()),
            Some(&alice),
            None,
            404,
            "not-found",
        )
        .await;
    let got = w.api.ok(Method::POST, &cancel, &alice, None).await;
    assert_eq!(got["status"], "cancelled");
    // The membership is back at once, the note at the worker's next pass.
    let out = w.run_requests(false).await;
    assert_eq!(out[0].status, "cancelled");
    assert_eq!(out[0].detail["restored"]["notes"], 1, "{out:?}");
    let back = w
        .api
        .ok(
            Method::GET,
            &format!("/v1/orgs/keepco/notes/{}", note["id"].as_str().unwrap()),
            &erin,
            None,
        )
        .await;
    assert_eq!(back["body"], "kept after all");
    // Nothing left to cancel; a carried-out erasure cannot be cancelled.
    w.api
        .expect(Method::POST, &cancel, Some(&alice), None, 409, "conflict")
        .await;
    let again = w
        .api
        .ok(
            Method::POST,
            &format!("/v1/orgs/keepco/members/{erin_id}/erase"),
            &alice,
            None,
        )
        .await;
    w.run_requests(true).await;
    w.api
        .expect(
            Method::POST,
            &format!(
                "/v1/orgs/keepco/gdpr-requests/{}/cancel",
                again["id"].as_str().unwrap()
            ),
            Some(&alice),
            None,
            409,
            "conflict",
        )
        .await;
    let admin = w.db.admin().await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log WHERE action = 'gdpr.erase.cancel' \
             AND new->>'request' = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
