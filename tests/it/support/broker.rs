//! Private Mosquitto brokers, each on a free port with its files in a directory of its own.
//!
//! `ShippedBroker` runs `deploy/mosquitto/` for real: credentials made by the shipped
//! `make-passwords.sh` and Mosquitto started with the shipped `mosquitto.conf`, only its listener
//! and paths changed, so that what is tested is what `docker compose` runs. `PrivateBroker` runs
//! configurations that are not the shipped one (anonymous, with `shipped_limits` or others).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

use super::temp_dir;

/// A Mosquitto process: its port, its configuration and persistence in a directory of its own
/// (removed when dropped), its output in `log` there.
struct Mosquitto {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto with the configuration `conf` writes for a free port and the directory.
    async fn start(conf: impl FnOnce(u16, &Path) -> String) -> Mosquitto {
        let dir = temp_dir();
        // Started as root (as in CI), Mosquitto drops to its own user: it must be able to write
        // its persistence file here, or a restart silently forgets every session.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(dir.join("mosquitto.conf"), conf(port, &dir)).unwrap();
        let child = Mosquitto::spawn(&dir, port).await;
        Mosquitto { port, child, dir }
    }

    async fn spawn(dir: &Path, port: u16) -> Child {
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("mosquitto")
            .args(["-c", dir.join("mosquitto.conf").to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start: {}",
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child
    }

    /// Stop it as an operator would (SIGTERM: it saves its persistence file), then start it
    /// again on the same port with the same files.
    async fn restart(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
        self.child = Mosquitto::spawn(&self.dir, self.port).await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An anonymous Mosquitto with persistence and the configuration lines a test gives.
pub struct PrivateBroker {
    pub port: u16,
    process: Mosquitto,
}

impl PrivateBroker {
    /// Start `mosquitto` with `extra` configuration lines.
    pub async fn start(extra: &str) -> PrivateBroker {
        let process = Mosquitto::start(|port, dir| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n{extra}\n",
                dir.display()
            )
        })
        .await;
        PrivateBroker {
            port: process.port,
            process,
        }
    }

    /// Stop it with SIGTERM (it saves its persistence file) and start it again on the same
    /// port with the same files.
    pub async fn restart(&mut self) {
        self.process.restart().await
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// The delivery settings of the shipped broker configuration (`deploy/mosquitto/mosquitto.conf`):
/// the inflight window, the queue caps, the packet limit, persistence timing and session
/// expiry, read from the file itself. A private broker started with them tests a delivery
/// promise as it ships, without the shipped logins and ACL (which `ShippedBroker` runs).
pub fn shipped_limits() -> String {
    const KEYS: [&str; 6] = [
        "max_inflight_messages",
        "max_queued_messages",
        "max_queued_bytes",
        "max_packet_size",
        "autosave_interval",
        "persistent_client_expiration",
    ];
    let conf = shipped_conf();
    let lines: Vec<&str> = conf
        .lines()
        .filter(|l| KEYS.contains(&l.split_whitespace().next().unwrap_or("")))
        .collect();
    assert_eq!(lines.len(), KEYS.len(), "the shipped limits: {lines:?}");
    lines.join("\n") + "\n"
}

/// One numeric setting of the shipped broker configuration, as the file says it.
pub fn shipped_setting(key: &str) -> u64 {
    shipped_conf()
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(key)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("`{key}` in deploy/mosquitto/mosquitto.conf"))
}

fn shipped_conf() -> String {
    std::fs::read_to_string(repo("deploy/mosquitto/mosquitto.conf"))
        .expect("deploy/mosquitto/mosquitto.conf")
}

/// Instance 1's ingest user; instance `n` has `hyfleet.backend-{n}` (see `ingest_user`).
pub const BACKEND: &str = "hyfleet.backend";
/// Instance 1's command publisher; instance `n` has `hyfleet.commands-{n}`.
pub const COMMANDS: &str = "hyfleet.commands";
/// `hyfleet doctor`'s probe: a user of its own, allowed only under `_doctor/`.
pub const DOCTOR: &str = "hyfleet.doctor";

/// The ingest user `make-passwords.sh` makes for hyfleet instance `n` (1, 2...). The broker
/// pins client ids to user names, so this is also the name of the instance's session.
pub fn ingest_user(n: u32) -> String {
    format!("{BACKEND}{}", instance_suffix(n))
}

/// The command publisher user of hyfleet instance `n`.
pub fn commands_user(n: u32) -> String {
    format!("{COMMANDS}{}", instance_suffix(n))
}

fn instance_suffix(n: u32) -> String {
    assert!(n >= 1, "instances count from 1");
    if n == 1 {
        String::new()
    } else {
        format!("-{n}")
    }
}

/// The device user of a vehicle: `{kind}/{vehicle_id}`.
pub fn device_user(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Credentials made by the shipped `make-passwords.sh` in a directory of the test's own.
pub struct Credentials {
    dir: PathBuf,
    passwords: HashMap<String, String>,
}

impl Credentials {
    /// `bikes` and `buses` device users and one hyfleet instance's users.
    pub fn make(bikes: u32, buses: u32) -> Credentials {
        Credentials::for_instances(bikes, buses, 1)
    }

    /// As `make`, with the users of `instances` hyfleet instances (`INSTANCES`).
    pub fn for_instances(bikes: u32, buses: u32, instances: u32) -> Credentials {
        let dir = temp_dir();
        let status = Command::new(repo("deploy/mosquitto/make-passwords.sh"))
            .args([bikes.to_string(), buses.to_string()])
            .env("INSTANCES", instances.to_string())
            .env("OUT_DIR", &dir)
            .env("ENV_FILE", dir.join(".env"))
            .stderr(Stdio::null())
            .status()
            .expect("run make-passwords.sh");
        assert!(status.success(), "make-passwords.sh failed");
        let mut passwords = HashMap::new();
        let csv = std::fs::read_to_string(dir.join("devices.csv")).unwrap();
        for line in csv.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 4, "devices.csv line {line}");
            passwords.insert(f[2].to_owned(), f[3].to_owned());
        }
        assert_eq!(passwords.len() as u32, bikes + buses);
        let env = std::fs::read_to_string(dir.join(".env")).unwrap();
        let from_env = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .unwrap_or_else(|| panic!("{name} in .env"))
        };
        let (backend, commands) = (
            from_env("HYFLEET_MQTT_PASSWORD"),
            from_env("HYFLEET_MQTT_COMMANDS_PASSWORD"),
        );
        let instances_csv = std::fs::read_to_string(dir.join("instances.csv")).unwrap();
        for line in instances_csv.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 5, "instances.csv line {line}");
            passwords.insert(f[1].to_owned(), f[2].to_owned());
            passwords.insert(f[3].to_owned(), f[4].to_owned());
        }
        assert_eq!(passwords[BACKEND], backend);
        assert_eq!(passwords[COMMANDS], commands);
        passwords.insert(DOCTOR.to_owned(), from_env("HYFLEET_DOCTOR_MQTT_PASSWORD"));
        assert_eq!(passwords.len() as u32, bikes + buses + 2 * instances + 1);
        Credentials { dir, passwords }
    }

    /// `user`'s login: its name and password.
    pub fn of<'a>(&'a self, user: &'a str) -> (&'a str, &'a str) {
        (user, &self.passwords[user])
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `deploy/mosquitto/mosquitto.conf` with the listener on a free port and the paths moved into
/// `dir`. Every line that is rewritten must exist, so that the test cannot drift from the file.
pub fn shipped_config(port: u16, dir: &Path, password_file: &Path) -> String {
    let text = std::fs::read_to_string(repo("deploy/mosquitto/mosquitto.conf")).unwrap();
    let mut replaced = [false; 4];
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            let key = line.split_whitespace().next().unwrap_or("");
            let (i, new) = match key {
                "listener" => (0, format!("listener {port} 127.0.0.1")),
                "persistence_location" => (1, format!("persistence_location {}/", dir.display())),
                "password_file" => (2, format!("password_file {}", password_file.display())),
                "acl_file" => (
                    3,
                    format!("acl_file {}", repo("deploy/mosquitto/acl").display()),
                ),
                _ => return line.to_owned(),
            };
            assert!(!replaced[i], "`{key}` appears twice in mosquitto.conf");
            replaced[i] = true;
            new
        })
        .collect();
    assert_eq!(
        replaced, [true; 4],
        "mosquitto.conf sets listener, persistence_location, password_file and acl_file"
    );
    out.join("\n") + "\n"
}

/// Mosquitto running the shipped configuration with `Credentials`' password file.
pub struct ShippedBroker {
    pub port: u16,
    _process: Mosquitto,
}

impl ShippedBroker {
    pub async fn start(credentials: &Credentials) -> ShippedBroker {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&credentials.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let passwords = credentials.dir.join("passwords");
        let process = Mosquitto::start(|port, dir| shipped_config(port, dir, &passwords)).await;
        ShippedBroker {
            port: process.port,
            _process: process,
        }
    }

    /// `mqtt://user:password@127.0.0.1:port` for a login.
    pub fn url(&self, (user, password): (&str, &str)) -> String {
        format!("mqtt://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Whether the broker holds a session for the login's user, whose session it is (client
    /// ids are pinned to user names): it connects as that user with a persistent session and
    /// reads CONNACK's session-present flag. A client of that user still connected is
    /// displaced by the look.
    pub async fn has_session(&self, (user, password): (&str, &str)) -> bool {
        let mut opts = MqttOptions::new(user, "127.0.0.1", self.port);
        // Manual acknowledgements: a look must not take what the session holds.
        opts.set_clean_session(false)
            .set_manual_acks(true)
            .set_credentials(user, password);
        let (client, mut eventloop) = AsyncClient::new(opts, 10);
        let present = loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
                .await
                .expect("CONNACK within 10 s")
                .unwrap_or_else(|e| panic!("{user} connects: {e}"))
            {
                Event::Incoming(Packet::ConnAck(ack)) => break ack.session_present,
                _ => continue,
            }
        };
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
        present
    }
}
