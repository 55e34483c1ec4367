//! A throwaway PostgreSQL server of hyfleet's own, for `hyfleet demo` on a machine where
//! PostgreSQL is installed but not running, not reachable, or not set up for a password-less
//! local user (stock Debian asks for a password on 127.0.0.1).
//!
//! It runs the installed server binaries (`initdb`, `postgres`: on the `PATH` or under
//! `/usr/lib/postgresql/*/bin`) in a temporary directory, on a free loopback port, with trust
//! authentication for its one user `postgres`, and is stopped and removed when dropped.
//! PostgreSQL refuses to run as root, so under root (as in a container) the server runs as the
//! system's `postgres` user, or `nobody`, which owns the temporary directory.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why no throwaway server could be started; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LocalServerError {
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) were found on the PATH or under \
         /usr/lib/postgresql/*/bin: install PostgreSQL (Debian: `apt-get install postgresql`), \
         or run `docker compose up` and set DATABASE_URL"
    )]
    NotInstalled,
    #[error("cannot start a throwaway PostgreSQL: {0}")]
    Failed(String),
}

/// A running throwaway server. Dropping it stops the server and deletes its files.
pub struct LocalServer {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl LocalServer {
    /// Create a cluster in a new temporary directory and start it; returns once it accepts
    /// connections.
    pub async fn start() -> Result<LocalServer, LocalServerError> {
        let bin = find_binaries().ok_or(LocalServerError::NotInstalled)?;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            LocalServerError::Failed(format!("{what}: {e}"))
        };
        let dir = std::env::temp_dir().join(format!(
            "hyfleet-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&dir).map_err(|e| fail("cannot create a temporary directory", &e))?;
        // From here on, dropping `server` removes the directory whatever fails.
        let mut server = LocalServer {
            dir,
            port: 0,
            child: None,
        };
        let user = unprivileged_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&server.dir, Some(uid), Some(gid)).map_err(|e| {
                fail(
                    "cannot hand the temporary directory to the server's user",
                    &e,
                )
            })?;
        }
        let data = server.dir.join("data");
        let log = server.dir.join("postgres.log");

        let out = as_user(Command::new(bin.join("initdb")), user)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ])
            .current_dir(&server.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail("cannot run initdb", &e))?;
        if !out.status.success() {
            return Err(LocalServerError::Failed(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }

        server.port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| fail("no free port", &e))?
            .port();
        let log_file =
            std::fs::File::create(&log).map_err(|e| fail("cannot create its log", &e))?;
        if let Some((uid, gid)) = user {
            let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
        }
        let child = as_user(Command::new(bin.join("postgres")), user)
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(server.port.to_string())
            .arg("-k")
            .arg(&server.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Throwaway data: durability buys nothing here.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .current_dir(&server.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            // Its own process group: Ctrl-C reaches hyfleet, which drains its batches into
            // this server before it stops it.
            .process_group(0)
            .spawn()
            .map_err(|e| fail("cannot run postgres", &e))?;
        server.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(LocalServerError::Failed(format!(
                    "postgres exited ({status}): {}",
                    text.trim()
                )));
            }
            if tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(LocalServerError::Failed(format!(
                    "postgres did not accept connections on 127.0.0.1:{} within 30 s",
                    server.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory that holds its data, socket and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's fast shutdown: end sessions, stop cleanly.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory that holds `initdb` and `postgres`: the `PATH` first, then the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps the server binaries off the `PATH`).
fn find_binaries() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_both(d)) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Under root, the user to run the server as: `postgres` where the package made one, else
/// `nobody`. `None` when not root.
fn unprivileged_user() -> Option<(u32, u32)> {
    let euid = std::fs::metadata("/proc/self").ok()?.uid();
    if euid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let mut f = line.split(':');
            (f.next()? == name).then_some(())?;
            let uid = f.nth(1)?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((uid, gid))
        })
    };
    lookup("postgres")
        .or_else(|| lookup("nobody"))
        .or(Some((65534, 65534)))
}

fn as_user(mut cmd: Command, user: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).env("HOME", "/");
    }
    cmd
}
