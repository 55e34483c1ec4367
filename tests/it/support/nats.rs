//! A NATS cluster on loopback: `deploy/nats/nats.conf` for real, each node with its own ports
//! and store directory, the file's other lines (JetStream limits, the MQTT listener's settings,
//! the cluster's name) as they ship, and the logins and routes that the shipped
//! `deploy/nats/make-passwords.sh` writes, for routes on loopback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, temp_dir};

/// `n` distinct free ports: each listener is held until all are taken, so that the system
/// cannot hand the same port out twice.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The ports of one node.
#[derive(Clone, Copy)]
struct Ports {
    client: u16,
    mqtt: u16,
    route: u16,
    http: u16,
}

/// `deploy/nats/nats.conf` for node `me` of `nodes`: the ports of each block moved to
/// loopback, the store into `dir`. Every line that is rewritten must exist, so that
/// the test cannot drift from the file.
fn shipped_config(nodes: &[Ports], me: usize, dir: &Path) -> String {
    let text = std::fs::read_to_string(super::broker::repo("deploy/nats/nats.conf")).unwrap();
    let p = nodes[me];
    let mut block = "";
    let mut replaced = Vec::new();
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            let t = line.trim();
            if let Some(name) = t.strip_suffix(" {") {
                block = match name {
                    "jetstream" => "jetstream",
                    "mqtt" => "mqtt",
                    "cluster" => "cluster",
                    _ => "other",
                };
            } else if t == "}" {
                block = "";
            }
            let key = t.split(':').next().unwrap_or("");
            let new = match (block, key) {
                ("", "port") => format!("host: 127.0.0.1\nport: {}", p.client),
                ("", "http_port") => format!("http: \"127.0.0.1:{}\"", p.http),
                ("jetstream", "store_dir") => format!("  store_dir: \"{}\"", dir.display()),
                ("mqtt", "port") => format!("  host: 127.0.0.1\n  port: {}", p.mqtt),
                ("cluster", "port") => format!("  host: 127.0.0.1\n  port: {}", p.route),
                _ => return line.to_owned(),
            };
            replaced.push(format!("{block}.{key}"));
            new
        })
        .collect();
    replaced.sort();
    assert_eq!(
        replaced,
        [
            ".http_port",
            ".port",
            "cluster.port",
            "jetstream.store_dir",
            "mqtt.port"
        ],
        "nats.conf sets each of these once"
    );
    out.join("\n") + "\n"
}

/// The logins `make-passwords.sh` wrote: the backend's password (its environment) and each
/// vehicle's (`devices.csv`).
#[derive(Clone)]
pub struct Passwords {
    pub hyfleet: String,
    devices: HashMap<String, String>,
}

impl Passwords {
    /// `deploy/nats/make-passwords.sh` for `BIKES` bikes, its files into `dir`, its routes to
    /// `nodes`.
    fn make(dir: &Path, nodes: &[Ports]) -> Passwords {
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.route))
            .collect();
        let status = Command::new(super::broker::repo("deploy/nats/make-passwords.sh"))
            .arg(BIKES.to_string())
            .arg("0")
            .env("OUT_DIR", dir)
            .env("ENV_FILE", dir.join(".env"))
            .env("NATS_ROUTES", routes.join(" "))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "make-passwords.sh failed");
        let env = std::fs::read_to_string(dir.join(".env")).unwrap();
        let hyfleet = env
            .lines()
            .find_map(|l| l.strip_prefix("HYFLEET_NATS_PASSWORD="))
            .expect("HYFLEET_NATS_PASSWORD in .env")
            .to_owned();
        let devices = std::fs::read_to_string(dir.join("devices.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[2].to_owned(), f[3].to_owned())
            })
            .collect();
        Passwords { hyfleet, devices }
    }

    /// The login of bike `id` (`XY-B0001`): its user name and password.
    pub fn bike(&self, id: &str) -> (String, String) {
        let user = format!("bike/{id}");
        let password = self.devices[&user].clone();
        (user, password)
    }
}

/// How many bikes have a login.
pub const BIKES: u32 = 12;

/// One nats-server process.
struct Node {
    name: String,
    passwords: Passwords,
    ports: Ports,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new("nats-server")
            .args(["-c", self.dir.join("nats.conf").to_str().unwrap()])
            .env("NATS_NAME", &self.name)
            .env("HYFLEET_NATS_PASSWORD", &self.passwords.hyfleet)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    /// Whether its process is still there.
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|exited| exited.is_none()))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process killed when dropped.
pub struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cluster of nats-server nodes on loopback, removed when dropped.
pub struct NatsCluster {
    nodes: Vec<Node>,
    pub passwords: Passwords,
}

impl NatsCluster {
    /// Start `size` nodes on free ports. A port found free can be taken by another process
    /// (a connection's own port) before the node binds it: then the node exits at once, and
    /// the whole cluster starts again on other ports.
    pub async fn start(size: usize) -> NatsCluster {
        for _ in 0..5 {
            let mut cluster = NatsCluster::spawn(size);
            // A node that could not bind its ports exits within moments.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if cluster.nodes.iter_mut().all(Node::running) {
                for n in 0..size {
                    cluster.wait_jetstream(n).await;
                }
                return cluster;
            }
        }
        panic!("no NATS cluster started in 5 tries on free ports");
    }

    fn spawn(size: usize) -> NatsCluster {
        let ports: Vec<Ports> = free_ports(4 * size)
            .chunks(4)
            .map(|p| Ports {
                client: p[0],
                mqtt: p[1],
                route: p[2],
                http: p[3],
            })
            .collect();
        let logins = temp_dir();
        let passwords = Passwords::make(&logins, &ports);
        let mut nodes = Vec::new();
        for (n, p) in ports.iter().enumerate() {
            let dir = temp_dir();
            std::fs::write(dir.join("nats.conf"), shipped_config(&ports, n, &dir)).unwrap();
            for file in ["logins.conf", "routes.conf"] {
                std::fs::copy(logins.join(file), dir.join(file)).unwrap();
            }
            nodes.push(Node {
                name: format!("nats-{}", n + 1),
                passwords: passwords.clone(),
                ports: *p,
                dir,
                child: None,
            });
        }
        let _ = std::fs::remove_dir_all(&logins);
        for node in &mut nodes {
            node.spawn();
        }
        NatsCluster { nodes, passwords }
    }

    /// Wait until node `n` answers JetStream requests (its cluster has a meta leader).
    pub async fn wait_jetstream(&self, n: usize) {
        let url = format!("nats://127.0.0.1:{}", self.nodes[n].ports.client);
        eventually(60, &format!("JetStream on {url}"), || async {
            let client = self.connect(&url).await.ok()?;
            let reply = tokio::time::timeout(
                Duration::from_secs(2),
                client.request("$JS.API.INFO", "".into()),
            )
            .await
            .ok()?
            .ok()?;
            let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
            info.get("error").is_none().then_some(())
        })
        .await;
    }

    /// A NATS client of `url`, logged in as `hyfleet`.
    async fn connect(&self, url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::with_user_and_password(
            "hyfleet".into(),
            self.passwords.hyfleet.clone(),
        )
        .connect(url)
        .await
    }

    /// Node `n`'s client address, `127.0.0.1:port`.
    pub fn client_addr(&self, n: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[n].ports.client)
    }

    /// A NATS client of node 1, logged in as `hyfleet`.
    pub async fn backend(&self) -> async_nats::Client {
        self.connect(&format!("nats://{}", self.client_addr(0)))
            .await
            .unwrap()
    }

    /// Every node's client URL with the `hyfleet` login, for `nats.url`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "nats://hyfleet:{}@127.0.0.1:{}",
                    self.passwords.hyfleet, n.ports.client
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A nats-server of no one's, without the cluster's logins, that routes to node `n` as
    /// the cluster's own nodes do (same cluster name), killed when dropped; its client port.
    pub async fn rogue(&self, n: usize) -> (ChildGuard, u16) {
        for _ in 0..5 {
            let ports = free_ports(2);
            let child = Command::new("nats-server")
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &ports[0].to_string(),
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", ports[1]),
                    "--cluster_name",
                    "hyfleet",
                    "--routes",
                    &format!("nats://127.0.0.1:{}", self.nodes[n].ports.route),
                    "-n",
                    "rogue",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server");
            let mut guard = ChildGuard(child);
            // One that could not bind its ports exits within moments: again, on others.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if guard.0.try_wait().is_ok_and(|exited| exited.is_none()) {
                return (guard, ports[0]);
            }
        }
        panic!("no rogue nats-server started in 5 tries on free ports");
    }

    /// Node `n`'s MQTT listener.
    pub fn mqtt_port(&self, n: usize) -> u16 {
        self.nodes[n].ports.mqtt
    }

    /// Node `n`'s MQTT listener with the `hyfleet` login (commands).
    pub fn mqtt_url(&self, n: usize) -> String {
        format!(
            "mqtt://hyfleet:{}@127.0.0.1:{}",
            self.passwords.hyfleet,
            self.mqtt_port(n)
        )
    }

    /// SIGKILL node `n`: nothing flushed, nothing handed over.
    pub fn kill(&mut self, n: usize) {
        self.nodes[n].kill();
    }

    /// Stop node `n` as a planned restart does: lame-duck mode (SIGUSR2), in which nats-server
    /// hands the leadership of its streams and consumers to other nodes and closes its clients
    /// before it exits; waits for the exit.
    pub async fn lame_duck(&mut self, n: usize) {
        let mut child = self.nodes[n].child.take().expect("running");
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-USR2", &pid])
                .status()
                .unwrap()
                .success()
        );
        eventually(120, "the node leaves", || {
            let done = child.try_wait().unwrap().is_some();
            async move { done.then_some(()) }
        })
        .await;
    }

    /// Start node `n` again on its ports and store, as a supervisor would after a crash.
    pub async fn restart(&mut self, n: usize) {
        self.nodes[n].spawn();
        self.wait_jetstream(n).await;
    }

    /// The name of the node that leads the stream `stream` (JetStream's stream info).
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        let info = self
            .request(&format!("$JS.API.STREAM.INFO.{stream}"))
            .await?;
        info["cluster"]["leader"].as_str().map(str::to_owned)
    }

    /// The index of the node that leads the stream `stream`, once it has one.
    pub async fn leader_of(&self, stream: &str) -> usize {
        let name = eventually(30, "the stream's leader", || self.stream_leader(stream)).await;
        self.index_of(&name)
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A JetStream API request to any live node; its JSON answer.
    pub async fn request(&self, subject: &str) -> Option<serde_json::Value> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = format!("nats://127.0.0.1:{}", node.ports.client);
            let Ok(client) = self.connect(&url).await else {
                continue;
            };
            if let Ok(Ok(reply)) = tokio::time::timeout(
                Duration::from_secs(2),
                client.request(subject.to_owned(), "".into()),
            )
            .await
            {
                return serde_json::from_slice(&reply.payload).ok();
            }
        }
        None
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if std::thread::panicking() {
                let log = std::fs::read_to_string(node.dir.join("log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| !l.contains("[INF]")).collect();
                eprintln!("--- {} (warnings and errors, last 40)", node.name);
                for l in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{l}");
                }
            }
            node.kill();
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}
