//! End-to-end behaviour of the key store, field cipher and certificates, on real files in a
//! temp directory. One test binary (one link of aws-lc) for all of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use orgbase_keys::{
    CertificateError, CipherError, FieldAad, FieldCipher, KeyError, KeyId, KeyStore, KeyVersion,
    Keys, KeysConfig, LocalKeyProvider, Reencrypted, StoreConfig, cipher, is_ciphertext,
    verify_certificate,
};
use serde_json::Value;
use uuid::Uuid;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn store_at(dir: &Path, master: u8, revalidate: Duration) -> Arc<KeyStore> {
    let provider = Arc::new(LocalKeyProvider::from_bytes(&[master; 32]).unwrap());
    Arc::new(
        KeyStore::open(
            dir,
            provider,
            StoreConfig {
                cache_revalidate: revalidate,
                ..StoreConfig::default()
            },
        )
        .unwrap(),
    )
}

fn cipher_at(dir: &Path) -> FieldCipher {
    FieldCipher::new(store_at(dir, 1, Duration::from_secs(1)))
}

fn aad<'a>(org: Uuid, row: &'a str) -> FieldAad<'a> {
    FieldAad {
        org,
        table: "notes",
        column: "body",
        row,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn roundtrip_text_bytes_and_empty() {
    let dir = tempfile::tempdir().unwrap();
    let c = cipher_at(dir.path());
    let org = Uuid::new_v4();
    let key = KeyId::org(org);
    let a = aad(org, "row-1");

    let ct = c.encrypt("héllo wörld".as_bytes(), &a, key).unwrap();
    assert!(is_ciphertext(&ct));
    assert!(ct.starts_with("enc:v1:"));
    assert!(!is_ciphertext("héllo wörld"));
    assert_eq!(c.decrypt_string(&ct, &a).unwrap(), "héllo wörld");

    let h = cipher::header(&ct).unwrap();
    assert_eq!(h.key, key);
    assert_eq!(h.version, KeyVersion(1));

    // fresh nonce per value: same plaintext, different ciphertexts
    let ct2 = c.encrypt("héllo wörld".as_bytes(), &a, key).unwrap();
    assert_ne!(ct, ct2);

    let empty = c.encrypt(b"", &a, key).unwrap();
    assert_eq!(c.decrypt(&empty, &a).unwrap(), b"");

    let bin = c.encrypt_bytes(&[0u8, 255, 7], &a, key).unwrap();
    assert_eq!(bin.len(), 3 + cipher::OVERHEAD);
    assert_eq!(c.decrypt_bytes(&bin, &a).unwrap(), vec![0u8, 255, 7]);

    // subject keys work the same way
    let person = KeyId::subject(Uuid::new_v4());
    let ct = c.encrypt(b"alice@example.com", &a, person).unwrap();
    assert_eq!(c.decrypt(&ct, &a).unwrap(), b"alice@example.com");
}

#[test]
fn moved_to_another_row_org_column_or_table_fails() {
    let dir = tempfile::tempdir().unwrap();
    let c = cipher_at(dir.path());
    let org = Uuid::new_v4();
    let key = KeyId::org(org);
    let row = Uuid::new_v4().to_string();
    let here = aad(org, &row);
    let ct = c.encrypt(b"secret", &here, key).unwrap();

    let other_row = Uuid::new_v4().to_string();
    let places = [
        aad(org, &other_row),
        aad(Uuid::new_v4(), &row),
        FieldAad {
            column: "title",
            ..here
        },
        FieldAad {
            table: "contacts",
            ..here
        },
        // a boundary shift between fields must not collide
        FieldAad {
            table: "notesb",
            column: "ody",
            ..here
        },
    ];
    for place in places {
        let err = c.decrypt(&ct, &place).unwrap_err();
        assert!(
            matches!(err, CipherError::ContextMismatch),
            "{place:?}: {err:?}"
        );
    }
    assert_eq!(c.decrypt(&ct, &here).unwrap(), b"secret");
}

#[test]
fn every_flipped_byte_fails_and_body_flips_say_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let c = cipher_at(dir.path());
    let org = Uuid::new_v4();
    let a = aad(org, "r");
    let bin = c
        .encrypt_bytes(b"attack at dawn", &a, KeyId::org(org))
        .unwrap();
    for i in 0..bin.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = bin.clone();
            t[i] ^= bit;
            let err = c.decrypt_bytes(&t, &a).unwrap_err();
            if i >= cipher::HEADER_LEN - 12 {
                // nonce, ciphertext and tag
                assert!(matches!(err, CipherError::Tampered), "byte {i}: {err:?}");
            }
        }
    }
    // and in text form
    let ct = c.encrypt(b"attack at dawn", &a, KeyId::org(org)).unwrap();
    let mut raw = B64URL.decode(&ct["enc:v1:".len()..]).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let tampered = format!("enc:v1:{}", B64URL.encode(&raw));
    assert!(matches!(
        c.decrypt(&tampered, &a),
        Err(CipherError::Tampered)
    ));
}

#[test]
fn one_opener_switches_keys_and_names_each_failure() {
    let dir = tempfile::tempdir().unwrap();
    let c = cipher_at(dir.path());
    let (o1, o2) = (Uuid::new_v4(), Uuid::new_v4());
    let (a1, a2) = (aad(o1, "r1"), aad(o2, "r2"));
    let ct1 = c.encrypt(b"first", &a1, KeyId::org(o1)).unwrap();
    let ct2 = c.encrypt(b"second", &a2, KeyId::org(o2)).unwrap();
    // Alternating keys: the kept key of the last value must not open the next one.
    let mut opener = c.opener();
    for _ in 0..2 {
        assert_eq!(opener.decrypt(&ct1, &a1).unwrap(), b"first");
        assert_eq!(opener.decrypt(&ct2, &a2).unwrap(), b"second");
    }
    // With a key kept, a moved value and an altered one still say which they are.
    assert!(matches!(
        opener.decrypt(&ct2, &aad(o2, "elsewhere")),
        Err(CipherError::ContextMismatch)
    ));
    let mut raw = B64URL.decode(&ct2["enc:v1:".len()..]).unwrap();
    raw[cipher::HEADER_LEN] ^= 1;
    let altered = format!("enc:v1:{}", B64URL.encode(&raw));
    assert!(matches!(
        opener.decrypt(&altered, &a2),
        Err(CipherError::Tampered)
    ));
    assert_eq!(opener.decrypt(&ct2, &a2).unwrap(), b"second");
}

#[test]
fn malformed_ciphertexts_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let c = cipher_at(dir.path());
    let a = aad(Uuid::new_v4(), "r");
    assert!(matches!(
        c.decrypt("plain text", &a),
        Err(CipherError::Malformed(_))
    ));
    assert!(matches!(
        c.decrypt("enc:v1:%%%", &a),
        Err(CipherError::Malformed(_))
    ));
    assert!(matches!(
        c.decrypt("enc:v1:AQID", &a),
        Err(CipherError::Malformed(_))
    ));
    let mut v2 = vec![2u8];
    v2.extend_from_slice(&[0u8; 60]);
    assert!(matches!(
        c.decrypt_bytes(&v2, &a),
        Err(CipherError::UnsupportedFormat(2))
    ));
}

#[test]
fn unknown_and_retired_versions_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let c = cipher_at(dir.path());
    let org = Uuid::new_v4();
    let key = KeyId::org(org);
    let a = aad(org, "r");
    let bin = c.encrypt_bytes(b"v1 data", &a, key).unwrap();

    // a version the key never had
    let mut t = bin.clone();
    t[18..22].copy_from_slice(&7u32.to_be_bytes());
    let err = c.decrypt_bytes(&t, &a).unwrap_err();
    assert!(
        matches!(
            err,
            CipherError::Key(KeyError::UnknownKeyVersion {
                version: KeyVersion(7),
                current: KeyVersion(1),
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("has no version v7"), "{err}");

    // a key the store never had
    let mut t = bin.clone();
    t[2] ^= 0xff;
    assert!(matches!(
        c.decrypt_bytes(&t, &a),
        Err(CipherError::Key(KeyError::UnknownKey(_)))
    ));

    // rotate, retire v1: v1 values fail with KeyVersionRetired, and v1 cannot be current
    let store = c.store();
    assert_eq!(store.rotate(key).unwrap(), KeyVersion(2));
    assert_eq!(c.decrypt_bytes(&bin, &a).unwrap(), b"v1 data");
    assert!(matches!(
        store.retire(key, KeyVersion(2)),
        Err(KeyError::RetireCurrent { .. })
    ));
    store.retire(key, KeyVersion(1)).unwrap();
    store.retire(key, KeyVersion(1)).unwrap(); // idempotent
    assert!(matches!(
        c.decrypt_bytes(&bin, &a),
        Err(CipherError::Key(KeyError::KeyVersionRetired {
            version: KeyVersion(1),
            ..
        }))
    ));
}

#[test]
fn destroyed_key_fails_with_key_destroyed_and_leaves_no_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 1, Duration::from_secs(1));
    let c = FieldCipher::new(Arc::clone(&store));
    let subject = Uuid::new_v4();
    let key = KeyId::subject(subject);
    let org = Uuid::new_v4();
    let a = aad(org, "r");
    let ct1 = c.encrypt(b"alice@example.com", &a, key).unwrap();
    store.rotate(key).unwrap();
    let ct2 = c.encrypt(b"Alice Liddell", &a, key).unwrap();

    let path = dir.path().join(format!("subject-{subject}.json"));
    let before: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let wrapped: Vec<String> = before["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["wrapped"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(wrapped.len(), 2);

    let t = store.destroy(key).unwrap();
    assert_eq!(t.key_id, key);
    assert_eq!(t.versions_destroyed, vec![KeyVersion(1), KeyVersion(2)]);
    assert!(t.destroyed_at <= Utc::now());
    // idempotent: the first tombstone stays
    assert_eq!(store.destroy(key).unwrap(), t);

    for ct in [&ct1, &ct2] {
        let err = c.decrypt(ct, &a).unwrap_err();
        assert!(err.is_key_destroyed(), "{err:?}");
        assert!(err.to_string().contains("destroyed"), "{err}");
    }
    assert!(matches!(
        c.encrypt(b"new", &a, key),
        Err(CipherError::Key(KeyError::KeyDestroyed { .. }))
    ));

    // nothing of the wrapped keys is left anywhere in the store directory
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        for w in &wrapped {
            assert!(!text.contains(w.as_str()));
        }
    }
    let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(after["state"], "destroyed");
    assert!(after.get("versions").is_none());

    // a fresh process (new store, cold cache) cannot recover it either
    drop(c);
    drop(store);
    let store = store_at(dir.path(), 1, Duration::from_secs(1));
    let c = FieldCipher::new(Arc::clone(&store));
    assert!(c.decrypt(&ct1, &a).unwrap_err().is_key_destroyed());
    assert_eq!(store.tombstone(key).unwrap(), Some(t.clone()));
    let info = store.info(key).unwrap().unwrap();
    assert_eq!(info.destroyed, Some(t));
    assert_eq!(info.current, None);

    // destroying a key that never existed records a tombstone that blocks creation
    let never = KeyId::subject(Uuid::new_v4());
    assert!(store.destroy(never).unwrap().versions_destroyed.is_empty());
    assert!(matches!(
        store.current(never),
        Err(KeyError::KeyDestroyed { .. })
    ));
}

#[test]
fn rotation_under_concurrency_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 1, Duration::ZERO);
    let c = FieldCipher::new(Arc::clone(&store));
    let org = Uuid::new_v4();
    let key = KeyId::org(org);
    let done = Arc::new(AtomicBool::new(false));

    // before: values written under v1
    let before: Arc<Vec<(String, String, String)>> = Arc::new(
        (0..50)
            .map(|i| {
                let row = format!("before-{i}");
                let plain = format!("early {i}");
                let ct = c.encrypt(plain.as_bytes(), &aad(org, &row), key).unwrap();
                (row, plain, ct)
            })
            .collect(),
    );

    let workers: Vec<_> = (0..4)
        .map(|w| {
            let c = c.clone();
            let done = Arc::clone(&done);
            let before = Arc::clone(&before);
            std::thread::spawn(move || {
                let mut mine: Vec<(String, String, String)> = Vec::new();
                let mut i = 0u32;
                while !done.load(Ordering::Relaxed) || i < 50 {
                    let row = format!("w{w}-r{i}");
                    let plain = format!("value {w}/{i}");
                    let ct = c.encrypt(plain.as_bytes(), &aad(org, &row), key).unwrap();
                    assert_eq!(c.decrypt_string(&ct, &aad(org, &row)).unwrap(), plain);
                    // older values still decrypt, during rotation
                    if !mine.is_empty() {
                        let (r, p, old) = &mine[(i as usize * 7) % mine.len()];
                        assert_eq!(c.decrypt_string(old, &aad(org, r)).unwrap(), *p);
                    }
                    let (r, p, old) = &before[(i as usize * 13 + w) % before.len()];
                    assert_eq!(c.decrypt_string(old, &aad(org, r)).unwrap(), *p);
                    mine.push((row, plain, ct));
                    i += 1;
                }
                mine
            })
        })
        .collect();

    let mut last = KeyVersion(0);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        let _ = store.current(key).unwrap();
        last = store.rotate(key).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let mut all: Vec<(String, String, String)> = workers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.extend(before.iter().cloned());
    assert_eq!(last, KeyVersion(21));

    // after: every value decrypts, values span many versions
    let mut versions = std::collections::BTreeSet::new();
    for (row, plain, ct) in &all {
        assert_eq!(c.decrypt_string(ct, &aad(org, row)).unwrap(), *plain);
        versions.insert(cipher::header(ct).unwrap().version);
    }
    assert!(versions.len() > 1, "{versions:?}");

    // the re-encryption job moves all to the current version; then old versions retire
    let mut moved = Vec::new();
    for (row, plain, ct) in &all {
        let new = match c.reencrypt(ct, &aad(org, row)).unwrap() {
            Reencrypted::Rewritten(n) => n,
            Reencrypted::AlreadyCurrent => ct.clone(),
        };
        assert_eq!(cipher::header(&new).unwrap().version, last);
        assert!(matches!(
            c.reencrypt(&new, &aad(org, row)).unwrap(),
            Reencrypted::AlreadyCurrent
        ));
        moved.push((row, plain, new));
    }
    let info = store.info(key).unwrap().unwrap();
    for v in info.old_active_versions() {
        store.retire(key, v).unwrap();
    }
    for (row, plain, ct) in &moved {
        assert_eq!(c.decrypt_string(ct, &aad(org, row)).unwrap(), **plain);
    }
}

#[test]
fn concurrent_first_use_creates_one_key() {
    let dir = tempfile::tempdir().unwrap();
    // two stores over one directory (each with its own lock file handle, as two processes)
    let stores = [
        store_at(dir.path(), 1, Duration::from_secs(1)),
        store_at(dir.path(), 1, Duration::from_secs(1)),
    ];
    let store = Arc::clone(&stores[0]);
    let key = KeyId::subject(Uuid::new_v4());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&stores[i % 2]);
            std::thread::spawn(move || store.current(key).unwrap().0)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), KeyVersion(1));
    }
    let info = store.info(key).unwrap().unwrap();
    assert_eq!(info.versions.len(), 1);
}

#[test]
fn store_survives_reopen_and_files_are_private() {
    let data = tempfile::tempdir().unwrap();
    let config = KeysConfig::default();
    let org = Uuid::new_v4();
    let a = aad(org, "r1");
    let (ct_old, ct_new, pk) = {
        let keys = Keys::open_with_provider(
            data.path(),
            &config,
            Arc::new(LocalKeyProvider::from_file(&config.paths(data.path()).master_key).unwrap()),
        )
        .unwrap();
        let old = keys.cipher().encrypt(b"one", &a, KeyId::org(org)).unwrap();
        keys.store().rotate(KeyId::org(org)).unwrap();
        let new = keys.cipher().encrypt(b"two", &a, KeyId::org(org)).unwrap();
        (old, new, keys.signer().public_key())
    };

    let keys = Keys::open_with_provider(
        data.path(),
        &config,
        Arc::new(LocalKeyProvider::from_file(&config.paths(data.path()).master_key).unwrap()),
    )
    .unwrap();
    assert_eq!(keys.cipher().decrypt(&ct_old, &a).unwrap(), b"one");
    assert_eq!(keys.cipher().decrypt(&ct_new, &a).unwrap(), b"two");
    assert_eq!(keys.signer().public_key(), pk);
    let info = keys.store().info(KeyId::org(org)).unwrap().unwrap();
    assert_eq!(info.current, Some(KeyVersion(2)));

    let p = keys.paths();
    assert_eq!(mode(&p.dir), 0o700);
    assert_eq!(mode(&p.store), 0o700);
    assert_eq!(mode(&p.master_key), 0o600);
    assert_eq!(std::fs::read(&p.master_key).unwrap().len(), 32);
    assert_eq!(mode(&p.signing_key), 0o600);
    assert_eq!(mode(&p.pseudonym_key), 0o600);
    let key_file = p.store.join(format!("org-{org}.json"));
    assert_eq!(mode(&key_file), 0o600);
    // only the lock file and the key file: no temp files left
    let names: Vec<String> = std::fs::read_dir(&p.store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn wrong_master_key_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let org = Uuid::new_v4();
    let a = aad(org, "r");
    let ct = FieldCipher::new(store_at(dir.path(), 1, Duration::from_secs(1)))
        .encrypt(b"x", &a, KeyId::org(org))
        .unwrap();
    let wrong = FieldCipher::new(store_at(dir.path(), 2, Duration::from_secs(1)));
    let err = wrong.decrypt(&ct, &a).unwrap_err();
    assert!(
        matches!(err, CipherError::Key(KeyError::WrongMasterKey { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("wrong master key"), "{err}");
    // and no new data gets written under it
    assert!(matches!(
        wrong.encrypt(b"y", &a, KeyId::org(org)),
        Err(CipherError::Key(KeyError::WrongMasterKey { .. }))
    ));
}

#[test]
fn env_master_key_is_used_instead_of_the_file() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("keys").join("master.key");
    let b64 = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
    let p = LocalKeyProvider::from_env_value_or_file(
        "ORGBASE_MASTER_KEY",
        Some(zeroize::Zeroizing::new(b64)),
        &file,
    )
    .unwrap();
    assert!(!file.exists());
    assert_eq!(
        orgbase_keys::KeyProvider::kek_id(&p),
        orgbase_keys::KeyProvider::kek_id(&LocalKeyProvider::from_bytes(&[5u8; 32]).unwrap())
    );
    let bad = LocalKeyProvider::from_env_value_or_file(
        "ORGBASE_MASTER_KEY",
        Some(zeroize::Zeroizing::new("c2hvcnQ=".into())),
        &file,
    )
    .unwrap_err();
    assert!(matches!(bad, KeyError::MasterKey(_)), "{bad:?}");
    // empty value falls back to the file
    LocalKeyProvider::from_env_value_or_file(
        "ORGBASE_MASTER_KEY",
        Some(zeroize::Zeroizing::new(String::new())),
        &file,
    )
    .unwrap();
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn altered_key_files_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 1, Duration::ZERO);
    let key = KeyId::org(Uuid::new_v4());
    store.current(key).unwrap();
    store.rotate(key).unwrap();
    let path = dir.path().join(format!("org-{}.json", key.id));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();

    // swap the wrapped keys of v1 and v2: the AAD binding refuses both
    let w1 = v["versions"][0]["wrapped"].clone();
    v["versions"][0]["wrapped"] = v["versions"][1]["wrapped"].clone();
    v["versions"][1]["wrapped"] = w1;
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let fresh = store_at(dir.path(), 1, Duration::ZERO);
    assert!(matches!(
        fresh.get(key, KeyVersion(1)),
        Err(KeyError::UnwrapFailed { .. })
    ));
    // the long-lived store notices the change on its next check
    assert!(matches!(
        store.current(key),
        Err(KeyError::UnwrapFailed { .. })
    ));

    std::fs::write(&path, b"{not json").unwrap();
    let err = fresh.get(key, KeyVersion(1)).unwrap_err();
    assert!(matches!(err, KeyError::CorruptKeyFile { .. }), "{err:?}");

    // a key file deleted by hand is reported, not silently replaced by a new key
    let k2 = KeyId::org(Uuid::new_v4());
    store.current(k2).unwrap();
    std::fs::remove_file(dir.path().join(format!("org-{}.json", k2.id))).unwrap();
    let err = store.current(k2).unwrap_err();
    assert!(err.to_string().contains("removed outside orgbase"), "{err}");
    assert!(matches!(
        fresh.get(key, KeyVersion(1)),
        Err(KeyError::CorruptKeyFile { .. })
    ));
}

#[test]
fn another_process_sees_rotation_and_destruction() {
    let dir = tempfile::tempdir().unwrap();
    // two stores over one directory: the server and a CLI run
    let server = FieldCipher::new(store_at(dir.path(), 1, Duration::from_millis(20)));
    let cli = store_at(dir.path(), 1, Duration::from_millis(20));
    let subject = Uuid::new_v4();
    let key = KeyId::subject(subject);
    let org = Uuid::new_v4();
    let a = aad(org, "r");
    let ct = server.encrypt(b"pii", &a, key).unwrap();

    assert_eq!(cli.rotate(key).unwrap(), KeyVersion(2));
    std::thread::sleep(Duration::from_millis(40));
    let ct2 = server.encrypt(b"pii", &a, key).unwrap();
    assert_eq!(cipher::header(&ct2).unwrap().version, KeyVersion(2));
    assert_eq!(server.decrypt(&ct, &a).unwrap(), b"pii");

    cli.destroy(key).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    assert!(server.decrypt(&ct, &a).unwrap_err().is_key_destroyed());
    assert!(server.decrypt(&ct2, &a).unwrap_err().is_key_destroyed());
}

#[test]
fn listing_reports_age_and_rotation_due() {
    let data = tempfile::tempdir().unwrap();
    let config = KeysConfig::default();
    let keys = Keys::open_with_provider(
        data.path(),
        &config,
        Arc::new(LocalKeyProvider::from_bytes(&[1; 32]).unwrap()),
    )
    .unwrap();
    let a = KeyId::org(Uuid::new_v4());
    let b = KeyId::subject(Uuid::new_v4());
    keys.store().current(a).unwrap();
    keys.store().current(b).unwrap();
    keys.store().destroy(b).unwrap();

    let list = keys.store().list().unwrap();
    assert_eq!(list.len(), 2);
    let la = list.iter().find(|k| k.key == a).unwrap();
    assert_eq!(la.current, Some(KeyVersion(1)));
    let now = Utc::now();
    assert!(la.age(now).unwrap() >= chrono::Duration::zero());
    assert!(!la.rotation_due(config.rotation_max_age(), now));
    let later = now + chrono::Duration::days(91);
    assert!(la.rotation_due(config.rotation_max_age(), later));
    assert!(
        list.iter()
            .find(|k| k.key == b)
            .unwrap()
            .destroyed
            .is_some()
    );

    assert!(keys.rotate_due(now).unwrap().is_empty());
    let rotated = keys.rotate_due(later).unwrap();
    assert_eq!(rotated, vec![(a, KeyVersion(2))]);
}

fn signed_certificate(keys: &Keys) -> (Uuid, String) {
    let subject = Uuid::new_v4();
    let a = aad(Uuid::new_v4(), "r");
    keys.cipher()
        .encrypt(b"pii", &a, KeyId::subject(subject))
        .unwrap();
    let t = keys.shred_subject(subject).unwrap();
    let cert = keys
        .certify_deletion(
            subject,
            vec!["database".into(), "audit".into(), "backups".into()],
            &[t],
            "audit:42",
        )
        .unwrap();
    (subject, cert.to_json().unwrap())
}

fn open_keys(data: &Path) -> Keys {
    Keys::open_with_provider(
        data,
        &KeysConfig::default(),
        Arc::new(LocalKeyProvider::from_bytes(&[1; 32]).unwrap()),
    )
    .unwrap()
}

#[test]
fn certificate_signs_and_verifies_offline() {
    let data = tempfile::tempdir().unwrap();
    let keys = open_keys(data.path());
    let (subject, json) = signed_certificate(&keys);
    let pk = keys.signer().public_key();

    let cert = verify_certificate(&json, Some(&pk)).unwrap();
    assert_eq!(cert.subject, keys.pseudonymizer().pseudonym(subject));
    assert!(!cert.subject.contains(&subject.to_string()));
    assert_eq!(cert.keys_destroyed.len(), 1);
    assert_eq!(cert.keys_destroyed[0].key_id, KeyId::subject(subject));
    assert_eq!(cert.keys_destroyed[0].versions, vec![KeyVersion(1)]);
    assert_eq!(cert.audit_entry, "audit:42");
    assert_eq!(cert.stores_touched, ["database", "audit", "backups"]);

    // layout and key order do not matter: compact re-serialization still verifies
    let v: Value = serde_json::from_str(&json).unwrap();
    let compact = serde_json::to_string(&v).unwrap();
    verify_certificate(&compact, Some(&pk)).unwrap();
    // without a trusted key, the embedded key is used
    verify_certificate(&json, None).unwrap();
}

#[test]
fn certificate_tampering_is_named() {
    let data = tempfile::tempdir().unwrap();
    let keys = open_keys(data.path());
    let (_, json) = signed_certificate(&keys);
    let pk = keys.signer().public_key();
    let v: Value = serde_json::from_str(&json).unwrap();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut w = v.clone();
        f(&mut w);
        verify_certificate(&serde_json::to_string(&w).unwrap(), Some(&pk))
    };

    // well-formed but changed content: bad signature
    let other = keys.pseudonymizer().pseudonym(Uuid::new_v4());
    assert_eq!(
        edit(&|w| w["certificate"]["subject"] = Value::String(other.clone())),
        Err(CertificateError::BadSignature)
    );
    assert_eq!(
        edit(&|w| w["certificate"]["audit_entry"] = "audit:43".into()),
        Err(CertificateError::BadSignature)
    );
    assert_eq!(
        edit(&|w| w["certificate"]["keys_destroyed"] = Value::Array(vec![])),
        Err(CertificateError::BadSignature)
    );
    assert_eq!(
        edit(&|w| w["certificate"]["issued_at"] = "2020-01-01T00:00:00Z".into()),
        Err(CertificateError::BadSignature)
    );

    // malformed fields are named
    let field_of = |r: Result<_, CertificateError>| match r {
        Err(CertificateError::Malformed { field, .. }) => field,
        other => panic!("expected Malformed, got {other:?}"),
    };
    assert_eq!(
        field_of(edit(&|w| w["certificate"]["issued_at"] = "yesterday".into())),
        "certificate.issued_at"
    );
    assert_eq!(
        field_of(edit(&|w| w["certificate"]["subject"] = "alice".into())),
        "certificate.subject"
    );
    assert_eq!(
        field_of(edit(&|w| {
            w["certificate"]["keys_destroyed"][0]["key_id"] = "person:1".into()
        })),
        "certificate.keys_destroyed[0].key_id"
    );
    assert_eq!(
        field_of(edit(&|w| {
            w["certificate"]
                .as_object_mut()
                .unwrap()
                .remove("certificate_id");
        })),
        "certificate.certificate_id"
    );
    assert_eq!(
        field_of(edit(&|w| w["certificate"]["extra"] = 1.into())),
        "certificate.extra"
    );
    assert_eq!(
        field_of(edit(&|w| w["signature"] = "AAAA".into())),
        "signature"
    );
    assert_eq!(
        field_of(edit(
            &|w| w["certificate"]["issuer"]["key_id"] = "ed25519:00".into()
        )),
        "certificate.issuer.key_id"
    );
    assert!(matches!(
        edit(&|w| w["certificate"]["format"] = "other.v9".into()),
        Err(CertificateError::UnsupportedFormat(_))
    ));
    assert!(matches!(
        verify_certificate("not json", None),
        Err(CertificateError::NotJson(_))
    ));

    // signed by another server: verifies by itself, but not against the trusted key
    let other_data = tempfile::tempdir().unwrap();
    let other_keys = open_keys(other_data.path());
    let (_, foreign) = signed_certificate(&other_keys);
    verify_certificate(&foreign, None).unwrap();
    assert!(matches!(
        verify_certificate(&foreign, Some(&pk)),
        Err(CertificateError::UntrustedIssuer { .. })
    ));

    // another key's signature under this server's name: bad signature
    let mut forged: Value = serde_json::from_str(&foreign).unwrap();
    forged["certificate"]["issuer"] = v["certificate"]["issuer"].clone();
    assert_eq!(
        verify_certificate(&serde_json::to_string(&forged).unwrap(), Some(&pk)),
        Err(CertificateError::BadSignature)
    );
}

#[test]
fn master_key_rotation_rewraps_every_live_version() {
    let dir = tempfile::tempdir().unwrap();
    let org = Uuid::new_v4();
    let key = KeyId::org(org);
    let a = aad(org, "r");
    let (ct1, ct2) = {
        let c = FieldCipher::new(store_at(dir.path(), 1, Duration::ZERO));
        let ct1 = c.encrypt(b"one", &a, key).unwrap();
        c.store().rotate(key).unwrap();
        (ct1, c.encrypt(b"two", &a, key).unwrap())
    };
    let shredded = KeyId::subject(Uuid::new_v4());
    store_at(dir.path(), 1, Duration::ZERO)
        .destroy(shredded)
        .unwrap();

    let new_store = store_at(dir.path(), 2, Duration::ZERO);
    let old = LocalKeyProvider::from_bytes(&[1; 32]).unwrap();
    assert_eq!(new_store.rewrap_from(&old).unwrap(), 2);
    assert_eq!(new_store.rewrap_from(&old).unwrap(), 0); // resumable / idempotent
    let c = FieldCipher::new(Arc::clone(&new_store));
    assert_eq!(c.decrypt(&ct1, &a).unwrap(), b"one");
    assert_eq!(c.decrypt(&ct2, &a).unwrap(), b"two");
    // the old master key no longer opens the store
    let stale = FieldCipher::new(store_at(dir.path(), 1, Duration::ZERO));
    assert!(matches!(
        stale.decrypt(&ct1, &a),
        Err(CipherError::Key(KeyError::WrongMasterKey { .. }))
    ));
    assert!(new_store.tombstone(shredded).unwrap().is_some());
}
