//! Operator tools: `check`, `purge`, `demo`, `bench seed`. They work as administrator (not
//! subject to row-level security), like migrations.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use orgbase_core::Config;
use orgbase_db::auth::{self, SESSION_PREFIX};
use orgbase_db::catalog::Catalog;
use orgbase_db::fields::Fields;
use orgbase_db::{Target, retention};
use uuid::Uuid;

use crate::{PurgeArgs, SeedArgs};

pub async fn check(target: Target) -> anyhow::Result<ExitCode> {
    let client = target.admin().await?;
    let findings = orgbase_db::check(&client).await?;
    let db = orgbase_db::database::describe(target.admin_config());
    if findings.is_empty() {
        println!("{db}: no findings");
        return Ok(ExitCode::SUCCESS);
    }
    for f in &findings {
        println!("{f}");
    }
    eprintln!("{db}: {} finding(s)", findings.len());
    Ok(ExitCode::FAILURE)
}

/// `orgbase purge`: the soft-deleted rows of every organization older than one grace period,
/// through the same code as the retention run (legal holds apply here too).
pub async fn purge(target: &Target, args: &PurgeArgs) -> anyhow::Result<ExitCode> {
    let mut client = target.admin().await?;
    let days = i32::try_from(args.older_than_days)
        .map_err(|_| anyhow::anyhow!("--older-than-days is too large"))?;
    let tables =
        retention::purge_soft_deleted(&mut client, None, Some(days), args.dry_run, |_| {}).await?;
    let (mut total, mut held) = (0u64, 0u64);
    for t in &tables {
        let n: u64 = t.per_org.iter().map(|(_, d, _)| d).sum();
        let h: u64 = t.per_org.iter().map(|(_, _, h)| h).sum();
        total += n;
        held += h;
        if n > 0 {
            println!(
                "{}: {n} row(s) {}",
                t.table,
                if args.dry_run {
                    "would be removed"
                } else {
                    "removed"
                }
            );
        }
        if h > 0 {
            println!("{}: {h} row(s) kept under legal hold", t.table);
        }
        if let Some(msg) = &t.kept {
            println!(
                "{}: kept — {msg} (rows still referenced by live rows)",
                t.table
            );
        }
    }
    println!(
        "{total} row(s) {} (deleted more than {days} days ago){}",
        if args.dry_run { "to remove" } else { "removed" },
        if held > 0 {
            format!("; {held} kept under legal hold")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A user with a password hash and a session; returns (user id, session token). The email and
/// name are stored as signup stores them: encrypted under the account key (unless
/// keys.field_encryption is off), found by the email's blind index.
async fn upsert_user(
    client: &impl tokio_postgres::GenericClient,
    fields: &Fields,
    email: &str,
    name: &str,
    password_hash: &str,
) -> anyhow::Result<(Uuid, String)> {
    let new_id = Uuid::now_v7();
    let email_hash = fields.email_hash(email)?;
    let sealed_email = fields.seal_account(new_id, "email", email)?;
    let sealed_name = fields.seal_account(new_id, "name", name)?;
    let id: Uuid = client
        .query_one(
            "INSERT INTO orgbase.users (id, email_hash, email, name, password_hash) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (email_hash) DO UPDATE SET password_hash = EXCLUDED.password_hash, \
             status = 'active', deleted_at = NULL RETURNING id",
            &[
                &new_id,
                &email_hash,
                &sealed_email,
                &sealed_name,
                &password_hash,
            ],
        )
        .await?
        .get(0);
    let (token, hash) = auth::new_token(SESSION_PREFIX)?;
    let (_, refresh) = auth::new_token(auth::REFRESH_PREFIX)?;
    client
        .execute(
            "INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, expires_at) \
             VALUES ($1, $2, $3, $4, now() + interval '7 days')",
            &[&Uuid::now_v7(), &id, &&hash[..], &&refresh[..]],
        )
        .await?;
    Ok((id, token))
}

/// The demo's organizations: (slug, name).
const DEMO_ORGS: [(&str, &str); 2] = [("demo-acme", "Acme Corp"), ("demo-globex", "Globex Inc")];

pub async fn demo(target: &Target, config: &Config, fields: &Fields) -> anyhow::Result<ExitCode> {
    let mut client = target.admin().await?;
    let catalog = Catalog::load(&client).await?;
    let notes_table = notes(&catalog)?;
    let password = format!("demo-{}", &hex::encode(auth::random_bytes::<6>()?));
    let hash = auth::hash_password(password.clone()).await?;
    let tx = client.transaction().await?;
    // The demo never changes data it did not make: its organizations have their own slugs, and
    // when they exist already it stops before writing anything.
    let taken: Vec<String> = tx
        .query(
            "SELECT slug FROM orgbase.organizations WHERE slug = ANY ($1) ORDER BY slug",
            &[&DEMO_ORGS.map(|(slug, _)| slug).to_vec()],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !taken.is_empty() {
        anyhow::bail!(
            "the demo organizations exist already ({}): the demo never changes existing data. \
             Their credentials were printed when they were made; for a fresh demo use another \
             --data-dir",
            taken.join(", ")
        );
    }
    let mut tokens = Vec::new();
    for (slug, name) in DEMO_ORGS {
        let mut people = Vec::new();
        for (who, org_role, apps) in [
            ("admin", "admin", vec![]),
            (
                "manager",
                "manager",
                vec![("notes", "editor"), ("projects", "editor")],
            ),
            (
                "employee",
                "member",
                vec![("notes", "editor"), ("projects", "viewer")],
            ),
        ] {
            let email = format!("{who}@{slug}.example");
            let (id, token) =
                upsert_user(&tx, fields, &email, &format!("{name} {who}"), &hash).await?;
            people.push((who, id, org_role, apps, email, token));
        }
        let owner = people[0].1;
        let org: Uuid = tx
            .query_one(
                "INSERT INTO orgbase.organizations (id, name, slug, owner_id, compliance) \
                 VALUES ($1, $2, $3, $4, '{gdpr}') RETURNING id",
                &[&Uuid::now_v7(), &name, &slug, &owner],
            )
            .await?
            .get(0);
        for (i, (_, id, role, apps, _, _)) in people.iter().enumerate() {
            // The first person owns the organization (an organization always keeps an owner).
            let role = if i == 0 { "owner" } else { *role };
            tx.execute(
                "INSERT INTO orgbase.members (org_id, user_id, role) VALUES ($1, $2, $3) \
                 ON CONFLICT (org_id, user_id) DO UPDATE SET role = EXCLUDED.role, deleted_at = NULL",
                &[&org, id, &role],
            )
            .await?;
            for (app, app_role) in apps {
                tx.execute(
                    "INSERT INTO orgbase.app_permissions (org_id, user_id, app, role, granted_by) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, user_id, app) DO UPDATE SET role = EXCLUDED.role",
                    &[&org, id, app, app_role, &owner],
                )
                .await?;
            }
        }
        let have: i64 = tx
            .query_one(
                "SELECT count(*) FROM orgbase.notes WHERE org_id = $1",
                &[&org],
            )
            .await?
            .get(0);
        if have == 0 {
            let by = people[2].1;
            for (title, body) in [
                (
                    "Welcome to orgbase",
                    "Every row here belongs to this organization only.",
                ),
                ("Quarterly plan", "Ship the tenant API; measure it."),
                (
                    "Customer call notes",
                    "They asked about GDPR exports and data residency.",
                ),
            ] {
                let id = Uuid::now_v7();
                let mut note = serde_json::Map::new();
                note.insert("title".into(), format!("{title} ({slug})").into());
                note.insert("body".into(), body.into());
                fields.seal(notes_table, org, id, Some(by), &mut note)?;
                let text = |k: &str| {
                    note.get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                tx.execute(
                    "INSERT INTO orgbase.notes (org_id, id, title, body, tags, created_by, updated_by) \
                     VALUES ($1, $2, $3, $4, '{demo}', $5, $5)",
                    &[&org, &id, &text("title"), &text("body"), &by],
                )
                .await?;
            }
            let project = Uuid::now_v7();
            let manager = people[1].1;
            tx.execute(
                "INSERT INTO orgbase.projects (org_id, id, name, description, created_by, updated_by) \
                 VALUES ($1, $2, 'Launch', 'Everything for the launch', $3, $3)",
                &[&org, &project, &manager],
            )
            .await?;
            for (title, status, priority) in [
                ("Write the docs", "in_progress", "high"),
                ("Load test", "todo", "urgent"),
                ("Pick a name", "done", "low"),
            ] {
                tx.execute(
                    "INSERT INTO orgbase.tasks (org_id, id, project_id, title, status, priority, \
                     assignee_id, due_date, created_by, updated_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, current_date + 14, $8, $8)",
                    &[
                        &org,
                        &Uuid::now_v7(),
                        &project,
                        &title,
                        &status,
                        &priority,
                        &by,
                        &manager,
                    ],
                )
                .await?;
            }
        }
        tokens.push((slug, people));
    }
    tx.commit().await?;
    let base = format!("http://{}", config.server.listen);
    let mut out = std::io::stdout().lock();
    writeln!(out, "Demo data ready. Every account's password: {password}")?;
    for (slug, people) in &tokens {
        writeln!(out, "  organization {slug}:")?;
        for (who, _, role, _, email, _) in people {
            let role = if *who == "admin" { "owner" } else { role };
            writeln!(out, "    {email:<24} org role {role}")?;
        }
    }
    let acme_employee = &tokens[0].1[2].5;
    let acme_admin = &tokens[0].1[0].5;
    writeln!(out, "\nTry (with `orgbase serve` running on {base}):")?;
    writeln!(
        out,
        "  curl -s -X POST {base}/v1/auth/login -H 'content-type: application/json' \
         -d '{{\"email\":\"employee@demo-acme.example\",\"password\":\"{password}\"}}'"
    )?;
    writeln!(
        out,
        "  curl -s -H 'Authorization: Bearer {acme_employee}' '{base}/v1/orgs/demo-acme/notes?limit=5'"
    )?;
    writeln!(
        out,
        "  curl -s -H 'Authorization: Bearer {acme_admin}' {base}/v1/orgs/demo-globex/notes   # another org: 404"
    )?;
    Ok(ExitCode::SUCCESS)
}

fn notes(catalog: &Catalog) -> anyhow::Result<&orgbase_db::catalog::Table> {
    catalog
        .tables
        .get("notes")
        .map(|t| t.as_ref())
        .context("the notes table is not registered: run `orgbase migrate up`")
}

pub async fn bench_seed(
    target: &Target,
    args: &SeedArgs,
    fields: &Fields,
) -> anyhow::Result<ExitCode> {
    if args.orgs == 0 || args.users == 0 {
        anyhow::bail!("--orgs and --users must be at least 1");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut client = target.admin().await?;
    let catalog = Catalog::load(&client).await?;
    let notes_table = notes(&catalog)?;
    let hash = auth::hash_password("bench-password".into()).await?;
    let tx = client.transaction().await?;
    let progress = indicatif::ProgressBar::new(args.orgs as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("seeding {bar:30} {pos}/{len} orgs {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut users_tsv = String::new();
    let mut notes_tsv = String::new();
    let run = &hex::encode(auth::random_bytes::<3>()?);
    for o in 1..=args.orgs {
        let org = Uuid::now_v7();
        let mut user_ids = Vec::new();
        for u in 1..=args.users {
            let email = format!("user{u}@org{o}-{run}.bench.example");
            let (id, token) =
                upsert_user(&tx, fields, &email, &format!("Bench user {u}"), &hash).await?;
            user_ids.push(id);
            users_tsv.push_str(&format!("{token}\t{org}\t{id}\n"));
        }
        tx.execute(
            "INSERT INTO orgbase.organizations (id, name, slug, owner_id) VALUES ($1, $2, $3, $4)",
            &[
                &org,
                &format!("Bench org {o}"),
                &format!("bench-{run}-{o}"),
                &user_ids[0],
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO orgbase.members (org_id, user_id, role) \
             SELECT $1, u, CASE WHEN n = 1 THEN 'owner' ELSE 'member' END \
             FROM unnest($2::uuid[]) WITH ORDINALITY AS x(u, n)",
            &[&org, &user_ids],
        )
        .await?;
        tx.execute(
            "INSERT INTO orgbase.app_permissions (org_id, user_id, app, role) \
             SELECT $1, u, 'notes', 'editor' FROM unnest($2::uuid[]) u",
            &[&org, &user_ids],
        )
        .await?;
        // Notes are made here, not in SQL, so that their confidential columns are encrypted
        // as the API would store them (unless keys.field_encryption is off).
        let mut ids = Vec::with_capacity(args.notes as usize);
        let mut titles = Vec::with_capacity(args.notes as usize);
        let mut bodies = Vec::with_capacity(args.notes as usize);
        let mut authors = Vec::with_capacity(args.notes as usize);
        let mut ages = Vec::with_capacity(args.notes as usize);
        for n in 1..=args.notes {
            let id = Uuid::new_v4();
            let author = user_ids[n as usize % user_ids.len()];
            let digest = format!(
                "{:032x}",
                u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            );
            let mut note = serde_json::Map::new();
            note.insert("title".into(), format!("Note {n} {}", &digest[..30]).into());
            note.insert(
                "body".into(),
                format!("{digest} ")
                    .repeat(8)
                    .chars()
                    .take(500)
                    .collect::<String>()
                    .into(),
            );
            fields.seal(notes_table, org, id, Some(author), &mut note)?;
            let text = |k: &str| {
                note.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            titles.push(text("title"));
            bodies.push(text("body"));
            ids.push(id);
            authors.push(author);
            ages.push(n as i32);
        }
        tx.execute(
            "INSERT INTO orgbase.notes (org_id, id, title, body, created_by, updated_by, created_at, updated_at) \
             SELECT $1, id, t, b, u, u, now() - n * interval '1 second', now() - n * interval '1 second' \
               FROM unnest($2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::int[]) AS x(id, t, b, u, n)",
            &[&org, &ids, &titles, &bodies, &authors, &ages],
        )
        .await?;
        for id in ids {
            notes_tsv.push_str(&format!("{org}\t{id}\n"));
        }
        progress.inc(1);
    }
    tx.commit().await?;
    progress.finish_and_clear();
    client.batch_execute("ANALYZE").await?;
    std::fs::write(args.out.join("users.tsv"), users_tsv)?;
    std::fs::write(args.out.join("notes.tsv"), notes_tsv)?;
    println!(
        "seeded {} organizations × {} users × {} notes; fixtures in {}",
        args.orgs,
        args.users,
        args.notes,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
