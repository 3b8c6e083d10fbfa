//! A real S3-compatible server for tests of `s3://` backup stores: moto's server mode
//! (`pip install 'moto[server]'`), started on a free localhost port and stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the tests print, and CI's logs show, when there is no server to test against.
pub const SKIP_MESSAGE: &str = "skipped: moto_server not found (pip install 'moto[server]')";

/// A running `moto_server`; killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
    child: Child,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

impl S3Server {
    /// Start `moto_server`, or print [`SKIP_MESSAGE`] and return `None` when it is not installed.
    pub fn start() -> Option<Self> {
        if !on_path("moto_server") {
            // Straight to stderr, past the test harness's capture, so the skip shows in CI logs.
            let _ = writeln!(std::io::stderr(), "{SKIP_MESSAGE}");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("starting moto_server");
        // Started when it answers; a Python server takes a second or two to import.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().expect("moto_server status") {
                panic!("moto_server exited at start ({status}); run it by hand to see why");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 2 minutes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child,
        })
    }

    /// Create a bucket (moto's server does not check request signatures).
    pub fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to moto");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("sending PUT bucket");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reading the reply");
        assert!(
            reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
            "creating bucket {bucket}: {reply}"
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
