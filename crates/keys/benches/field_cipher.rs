//! Field encryption cost for a 1 KiB value: `cargo bench -p orgbase-keys --bench field_cipher`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmarks fail loudly

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orgbase_keys::{FieldAad, FieldCipher, KeyId, KeyStore, LocalKeyProvider, StoreConfig};
use uuid::Uuid;

fn field_cipher(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(LocalKeyProvider::from_bytes(&[7u8; 32]).unwrap());
    let store = Arc::new(KeyStore::open(dir.path(), provider, StoreConfig::default()).unwrap());
    let cipher = FieldCipher::new(store);
    let org = Uuid::new_v4();
    let row = Uuid::now_v7().to_string();
    let aad = FieldAad {
        org,
        table: "notes",
        column: "body",
        row: &row,
    };
    let key = KeyId::org(org);
    let value = vec![b'x'; 1024];
    let text = cipher.encrypt(&value, &aad, key).unwrap();
    let bytes = cipher.encrypt_bytes(&value, &aad, key).unwrap();

    let mut g = c.benchmark_group("field_1KiB");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("encrypt_text", |b| {
        b.iter(|| cipher.encrypt(black_box(&value), &aad, key).unwrap())
    });
    g.bench_function("decrypt_text", |b| {
        b.iter(|| cipher.decrypt(black_box(&text), &aad).unwrap())
    });
    g.bench_function("encrypt_bytes", |b| {
        b.iter(|| cipher.encrypt_bytes(black_box(&value), &aad, key).unwrap())
    });
    g.bench_function("decrypt_bytes", |b| {
        b.iter(|| cipher.decrypt_bytes(black_box(&bytes), &aad).unwrap())
    });
    g.finish();
}

criterion_group!(benches, field_cipher);
criterion_main!(benches);
