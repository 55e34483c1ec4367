//! What `/readyz` reports: whether each dependency is working right now.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

#[derive(Default)]
pub struct Health {
    mqtt_subscribed: AtomicBool,
    store_writing: AtomicBool,
}

impl Health {
    pub fn set_mqtt(&self, ok: bool) {
        self.mqtt_subscribed.store(ok, Relaxed);
    }

    pub fn set_store(&self, ok: bool) {
        self.store_writing.store(ok, Relaxed);
    }

    pub fn mqtt(&self) -> bool {
        self.mqtt_subscribed.load(Relaxed)
    }

    pub fn store(&self) -> bool {
        self.store_writing.load(Relaxed)
    }
}
