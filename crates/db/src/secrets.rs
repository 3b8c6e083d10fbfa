//! Generated credentials kept in `<data_dir>/secrets/<name>` (directory 0700, files 0600).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use orgbase_core::Secret;

use crate::cluster::ClusterError;

fn io(context: String) -> impl FnOnce(std::io::Error) -> ClusterError {
    move |source| ClusterError::Io { context, source }
}

/// A fresh random secret: 32 bytes from the system CSPRNG, hex encoded.
pub fn generate() -> Result<Secret, ClusterError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| ClusterError::Command {
        what: "generating a random secret".into(),
        detail: "the system random generator failed".into(),
    })?;
    Ok(Secret::new(hex::encode(bytes)))
}

pub fn read(dir: &Path, name: &str) -> Result<Option<Secret>, ClusterError> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(Secret::new(text.trim().to_string()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

pub fn write(dir: &Path, name: &str, secret: &Secret) -> Result<(), ClusterError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(secret.expose().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))
}

pub fn get_or_create(dir: &Path, name: &str) -> Result<Secret, ClusterError> {
    if let Some(s) = read(dir, name)? {
        return Ok(s);
    }
    let s = generate()?;
    write(dir, name, &s)?;
    Ok(s)
}
