//! The embedded PostgreSQL cluster: find the server binaries, `initdb` on first run, start and
//! stop with `pg_ctl`, one orgbase per data directory, and a watchdog that stops PostgreSQL if
//! orgbase itself dies.
//!
//! Layout under the data directory:
//!
//! ```text
//! orgbase.lock    held (flock) by the running orgbase; holds its pid
//! pg/             PGDATA (owned by the PostgreSQL OS user)
//! run/            the Unix socket (no TCP unless embedded.tcp_address is set)
//! log/            postgresql.log
//! secrets/        generated database passwords (0600)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use nix::unistd::{Gid, Uid, User};
use orgbase_core::config::EmbeddedConfig;

use crate::secrets;

/// The name of the cluster's bootstrap superuser.
pub const SUPERUSER: &str = "postgres";

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. \
Install PostgreSQL 15 or newer (Debian/Ubuntu: `apt-get install postgresql`; Fedora: \
`dnf install postgresql-server`; macOS: `brew install postgresql@16`), or point \
embedded.bin_dir (ORGBASE_EMBEDDED__BIN_DIR) at the directory that holds initdb, or use an \
existing server with --database-url.";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{INSTALL_HINT} Searched: {searched}")]
    BinariesNotFound { searched: String },
    #[error("PostgreSQL {found} at {dir} is too old: orgbase needs 15 or newer")]
    TooOld { found: String, dir: PathBuf },
    #[error(
        "data directory {dir} is in use by another orgbase process{pid}; stop it first or choose \
         another --data-dir"
    )]
    Locked { dir: PathBuf, pid: String },
    #[error(
        "orgbase runs as root, and PostgreSQL refuses to; the OS user `{user}` \
         (embedded.os_user) that should run it does not exist. Create it (useradd --system \
         {user}) or set embedded.os_user to an existing unprivileged user"
    )]
    NoOsUser { user: String },
    #[error(
        "the Unix socket path {path} is {len} bytes, over the system limit of 107; use a \
         shorter --data-dir"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// Where to look for the server binaries, injectable for tests.
#[derive(Debug, Clone)]
pub struct BinSearch {
    pub configured: Option<PathBuf>,
    /// The `PATH` to search.
    pub path: Option<String>,
    /// Roots like `/usr/lib/postgresql` whose `<version>/bin` are searched, newest first.
    pub versioned_roots: Vec<PathBuf>,
    /// Also ask `pg_config --bindir`.
    pub use_pg_config: bool,
}

impl BinSearch {
    /// The search a real installation does.
    pub fn system(configured: Option<PathBuf>) -> Self {
        Self {
            configured,
            path: std::env::var("PATH").ok(),
            versioned_roots: vec![
                PathBuf::from("/usr/lib/postgresql"),
                PathBuf::from("/usr/pgsql"),
            ],
            use_pg_config: true,
        }
    }

    /// Find a directory holding `initdb`, `pg_ctl` and `postgres` of version 15 or newer.
    pub fn find(&self) -> Result<PathBuf, ClusterError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = &self.configured {
            // An explicit setting is the only candidate: never silently use another install.
            candidates.push(dir.clone());
        } else {
            if let Some(path) = &self.path {
                candidates.extend(std::env::split_paths(path));
            }
            if self.use_pg_config
                && let Ok(out) = Command::new("pg_config").arg("--bindir").output()
                && out.status.success()
            {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                candidates.push(PathBuf::from(dir));
            }
            for root in &self.versioned_roots {
                let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                        Some((v, e.path().join("bin")))
                    })
                    .collect();
                versions.sort_by_key(|v| std::cmp::Reverse(v.0));
                candidates.extend(versions.into_iter().map(|(_, p)| p));
            }
        }
        for dir in &candidates {
            if ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| dir.join(b).is_file())
            {
                let dir = fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or_else(|| dir.clone());
                check_version(&dir)?;
                return Ok(dir);
            }
        }
        let searched = candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(ClusterError::BinariesNotFound {
            searched: if searched.is_empty() {
                "nothing".into()
            } else {
                searched
            },
        })
    }
}

fn check_version(dir: &Path) -> Result<(), ClusterError> {
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(io(format!("running {}/postgres --version", dir.display())))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "postgres (PostgreSQL) 15.18 (Debian ...)"
    let major = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m >= 15 => Ok(()),
        _ => Err(ClusterError::TooOld {
            found: text.trim().to_string(),
            dir: dir.to_path_buf(),
        }),
    }
}

/// The OS identity PostgreSQL runs as: ourselves, or an unprivileged user when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

impl RunAs {
    fn resolve(os_user: &str) -> Result<Option<Self>, ClusterError> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        match User::from_name(os_user) {
            Ok(Some(u)) if !u.uid.is_root() => Ok(Some(Self {
                uid: u.uid,
                gid: u.gid,
            })),
            _ => Err(ClusterError::NoOsUser {
                user: os_user.to_string(),
            }),
        }
    }
}

/// Paths of one data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    pub secrets: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Result<Self, ClusterError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(data_dir)
            .map_err(io(format!(
                "creating data directory {}",
                data_dir.display()
            )))?;
        let root = fs::canonicalize(data_dir).map_err(io(format!(
            "resolving data directory {}",
            data_dir.display()
        )))?;
        Ok(Self {
            pgdata: root.join("pg"),
            socket_dir: root.join("run"),
            log_file: root.join("log").join("postgresql.log"),
            secrets: root.join("secrets"),
            root,
        })
    }
}

/// A configured (not yet running) embedded cluster. Holding it holds the data-directory lock.
#[derive(Debug)]
pub struct Cluster {
    pub layout: Layout,
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    settings: EmbeddedConfig,
    /// Remove the whole data directory once PostgreSQL has stopped after orgbase exits (tests).
    ephemeral: bool,
    /// More postgresql.conf lines (WAL archiving, recovery), appended to orgbase.conf.
    extra_settings: String,
    _lock: File,
}

/// A started cluster. Dropping it stops PostgreSQL (fast shutdown) unless already stopped.
#[derive(Debug)]
pub struct RunningCluster {
    cluster: Cluster,
    watchdog: Option<Child>,
    stopped: bool,
}

impl Cluster {
    /// Lock the data directory and locate the binaries. Does not touch PostgreSQL yet.
    pub fn open(
        data_dir: &Path,
        settings: &EmbeddedConfig,
        search: &BinSearch,
    ) -> Result<Self, ClusterError> {
        let bin_dir = search.find()?;
        let run_as = RunAs::resolve(&settings.os_user)?;
        let layout = Layout::new(data_dir)?;
        let socket = layout
            .socket_dir
            .join(format!(".s.PGSQL.{}", settings.port));
        let len = socket.as_os_str().len();
        if len > 107 {
            return Err(ClusterError::SocketPathTooLong { path: socket, len });
        }
        if let Some(r) = run_as {
            check_reachable(&layout.root, r)?;
        }
        let lock = lock_data_dir(&layout.root)?;
        Ok(Self {
            layout,
            bin_dir,
            run_as,
            settings: settings.clone(),
            ephemeral: false,
            extra_settings: String::new(),
            _lock: lock,
        })
    }

    /// Delete the data directory after this process exits and PostgreSQL has stopped.
    pub fn set_ephemeral(&mut self) {
        self.ephemeral = true;
    }

    /// Lines added to the managed settings at every start (e.g. WAL archiving for backups).
    pub fn set_extra_settings(&mut self, text: impl Into<String>) {
        self.extra_settings = text.into();
    }

    /// The OS user PostgreSQL runs as when orgbase runs as root (files it must read or write
    /// are handed to it), or `None` when PostgreSQL runs as this process's user.
    pub fn os_user_ids(&self) -> Option<(u32, u32)> {
        self.run_as.map(|r| (r.uid.as_raw(), r.gid.as_raw()))
    }

    pub fn port(&self) -> u16 {
        self.settings.port
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    fn initialized(&self) -> bool {
        self.layout.pgdata.join("PG_VERSION").is_file()
    }

    /// Create the cluster on first run; returns whether it did.
    pub fn init_if_needed(&self) -> Result<bool, ClusterError> {
        if self.initialized() {
            return Ok(false);
        }
        tracing::info!(pgdata = %self.layout.pgdata.display(), "initializing embedded PostgreSQL cluster");
        for dir in [
            &self.layout.pgdata,
            &self.layout.socket_dir,
            self.layout.log_file.parent().unwrap_or(&self.layout.root),
        ] {
            self.make_owned_dir(dir, 0o700)?;
        }
        let password = secrets::get_or_create(&self.layout.secrets, SUPERUSER)?;
        // initdb reads the password from a file it can open as the PostgreSQL OS user.
        let pwfile = self.layout.pgdata.with_extension("pwfile");
        write_private(&pwfile, password.expose().as_bytes())?;
        self.chown(&pwfile)?;
        let result = self.run(
            "initdb",
            self.command("initdb")
                .arg("--pgdata")
                .arg(&self.layout.pgdata)
                .arg(format!("--username={SUPERUSER}"))
                .arg(format!("--pwfile={}", pwfile.display()))
                .args([
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--data-checksums",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]),
        );
        let _ = fs::remove_file(&pwfile);
        if let Err(e) = result {
            // Leave no half-made cluster behind: the next run starts over.
            let _ = fs::remove_dir_all(&self.layout.pgdata);
            return Err(e);
        }
        let conf = self.layout.pgdata.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io(format!("opening {}", conf.display())))?;
        writeln!(
            f,
            "\n# Settings managed by orgbase, rewritten at every start.\ninclude_if_exists = 'orgbase.conf'"
        )
        .map_err(io(format!("writing {}", conf.display())))?;
        Ok(true)
    }

    fn write_settings(&self) -> Result<(), ClusterError> {
        let s = &self.settings;
        let listen = s.tcp_address.map(|a| a.to_string()).unwrap_or_default();
        let text = format!(
            "# Written by orgbase at every start; edit orgbase.toml [embedded] instead.\n\
             listen_addresses = '{listen}'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             unix_socket_permissions = 0700\n\
             max_connections = {maxc}\n\
             shared_buffers = '{sb}'\n\
             password_encryption = 'scram-sha-256'\n\
             wal_level = 'replica'\n\
             log_min_duration_statement = 100\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_timezone = 'UTC'\n\
             timezone = 'UTC'\n",
            port = s.port,
            socket = self.layout.socket_dir.display(),
            maxc = s.max_connections,
            sb = s.shared_buffers,
        );
        let text = if self.extra_settings.is_empty() {
            text
        } else {
            format!("{text}{}\n", self.extra_settings.trim_end())
        };
        let path = self.layout.pgdata.join("orgbase.conf");
        fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        self.chown(&path)
    }

    /// Start PostgreSQL, first stopping one left running by an orgbase that died.
    pub fn start(self) -> Result<RunningCluster, ClusterError> {
        self.init_if_needed()?;
        self.make_owned_dir(&self.layout.socket_dir, 0o700)?;
        self.make_owned_dir(
            self.layout.log_file.parent().unwrap_or(&self.layout.root),
            0o700,
        )?;
        self.write_settings()?;
        if self.pg_ctl_status_running() {
            tracing::warn!(
                "an embedded PostgreSQL from an earlier orgbase run is still up; restarting it"
            );
            self.pg_ctl_stop()?;
        }
        self.launch()?;
        let watchdog = self.spawn_watchdog();
        tracing::info!(socket = %self.layout.socket_dir.display(), "embedded PostgreSQL started");
        Ok(RunningCluster {
            cluster: self,
            watchdog,
            stopped: false,
        })
    }

    /// `pg_ctl start`, waiting until PostgreSQL accepts connections (after crash recovery, if
    /// it needs one).
    fn launch(&self) -> Result<(), ClusterError> {
        let started = self.run(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("start")
                .arg("--pgdata")
                .arg(&self.layout.pgdata)
                .arg("--log")
                .arg(&self.layout.log_file)
                .args(["--wait", "--timeout=120", "--silent"]),
        );
        if let Err(e) = started {
            let tail = tail_of(&self.layout.log_file, 20);
            return Err(ClusterError::Command {
                what: "starting the embedded PostgreSQL".into(),
                detail: format!(
                    "{e}\nlast lines of {}:\n{tail}",
                    self.layout.log_file.display()
                ),
            });
        }
        Ok(())
    }

    fn pg_ctl_status_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("status")
            .arg("--pgdata")
            .arg(&self.layout.pgdata)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn pg_ctl_stop(&self) -> Result<(), ClusterError> {
        self.run(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("stop")
                .arg("--pgdata")
                .arg(&self.layout.pgdata)
                .args(["--mode=fast", "--wait", "--timeout=60", "--silent"]),
        )
        .map(|_| ())
    }

    /// A shell that outlives orgbase only long enough to stop PostgreSQL when orgbase dies
    /// without stopping it (kill -9, abort, a test process ending). It signals only the
    /// postmaster this process started, and is killed when orgbase stops PostgreSQL itself.
    fn spawn_watchdog(&self) -> Option<Child> {
        let postmaster = postmaster_pid(&self.layout.pgdata)?.to_string();
        let script = r#"
            trap 'exit 0' TERM
            while kill -0 "$1" 2>/dev/null; do sleep 1; done
            if [ "$(head -n 1 "$3" 2>/dev/null)" = "$2" ] && kill -INT "$2" 2>/dev/null; then
                i=0
                while kill -0 "$2" 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done
            fi
            [ "$4" = remove ] && rm -rf -- "$5"
            exit 0
        "#;
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("orgbase-watchdog")
            .arg(std::process::id().to_string())
            .arg(&postmaster)
            .arg(self.layout.pgdata.join("postmaster.pid"))
            .arg(if self.ephemeral { "remove" } else { "keep" })
            .arg(&self.layout.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => Some(child),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the PostgreSQL watchdog");
                None
            }
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.env_remove("PGDATA")
            .env("LC_ALL", "C")
            .current_dir(&self.layout.root)
            .stdin(Stdio::null());
        if let Some(r) = self.run_as {
            cmd.uid(r.uid.as_raw()).gid(r.gid.as_raw());
        }
        cmd
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<Output, ClusterError> {
        let out = cmd.output().map_err(io(format!("running {what}")))?;
        if out.status.success() {
            Ok(out)
        } else {
            let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            Err(ClusterError::Command {
                what: what.to_string(),
                detail: format!("{} ({})", detail, out.status),
            })
        }
    }

    fn make_owned_dir(&self, dir: &Path, mode: u32) -> Result<(), ClusterError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(io(format!("setting permissions of {}", dir.display())))?;
        self.chown(dir)
    }

    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some(r) = self.run_as {
            std::os::unix::fs::chown(path, Some(r.uid.as_raw()), Some(r.gid.as_raw()))
                .map_err(io(format!("changing the owner of {}", path.display())))?;
        }
        Ok(())
    }
}

impl RunningCluster {
    pub fn layout(&self) -> &Layout {
        &self.cluster.layout
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The postmaster's process id, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        postmaster_pid(&self.cluster.layout.pgdata)
    }

    /// Start PostgreSQL again after its postmaster died: crash recovery replays the WAL, so
    /// every committed transaction is there. Waits until it accepts connections.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.dismiss_watchdog();
        self.cluster.launch()?;
        self.watchdog = self.cluster.spawn_watchdog();
        tracing::info!("embedded PostgreSQL restarted");
        Ok(())
    }

    /// Stop PostgreSQL (fast shutdown: open transactions roll back, everything committed stays).
    pub fn stop(mut self) -> Result<(), ClusterError> {
        self.stopped = true;
        self.dismiss_watchdog();
        self.cluster.pg_ctl_stop()?;
        tracing::info!("embedded PostgreSQL stopped");
        Ok(())
    }
}

/// The first line of `postmaster.pid`: the postmaster's process id.
fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// How a postmaster ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostmasterExit {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it (9: `kill -9`, the kernel's OOM killer).
    Signaled(i32),
    /// It is gone, but it was not this process's child, so how it ended is not known.
    Unknown,
}

impl PostmasterExit {
    /// As a shell reports it: the status, or 128 + the signal; -1 when unknown.
    pub fn code(self) -> i64 {
        match self {
            PostmasterExit::Exited(c) => i64::from(c),
            PostmasterExit::Signaled(s) => 128 + i64::from(s),
            PostmasterExit::Unknown => -1,
        }
    }
}

impl std::fmt::Display for PostmasterExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostmasterExit::Exited(c) => write!(f, "exited with status {c}"),
            PostmasterExit::Signaled(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                write!(f, "was killed by signal {s}{name}")
            }
            PostmasterExit::Unknown => write!(f, "exited (status unknown)"),
        }
    }
}

/// Make this process the parent of the postmasters it starts (`pg_ctl` leaves them to be adopted):
/// then [`wait_for_exit`] learns how one ended. Linux only; elsewhere the status stays unknown.
pub fn adopt_postmasters() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot adopt the PostgreSQL postmaster; its exit status will be unknown");
    }
}

/// Block until process `pid` (a postmaster) has ended, and say how. A child of this process
/// ([`adopt_postmasters`]) is reaped with its status; another is watched until it is gone.
pub fn wait_for_exit(pid: i32) -> PostmasterExit {
    use nix::sys::wait::{WaitStatus, waitpid};
    let target = nix::unistd::Pid::from_raw(pid);
    loop {
        match waitpid(target, None) {
            Ok(WaitStatus::Exited(_, code)) => return PostmasterExit::Exited(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return PostmasterExit::Signaled(sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    // Not our child: poll until it is gone (a zombie left to another parent counts as gone).
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let alive = match state {
            Some(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|st| st != "Z" && st != "X"),
            None => {
                nix::sys::signal::kill(target, None).is_ok() && !Path::new("/proc/self").exists()
            }
        };
        if !alive {
            return PostmasterExit::Unknown;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

impl RunningCluster {
    fn dismiss_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for RunningCluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.dismiss_watchdog();
        if let Err(e) = self.cluster.pg_ctl_stop() {
            tracing::warn!(error = %e, "stopping the embedded PostgreSQL");
        }
    }
}

/// PostgreSQL runs as another OS user: every directory above the data directory must let it pass.
fn check_reachable(root: &Path, r: RunAs) -> Result<(), ClusterError> {
    use std::os::unix::fs::MetadataExt;
    for dir in root.ancestors() {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let passable = meta.uid() == r.uid.as_raw()
            || meta.mode() & 0o001 != 0
            || (meta.gid() == r.gid.as_raw() && meta.mode() & 0o010 != 0);
        if !passable {
            return Err(ClusterError::Command {
                what: "preparing the data directory".into(),
                detail: format!(
                    "PostgreSQL runs as an unprivileged OS user (embedded.os_user), which cannot \
                     enter {} (mode {:o}); choose a --data-dir outside it or allow traversal \
                     (chmod o+x {})",
                    dir.display(),
                    meta.mode() & 0o7777,
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

fn lock_data_dir(root: &Path) -> Result<File, ClusterError> {
    let path = root.join("orgbase.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(io("truncating the lock file"))?;
            file.rewind().map_err(io("rewinding the lock file"))?;
            write!(file, "{}", std::process::id()).map_err(io("writing the lock file"))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(ClusterError::Locked {
                dir: root.to_path_buf(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(format!("locking {}", path.display()))(e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("writing {}", path.display())))
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_give_the_install_hint() {
        let empty = std::env::temp_dir().join(format!("orgbase-nobin-{}", std::process::id()));
        fs::create_dir_all(&empty).unwrap();
        let search = BinSearch {
            configured: None,
            path: Some(empty.display().to_string()),
            versioned_roots: vec![empty.clone()],
            use_pg_config: false,
        };
        let err = search.find().unwrap_err().to_string();
        assert!(err.contains("apt-get install postgresql"), "{err}");
        assert!(err.contains("embedded.bin_dir"), "{err}");
        assert!(err.contains(&empty.display().to_string()), "{err}");
        let configured = BinSearch {
            configured: Some(empty.clone()),
            ..search
        };
        assert!(matches!(
            configured.find(),
            Err(ClusterError::BinariesNotFound { .. })
        ));
        fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn system_search_finds_postgres() {
        let dir = BinSearch::system(None).find().unwrap();
        assert!(dir.join("initdb").is_file());
    }
}
