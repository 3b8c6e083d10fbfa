//! Retention (SPEC R20) on a real database: what is due goes, what a legal hold covers stays,
//! a dry run changes nothing, every deletion and hold is audited, and the chains still verify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use orgbase_db::audit;
use orgbase_db::retention::{self, Options};
use orgbase_testkit::TestDb;
use tokio_postgres::Client;
use uuid::Uuid;

struct World {
    db: TestDb,
    org_a: Uuid,
    org_b: Uuid,
    u1: Uuid,
    u2: Uuid,
    u3: Uuid,
}

async fn user(c: &Client, email: &str) -> Uuid {
    let id = Uuid::now_v7();
    c.execute(
        "INSERT INTO orgbase.users (id, email, email_hash) VALUES ($1, $2, sha256(convert_to($2, 'UTF8')))",
        &[&id, &email],
    )
    .await
    .unwrap();
    id
}

async fn org(c: &Client, slug: &str, owner: Uuid, members: &[Uuid]) -> Uuid {
    let id = Uuid::now_v7();
    c.execute(
        "INSERT INTO orgbase.organizations (id, name, slug, owner_id) VALUES ($1, $2, $2, $3)",
        &[&id, &slug, &owner],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO orgbase.members (org_id, user_id, role) VALUES ($1, $2, 'owner')",
        &[&id, &owner],
    )
    .await
    .unwrap();
    for m in members {
        c.execute(
            "INSERT INTO orgbase.members (org_id, user_id, role) VALUES ($1, $2, 'member')",
            &[&id, m],
        )
        .await
        .unwrap();
    }
    id
}

/// A note by `by`, soft-deleted `days` ago (or live with None); returns its id.
async fn note(c: &Client, org: Uuid, by: Uuid, days: Option<i32>) -> Uuid {
    let id = Uuid::now_v7();
    c.execute(
        "INSERT INTO orgbase.notes (org_id, id, title, created_by, updated_by, deleted_at)
         VALUES ($1, $2, 'n', $3, $3, now() - make_interval(days => $4))",
        &[&org, &id, &by, &days],
    )
    .await
    .unwrap();
    id
}

/// A session of `user` that ended `hours` ago (negative: still valid).
async fn session(c: &Client, user: Uuid, hours: i32) -> Uuid {
    let id = Uuid::now_v7();
    c.execute(
        "INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, expires_at)
         VALUES ($1, $2, sha256(convert_to(gen_random_uuid()::text, 'UTF8')),
                 sha256(convert_to(gen_random_uuid()::text, 'UTF8')),
                 now() - make_interval(hours => $3))",
        &[&id, &user, &hours],
    )
    .await
    .unwrap();
    id
}

async fn exists(c: &Client, table: &str, id: Uuid) -> bool {
    c.query_one(
        &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)"),
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

async fn world() -> World {
    let db = TestDb::migrated().await;
    let c = db.admin().await;
    let u1 = user(&c, "u1@example.com").await;
    let u2 = user(&c, "u2@example.com").await;
    let u3 = user(&c, "u3@example.com").await;
    let org_a = org(&c, "org-a", u3, &[u1, u2]).await;
    let org_b = org(&c, "org-b", u3, &[u1]).await;
    World {
        db,
        org_a,
        org_b,
        u1,
        u2,
        u3,
    }
}

async fn hold(c: &Client, org: Uuid, subject: Option<Uuid>, by: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    c.execute(
        "INSERT INTO orgbase.legal_holds (org_id, id, subject_id, reason, placed_by)
         VALUES ($1, $2, $3, 'litigation', $4)",
        &[&org, &id, &subject, &by],
    )
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn due_rows_go_held_rows_stay_and_a_dry_run_changes_nothing() {
    let w = world().await;
    let mut c = w.db.admin().await;
    // org A: a subject hold on u1; org B: a hold on the whole organization.
    hold(&c, w.org_a, Some(w.u1), w.u3).await;
    hold(&c, w.org_b, None, w.u3).await;
    let a_u1_old = note(&c, w.org_a, w.u1, Some(100)).await;
    let a_u2_old = note(&c, w.org_a, w.u2, Some(100)).await;
    let a_u2_recent = note(&c, w.org_a, w.u2, Some(10)).await;
    let a_live = note(&c, w.org_a, w.u2, None).await;
    let b_u1_old = note(&c, w.org_b, w.u1, Some(100)).await;
    // Sessions: u2's ended two days ago (due), u2's ended an hour ago (not yet), u3's is valid;
    // u1 is held (in A, and B is held as a whole), so u1's old session stays. (u2 is not a
    // member of B: a member of an organization under hold keeps their sessions.)
    let s_u2_old = session(&c, w.u2, 48).await;
    let s_u2_recent = session(&c, w.u2, 1).await;
    let s_u3_valid = session(&c, w.u3, -24).await;
    let s_u1_old = session(&c, w.u1, 48).await;
    audit::seal_all(&mut c).await.unwrap();

    let audit_before = count(&c, "SELECT count(*) FROM orgbase.audit_log").await;
    let dry = retention::run(
        &mut c,
        &Options {
            org: None,
            dry_run: true,
        },
        |_| {},
    )
    .await
    .unwrap();
    let soft_a = dry
        .iter()
        .find(|l| l.data_type == "soft_deleted" && l.org == Some(w.org_a))
        .unwrap();
    assert_eq!((soft_a.deleted, soft_a.held), (1, 1), "{dry:?}");
    let soft_b = dry
        .iter()
        .find(|l| l.data_type == "soft_deleted" && l.org == Some(w.org_b))
        .unwrap();
    assert_eq!((soft_b.deleted, soft_b.held), (0, 1), "{dry:?}");
    let sessions = dry.iter().find(|l| l.data_type == "sessions").unwrap();
    assert_eq!((sessions.deleted, sessions.held), (1, 1), "{dry:?}");
    let audit_line = dry.iter().find(|l| l.data_type == "audit").unwrap();
    assert!(
        audit_line
            .note
            .as_deref()
            .unwrap()
            .contains("chain anchoring not built"),
        "{audit_line:?}"
    );
    // Nothing changed: every row is there, no audit entry was added.
    for id in [a_u1_old, a_u2_old, a_u2_recent, a_live, b_u1_old] {
        assert!(exists(&c, "orgbase.notes", id).await);
    }
    for id in [s_u2_old, s_u2_recent, s_u3_valid, s_u1_old] {
        assert!(exists(&c, "orgbase.sessions", id).await);
    }
    assert_eq!(
        count(&c, "SELECT count(*) FROM orgbase.audit_log").await,
        audit_before
    );

    let real = retention::run(&mut c, &Options::default(), |_| {})
        .await
        .unwrap();
    let soft_a_real = real
        .iter()
        .find(|l| l.data_type == "soft_deleted" && l.org == Some(w.org_a))
        .unwrap();
    assert_eq!((soft_a_real.deleted, soft_a_real.held), (1, 1));
    assert!(!exists(&c, "orgbase.notes", a_u2_old).await);
    for id in [a_u1_old, a_u2_recent, a_live, b_u1_old] {
        assert!(exists(&c, "orgbase.notes", id).await, "{id} should stay");
    }
    assert!(!exists(&c, "orgbase.sessions", s_u2_old).await);
    for id in [s_u2_recent, s_u3_valid, s_u1_old] {
        assert!(exists(&c, "orgbase.sessions", id).await, "{id} should stay");
    }
    // Audited: the row's own delete entry, and the run's entries per organization.
    let events: Vec<(Uuid, String, String, i64)> = c
        .query(
            "SELECT org_id, action, record_id, (new ->> 'rows')::int8 FROM orgbase.audit_log
              WHERE action LIKE 'retention.%' ORDER BY org_id, action, record_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut expected = vec![
        (Uuid::nil(), "retention.delete".into(), "sessions".into(), 1),
        (Uuid::nil(), "retention.held".into(), "sessions".into(), 1),
        (w.org_a, "retention.delete".into(), "soft_deleted".into(), 1),
        (w.org_a, "retention.held".into(), "soft_deleted".into(), 1),
        (w.org_b, "retention.held".into(), "soft_deleted".into(), 1),
    ];
    expected.sort();
    assert_eq!(events, expected);
    let row_deleted = count(
        &c,
        &format!(
            "SELECT count(*) FROM orgbase.audit_log WHERE action = 'delete' \
             AND table_name = 'orgbase.notes' AND record_id = '{a_u2_old}'"
        ),
    )
    .await;
    assert_eq!(row_deleted, 1);
    // The chains still verify with the new entries.
    audit::seal_all(&mut c).await.unwrap();
    let reports = audit::verify(&c, None, &[], |_| {}).await.unwrap();
    assert!(reports.iter().all(|r| r.ok()), "{reports:?}");

    // A shorter policy makes the recent row due; purge (one grace period for all) shares the
    // code and honours the holds too.
    c.execute(
        "INSERT INTO orgbase.retention_policies (org_id, data_type, keep) VALUES ($1, 'soft_deleted', '7 days')",
        &[&w.org_a],
    )
    .await
    .unwrap();
    retention::run(&mut c, &Options::default(), |_| {})
        .await
        .unwrap();
    assert!(!exists(&c, "orgbase.notes", a_u2_recent).await);
    let purged = retention::purge_soft_deleted(&mut c, None, Some(1), false, |_| {})
        .await
        .unwrap();
    let held: u64 = purged
        .iter()
        .flat_map(|t| t.per_org.iter().map(|(_, _, h)| h))
        .sum();
    assert_eq!(held, 2);
    assert!(exists(&c, "orgbase.notes", a_u1_old).await);
    assert!(exists(&c, "orgbase.notes", b_u1_old).await);
}

#[tokio::test]
async fn on_legal_hold_answers_for_org_and_subject_holds_and_releases_are_final() {
    let w = world().await;
    let c = w.db.admin().await;
    let on_hold = async |org: Uuid, subject: Option<Uuid>| -> bool {
        c.query_one("SELECT orgbase.on_legal_hold($1, $2)", &[&org, &subject])
            .await
            .unwrap()
            .get(0)
    };
    assert!(!on_hold(w.org_a, Some(w.u1)).await);
    let a_u1 = hold(&c, w.org_a, Some(w.u1), w.u3).await;
    let b_all = hold(&c, w.org_b, None, w.u3).await;
    assert!(on_hold(w.org_a, Some(w.u1)).await);
    assert!(!on_hold(w.org_a, Some(w.u2)).await);
    assert!(!on_hold(w.org_a, None).await);
    assert!(on_hold(w.org_b, Some(w.u1)).await);
    assert!(on_hold(w.org_b, None).await);
    c.execute(
        "UPDATE orgbase.legal_holds SET released_at = now(), released_by = $2 WHERE id = $1",
        &[&b_all, &w.u3],
    )
    .await
    .unwrap();
    assert!(!on_hold(w.org_b, Some(w.u1)).await);
    assert!(on_hold(w.org_a, Some(w.u1)).await);
    // Released once; nothing else about a hold changes.
    let again = c
        .execute(
            "UPDATE orgbase.legal_holds SET released_at = now() WHERE id = $1",
            &[&b_all],
        )
        .await
        .unwrap_err();
    assert_eq!(
        again.as_db_error().unwrap().hint(),
        Some("orgbase_hold_released")
    );
    let edit = c
        .execute(
            "UPDATE orgbase.legal_holds SET reason = 'x' WHERE id = $1",
            &[&a_u1],
        )
        .await
        .unwrap_err();
    assert_eq!(
        edit.as_db_error().unwrap().hint(),
        Some("orgbase_forbidden")
    );
    // Placing and releasing are audited.
    let actions: Vec<String> = c
        .query(
            "SELECT action FROM orgbase.audit_log WHERE table_name = 'orgbase.legal_holds'
              AND record_id = $1 ORDER BY id",
            &[&b_all.to_string()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, ["insert", "update"]);
}

#[tokio::test]
async fn consent_histories_of_former_members_go_after_the_accounts_period() {
    let w = world().await;
    let mut c = w.db.admin().await;
    for (subject, purpose) in [(w.u1, "analytics"), (w.u2, "analytics")] {
        c.execute(
            "INSERT INTO orgbase.consents (org_id, subject_id, purpose, status, recorded_by)
             VALUES ($1, $2, $3, 'granted', $2)",
            &[&w.org_a, &subject, &purpose],
        )
        .await
        .unwrap();
    }
    // Both left org A eight years ago; u1 is under a hold.
    c.execute(
        "UPDATE orgbase.members SET deleted_at = now() - interval '8 years'
          WHERE org_id = $1 AND user_id = ANY ($2)",
        &[&w.org_a, &vec![w.u1, w.u2]],
    )
    .await
    .unwrap();
    hold(&c, w.org_a, Some(w.u1), w.u3).await;
    let lines = retention::run(
        &mut c,
        &Options {
            org: Some(w.org_a),
            dry_run: false,
        },
        |_| {},
    )
    .await
    .unwrap();
    let acct = lines.iter().find(|l| l.data_type == "accounts").unwrap();
    assert_eq!(
        (acct.deleted, acct.held, acct.keep.as_deref()),
        (1, 1, Some("7y"))
    );
    // With --org, account-level sessions and shared partitions are left alone.
    assert!(!lines.iter().any(|l| l.data_type == "sessions"));
    let left: Vec<Uuid> = c
        .query("SELECT subject_id FROM orgbase.consents", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [w.u1]);
}

#[tokio::test]
async fn access_log_partitions_follow_the_longest_policy_and_holds() {
    let w = world().await;
    let mut c = w.db.admin().await;
    let (months, _) = retention::maintain_logs(&mut c, true).await.unwrap();
    assert_eq!(months, (12, 72));
    c.execute(
        "INSERT INTO orgbase.retention_policies (org_id, data_type, keep) VALUES ($1, 'access_log', '2 years')",
        &[&w.org_a],
    )
    .await
    .unwrap();
    let (months, _) = retention::maintain_logs(&mut c, true).await.unwrap();
    assert_eq!(months, (24, 72));
    hold(&c, w.org_b, Some(w.u1), w.u3).await;
    let (months, _) = retention::maintain_logs(&mut c, true).await.unwrap();
    assert_eq!(months, (1200, 72));
    // An old partition is dropped by a real run only when no hold covers its class.
    c.batch_execute(
        "CREATE TABLE orgbase.access_log_std_200001 PARTITION OF orgbase.access_log_std
             FOR VALUES FROM ('2000-01-01') TO ('2000-02-01')",
    )
    .await
    .unwrap();
    retention::maintain_logs(&mut c, false).await.unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_class WHERE relname = 'access_log_std_200001'"
        )
        .await,
        1
    );
    c.execute(
        "UPDATE orgbase.legal_holds SET released_at = now(), released_by = $1",
        &[&w.u3],
    )
    .await
    .unwrap();
    let (_, lines) = retention::maintain_logs(&mut c, false).await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l == "dropped orgbase.access_log_std_200001"),
        "{lines:?}"
    );
}
