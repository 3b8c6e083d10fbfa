//! Where backup objects live: a local directory, or an S3-compatible bucket (cargo feature
//! `s3`), both through `object_store`. Large objects stream through bounded channels between the
//! blocking pipeline (pg_dump → zstd → encryption) and the async store, never whole in memory.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use orgbase_core::config::S3Config;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::BackupError;

const CHUNK: usize = 8 << 20;

/// A backup store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    location: String,
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

/// An object's name and size.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub size: u64,
}

fn store_err(location: &str) -> impl Fn(object_store::Error) -> BackupError + '_ {
    move |e| BackupError::Store(format!("{location}: {e}"))
}

impl Store {
    /// Open `location`: a directory path (created if missing) or `s3://bucket[/prefix]`, the
    /// latter configured by the `AWS_*` environment only.
    pub fn open(location: &str) -> Result<Self, BackupError> {
        Self::open_with(location, &S3Config::default())
    }

    /// Open `location`; an `s3://` store takes its endpoint, region and credentials from `s3`,
    /// and what that leaves unset from the `AWS_*` environment.
    pub fn open_with(location: &str, s3: &S3Config) -> Result<Self, BackupError> {
        if let Some(rest) = location.strip_prefix("s3://") {
            return Self::open_s3(location, rest, s3);
        }
        if location.contains("://") {
            return Err(BackupError::Invalid(format!(
                "backup store `{location}`: use a directory path or s3://bucket/prefix"
            )));
        }
        let dir = PathBuf::from(location);
        std::fs::create_dir_all(&dir).map_err(BackupError::io(format!(
            "creating backup directory {}",
            dir.display()
        )))?;
        let dir = std::fs::canonicalize(&dir)
            .map_err(BackupError::io(format!("resolving {}", dir.display())))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(store_err(location))?;
        Ok(Self {
            inner: Arc::new(fs),
            location: dir.display().to_string(),
            local_root: Some(dir),
        })
    }

    #[cfg(feature = "s3")]
    fn open_s3(location: &str, rest: &str, config: &S3Config) -> Result<Self, BackupError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BackupError::Invalid(format!(
                "backup store `{location}`: no bucket name"
            )));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if config.allow_http {
            builder = builder.with_allow_http(true);
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret.expose());
        }
        // object_store's errors name the bucket, endpoint and URL, never the credentials.
        let s3 = builder.build().map_err(store_err(location))?;
        let inner: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                s3,
                prefix.trim_matches('/'),
            ))
        };
        Ok(Self {
            inner,
            location: location.to_string(),
            local_root: None,
        })
    }

    #[cfg(not(feature = "s3"))]
    fn open_s3(location: &str, _rest: &str, _config: &S3Config) -> Result<Self, BackupError> {
        Err(BackupError::Invalid(format!(
            "backup store `{location}`: this orgbase was built without S3 support (cargo feature `s3`)"
        )))
    }

    /// Where it is, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The directory of a local store.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    pub async fn put_bytes(&self, name: &str, data: Vec<u8>) -> Result<(), BackupError> {
        self.inner
            .put(&ObjPath::from(name), PutPayload::from(data))
            .await
            .map_err(store_err(&self.location))?;
        Ok(())
    }

    /// A whole (small) object, or `None` when it does not exist.
    pub async fn get_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, BackupError> {
        match self.inner.get(&ObjPath::from(name)).await {
            Ok(r) => Ok(Some(
                r.bytes().await.map_err(store_err(&self.location))?.to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&self.location)(e)),
        }
    }

    pub async fn exists(&self, name: &str) -> Result<bool, BackupError> {
        match self.inner.head(&ObjPath::from(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(&self.location)(e)),
        }
    }

    /// Every object under `prefix`, sorted by name.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Entry>, BackupError> {
        let p = ObjPath::from(prefix);
        let mut stream = self.inner.list(Some(&p));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(store_err(&self.location))?;
            out.push(Entry {
                name: meta.location.to_string(),
                size: meta.size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn delete(&self, name: &str) -> Result<(), BackupError> {
        match self.inner.delete(&ObjPath::from(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(&self.location)(e)),
        }
    }

    /// A blocking writer for a new object, and the task uploading it. The object appears only
    /// when [`ChannelWriter::finish`] was called and the task succeeded.
    pub async fn writer(
        &self,
        name: &str,
    ) -> Result<(ChannelWriter, JoinHandle<Result<(), BackupError>>), BackupError> {
        let upload = self
            .inner
            .put_multipart(&ObjPath::from(name))
            .await
            .map_err(store_err(&self.location))?;
        let (tx, mut rx) = mpsc::channel::<Msg>(4);
        let location = format!("{}/{name}", self.location);
        let task = tokio::spawn(async move {
            let mut w = WriteMultipart::new_with_chunk_size(upload, CHUNK);
            let err = |e: object_store::Error| BackupError::Store(format!("{location}: {e}"));
            loop {
                match rx.recv().await {
                    Some(Msg::Data(b)) => {
                        if let Err(e) = w.wait_for_capacity(4).await {
                            let _ = w.abort().await;
                            return Err(err(e));
                        }
                        w.put(b);
                    }
                    Some(Msg::Done) => {
                        w.finish().await.map_err(err)?;
                        return Ok(());
                    }
                    None => {
                        let _ = w.abort().await;
                        return Err(BackupError::Store(format!("{location}: upload abandoned")));
                    }
                }
            }
        });
        Ok((
            ChannelWriter {
                tx,
                buf: BytesMut::with_capacity(CHUNK),
            },
            task,
        ))
    }

    /// A blocking reader of an object.
    pub async fn reader(&self, name: &str) -> Result<ChannelReader, BackupError> {
        let got = match self.inner.get(&ObjPath::from(name)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackupError::NotFound(format!(
                    "{}/{name} does not exist",
                    self.location
                )));
            }
            Err(e) => return Err(store_err(&self.location)(e)),
        };
        let mut stream = got.into_stream();
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                let item = chunk.map_err(io::Error::other);
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(ChannelReader {
            rx,
            cur: Bytes::new(),
        })
    }
}

enum Msg {
    Data(Bytes),
    Done,
}

/// The blocking end of an upload. Dropping it without `finish` abandons the upload.
pub struct ChannelWriter {
    tx: mpsc::Sender<Msg>,
    buf: BytesMut,
}

impl std::fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelWriter").finish_non_exhaustive()
    }
}

impl ChannelWriter {
    fn send(&mut self, msg: Msg) -> io::Result<()> {
        self.tx
            .blocking_send(msg)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Complete the object.
    pub fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let b = self.buf.split().freeze();
            self.send(Msg::Data(b))?;
        }
        self.send(Msg::Done)
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            let b = self.buf.split().freeze();
            self.send(Msg::Data(b))?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The blocking end of a download.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl std::fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReader").finish_non_exhaustive()
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}
