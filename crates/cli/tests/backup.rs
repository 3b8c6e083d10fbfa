//! Backups through the `orgbase` binary: create → list → verify (--restore) → restore, and the
//! point-in-time recovery drill (write rows, note T, write more, restore to T → exactly the rows
//! before T), with WAL archived by PostgreSQL calling `orgbase wal archive`; the schedule of
//! `orgbase serve` (a short tier fires, prune keeps the newest backup and manual ones) and the
//! backup series of its `/metrics`, before the first backup and after one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orgbase_testkit::temp_dir;

fn orgbase(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orgbase"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ORGBASE_") {
            c.env_remove(k);
        }
    }
    c.env("ORGBASE_LOG", "warn")
        .env("ORGBASE_DATA_DIR", data)
        .env("ORGBASE_BACKUP__PITR", "true")
        .stdin(Stdio::null());
    c
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn psql(data: &Path, sql: &str) -> String {
    ok(orgbase(data).args(["db", "psql", "--", "-v", "ON_ERROR_STOP=1", "-Atqc", sql]))
        .trim()
        .to_string()
}

#[test]
fn pitr_drill_and_logical_backup_round_trip() {
    let dir = temp_dir("orgbase-pitr-");
    let data = dir.join("data");
    ok(orgbase(&data).args(["migrate", "up"]));
    // Base backup, then rows before and after T (a table the backup role can read).
    ok(orgbase(&data).args(["pitr", "base-backup"]));
    psql(
        &data,
        "SET ROLE orgbase_owner; CREATE TABLE orgbase.drill (n int PRIMARY KEY);
         INSERT INTO orgbase.drill SELECT generate_series(1, 100)",
    );
    let t = psql(
        &data,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    psql(
        &data,
        "INSERT INTO orgbase.drill SELECT generate_series(101, 150)",
    );

    // A logical backup now (150 rows): create, list, verify with a scratch restore.
    let created = ok(orgbase(&data).args(["backup", "create"]));
    let id = created.split_whitespace().nth(1).unwrap().to_string();
    assert!(ok(orgbase(&data).args(["backup", "list"])).contains(&id));
    let verified = ok(orgbase(&data).args(["backup", "verify", &id, "--restore"]));
    assert!(verified.contains("match the manifest"), "{verified}");
    // Both results are kept next to the backup, for the console's backups page.
    let mut kept: Vec<(String, bool)> = std::fs::read_dir(data.join("backups/checks").join(&id))
        .unwrap()
        .map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            assert_eq!(v["backup_id"], id.as_str());
            (
                v["kind"].as_str().unwrap().to_string(),
                v["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [("restore".to_string(), true), ("verify".to_string(), true)]
    );

    // Restore needs --yes without a terminal, and changes nothing without it.
    let out = orgbase(&data)
        .args(["backup", "restore", &id])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));

    // The drill: restore to T gives exactly the 100 rows written before it.
    psql(&data, "SELECT pg_switch_wal()");
    let out = ok(orgbase(&data).args(["pitr", "restore", "--to-time", &t, "--yes"]));
    assert!(out.contains("recovered to"), "{out}");
    assert_eq!(
        psql(&data, "SELECT count(*), max(n) FROM orgbase.drill"),
        "100|100"
    );

    // And the logical backup brings back all 150 (the old database is kept aside).
    ok(orgbase(&data).args(["backup", "restore", &id, "--yes"]));
    assert_eq!(psql(&data, "SELECT count(*) FROM orgbase.drill"), "150");

    // A bad id is named.
    let out = orgbase(&data)
        .args(["backup", "verify", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backup `nope`"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `orgbase serve` on a free port; killed on drop if a test fails before stopping it.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .to_string();
        Self { child, base }
    }

    fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { reqwest::get(&url).await.unwrap().text().await.unwrap() })
    }

    /// `method path` with a bearer token and a JSON body: (status, JSON answer).
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.base);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut req = reqwest::Client::new().request(method, &url);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                (status, resp.json().await.unwrap_or(serde_json::Value::Null))
            })
    }

    /// Ctrl-C, and wait for the clean exit.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait for an event the test cannot observe any other way than by looking again.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of one series in a `/metrics` text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// (id, tier) of the dumps `backup list` shows, oldest first.
fn dumps(data: &Path) -> Vec<(String, String)> {
    ok(orgbase(data).args(["backup", "list"]))
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"dump")).then(|| (f[0].to_string(), f[2].to_string()))
        })
        .collect()
}

/// When a backup id says it started (ids begin with the UTC start time, `20261123T183000Z-…`).
fn started(id: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(&id[..16], "%Y%m%dT%H%M%SZ")
        .unwrap()
        .and_utc()
        .timestamp()
}

#[test]
fn serve_schedules_backups_prunes_and_reports_them_on_metrics() {
    let dir = temp_dir("orgbase-schedule-");
    let data = dir.join("data");
    let serve = |schedule: bool| {
        let mut c = orgbase(&data);
        c.env("ORGBASE_BACKUP__PITR", "false")
            .env("ORGBASE_BACKUP__SCHEDULE", schedule.to_string())
            .env("ORGBASE_BACKUP__TIERS", "1s:1s")
            .env("ORGBASE_BACKUP__SCHEDULE_CHECK_SECS", "1");
        Server::start(c)
    };
    const LAST: &str = "orgbase_backup_last_success_timestamp_seconds{kind=\"dump\"}";
    const SIZE: &str = "orgbase_backup_last_size_bytes{kind=\"dump\"}";
    const DURATION: &str = "orgbase_backup_last_duration_seconds{kind=\"dump\"}";
    const FAILURES: &str = "orgbase_backup_failures_total{kind=\"dump\"}";

    // Before any backup: every backup series is on /metrics, at zero.
    let s = serve(false);
    let text = s.metrics();
    for series in [LAST, SIZE, DURATION, FAILURES] {
        assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
    }
    assert!(
        !text.contains("kind=\"base\""),
        "no base series without PITR:\n{text}"
    );
    s.stop();

    // A store that cannot even be opened (its path runs through a file): every scheduled round
    // fails, and the failure counter says so.
    std::fs::write(dir.join("not-a-dir"), b"").unwrap();
    let mut c = orgbase(&data);
    c.env("ORGBASE_LOG", "off")
        .env("ORGBASE_BACKUP__PITR", "false")
        .env("ORGBASE_BACKUP__STORE", dir.join("not-a-dir/store"))
        .env("ORGBASE_BACKUP__TIERS", "1s:1s")
        .env("ORGBASE_BACKUP__SCHEDULE_CHECK_SECS", "1");
    let s = Server::start(c);
    wait_until("a failed scheduled backup on /metrics", || {
        sample(&s.metrics(), FAILURES).is_some_and(|n| n >= 1.0)
    });
    assert_eq!(sample(&s.metrics(), LAST), Some(0.0));
    s.stop();

    // A manual backup: never pruned by the tiers.
    let created = ok(orgbase(&data)
        .env("ORGBASE_BACKUP__PITR", "false")
        .args(["backup", "create"]));
    let manual = created.split_whitespace().nth(1).unwrap().to_string();

    // The schedule: tier `1s:1s` is due at every check (each second) and expires a second later.
    let s = serve(true);
    let text = s.metrics();
    assert!(
        sample(&text, LAST).unwrap() >= started(&manual) as f64,
        "a restarted server reports the newest backup in the store:\n{text}"
    );
    let mut first = None;
    wait_until("a scheduled backup", || {
        first = dumps(&data).into_iter().find(|(_, tier)| tier == "1s");
        first.is_some()
    });
    let (first, _) = first.unwrap();
    wait_until(
        "a second scheduled backup, and the first one pruned",
        || {
            let now = dumps(&data);
            now.iter().any(|(id, t)| t == "1s" && *id > first)
                && !now.iter().any(|(id, _)| *id == first)
        },
    );
    wait_until("/metrics reporting a scheduled backup", || {
        let text = s.metrics();
        sample(&text, LAST).is_some_and(|t| t >= started(&first) as f64)
            && sample(&text, SIZE).is_some_and(|b| b > 0.0)
            && sample(&text, DURATION).is_some_and(|d| d > 0.0)
    });
    assert_eq!(sample(&s.metrics(), FAILURES), Some(0.0));
    s.stop();

    // Everything scheduled has expired by now; prune still keeps the newest backup, and it is
    // good: it verifies. The manual backup stays.
    let out = ok(orgbase(&data)
        .env("ORGBASE_BACKUP__PITR", "false")
        .env("ORGBASE_BACKUP__TIERS", "1s:1s")
        .args(["backup", "prune"]));
    assert!(out.contains("deleted"), "{out}");
    let left = dumps(&data);
    assert!(left.iter().any(|(id, _)| *id == manual), "{left:?}");
    let scheduled: Vec<_> = left.iter().filter(|(_, t)| t == "1s").collect();
    assert_eq!(scheduled.len(), 1, "{left:?}");
    assert!(scheduled[0].0 > first);
    let verified = ok(orgbase(&data).args(["backup", "verify", &scheduled[0].0]));
    assert!(verified.starts_with("ok:"), "{verified}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_lets_an_operator_start_a_backup_and_shows_its_verification() {
    let dir = temp_dir("orgbase-operator-backup-");
    let data = dir.join("data");
    let serve = || {
        let mut c = orgbase(&data);
        c.env("ORGBASE_BACKUP__PITR", "false")
            .env("ORGBASE_BACKUP__SCHEDULE", "false");
        Server::start(c)
    };
    ok(orgbase(&data).args(["migrate", "up"]));
    let mut admin = orgbase(&data)
        .args([
            "admin",
            "create",
            "--email",
            "ops@example.com",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    admin
        .stdin
        .take()
        .unwrap()
        .write_all(b"operator-password-1\n")
        .unwrap();
    assert!(admin.wait().unwrap().success());
    let s = serve();
    let login = |s: &Server| {
        let (status, v) = s.call(
            reqwest::Method::POST,
            "/v1/auth/login",
            None,
            Some(
                serde_json::json!({"email": "ops@example.com", "password": "operator-password-1"}),
            ),
        );
        assert_eq!(status, 200, "{v}");
        v["token"].as_str().unwrap().to_string()
    };
    let token = login(&s);
    let (status, v) = s.call(
        reqwest::Method::POST,
        "/v1/operator/backups",
        Some(&token),
        None,
    );
    assert_eq!(status, 202, "{v}");
    let mut id = String::new();
    wait_until("the backup started on request", || {
        let (_, v) = s.call(
            reqwest::Method::GET,
            "/v1/operator/backups",
            Some(&token),
            None,
        );
        id = v["items"][0]["id"].as_str().unwrap_or_default().to_string();
        !id.is_empty() && v["running"] == false
    });
    assert!(ok(orgbase(&data).args(["backup", "list"])).contains(&id));
    // Verified from the command line (while serve runs): the page shows the result.
    let verified = ok(orgbase(&data).args(["backup", "verify", &id]));
    assert!(verified.starts_with("ok:"), "{verified}");
    let (_, v) = s.call(
        reqwest::Method::GET,
        "/v1/operator/backups",
        Some(&token),
        None,
    );
    assert_eq!(v["items"][0]["last_verify"]["ok"], true, "{v}");
    assert_eq!(v["last_verify"]["backup_id"], id.as_str(), "{v}");
    assert_eq!(v["last_restore"], serde_json::Value::Null, "{v}");
    s.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_check_never_prints_backup_secrets() {
    let dir = temp_dir("orgbase-config-secrets-");
    let out = ok(orgbase(&dir.join("data"))
        .env("ORGBASE_BACKUP__MASTER_KEY", "ab".repeat(32))
        .env("ORGBASE_BACKUP__STORE", "s3://bucket/prefix")
        .env("ORGBASE_BACKUP__S3__ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("ORGBASE_BACKUP__S3__SECRET_ACCESS_KEY", "s3-secret-value")
        .env(
            "ORGBASE_BACKUP__URL",
            "postgresql://orgbase_backup:pw-value@db/orgbase",
        )
        .args(["config", "check"]));
    for secret in ["abababab", "s3-secret-value", "pw-value"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(out.contains("AKIDEXAMPLE"), "{out}");
    assert!(out.contains("[redacted]"), "{out}");
    // A bad S3 setting is named.
    let out = orgbase(&dir.join("data"))
        .env("ORGBASE_BACKUP__S3__ENDPOINT", "http://127.0.0.1:9")
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backup.s3.endpoint") && err.contains("allow_http"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
