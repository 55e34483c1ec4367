//! The one way an alert transition leaves its transaction: [`AlertPublisher::enqueue`] writes
//! it to the webhook outbox inside the transaction that made it, and
//! [`AlertPublisher::announce`], after the commit, wakes the delivery worker and puts it on
//! the live feed. Ingest, the offline sweep and the operator API all publish through it.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_postgres::Transaction;

use crate::domain::AlertEvent;
use crate::live::{Hub, LiveEvent};

#[derive(Clone)]
pub struct AlertPublisher {
    wake: Arc<Notify>,
    live: Hub,
}

/// Transitions in the outbox of a transaction not yet committed: announce them once it has.
#[must_use = "announce the events once the transaction has committed"]
#[derive(Debug, Default)]
pub struct Enqueued(Vec<AlertEvent>);

impl Enqueued {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl AlertPublisher {
    pub fn new(live: Hub) -> Self {
        AlertPublisher {
            wake: Arc::new(Notify::new()),
            live,
        }
    }

    /// What the delivery worker waits on besides its poll.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Write `events` to the outbox in `tx`, the transaction that made them: a change that
    /// rolls back sends nothing, one that commits is sent even if hyfleet stops right after.
    pub async fn enqueue(
        &self,
        tx: &Transaction<'_>,
        events: Vec<AlertEvent>,
    ) -> anyhow::Result<Enqueued> {
        super::outbox::enqueue(tx, &events).await?;
        Ok(Enqueued(events))
    }

    /// After the commit: the worker sends them now rather than at its next poll, and the live
    /// feed shows them.
    pub fn announce(&self, enqueued: Enqueued) {
        if enqueued.is_empty() {
            return;
        }
        self.wake.notify_one();
        for e in enqueued.0 {
            self.live.publish(LiveEvent::Alert(e));
        }
    }
}
