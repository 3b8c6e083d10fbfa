//! What the console's test suites share: a server's key store and backup store, as `serve`
//! gives them.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orgbase_http::Services;
use orgbase_testkit::TestDb;

/// Give `services` a key store (field encryption on) and a backup store under `dir`, backing up
/// `db` as the backup role; the field encryption, for a second server over the same database.
pub async fn with_stores(
    services: &mut Services,
    db: &TestDb,
    dir: &Path,
) -> orgbase_db::fields::Fields {
    let keys =
        Arc::new(orgbase_keys::Keys::open(dir, &orgbase_keys::KeysConfig::default()).unwrap());
    let fields = orgbase_db::fields::Fields::new(keys, true);
    services.fields = fields.clone();
    let backups = orgbase_backup::Backups {
        store: orgbase_backup::Store::open(&dir.join("backups").display().to_string()).unwrap(),
        keys: orgbase_backup::KeySource::Dir(dir.join("backup-keys")),
        bin_dir: orgbase_testkit::bin_dir(),
        zstd_level: 3,
        zstd_threads: 1,
        key_max_age: Duration::from_secs(90 * 86_400),
    };
    let login = orgbase_backup::service::Login::Url(Box::new(db.backup_login().await));
    services.backups = Some(Arc::new(orgbase_backup::service::BackupService::new(
        backups,
        login,
        Default::default(),
        true,
    )));
    fields
}
