//! Small, careful file operations for key material: private directories (0700), files created
//! 0600, atomic replacement (temp file + fsync + rename + fsync of the directory) and
//! create-once secrets that two processes starting at the same time cannot both create.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::KeyError;

/// Maps an I/O error to [`KeyError::Io`] with a sentence saying what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> KeyError {
    let context = context.into();
    move |source| KeyError::Io { context, source }
}

/// Creates `dir` (and its parents) with mode 0700, and tightens an existing one to 0700.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), KeyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    let meta = fs::metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("setting mode 0700 on {}", dir.display())))?;
    }
    Ok(())
}

/// fsyncs a directory so that a rename or unlink inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing directory {}", dir.display())))
}

/// A temp file name next to `path` that no other writer uses at the same time.
fn temp_path(path: &Path) -> Result<PathBuf, KeyError> {
    let mut r = [0u8; 8];
    aws_lc_rs::rand::fill(&mut r).map_err(|_| KeyError::Random)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        hex::encode(r)
    )))
}

fn write_new_0600(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", path.display())))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `bytes` atomically and durably: a reader sees the old or the new
/// content, never a mix, and after return the new content survives a crash.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = temp_path(path)?;
    if let Err(e) = write_new_0600(&tmp, bytes) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        ))(e));
    }
    sync_dir(parent(path))
}

/// Refuses a secret file that other users can read or write (like ssh does).
pub(crate) fn check_private_file(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(io(format!("reading {}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads the secret at `path`; creates it with `generate` first if it does not exist. Creation
/// is atomic and exclusive (temp file, then `link`, which fails if another process won the
/// race, in which case its secret is read), so every process ends up with the same secret.
pub(crate) fn read_or_create_secret(
    path: &Path,
    generate: impl FnOnce() -> Result<Zeroizing<Vec<u8>>, KeyError>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    match fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            check_private_file(path)?;
            return Ok(bytes);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    }
    ensure_private_dir(parent(path))?;
    let secret = generate()?;
    let tmp = temp_path(path)?;
    write_new_0600(&tmp, &secret)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(parent(path))?;
            Ok(secret)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let bytes =
                Zeroizing::new(fs::read(path).map_err(io(format!("reading {}", path.display())))?);
            check_private_file(path)?;
            Ok(bytes)
        }
        Err(e) => Err(io(format!("creating {}", path.display()))(e)),
    }
}

/// Random bytes from the system CSPRNG.
pub(crate) fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, KeyError> {
    let mut out = Zeroizing::new([0u8; N]);
    aws_lc_rs::rand::fill(out.as_mut()).map_err(|_| KeyError::Random)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_is_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // no temp files left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn secret_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("s.key");
        let a = read_or_create_secret(&p, || Ok(Zeroizing::new(vec![1; 32]))).unwrap();
        let b = read_or_create_secret(&p, || Ok(Zeroizing::new(vec![2; 32]))).unwrap();
        assert_eq!(*a, *b);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.key");
        fs::write(&p, [0u8; 32]).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_or_create_secret(&p, || unreachable!()).unwrap_err();
        assert!(matches!(
            err,
            KeyError::InsecurePermissions { mode: 0o644, .. }
        ));
    }
}
