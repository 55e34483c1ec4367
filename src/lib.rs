//! hyfleet: the telemetry backend for hydrogen vehicle fleets.
//!
//! A reading travels `ingest` (MQTT in) → `decode` (bytes to a validated [`domain::Reading`])
//! → `store` (one PostgreSQL transaction per batch, where `rules` turn readings into alert
//! transitions) → `notify` (webhooks from the outbox). `api` reads the store and serves people.

pub mod config;
pub mod decode;
pub mod domain;
pub mod geo;
pub mod notify;
pub mod rules;
pub mod sim;
