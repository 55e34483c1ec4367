//! Graceful shutdown: one `Trigger`, any number of `Shutdown` listeners. A stop is either for a
//! restart (the instance comes back under the same MQTT client id, so its broker session is
//! kept) or for good (`retire`: it leaves the shared subscription and ends its session, so that
//! nothing waits at the broker for an instance that will not return).

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Stop,
    Retire,
}

#[derive(Clone)]
pub struct Shutdown(watch::Receiver<State>);

pub struct Trigger(watch::Sender<State>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(State::Running);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Stop, to come back: the broker keeps this instance's session and queues for it.
    pub fn fire(&self) {
        self.0.send_if_modified(|s| {
            let changed = *s == State::Running;
            if changed {
                *s = State::Stop;
            }
            changed
        });
    }

    /// Stop for good: leave the shared subscription, drain what the broker already handed
    /// over, end the session. Ingest reads which stop it is when the stop begins.
    pub fn retire(&self) {
        self.0.send_if_modified(|s| {
            let changed = *s != State::Retire;
            *s = State::Retire;
            changed
        });
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown is asked for (or every trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|s| *s != State::Running).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() != State::Running
    }

    /// The stop asked for is for good (`Trigger::retire`).
    pub fn is_retiring(&self) -> bool {
        *self.0.borrow() == State::Retire
    }

    /// A listener that never fires, for components run outside a service.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(State::Running);
        std::mem::forget(tx);
        Shutdown(rx)
    }
}

/// Which stop a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C or SIGTERM: what systemd and Kubernetes send on every stop, restarts included.
    Stop,
    /// SIGUSR1: this instance leaves for good.
    Retire,
}

/// Resolves on Ctrl-C, SIGTERM or SIGUSR1, saying which.
pub async fn signal() -> Signal {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
        tokio::select! {
            _ = ctrl_c => Signal::Stop,
            _ = term.recv() => Signal::Stop,
            _ = usr1.recv() => Signal::Retire,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        Signal::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retire_is_a_stop_and_upgrades_one_under_way() {
        let (trigger, mut stop) = channel();
        assert!(!stop.is_triggered());
        trigger.fire();
        stop.wait().await;
        assert!(stop.is_triggered() && !stop.is_retiring());
        trigger.retire();
        assert!(stop.is_retiring());
        // A later plain stop does not take the retirement back.
        trigger.fire();
        assert!(stop.is_retiring());
    }
}
