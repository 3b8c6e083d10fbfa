//! Migrations against a real PostgreSQL: up/down/up, drift, locking, roles, and databases of
//! the releases before the baseline.
//!
//! The first migration creates and alters the cluster-wide roles, and two databases of one
//! cluster migrated at the same moment collide there ("tuple concurrently updated": the
//! migration lock is per database). Every test here that runs it (or its down) on a database of
//! its own holds `ROLES`; the tests share one cluster (one per test process).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::process::Command;

use orgbase_db::migrate::{Drift, Migration, Migrator, State};
use orgbase_testkit::{TestDb, bin_dir};

fn schema_dump(db: &TestDb) -> String {
    let out = Command::new(bin_dir().join("pg_dump"))
        .args(["--schema-only", "--no-comments"])
        .envs(db.libpq_env())
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_dump guards its output with a random \restrict key per run; it is not schema.
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

static ROLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn migrator() -> Migrator {
    Migrator::embedded("test")
}

#[tokio::test]
async fn up_down_up_leaves_an_identical_schema() {
    let _roles = ROLES.lock().await;
    let db = TestDb::empty().await;
    let mut admin = db.admin().await;
    let m = migrator();
    let applied = m.up(&mut admin, None, |_, _| {}).await.unwrap();
    assert_eq!(applied.len(), m.migrations().len());
    let first = schema_dump(&db);
    assert!(first.contains("orgbase"), "{first}");

    let reverted = m.down(&mut admin, 0, |_, _| {}).await.unwrap();
    assert_eq!(reverted.len(), m.migrations().len());
    assert!(
        m.status(&admin)
            .await
            .unwrap()
            .iter()
            .all(|s| s.state == State::Pending)
    );
    let after_down = schema_dump(&db);
    assert_ne!(first, after_down, "down changed nothing");

    m.up(&mut admin, None, |_, _| {}).await.unwrap();
    assert_eq!(first, schema_dump(&db));
    assert!(m.verify(&admin).await.unwrap().is_empty());
}

#[tokio::test]
async fn applied_migrations_are_recorded() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let applied = Migrator::applied(&admin).await.unwrap();
    assert_eq!(applied.len(), migrator().migrations().len());
    let first = &applied[0];
    assert_eq!(first.version, 1);
    assert_eq!(first.description, "roles and schema");
    assert_eq!(first.checksum, migrator().migrations()[0].checksum());
    assert_eq!(first.applied_by, "orgbase-testkit");
    assert!(first.duration_ms >= 0);
}

#[tokio::test]
async fn checksum_drift_and_unknown_versions_are_reported() {
    let db = TestDb::migrated().await;
    let mut admin = db.admin().await;
    admin
        .batch_execute(
            "UPDATE orgbase.schema_migrations SET checksum = repeat('0', 64) WHERE version = 1;
             INSERT INTO orgbase.schema_migrations
                 (version, description, checksum, applied_by, duration_ms, schema_snapshot)
             SELECT 9999, 'from the future', 'x', 'someone', 1, schema_snapshot
               FROM orgbase.schema_migrations WHERE version = 1;",
        )
        .await
        .unwrap();
    let drift = migrator().verify(&admin).await.unwrap();
    assert!(
        drift
            .iter()
            .any(|d| matches!(d, Drift::Checksum { version: 1, .. })),
        "{drift:?}"
    );
    assert!(
        drift
            .iter()
            .any(|d| matches!(d, Drift::UnknownVersion { version: 9999, .. })),
        "{drift:?}"
    );
    let text = drift
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("checksum drift"), "{text}");
    // An older binary refuses to migrate a database a newer one has touched.
    let err = migrator()
        .up(&mut admin, None, |_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("9999"), "{err}");
}

#[tokio::test]
async fn schema_changes_outside_migrations_are_drift() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    assert!(migrator().verify(&admin).await.unwrap().is_empty());
    admin
        .batch_execute(
            "CREATE TABLE orgbase.sneaky (id int);
             GRANT TRUNCATE ON orgbase.schema_migrations TO orgbase_runtime;",
        )
        .await
        .unwrap();
    let drift = migrator().verify(&admin).await.unwrap();
    let [Drift::Schema { added, .. }] = drift.as_slice() else {
        panic!("expected one schema drift, got {drift:?}");
    };
    assert!(added.iter().any(|l| l.contains("sneaky")), "{added:?}");
    assert!(
        added
            .iter()
            .any(|l| l.contains("schema_migrations") && l.contains("acl=")),
        "{added:?}"
    );
}

#[tokio::test]
async fn a_failed_migration_leaves_nothing_behind() {
    let db = TestDb::migrated().await;
    let mut admin = db.admin().await;
    let mut list = migrator().migrations().to_vec();
    list.push(Migration {
        version: 900,
        name: "half_done".into(),
        up: "CREATE TABLE orgbase.half (id int); SELECT 1/0;".into(),
        down: "DROP TABLE orgbase.half;".into(),
    });
    let m = Migrator::new(list, "test");
    let err = m
        .up(&mut admin, None, |_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("900") && err.contains("half_done"), "{err}");
    let exists: bool = admin
        .query_one("SELECT to_regclass('orgbase.half') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
    let status = m.status(&admin).await.unwrap();
    assert_eq!(status.last().unwrap().state, State::Pending);
    // The lock was released: a later run works.
    assert!(
        migrator()
            .up(&mut admin, None, |_, _| {})
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_runs_apply_each_migration_once() {
    let _roles = ROLES.lock().await;
    let db = TestDb::empty().await;
    let (mut a, mut b) = (db.admin().await, db.admin().await);
    let (ra, rb) = tokio::join!(
        async { migrator().up(&mut a, None, |_, _| {}).await },
        async { migrator().up(&mut b, None, |_, _| {}).await },
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.len() + rb.len(), migrator().migrations().len());
    let count: i64 = a
        .query_one("SELECT count(*) FROM orgbase.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as usize, migrator().migrations().len());
}

#[tokio::test]
async fn roles_have_the_documented_attributes() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let rows = admin
        .query(
            "SELECT rolname, rolcanlogin, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolreplication
               FROM pg_roles WHERE rolname LIKE 'orgbase\\_%' ORDER BY rolname",
            &[],
        )
        .await
        .unwrap();
    let roles: Vec<(String, bool, bool, bool)> = rows
        .iter()
        .map(|r| {
            let no_privs = !r.get::<_, bool>(2)
                && !r.get::<_, bool>(4)
                && !r.get::<_, bool>(5)
                && !r.get::<_, bool>(6);
            (r.get(0), r.get(1), r.get(3), no_privs)
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            ("orgbase_backup".into(), true, true, true),
            ("orgbase_owner".into(), false, false, true),
            ("orgbase_readonly".into(), true, false, true),
            ("orgbase_runtime".into(), true, false, true),
        ]
    );
    let owned: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relowner = 'orgbase_runtime'::regrole",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 0, "the runtime role owns a relation");
    let owner: String = admin
        .query_one(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'orgbase'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "orgbase_owner");

    // The runtime role: no DDL, no writes to the migration record.
    let runtime = db.pool().get().await.unwrap();
    let who: String = runtime
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "orgbase_runtime");
    for sql in [
        "CREATE TABLE orgbase.x (id int)",
        "CREATE TABLE public.x (id int)",
        "DELETE FROM orgbase.schema_migrations",
        "TRUNCATE orgbase.schema_migrations",
        "SET ROLE orgbase_owner",
        "CREATE TEMP TABLE t (id int)",
    ] {
        let Err(err) = runtime.batch_execute(sql).await else {
            panic!("the runtime role may run {sql}");
        };
        let message = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(message.contains("permission denied"), "{sql}: {err:?}");
    }
    assert!(
        runtime
            .query("SELECT version FROM orgbase.schema_migrations", &[])
            .await
            .is_ok()
    );
}

/// Versions the database records, in order.
async fn recorded(admin: &tokio_postgres::Client) -> Vec<(i64, String)> {
    Migrator::applied(admin)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.version, a.checksum))
        .collect()
}

#[tokio::test]
async fn a_database_of_the_releases_before_the_baseline_is_recorded_at_it_unchanged() {
    let _roles = ROLES.lock().await;
    // Built the way an earlier release did: its 17 migrations.
    let old = TestDb::empty().await;
    let mut admin = old.admin().await;
    orgbase_testkit::legacy_migrator()
        .up(&mut admin, None, |_, _| {})
        .await
        .unwrap();
    let before = schema_dump(&old);
    let m = migrator();
    // The baseline builds exactly what the seventeen built.
    let at_baseline = TestDb::empty().await;
    m.up(
        &mut at_baseline.admin().await,
        Some(orgbase_db::migrate::BASELINE),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(before, schema_dump(&at_baseline));
    let legacy = m.legacy(&admin).await.unwrap();
    assert_eq!(legacy, Some((17, "refresh_reuse".to_string())));
    let drift = m.verify(&admin).await.unwrap();
    assert!(
        matches!(drift.as_slice(), [Drift::Legacy { at: 17, .. }]),
        "{drift:?}"
    );
    assert!(drift[0].to_string().contains("migrate up"), "{}", drift[0]);

    // `up` runs nothing of the baseline, only what came after it.
    let applied = m.up(&mut admin, None, |_, _| {}).await.unwrap();
    let after_baseline: Vec<i64> = m
        .migrations()
        .iter()
        .map(|x| x.version)
        .filter(|v| *v > orgbase_db::migrate::BASELINE)
        .collect();
    assert_eq!(applied, after_baseline);
    let expected: Vec<(i64, String)> = m
        .migrations()
        .iter()
        .map(|x| (x.version, x.checksum()))
        .collect();
    assert_eq!(recorded(&admin).await, expected);
    assert!(
        m.status(&admin)
            .await
            .unwrap()
            .iter()
            .all(|s| s.state == State::Applied)
    );
    assert!(m.verify(&admin).await.unwrap().is_empty());
    assert_eq!(m.legacy(&admin).await.unwrap(), None);

    // The same schema as a database this binary built from nothing.
    let fresh = TestDb::empty().await;
    let mut fresh_admin = fresh.admin().await;
    m.up(&mut fresh_admin, None, |_, _| {}).await.unwrap();
    assert_eq!(
        orgbase_db::migrate::snapshot(&admin).await.unwrap(),
        orgbase_db::migrate::snapshot(&fresh_admin).await.unwrap()
    );
    assert_eq!(schema_dump(&old), schema_dump(&fresh));
    assert_ne!(before, schema_dump(&old), "the later migrations ran");
    // And it migrates down like one.
    m.down(&mut admin, 0, |_, _| {}).await.unwrap();
    assert!(recorded(&admin).await.is_empty());
}

#[tokio::test]
async fn a_database_at_an_intermediate_earlier_version_is_sent_to_the_previous_release() {
    let _roles = ROLES.lock().await;
    let old = TestDb::empty().await;
    let mut admin = old.admin().await;
    orgbase_testkit::legacy_migrator()
        .up(&mut admin, Some(13), |_, _| {})
        .await
        .unwrap();
    let before = recorded(&admin).await;
    let dump = schema_dump(&old);
    for err in [
        migrator()
            .up(&mut admin, None, |_, _| {})
            .await
            .unwrap_err()
            .to_string(),
        migrator()
            .down(&mut admin, 0, |_, _| {})
            .await
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            err.contains("migration 13 (plan safe reads)")
                && err.contains("previous orgbase release"),
            "{err}"
        );
    }
    assert_eq!(recorded(&admin).await, before, "nothing recorded");
    assert_eq!(schema_dump(&old), dump, "nothing ran");
}

#[tokio::test]
async fn an_earlier_database_changed_outside_migrations_is_not_taken_for_the_baseline() {
    let _roles = ROLES.lock().await;
    let old = TestDb::empty().await;
    let mut admin = old.admin().await;
    orgbase_testkit::legacy_migrator()
        .up(&mut admin, None, |_, _| {})
        .await
        .unwrap();
    // A product's own schema is its own business; a policy added to orgbase's is not.
    admin
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.invoices (id int);
             CREATE POLICY wide_open ON orgbase.notes FOR SELECT TO orgbase_runtime USING (true);",
        )
        .await
        .unwrap();
    let before = recorded(&admin).await;
    let err = migrator()
        .up(&mut admin, None, |_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("changed since") && err.contains("wide_open") && !err.contains("invoices"),
        "{err}"
    );
    assert_eq!(recorded(&admin).await, before, "nothing recorded");
    admin
        .batch_execute("DROP POLICY wide_open ON orgbase.notes")
        .await
        .unwrap();
    migrator().up(&mut admin, None, |_, _| {}).await.unwrap();
    assert_eq!(migrator().legacy(&admin).await.unwrap(), None);
}

#[tokio::test]
async fn a_new_month_of_access_log_partitions_is_not_drift() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let created = admin
        .query(
            "SELECT * FROM orgbase.maintain_logs(now() + interval '14 months')",
            &[],
        )
        .await
        .unwrap();
    assert!(!created.is_empty(), "new partitions");
    let drift = migrator().verify(&admin).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
    // A table of any other name still is.
    admin
        .batch_execute("CREATE TABLE orgbase.report_202612 (id int)")
        .await
        .unwrap();
    assert_eq!(migrator().verify(&admin).await.unwrap().len(), 1);
}
