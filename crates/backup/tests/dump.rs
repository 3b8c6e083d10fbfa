//! Logical backups against real PostgreSQL: create → verify → restore gives the same rows and
//! the same `pg_dump --data-only` bytes; alterations of the stored object and a wrong key fail
//! verification with a clear message; `verify --restore` in a scratch cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use orgbase_backup::dump::{DATABASE_PRIVILEGES, PREPARE_ROLES, RestoreTarget};
use orgbase_backup::keys::{KeyRing, KeySource};
use orgbase_backup::pipe::progress;
use orgbase_backup::{Backups, Kind, Manifest, Store};
use orgbase_testkit::{TestDb, bin_dir, temp_dir};

fn data_checksum(db: &TestDb) -> String {
    let out = Command::new(bin_dir().join("pg_dump"))
        .envs(db.libpq_env())
        .args(["--data-only", "--no-password"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // \restrict lines carry a random key per run (pg_dump's psql-meta-command guard).
    let text: String = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| format!("{l}\n"))
        .collect();
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        text.as_bytes(),
    ))
}

async fn seed(db: &TestDb) {
    db.admin()
        .await
        .batch_execute(
            "SET ROLE orgbase_owner;
             CREATE TABLE orgbase.backup_probe (id bigint PRIMARY KEY, body text NOT NULL);
             INSERT INTO orgbase.backup_probe
               SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 3000) g;
             INSERT INTO orgbase.users (id, email, email_hash, name)
               VALUES (gen_random_uuid(), 'ada@example.com', sha256('ada@example.com'), 'Ada');
             RESET ROLE;",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn create_verify_restore_and_tampering() {
    let db = TestDb::migrated().await;
    seed(&db).await;
    let dir = temp_dir("orgbase-backup-test-");
    let backups = Backups {
        store: Store::open(&dir.join("store").display().to_string()).unwrap(),
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
    assert_eq!(m.row_counts["orgbase.backup_probe"], 3000);
    assert_eq!(m.row_counts["orgbase.users"], 1);
    assert!(m.schema_version.unwrap() >= 1);
    assert!(m.raw_bytes > m.compressed_bytes, "{m:?}");
    let listed = Manifest::list(&backups.store, Kind::Dump).await.unwrap();
    assert_eq!(listed, vec![m.clone()]);
    let bar = progress(Some(m.raw_bytes), "verify");
    let entries = backups.verify_dump(&m, bar.clone()).await.unwrap();
    assert!(entries > 10, "{entries}");
    // pg_restore --list stops reading after the table of contents; the bar still ends full.
    assert_eq!(bar.position(), m.raw_bytes);
    assert!(bar.is_finished());

    // Restore into a new empty database: identical rows and data.
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
    assert_eq!(data_checksum(&db), data_checksum(&fresh));
    assert!(orgbase_db::check(&admin).await.unwrap().is_empty());

    // verify --restore: a scratch cluster of its own.
    let report = backups
        .verify_restore(
            &m,
            &orgbase_core::config::EmbeddedConfig::default(),
            progress(None, "scratch"),
        )
        .await
        .unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.tables, m.row_counts.len());

    // Alterations of the stored object each fail verification, naming what is wrong.
    let path = dir.join("store").join(&m.object);
    let good = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "flipped byte",
            {
                let mut b = good.clone();
                let i = b.len() / 2;
                b[i] ^= 0x40;
                b
            },
            "failed authentication",
        ),
        (
            "truncated",
            good[..good.len() - 100].to_vec(),
            "failed authentication",
        ),
        ("empty", Vec::new(), "damaged header"),
        ("header only", good[..40].to_vec(), "damaged header"),
    ];
    for (what, bytes, expect) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = backups
            .verify_dump(&m, progress(None, "verify"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert!(err.contains(&m.object), "{what} names the object: {err}");
    }
    std::fs::write(&path, &good).unwrap();
    backups
        .verify_dump(&m, progress(None, "verify"))
        .await
        .unwrap();

    // A wrong key.
    let other = Backups {
        keys: KeySource::Dir(dir.join("other-keys")),
        ..backups.clone()
    };
    KeyRing::load(KeySource::Dir(dir.join("other-keys")), true).unwrap();
    let err = other
        .verify_dump(&m, progress(None, "verify"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong key"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_and_reordered_segments_and_truncation_at_a_boundary_fail() {
    // A multi-segment object straight through the store, without PostgreSQL.
    let dir = temp_dir("orgbase-backup-seg-");
    let store = Store::open(&dir.display().to_string()).unwrap();
    let ring = KeyRing::load(KeySource::Dir(dir.join("keys")), true).unwrap();
    let (w, task) = store.writer("obj").await.unwrap();
    let key_dir = dir.join("keys");
    tokio::task::spawn_blocking(move || {
        let ring = KeyRing::load(KeySource::Dir(key_dir), false).unwrap();
        let mut sink =
            orgbase_backup::pipe::Sink::new(w, "obj-id", ring.current().unwrap(), 0, 1).unwrap();
        let mut data: Vec<u8> = Vec::new();
        let mut x: u64 = 1;
        for _ in 0..(3 << 20) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut sink, &data).unwrap();
        sink.finish(data.len() as u64).unwrap();
    })
    .await
    .unwrap();
    task.await.unwrap().unwrap();
    let path = dir.join("obj");
    let good = std::fs::read(&path).unwrap();
    let seg = (1 << 20) + 16;
    // magic, version, segment size, object id "obj-id", key id "bk-…" (19), key version,
    // nonce, wrapped data key (32 + 16)
    let header = 14 + 2 + 6 + 2 + 19 + 4 + 12 + 2 + 48;
    assert!(good.len() > header + 3 * seg);
    let read = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        let store = store.clone();
        let ring_dir = dir.join("keys");
        async move {
            let r = store.reader("obj").await.unwrap();
            tokio::task::spawn_blocking(move || {
                let ring = KeyRing::load(KeySource::Dir(ring_dir), false).unwrap();
                let mut s =
                    orgbase_backup::pipe::Source::new(r, &ring).map_err(|e| e.to_string())?;
                std::io::copy(&mut s, &mut std::io::sink()).map_err(|e| e.to_string())?;
                s.finish().map_err(|e| e.to_string())
            })
            .await
            .unwrap()
        }
    };
    let _ = ring;
    assert!(read(&good).await.is_ok());
    let removed = [&good[..header + seg], &good[header + 2 * seg..]].concat();
    let e = read(&removed).await.unwrap_err();
    assert!(e.contains("segment 1 failed authentication"), "{e}");
    let swapped = [
        &good[..header],
        &good[header + seg..header + 2 * seg],
        &good[header..header + seg],
        &good[header + 2 * seg..],
    ]
    .concat();
    let e = read(&swapped).await.unwrap_err();
    assert!(e.contains("segment 0 failed authentication"), "{e}");
    let e = read(&good[..header + 2 * seg]).await.unwrap_err();
    assert!(e.contains("truncated"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
