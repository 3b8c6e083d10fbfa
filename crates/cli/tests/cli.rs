//! The `orgbase` binary end to end: configuration errors, missing PostgreSQL, and the embedded
//! cluster's life cycle (start, Ctrl-C, restart, kill -9 recovery, one orgbase per data dir).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orgbase_testkit::temp_dir;

fn orgbase() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orgbase"));
    // A clean environment: no ORGBASE_* from the developer's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("ORGBASE_") {
            c.env_remove(k);
        }
    }
    c.env("ORGBASE_LOG", "warn").stdin(Stdio::null());
    c
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_config_is_valid() {
    let dir = temp_dir("orgbase-cli-");
    let (ok, example, _) = run(orgbase().args(["config", "example"]));
    assert!(ok);
    let file = dir.join("orgbase.toml");
    std::fs::write(&file, &example).unwrap();
    let (ok, _, err) = run(orgbase().args(["config", "check", "--config"]).arg(&file));
    assert!(ok, "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_unknown_config_key_is_named_with_file_and_line() {
    let dir = temp_dir("orgbase-cli-");
    let file = dir.join("orgbase.toml");
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:1\"\nbody_limt = 5\n").unwrap();
    let (ok, _, err) = run(orgbase().args(["config", "check", "--config"]).arg(&file));
    assert!(!ok);
    assert!(err.contains("body_limt"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    let (ok, _, err) = run(orgbase()
        .args(["config", "check"])
        .current_dir(&dir)
        .env("ORGBASE_DATABASE__POOL_SIZE", "3"));
    assert!(!ok);
    assert!(err.contains("body_limt"), "reads ./orgbase.toml: {err}");
    std::fs::remove_file(&file).unwrap();
    let (ok, _, err) = run(orgbase()
        .args(["config", "check"])
        .current_dir(&dir)
        .env("ORGBASE_DATABASE__POOL_SIZE", "3"));
    assert!(!ok);
    assert!(err.contains("pool_size"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_postgresql_binaries_say_what_to_install() {
    let dir = temp_dir("orgbase-cli-");
    let empty = dir.join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, err) = run(orgbase()
        .args(["migrate", "status", "--data-dir"])
        .arg(dir.join("data"))
        .env("ORGBASE_EMBEDDED__BIN_DIR", &empty));
    assert!(!ok);
    assert!(err.contains("PostgreSQL server binaries"), "{err}");
    assert!(err.contains("apt-get install postgresql"), "{err}");
    assert!(!dir.join("data").join("pg").exists(), "nothing was created");
    std::fs::remove_dir_all(dir).unwrap();
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    /// A failing test must not leave a server behind (it would hold the test's output pipe).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
    }
}

fn start_serve(data: &Path) -> Server {
    let mut child = orgbase()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut first).unwrap();
    // Keep draining stdout so the server never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_string();
    Server { child, base }
}

fn ready(base: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::blocking_get(&format!("{base}/readyz"))
            && r == 200
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

mod reqwest {
    //! A blocking GET via a tiny runtime (reqwest's blocking feature is not worth a dependency).
    pub fn blocking_get_with(url: &str, token: &str) -> Result<(u16, String), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let r = ::reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            Ok((status, r.text().await.map_err(|e| e.to_string())?))
        })
    }

    /// Any request: method, URL, headers, an optional JSON body; (status, body).
    pub fn blocking(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        json: Option<String>,
    ) -> Result<(u16, String), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let method =
                ::reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
            let mut req = ::reqwest::Client::new().request(method, url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(body) = json {
                req = req.header("content-type", "application/json").body(body);
            }
            let r = req.send().await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            Ok((status, r.text().await.map_err(|e| e.to_string())?))
        })
    }

    pub fn blocking_get(url: &str) -> Result<u16, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            ::reqwest::get(url)
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
    }
}

fn postmaster_running(data: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(data.join("pg/postmaster.pid")) else {
        return false;
    };
    let Some(pid) = pid
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // A zombie (exited, not yet reaped) does not count as running.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_lifecycle_ctrl_c_restart_and_kill_9_recovery() {
    use nix::sys::signal::Signal;
    let dir = temp_dir("orgbase-serve-");
    let data = dir.join("data");

    // First run: initdb, migrate, serve.
    let mut s = start_serve(&data);
    assert!(ready(&s.base), "not ready within 10 s");
    assert!(postmaster_running(&data));

    // A second orgbase on the same data directory is refused.
    let (ok, _, err) = run(orgbase()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data));
    assert!(!ok);
    assert!(err.contains("in use by another orgbase"), "{err}");

    // ...but CLI commands use the running cluster.
    let (ok, out, err) = run(orgbase()
        .args(["db", "psql", "--data-dir"])
        .arg(&data)
        .args([
            "--",
            "-tAc",
            "select count(*) from orgbase.schema_migrations",
        ]));
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        orgbase_db::Migrator::embedded("").latest().to_string()
    );

    // Ctrl-C stops orgbase and PostgreSQL.
    signal(&s.child, Signal::SIGINT);
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !postmaster_running(&data),
        "PostgreSQL left running after Ctrl-C"
    );

    // A second run reuses the data.
    let mut s = start_serve(&data);
    assert!(ready(&s.base));

    // kill -9: the watchdog stops PostgreSQL; the next serve recovers either way.
    signal(&s.child, Signal::SIGKILL);
    let _ = s.child.wait();
    let mut s = start_serve(&data);
    assert!(ready(&s.base), "no recovery after kill -9");
    signal(&s.child, Signal::SIGTERM);
    assert!(s.child.wait().unwrap().success());
    wait_until("PostgreSQL to stop", || !postmaster_running(&data));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn migrate_commands() {
    let dir = temp_dir("orgbase-migrate-");
    let data = dir.join("data");
    let with_data = |args: &[&str]| {
        let mut c = orgbase();
        c.arg("--data-dir").arg(&data).args(args);
        c
    };
    let (ok, out, err) = run(&mut with_data(&["migrate", "status"]));
    assert!(ok, "{err}");
    assert!(out.contains("pending"), "{out}");
    let (ok, out, err) = run(&mut with_data(&["migrate", "up"]));
    assert!(ok, "{err}");
    assert!(out.contains("applied 0001"), "{out}");
    let (ok, out, _) = run(&mut with_data(&["migrate", "verify"]));
    assert!(ok, "{out}");
    let (ok, _, err) = run(&mut with_data(&["migrate", "down"]));
    assert!(!ok);
    assert!(err.contains("--yes"), "{err}");
    let (ok, out, err) = run(&mut with_data(&["migrate", "down", "--to", "0", "--yes"]));
    assert!(ok, "{err}");
    assert!(out.contains("reverted 0001"), "{out}");
    // Drift: change the schema behind orgbase's back.
    run(&mut with_data(&["migrate", "up"]));
    let (ok, _, err) = run(&mut with_data(&[
        "db",
        "psql",
        "--",
        "-c",
        "create table orgbase.drifted (id int)",
    ]));
    assert!(ok, "{err}");
    let (ok, out, _) = run(&mut with_data(&["migrate", "verify"]));
    assert!(!ok, "{out}");
    assert!(
        out.contains("schema drift") && out.contains("drifted"),
        "{out}"
    );
    assert!(
        !postmaster_running(&data),
        "a CLI command left PostgreSQL running"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_bench_seed_demo_and_purge() {
    use nix::sys::signal::Signal;
    let dir = temp_dir("orgbase-tools-");
    let data = dir.join("data");
    let with_data = |args: &[&str]| {
        let mut c = orgbase();
        c.arg("--data-dir").arg(&data).args(args);
        c
    };
    let (ok, _, err) = run(&mut with_data(&["migrate", "up"]));
    assert!(ok, "{err}");
    let (ok, out, err) = run(&mut with_data(&["check"]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("no findings"), "{out}");
    // A product table with org_id but no row-level security is reported, one line per rule.
    let (ok, _, err) = run(&mut with_data(&[
        "db",
        "psql",
        "--",
        "-c",
        "create schema app; create table app.invoices (org_id uuid, id uuid primary key)",
    ]));
    assert!(ok, "{err}");
    let (ok, out, _) = run(&mut with_data(&["check"]));
    assert!(!ok, "{out}");
    for rule in [
        "rls-disabled",
        "org-id-nullable",
        "org-id-not-in-primary-key",
        "unregistered",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("app.invoices: ") && l.contains(rule)),
            "{rule}: {out}"
        );
    }
    run(&mut with_data(&[
        "db",
        "psql",
        "--",
        "-c",
        "drop schema app cascade",
    ]));

    // bench seed writes fixtures whose tokens work against serve.
    let mut s = start_serve(&data);
    assert!(ready(&s.base));
    let fx = dir.join("fx");
    let (ok, out, err) = run(with_data(&[
        "bench", "seed", "--orgs", "2", "--users", "2", "--notes", "5", "--out",
    ])
    .arg(&fx));
    assert!(ok, "{out}{err}");
    let users = std::fs::read_to_string(fx.join("users.tsv")).unwrap();
    let notes = std::fs::read_to_string(fx.join("notes.tsv")).unwrap();
    assert_eq!(users.lines().count(), 4);
    assert_eq!(notes.lines().count(), 10);
    let first: Vec<&str> = users.lines().next().unwrap().split('\t').collect();
    let (token, org) = (first[0], first[1]);
    let note = notes
        .lines()
        .find(|l| l.starts_with(org))
        .unwrap()
        .split('\t')
        .nth(1)
        .unwrap();
    let (status, body) =
        reqwest::blocking_get_with(&format!("{}/v1/orgs/{org}/notes?limit=20", s.base), token)
            .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("\"title\"").count(), 5, "{body}");
    let (status, _) =
        reqwest::blocking_get_with(&format!("{}/v1/orgs/{org}/notes/{note}", s.base), token)
            .unwrap();
    assert_eq!(status, 200);
    let other_org = users.lines().last().unwrap().split('\t').nth(1).unwrap();
    assert_ne!(other_org, org);
    let (status, _) =
        reqwest::blocking_get_with(&format!("{}/v1/orgs/{other_org}/notes", s.base), token)
            .unwrap();
    assert_eq!(status, 404);

    // demo prints credentials and working tokens; a second run changes nothing and says why.
    let (ok, out, err) = run(&mut with_data(&["demo"]));
    assert!(ok, "{err}");
    assert!(out.contains("password: demo-"), "{out}");
    let token = out
        .split("Bearer ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap()
        .to_string();
    let notes = || {
        let (status, body) =
            reqwest::blocking_get_with(&format!("{}/v1/orgs/demo-acme/notes", s.base), &token)
                .unwrap();
        assert_eq!(status, 200, "{body}");
        body.matches("\"title\"").count()
    };
    assert_eq!(notes(), 3);
    let (ok, _, err) = run(&mut with_data(&["demo"]));
    assert!(
        !ok && err.contains("exist already (demo-acme, demo-globex)"),
        "{err}"
    );
    assert_eq!(
        notes(),
        3,
        "the second run changed nothing (the token still works)"
    );
    let (ok, out, err) = run(&mut with_data(&["purge", "--dry-run"]));
    assert!(ok, "{err}");
    assert!(out.contains("0 row(s) to remove"), "{out}");
    // Retention, while the server runs (attached to its cluster); an unknown --org changes nothing.
    let (ok, out, err) = run(&mut with_data(&["retention", "run", "--dry-run"]));
    assert!(ok, "{err}");
    assert!(out.contains("dry run: nothing changed"), "{out}");
    assert!(out.contains("chain anchoring not built"), "{out}");
    let (ok, out, err) = run(&mut with_data(&["retention", "run", "--org", "demo-acme"]));
    assert!(ok, "{err}");
    assert!(out.contains("deleted;"), "{out}");
    let (ok, _, err) = run(&mut with_data(&["retention", "run", "--org", "nope"]));
    assert!(!ok && err.contains("no organization"), "{err}");
    signal(&s.child, Signal::SIGINT);
    assert!(s.child.wait().unwrap().success());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn audit_verify_passes_untouched_and_names_tampering() {
    let dir = temp_dir("orgbase-audit-");
    let data = dir.join("data");
    let with_data = |args: &[&str]| {
        let mut c = orgbase();
        c.arg("--data-dir").arg(&data).args(args);
        c
    };
    let (ok, out, err) = run(&mut with_data(&["migrate", "up"]));
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&mut with_data(&["demo"]));
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&mut with_data(&["audit", "checkpoint"]));
    assert!(ok && out.contains("wrote"), "{out}{err}");
    let (ok, out, err) = run(&mut with_data(&["audit", "verify"]));
    assert!(ok && out.contains("all chains verify"), "{out}{err}");
    let (ok, key, _) = run(&mut with_data(&["audit", "public-key"]));
    assert!(ok && key.trim().len() == 64, "{key}");
    let (ok, out, err) = run(&mut with_data(&[
        "audit",
        "verify",
        "--public-key",
        &"ab".repeat(32),
    ]));
    assert!(!ok && err.contains("not by the trusted key"), "{out}{err}");
    // Remove one entry of the demo organization, as an attacker with the owner's rights.
    let (ok, out, err) = run(&mut with_data(&[
        "db",
        "psql",
        "--",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "ALTER TABLE orgbase.audit_log DISABLE TRIGGER USER; \
         DELETE FROM orgbase.audit_log WHERE seq = 2 AND org_id = \
         (SELECT id FROM orgbase.organizations ORDER BY created_at LIMIT 1); \
         ALTER TABLE orgbase.audit_log ENABLE TRIGGER USER;",
    ]));
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&mut with_data(&["audit", "verify"]));
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains("entry seq 2 is missing: deleted") && out.contains("1 broken"),
        "{out}{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keys_and_erase_commands() {
    let dir = temp_dir("orgbase-keys-");
    let data = dir.join("data");
    let with_data = |args: &[&str]| {
        let mut c = orgbase();
        c.arg("--data-dir").arg(&data).args(args);
        c
    };
    let (ok, _, err) = run(&mut with_data(&["migrate", "up"]));
    assert!(ok, "{err}");
    let (ok, out, err) = run(&mut with_data(&["demo"]));
    assert!(ok, "{out}{err}");
    // the demo's notes are stored encrypted
    let (ok, out, err) = run(&mut with_data(&[
        "db",
        "psql",
        "--",
        "-Atc",
        "select count(*) filter (where body like 'enc:v1:%'), count(*) from orgbase.notes",
    ]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "6|6", "{out}");
    // and so are its accounts' emails and names, found by their blind index
    let (ok, out, err) = run(&mut with_data(&[
        "db",
        "psql",
        "--",
        "-Atc",
        "select count(*) filter (where email like 'enc:v1:%' and name like 'enc:v1:%' \
         and length(email_hash) = 32), count(*) from orgbase.users",
    ]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "6|6", "{out}");
    let (ok, out, err) = run(&mut with_data(&["keys", "list", "--json"]));
    assert!(ok, "{err}");
    let keys: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k["current"] == 1),
        "{out}"
    );
    let (ok, out, err) = run(&mut with_data(&["keys", "rotate"]));
    assert!(ok, "{err}");
    assert!(out.contains("no key is due"), "{out}");
    let (ok, out, err) = run(&mut with_data(&["keys", "rotate", "--all"]));
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("rotated ")).count(),
        keys.len(),
        "{out}"
    );
    let (ok, out, err) = run(&mut with_data(&["keys", "reencrypt"]));
    assert!(ok, "{err}");
    // 6 notes (title and body) and 6 accounts (email and name)
    assert!(out.contains("re-encrypted 24 values"), "{out}");
    let (ok, out, err) = run(&mut with_data(&["keys", "rotate", "subject:not-a-uuid"]));
    assert!(!ok && err.contains("KEY"), "{out}{err}");
    let (ok, _, err) = run(&mut with_data(&["keys", "reencrypt", "--batch", "0"]));
    assert!(!ok && err.contains("--batch"), "{err}");
    // rotations are audited
    let (ok, out, err) = run(&mut with_data(&[
        "db",
        "psql",
        "--",
        "-Atc",
        "select count(*) from orgbase.audit_log where action = 'keys.rotate'",
    ]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), keys.len().to_string());
    let (ok, out, err) = run(&mut with_data(&["erase", "run"]));
    assert!(ok, "{err}");
    assert!(out.contains("no GDPR request is due"), "{out}");
    // a certificate that does not verify: named, exit 1
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"certificate": {"format": "x"}, "signature": "AA"}"#,
    )
    .unwrap();
    let (ok, _, err) = run(&mut with_data(&[
        "erase",
        "verify-certificate",
        bad.to_str().unwrap(),
    ]));
    assert!(!ok && err.contains("NOT valid"), "{err}");
    // The key that verifies certificates of deletion has a command of its own, and is not the
    // audit checkpoints' key.
    let (ok, cert_key, err) = run(&mut with_data(&["erase", "public-key"]));
    assert!(ok, "{err}");
    let cert_key = cert_key.trim().to_string();
    assert_eq!(
        orgbase_keys::parse_public_key(&cert_key)
            .map(|k| k.len())
            .ok(),
        Some(32),
        "{cert_key}"
    );
    let (ok, audit_key, err) = run(&mut with_data(&["audit", "public-key"]));
    assert!(ok, "{err}");
    assert_ne!(audit_key.trim(), cert_key);
    // An unknown request id is an error that names it.
    let unknown = "01a24d00-0000-7000-8000-000000000000";
    let (ok, _, err) = run(&mut with_data(&[
        "erase",
        "run",
        "--now",
        "--request",
        unknown,
    ]));
    assert!(!ok && err.contains(unknown), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `orgbase db psql -- -tAc SQL` on a data directory (a running serve's cluster): the lines.
fn psql(data: &Path, sql: &str) -> Vec<String> {
    let (ok, out, err) = run(orgbase()
        .args(["db", "psql", "--data-dir"])
        .arg(data)
        .args(["--", "-tAc", sql]));
    assert!(ok, "{sql}: {err}");
    out.lines().map(str::to_string).collect()
}

/// What a write load saw: the notes acknowledged with 201, and every answer that was neither
/// 201 nor problem+json.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    bad: Vec<String>,
    /// When the last answer other than 201 came, and the first 201 after the fault.
    last_failure: Option<Instant>,
    first_after_fault: Option<Instant>,
}

/// Writers that POST notes until `stop`, against whatever `base` says now.
fn write_load(
    rt: &tokio::runtime::Runtime,
    base: std::sync::Arc<std::sync::Mutex<String>>,
    token: String,
    fault_at: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    (0..4)
        .map(|_| {
            let (base, token, fault_at, stop, seen) = (
                base.clone(),
                token.clone(),
                fault_at.clone(),
                stop.clone(),
                seen.clone(),
            );
            rt.spawn(async move {
                let http = ::reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let url = format!("{}/v1/orgs/drill/notes", base.lock().unwrap());
                    let sent = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"title": "drill"}))
                        .send()
                        .await;
                    // What came back, read in full before the shared record is touched.
                    let answer = match sent {
                        Ok(r) if r.status() == 201 => {
                            let v: serde_json::Value = r.json().await.unwrap();
                            Ok(v["id"].as_str().unwrap().to_string())
                        }
                        Ok(r) => {
                            let status = r.status();
                            let ct = r
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let bad = ct != "application/problem+json"
                                || (status.is_server_error() && status != 503);
                            Err(bad.then(|| format!("{status} {ct}")))
                        }
                        // No answer: the server itself was gone (the serve drill).
                        Err(_) => Err(None),
                    };
                    let now = Instant::now();
                    let fault = *fault_at.lock().unwrap();
                    let failed = {
                        let mut s = seen.lock().unwrap();
                        match answer {
                            Ok(id) => {
                                s.acked.push(id);
                                if s.first_after_fault.is_none()
                                    && fault.is_some_and(|f| s.last_failure.is_some_and(|l| l >= f))
                                {
                                    s.first_after_fault = Some(now);
                                }
                                false
                            }
                            Err(bad) => {
                                s.last_failure = Some(now);
                                s.bad.extend(bad);
                                true
                            }
                        }
                    };
                    if failed {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect()
}

/// The crash drills, each under a write load of four clients: kill -9 of the embedded
/// postmaster (serve restarts it), of one backend (PostgreSQL recovers by itself), and of serve
/// (the watchdog stops PostgreSQL; a new serve recovers). After each, writes resume within 10 s
/// with nobody's help; in the end every acknowledged write is stored with exactly one audit
/// insert entry, the audit chains verify, and every answer was 201 or problem+json.
#[test]
fn crash_drills_lose_no_acknowledged_write() {
    use nix::sys::signal::Signal;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = temp_dir("orgbase-crash-");
    let data = dir.join("data");
    let mut s = start_serve(&data);
    assert!(ready(&s.base));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = Arc::new(Mutex::new(s.base.clone()));
    let token = rt.block_on(async {
        let api = orgbase_testkit::Api::new(s.base.clone());
        let (_, token) = api.user("drill@example.com").await;
        api.ok(
            ::reqwest::Method::POST,
            "/v1/orgs",
            &token,
            Some(serde_json::json!({"name": "Drill", "slug": "drill"})),
        )
        .await;
        token
    });
    let seen = Arc::new(Mutex::new(Seen::default()));
    for drill in ["postmaster", "backend", "serve"] {
        let stop = Arc::new(AtomicBool::new(false));
        let fault_at = Arc::new(Mutex::new(None));
        {
            let mut s = seen.lock().unwrap();
            s.first_after_fault = None;
            s.last_failure = None;
        }
        let writers = write_load(
            &rt,
            base.clone(),
            token.clone(),
            fault_at.clone(),
            stop.clone(),
            seen.clone(),
        );
        std::thread::sleep(Duration::from_millis(1500));
        let acked_before = seen.lock().unwrap().acked.len();
        assert!(acked_before > 0, "{drill}: no writes before the fault");
        *fault_at.lock().unwrap() = Some(Instant::now());
        match drill {
            "postmaster" => {
                let pid: i32 = std::fs::read_to_string(data.join("pg/postmaster.pid"))
                    .unwrap()
                    .lines()
                    .next()
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
            }
            "backend" => {
                let pid: i32 = psql(
                    &data,
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' \
                     AND usename = 'orgbase_runtime' LIMIT 1",
                )[0]
                .parse()
                .unwrap();
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
            }
            _ => {
                signal(&s.child, Signal::SIGKILL);
                let _ = s.child.wait();
                s = start_serve(&data);
                *base.lock().unwrap() = s.base.clone();
            }
        }
        let fault = fault_at.lock().unwrap().unwrap();
        let deadline = fault + Duration::from_secs(20);
        loop {
            let back = seen.lock().unwrap().first_after_fault;
            if let Some(t) = back {
                eprintln!(
                    "crash drill {drill}: writes resumed {:.2} s after the fault",
                    (t - fault).as_secs_f64()
                );
                assert!(
                    t - fault < Duration::from_secs(10),
                    "{drill}: writes resumed only after {:?}",
                    t - fault
                );
                break;
            }
            // A fault that no request happened to notice: writes went on all along.
            if seen.lock().unwrap().last_failure.is_none()
                && Instant::now() > fault + Duration::from_secs(5)
            {
                eprintln!("crash drill {drill}: no request failed");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{drill}: writes did not resume within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for w in writers {
                w.await.unwrap();
            }
        });
        assert!(
            seen.lock().unwrap().acked.len() > acked_before,
            "{drill}: no writes after the fault"
        );
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.bad.is_empty(),
        "answers neither 201 nor problem+json: {:?}",
        seen.bad
    );
    let stored: std::collections::HashSet<String> = psql(&data, "SELECT id FROM orgbase.notes")
        .into_iter()
        .collect();
    let lost: Vec<_> = seen
        .acked
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        seen.acked.len()
    );
    let not_one = psql(
        &data,
        "SELECT count(*) FROM orgbase.notes n WHERE (SELECT count(*) FROM orgbase.audit_log a \
         WHERE a.table_name = 'orgbase.notes' AND a.action = 'insert' AND a.record_id = n.id::text) <> 1",
    );
    assert_eq!(
        not_one,
        ["0"],
        "notes without exactly one audit insert entry"
    );
    let (ok, out, err) = run(orgbase().args(["audit", "verify", "--data-dir"]).arg(&data));
    assert!(ok, "audit verify: {out}{err}");
    signal(&s.child, Signal::SIGTERM);
    assert!(s.child.wait().unwrap().success());
    wait_until("PostgreSQL to stop", || !postmaster_running(&data));
    drop(rt);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A full disk: serve's data directory on a small tmpfs filled up with a ballast file. Writes
/// answer 507 problem+json and change nothing, reads go on, and writes resume by themselves
/// once the ballast is removed; every acknowledged write is stored and the audit chains verify.
/// Mounting needs root (CAP_SYS_ADMIN): without it the test says so and passes.
#[test]
fn a_full_disk_refuses_writes_and_recovers_when_space_is_freed() {
    use nix::sys::signal::Signal;
    let dir = temp_dir("orgbase-diskfull-");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=160m,mode=0777", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the full-disk drill did not run"
        );
        std::fs::remove_dir_all(dir).unwrap();
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let data = mnt.join("data");
    let mut s = start_serve(&data);
    assert!(ready(&s.base));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = orgbase_testkit::Api::new(s.base.clone());
    let token = rt.block_on(async {
        let (_, token) = api.user("full@example.com").await;
        api.ok(
            ::reqwest::Method::POST,
            "/v1/orgs",
            &token,
            Some(serde_json::json!({"name": "Full", "slug": "full"})),
        )
        .await;
        token
    });
    // A fresh WAL segment first (the checkpoint writes into it, so its file exists), so that
    // the writes below fill the data files, not the WAL: a WAL segment that cannot be created
    // stops PostgreSQL itself (docs/operations.md, "A full disk").
    psql(&data, "SELECT pg_switch_wal()");
    psql(&data, "CHECKPOINT");
    let free = nix::sys::statvfs::statvfs(&mnt).unwrap();
    let avail = free.blocks_available() as u64 * free.fragment_size() as u64;
    let ballast = mnt.join("ballast");
    let f = std::fs::File::create(&ballast).unwrap();
    f.set_len(0).unwrap();
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..(avail.saturating_sub(3 << 20) >> 20) {
            w.write_all(&chunk).unwrap();
        }
        w.flush().unwrap();
    }
    let body = "x".repeat(3000);
    let (mut acked, mut full) = (Vec::new(), 0);
    rt.block_on(async {
        for _ in 0..2000 {
            let (status, v) = api
                .call(
                    ::reqwest::Method::POST,
                    "/v1/orgs/full/notes",
                    Some(&token),
                    Some(serde_json::json!({"title": "t", "body": body})),
                )
                .await;
            match status.as_u16() {
                201 => acked.push(v["id"].as_str().unwrap().to_string()),
                507 => {
                    assert_eq!(v["type"], "urn:orgbase:problem:insufficient-storage", "{v}");
                    full += 1;
                    if full >= 20 {
                        break;
                    }
                }
                other => {
                    let log = std::fs::read_to_string(data.join("log/postgresql.log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    panic!(
                        "a write on a full disk answered {other}: {v}\n{}",
                        tail.join("\n")
                    )
                }
            }
        }
        assert!(full >= 20, "the disk never filled ({} writes)", acked.len());
        let page = api
            .ok(
                ::reqwest::Method::GET,
                "/v1/orgs/full/notes?limit=5",
                &token,
                None,
            )
            .await;
        assert_eq!(page["items"].as_array().unwrap().len(), 5, "reads go on");
    });
    std::fs::remove_file(&ballast).unwrap();
    rt.block_on(async {
        let v = api
            .ok(
                ::reqwest::Method::POST,
                "/v1/orgs/full/notes",
                &token,
                Some(serde_json::json!({"title": "after"})),
            )
            .await;
        acked.push(v["id"].as_str().unwrap().to_string());
    });
    let stored: std::collections::HashSet<String> = psql(&data, "SELECT id FROM orgbase.notes")
        .into_iter()
        .collect();
    assert!(
        acked.iter().all(|id| stored.contains(id)),
        "an acknowledged write was lost"
    );
    let (ok, out, err) = run(orgbase().args(["audit", "verify", "--data-dir"]).arg(&data));
    assert!(ok, "audit verify: {out}{err}");
    signal(&s.child, Signal::SIGTERM);
    assert!(s.child.wait().unwrap().success());
    wait_until("PostgreSQL to stop", || !postmaster_running(&data));
    drop(_unmount);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A data directory an earlier release left at its last migration. The bookkeeping is what that
/// release recorded (its seventeen migrations, their checksums); the schema is the baseline's,
/// which `crates/db/tests/migrations.rs` proves identical to what those migrations built.
#[test]
fn a_data_directory_of_the_release_before_the_baseline_serves_unchanged() {
    let dir = temp_dir("orgbase-upgrade-");
    let data = dir.join("data");
    let with_data = |args: &[&str]| {
        let mut c = orgbase();
        c.arg("--data-dir").arg(&data).args(args);
        c
    };
    // Commands on data say what to run first on a database that is not migrated.
    let (ok, _, err) = run(&mut with_data(&["demo"]));
    assert!(
        !ok && err.contains("run `orgbase migrate up` first"),
        "{err}"
    );
    let (ok, _, err) = run(&mut with_data(&["migrate", "up"]));
    assert!(ok, "{err}");
    let (ok, out, err) = run(&mut with_data(&["demo"]));
    assert!(ok, "{err}");
    let token = out
        .split("Bearer ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap()
        .to_string();
    let baseline = orgbase_db::migrate::BASELINE.to_string();
    let (ok, _, err) = run(&mut with_data(&[
        "migrate", "down", "--to", &baseline, "--yes",
    ]));
    assert!(ok, "{err}");
    let rows: Vec<String> = orgbase_testkit::legacy_migrator()
        .migrations()
        .iter()
        .map(|m| {
            format!(
                "({}, '{}', '{}', 'an earlier orgbase', 1, {})",
                m.version,
                m.description(),
                m.checksum(),
                if m.version == 17 {
                    "(TABLE snap)"
                } else {
                    "''"
                }
            )
        })
        .collect();
    psql(
        &data,
        &format!(
            "BEGIN;
             CREATE TEMP TABLE snap AS SELECT schema_snapshot FROM orgbase.schema_migrations
              WHERE version = {baseline};
             DELETE FROM orgbase.schema_migrations;
             INSERT INTO orgbase.schema_migrations
                 (version, description, checksum, applied_by, duration_ms, schema_snapshot)
             VALUES {};
             COMMIT;",
            rows.join(", ")
        ),
    );
    let (ok, out, err) = run(&mut with_data(&["migrate", "status"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("earlier orgbase") && out.contains("migrate up"),
        "{out}"
    );
    let (ok, out, _) = run(&mut with_data(&["migrate", "verify"]));
    assert!(!ok && out.contains("earlier orgbase"), "{out}");

    // The new release: recorded at the baseline, the newer migrations applied, the data and
    // the sessions of before still there.
    let mut s = start_serve(&data);
    assert!(ready(&s.base), "not ready after the upgrade");
    let (status, body) =
        reqwest::blocking_get_with(&format!("{}/v1/orgs/demo-acme/notes", s.base), &token).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("\"title\"").count(), 3, "{body}");
    let (ok, out, err) = run(&mut with_data(&["migrate", "verify"]));
    assert!(ok, "{out}{err}");
    let recorded = psql(
        &data,
        "SELECT version || ' ' || applied_by FROM orgbase.schema_migrations ORDER BY version",
    );
    assert_eq!(
        recorded.len(),
        orgbase_db::Migrator::embedded("").migrations().len()
    );
    assert!(recorded[0].contains("recognised"), "{recorded:?}");
    signal(&s.child, nix::sys::signal::Signal::SIGTERM);
    assert!(s.child.wait().unwrap().success());
    wait_until("PostgreSQL to stop", || !postmaster_running(&data));
    std::fs::remove_dir_all(dir).unwrap();
}

/// The metric families `/metrics` serves: name → type (`# TYPE` lines).
fn families(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// The rows of the Markdown table under `### {heading}` in docs/operations.md: the cells of
/// each row whose first cell is code.
fn doc_table(heading: &str) -> Vec<Vec<String>> {
    let doc = include_str!("../../../docs/operations.md");
    let start = doc
        .find(&format!("\n### {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading}"));
    doc[start + 1..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

/// Names like `orgbase_db_pool_wait_seconds` in a rules file or dashboard (recording rules,
/// `orgbase:…`, are not metrics), without the series suffixes of histograms.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("orgbase_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            let name = &text[start..end];
            let name = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

/// Monitoring as an operator meets it: after a request of each kind, every metric the docs list
/// is on `/metrics` with its type and every
/// family there is documented; statement latency is labelled by kind and registered table; the
/// alerting rules and the dashboard use only documented metrics, the documented alerts are the
/// rules' alerts, and promtool accepts the rules. The SLO report answers from the access log on
/// the CLI (exit 0 met, 3 missed, 2 for a bad --since naming the accepted forms) and on
/// `/v1/slo`.
#[test]
fn monitoring_metrics_rules_dashboard_and_slo_report_match_the_docs() {
    let dir = temp_dir("orgbase-monitoring-");
    let data = dir.join("data");
    let s = start_serve(&data);
    assert!(ready(&s.base), "not ready within 10 s");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = orgbase_testkit::Api::new(s.base.clone());
    let (metrics, slo, bad_since) = rt.block_on(async {
        use ::reqwest::Method;
        let (_, token) = api.user("ops@example.com").await;
        api.ok(
            Method::POST,
            "/v1/orgs",
            &token,
            Some(serde_json::json!({"name": "Ops", "slug": "ops"})),
        )
        .await;
        let note = api
            .ok(
                Method::POST,
                "/v1/orgs/ops/notes",
                &token,
                Some(serde_json::json!({"title": "t"})),
            )
            .await;
        let id = note["id"].as_str().unwrap().to_string();
        let one = format!("/v1/orgs/ops/notes/{id}");
        api.ok(Method::GET, "/v1/orgs/ops/notes", &token, None)
            .await;
        api.ok(Method::GET, &one, &token, None).await;
        api.ok(
            Method::PATCH,
            &one,
            &token,
            Some(serde_json::json!({"title": "u"})),
        )
        .await;
        api.ok(Method::GET, "/v1/orgs/ops/members", &token, None)
            .await;
        api.ok(Method::DELETE, &one, &token, None).await;
        api.ok(Method::POST, &format!("{one}/restore"), &token, None)
            .await;
        // The access log's batch and a sealing round.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let get = |path: String| async move {
            let r = ::reqwest::get(path).await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        };
        let (_, metrics) = get(format!("{}/metrics", s.base)).await;
        let (status, slo) = get(format!("{}/v1/slo?since=1h", s.base)).await;
        assert_eq!(status, 200, "{slo}");
        let (status, bad) = get(format!("{}/v1/slo?since=yesterday", s.base)).await;
        assert_eq!(status, 400, "{bad}");
        (metrics, slo, bad)
    });

    // Every documented metric is served, with its type; every served family is documented.
    let served = families(&metrics);
    let documented = doc_table("Metrics");
    assert!(documented.len() >= 20, "{documented:?}");
    let mut names = std::collections::BTreeSet::new();
    for row in &documented {
        let (name, kind) = (&row[0], &row[1]);
        names.insert(name.clone());
        let family = match kind.as_str() {
            "counter" => name
                .strip_suffix("_total")
                .unwrap_or_else(|| panic!("{name}: a counter's name ends in _total")),
            _ => name.as_str(),
        };
        assert_eq!(
            served.get(family),
            Some(kind),
            "{name}: documented as a {kind}, served as {:?}",
            served.get(family)
        );
    }
    for (family, kind) in &served {
        if family.starts_with("orgbase_") {
            let name = if kind == "counter" {
                format!("{family}_total")
            } else {
                family.clone()
            };
            assert!(names.contains(&name), "{name} is served but not documented");
        }
    }
    // Statement latency by kind, the tenant table only where there is one; no ids anywhere.
    for kind in ["list", "get", "create", "update", "delete", "restore"] {
        let series =
            format!("orgbase_db_query_duration_seconds_count{{kind=\"{kind}\",table=\"notes\"}}");
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    for kind in [
        "context_open",
        "org",
        "account",
        "audit_seal",
        "access_log_write",
    ] {
        let series =
            format!("orgbase_db_query_duration_seconds_count{{kind=\"{kind}\",table=\"\"}}");
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    assert!(
        metrics.contains("orgbase_access_log_written_total "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("orgbase_audit_last_seal_timestamp_seconds 0.0"),
        "{metrics}"
    );
    assert!(!metrics.contains("/notes/0"), "a raw path in /metrics");

    // The rules and the dashboard use documented metrics; the alerts are the documented ones.
    let rules = include_str!("../../../deploy/prometheus/orgbase-rules.yml");
    let dashboard = include_str!("../../../deploy/grafana/orgbase-dashboard.json");
    serde_json::from_str::<serde_json::Value>(dashboard).expect("the dashboard is JSON");
    for (file, text) in [("rules", rules), ("dashboard", dashboard)] {
        for m in metric_names(text) {
            assert!(
                names.contains(&m),
                "{file} uses {m}, which is not a documented metric"
            );
        }
    }
    let alerts: std::collections::BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect();
    let documented_alerts: std::collections::BTreeSet<String> = doc_table("Alerts")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(alerts.len() >= 15, "{alerts:?}");
    assert_eq!(alerts, documented_alerts, "rules vs docs/operations.md");
    match Command::new("promtool").arg("--version").output() {
        Ok(_) => {
            let out = Command::new("promtool")
                .args(["check", "rules"])
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../deploy/prometheus/orgbase-rules.yml"
                ))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool check rules: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => eprintln!(
            "skipped: promtool not found (the Debian package prometheus provides it); the rules were \
             checked against the docs only"
        ),
    }

    // The SLO report over HTTP: aggregates of this test's requests, by route template.
    let slo: serde_json::Value = serde_json::from_str(&slo).unwrap();
    assert_eq!(slo["classes"][0]["class"], "read", "{slo}");
    assert!(
        slo["classes"][0]["requests"].as_i64().unwrap() >= 3,
        "{slo}"
    );
    assert!(
        slo["classes"][1]["requests"].as_i64().unwrap() >= 7,
        "{slo}"
    );
    assert!(!slo.to_string().contains("/notes/0"), "{slo}");
    assert!(
        bad_since.contains("since") && bad_since.contains("90s, 30m, 24h, 7d, 2w"),
        "{bad_since}"
    );

    // The SLO report on the CLI: the exit status follows the targets.
    let report = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = orgbase();
        c.args(["slo", "report", "--data-dir"])
            .arg(&data)
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let lax = [
        ("ORGBASE_SLO__READ_P95_MS", "600000"),
        ("ORGBASE_SLO__READ_P99_MS", "600000"),
        ("ORGBASE_SLO__WRITE_P95_MS", "600000"),
        ("ORGBASE_SLO__WRITE_P99_MS", "600000"),
    ];
    let (code, out, err) = report(&lax, &["--since", "1h"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("every target met"), "{out}");
    assert!(out.contains("/v1/orgs/{org}/{table}"), "{out}");
    // Sign-up and login hash a password: no write of theirs takes under a millisecond.
    let (code, out, err) = report(&[("ORGBASE_SLO__WRITE_P99_MS", "1")], &["--format", "json"]);
    assert_eq!(code, Some(3), "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["met"], false, "{json}");
    let (code, out, err) = report(&[], &["--since", "3 days"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("--since") && err.contains("90s, 30m, 24h, 7d, 2w"),
        "{err}"
    );
    let (code, _, err) = report(&[], &["--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--since") && err.contains("not in the past"),
        "{err}"
    );
    drop(s);
}

/// kill -9 of serve under a load of differentially private queries: after a restart, every
/// answered query has exactly one charge in the ledger, the period's spend is exactly the sum of
/// the charges, and at most the queries in flight at the kill were charged without an answer
/// (charged, never refunded: the safe side).
#[test]
fn kill_9_mid_query_neither_loses_nor_doubles_a_privacy_charge() {
    use nix::sys::signal::Signal;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = temp_dir("orgbase-dp-kill-");
    let data = dir.join("data");
    let mut s = start_serve(&data);
    assert!(ready(&s.base));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = rt.block_on(async {
        let api = orgbase_testkit::Api::new(s.base.clone());
        let (_, token) = api.user("dp@example.com").await;
        api.ok(
            ::reqwest::Method::POST,
            "/v1/orgs",
            &token,
            Some(serde_json::json!({"name": "DP", "slug": "dp"})),
        )
        .await;
        for i in 0..5 {
            api.ok(
                ::reqwest::Method::POST,
                "/v1/orgs/dp/notes",
                &token,
                Some(serde_json::json!({"title": format!("n{i}")})),
            )
            .await;
        }
        token
    });
    const CLIENTS: usize = 4;
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (answered, stop, token) = (answered.clone(), stop.clone(), token.clone());
            let url = format!("{}/v1/orgs/dp/analytics/query", s.base);
            rt.spawn(async move {
                let http = ::reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"table": "notes", "aggregate": "count", "epsilon": 0.0001}))
                        .send()
                        .await;
                    let Ok(r) = sent else { break };
                    assert_eq!(r.status(), 200);
                    let Ok(v) = r.json::<serde_json::Value>().await else { break };
                    answered
                        .lock()
                        .unwrap()
                        .push(v["charge_id"].as_str().unwrap().to_string());
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2000));
    signal(&s.child, Signal::SIGKILL);
    let _ = s.child.wait();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        rt.block_on(t).unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() > 10,
        "only {} answers before the kill",
        answered.len()
    );
    s = start_serve(&data);
    assert!(ready(&s.base));
    let charges = psql(&data, "SELECT id FROM orgbase.privacy_charges ORDER BY id");
    let totals = psql(
        &data,
        "SELECT (SELECT sum(micro) FROM orgbase.privacy_charges) || ' ' || \
                (SELECT sum(spent_micro) FROM orgbase.privacy_spend) || ' ' || \
                (SELECT count(DISTINCT id) FROM orgbase.privacy_charges)",
    );
    let parts: Vec<i64> = totals[0].split(' ').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts[0], parts[1], "spend equals the sum of the charges");
    assert_eq!(parts[0], 100 * charges.len() as i64);
    assert_eq!(parts[2], charges.len() as i64, "no charge twice");
    for id in &answered {
        assert!(charges.contains(id), "answer {id} has no charge");
    }
    assert!(
        charges.len() - answered.len() <= CLIENTS,
        "{} charges, {} answers",
        charges.len(),
        answered.len()
    );
    eprintln!(
        "kill -9 drill: {} answers, {} charges",
        answered.len(),
        charges.len()
    );
    signal(&s.child, Signal::SIGINT);
    let _ = s.child.wait();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn admin_create_makes_an_instance_operator_of_the_console() {
    let dir = temp_dir("orgbase-admin-");
    let data = dir.join("data");
    let with_data = |args: &[&str]| {
        let mut c = orgbase();
        c.arg("--data-dir").arg(&data).args(args);
        c
    };
    let (ok, _, err) = run(&mut with_data(&["migrate", "up"]));
    assert!(ok, "{err}");
    let (ok, out, _) = run(&mut with_data(&["admin", "list"]));
    assert!(ok && out.contains("no instance operators"), "{out}");
    let (ok, _, err) = run(&mut with_data(&[
        "admin",
        "create",
        "--email",
        "not an email",
    ]));
    assert!(!ok);
    assert!(err.contains("--email"), "{err}");
    // A password from stdin must be long enough; nothing is created otherwise.
    let mut short = with_data(&[
        "admin",
        "create",
        "--email",
        "x@example.com",
        "--password-stdin",
    ]);
    short
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = short.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"short\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("8 to 1024"));
    let (ok, out, err) = run(&mut with_data(&[
        "admin",
        "create",
        "--email",
        "Op@Example.com",
    ]));
    assert!(ok, "{err}");
    let password = out
        .lines()
        .find_map(|l| l.split_once("password (shown once; change it after signing in): "))
        .map(|(_, p)| p.trim().to_string())
        .unwrap_or_else(|| panic!("no password in {out}"));
    let (ok, out, _) = run(&mut with_data(&[
        "admin",
        "create",
        "--email",
        "op@example.com",
    ]));
    assert!(ok && out.contains("already"), "{out}");
    let (ok, _, err) = run(&mut with_data(&[
        "admin",
        "create",
        "--email",
        "op@example.com",
        "--password-stdin",
    ]));
    assert!(!ok && err.contains("password stays"), "{err}");
    let (ok, out, _) = run(&mut with_data(&["admin", "list"]));
    assert!(ok && out.contains("op@example.com"), "{out}");

    // The operator signs in; the API and the console know them as one.
    let s = start_serve(&data);
    assert!(ready(&s.base));
    let login = format!(r#"{{"email":"op@example.com","password":"{password}"}}"#);
    let (status, body) = reqwest::blocking(
        "POST",
        &format!("{}/v1/auth/login", s.base),
        &[],
        Some(login),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let token = body
        .split("\"token\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let auth = format!("Bearer {token}");
    let (status, me) = reqwest::blocking(
        "GET",
        &format!("{}/v1/me", s.base),
        &[("authorization", &auth)],
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(me.contains("\"operator\":true"), "{me}");
    let cookie = format!("orgbase_console={token}");
    let (status, page) = reqwest::blocking(
        "GET",
        &format!("{}/console/operator/accounts", s.base),
        &[("cookie", &cookie)],
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("op@example.com"), "{page}");
    // Removed: the page is closed to them.
    let (ok, _, err) = run(&mut with_data(&[
        "admin",
        "remove",
        "--email",
        "op@example.com",
    ]));
    assert!(ok, "{err}");
    let (status, _) = reqwest::blocking(
        "GET",
        &format!("{}/console/operator/accounts", s.base),
        &[("cookie", &cookie)],
        None,
    )
    .unwrap();
    assert_eq!(status, 403);
    let mut s = s;
    signal(&s.child, nix::sys::signal::Signal::SIGINT);
    assert!(s.child.wait().unwrap().success());
    std::fs::remove_dir_all(dir).unwrap();
}
