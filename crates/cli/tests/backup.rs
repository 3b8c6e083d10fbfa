//! Backups through the `orgbase` binary: create → list → verify (--restore) → restore, and the
//! point-in-time recovery drill (write rows, note T, write more, restore to T → exactly the rows
//! before T), with WAL archived by PostgreSQL calling `orgbase wal archive`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};

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
