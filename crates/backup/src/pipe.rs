//! The streaming pipelines: bytes → zstd → encryption → store, and back, with progress and
//! child processes (pg_dump, pg_restore, pg_basebackup, tar) on either end.

use std::io::{self, Read, Write};
use std::process::{Child, ChildStderr};
use std::thread::JoinHandle;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::BackupError;
use crate::format::{DecryptReader, EncryptWriter, Hashing, format_error};
use crate::keys::{KeyRing, MasterKey};
use crate::store::{ChannelReader, ChannelWriter};

/// A progress bar on stderr showing bytes and rate; invisible when stderr is not a terminal.
pub fn progress(len: Option<u64>, message: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {msg} {bytes} {binary_bytes_per_sec} {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(message.to_string());
    pb
}

/// Copy with a progress bar; returns the bytes copied.
pub fn copy<R: Read + ?Sized, W: Write + ?Sized>(
    reader: &mut R,
    writer: &mut W,
    pb: &ProgressBar,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
        pb.inc(n as u64);
    }
}

/// Counts bytes written through it.
#[derive(Debug)]
pub struct Counting<W> {
    pub inner: W,
    pub bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sizes and checksum of one stored object.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
}

/// The writing end: zstd → segments → SHA-256 → upload.
pub struct Sink {
    z: zstd::stream::write::Encoder<'static, Counting<EncryptWriter<Hashing<ChannelWriter>>>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    pub fn new(
        upload: ChannelWriter,
        object_id: &str,
        key: &MasterKey,
        level: i32,
        threads: u32,
    ) -> io::Result<Self> {
        let enc = EncryptWriter::new(Hashing::new(upload), object_id, key)?;
        let mut z = zstd::stream::write::Encoder::new(
            Counting {
                inner: enc,
                bytes: 0,
            },
            level,
        )?;
        if threads > 1 {
            z.multithread(threads)?;
        }
        Ok(Self { z })
    }

    /// Finish compression, encryption and the upload; `raw_bytes` is what went in.
    pub fn finish(self, raw_bytes: u64) -> io::Result<Stats> {
        let counted = self.z.finish()?;
        let hashing = counted.inner.finish()?;
        let (sha256, stored_bytes, upload) = hashing.finish();
        upload.finish()?;
        Ok(Stats {
            raw_bytes,
            compressed_bytes: counted.bytes,
            stored_bytes,
            sha256,
        })
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.z.write(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.z.flush()
    }
}

/// The reading end: download → SHA-256 → segments → zstd.
pub struct Source {
    z: zstd::stream::read::Decoder<'static, io::BufReader<DecryptReader<Hashing<ChannelReader>>>>,
    plain: u64,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").finish_non_exhaustive()
    }
}

impl Source {
    pub fn new(download: ChannelReader, ring: &KeyRing) -> io::Result<Self> {
        let dec = DecryptReader::new(Hashing::new(download), ring)?;
        Ok(Self {
            z: zstd::stream::read::Decoder::with_buffer(io::BufReader::with_capacity(
                1 << 20,
                dec,
            ))?,
            plain: 0,
        })
    }

    /// After reading to the end: the plaintext size, the stored size and its checksum; fails
    /// on trailing bytes.
    pub fn finish(self) -> io::Result<(u64, u64, String)> {
        let plain = self.plain;
        let dec = self.z.finish().into_inner();
        let mut hashing = dec.into_inner();
        let mut extra = [0u8; 1];
        if hashing.read(&mut extra)? > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "trailing data after the final segment",
            ));
        }
        let (sha, bytes, _) = hashing.finish();
        Ok((plain, bytes, sha))
    }
}

impl Read for Source {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.z.read(out)?;
        self.plain += n as u64;
        Ok(n)
    }
}

/// Turn an I/O error of a pipeline into a message naming the object.
pub fn object_error(object: &str, e: io::Error) -> BackupError {
    match format_error(&e) {
        Some(f) => BackupError::Verify(format!("{object}: {f}")),
        None => BackupError::Io {
            context: format!("streaming {object}"),
            source: e,
        },
    }
}

/// Collect a child's stderr in a thread (so it can never block the child).
pub fn collect_stderr(stderr: Option<ChildStderr>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s);
        }
        s
    })
}

/// Wait for `child`; a failure becomes an error with its stderr.
pub fn wait(what: &str, mut child: Child, stderr: JoinHandle<String>) -> Result<(), BackupError> {
    let status = child
        .wait()
        .map_err(BackupError::io(format!("waiting for {what}")))?;
    let text = stderr.join().unwrap_or_default();
    if status.success() {
        if !text.trim().is_empty() {
            tracing::debug!(what, stderr = %text.trim(), "child process output");
        }
        Ok(())
    } else {
        Err(BackupError::Command {
            what: what.to_string(),
            detail: format!("{} ({status})", text.trim()),
        })
    }
}

/// Kill a child that is no longer wanted (a later stage failed).
pub fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Run `cmd` (stdout piped) and stream its output through a [`Sink`] into `upload`. The command
/// must succeed before the object is completed; on any failure the child is killed. Blocking.
#[allow(clippy::too_many_arguments)]
pub fn command_to_object(
    what: &str,
    mut cmd: std::process::Command,
    upload: ChannelWriter,
    object_id: &str,
    object: &str,
    key: &MasterKey,
    (level, threads): (i32, u32),
    pb: &ProgressBar,
) -> Result<Stats, BackupError> {
    let mut child = cmd
        .spawn()
        .map_err(BackupError::io(format!("starting {what}")))?;
    let stderr = collect_stderr(child.stderr.take());
    let Some(mut out) = child.stdout.take() else {
        kill(child);
        return Err(BackupError::Invalid(format!("{what} has no stdout")));
    };
    let mut sink = match Sink::new(upload, object_id, key, level, threads) {
        Ok(s) => s,
        Err(e) => {
            kill(child);
            return Err(object_error(object, e));
        }
    };
    let raw = match copy(&mut out, &mut sink, pb) {
        Ok(n) => n,
        Err(e) => {
            kill(child);
            return Err(object_error(object, e));
        }
    };
    wait(what, child, stderr)?;
    let stats = sink.finish(raw).map_err(|e| object_error(object, e))?;
    pb.finish_and_clear();
    Ok(stats)
}
