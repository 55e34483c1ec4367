//! `GET /stream`: Server-Sent Events of alert transitions and positions as they commit.
//! A listener that falls behind skips ahead (and is told how much it missed) rather than hold
//! anything up; the store stays the place to catch up from.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::extract::Q;
use super::{Api, Problem};
use crate::live::LiveEvent;

/// The event streams open now: in all, and per token name.
#[derive(Default)]
pub(crate) struct Streams {
    open: std::sync::Mutex<(usize, std::collections::HashMap<String, usize>)>,
}

/// One open stream's place, given back when the stream ends (the client went away, the token
/// was deleted, the service stops).
struct Slot {
    streams: std::sync::Arc<Streams>,
    token: String,
}

impl Streams {
    fn take(
        self: &std::sync::Arc<Self>,
        token: &str,
        max: usize,
        per_token: usize,
    ) -> Result<Slot, Problem> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = open.1.get(token).copied().unwrap_or(0);
        if mine >= per_token {
            return Err(Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                format!(
                    "the token `{token}` has {mine} event streams open, the most one token may \
                     (api.max_streams_per_token)"
                ),
            )
            .retry_after(15));
        }
        if open.0 >= max {
            return Err(Problem::unavailable(format!(
                "{} event streams are open, the most this instance serves (api.max_streams)",
                open.0
            ))
            .retry_after(15));
        }
        open.0 += 1;
        *open.1.entry(token.to_owned()).or_default() += 1;
        Ok(Slot {
            streams: self.clone(),
            token: token.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.token);
            }
        }
    }
}

/// How often an open stream checks that its token still exists, for tokens deleted through
/// another instance (a deletion through this one ends the stream at once).
pub(super) const RECHECK: Duration = Duration::from_secs(10);

/// Resolves when the caller's token is deleted; never for configured tokens, which live as
/// long as the configuration (and the process) that names them.
async fn revoked(api: Api, caller: Caller) {
    let Some(id) = caller.token_id else {
        return std::future::pending().await;
    };
    let mut deleted = api.revoked.subscribe();
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let check_db = tokio::select! {
            r = deleted.recv() => match r {
                Ok(gone) if gone == id => return,
                Ok(_) => false,
                // Missed some deletions: ask the database which tokens still exist.
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return std::future::pending().await,
            },
            _ = tick.tick() => true,
        };
        if check_db && !token_exists(&api, id).await {
            return;
        }
    }
}

/// A failed check (database away, API busy) keeps the stream: it is asked again next time.
async fn token_exists(api: &Api, id: i64) -> bool {
    let Ok(client) = api.app.pool.get().await else {
        return true;
    };
    !matches!(
        client
            .query_opt("SELECT 1 FROM api_tokens WHERE id = $1", &[&id])
            .await,
        Ok(None)
    )
}

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
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
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
    let cfg = &api.app.config.api;
    let slot = api
        .streams
        .take(&caller.name, cfg.max_streams, cfg.max_streams_per_token)?;
    let rx = api.app.live.subscribe();
    let stop = api.app.shutdown.clone();
    let gone: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(revoked(api, caller));
    let state = (rx, filter, stop, gone, slot);
    let stream = futures_util::stream::unfold(
        state,
        |(mut rx, filter, mut stop, mut gone, slot)| async move {
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    // The stream ends with the service, so a graceful shutdown need not wait
                    // on it, and with its token, so a deleted token reads no more.
                    () = stop.wait() => return None,
                    () = &mut gone => return None,
                };
                match received {
                    Ok(e) if filter.wants(&e) => {
                        if let Some(ev) = event(&e) {
                            return Some((Ok(ev), (rx, filter, stop, gone, slot)));
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        let ev = Event::default().event("lagged").data(n.to_string());
                        return Some((Ok(ev), (rx, filter, stop, gone, slot)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
