//! Instance operators: the accounts that run this orgbase from the console's operator pages
//! (organizations, accounts, backups, keys). Being one gives no access to any organization's
//! data.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use orgbase_db::Target;
use orgbase_db::auth;
use orgbase_db::fields::Fields;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Make an account an instance operator, creating the account when there is none with this
    /// email. A new account's password is read from stdin with --password-stdin, or generated and
    /// printed once; an existing account keeps its password.
    Create(CreateArgs),
    /// List the instance operators.
    List,
    /// Take the operator role from an account (the account itself stays).
    Remove {
        /// The operator's email.
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The operator's email (the account's sign-in).
    #[arg(long)]
    pub email: String,
    /// The display name of a new account.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Read the new account's password from stdin (8 to 1024 characters; one line) instead of
    /// generating one.
    #[arg(long)]
    pub password_stdin: bool,
}

/// How many there are: `serve` says how to make the first one when there is none.
pub async fn count(target: &Target) -> anyhow::Result<i64> {
    let client = target.admin().await?;
    Ok(client
        .query_one("SELECT count(*) FROM orgbase.instance_admins", &[])
        .await?
        .get(0))
}

pub async fn run(target: &Target, fields: &Fields, cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AdminCommand::Create(args) => create(target, fields, args).await,
        AdminCommand::List => {
            let client = target.admin().await?;
            let rows = client
                .query(
                    "SELECT u.id, u.email, a.granted_at::text, a.granted_by \
                       FROM orgbase.instance_admins a JOIN orgbase.users u ON u.id = a.user_id \
                      ORDER BY a.granted_at",
                    &[],
                )
                .await?;
            if rows.is_empty() {
                println!("no instance operators: make one with `orgbase admin create --email …`");
            }
            for r in rows {
                let id: Uuid = r.get(0);
                let email = fields
                    .open_account(id, "email", r.get(1))
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "(email not readable)".into());
                println!(
                    "{email}  {id}  since {}  by {}",
                    r.get::<_, String>(2),
                    r.get::<_, String>(3)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Remove { email } => {
            let email = normalize(&email)?;
            let mut client = target.admin().await?;
            let tx = client.transaction().await?;
            let removed = tx
                .query_opt(
                    "DELETE FROM orgbase.instance_admins a USING orgbase.users u \
                      WHERE u.id = a.user_id AND u.email_hash = $1 RETURNING u.id",
                    &[&fields.email_hash(&email)?],
                )
                .await?;
            let Some(row) = removed else {
                bail!("{email} is not an instance operator");
            };
            let id: Uuid = row.get(0);
            audit(&tx, id, "operator.revoke").await?;
            tx.commit().await?;
            println!("{email} is no longer an instance operator");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn normalize(email: &str) -> anyhow::Result<String> {
    orgbase_db::account::normalize_email(email)
        .with_context(|| format!("--email: {email:?} is not a valid email address"))
}

async fn create(target: &Target, fields: &Fields, args: CreateArgs) -> anyhow::Result<ExitCode> {
    let email = normalize(&args.email)?;
    let name = args.name.trim().to_string();
    if name.chars().count() > 200 {
        bail!("--name: must be at most 200 characters");
    }
    let email_hash = fields.email_hash(&email)?;
    let mut client = target.admin().await?;
    let existing: Option<Uuid> = client
        .query_opt(
            "SELECT id FROM orgbase.users WHERE email_hash = $1 AND deleted_at IS NULL",
            &[&email_hash],
        )
        .await?
        .map(|r| r.get(0));
    // The password is settled before anything is written: a bad one changes nothing.
    let password = match (existing, args.password_stdin) {
        (Some(_), true) => {
            bail!("--password-stdin: {email} has an account already, whose password stays as it is")
        }
        (Some(_), false) => None,
        (None, true) => Some((read_password()?, false)),
        (None, false) => Some((
            format!("ob-{}", hex::encode(auth::random_bytes::<12>()?)),
            true,
        )),
    };
    let tx = client.transaction().await?;
    let id = match existing {
        Some(id) => id,
        None => {
            let id = Uuid::now_v7();
            let (password, _) = password
                .as_ref()
                .context("a new account needs a password")?;
            let hash = auth::hash_password(password.clone()).await?;
            tx.execute(
                "INSERT INTO orgbase.users (id, email_hash, email, name, password_hash) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id,
                    &email_hash,
                    &fields.seal_account(id, "email", &email)?,
                    &fields.seal_account(id, "name", &name)?,
                    &hash,
                ],
            )
            .await?;
            id
        }
    };
    let added = tx
        .execute(
            "INSERT INTO orgbase.instance_admins (user_id, granted_by) VALUES ($1, 'cli') \
             ON CONFLICT (user_id) DO NOTHING",
            &[&id],
        )
        .await?;
    if added == 1 {
        audit(&tx, id, "operator.grant").await?;
    }
    tx.commit().await?;
    match (&password, added) {
        (_, 0) => println!("{email} is an instance operator already"),
        (Some((p, true)), _) => {
            println!("created {email} ({id}), an instance operator");
            println!("password (shown once; change it after signing in): {p}");
        }
        (Some((_, false)), _) => println!("created {email} ({id}), an instance operator"),
        (None, _) => println!("{email} ({id}) is now an instance operator"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The first line of stdin, without its line ending. Meant to be piped
/// (`printf %s "$PW" | orgbase admin create … --password-stdin`); from a terminal it is echoed.
fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        eprintln!("password (8 to 1024 characters, then Enter; it is echoed):");
    }
    let mut text = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut text)
        .context("reading the password from stdin")?;
    let password = text.lines().next().unwrap_or("").to_string();
    if !orgbase_db::account::PASSWORD_CHARS.contains(&password.chars().count()) {
        bail!("--password-stdin: the password must be 8 to 1024 characters");
    }
    Ok(password)
}

/// An account-chain entry: who became (or stopped being) an operator, by the command line.
async fn audit(
    client: &impl tokio_postgres::GenericClient,
    user: Uuid,
    action: &str,
) -> anyhow::Result<()> {
    client
        .execute(
            "SELECT orgbase.audit_event($1, $2, jsonb_build_object('by', 'cli'), NULL, NULL)",
            &[&user, &action],
        )
        .await?;
    Ok(())
}
