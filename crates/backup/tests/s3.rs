//! An `s3://bucket/prefix` store against a real S3-compatible server (moto's server mode, started
//! by the test on a free localhost port): create → list → verify (every segment decrypted,
//! `pg_restore --list`) → restore into a new database, with a dump large enough for a multipart
//! upload. Skips with a message naming the package when `moto_server` is not installed.
#![cfg(feature = "s3")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orgbase_backup::dump::{DATABASE_PRIVILEGES, PREPARE_ROLES, RestoreTarget};
use orgbase_backup::keys::KeySource;
use orgbase_backup::pipe::progress;
use orgbase_backup::{Backups, Kind, Manifest, Store};
use orgbase_core::Secret;
use orgbase_core::config::S3Config;
use orgbase_testkit::s3::S3Server;
use orgbase_testkit::{TestDb, bin_dir, temp_dir};

const SECRET: &str = "moto-test-secret-never-shown";

fn s3_config(server: &S3Server) -> S3Config {
    S3Config {
        endpoint: Some(server.endpoint.clone()),
        region: Some("eu-central-1".into()),
        access_key_id: Some("orgbase-test".into()),
        secret_access_key: Some(Secret::new(SECRET)),
        allow_http: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_create_list_verify_restore() {
    let Some(server) = tokio::task::spawn_blocking(S3Server::start).await.unwrap() else {
        return;
    };
    server.create_bucket("orgbase-backups");
    let config = s3_config(&server);

    let db = TestDb::migrated().await;
    // ~24 MB of hex text: compressed it is still more than one 8 MiB upload part.
    db.admin()
        .await
        .batch_execute(
            "SET ROLE orgbase_owner;
             CREATE TABLE orgbase.s3_probe (id bigint PRIMARY KEY, body text NOT NULL);
             INSERT INTO orgbase.s3_probe
               SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text)
                 FROM generate_series(1, 250000) g;
             RESET ROLE;",
        )
        .await
        .unwrap();
    let dir = temp_dir("orgbase-backup-s3-");
    let backups = Backups {
        store: Store::open_with("s3://orgbase-backups/prod/eu", &config).unwrap(),
        keys: KeySource::Dir(dir.join("keys")),
        bin_dir: bin_dir(),
        zstd_level: 3,
        zstd_threads: 2,
        key_max_age: std::time::Duration::from_secs(90 * 86400),
    };
    let conn = db.target.backup_login(&dir.join("secrets")).await.unwrap();
    let m = backups
        .create_dump(&conn, "manual", progress(None, "backup"))
        .await
        .unwrap();
    assert_eq!(m.row_counts["orgbase.s3_probe"], 250_000);
    assert!(m.stored_bytes > 8 << 20, "one upload part only: {m:?}");

    // Listed from the bucket under the prefix, and nowhere else.
    let listed = Manifest::list(&backups.store, Kind::Dump).await.unwrap();
    assert_eq!(listed, vec![m.clone()]);
    let objects = backups.store.list("dumps").await.unwrap();
    assert_eq!(objects.len(), 2, "{objects:?}");
    let unprefixed = Store::open_with("s3://orgbase-backups", &config).unwrap();
    let all = unprefixed.list("").await.unwrap();
    assert!(
        all.iter().all(|e| e.name.starts_with("prod/eu/")),
        "{all:?}"
    );

    let entries = backups
        .verify_dump(&m, progress(None, "verify"))
        .await
        .unwrap();
    assert!(entries > 10, "{entries}");

    // Restore from the bucket into a new database.
    let fresh = TestDb::empty().await;
    let admin = fresh.admin().await;
    admin.batch_execute(PREPARE_ROLES).await.unwrap();
    backups
        .restore_dump(
            &m,
            &RestoreTarget::from_config(fresh.target.admin_config()),
            progress(None, "restore"),
        )
        .await
        .unwrap();
    admin.batch_execute(DATABASE_PRIVILEGES).await.unwrap();
    orgbase_backup::dump::compare_row_counts(&admin, &m)
        .await
        .unwrap();
    let same: bool = admin
        .query_one(
            "SELECT (SELECT md5(string_agg(body, '' ORDER BY id)) FROM orgbase.s3_probe) = $1",
            &[&db
                .admin()
                .await
                .query_one(
                    "SELECT md5(string_agg(body, '' ORDER BY id)) FROM orgbase.s3_probe",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, String>(0)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same, "restored rows differ");

    // A store whose bucket does not exist: a clear error naming it, and never the secret.
    let missing = Backups {
        store: Store::open_with("s3://no-such-bucket/x", &config).unwrap(),
        ..backups.clone()
    };
    let err = Manifest::list(&missing.store, Kind::Dump)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-bucket"), "{err}");
    assert!(!err.contains(SECRET), "{err}");
    assert!(!format!("{:?}", missing.store).contains(SECRET));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bucket_is_required() {
    let err = Store::open_with("s3:///prefix", &S3Config::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no bucket name"), "{err}");
}
