//! The unit of work: one batch, one transaction, everything it means committed together or
//! not at all. Ingest acknowledges a batch's messages only after [`Committer::commit`]
//! returns.
//!
//! In order, each step a call to the part that owns it:
//! 1. the vehicles: ids resolved (registered on first sight), records of unknown vehicles or
//!    of another kind refused, the rows locked in id order (`store::vehicles`);
//! 2. the readings, stored once each: only new ones go on (`store::telemetry`), into the
//!    minute and day rollups (`store::rollup`); events, statuses and rejects
//!    (`store::records`, `store::vehicles`);
//! 3. telemetry completeness: the gaps in `seq` (`rules::completeness`, stored by
//!    `store::completeness`);
//! 4. the rules over the new readings and events, per vehicle in time order (`rules`), their
//!    alert changes and rides stored (`store::alerts`, `store::rides`);
//! 5. each vehicle's latest state and rule state, one update per vehicle (`store::vehicles`);
//! 6. the alert transitions into the webhook outbox, then the commit, then the worker woken
//!    and the live feed told (`notify::AlertPublisher`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Transaction};

use crate::decode::Decoded;
use crate::domain::Profiles;
use crate::domain::{AlertEvent, Event, Reading, Reject, RejectReason, VehicleId, VehicleKind};
use crate::live::{Hub, LiveEvent, Position};
use crate::metrics::{PhaseTimes, WritePhase};
use crate::notify::AlertPublisher;
use crate::rules::{Engine, Output, SharedEngine, VehicleInfo, VehicleRuleState, completeness};
use crate::store::jsonb::JsonText;
use crate::store::registry::VehicleRef;
use crate::store::rollup::{self, Prior};
use crate::store::{Registry, alerts, partitions, records, rides, telemetry, vehicles};

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub stored: usize,
    pub alert_events: usize,
    pub duplicates: usize,
    pub events: usize,
    pub rejects: usize,
    /// The newest `ts` among the readings newly stored.
    pub newest_ts: Option<DateTime<Utc>>,
    /// Where the batch's time went.
    pub phases: PhaseTimes,
    /// Readings newly found missing between consecutive `seq` (net, per vehicle)...
    pub readings_missing: u64,
    /// ...and missing ones that arrived late and filled their gap.
    pub gap_filled: u64,
}

/// What a commit reaches beyond the database.
#[derive(Clone)]
pub struct Services {
    pub registry: Arc<Registry>,
    pub rules: Arc<SharedEngine>,
    pub alerts: AlertPublisher,
    pub live: Hub,
}

/// One database connection committing batches; ingest runs several to overlap commits.
pub struct Committer {
    client: Client,
    profiles: Profiles,
    auto_register: bool,
    services: Services,
}

/// A vehicle of the batch, locked: where it was and what the rules remember.
struct Vehicle {
    prior: Option<Prior>,
    state: VehicleRuleState,
    info: VehicleInfo,
    /// The rules ran for it: its state is to be saved.
    ruled: bool,
}

impl Committer {
    pub async fn connect(
        url: &str,
        profiles: Profiles,
        auto_register: bool,
        services: Services,
    ) -> anyhow::Result<Self> {
        let client = crate::store::connect(url).await?;
        telemetry::prepare(&client)
            .await
            .context("cannot create the staging table")?;
        Ok(Committer {
            client,
            profiles,
            auto_register,
            services,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Commit `batch` in one transaction. On error nothing is committed and the caller may try
    /// the same batch again: every step is idempotent across retries. Records refused on the
    /// way (unknown vehicle, another kind) are moved into `batch.rejects`.
    pub async fn commit(
        &mut self,
        batch: &mut Decoded,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Outcome> {
        let mut clock = PhaseTimes::default();
        let mut outcome = Outcome::default();
        let refs = self.resolve(batch).await?;
        refuse_unknown_or_other_kind(batch, &refs, now);
        let engine = self.services.rules.current();
        let id_of = |v: &VehicleId| refs[v].id;

        let tx = self.client.transaction().await?;
        let (ids, mut fleet) = lock(&tx, &refs, &batch.readings, &engine, now).await?;
        clock.lap(WritePhase::Lock);

        let fresh =
            store_readings(&tx, &batch.readings, &refs, now, &mut clock, &mut outcome).await?;
        let prior: HashMap<i32, Prior> = fleet
            .iter()
            .filter_map(|(id, v)| Some((*id, v.prior?)))
            .collect();
        let (minutes, days) =
            rollup::accumulate_with(&fresh, |r| id_of(&r.vehicle), &prior, |r| engine.has_fix(r));
        rollup::upsert(&tx, rollup::Table::Minute, &minutes).await?;
        rollup::upsert(&tx, rollup::Table::Day, &days).await?;
        let events = records::insert_events(&tx, &batch.events, id_of).await?;
        outcome.events = events.len();
        vehicles::save_statuses(&tx, &batch.statuses, id_of).await?;
        outcome.rejects = records::insert_rejects(&tx, &batch.rejects).await?;
        clock.lap(WritePhase::Records);

        let mut alerts =
            account_completeness(&tx, &engine, &fresh, &refs, &mut fleet, now, &mut outcome)
                .await
                .context("telemetry completeness")?;
        clock.lap(WritePhase::Completeness);
        alerts.extend(
            run_rules(&tx, &engine, &fresh, &events, &refs, &mut fleet, now)
                .await
                .context("rules")?,
        );
        clock.lap(WritePhase::Rules);

        save_vehicles(&tx, &ids, &fresh, &refs, fleet, &engine, now).await?;
        outcome.alert_events = alerts.len();
        let enqueued = self.services.alerts.enqueue(&tx, alerts).await?;
        clock.lap(WritePhase::State);
        tx.commit().await?;
        clock.lap(WritePhase::Commit);
        outcome.phases = clock;

        self.services.alerts.announce(enqueued);
        show_positions(&self.services.live, &fresh, &engine);
        Ok(outcome)
    }

    async fn resolve(&self, batch: &Decoded) -> anyhow::Result<HashMap<VehicleId, VehicleRef>> {
        let mut wanted: Vec<(VehicleId, VehicleKind)> = Vec::new();
        let mut seen: HashSet<&VehicleId> = HashSet::new();
        let all = batch
            .readings
            .iter()
            .map(|r| (&r.vehicle, r.kind))
            .chain(batch.events.iter().map(|e| (&e.vehicle, e.kind)))
            .chain(batch.statuses.iter().map(|s| (&s.vehicle, s.kind)));
        for (v, k) in all {
            if seen.insert(v) {
                wanted.push((v.clone(), k));
            }
        }
        self.services
            .registry
            .resolve(&self.client, &wanted, self.auto_register, &self.profiles)
            .await
            .context("cannot resolve vehicle ids")
    }
}

/// Lock the batch's vehicles in id order (another writer, or instance, with readings of the
/// same vehicles waits here instead of deadlocking later) and read where each was and what
/// the rules remember of it. Returns the sorted ids too.
async fn lock(
    tx: &Transaction<'_>,
    refs: &HashMap<VehicleId, VehicleRef>,
    readings: &[Reading],
    engine: &Engine,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<i32>, BTreeMap<i32, Vehicle>)> {
    // Old readings are checked against the packs, which no packer may change meanwhile;
    // taken before any row lock, so a packer waiting for it holds nothing a writer needs.
    if readings
        .iter()
        .any(|r| r.ts < partitions::unpacked_from(now))
    {
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared($1)",
            &[&partitions::PACK_LOCK_KEY],
        )
        .await?;
    }
    let kinds: HashMap<i32, VehicleKind> = refs.values().map(|r| (r.id, r.kind)).collect();
    let mut ids: Vec<i32> = kinds.keys().copied().collect();
    ids.sort_unstable();
    let fleet = vehicles::lock(tx, &ids)
        .await?
        .into_iter()
        .map(|v| {
            let vehicle = Vehicle {
                prior: v.prior,
                state: crate::rules::parse_rule_state(v.id, &v.rule_state.0),
                info: engine.vehicle_info(kinds[&v.id], v.tank_g, v.km_per_g),
                ruled: false,
            };
            (v.id, vehicle)
        })
        .collect();
    Ok((ids, fleet))
}

/// Store the readings; returns those not stored before, each once, sorted by vehicle then
/// time: a redelivered or resent reading was stored before and goes no further.
async fn store_readings<'a>(
    tx: &Transaction<'_>,
    readings: &'a [Reading],
    refs: &HashMap<VehicleId, VehicleRef>,
    now: DateTime<Utc>,
    clock: &mut PhaseTimes,
    outcome: &mut Outcome,
) -> anyhow::Result<Vec<&'a Reading>> {
    if readings.is_empty() {
        return Ok(Vec::new());
    }
    let id_of = |r: &Reading| refs[&r.vehicle].id;
    let unpacked_from = partitions::unpacked_from(now);
    let mut fresh: Vec<&Reading> =
        if telemetry::copy_new(tx, readings, id_of, unpacked_from).await? {
            readings.iter().collect()
        } else {
            telemetry::copy(tx, readings, id_of).await?;
            clock.lap(WritePhase::Copy);
            let mut new = telemetry::move_in(tx, unpacked_from).await?;
            // Taking each key out as it is found lists a reading sent twice in one batch once.
            readings
                .iter()
                .filter(|r| new.remove(&telemetry::key(r, id_of(r))))
                .collect()
        };
    clock.lap(WritePhase::Insert);
    outcome.stored = fresh.len();
    outcome.duplicates = readings.len() - fresh.len();
    fresh.sort_by(|a, b| a.vehicle.cmp(&b.vehicle).then(a.ts.cmp(&b.ts)));
    outcome.newest_ts = fresh.iter().map(|r| r.ts).max();
    Ok(fresh)
}

/// Account for the gaps in `seq` the new readings open or fill, and run `telemetry_gap` on
/// the vehicles' rule state (before the other rules, which save it). One read and one write
/// per batch, whatever the number of readings.
async fn account_completeness(
    tx: &Transaction<'_>,
    engine: &Engine,
    fresh: &[&Reading],
    refs: &HashMap<VehicleId, VehicleRef>,
    fleet: &mut BTreeMap<i32, Vehicle>,
    now: DateTime<Utc>,
    outcome: &mut Outcome,
) -> anyhow::Result<Vec<AlertEvent>> {
    let batch = completeness::Batch::new(fresh.iter().map(|r| (refs[&r.vehicle].id, *r)), now);
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut stored: HashMap<i32, Vec<completeness::Hour>> = HashMap::new();
    for row in crate::store::completeness::read(tx, &batch.windows()).await? {
        let hour = completeness::Hour::from_stored(row.hour, row.stretches, row.missing)
            .context("reading completeness stretches")?;
        stored.entry(row.vehicle).or_default().push(hour);
    }
    let accounted = batch.merge(stored);
    outcome.readings_missing = accounted.missing;
    outcome.gap_filled = accounted.filled;
    let rows: Vec<crate::store::completeness::HourRow> = accounted
        .changed()
        .map(|(vehicle, h)| crate::store::completeness::HourRow {
            vehicle,
            hour: h.hour,
            stretches: h.stretches_json(),
            received: i32::try_from(h.received()).unwrap_or(i32::MAX),
            missing: h.missing,
        })
        .collect();
    crate::store::completeness::write(tx, &rows).await?;
    let mut events = Vec::new();
    for (id, v) in fleet.iter_mut() {
        let outputs = accounted.on_vehicle(engine, *id, &mut v.state);
        events.extend(record(tx, *id, outputs).await?);
    }
    Ok(events)
}

/// The rules over each vehicle's new readings and events, in time order; what they decide is
/// stored.
async fn run_rules(
    tx: &Transaction<'_>,
    engine: &Engine,
    fresh: &[&Reading],
    events: &[Event],
    refs: &HashMap<VehicleId, VehicleRef>,
    fleet: &mut BTreeMap<i32, Vehicle>,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<AlertEvent>> {
    let mut readings: HashMap<i32, Vec<&Reading>> = HashMap::new();
    for r in fresh {
        readings.entry(refs[&r.vehicle].id).or_default().push(r);
    }
    let mut happened: HashMap<i32, Vec<&Event>> = HashMap::new();
    for e in events {
        happened.entry(refs[&e.vehicle].id).or_default().push(e);
    }
    let mut out = Vec::new();
    for (id, v) in fleet.iter_mut() {
        let (r, e) = (readings.remove(id), happened.remove(id));
        if r.is_none() && e.is_none() {
            continue;
        }
        v.ruled = true;
        let outputs = engine.on_batch(
            &mut v.state,
            &v.info,
            r.as_deref().unwrap_or_default(),
            e.as_deref().unwrap_or_default(),
            now,
        );
        out.extend(record(tx, *id, outputs).await?);
    }
    Ok(out)
}

/// Store what the rules decided for one vehicle: alert changes (returning the transitions
/// they made) and rides. Also the offline sweep's way.
pub(crate) async fn record(
    tx: &Transaction<'_>,
    vehicle_id: i32,
    outputs: Vec<Output>,
) -> anyhow::Result<Vec<AlertEvent>> {
    let mut events = Vec::new();
    for o in outputs {
        match o {
            Output::Alert(change) => events.extend(alerts::apply(tx, vehicle_id, &change).await?),
            Output::Ride(ride) => rides::insert(tx, vehicle_id, &ride).await?,
        }
    }
    Ok(events)
}

/// One update per vehicle: last heard from now; its newest reading, where it is not older
/// than the stored latest state; its newest usable fix; what the rules remember.
async fn save_vehicles(
    tx: &Transaction<'_>,
    ids: &[i32],
    fresh: &[&Reading],
    refs: &HashMap<VehicleId, VehicleRef>,
    fleet: BTreeMap<i32, Vehicle>,
    engine: &Engine,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut updates: HashMap<i32, vehicles::Update<'_>> = HashMap::new();
    // `fresh` is sorted by vehicle then time: the last one kept of each is the newest.
    for r in fresh {
        let id = refs[&r.vehicle].id;
        let u = updates.entry(id).or_default();
        let newer = fleet
            .get(&id)
            .and_then(|v| v.prior)
            .is_none_or(|p| p.ts <= r.ts);
        if newer {
            u.latest = Some(r);
        }
        if engine.has_fix(r) {
            u.fix = Some(r);
        }
    }
    for (id, v) in fleet.into_iter().filter(|(_, v)| v.ruled) {
        updates.entry(id).or_default().memory = Some(vehicles::Memory {
            learned_km_per_g: v.state.learned_km_per_g(),
            state: JsonText(serde_json::to_string(&v.state).context("serializing rule state")?),
        });
    }
    vehicles::save(tx, ids, now, &updates).await?;
    Ok(())
}

/// After the commit: each vehicle's newest position (a reading without a usable fix moves
/// nothing on the map).
fn show_positions(live: &Hub, fresh: &[&Reading], engine: &Engine) {
    if !live.has_listeners() {
        return;
    }
    let placed: Vec<&Reading> = fresh
        .iter()
        .copied()
        .filter(|r| engine.has_fix(r))
        .collect();
    // Sorted by vehicle then time: the last of each run is the newest.
    for (i, r) in placed.iter().enumerate() {
        if placed.get(i + 1).is_some_and(|n| n.vehicle == r.vehicle) {
            continue;
        }
        live.publish(LiveEvent::Position(Position {
            vehicle_id: r.vehicle.to_string(),
            kind: r.kind,
            ts: r.ts,
            lat: r.lat,
            lon: r.lon,
            speed_kmh: r.speed_kmh,
            h2_g: r.h2_g,
            locked: r.locked,
        }));
    }
}

/// Records of vehicles that are not registered (with `ingest.auto_register` off), or sent
/// under a kind other than their vehicle's registered one, become rejects: a bike publishing
/// under `bus/` would otherwise be checked against a bus's tank and speed. A new vehicle
/// registers with the kind of its first record in the batch, so the same batch's others are
/// checked against it. A status of an unknown vehicle is dropped without a reject.
fn refuse_unknown_or_other_kind(
    batch: &mut Decoded,
    refs: &HashMap<VehicleId, VehicleRef>,
    now: DateTime<Utc>,
) {
    let refusal = |v: &VehicleId, sent: VehicleKind| match refs.get(v) {
        None => Some((
            RejectReason::UnknownVehicle,
            format!("vehicle `{v}` is not registered and ingest.auto_register is off"),
        )),
        Some(r) if r.kind != sent => Some((
            RejectReason::KindMismatch,
            format!("vehicle `{v}` is registered as a {}, not a {sent}", r.kind),
        )),
        Some(_) => None,
    };
    let mut rejects = Vec::new();
    let mut refuse =
        |v: &VehicleId, sent: VehicleKind, channel: &str, payload: &dyn Fn() -> Vec<u8>| {
            let Some((reason, detail)) = refusal(v, sent) else {
                return false;
            };
            if !(channel == "status" && reason == RejectReason::UnknownVehicle) {
                let topic = format!("{sent}/{v}/{channel}");
                rejects.push(Reject::new(
                    now,
                    &topic,
                    Some(v.as_str()),
                    reason,
                    &detail,
                    &payload(),
                ));
            }
            true
        };
    batch.readings.retain(|r| {
        !refuse(&r.vehicle, r.kind, "telemetry", &|| {
            serde_json::to_vec(r).unwrap_or_default()
        })
    });
    batch.events.retain(|e| {
        !refuse(&e.vehicle, e.kind, "event", &|| {
            serde_json::to_vec(&e.body).unwrap_or_default()
        })
    });
    batch.statuses.retain(|s| {
        !refuse(&s.vehicle, s.kind, "status", &|| {
            (if s.online { "online" } else { "offline" }).into()
        })
    });
    batch.rejects.extend(rejects);
}
