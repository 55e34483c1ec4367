//! A newcomer's first hour: the demo finds a PostgreSQL even where the local one cannot be
//! used, `hyfleet doctor` tells a broker that drops a backlog from one that keeps it, and logs
//! written to a file or a log collector carry no terminal colours.

use std::process::{Command, Stdio};

use hyfleet::config::Config;
use hyfleet::doctor::{self, Verdict};

use crate::support::*;

#[tokio::test]
async fn demo_runs_a_throwaway_postgresql_when_the_local_one_cannot_be_used() {
    // Nothing listens on port 1: the demo's first choice is unreachable.
    let (url, server) = hyfleet::demo::database("postgres://postgres@127.0.0.1:1/hyfleet_demo")
        .await
        .expect("a throwaway PostgreSQL from the installed binaries");
    let server = server.expect("the throwaway server, kept by the caller");
    assert!(
        url.ends_with(&format!(":{}/hyfleet_demo", server.port())),
        "{url}"
    );

    hyfleet::store::prepare_database(&url).await.unwrap();
    let client = hyfleet::store::connect(&url).await.unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied as usize, hyfleet::store::migrate::MIGRATIONS.len());
    drop(client);

    let dir = server.dir().to_owned();
    assert!(dir.join("data").is_dir());
    drop(server);
    assert!(!dir.exists(), "the throwaway server's files are removed");
    assert!(
        hyfleet::store::connect(&url).await.is_err(),
        "the throwaway server is stopped"
    );
}

#[tokio::test]
async fn demo_uses_the_local_postgresql_when_it_can() {
    let db = TestDb::new().await;
    let (url, server) = hyfleet::demo::database(&db.url()).await.unwrap();
    assert_eq!(url, db.url());
    assert!(server.is_none());
}

#[tokio::test]
async fn connection_errors_name_the_address_and_the_cause() {
    let err = hyfleet::demo::reset_database("postgres://postgres:hunter2@127.0.0.1:1/x")
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

fn doctor_config(db: &TestDb, broker: &str) -> Config {
    let mut c = config(db, broker);
    c.mqtt.topic_root = format!("test/{}", unique("doctor"));
    c
}

fn verdict(checks: &[doctor::Check], name: &str) -> (Verdict, String) {
    let c = checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {checks:?}"));
    (c.verdict, c.detail.clone())
}

#[tokio::test]
async fn doctor_measures_a_debian_default_broker_dropping_the_backlog() {
    let db = TestDb::new().await;
    // Debian's Mosquitto as installed: no queue or inflight settings.
    let broker = PrivateBroker::start("").await;
    let checks = doctor::run(&doctor_config(&db, &broker.url()), None).await;
    assert_eq!(verdict(&checks, "postgresql").0, Verdict::Ok);
    assert_eq!(verdict(&checks, "postgresql version").0, Verdict::Ok);
    assert_eq!(verdict(&checks, "postgresql rights").0, Verdict::Ok);
    assert_eq!(verdict(&checks, "broker").0, Verdict::Ok);
    let (v, detail) = verdict(&checks, "broker backlog");
    assert_eq!(v, Verdict::Fail, "{detail}");
    assert!(detail.contains("kept 1000 of"), "{detail}");
    let (v, detail) = verdict(&checks, "broker inflight");
    assert_eq!(v, Verdict::Fail, "{detail}");
    assert!(detail.contains("only 20 "), "{detail}");
    assert_eq!(verdict(&checks, "broker retained").0, Verdict::Ok);
}

#[tokio::test]
async fn doctor_passes_a_broker_with_the_shipped_limits() {
    let db = TestDb::new().await;
    let broker = PrivateBroker::start(&shipped_limits()).await;
    let checks = doctor::run(&doctor_config(&db, &broker.url()), None).await;
    for c in &checks {
        assert_eq!(c.verdict, Verdict::Ok, "{c}");
    }
    // The probe leaves no session behind: a second run starts from nothing and agrees.
    let again = doctor::run(&doctor_config(&db, &broker.url()), None).await;
    assert!(again.iter().all(|c| c.verdict == Verdict::Ok));
}

#[tokio::test]
async fn doctor_passes_the_shipped_broker_with_a_user_of_its_own() {
    use crate::support::broker::{Credentials, DOCTOR, ShippedBroker};
    let db = TestDb::new().await;
    let credentials = Credentials::make(1, 0);
    let broker = ShippedBroker::start(&credentials).await;
    let mut c = config(&db, &broker.url(credentials.of(DOCTOR)));
    c.mqtt.topic_root = "hyfleet/v1".into();
    let probe = broker.url(credentials.of(DOCTOR));
    let checks = doctor::run(&c, Some(&probe)).await;
    for check in &checks {
        assert_eq!(check.verdict, Verdict::Ok, "{check}");
    }
    assert!(checks.iter().any(|c| c.name == "broker backlog"));
}

#[tokio::test]
async fn doctor_says_what_to_do_when_nothing_answers() {
    let mut c = Config::default();
    c.database.url = "postgres://postgres@127.0.0.1:1/hyfleet".into();
    c.mqtt.url = "mqtt://127.0.0.1:1".into();
    let checks = doctor::run(&c, None).await;
    let (v, detail) = verdict(&checks, "postgresql");
    assert_eq!(v, Verdict::Fail);
    assert!(
        detail.contains("127.0.0.1:1") && detail.contains("set DATABASE_URL"),
        "{detail}"
    );
    let (v, detail) = verdict(&checks, "broker");
    assert_eq!(v, Verdict::Fail);
    assert!(
        detail.contains("127.0.0.1:1") && detail.contains("MQTT_URL"),
        "{detail}"
    );
}

/// `hyfleet migrate` with its output going to a pipe, as a file or a collector would take it.
fn migrate_output(db: &TestDb, format: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyfleet"));
    cmd.arg("migrate")
        .env("DATABASE_URL", db.url())
        .env_remove("HYFLEET_CONFIG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    match format {
        Some(f) => cmd.env("HYFLEET_LOG_FORMAT", f),
        None => cmd.env_remove("HYFLEET_LOG_FORMAT"),
    };
    let out = cmd.output().expect("run hyfleet migrate");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn logs_carry_no_colours_off_a_terminal_and_json_on_request() {
    // Not prepared: `migrate` creates it and logs each migration it applies.
    let db = TestDb {
        name: unique("hyfleet_test"),
    };
    let text = migrate_output(&db, None);
    assert!(text.contains("applied migration"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in piped logs: {text:?}"
    );

    let db = TestDb {
        name: unique("hyfleet_test"),
    };
    let json = migrate_output(&db, Some("json"));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "applied migration" && l["level"] == "INFO"),
        "{json}"
    );
}

#[tokio::test]
async fn doctor_never_probes_with_ingests_login() {
    // With client ids pinned to users, a probe logged in as ingest would be ingest's session.
    let db = TestDb::new().await;
    let mut c = doctor_config(&db, "mqtt://hyfleet.backend:secret@127.0.0.1:1");
    c.mqtt.topic_root = "hyfleet/v1".into();
    let checks = doctor::run(&c, None).await;
    let (v, detail) = verdict(&checks, "broker");
    assert_eq!(v, Verdict::Warn, "{detail}");
    assert!(detail.contains("user of its own"), "{detail}");
    assert!(checks.iter().all(|c| !c.name.starts_with("broker ")));
}
