//! Anonymized analytics over real HTTP and a real database: the k-anonymous dataset holds no
//! value of a sensitive column and no class under k (checked by SQL and by pycanon), erased
//! people leave it; differentially private queries charge the persistent ledger exactly once,
//! refuse bad ε and other people's organizations, and 1,000 concurrent queries spend exactly
//! the budget.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::Duration;

use orgbase_db::analytics as store;
use orgbase_http::{HttpSettings, Services, app};
use orgbase_testkit::{Api, TestDb, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

struct World {
    db: TestDb,
    api: Api,
    /// Org A's owner, then its members: (user id, session token).
    a: Vec<(String, String)>,
    b_owner: (String, String),
    a_id: Uuid,
}

const MEMBERS: usize = 6;

async fn world() -> World {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    // A product's own table, classified the way the helper documents.
    admin
        .batch_execute(
            "CREATE SCHEMA app AUTHORIZATION orgbase_owner;
             SET ROLE orgbase_owner;
             CREATE TABLE app.visits (
                 org_id uuid NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(),
                 created_by uuid NOT NULL,
                 amount numeric NOT NULL,
                 patient_email text NOT NULL,
                 diagnosis text,
                 visited_on date NOT NULL,
                 kind text NOT NULL CHECK (kind IN ('checkup', 'urgent')),
                 note text,
                 PRIMARY KEY (org_id, id),
                 FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id));
             SELECT orgbase.make_tenant_table('app.visits', 'clinic',
                 classes => '{\"patient_email\": \"pii\", \"diagnosis\": {\"class\": \"phi\"},
                              \"amount\": {\"analytics\": \"perturb:0.1\"}}');
             GRANT USAGE ON SCHEMA app TO orgbase_runtime;
             GRANT SELECT, INSERT, UPDATE, DELETE ON app.visits TO orgbase_runtime;
             RESET ROLE;",
        )
        .await
        .unwrap();
    let limits = orgbase_db::pool::Limits {
        wait_queue: 4096,
        ..Default::default()
    };
    let pool = db.pool_with(8, limits);
    let services = Services::load(pool, &admin).await.unwrap();
    let settings = HttpSettings {
        request_timeout: Duration::from_secs(60),
        body_limit_bytes: 64 * 1024,
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
    let api = Api::new(base);
    let mut a = vec![api.user("owner@a.example").await];
    let b_owner = api.user("owner@b.example").await;
    for (token, slug) in [(&a[0].1, "org-a"), (&b_owner.1, "org-b")] {
        api.ok(
            Method::POST,
            "/v1/orgs",
            token,
            Some(json!({"name": slug, "slug": slug})),
        )
        .await;
    }
    for i in 1..MEMBERS {
        let email = format!("m{i}@a.example");
        let m = api.user(&email).await;
        api.join("org-a", &a[0].1, &email, &m.1, "member").await;
        a.push(m);
    }
    let a_id: Uuid = admin
        .query_one(
            "SELECT id FROM orgbase.organizations WHERE slug = 'org-a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    World {
        db,
        api,
        a,
        b_owner,
        a_id,
    }
}

/// 40 visits per member of org A: kinds and months that give classes of ≥ 5 rows, amounts of
/// 100, and one visit in 2001 that no other row shares (it must be suppressed). Sensitive
/// values are unique per row, so that any one of them in the dataset is found.
async fn seed(w: &World) -> Vec<String> {
    let admin = w.db.admin().await;
    let mut secrets = Vec::new();
    for (m, (user, _)) in w.a.iter().enumerate() {
        let user: Uuid = user.parse().unwrap();
        for n in 0..40 {
            let email = format!("patient-{m}-{n}@secret.example");
            let diagnosis = format!("diagnosis-{m}-{n}-secret");
            let note = format!("free text {m}-{n} secret");
            let title = format!("note title {m}-{n} secret");
            let month = 1 + (n % 3);
            admin
                .execute(
                    "INSERT INTO app.visits (org_id, created_by, updated_by, amount, patient_email,
                                             diagnosis, visited_on, kind, note)
                     VALUES ($1, $2, $2, 100, $3, $4, make_date(2026, $5, 10), $6, $7)",
                    &[
                        &w.a_id,
                        &user,
                        &email,
                        &diagnosis,
                        &month,
                        &(if n % 2 == 0 { "checkup" } else { "urgent" }),
                        &note,
                    ],
                )
                .await
                .unwrap();
            if n < 3 {
                admin
                    .execute(
                        "INSERT INTO orgbase.notes (org_id, created_by, updated_by, title, body)
                         VALUES ($1, $2, $2, $3, $4)",
                        &[&w.a_id, &user, &title, &format!("body of {title}")],
                    )
                    .await
                    .unwrap();
                secrets.push(title);
            }
            secrets.extend([email, diagnosis, note]);
        }
    }
    let owner: Uuid = w.a[0].0.parse().unwrap();
    admin
        .execute(
            "INSERT INTO app.visits (org_id, created_by, updated_by, amount, patient_email, visited_on, kind)
             VALUES ($1, $2, $2, 100, 'outlier@secret.example', '2001-05-05', 'urgent')",
            &[&w.a_id, &owner],
        )
        .await
        .unwrap();
    secrets.push("outlier@secret.example".into());
    secrets
}

async fn refresh(w: &World) -> Vec<store::TableReport> {
    let mut admin = w.db.admin().await;
    store::refresh(&mut admin, 5, None, |_| {}).await.unwrap()
}

fn report<'a>(reports: &'a [store::TableReport], table: &str) -> &'a store::TableReport {
    reports.iter().find(|r| r.table == table).unwrap()
}

#[tokio::test]
async fn the_dataset_holds_no_sensitive_value_and_no_class_under_k() {
    let w = world().await;
    let secrets = seed(&w).await;
    let reports = refresh(&w).await;
    let admin = w.db.admin().await;

    // Every value of every analytics table, as text.
    let tables: Vec<String> = admin
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'analytics'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        tables.contains(&"analytics.visits".to_string()),
        "{tables:?}"
    );
    assert!(
        tables.contains(&"analytics.notes".to_string()),
        "{tables:?}"
    );
    let mut all = String::new();
    for t in &tables {
        for r in admin
            .query(&format!("SELECT x::text FROM {t} x"), &[])
            .await
            .unwrap()
        {
            all.push_str(r.get::<_, &str>(0));
            all.push('\n');
        }
    }
    assert!(!all.is_empty());
    for s in &secrets {
        assert!(!all.contains(s.as_str()), "{s} is in the dataset");
    }
    for id in w.a.iter().map(|(id, _)| id) {
        assert!(
            !all.contains(id.as_str()),
            "a person's id is in the dataset"
        );
    }

    // What went in: no identifier, free text or sensitive column; months; perturbed amounts.
    let columns: Vec<String> = admin
        .query(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = 'analytics' AND table_name = 'visits' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        columns,
        ["org_id", "amount", "visited_on", "kind", "created_at"],
        "{columns:?}"
    );
    let v = report(&reports, "visits");
    assert_eq!(v.source_rows, (MEMBERS * 40 + 1) as i64);
    assert_eq!(v.suppressed_rows, 1, "only the outlier: {v:?}");
    assert!(v.k_achieved.unwrap() >= 5, "{v:?}");
    assert_eq!(
        v.quasi_identifiers,
        ["org_id", "visited_on", "kind", "created_at"]
    );
    let amounts = admin
        .query(
            "SELECT min(amount)::float8, max(amount)::float8, count(DISTINCT amount)
               FROM analytics.visits",
            &[],
        )
        .await
        .unwrap();
    let (lo, hi, distinct): (f64, f64, i64) =
        (amounts[0].get(0), amounts[0].get(1), amounts[0].get(2));
    assert!(
        (90.0..=110.0).contains(&lo) && (90.0..=110.0).contains(&hi),
        "{lo} {hi}"
    );
    assert!(distinct > 10, "amounts are perturbed: {distinct} distinct");
    let months: i64 = admin
        .query_one(
            "SELECT count(*) FROM analytics.visits WHERE extract(day FROM visited_on) <> 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(months, 0, "dates are months");

    // k by SQL over the quasi-identifiers of every table.
    for r in &reports {
        let qi = r.quasi_identifiers.join(", ");
        let small: i64 = admin
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM {} GROUP BY {qi} HAVING count(*) < 5) s",
                    r.dataset
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(small, 0, "{}", r.dataset);
    }
    pycanon_k(&admin, "analytics.visits", &v.quasi_identifiers, 5).await;

    // The read-only analytics role reads it; requests (the runtime role) do not.
    let pool = w.db.pool();
    let runtime = pool.get().await.unwrap();
    let denied = runtime
        .query_one("SELECT count(*) FROM analytics.visits", &[])
        .await
        .unwrap_err();
    assert_eq!(
        denied.as_db_error().unwrap().code(),
        &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
    );
    admin
        .batch_execute(
            "SET ROLE orgbase_readonly; SELECT count(*) FROM analytics.visits; RESET ROLE",
        )
        .await
        .unwrap();
    // `orgbase check` finds nothing wrong with the dataset or the ledger.
    let findings = orgbase_db::check(&admin).await.unwrap();
    assert!(findings.is_empty(), "{findings:?}");

    // A person whose erasure is asked for leaves the dataset at the next refresh.
    let gone: Uuid = w.a[2].0.parse().unwrap();
    admin
        .execute(
            "INSERT INTO orgbase.gdpr_requests (id, kind, subject, org_id, requested_by, status)
             VALUES (gen_random_uuid(), 'erase', $1, $2, $1, 'pending')",
            &[&gone, &w.a_id],
        )
        .await
        .unwrap();
    let after = refresh(&w).await;
    assert_eq!(
        report(&after, "visits").source_rows,
        v.source_rows - 40,
        "the erased person's 40 visits are out"
    );
    assert_eq!(
        report(&after, "notes").source_rows,
        report(&reports, "notes").source_rows - 3
    );
    let recorded: i64 = admin
        .query_one(
            "SELECT count(*) FROM orgbase.analytics_refreshes WHERE table_name = 'visits'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 2, "each refresh is recorded");
}

/// k-anonymity of `table` checked independently, by pycanon (PyPI), run by the Python named in
/// `PYCANON_PYTHON` (CI's own virtualenv) or `python3`. Required in CI; skipped with a
/// note where that Python has no pycanon.
async fn pycanon_k(admin: &tokio_postgres::Client, table: &str, qi: &[String], k: i64) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kanon.py");
    let python = std::env::var_os("PYCANON_PYTHON").unwrap_or_else(|| "python3".into());
    let has = std::process::Command::new(&python)
        .args(["-c", "import pycanon"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have pycanon (.ci/run installs it in a virtualenv)"
        );
        eprintln!("pycanon is not installed: the independent k-anonymity check is skipped");
        return;
    }
    let cols = qi.join(", ");
    let rows = admin
        .query(
            &format!(
                "SELECT concat_ws(',', {}) FROM {table}",
                qi.iter()
                    .map(|c| format!("{c}::text"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[],
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("dataset.csv");
    let mut text = format!("{}\n", qi.join(","));
    for r in rows {
        text.push_str(r.get::<_, &str>(0));
        text.push('\n');
    }
    std::fs::write(&csv, text).unwrap();
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&csv)
        .arg(qi.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(got >= k, "pycanon says k = {got} over {cols}");
}

async fn query(api: &Api, token: &str, org: &str, body: Value) -> (u16, Value) {
    let (s, v) = api
        .call(
            Method::POST,
            &format!("/v1/orgs/{org}/analytics/query"),
            Some(token),
            Some(body),
        )
        .await;
    (s.as_u16(), v)
}

async fn key(api: &Api, owner: &str, scopes: Value) -> String {
    api.ok(
        Method::POST,
        "/v1/orgs/org-a/api-keys",
        owner,
        Some(json!({"name": "k", "scopes": scopes})),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn spent(w: &World) -> i64 {
    let admin = w.db.admin().await;
    store::budget_as_operator(&admin, w.a_id)
        .await
        .unwrap()
        .spent_micro
}

#[tokio::test]
async fn queries_charge_the_ledger_once_and_refuse_what_they_must() {
    let w = world().await;
    seed(&w).await;
    let api = &w.api;
    let owner = &w.a[0].1;

    let (s, v) = query(
        api,
        owner,
        "org-a",
        json!({"table": "visits", "aggregate": "count", "group_by": "kind",
               "keys": ["checkup", "urgent", "never"], "epsilon": 0.1}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    assert_eq!(
        groups[2]["key"], "never",
        "a key without rows is answered too"
    );
    // One row per person (contributions 1): about 6 per kind, with noise of scale 10.
    assert!(groups[0]["value"].as_f64().unwrap().abs() < 200.0, "{v}");
    assert_eq!(v["epsilon_spent"], 0.1);
    assert_eq!(v["budget"]["spent_micro"], 100_000);
    assert_eq!(v["budget"]["left"], 0.9);
    assert_eq!(v["mechanism"]["parts"][0]["scale"], 10.0);
    let charge = v["charge_id"].as_str().unwrap().to_string();

    let (s, v) = query(
        api,
        owner,
        "org-a",
        json!({"table": "visits", "aggregate": "mean", "column": "amount", "bounds": [0, 200],
               "contributions": 10, "filters": {"kind": "urgent"}, "epsilon": 0.2}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mean = v["value"].as_f64().unwrap();
    assert!((0.0..=200.0).contains(&mean), "{mean}");
    assert_eq!(v["mechanism"]["parts"][1]["sensitivity"], 2000.0);
    assert_eq!(spent(&w).await, 300_000);

    // Bad input: 422 naming the field, and nothing charged.
    for (body, field) in [
        (
            json!({"table": "visits", "aggregate": "count", "epsilon": 0}),
            "epsilon",
        ),
        (
            json!({"table": "visits", "aggregate": "count", "epsilon": -1}),
            "epsilon",
        ),
        (
            json!({"table": "visits", "aggregate": "count", "epsilon": "NaN"}),
            "epsilon",
        ),
        (
            json!({"table": "visits", "aggregate": "count", "epsilon": "Infinity"}),
            "epsilon",
        ),
        (
            json!({"table": "visits", "aggregate": "count", "epsilon": 0.0000001}),
            "epsilon",
        ),
        (
            json!({"table": "visits", "aggregate": "count", "epsilon": 1.5}),
            "epsilon",
        ),
        (
            json!({"table": "visits", "aggregate": "sum", "column": "amount", "epsilon": 0.1}),
            "bounds",
        ),
        (
            json!({"table": "visits", "aggregate": "sum", "column": "patient_email", "bounds": [0, 1], "epsilon": 0.1}),
            "column",
        ),
        (
            json!({"table": "visits", "aggregate": "count", "group_by": "diagnosis", "keys": ["x"], "epsilon": 0.1}),
            "group_by",
        ),
        (
            json!({"table": "visits", "aggregate": "count", "keys": ["x"], "epsilon": 0.1}),
            "keys",
        ),
        (
            json!({"table": "visits", "aggregate": "count", "filters": {"patient_email": "a"}, "epsilon": 0.1}),
            "filters.patient_email",
        ),
        (
            json!({"table": "nope", "aggregate": "count", "epsilon": 0.1}),
            "table",
        ),
        (
            json!({"table": "visits", "aggregate": "median", "epsilon": 0.1}),
            "aggregate",
        ),
    ] {
        let v = api
            .expect(
                Method::POST,
                "/v1/orgs/org-a/analytics/query",
                Some(owner),
                Some(body.clone()),
                422,
                "validation",
            )
            .await;
        assert_eq!(v["errors"][0]["field"], field, "{body}: {v}");
    }
    assert_eq!(spent(&w).await, 300_000, "refused queries cost nothing");

    // Who may: not a member, not another organization's owner.
    let count = json!({"table": "visits", "aggregate": "count", "epsilon": 0.01});
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/analytics/query",
        Some(&w.a[1].1),
        Some(count.clone()),
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/analytics/query",
        Some(&w.b_owner.1),
        Some(count.clone()),
        404,
        "not-found",
    )
    .await;
    api.expect(
        Method::GET,
        "/v1/orgs/org-a/analytics/budget",
        Some(&w.a[1].1),
        None,
        403,
        "forbidden",
    )
    .await;
    let b_id: String = api
        .ok(Method::GET, "/v1/orgs/org-b", &w.b_owner.1, None)
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.expect(
        Method::POST,
        &format!("/v1/orgs/{b_id}/analytics/query"),
        Some(owner),
        Some(count.clone()),
        404,
        "not-found",
    )
    .await;
    // API keys: the analytics scope spends the budget, a read scope reads the rows.
    let only_analytics = key(api, owner, json!(["analytics"])).await;
    let analytics_and_read = key(api, owner, json!(["analytics", "clinic:read"])).await;
    let read_only = key(api, owner, json!(["clinic:read"])).await;
    let admin_key = key(api, owner, json!(["admin"])).await;
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/analytics/query",
        Some(&only_analytics),
        Some(count.clone()),
        403,
        "forbidden",
    )
    .await;
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/analytics/query",
        Some(&read_only),
        Some(count.clone()),
        403,
        "forbidden",
    )
    .await;
    let (s, v) = query(api, &analytics_and_read, "org-a", count.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(spent(&w).await, 310_000);
    // No key mints a key that spends the budget unless it may itself.
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/api-keys",
        Some(&admin_key),
        Some(json!({"name": "k2", "scopes": ["analytics"]})),
        403,
        "forbidden",
    )
    .await;

    // The ledger and the audit trail: one charge per answer, each audited with its actor.
    let page = api
        .ok(Method::GET, "/v1/orgs/org-a/analytics/charges", owner, None)
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{page}");
    assert_eq!(items[2]["id"], charge.as_str());
    assert_eq!(items[2]["epsilon_micro"], 100_000);
    assert_eq!(items[2]["query"]["group_by"], "kind");
    let admin = w.db.admin().await;
    let audited: Vec<(String, Option<Uuid>)> = admin
        .query(
            "SELECT actor_kind, actor_user FROM orgbase.audit_log
              WHERE table_name = 'orgbase.privacy_charges' AND action = 'insert' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(audited.len(), 3, "{audited:?}");
    assert_eq!(audited[0].1.unwrap().to_string(), w.a[0].0);
    assert_eq!(audited[2].0, "api_key");

    // An exhausted budget: 422 privacy-budget-exhausted, nothing charged.
    store::set_budget(&admin, w.a_id, 320_000, "none")
        .await
        .unwrap();
    let ten = json!({"table": "visits", "aggregate": "count", "epsilon": 0.01});
    assert_eq!(query(api, owner, "org-a", ten.clone()).await.0, 200);
    api.expect(
        Method::POST,
        "/v1/orgs/org-a/analytics/query",
        Some(owner),
        Some(ten),
        422,
        "privacy-budget-exhausted",
    )
    .await;
    let b = api
        .ok(Method::GET, "/v1/orgs/org-a/analytics/budget", owner, None)
        .await;
    assert_eq!(b["spent_micro"], 320_000);
    assert_eq!(b["left"], 0.0);
    assert_eq!(b["charges"], 4);
}

#[tokio::test]
async fn a_thousand_concurrent_queries_spend_exactly_the_budget() {
    let w = world().await;
    seed(&w).await;
    let owner = w.a[0].1.clone();
    let body = json!({"table": "visits", "aggregate": "count", "epsilon": 0.01});
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let http = w.api.http.clone();
            let url = format!("{}/v1/orgs/org-a/analytics/query", w.api.base);
            let owner = owner.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(owner)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                (status, v)
            })
        })
        .collect();
    let mut answered = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap();
        match status {
            200 => answered.push(v["charge_id"].as_str().unwrap().to_string()),
            422 => {
                assert_eq!(
                    v["type"], "urn:orgbase:problem:privacy-budget-exhausted",
                    "{v}"
                );
                refused += 1;
            }
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(answered.len(), 100);
    assert_eq!(refused, 900);
    let admin = w.db.admin().await;
    let row = admin
        .query_one(
            "SELECT (SELECT sum(micro)::int8 FROM orgbase.privacy_charges WHERE org_id = $1),
                    (SELECT count(DISTINCT id) FROM orgbase.privacy_charges WHERE org_id = $1),
                    (SELECT spent_micro FROM orgbase.privacy_spend WHERE org_id = $1)",
            &[&w.a_id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        1_000_000,
        "the ledger sums to exactly 1.0"
    );
    assert_eq!(row.get::<_, i64>(1), 100);
    assert_eq!(row.get::<_, i64>(2), 1_000_000);
}

#[tokio::test]
async fn figures_bound_each_person_and_clamp_each_value() {
    let w = world().await;
    let admin = w.db.admin().await;
    let (p1, p2): (Uuid, Uuid) = (w.a[0].0.parse().unwrap(), w.a[1].0.parse().unwrap());
    for (who, amount, n) in [(p1, 1000i32, 5), (p2, -50, 1)] {
        for _ in 0..n {
            admin
                .execute(
                    "INSERT INTO app.visits (org_id, created_by, updated_by, amount, patient_email, visited_on, kind)
                     VALUES ($1, $2, $2, $3::int4, 'x', '2026-01-01', 'checkup')",
                    &[&w.a_id, &who, &amount],
                )
                .await
                .unwrap();
        }
    }
    let catalog = orgbase_db::catalog::Catalog::load(&admin).await.unwrap();
    let table = catalog.get("visits").unwrap();
    let q = orgbase_http::analytics::AnalyticsQuery {
        table: "visits".into(),
        aggregate: "sum".into(),
        column: Some("amount".into()),
        bounds: Some((0.0, 100.0)),
        contributions: Some(2),
        group_by: None,
        keys: None,
        filters: None,
        epsilon: orgbase_http::analytics::Epsilon::Number(0.5),
    };
    let checked = orgbase_http::analytics::check(&q, &table).unwrap();
    let exact = store::figures(&admin, w.a_id, &checked.figures)
        .await
        .unwrap();
    // p1: 2 of 5 rows, each 1000 clamped to 100; p2: -50 clamped to 0.
    assert_eq!(
        exact,
        vec![orgbase_analytics::Exact {
            count: 3,
            sum: 200.0
        }]
    );
    // Another organization's id sees nothing of these rows.
    let b: Uuid = admin
        .query_one(
            "SELECT id FROM orgbase.organizations WHERE slug = 'org-b'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let none = store::figures(&admin, b, &checked.figures).await.unwrap();
    assert_eq!(none, vec![orgbase_analytics::Exact { count: 0, sum: 0.0 }]);
}
