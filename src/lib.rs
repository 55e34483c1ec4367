//! hyfleet: the telemetry backend for hydrogen vehicle fleets.
//!
//! A reading travels `ingest` (MQTT in) → `decode` (bytes to a validated [`domain::Reading`])
//! → `store` (one PostgreSQL transaction per batch, where `rules` turn readings into alert
//! transitions) → `notify` (webhooks from the outbox). `api` reads the store and serves people.

pub mod api;
pub mod app;
pub mod config;
pub mod decode;
pub mod demo;
pub mod doctor;
pub mod domain;
pub mod gbfs;
pub mod geo;
pub mod health;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod rules;
pub mod sample;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod web;
