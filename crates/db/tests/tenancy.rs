//! Database-enforced tenant isolation (SPEC R1–R4), attacked from the runtime role.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use orgbase_testkit::TestDb;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

struct Fixture {
    db: TestDb,
    org_a: Uuid,
    org_b: Uuid,
    /// token hashes
    a_admin: Vec<u8>,
    a_editor: Vec<u8>,
    a_viewer: Vec<u8>,
    a_member: Vec<u8>,
    b_admin: Vec<u8>,
    expired: Vec<u8>,
    users: std::collections::HashMap<&'static str, Uuid>,
}

fn hash(n: u8) -> Vec<u8> {
    vec![n; 32]
}

async fn fixture() -> Fixture {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let org_a = Uuid::now_v7();
    let org_b = Uuid::now_v7();
    let mut users = std::collections::HashMap::new();
    // (name, token byte, org, org role, notes app role)
    let people: [(&str, u8, Uuid, &str, Option<&str>); 6] = [
        ("a_admin", 1, org_a, "admin", None),
        ("a_editor", 2, org_a, "member", Some("editor")),
        ("a_viewer", 3, org_a, "member", Some("viewer")),
        ("a_member", 4, org_a, "member", None),
        ("b_admin", 5, org_b, "owner", None),
        ("expired", 6, org_a, "member", Some("editor")),
    ];
    for (name, _, _, _, _) in &people {
        let id = Uuid::now_v7();
        admin
            .execute(
                "INSERT INTO orgbase.users (id, email, email_hash) VALUES ($1, $2, sha256(convert_to($2, 'UTF8')))",
                &[&id, &format!("{name}@example.com")],
            )
            .await
            .unwrap();
        users.insert(*name, id);
    }
    for (org, slug, owner) in [(org_a, "org-a", "a_admin"), (org_b, "org-b", "b_admin")] {
        admin
            .execute(
                "INSERT INTO orgbase.organizations (id, name, slug, owner_id) VALUES ($1, $2, $2, $3)",
                &[&org, &slug, &users[owner]],
            )
            .await
            .unwrap();
    }
    for (name, token, org, role, app_role) in &people {
        let user = users[name];
        admin
            .execute(
                "INSERT INTO orgbase.members (org_id, user_id, role) VALUES ($1, $2, $3)",
                &[org, &user, role],
            )
            .await
            .unwrap();
        if let Some(r) = app_role {
            admin
                .execute(
                    "INSERT INTO orgbase.app_permissions (org_id, user_id, app, role) VALUES ($1, $2, 'notes', $3)",
                    &[org, &user, r],
                )
                .await
                .unwrap();
        }
        let expires = if *name == "expired" {
            "-1 hour"
        } else {
            "1 day"
        };
        admin
            .execute(
                &format!(
                    "INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, expires_at)
                     VALUES ($1, $2, $3, $4, now() + interval '{expires}')"
                ),
                &[&Uuid::now_v7(), &user, &hash(*token), &hash(100 + token)],
            )
            .await
            .unwrap();
    }
    // Notes: two by a_admin, one by a_member in org A; one in org B. Inserted as the
    // administrator (superuser: not subject to RLS).
    for (org, by, title) in [
        (org_a, "a_admin", "a1"),
        (org_a, "a_admin", "a2"),
        (org_a, "a_member", "a-member-own"),
        (org_b, "b_admin", "b-secret"),
    ] {
        admin
            .execute(
                "INSERT INTO orgbase.notes (org_id, id, title, created_by, updated_by) VALUES ($1, $2, $3, $4, $4)",
                &[&org, &Uuid::now_v7(), &title, &users[by]],
            )
            .await
            .unwrap();
    }
    Fixture {
        db,
        org_a,
        org_b,
        a_admin: hash(1),
        a_editor: hash(2),
        a_viewer: hash(3),
        a_member: hash(4),
        b_admin: hash(5),
        expired: hash(6),
        users,
    }
}

async fn runtime(f: &Fixture) -> deadpool_postgres::Object {
    f.db.pool().get().await.unwrap()
}

async fn as_user<'a>(client: &'a mut Client, token: &[u8], org: &str) -> Transaction<'a> {
    let tx = client.transaction().await.unwrap();
    tx.query_one(
        "SELECT * FROM orgbase.begin_request($1, $2)",
        &[&token, &org],
    )
    .await
    .unwrap();
    tx
}

async fn titles(tx: &Transaction<'_>) -> Vec<String> {
    let mut t: Vec<String> = tx
        .query("SELECT title FROM orgbase.notes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    t.sort();
    t
}

/// `open_request` in org A for credential hash `cred`: organization, user, org role, app roles
/// and the ticket.
async fn open_ticket(client: &Client, cred: &[u8]) -> (Uuid, Uuid, String, String, String) {
    let r = client
        .query_one(
            "SELECT org_id, user_id, org_role, app_roles, ticket \
             FROM orgbase.open_request($1, 'org-a')",
            &[&cred],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

/// The lines of `EXPLAIN sql`.
async fn explain(
    c: &impl tokio_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    c.query(&format!("EXPLAIN {sql}"), params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e:?}"));
    (
        d.message().to_string(),
        d.hint().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn each_org_sees_only_its_own_rows() {
    let f = fixture().await;
    let mut c = runtime(&f).await;
    let tx = as_user(&mut c, &f.a_admin, "org-a").await;
    assert_eq!(titles(&tx).await, ["a-member-own", "a1", "a2"]);
    tx.commit().await.unwrap();
    let tx = as_user(&mut c, &f.b_admin, &f.org_b.to_string()).await;
    assert_eq!(titles(&tx).await, ["b-secret"]);
    // Even naming the other org's rows explicitly finds nothing.
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM orgbase.notes WHERE org_id = $1",
            &[&f.org_a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn no_context_fails_closed() {
    let f = fixture().await;
    let c = runtime(&f).await;
    let e = c
        .query("SELECT * FROM orgbase.notes", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_no_context", "{e:?}");
    // Context never outlives its transaction, so a pooled connection is clean for the next user.
    let mut c = c;
    let tx = as_user(&mut c, &f.a_admin, "org-a").await;
    tx.commit().await.unwrap();
    let e = c
        .query("SELECT * FROM orgbase.notes", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_no_context", "{e:?}");
}

#[tokio::test]
async fn injected_set_config_cannot_switch_orgs() {
    let f = fixture().await;
    let mut c = runtime(&f).await;
    let attacks = [
        format!("SELECT set_config('orgbase.org_id', '{}', true)", f.org_b),
        "SELECT set_config('orgbase.app_roles', 'notes=admin', true)".to_string(),
        "SELECT set_config('orgbase.org_role', 'owner', true)".to_string(),
        format!("SET LOCAL orgbase.org_id = '{}'", f.org_b),
        format!(
            "SELECT set_config('orgbase.user_id', '{}', true)",
            f.users["b_admin"]
        ),
    ];
    for attack in &attacks {
        let tx = as_user(&mut c, &f.a_member, "org-a").await;
        tx.batch_execute(attack).await.unwrap();
        let e = tx
            .query("SELECT title FROM orgbase.notes", &[])
            .await
            .unwrap_err();
        assert_eq!(db_error(&e).1, "orgbase_bad_context", "{attack}: {e:?}");
        tx.rollback().await.unwrap();
    }
    // A forged context from scratch (no begin_request) fails the same way.
    let tx = c.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "SELECT set_config('orgbase.org_id', '{}', true), set_config('orgbase.ctx_mac', repeat('0', 64), true)",
        f.org_b
    ))
    .await
    .unwrap();
    let e = tx
        .query("SELECT title FROM orgbase.notes", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_bad_context");
    tx.rollback().await.unwrap();
    // Session-level SET is no better.
    c.batch_execute(&format!("SET orgbase.org_id = '{}'", f.org_b))
        .await
        .unwrap();
    let e = c
        .query("SELECT title FROM orgbase.notes", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_no_context");
}

/// AFTER triggers fire at the end of the statement, after the policy checks: a `set_config`
/// evaluated for a later row of the same INSERT passes the (cached) insert check, and only the
/// audit trigger's own check of the context keeps the forged user out of the audit trail.
#[tokio::test]
async fn the_audit_actor_cannot_be_forged_within_a_statement() {
    let f = fixture().await;
    let mut c = runtime(&f).await;
    let me = f.users["a_editor"];
    let other = f.users["a_admin"].to_string();
    let tx = as_user(&mut c, &f.a_editor, "org-a").await;
    let e = tx
        .execute(
            "INSERT INTO orgbase.notes (org_id, title, body, created_by, updated_by) \
             SELECT $1, 'forged ' || g, \
                    CASE WHEN g = 2 THEN set_config('orgbase.user_id', $3, true) ELSE 'b' END, $2, $2 \
               FROM generate_series(1, 2) g",
            &[&f.org_a, &me, &other],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_bad_context", "{e:?}");
    // Refused by the audit trigger, not by a policy.
    let at = e.as_db_error().and_then(|d| d.where_()).unwrap_or_default();
    assert!(at.contains("audit_row"), "{e:?}");
    tx.rollback().await.unwrap();
    let admin = f.db.admin().await;
    let n: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM orgbase.notes WHERE title LIKE 'forged %') \
                  + (SELECT count(*) FROM orgbase.audit_log WHERE new ->> 'title' LIKE 'forged %')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// Forge the context's roles in the middle of a statement, after its policy checks have run:
/// a nested loop whose outer side calls `set_config` between two rescans of the inner index
/// scan. Whatever the policy reads at row time (migration 0012 read an unchecked level hint;
/// since 0013 only checked sub-selects, and one not yet run verifies the forged settings), the
/// forgery may hide rows or fail the statement but must not reveal a row.
#[tokio::test]
async fn a_forgery_between_rescans_reveals_nothing() {
    let f = fixture().await;
    let mut c = runtime(&f).await;
    let admin = f.db.admin().await;
    let a1: Uuid = admin
        .query_one("SELECT id FROM orgbase.notes WHERE title = 'a1'", &[])
        .await
        .unwrap()
        .get(0);
    let own: Uuid = admin
        .query_one(
            "SELECT id FROM orgbase.notes WHERE title = 'a-member-own'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Outer rows in order; the second forges app_roles before the inner scan runs again.
    const ATTACK: &str = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
         SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
         SET LOCAL enable_material = off";
    let query = "SELECT x.title FROM ( \
             SELECT v.i, v.nid, CASE WHEN v.i = 2 THEN set_config('orgbase.app_roles', $2, true) END AS forged \
               FROM (VALUES (1, gen_random_uuid()), (2, $1::uuid)) v (i, nid) ORDER BY v.i OFFSET 0) o \
             CROSS JOIN LATERAL (SELECT n.title FROM orgbase.notes n \
                                  WHERE n.id = o.nid AND o.forged IS NOT DISTINCT FROM o.forged \
                                  OFFSET 0) x";
    // A member without a role in the app claims admin: another member's note stays hidden.
    let tx = as_user(&mut c, &f.a_member, "org-a").await;
    tx.batch_execute(ATTACK).await.unwrap();
    let plan = explain(&tx, query, &[&a1, &"notes=admin"]).await;
    // The shape the attack needs: the check runs on the first (empty) rescan, the hint on the
    // second, after the forgery.
    assert!(plan[0].contains("Nested Loop"), "{plan:#?}");
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Cond: ((org_id = $") && l.contains(") AND (id = ")),
        "{plan:#?}"
    );
    match tx.query(query, &[&a1, &"notes=admin"]).await {
        Ok(rows) => assert!(
            rows.is_empty(),
            "leaked {:?}",
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        ),
        Err(e) => assert_eq!(db_error(&e).1, "orgbase_bad_context", "{e:?}"),
    }
    tx.rollback().await.unwrap();
    // Without the forgery, the member still reads its own note through the same query.
    let tx = as_user(&mut c, &f.a_member, "org-a").await;
    tx.batch_execute(ATTACK).await.unwrap();
    let rows = tx.query(query, &[&own, &""]).await;
    tx.rollback().await.unwrap();
    let rows = rows.unwrap();
    assert_eq!(rows.len(), 1);
    // A viewer reads a1 through the same query; with its hint forged away it loses the row.
    let tx = as_user(&mut c, &f.a_viewer, "org-a").await;
    tx.batch_execute(ATTACK).await.unwrap();
    let rows = tx.query(query, &[&a1, &"notes=viewer"]).await;
    tx.rollback().await.unwrap();
    assert_eq!(rows.unwrap().len(), 1);
    let tx = as_user(&mut c, &f.a_viewer, "org-a").await;
    tx.batch_execute(ATTACK).await.unwrap();
    match tx.query(query, &[&a1, &""]).await {
        Ok(rows) => assert!(rows.is_empty()),
        Err(e) => assert_eq!(db_error(&e).1, "orgbase_bad_context", "{e:?}"),
    }
    tx.rollback().await.unwrap();
    // A member's unforged reads are its own rows only.
    let tx = as_user(&mut c, &f.a_member, "org-a").await;
    assert_eq!(titles(&tx).await, ["a-member-own"]);
    tx.rollback().await.unwrap();
}

/// The newest-first list (R1) keeps its index when an organization holds thousands of rows.
/// Migration 0012's select policy compared a CASE expression PostgreSQL could not estimate (1
/// row in 200): at about 1,500 rows per organization the planner already chose a bitmap scan
/// of the whole organization plus a sort, 40 times slower. The statement is the shape
/// `records::list` sends, prepared and run as the runtime role in a request transaction.
#[tokio::test]
async fn list_reads_keep_the_newest_first_index_on_large_organizations() {
    let f = fixture().await;
    let admin = f.db.admin().await;
    admin
        .execute(
            "INSERT INTO orgbase.notes (org_id, id, title, created_by, updated_by, created_at)
             SELECT o, gen_random_uuid(), 'n' || i, u, u, now() - i * interval '1 second'
               FROM unnest(ARRAY[$1, $2]::uuid[], ARRAY[$3, $4]::uuid[]) AS x (o, u),
                    generate_series(1, 5000) AS i",
            &[&f.org_a, &f.org_b, &f.users["a_admin"], &f.users["b_admin"]],
        )
        .await
        .unwrap();
    admin.batch_execute("ANALYZE orgbase.notes").await.unwrap();
    let mut c = runtime(&f).await;
    for who in [&f.a_editor, &f.a_member] {
        let tx = as_user(&mut c, who, "org-a").await;
        let plan = explain(
            &tx,
            "SELECT row_to_json(t)::text, t.created_at::text, t.id FROM orgbase.notes t \
             WHERE t.deleted_at IS NULL ORDER BY t.created_at DESC, t.id DESC LIMIT 21",
            &[],
        )
        .await;
        tx.rollback().await.unwrap();
        assert!(
            plan.iter()
                .any(|l| l.contains("Index Scan using notes_recent_idx")),
            "{plan:#?}"
        );
        assert!(!plan.iter().any(|l| l.contains("Sort")), "{plan:#?}");
    }
}

/// A single-statement request that resumes from a ticket opens its context in the statement
/// itself, as a condition that mentions no row (`request::OneSql`): PostgreSQL runs it as a
/// one-time filter before the scan and the policies' checks. The context lives as long as that
/// statement's transaction; a ticket that does not verify refuses the statement, and a forged
/// setting beside the condition is refused by the checks.
#[tokio::test]
async fn a_statement_opens_its_own_context_and_keeps_it_to_itself() {
    let f = fixture().await;
    let admin = f.db.admin().await;
    let client = runtime(&f).await;
    let (org, user, role, roles, ticket) = open_ticket(&client, &f.a_editor).await;
    const GATE: &str = "(SELECT orgbase.resume_request($1, 'org-a', NULL, NULL, NULL, \
                        $2, $3, $4, $5, NULL, $6)) IS NOT NULL";
    let read = format!(
        "SELECT title FROM orgbase.notes t WHERE t.deleted_at IS NULL AND {GATE} ORDER BY title"
    );
    let plan = explain(
        &**client,
        &read,
        &[&f.a_editor, &org, &user, &role, &roles, &ticket],
    )
    .await;
    assert!(
        plan.iter().any(|l| l.contains("One-Time Filter")),
        "{plan:#?}"
    );
    let titles: Vec<String> = client
        .query(&read, &[&f.a_editor, &org, &user, &role, &roles, &ticket])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(titles, ["a-member-own", "a1", "a2"]);
    // The statement was its transaction: the next one has no context.
    let e = client
        .query("SELECT title FROM orgbase.notes", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_no_context", "{e:?}");
    // Another user's id with this ticket: refused, nothing read.
    let e = client
        .query(
            &read,
            &[
                &f.a_editor,
                &org,
                &f.users["a_admin"],
                &role,
                &roles,
                &ticket,
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_stale_ticket", "{e:?}");
    // Another organization forged beside the condition. Before it, the context overwrites the
    // forgery; after it, the checks refuse the statement. Org B's row is never read.
    for (forged, refused) in [
        (
            format!(
                "(SELECT set_config('orgbase.org_id', '{}', true)) IS NOT NULL AND {GATE}",
                f.org_b
            ),
            false,
        ),
        (
            format!(
                "{GATE} AND (SELECT set_config('orgbase.org_id', '{}', true)) IS NOT NULL",
                f.org_b
            ),
            true,
        ),
    ] {
        let sql = format!("SELECT title FROM orgbase.notes t WHERE {forged} ORDER BY title");
        match client
            .query(&sql, &[&f.a_editor, &org, &user, &role, &roles, &ticket])
            .await
        {
            Ok(rows) => {
                assert!(!refused, "{forged}");
                let t: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                assert_eq!(t, ["a-member-own", "a1", "a2"]);
            }
            Err(e) => {
                assert!(refused, "{forged}: {e:?}");
                assert_eq!(db_error(&e).1, "orgbase_bad_context", "{e:?}");
            }
        }
    }
    // A write in one statement: checked by the insert policy, audited with its actor.
    let id: Uuid = client
        .query_one(
            &format!(
                "INSERT INTO orgbase.notes AS t (org_id, title, created_by, updated_by) \
                 SELECT $2::uuid, 'one-statement', $3::uuid, $3::uuid WHERE {GATE} RETURNING t.id"
            ),
            &[&f.a_editor, &org, &user, &role, &roles, &ticket],
        )
        .await
        .unwrap()
        .get(0);
    let actor: Uuid = admin
        .query_one(
            "SELECT actor_user FROM orgbase.audit_log WHERE record_id = $1::uuid::text AND action = 'insert'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(actor, user);
    // Into another organization: refused by the insert policy, nothing written.
    let e = client
        .query_one(
            &format!(
                "INSERT INTO orgbase.notes AS t (org_id, title, created_by, updated_by) \
                 SELECT $7::uuid, 'moved', $3::uuid, $3::uuid WHERE {GATE} RETURNING t.id"
            ),
            &[&f.a_editor, &org, &user, &role, &roles, &ticket, &f.org_b],
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().clone()),
        Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{e:?}"
    );
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.notes WHERE title = 'moved'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// The app level comes from `app=role` pairs matched on the whole app name.
#[tokio::test]
async fn app_roles_match_whole_app_names() {
    let f = fixture().await;
    let mut admin = f.db.admin().await;
    let user = f.users["a_member"];
    for (org_role, app, level) in [
        ("member", Some("notes"), 1),
        ("member", Some("projects"), 2),
        ("member", Some("xnotes"), 3),
        ("member", Some("otes"), 0),
        ("member", Some("note"), 0),
        ("member", Some("notes=viewer"), 0),
        ("member", None, 0),
        ("admin", Some("otes"), 3),
        ("owner", None, 3),
    ] {
        let tx = admin.transaction().await.unwrap();
        tx.execute(
            "SELECT orgbase.set_context($1, $2, $3, 'xnotes=admin,notes=viewer,projects=editor', '{}')",
            &[&f.org_a, &user, &org_role],
        )
        .await
        .unwrap();
        let got: i32 = tx
            .query_one("SELECT level FROM orgbase.ctx_check($1)", &[&app])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, level, "{org_role} {app:?}");
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn the_runtime_role_cannot_reach_the_keys_or_identity_tables() {
    let f = fixture().await;
    let c = runtime(&f).await;
    for sql in [
        "SELECT * FROM orgbase.context_key",
        "SELECT orgbase.ctx_mac('a', 'b', 'c', 'd')",
        "SELECT token_hash FROM orgbase.sessions",
        "SELECT password_hash FROM orgbase.users",
        "INSERT INTO orgbase.members (org_id, user_id, role) SELECT id, owner_id, 'owner' FROM orgbase.organizations",
        "UPDATE orgbase.app_permissions SET role = 'admin'",
        "ALTER TABLE orgbase.notes DISABLE ROW LEVEL SECURITY",
        "DROP POLICY tenant_select ON orgbase.notes",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        let (msg, _) = db_error(&e);
        assert!(
            msg.contains("permission denied")
                || msg.contains("must be owner")
                || msg.contains("no tenant context"),
            "{sql}: {msg}"
        );
    }
}

/// The context MAC's key is private to the connection (migration 0010): two sequences whose
/// session values the runtime role can neither read nor set. Throwing it away mid-request fails
/// closed, and the next request on the same connection draws a new one.
#[tokio::test]
async fn the_connection_key_cannot_be_read_set_or_reused() {
    let f = fixture().await;
    let mut c = runtime(&f).await;
    // Each in a request transaction of its own (a failed statement aborts it).
    for sql in [
        "SELECT currval('orgbase.session_key_a')",
        "SELECT nextval('orgbase.session_key_b')",
        "SELECT setval('orgbase.session_key_a', 1)",
        "SELECT last_value FROM orgbase.session_key_b",
        "SELECT pg_sequence_last_value('orgbase.session_key_a')",
        "SELECT orgbase.session_key()",
        "SELECT orgbase.session_mac('\\x00', 'a', 'b', 'c', 'd', 'e')",
        "SELECT orgbase.set_context(gen_random_uuid(), gen_random_uuid(), 'owner', '', '{}')",
        "SELECT * FROM orgbase.authenticate_request('\\x00', 'org-a')",
    ] {
        let tx = as_user(&mut c, &f.a_member, "org-a").await;
        let e = tx.batch_execute(sql).await.unwrap_err();
        assert!(db_error(&e).0.contains("permission denied"), "{sql}: {e:?}");
        tx.rollback().await.unwrap();
    }
    // The key thrown away inside a request: the context no longer verifies (an error, no rows).
    for discard in ["DISCARD SEQUENCES", "DISCARD TEMP"] {
        let tx = as_user(&mut c, &f.a_member, "org-a").await;
        tx.batch_execute(discard).await.unwrap();
        match tx.query("SELECT title FROM orgbase.notes", &[]).await {
            Err(e) => assert!(
                db_error(&e).0.contains("not yet defined in this session"),
                "{discard}: {e:?}"
            ),
            // DISCARD TEMP leaves sequences alone: the context still holds.
            Ok(rows) => {
                assert_eq!(discard, "DISCARD TEMP");
                assert_eq!(rows.len(), 1, "a member sees its own note only");
            }
        }
        tx.rollback().await.unwrap();
        // The next request on this connection draws a new key and works.
        let tx = as_user(&mut c, &f.a_member, "org-a").await;
        assert_eq!(titles(&tx).await, ["a-member-own"]);
        tx.commit().await.unwrap();
    }
    // A context copied from another connection (same values, that connection's MAC) is refused.
    let mut other = runtime(&f).await;
    let tx = as_user(&mut other, &f.a_admin, "org-a").await;
    let row = tx
        .query_one(
            "SELECT current_setting('orgbase.org_id'), current_setting('orgbase.user_id'), \
                    current_setting('orgbase.org_role'), current_setting('orgbase.app_roles'), \
                    current_setting('orgbase.req'), current_setting('orgbase.ctx_mac')",
            &[],
        )
        .await
        .unwrap();
    let names = [
        "org_id",
        "user_id",
        "org_role",
        "app_roles",
        "req",
        "ctx_mac",
    ];
    let tx2 = c.transaction().await.unwrap();
    for (i, name) in names.iter().enumerate() {
        let v: String = row.get(i);
        tx2.execute("SELECT set_config('orgbase.' || $1, $2, true)", &[name, &v])
            .await
            .unwrap();
    }
    let e = tx2
        .query("SELECT title FROM orgbase.notes", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_bad_context", "{e:?}");
    tx2.rollback().await.unwrap();
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn bad_sessions_and_foreign_orgs_are_refused() {
    let f = fixture().await;
    let mut c = runtime(&f).await;
    for (token, org, hint) in [
        (f.expired.clone(), "org-a", "orgbase_unauthenticated"),
        (vec![9u8; 32], "org-a", "orgbase_unauthenticated"),
        (f.a_admin.clone(), "org-b", "orgbase_not_member"),
        (
            f.a_admin.clone(),
            &f.org_b.to_string() as &str,
            "orgbase_not_member",
        ),
        (f.a_admin.clone(), "no-such-org", "orgbase_not_member"),
    ] {
        let tx = c.transaction().await.unwrap();
        let e = tx
            .query_one(
                "SELECT * FROM orgbase.begin_request($1, $2)",
                &[&token, &org],
            )
            .await
            .unwrap_err();
        assert_eq!(db_error(&e).1, hint, "{org}: {e:?}");
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn the_role_matrix_holds() {
    let f = fixture().await;
    let mut c = runtime(&f).await;
    let insert = "INSERT INTO orgbase.notes (org_id, id, title, created_by, updated_by)
                  VALUES ($1, $2, 'new', orgbase.ctx_user(), orgbase.ctx_user())";

    // A member without an app role reads only its own rows and cannot insert.
    let tx = as_user(&mut c, &f.a_member, "org-a").await;
    assert_eq!(titles(&tx).await, ["a-member-own"]);
    let e = tx
        .execute(insert, &[&f.org_a, &Uuid::now_v7()])
        .await
        .unwrap_err();
    assert!(db_error(&e).0.contains("row-level security"), "{e:?}");
    tx.rollback().await.unwrap();

    // A viewer reads everything in the org, writes nothing, updates nothing of others.
    let tx = as_user(&mut c, &f.a_viewer, "org-a").await;
    assert_eq!(titles(&tx).await.len(), 3);
    let n = tx
        .execute("UPDATE orgbase.notes SET title = 'x'", &[])
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        tx.execute(insert, &[&f.org_a, &Uuid::now_v7()])
            .await
            .is_err()
    );
    tx.rollback().await.unwrap();

    // An editor inserts as itself in its own org only, updates others' rows, deletes none of them.
    let tx = as_user(&mut c, &f.a_editor, "org-a").await;
    assert_eq!(
        tx.execute(insert, &[&f.org_a, &Uuid::now_v7()])
            .await
            .unwrap(),
        1
    );
    let e = tx
        .execute(insert, &[&f.org_b, &Uuid::now_v7()])
        .await
        .unwrap_err();
    assert!(db_error(&e).0.contains("row-level security"), "{e:?}");
    tx.rollback().await.unwrap();
    let tx = as_user(&mut c, &f.a_editor, "org-a").await;
    let e = tx
        .execute(
            "INSERT INTO orgbase.notes (org_id, id, title, created_by, updated_by) VALUES ($1, $2, 'x', $3, $3)",
            &[&f.org_a, &Uuid::now_v7(), &f.users["a_admin"]],
        )
        .await
        .unwrap_err();
    assert!(
        db_error(&e).0.contains("row-level security"),
        "impersonation: {e:?}"
    );
    tx.rollback().await.unwrap();
    let tx = as_user(&mut c, &f.a_editor, "org-a").await;
    assert_eq!(
        tx.execute("UPDATE orgbase.notes SET title = title || '!'", &[])
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        tx.execute("DELETE FROM orgbase.notes", &[]).await.unwrap(),
        0
    );
    // Moving a row to another org is refused.
    let e = tx
        .execute("UPDATE orgbase.notes SET org_id = $1", &[&f.org_b])
        .await;
    // touch_row pins org_id, so the row stays where it is.
    assert!(e.is_ok());
    tx.commit().await.unwrap();
    let admin = f.db.admin().await;
    let in_b: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.notes WHERE org_id = $1",
            &[&f.org_b],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_b, 1);

    // An org admin deletes anything in its org, nothing elsewhere.
    let tx = as_user(&mut c, &f.a_admin, "org-a").await;
    assert_eq!(
        tx.execute("DELETE FROM orgbase.notes", &[]).await.unwrap(),
        3
    );
    tx.commit().await.unwrap();
    let left: i64 = admin
        .query_one("SELECT count(*) FROM orgbase.notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
}

#[tokio::test]
async fn rows_cannot_point_into_another_org() {
    let f = fixture().await;
    let admin = f.db.admin().await;
    // created_by must be a member of the row's org (composite foreign key).
    let e = admin
        .execute(
            "INSERT INTO orgbase.notes (org_id, id, title, created_by, updated_by) VALUES ($1, $2, 'x', $3, $3)",
            &[&f.org_a, &Uuid::now_v7(), &f.users["b_admin"]],
        )
        .await
        .unwrap_err();
    assert!(db_error(&e).0.contains("foreign key"), "{e:?}");
    let _ = (f.org_b, f.a_editor.len());
}

/// Request tickets (migration 0009) let the server skip re-authenticating a credential for a
/// few seconds. Attacked here as the runtime role: a ticket with other roles, another org or
/// another credential, a tampered MAC, a ticket outliving a revocation or a role change, and a
/// second context in one transaction are all refused.
#[tokio::test]
async fn request_tickets_cannot_be_forged_moved_or_outlive_a_revocation() {
    let f = fixture().await;
    let admin = f.db.admin().await;
    let mut client = runtime(&f).await;
    let (org, user, role, roles, ticket) = open_ticket(&client, &f.a_viewer).await;
    assert_eq!(roles, "notes=viewer");
    const RESUME: &str = "SELECT * FROM orgbase.resume_request($1, $2, NULL, NULL, NULL, \
                          $3, $4, $5, $6, NULL, $7)";
    async fn resume(
        client: &mut Client,
        cred: &[u8],
        org_ref: &str,
        ctx: (Uuid, Uuid, &str, &str, &str),
    ) -> Result<Vec<String>, (String, String)> {
        let tx = client.transaction().await.unwrap();
        let (o, u, r, a, t) = ctx;
        match tx
            .query_one(RESUME, &[&cred, &org_ref, &o, &u, &r, &a, &t])
            .await
        {
            Ok(_) => Ok(titles(&tx).await),
            Err(e) => Err(db_error(&e)),
        }
    }
    let stale = |r: Result<Vec<String>, (String, String)>| {
        assert_eq!(r.unwrap_err().1, "orgbase_stale_ticket");
    };
    // As issued: the viewer reads org A.
    let seen = resume(
        &mut client,
        &f.a_viewer,
        "org-a",
        (org, user, &role, &roles, &ticket),
    )
    .await
    .unwrap();
    assert!(!seen.is_empty());
    // Other roles, another org, another user, another credential, another org reference.
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (org, user, "admin", &roles, &ticket),
        )
        .await,
    );
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (org, user, &role, "notes=admin", &ticket),
        )
        .await,
    );
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (f.org_b, user, &role, &roles, &ticket),
        )
        .await,
    );
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (org, f.users["a_admin"], &role, &roles, &ticket),
        )
        .await,
    );
    stale(
        resume(
            &mut client,
            &f.a_editor,
            "org-a",
            (org, user, &role, &roles, &ticket),
        )
        .await,
    );
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-b",
            (org, user, &role, &roles, &ticket),
        )
        .await,
    );
    // A tampered MAC, a later expiry, garbage.
    let mut tampered = ticket.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (org, user, &role, &roles, &tampered),
        )
        .await,
    );
    let parts: Vec<&str> = ticket.split('.').collect();
    let later = format!(
        "{}.{}.{}",
        parts[0],
        parts[1].parse::<i64>().unwrap() + 3600,
        parts[2]
    );
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (org, user, &role, &roles, &later),
        )
        .await,
    );
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (org, user, &role, &roles, "x.y.z"),
        )
        .await,
    );
    // Still good, then not after the viewer's app role changes.
    resume(
        &mut client,
        &f.a_viewer,
        "org-a",
        (org, user, &role, &roles, &ticket),
    )
    .await
    .unwrap();
    admin
        .execute(
            "UPDATE orgbase.app_permissions SET role = 'editor' WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (org, user, &role, &roles, &ticket),
        )
        .await,
    );
    // A fresh ticket dies with the session it was issued for.
    let t2: String = client
        .query_one(
            "SELECT ticket FROM orgbase.open_request($1, 'org-a')",
            &[&f.a_viewer],
        )
        .await
        .unwrap()
        .get(0);
    admin
        .execute(
            "UPDATE orgbase.sessions SET revoked_at = now() WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    stale(
        resume(
            &mut client,
            &f.a_viewer,
            "org-a",
            (org, user, &role, "notes=editor", &t2),
        )
        .await,
    );
    let e = client
        .query_one(
            "SELECT * FROM orgbase.open_request($1, 'org-a')",
            &[&f.a_viewer],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_unauthenticated");
    // One context per transaction, whichever way it is opened.
    let tx = client.transaction().await.unwrap();
    tx.query_one(
        "SELECT * FROM orgbase.open_request($1, 'org-a')",
        &[&f.a_editor],
    )
    .await
    .unwrap();
    let e = tx
        .query_one(
            RESUME,
            &[
                &f.a_viewer.as_slice(),
                &"org-a",
                &org,
                &user,
                &role,
                &roles,
                &ticket,
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "orgbase_context_twice");
}

/// A product's own table declares length limits with the classification; the catalog carries
/// them and the server's validation refuses plaintext outside them (an encrypted column's CHECK
/// sees only ciphertext). An unknown key in a declaration is refused when the table is made.
#[tokio::test]
async fn declared_length_limits_of_classified_columns_are_checked_on_the_plaintext() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "CREATE SCHEMA clinic AUTHORIZATION orgbase_owner;
             SET ROLE orgbase_owner;
             CREATE TABLE clinic.visits (diagnosis text NOT NULL, phone text);
             SELECT orgbase.make_tenant_table('clinic.visits', 'clinic', classes =>
                 '{\"diagnosis\": {\"class\": \"phi\", \"min_length\": 2, \"max_length\": 20}, \"phone\": \"pii\"}');
             RESET ROLE;",
        )
        .await
        .unwrap();
    let bad = admin
        .batch_execute(
            "SET ROLE orgbase_owner;
             CREATE TABLE clinic.other (note text);
             SELECT orgbase.make_tenant_table('clinic.other', 'clinic', classes =>
                 '{\"note\": {\"class\": \"pii\", \"max_len\": 5}}');",
        )
        .await
        .unwrap_err();
    assert!(
        bad.to_string().contains("max_len") || format!("{bad:?}").contains("max_len"),
        "{bad:?}"
    );
    admin.batch_execute("ROLLBACK; RESET ROLE").await.ok();
    let catalog = orgbase_db::catalog::Catalog::load(&admin).await.unwrap();
    let visits = catalog.get("visits").unwrap();
    let d = visits.column("diagnosis").unwrap();
    assert_eq!(
        (d.class.as_str(), d.min_length, d.max_length),
        ("phi", Some(2), Some(20))
    );
    let p = visits.column("phone").unwrap();
    assert_eq!((p.class.as_str(), p.max_length), ("pii", None));
    let body = |v: &str| {
        serde_json::json!({ "diagnosis": v })
            .as_object()
            .unwrap()
            .clone()
    };
    // Characters, not bytes: twenty of them in 40 bytes pass.
    assert!(orgbase_db::records::validate(&visits, &body(&"é".repeat(20)), true).is_ok());
    for v in ["x".to_string(), "x".repeat(21)] {
        let errors = orgbase_db::records::validate(&visits, &body(&v), true).unwrap_err();
        assert_eq!(errors[0].field, "diagnosis");
        assert_eq!(errors[0].message, "must be 2 to 20 characters long");
    }
}
