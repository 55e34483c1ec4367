//! The operator API fuzzed by schemathesis (pinned in tests/requirements.txt) from its own
//! OpenAPI document: whatever it sends, no answer is a server error.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn schemathesis_finds_no_server_error() {
    let db = TestDb::new().await;
    let c = config(&db, &BROKER);
    let root = c.mqtt.topic_root.clone();
    let svc = InProcess::start(c).await;

    // A vehicle with readings, so that the vehicle endpoints have something to serve.
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    for n in 0..5i64 {
        let ts = now - chrono::Duration::seconds(10 - n);
        fw.publish(
            &format!("{root}/bike/XY-B0001/telemetry"),
            json!({"ts": ts.timestamp_millis(), "seq": n, "lat": 37.145, "lon": 111.781,
                   "speed_kmh": 3.0, "h2_g": 30.0, "locked": false})
            .to_string(),
        )
        .await;
    }
    fw.flush().await;
    eventually(30, "the vehicle is stored", || async {
        let r = get(&svc.url("/api/v1/vehicles/XY-B0001")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let dir = temp_dir();
    let log = dir.join("schemathesis.log");
    let schema = svc.url("/openapi.json");
    // SCHEMATHESIS_MAX_EXAMPLES=500 for a longer hunt than CI's.
    let max_examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "25".into());
    let mut child = match Command::new("schemathesis")
        .args(["run", &schema, "--checks", "not_a_server_error"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        // Bounded: a few cases per operation, each request at most 10 s, the run at most 600 s.
        .args(["--max-examples", &max_examples, "--request-timeout", "10"])
        .args(["--phases", "examples,coverage,fuzzing", "--workers", "2"])
        // An event stream never ends: a request to it would only time out.
        .args(["--exclude-path", "/api/v1/stream"])
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("schemathesis.err")).unwrap())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "schemathesis is not installed: `python3 -m pip install -r tests/requirements.txt`"
        ),
        Err(e) => panic!("cannot start schemathesis: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join("schemathesis.err")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.unwrap_or_else(|| panic!("schemathesis ran past 600 s:\n{out}\n{err}"));
    assert!(
        status.success(),
        "schemathesis found failures ({status}):\n{out}\n{err}"
    );
    eprintln!("{out}");
    // It did test the API, not just read the document: "N generated, N passed".
    let generated: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" generated")?.0.parse().ok())
        .unwrap_or(0);
    assert!(
        generated >= 100,
        "only {generated} test cases:\n{out}\n{err}"
    );
    svc.stop().await;
}
