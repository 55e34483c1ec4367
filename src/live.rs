//! The live feed: what just committed (alert transitions, vehicle positions), for the SSE
//! stream and the dashboard. Lossy by design: a slow listener misses updates, never stalls
//! ingest; the store stays the source of truth.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::domain::{AlertEvent, VehicleKind};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    Alert(AlertEvent),
    Position(Position),
}

#[derive(Debug, Clone, Serialize)]
pub struct Position {
    pub vehicle_id: String,
    pub kind: VehicleKind,
    pub ts: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f32,
    pub h2_g: f32,
    pub locked: Option<bool>,
}

#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<LiveEvent>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl Hub {
    pub fn publish(&self, event: LiveEvent) {
        // No listener is not an error.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }

    pub fn has_listeners(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}
