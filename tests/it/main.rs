//! Integration tests against real PostgreSQL and real Mosquitto, each with its own database
//! and topic root so that they run in parallel.

mod alerts;
mod api;
mod buses;
mod cluster;
mod completeness;
mod dashboard;
mod deploy;
mod devices;
mod faults;
mod fences;
mod firsthour;
mod gbfs;
mod ingest;
mod lifecycle;
mod limits;
mod operators;
mod scale;
mod scaledown;
mod schemathesis;
#[allow(dead_code)] // each test file uses its own part of the support
mod support;
mod webhooks;
