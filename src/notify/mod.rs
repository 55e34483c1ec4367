//! Alert notifications (docs/alerts.md): a transactional outbox and its delivery worker.
//!
//! Producers publish through the [`AlertPublisher`]: into the outbox in the transaction that
//! changes an alert, to the worker and the live feed after it commits; [`spawn_worker`] sends
//! what is due to each webhook in its [`Format`], signed, retried with backoff, folded into
//! digests when a chat robot's rate limit would be passed; the API lists and changes webhooks
//! and their [`deliveries`] through the functions of [`outbox`].

mod clock;
mod config;
pub mod labels;
pub mod message;
mod netguard;
pub mod outbox;
mod policy;
mod publisher;
pub mod sign;
mod worker;

pub use clock::{Clock, OffsetClock, SystemClock};
pub use config::{Format, MIN_SECRET_BYTES, NotifyConfig, WebhookConfig, check_secret, secret_key};
pub use netguard::{UrlRefused, check_url, is_private};
pub use outbox::{
    Attempt, Delivery, Webhook, WebhookError, attempts, create_webhook, delete_webhook, deliveries,
    get_webhook, list_webhooks, redact_url, sync_config_webhooks,
};
pub use publisher::{AlertPublisher, Enqueued};
pub use worker::{MAX_ANSWER_BYTES, Worker, delivery_panics, spawn_worker, spawn_worker_with_wake};
