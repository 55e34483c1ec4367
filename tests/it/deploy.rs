//! How hyfleet is deployed: the shipped Mosquitto configuration (credentials, ACL, queue
//! limits) run for real, and the compose file, Dockerfile and Grafana dashboard checked against
//! hyfleet's own configuration and schema.

mod broker;
mod compose;
mod dashboard;

use std::path::PathBuf;

/// A file of the repository.
fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}
