#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
//! `orgbase check` (SPEC R6): a migrated database passes; each seeded mistake is reported
//! exactly once, under its rule and object; correct objects are not reported.
//!
//! The seeded tests compare against the findings of the same database before seeding, so that
//! they test the rules and not the migrations (that is `a_freshly_migrated_database_has_no_findings`).
//!
//! Role attributes and memberships are cluster-wide, and every test in this file shares one
//! cluster (one per test process). The test that gives the runtime role BYPASSRLS therefore holds
//! `ROLES` for writing, every other test that runs `check` holds it for reading, and the role is
//! restored before any assertion can fail. Other test binaries run their own clusters.

use orgbase_db::{DbError, Finding, check};
use orgbase_testkit::TestDb;
use tokio::sync::RwLock;
use tokio_postgres::Client;

static ROLES: RwLock<()> = RwLock::const_new(());

fn show(findings: &[Finding]) -> String {
    findings.iter().map(|f| format!("  {f}\n")).collect()
}

/// The findings in `after` that are not in `before`.
fn new_findings(before: &[Finding], after: Vec<Finding>) -> Vec<Finding> {
    after.into_iter().filter(|f| !before.contains(f)).collect()
}

fn pairs(findings: &[Finding]) -> Vec<(String, &'static str)> {
    findings
        .iter()
        .map(|f| (f.object.clone(), f.rule))
        .collect()
}

fn expected(list: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
    let mut v: Vec<_> = list.iter().map(|(o, r)| ((*o).to_owned(), *r)).collect();
    v.sort();
    v
}

/// Run `sql` and return the findings it adds to the database.
async fn findings_added_by(admin: &Client, sql: &str) -> Vec<Finding> {
    let before = check(admin).await.unwrap();
    admin.batch_execute(sql).await.unwrap();
    new_findings(&before, check(admin).await.unwrap())
}

#[tokio::test]
async fn a_freshly_migrated_database_has_no_findings() {
    let _roles = ROLES.read().await;
    let db = TestDb::migrated().await;
    let findings = check(&db.admin().await).await.unwrap();
    assert!(
        findings.is_empty(),
        "unexpected findings:\n{}",
        show(&findings)
    );
}

#[tokio::test]
async fn an_unmigrated_database_is_an_error_not_a_pass() {
    let db = TestDb::empty().await;
    let err = check(&db.admin().await).await.unwrap_err();
    assert!(matches!(err, DbError::NotMigrated(_)), "{err}");
}

/// Foreign keys are declared in CREATE TABLE: adding one to a table whose row-level security is
/// forced validates it through the policies, outside any tenant context.
#[tokio::test]
async fn each_mistake_is_reported_once_and_correct_objects_pass() {
    let _roles = ROLES.read().await;
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let findings = findings_added_by(
        &admin,
        "CREATE SCHEMA x AUTHORIZATION orgbase_owner;
         SET ROLE orgbase_owner;

         -- Correct: no findings.
         CREATE TABLE x.good (title text NOT NULL);
         SELECT orgbase.make_tenant_table('x.good', 'x');
         CREATE TABLE x.good_child (
             org_id uuid NOT NULL REFERENCES orgbase.organizations (id),
             id uuid NOT NULL,
             created_by uuid NOT NULL REFERENCES orgbase.users (id),
             good_id uuid NOT NULL,
             PRIMARY KEY (org_id, id),
             FOREIGN KEY (org_id, good_id) REFERENCES x.good (org_id, id),
             FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id));
         SELECT orgbase.make_tenant_table('x.good_child', 'x');
         CREATE VIEW x.good_view WITH (security_invoker = true) AS SELECT title FROM x.good;
         CREATE VIEW x.good_view_on WITH (security_invoker = on) AS SELECT title FROM x.good;
         CREATE TABLE x.lookup (code text PRIMARY KEY);
         CREATE VIEW x.lookup_view AS SELECT code FROM x.lookup;
         CREATE FUNCTION x.pinned() RETURNS int LANGUAGE sql SECURITY DEFINER
             SET search_path = pg_catalog, x AS 'SELECT 1';
         CREATE FUNCTION x.invoker() RETURNS int LANGUAGE sql AS 'SELECT 1';

         -- One mistake each.
         CREATE TABLE x.rls_off (title text);
         SELECT orgbase.make_tenant_table('x.rls_off', 'x');
         ALTER TABLE x.rls_off DISABLE ROW LEVEL SECURITY;

         CREATE TABLE x.not_forced (title text);
         SELECT orgbase.make_tenant_table('x.not_forced', 'x');
         ALTER TABLE x.not_forced NO FORCE ROW LEVEL SECURITY;

         CREATE TABLE x.no_delete (title text);
         SELECT orgbase.make_tenant_table('x.no_delete', 'x');
         DROP POLICY tenant_delete ON x.no_delete;

         -- A primary key column cannot be nullable, so a nullable org_id is never alone.
         CREATE TABLE x.nullable (org_id uuid, id uuid PRIMARY KEY);
         SELECT orgbase.make_tenant_table('x.nullable', 'x');

         CREATE TABLE x.pk_id (id uuid PRIMARY KEY);
         SELECT orgbase.make_tenant_table('x.pk_id', 'x');

         CREATE TABLE x.projects (name text, id uuid NOT NULL UNIQUE);
         SELECT orgbase.make_tenant_table('x.projects', 'x');
         CREATE TABLE x.tasks (project_id uuid NOT NULL REFERENCES x.projects (id));
         SELECT orgbase.make_tenant_table('x.tasks', 'x');

         CREATE TABLE x.other_org (other_org uuid REFERENCES orgbase.organizations (id));
         SELECT orgbase.make_tenant_table('x.other_org', 'x');

         CREATE TABLE x.foreign_owned (title text);
         SELECT orgbase.make_tenant_table('x.foreign_owned', 'x');

         -- Everything right except the registration; one FOR ALL policy covers all commands.
         CREATE TABLE x.unregistered (
             org_id uuid NOT NULL, id uuid NOT NULL, created_by uuid NOT NULL,
             PRIMARY KEY (org_id, id));
         ALTER TABLE x.unregistered ENABLE ROW LEVEL SECURITY;
         ALTER TABLE x.unregistered FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_all ON x.unregistered USING (org_id = orgbase.ctx_org());

         -- Registered by hand, without org_id.
         CREATE TABLE x.no_org (id uuid PRIMARY KEY);
         INSERT INTO orgbase.tenant_tables (table_name, app) VALUES ('x.no_org', 'x');
         ALTER TABLE x.no_org ENABLE ROW LEVEL SECURITY;
         ALTER TABLE x.no_org FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_all ON x.no_org USING (false);

         CREATE FUNCTION x.leaky() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';

         CREATE VIEW x.notes_view AS SELECT title FROM orgbase.notes;
         CREATE VIEW x.inner_view WITH (security_invoker = true) AS SELECT title FROM x.good;
         CREATE VIEW x.outer_view AS SELECT title FROM x.inner_view;

         CREATE TABLE x.runtime_owned (n int);
         RESET ROLE;
         ALTER TABLE x.foreign_owned OWNER TO CURRENT_USER;
         ALTER TABLE x.runtime_owned OWNER TO orgbase_runtime;",
    )
    .await;

    assert_eq!(
        pairs(&findings),
        expected(&[
            ("x.rls_off", "rls-disabled"),
            ("x.not_forced", "rls-not-forced"),
            ("x.no_delete", "missing-policy"),
            ("x.nullable", "org-id-nullable"),
            ("x.nullable", "org-id-not-in-primary-key"),
            ("x.pk_id", "org-id-not-in-primary-key"),
            ("x.no_org", "org-id-missing"),
            ("x.no_org", "org-id-not-in-primary-key"),
            ("x.tasks", "non-composite-tenant-fk"),
            ("x.other_org", "non-composite-tenant-fk"),
            ("x.foreign_owned", "owner-not-owner-role"),
            ("x.unregistered", "unregistered"),
            ("x.leaky()", "security-definer-search-path"),
            ("x.notes_view", "view-not-security-invoker"),
            ("x.outer_view", "view-not-security-invoker"),
            ("x.runtime_owned", "runtime-owns-objects"),
        ]),
        "findings:\n{}",
        show(&findings)
    );
    let message = |object: &str| {
        findings
            .iter()
            .find(|f| f.object == object)
            .map(|f| f.message.clone())
            .unwrap()
    };
    assert!(message("x.no_delete").contains("DELETE"));
    assert!(message("x.tasks").contains("(project_id)"));
    assert!(message("x.pk_id").contains("(id)"));
    assert!(message("x.notes_view").contains("orgbase.notes"));
    assert!(message("x.outer_view").contains("x.good"));

    let first = &findings[0];
    assert_eq!(
        first.to_string(),
        format!("{}: {}: {}", first.object, first.rule, first.message)
    );
    assert!(!first.to_string().contains('\n'));
}

#[tokio::test]
async fn every_missing_command_is_named() {
    let _roles = ROLES.read().await;
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let findings = findings_added_by(
        &admin,
        "CREATE SCHEMA y AUTHORIZATION orgbase_owner;
         SET ROLE orgbase_owner;
         CREATE TABLE y.t (title text);
         SELECT orgbase.make_tenant_table('y.t', 'y');
         DROP POLICY tenant_select ON y.t;
         DROP POLICY tenant_update ON y.t;
         -- A restrictive policy grants nothing: UPDATE is still uncovered.
         CREATE POLICY only_mine ON y.t AS RESTRICTIVE FOR UPDATE USING (true);
         RESET ROLE;",
    )
    .await;
    let messages: Vec<_> = findings
        .iter()
        .map(|f| (f.object.as_str(), f.rule, f.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            (
                "y.t",
                "missing-policy",
                "no permissive row-level security policy for SELECT"
            ),
            (
                "y.t",
                "missing-policy",
                "no permissive row-level security policy for UPDATE"
            ),
        ]
    );
}

/// BYPASSRLS on the runtime role, and membership in a role that has it, are cluster-wide: this
/// test holds `ROLES` exclusively and restores both before asserting anything.
#[tokio::test]
async fn runtime_bypassrls_is_reported() {
    let _roles = ROLES.write().await;
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    let before = check(&admin).await.unwrap();

    admin
        .batch_execute("ALTER ROLE orgbase_runtime BYPASSRLS")
        .await
        .unwrap();
    let attribute = check(&admin).await;
    admin
        .batch_execute("ALTER ROLE orgbase_runtime NOBYPASSRLS")
        .await
        .unwrap();

    let bypasser = format!("check_bypass_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {bypasser} NOLOGIN BYPASSRLS; GRANT {bypasser} TO orgbase_runtime"
        ))
        .await
        .unwrap();
    let membership = check(&admin).await;
    admin
        .batch_execute(&format!(
            "REVOKE {bypasser} FROM orgbase_runtime; DROP ROLE {bypasser}"
        ))
        .await
        .unwrap();
    let after = check(&admin).await.unwrap();

    let attribute = new_findings(&before, attribute.unwrap());
    assert_eq!(
        pairs(&attribute),
        expected(&[("orgbase_runtime", "runtime-bypassrls")]),
        "{}",
        show(&attribute)
    );
    assert!(attribute[0].message.contains("BYPASSRLS"));
    let membership = new_findings(&before, membership.unwrap());
    assert_eq!(
        pairs(&membership),
        expected(&[("orgbase_runtime", "runtime-bypassrls")]),
        "{}",
        show(&membership)
    );
    assert!(membership[0].message.contains(&bypasser));
    assert_eq!(after, before, "the role was not restored");
}
