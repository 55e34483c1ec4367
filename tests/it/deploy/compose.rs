//! `docker-compose.yml` and the `Dockerfile` read as text (no Docker engine here) and checked
//! against what hyfleet, Mosquitto and Grafana will do with them.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

use super::repo;

fn compose() -> Value {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml is YAML")
}

/// Compose's `${NAME:?message}`, `${NAME:-default}` and `${NAME}` with the secrets given.
fn interpolate(value: &str, secrets: &HashMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let expr = &rest[start + 2..end];
        let (name, fallback) = match expr.find([':', '-', '?']) {
            Some(i) => (&expr[..i], Some(&expr[i..])),
            None => (expr, None),
        };
        match (secrets.get(name), fallback) {
            (Some(v), _) => out.push_str(v),
            (None, Some(f)) if f.starts_with(":-") => out.push_str(&f[2..]),
            (None, _) => panic!("`{name}` is neither given nor defaulted in `{value}`"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn environment(service: &Value, secrets: &HashMap<&str, &str>) -> HashMap<String, String> {
    let env = service["environment"]
        .as_object()
        .expect("environment is a mapping");
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), interpolate(&v, secrets))
        })
        .collect()
}

/// Container ports each service publishes (`[host_ip:]host:container`).
fn published_ports(service: &Value) -> Vec<u16> {
    service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let s = p.as_str().expect("ports are written as strings");
            let (host, container) = s.rsplit_once(':').expect("host:container");
            let host = host.rsplit(':').next().unwrap();
            assert_eq!(host, container, "{s}: published on the same port");
            container.parse().unwrap()
        })
        .collect()
}

/// `(host path, container path)` of each bind mount; named volumes are left out.
fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let s = v.as_str().expect("volumes are written as strings");
            let mut parts = s.split(':');
            let host = parts.next().unwrap();
            let container = parts.next().expect("host:container").to_owned();
            host.starts_with("./")
                .then(|| (repo(host.trim_start_matches("./")), container))
        })
        .collect()
}

fn mount_of<'a>(mounts: &'a [(PathBuf, String)], container: &str) -> &'a PathBuf {
    &mounts
        .iter()
        .find(|(_, c)| c == container)
        .unwrap_or_else(|| panic!("nothing mounted at {container}"))
        .0
}

/// The value of `key` in a Mosquitto configuration (`key value`).
fn conf_value<'a>(conf: &'a str, key: &str) -> &'a str {
    conf.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("mosquitto.conf sets {key}"))
        .trim()
}

#[test]
fn compose_file_agrees_with_hyfleet_configuration() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for (name, port) in [
        ("postgres", 5432),
        ("mosquitto", 1883),
        ("hyfleet", 8080),
        ("grafana", 3000),
    ] {
        let s = services
            .get(name)
            .unwrap_or_else(|| panic!("service {name}"));
        assert_eq!(published_ports(s), [port], "{name} publishes {port}");
    }
    assert!(
        c["services"]["postgres"]["image"]
            .as_str()
            .unwrap()
            .starts_with("postgres:15"),
    );
    assert!(
        c["services"]["mosquitto"]["image"]
            .as_str()
            .unwrap()
            .starts_with("eclipse-mosquitto:2"),
    );
    assert!(c["services"]["postgres"]["healthcheck"]["test"].is_array());

    let secrets = HashMap::from([
        ("POSTGRES_PASSWORD", "pg-secret"),
        ("HYFLEET_MQTT_PASSWORD", "mqtt-secret"),
        ("HYFLEET_MQTT_COMMANDS_PASSWORD", "commands-secret"),
        ("GRAFANA_DB_PASSWORD", "grafana-secret"),
        ("GRAFANA_ADMIN_PASSWORD", "admin-secret"),
    ]);
    let hyfleet = &c["services"]["hyfleet"];
    let env = environment(hyfleet, &secrets);
    for name in [
        "DATABASE_URL",
        "MQTT_URL",
        "HYFLEET_TOPIC_ROOT",
        "HYFLEET_HTTP_ADDR",
    ] {
        assert!(env.contains_key(name), "hyfleet is given {name}");
    }
    // What hyfleet itself makes of its environment, with no configuration file.
    let config = hyfleet::config::Config::from_toml_and_env("", "docker-compose.yml", env.clone())
        .expect("hyfleet accepts the compose environment");
    assert_eq!(
        config.database.url,
        "postgres://postgres:pg-secret@postgres:5432/hyfleet"
    );
    let pg = environment(&c["services"]["postgres"], &secrets);
    assert_eq!(pg["POSTGRES_PASSWORD"], "pg-secret");
    assert_eq!(pg["POSTGRES_DB"], "hyfleet", "the database hyfleet uses");
    let ep = config.mqtt.endpoint().unwrap();
    assert_eq!((ep.host.as_str(), ep.port), ("mosquitto", 1883));
    let (user, pass) = ep.credentials.expect("hyfleet logs in to the broker");
    assert_eq!(pass, "mqtt-secret");
    // The command publisher has a login of its own, never ingest's (client ids are users).
    let cmd = config.mqtt.commands_endpoints().unwrap().remove(0);
    assert_eq!((cmd.host.as_str(), cmd.port), ("mosquitto", 1883));
    let (cmd_user, cmd_pass) = cmd.credentials.expect("the command publisher logs in");
    assert_eq!(cmd_pass, "commands-secret");
    assert_ne!(cmd_user, user);
    assert_eq!(config.http.addr, "0.0.0.0:8080");
    let deps = hyfleet["depends_on"].as_object().expect("depends_on");
    assert_eq!(deps["postgres"]["condition"], "service_healthy");
    assert!(deps.contains_key("mosquitto"));

    // The broker's configuration, credentials and ACL are the repository's, and they know the
    // backend user and topic root that hyfleet is given.
    let mounts = bind_mounts(&c["services"]["mosquitto"]);
    let config_dir = mount_of(&mounts, "/mosquitto/config");
    let conf = std::fs::read_to_string(config_dir.join("mosquitto.conf")).unwrap();
    for key in ["password_file", "acl_file"] {
        let path = conf_value(&conf, key);
        let name = path
            .strip_prefix("/mosquitto/config/")
            .unwrap_or_else(|| panic!("{key} {path} is in the mounted directory"));
        if key == "acl_file" {
            let acl = std::fs::read_to_string(config_dir.join(name)).unwrap();
            assert!(
                acl.lines().any(|l| l == format!("user {user}")),
                "the ACL grants the backend user {user}"
            );
            assert!(
                acl.lines().any(|l| l == format!("user {cmd_user}")),
                "the ACL grants the command publisher {cmd_user}"
            );
            assert_eq!(
                conf_value(&conf, "use_username_as_clientid"),
                "true",
                "client ids are pinned to users"
            );
            let root = &config.mqtt.topic_root;
            for line in acl
                .lines()
                .filter(|l| l.starts_with("topic") || l.starts_with("pattern"))
            {
                let topic = line.split_whitespace().last().unwrap();
                assert!(
                    topic.starts_with(&format!("{root}/")),
                    "{line} is under {root}"
                );
            }
        } else {
            assert!(
                std::fs::read_to_string(repo("deploy/.gitignore"))
                    .unwrap()
                    .lines()
                    .any(|l| l == format!("/mosquitto/{name}")),
                "the generated {name} is never committed"
            );
        }
    }
    let persistence = conf_value(&conf, "persistence_location");
    let volumes: Vec<&str> = c["services"]["mosquitto"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        volumes
            .iter()
            .any(|v| !v.starts_with('.') && persistence.starts_with(v.split(':').nth(1).unwrap())),
        "the broker's persistence ({persistence}) lives on a volume: {volumes:?}"
    );

    // Grafana: provisioning and dashboards mounted where Grafana looks, pointing at the
    // compose database.
    let grafana = &c["services"]["grafana"];
    let mounts = bind_mounts(grafana);
    let provisioning = mount_of(&mounts, "/etc/grafana/provisioning");
    let ds: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(provisioning.join("datasources/hyfleet.yml")).unwrap(),
    )
    .unwrap();
    let ds = &ds["datasources"][0];
    assert_eq!(ds["url"], "postgres:5432");
    assert_eq!(ds["jsonData"]["database"], "hyfleet");
    let genv = environment(grafana, &secrets);
    let pw_ref = ds["secureJsonData"]["password"].as_str().unwrap();
    let pw_var = pw_ref.trim_start_matches("${").trim_end_matches('}');
    assert_eq!(
        genv[pw_var], pg["GRAFANA_DB_PASSWORD"],
        "one grafana password"
    );
    let providers: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(provisioning.join("dashboards/hyfleet.yml")).unwrap(),
    )
    .unwrap();
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let dashboards = mount_of(&mounts, path);
    assert!(dashboards.join("hyfleet.json").is_file());
    let home = genv["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as_str();
    assert_eq!(home, format!("{path}/hyfleet.json"));
    let pg_mounts = bind_mounts(&c["services"]["postgres"]);
    assert!(
        pg_mounts
            .iter()
            .any(|(h, c)| h.is_file() && c.starts_with("/docker-entrypoint-initdb.d/")),
        "the grafana role is created when the database volume is"
    );
}

#[test]
fn dockerfile_builds_and_runs_the_hyfleet_binary() {
    let c = compose();
    let build = &c["services"]["hyfleet"]["build"];
    assert_eq!(build["context"], ".");
    let dockerfile = std::fs::read_to_string(repo(build["dockerfile"].as_str().unwrap())).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_hyfleet"))
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.is_empty())
        .collect();
    let froms: Vec<&str> = instructions
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        froms,
        ["rust:1.95-slim-bookworm AS build", "debian:bookworm-slim"]
    );
    assert!(dockerfile.contains(&format!("cargo build --release --locked --bin {bin}")));
    assert!(dockerfile.contains(&format!("cp target/release/{bin} /usr/local/bin/{bin}")));
    assert!(instructions.contains(&&*format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")));
    let cmd = c["services"]["hyfleet"]["command"].as_array().unwrap();
    assert_eq!(cmd, &[Value::from("serve")]);
    let user = instructions
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image sets a user");
    assert!(user != "root" && user != "0", "runs as {user}");
    assert!(instructions.contains(&"EXPOSE 8080"));
    // Everything the build reads is sent to the daemon; build output and secrets are not.
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    // Crates patched in from the repository (`[patch.crates-io]`) are read by the build too.
    let manifest: toml::Table = std::fs::read_to_string(repo("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let patched = manifest
        .get("patch")
        .and_then(|p| p.get("crates-io"))
        .and_then(|t| t.as_table())
        .into_iter()
        .flat_map(|t| t.values())
        .filter_map(|d| d.get("path")?.as_str());
    let read = ["src", "schemas", "data", "build.rs", "Cargo.lock"];
    for kept in read.into_iter().chain(patched) {
        assert!(repo(kept).exists(), "{kept} exists");
        assert!(
            !ignore
                .lines()
                .map(|l| l.trim().trim_end_matches('/'))
                .any(|l| !l.is_empty() && !l.starts_with('#') && kept.starts_with(l)),
            "{kept} is sent"
        );
        assert!(dockerfile.contains(&format!("COPY {kept}")) || dockerfile.contains(kept));
    }
    for excluded in ["target/", ".env"] {
        assert!(
            ignore.lines().any(|l| l == excluded),
            "{excluded} is not sent"
        );
    }
}

/// `docker-compose.nats.yml`, with its `<<` merge keys applied as Compose does.
fn compose_nats() -> Value {
    let text = std::fs::read_to_string(repo("docker-compose.nats.yml")).unwrap();
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).expect("docker-compose.nats.yml is YAML");
    yaml.apply_merge().unwrap();
    serde_json::to_value(yaml).unwrap()
}

#[test]
fn nats_compose_variant_agrees_with_the_cluster_and_hyfleet_configuration() {
    let c = compose_nats();
    let services = c["services"].as_object().expect("services");
    let conf = std::fs::read_to_string(repo("deploy/nats/nats.conf")).unwrap();
    // The logins and routes are written beside nats.conf (the nodes' mount) by the script.
    for file in ["logins.conf", "routes.conf"] {
        assert!(
            conf.contains(&format!("include \"{file}\"")),
            "nats.conf includes {file}"
        );
    }
    let out = crate::support::temp_dir();
    let made = std::process::Command::new(repo("deploy/nats/make-passwords.sh"))
        .args(["2", "1"])
        .env("OUT_DIR", &out)
        .env("ENV_FILE", out.join(".env"))
        .env_remove("NATS_ROUTES")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let routes = std::fs::read_to_string(out.join("routes.conf")).unwrap();
    let logins = std::fs::read_to_string(out.join("logins.conf")).unwrap();
    let env_file = std::fs::read_to_string(out.join(".env")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let secrets = HashMap::from([
        ("POSTGRES_PASSWORD", "pg-secret"),
        ("HYFLEET_NATS_PASSWORD", "backend-secret"),
    ]);
    for var in secrets.keys() {
        assert!(
            env_file.contains(&format!("{var}=")),
            "make-passwords.sh writes {var}"
        );
    }
    // The image is the nats-server the cluster tests run here.
    let installed = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .expect("nats-server is installed");
    let installed = String::from_utf8_lossy(&installed.stdout);
    let mut volumes = Vec::new();
    for n in 1..=3 {
        let name = format!("nats-{n}");
        let node = &services[&name];
        let image = node["image"].as_str().unwrap();
        let tag = image.strip_prefix("nats:").expect("the official image");
        assert!(
            installed.contains(&format!("v{tag}")),
            "{image} is the tested nats-server ({installed})"
        );
        let env = environment(node, &secrets);
        assert_eq!(env["NATS_NAME"], name, "each node has its own name");
        assert_eq!(
            env["HYFLEET_NATS_PASSWORD"],
            secrets["HYFLEET_NATS_PASSWORD"]
        );
        assert!(
            routes.contains(&format!("@{name}:6222")),
            "the routes name {name}: {routes}"
        );
        let mounts = bind_mounts(node);
        let dir = mount_of(&mounts, "/etc/nats");
        let args: Vec<&str> = node["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], "--config");
        let file = args[1].strip_prefix("/etc/nats/").expect("in the mount");
        assert_eq!(dir.join(file), repo("deploy/nats/nats.conf"));
        // JetStream's store on a volume of the node's own.
        let data: Vec<&str> = node["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|v| !v.starts_with('.'))
            .collect();
        assert_eq!(data.len(), 1, "{name}: one data volume");
        let (volume, at) = data[0].split_once(':').unwrap();
        assert!(
            conf.contains(&format!("store_dir: \"{at}\"")),
            "store_dir is {at}"
        );
        volumes.push(volume.to_owned());
    }
    let distinct: std::collections::HashSet<_> = volumes.iter().collect();
    assert_eq!(distinct.len(), 3, "no two nodes share a store");

    // What hyfleet makes of its environment: JetStream on all three nodes with three copies,
    // commands through a node's MQTT listener, both as the backend's login.
    let hyfleet = &services["hyfleet"];
    let env = environment(hyfleet, &secrets);
    let config = hyfleet::config::Config::from_toml_and_env("", "docker-compose.nats.yml", env)
        .expect("hyfleet accepts the compose environment");
    let (servers, login) = config.nats.servers().unwrap();
    assert_eq!(
        servers,
        [
            "nats://nats-1:4222",
            "nats://nats-2:4222",
            "nats://nats-3:4222"
        ]
    );
    assert_eq!(login, Some(("hyfleet".into(), "backend-secret".into())));
    assert!(logins.contains("{ user: hyfleet, password: $HYFLEET_NATS_PASSWORD }"));
    assert_eq!(config.nats.replicas, 3);
    let login = Some(("hyfleet".to_owned(), "backend-secret".to_owned()));
    assert_eq!(
        config.mqtt.commands_endpoints().unwrap(),
        (1..=3)
            .map(|n| hyfleet::config::MqttEndpoint {
                host: format!("nats-{n}"),
                port: 1883,
                credentials: login.clone(),
            })
            .collect::<Vec<_>>(),
        "commands go down through any node"
    );
    assert_eq!(config.mqtt.topic_root, "hyfleet/v1");
    assert!(
        logins.contains("\"hyfleet.v1.bus.XY-H0001.telemetry\""),
        "devices may publish under the topic root hyfleet is given"
    );
    let deps = hyfleet["depends_on"].as_object().unwrap();
    assert_eq!(deps["postgres"]["condition"], "service_healthy");
    assert_eq!(hyfleet["deploy"]["replicas"], 3);
}
