//! Integration tests against real PostgreSQL and real Mosquitto, each with its own database
//! and topic root so that they run in parallel.

mod alerts;
mod api;
mod dashboard;
mod deploy;
mod faults;
mod gbfs;
mod ingest;
mod limits;
mod operators;
mod scale;
mod schemathesis;
#[allow(dead_code)] // each test file uses its own part of the support
mod support;
