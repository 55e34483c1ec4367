//! `GET /stream`: Server-Sent Events of alert transitions and positions as they commit.
//! A listener that falls behind skips ahead (and is told how much it missed) rather than hold
//! anything up; the store stays the place to catch up from.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::extract::Q;
use super::{AppState, Problem};
use crate::live::LiveEvent;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamParams {
    /// `alert`, `position` or both comma-separated (default both).
    events: Option<String>,
    /// Only this vehicle.
    vehicle: Option<String>,
    /// For EventSource, which cannot set headers; read by the auth layer.
    #[allow(dead_code)]
    access_token: Option<String>,
}

struct Filter {
    alerts: bool,
    positions: bool,
    vehicle: Option<String>,
}

impl Filter {
    fn wants(&self, e: &LiveEvent) -> bool {
        let (on, vehicle) = match e {
            LiveEvent::Alert(a) => (self.alerts, &a.alert.vehicle_id),
            LiveEvent::Position(p) => (self.positions, &p.vehicle_id),
        };
        on && self.vehicle.as_ref().is_none_or(|v| v == vehicle)
    }
}

fn event(e: &LiveEvent) -> Option<Event> {
    let (name, id) = match e {
        LiveEvent::Alert(a) => ("alert", Some(a.id.to_string())),
        LiveEvent::Position(_) => ("position", None),
    };
    let mut ev = Event::default().event(name).json_data(e).ok()?;
    if let Some(id) = id {
        ev = ev.id(id);
    }
    Some(ev)
}

pub(super) async fn stream(
    State(s): State<AppState>,
    Q(p): Q<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let (mut alerts, mut positions) = (true, true);
    if let Some(list) = &p.events {
        (alerts, positions) = (false, false);
        for name in list.split(',') {
            match name.trim() {
                "alert" => alerts = true,
                "position" => positions = true,
                other => {
                    return Err(Problem::bad_request(format!(
                        "events: `{other}` is not alert or position"
                    )));
                }
            }
        }
    }
    let filter = Filter {
        alerts,
        positions,
        vehicle: p.vehicle,
    };
    let rx = s.hooks.live.subscribe();
    let state = (rx, filter, s.shutdown.clone());
    let stream = futures_util::stream::unfold(state, |(mut rx, filter, mut stop)| async move {
        loop {
            let received = tokio::select! {
                r = rx.recv() => r,
                // The stream ends with the service, so a graceful shutdown need not wait on it.
                () = stop.wait() => return None,
            };
            match received {
                Ok(e) if filter.wants(&e) => {
                    if let Some(ev) = event(&e) {
                        return Some((Ok(ev), (rx, filter, stop)));
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    let ev = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(ev), (rx, filter, stop)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
