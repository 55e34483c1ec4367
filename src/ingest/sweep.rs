//! The `offline` rule needs no message to fire: every few seconds the sweep looks for
//! vehicles that went quiet, runs the rules' tick on them under their row locks, and stores
//! and publishes what it decides, as a batch's unit of work does.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

use super::commit::record;
use crate::domain::{AlertEvent, VehicleKind};
use crate::notify::AlertPublisher;
use crate::rules::{Engine, SharedEngine, VehicleRuleState};
use crate::shutdown::Shutdown;
use crate::store::jsonb::JsonText;
use crate::store::vehicles;

/// Every 5 s until `shutdown`: one sweep in its own transaction.
pub async fn run(
    pool: deadpool_postgres::Pool,
    rules: std::sync::Arc<SharedEngine>,
    alerts: AlertPublisher,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait() => return,
        }
        let result: anyhow::Result<()> = async {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let events = sweep(&tx, &rules.current(), Utc::now()).await?;
            let enqueued = alerts.enqueue(&tx, events).await?;
            tx.commit().await?;
            alerts.announce(enqueued);
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = format!("{e:#}"), "offline sweep failed");
        }
    }
}

/// The `offline` check over every vehicle quiet for at least the shortest `offline_after` of
/// any kind. Vehicles being written right now are skipped (they are not quiet). The caller
/// publishes the events in the same transaction and commits.
pub async fn sweep(
    tx: &Transaction<'_>,
    engine: &Engine,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<AlertEvent>> {
    let shortest = VehicleKind::ALL
        .iter()
        .map(|k| engine.rules().thresholds(*k).offline_after_secs)
        .min()
        .unwrap_or(0);
    let cutoff = now - chrono::Duration::seconds(i64::from(shortest));
    let mut emitted = Vec::new();
    let mut saved = Vec::new();
    for v in vehicles::lock_quiet(tx, cutoff).await? {
        let Ok(mut state) = serde_json::from_str::<VehicleRuleState>(&v.rule_state.0) else {
            continue;
        };
        let info = engine.vehicle_info(v.kind, v.tank_g, v.km_per_g);
        let outputs = engine.on_tick(&mut state, &info, now);
        if outputs.is_empty() {
            continue;
        }
        emitted.extend(record(tx, v.id, outputs).await?);
        saved.push((
            v.id,
            vehicles::Memory {
                learned_km_per_g: state.learned_km_per_g(),
                state: JsonText(serde_json::to_string(&state)?),
            },
        ));
    }
    vehicles::save_memories(tx, &saved).await?;
    Ok(emitted)
}
