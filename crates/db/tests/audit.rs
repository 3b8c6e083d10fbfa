//! The audit trail (SPEC R11–R12) against a real PostgreSQL: capture in the write's transaction,
//! append-only for the runtime role, and `verify` naming each kind of tampering done directly
//! in the database as the owner role.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use orgbase_db::audit::{self, Breach, ChainReport, Signer};
use orgbase_testkit::TestDb;
use tokio_postgres::Client;
use uuid::Uuid;

struct Fixture {
    db: TestDb,
    org_a: Uuid,
    org_b: Uuid,
    alice: Uuid,
    /// Token hashes: alice owns org A, bob owns org B, vic is a plain member of org A.
    alice_token: Vec<u8>,
    bob_token: Vec<u8>,
    vic_token: Vec<u8>,
}

async fn fixture() -> Fixture {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let (org_a, org_b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut ids = vec![];
    for (n, (name, org, role)) in [
        ("alice", org_a, "owner"),
        ("bob", org_b, "owner"),
        ("vic", org_a, "member"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = Uuid::now_v7();
        admin
            .execute(
                "INSERT INTO orgbase.users (id, email, email_hash) VALUES ($1, $2, sha256(convert_to($2, 'UTF8')))",
                &[&id, &format!("{name}@example.com")],
            )
            .await
            .unwrap();
        if role == "owner" {
            admin
                .execute(
                    "INSERT INTO orgbase.organizations (id, name, slug, owner_id) VALUES ($1, $2, $2, $3)",
                    &[&org, &format!("org-{name}"), &id],
                )
                .await
                .unwrap();
        }
        admin
            .execute(
                "INSERT INTO orgbase.members (org_id, user_id, role) VALUES ($1, $2, $3)",
                &[&org, &id, &role],
            )
            .await
            .unwrap();
        admin
            .execute(
                "INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, expires_at)
                 VALUES ($1, $2, $3, $4, now() + interval '1 day')",
                &[
                    &Uuid::now_v7(),
                    &id,
                    &vec![n as u8 + 1; 32],
                    &vec![n as u8 + 101; 32],
                ],
            )
            .await
            .unwrap();
        ids.push(id);
    }
    Fixture {
        db,
        org_a,
        org_b,
        alice: ids[0],
        alice_token: vec![1; 32],
        bob_token: vec![2; 32],
        vic_token: vec![3; 32],
    }
}

/// Run `sql` in a request transaction of `token` in `org`, committing; returns rows.
async fn request(
    f: &Fixture,
    token: &[u8],
    org: Uuid,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let pool = f.db.pool();
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.query_one(
        "SELECT * FROM orgbase.begin_request($1, $2, '203.0.113.7', 'req-1', 'test-agent/1')",
        &[&token, &org.to_string()],
    )
    .await?;
    let rows = tx.query(sql, params).await?;
    tx.commit().await?;
    Ok(rows)
}

async fn new_note(f: &Fixture, title: &str) -> Uuid {
    let rows = request(
        f,
        &f.alice_token,
        f.org_a,
        "INSERT INTO orgbase.notes (title) VALUES ($1) RETURNING id",
        &[&title],
    )
    .await
    .unwrap();
    rows[0].get(0)
}

async fn owner(f: &Fixture) -> Client {
    let c = f.db.admin().await;
    c.batch_execute("SET ROLE orgbase_owner").await.unwrap();
    c
}

async fn entries_for(admin: &Client, record: Uuid) -> Vec<(String, String)> {
    admin
        .query(
            "SELECT action, actor_kind FROM orgbase.audit_log WHERE record_id = $1 ORDER BY id",
            &[&record.to_string()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_committed_write_has_exactly_one_entry_and_a_failed_one_none() {
    let f = fixture().await;
    let admin = f.db.admin().await;
    let id = new_note(&f, "first").await;
    let row = admin
        .query_one(
            "SELECT actor_kind, actor_user, action, table_name, new ->> 'title', host(ip),
                    user_agent, request_id, org_id
               FROM orgbase.audit_log WHERE record_id = $1",
            &[&id.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "user");
    assert_eq!(row.get::<_, Uuid>(1), f.alice);
    assert_eq!(row.get::<_, String>(2), "insert");
    assert_eq!(row.get::<_, String>(3), "orgbase.notes");
    assert_eq!(row.get::<_, String>(4), "first");
    assert_eq!(row.get::<_, String>(5), "203.0.113.7");
    assert_eq!(row.get::<_, String>(6), "test-agent/1");
    assert_eq!(row.get::<_, String>(7), "req-1");
    assert_eq!(row.get::<_, Uuid>(8), f.org_a);

    request(
        &f,
        &f.alice_token,
        f.org_a,
        "UPDATE orgbase.notes SET title = 'second' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    request(
        &f,
        &f.alice_token,
        f.org_a,
        "UPDATE orgbase.notes SET deleted_at = now() WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let old_new = admin
        .query_one(
            "SELECT old ->> 'title', new ->> 'title' FROM orgbase.audit_log
              WHERE record_id = $1 AND action = 'update'",
            &[&id.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(old_new.get::<_, String>(0), "first");
    assert_eq!(old_new.get::<_, String>(1), "second");
    assert_eq!(
        entries_for(&admin, id).await,
        [
            ("insert", "user"),
            ("update", "user"),
            ("soft_delete", "user")
        ]
        .map(|(a, k)| (a.to_string(), k.to_string()))
    );

    // Failed writes leave nothing: a check violation, a not-null violation, an RLS denial (a
    // plain member without the notes role; a row for another organization), and a rolled-back
    // transaction.
    let bad = Uuid::now_v7();
    for (token, sql) in [
        (
            &f.alice_token,
            "INSERT INTO orgbase.notes (id, title) VALUES ($1, '')",
        ),
        (
            &f.alice_token,
            "INSERT INTO orgbase.notes (id, org_id, title) VALUES ($1, (SELECT id FROM orgbase.organizations LIMIT 0), 'x')",
        ),
        (
            &f.vic_token,
            "INSERT INTO orgbase.notes (id, title) VALUES ($1, 'not allowed')",
        ),
    ] {
        assert!(
            request(&f, token, f.org_a, sql, &[&bad]).await.is_err(),
            "{sql}"
        );
    }
    let mut bob_row = admin
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log WHERE org_id = $1",
            &[&f.org_b],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(
        request(
            &f,
            &f.alice_token,
            f.org_a,
            "INSERT INTO orgbase.notes (id, org_id, title) VALUES ($1, $2, 'into b')",
            &[&bad, &f.org_b],
        )
        .await
        .is_err()
    );
    {
        let pool = f.db.pool();
        let mut client = pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.query_one(
            "SELECT * FROM orgbase.begin_request($1, $2)",
            &[&f.alice_token, &f.org_a.to_string()],
        )
        .await
        .unwrap();
        tx.execute(
            "INSERT INTO orgbase.notes (id, title) VALUES ($1, 'rolled back')",
            &[&bad],
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
    }
    assert!(entries_for(&admin, bad).await.is_empty());
    bob_row -= admin
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log WHERE org_id = $1",
            &[&f.org_b],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(bob_row, 0, "nothing was logged in org B");

    // Maintenance without a request context is recorded as the system, with the database role.
    admin
        .execute(
            "UPDATE orgbase.notes SET title = 'by admin' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let row = admin
        .query_one(
            "SELECT actor_kind, actor_user, db_role FROM orgbase.audit_log
              WHERE record_id = $1 ORDER BY id DESC LIMIT 1",
            &[&id.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "system");
    assert_eq!(row.get::<_, Option<Uuid>>(1), None);
}

#[tokio::test]
async fn identity_tables_are_audited_without_secrets() {
    let f = fixture().await;
    let admin = f.db.admin().await;
    // Members and app roles written by the org owner through a request.
    request(
        &f,
        &f.alice_token,
        f.org_a,
        "INSERT INTO orgbase.app_permissions (org_id, user_id, app, role)
         SELECT $1, user_id, 'notes', 'editor' FROM orgbase.members WHERE org_id = $1 AND role = 'member'",
        &[&f.org_a],
    )
    .await
    .unwrap();
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.audit_log
              WHERE table_name = 'orgbase.app_permissions' AND actor_user = $1 AND org_id = $2",
            &[&f.alice, &f.org_a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // Users go to the account chain, without the password hash.
    admin
        .execute(
            "UPDATE orgbase.users SET password_hash = 'secret-hash', name = 'Alice' WHERE id = $1",
            &[&f.alice],
        )
        .await
        .unwrap();
    let row = admin
        .query_one(
            "SELECT org_id, old::text || new::text FROM orgbase.audit_log
              WHERE table_name = 'orgbase.users' AND action = 'update'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), audit::ACCOUNT_CHAIN);
    let text: String = row.get(1);
    assert!(
        text.contains("Alice") && !text.contains("secret-hash"),
        "{text}"
    );
    // An API key's last_used_at bookkeeping alone makes no entry.
    admin
        .execute(
            "INSERT INTO orgbase.api_keys (org_id, id, user_id, name, prefix, key_hash, scopes)
             VALUES ($1, $2, $3, 'k', 'obk_test', $4, '{notes:read}')",
            &[&f.org_a, &Uuid::now_v7(), &f.alice, &vec![9u8; 32]],
        )
        .await
        .unwrap();
    admin
        .execute("UPDATE orgbase.api_keys SET last_used_at = now()", &[])
        .await
        .unwrap();
    let rows = admin
        .query(
            "SELECT action, new::text FROM orgbase.audit_log WHERE table_name = 'orgbase.api_keys'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].get::<_, String>(1).contains("key_hash"));
}

#[tokio::test]
async fn the_audit_log_is_append_only_and_read_only_to_admins_of_the_org() {
    let f = fixture().await;
    let id = new_note(&f, "x").await;
    audit::seal_all(&mut owner(&f).await).await.unwrap();
    for sql in [
        "UPDATE orgbase.audit_log SET action = 'forged'",
        "DELETE FROM orgbase.audit_log",
        "INSERT INTO orgbase.audit_log (org_id, actor_kind, action) VALUES (orgbase.ctx_org(), 'system', 'forged')",
        "TRUNCATE orgbase.audit_log",
        "UPDATE orgbase.audit_heads SET seq = 0",
    ] {
        let e = request(&f, &f.alice_token, f.org_a, sql, &[])
            .await
            .expect_err(sql);
        assert_eq!(
            e.as_db_error().unwrap().code().code(),
            "42501",
            "{sql}: {e}"
        );
    }
    // Even the owner role cannot change or remove an entry while the guard triggers stand.
    let o = owner(&f).await;
    for sql in [
        "UPDATE orgbase.audit_log SET action = 'forged'",
        "UPDATE orgbase.audit_log SET seq = seq + 1",
        "DELETE FROM orgbase.audit_log",
        "TRUNCATE orgbase.audit_log",
    ] {
        let e = o.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            e.as_db_error().unwrap().hint(),
            Some("orgbase_audit_append_only"),
            "{sql}: {e}"
        );
    }
    // Reading: an org admin sees its own organization's entries only; a member sees none.
    let seen = request(
        &f,
        &f.alice_token,
        f.org_a,
        "SELECT DISTINCT org_id FROM orgbase.audit_log",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].get::<_, Uuid>(0), f.org_a);
    let bob = request(
        &f,
        &f.bob_token,
        f.org_b,
        "SELECT count(*) FROM orgbase.audit_log WHERE record_id = $1",
        &[&id.to_string()],
    )
    .await
    .unwrap();
    assert_eq!(bob[0].get::<_, i64>(0), 0);
    let vic = request(
        &f,
        &f.vic_token,
        f.org_a,
        "SELECT count(*) FROM orgbase.audit_log",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(vic[0].get::<_, i64>(0), 0);
}

/// Six notes in org A, sealed: entries seq 1..=n of org A's chain.
async fn sealed_chain(f: &Fixture) -> i64 {
    for i in 0..6 {
        new_note(f, &format!("note {i}")).await;
    }
    audit::seal_all(&mut owner(f).await).await.unwrap();
    f.db.admin()
        .await
        .query_one(
            "SELECT max(seq) FROM orgbase.audit_log WHERE org_id = $1",
            &[&f.org_a],
        )
        .await
        .unwrap()
        .get(0)
}

async fn verify_a(f: &Fixture, checkpoints: &std::path::Path) -> ChainReport {
    let cps = audit::load_checkpoints(checkpoints, None).unwrap();
    let reports = audit::verify(&f.db.admin().await, Some(f.org_a), &cps, |_| {})
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    reports.into_iter().next().unwrap()
}

/// Tamper as the owner role, which can switch off the guard triggers (as an attacker with the
/// owner's rights would).
async fn tamper(f: &Fixture, sql: &str) {
    let o = owner(f).await;
    o.batch_execute(&format!(
        "BEGIN; ALTER TABLE orgbase.audit_log DISABLE TRIGGER USER; {sql}; \
         ALTER TABLE orgbase.audit_log ENABLE TRIGGER USER; COMMIT;"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn an_untouched_log_verifies_and_sealing_is_in_commit_order() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let n = sealed_chain(&f).await;
    assert!(n >= 6);
    let r = verify_a(&f, dir.path()).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.entries as i64, n);
    assert_eq!(r.head_seq, n);
    // More writes, sealed in a second round, continue the same chain.
    new_note(&f, "later").await;
    let r = verify_a(&f, dir.path()).await;
    assert_eq!(r.unsealed, 1);
    audit::seal_all(&mut owner(&f).await).await.unwrap();
    let r = verify_a(&f, dir.path()).await;
    assert!(r.ok() && r.head_seq == n + 1 && r.unsealed == 0, "{r:?}");
    // Every chain of the database verifies (org B's, the account chain).
    let all = audit::verify(&f.db.admin().await, None, &[], |_| {})
        .await
        .unwrap();
    assert!(all.iter().all(|r| r.ok()), "{all:?}");
    assert!(all.iter().any(|r| r.org_id == f.org_b));
}

#[tokio::test]
async fn a_changed_value_is_named() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    sealed_chain(&f).await;
    tamper(
        &f,
        &format!(
            "UPDATE orgbase.audit_log SET new = jsonb_set(new, '{{title}}', '\"forged\"') \
             WHERE org_id = '{}' AND seq = 3",
            f.org_a
        ),
    )
    .await;
    let p = verify_a(&f, dir.path()).await.problem.unwrap();
    assert_eq!((p.kind, p.seq), (Breach::Altered, 3), "{p:?}");
    assert!(p.message.contains("values were changed"), "{p:?}");
}

#[tokio::test]
async fn a_changed_field_is_named() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    sealed_chain(&f).await;
    tamper(
        &f,
        &format!(
            "UPDATE orgbase.audit_log SET record_id = 'another'
              WHERE org_id = '{}' AND seq = 3",
            f.org_a
        ),
    )
    .await;
    let id: i64 =
        f.db.admin()
            .await
            .query_one(
                "SELECT id FROM orgbase.audit_log WHERE org_id = $1 AND seq = 3",
                &[&f.org_a],
            )
            .await
            .unwrap()
            .get(0);
    let p = verify_a(&f, dir.path()).await.problem.unwrap();
    assert_eq!((p.kind, p.seq, p.entry_id), (Breach::Altered, 3, Some(id)));
    assert!(p.message.contains("does not match its hash"), "{p:?}");
}

#[tokio::test]
async fn a_deleted_entry_is_named() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    sealed_chain(&f).await;
    tamper(
        &f,
        &format!(
            "DELETE FROM orgbase.audit_log WHERE org_id = '{}' AND seq = 4",
            f.org_a
        ),
    )
    .await;
    let p = verify_a(&f, dir.path()).await.problem.unwrap();
    assert_eq!((p.kind, p.seq), (Breach::Deleted, 4), "{p:?}");
    assert!(p.message.contains("seq 4 is missing"), "{p:?}");
}

#[tokio::test]
async fn an_inserted_entry_is_named() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    sealed_chain(&f).await;
    // A copy of entry 3 with another value, claiming its place in the chain.
    tamper(
        &f,
        &format!(
            "INSERT INTO orgbase.audit_log (org_id, at, actor_kind, actor_user, db_role, action,
                 table_name, record_id, old, new, seq, prev_hash, hash, values_digest, sealed_at)
             SELECT org_id, at, actor_kind, actor_user, db_role, action, table_name, record_id,
                    old, jsonb_set(new, '{{title}}', '\"planted\"'), seq, prev_hash, hash,
                    values_digest, sealed_at
               FROM orgbase.audit_log WHERE org_id = '{}' AND seq = 3",
            f.org_a
        ),
    )
    .await;
    let planted: i64 =
        f.db.admin()
            .await
            .query_one("SELECT max(id) FROM orgbase.audit_log", &[])
            .await
            .unwrap()
            .get(0);
    let p = verify_a(&f, dir.path()).await.problem.unwrap();
    assert_eq!(
        (p.kind, p.seq, p.entry_id),
        (Breach::Inserted, 3, Some(planted)),
        "{p:?}"
    );
}

#[tokio::test]
async fn swapped_entries_are_named() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    sealed_chain(&f).await;
    tamper(
        &f,
        &format!(
            "UPDATE orgbase.audit_log SET seq = CASE seq WHEN 2 THEN 5 ELSE 2 END
              WHERE org_id = '{}' AND seq IN (2, 5)",
            f.org_a
        ),
    )
    .await;
    let p = verify_a(&f, dir.path()).await.problem.unwrap();
    assert_eq!((p.kind, p.seq), (Breach::Reordered, 2), "{p:?}");
}

#[tokio::test]
async fn checkpoints_catch_a_rewritten_chain_and_a_cut_tail() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let n = sealed_chain(&f).await;
    let signer = Signer::load_or_create(secrets.path()).unwrap();
    let file = audit::write_checkpoint(&mut owner(&f).await, &signer, dir.path())
        .await
        .unwrap()
        .expect("a checkpoint");
    // Nothing moved: no second file.
    assert!(
        audit::write_checkpoint(&mut owner(&f).await, &signer, dir.path())
            .await
            .unwrap()
            .is_none()
    );
    let r = verify_a(&f, dir.path()).await;
    assert!(r.ok() && r.checkpoints_checked == 1, "{r:?}");

    // A chain re-sealed after a change (the attacker ran the sealer): consistent in itself,
    // different from the signed head.
    tamper(
        &f,
        &format!(
            "UPDATE orgbase.audit_log SET new = jsonb_set(new, '{{title}}', '\"rewritten\"'),
                    seq = NULL, prev_hash = NULL, hash = NULL, values_digest = NULL
              WHERE org_id = '{}' AND seq >= 2;
             UPDATE orgbase.audit_heads SET seq = 1,
                    hash = (SELECT hash FROM orgbase.audit_log WHERE org_id = '{0}' AND seq = 1)
              WHERE org_id = '{0}'",
            f.org_a
        ),
    )
    .await;
    audit::seal_all(&mut owner(&f).await).await.unwrap();
    let p = verify_a(&f, dir.path()).await.problem.unwrap();
    assert_eq!((p.kind, p.seq), (Breach::CheckpointMismatch, n), "{p:?}");
    assert!(p.message.contains("rewritten"), "{p:?}");

    // Removing the newest entry leaves a consistent chain: only the checkpoint knows.
    tamper(
        &f,
        &format!(
            "DELETE FROM orgbase.audit_log WHERE org_id = '{}' AND seq = {n}",
            f.org_a
        ),
    )
    .await;
    let p = verify_a(&f, dir.path()).await.problem.unwrap();
    assert_eq!((p.kind, p.seq), (Breach::CheckpointMismatch, n), "{p:?}");
    assert!(p.message.contains("deleted"), "{p:?}");

    // A checkpoint file edited after signing, or signed by another key, is refused.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen(&format!("\"seq\": {n}"), "\"seq\": 1", 1),
    )
    .unwrap();
    let e = audit::load_checkpoints(dir.path(), None).unwrap_err();
    assert!(e.contains("signature does not match"), "{e}");
    std::fs::write(&file, text).unwrap();
    let e = audit::load_checkpoints(dir.path(), Some(&"ab".repeat(32))).unwrap_err();
    assert!(e.contains("not by the trusted key"), "{e}");
}

async fn parts(c: &Client, parent: &str) -> Vec<String> {
    c.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = $1::text::regclass ORDER BY 1",
        &[&parent],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect()
}

#[tokio::test]
async fn log_retention_drops_whole_monthly_partitions() {
    let f = fixture().await;
    let o = owner(&f).await;
    // The migration made last month to two months ahead.
    let std_now = parts(&o, "orgbase.access_log_std").await;
    assert_eq!(std_now.len(), 4, "{std_now:?}");
    let oldest = std_now[0].clone();
    // Thirteen months on (run as a fixed time): the oldest standard partition has passed its
    // one-year retention and is dropped whole; HIPAA partitions (six years) stay.
    let out: Vec<String> = o
        .query(
            "SELECT * FROM orgbase.maintain_logs(now() + interval '13 months')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        out.contains(&format!("dropped orgbase.{oldest}")),
        "{out:?}"
    );
    assert!(!parts(&o, "orgbase.access_log_std").await.contains(&oldest));
    let hipaa = parts(&o, "orgbase.access_log_hipaa").await;
    assert!(
        hipaa.contains(&oldest.replace("_std_", "_hipaa_")),
        "{hipaa:?}"
    );
    assert!(
        out.iter()
            .all(|l| !l.contains("hipaa") || l.starts_with("created")),
        "{out:?}"
    );
    // The runtime role cannot read or write partitions directly.
    let e = request(
        &f,
        &f.alice_token,
        f.org_a,
        &format!("DELETE FROM orgbase.{}", hipaa[0]),
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501", "{e}");
}
