//! Telemetry completeness and the `telemetry_gap` rule (DESIGN §14).
//!
//! Firmware numbers its readings (`seq`), so a reading that never arrived (a broker that
//! dropped it, a lost backlog) leaves a hole in the numbers. Between two consecutive readings
//! of a vehicle (in measurement time) `after - before - 1` are missing; a fall of `seq` is a
//! firmware restart, not a gap.
//!
//! Per vehicle and hour, `telemetry_completeness` keeps the hour's readings as stretches over
//! which `seq` never falls (first and last time and seq, how many arrived) and the readings
//! missing in the hour: inside the stretches, plus the gap from the vehicle's previous reading
//! when that lies in an earlier hour. A late backlog lands in its own hour's stretches and
//! the gap it fills shrinks; the hour after it is recounted from it. Only readings the batch
//! newly stored come here, under the vehicle's row lock, so redeliveries count once and any
//! instance may take any vehicle.
//!
//! The rule looks at the current and the previous hour (server time): it opens once an
//! hour has missed more than `max_missing_share` of its readings for `hold_secs` of hyfleet's
//! clock, and clears when every such hour is back under `clear_missing_share` (a backlog
//! filled the gap) or the lossy hour is more than an hour behind. The hold is not the
//! vehicle's time: a broker queue drained after an outage, or one instance's share of a
//! shared subscription waiting for it, spans many minutes of the vehicles' time and fills its
//! gaps within seconds of hyfleet's.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::builtin::Verdict;
use super::engine::{Engine, Moment};
use super::{Output, VehicleRuleState};
use crate::domain::{Reading, Severity};

pub const TELEMETRY_GAP: &str = "telemetry_gap";

/// `[rules.telemetry_gap]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryGapConfig {
    /// Opens when an hour misses more than this share of its readings (0.05 = 5 %)...
    pub max_missing_share: f64,
    /// ...and clears once every recent hour is at or below this one.
    pub clear_missing_share: f64,
    /// How long (hyfleet's clock) the loss must last before the alert opens: a backlog or a
    /// delayed share of the readings that fills the gap within it raises nothing.
    pub hold_secs: u32,
}

impl Default for TelemetryGapConfig {
    fn default() -> Self {
        TelemetryGapConfig {
            max_missing_share: 0.05,
            clear_missing_share: 0.03,
            hold_secs: 300,
        }
    }
}

impl TelemetryGapConfig {
    /// `Err((option, message))` names the option below `rules.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let ok = |v: f64| v.is_finite() && (0.0..1.0).contains(&v);
        if !ok(self.max_missing_share) {
            return Err((
                "telemetry_gap.max_missing_share".into(),
                "must be a share in [0, 1), e.g. 0.05 for 5 %".into(),
            ));
        }
        if !(ok(self.clear_missing_share) && self.clear_missing_share <= self.max_missing_share) {
            return Err((
                "telemetry_gap.clear_missing_share".into(),
                "must be a share in [0, max_missing_share]".into(),
            ));
        }
        Ok(())
    }
}

/// Readings in time order over which `seq` never falls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stretch {
    pub t0: DateTime<Utc>,
    pub t1: DateTime<Utc>,
    pub s0: i64,
    pub s1: i64,
    /// Readings that arrived.
    pub n: i64,
}

impl Stretch {
    fn missing(&self) -> i64 {
        // A seq sent twice under two times counts as two readings: never below zero.
        (self.s1 - self.s0 + 1 - self.n).max(0)
    }
}

/// Missing between two consecutive readings: none when seq fell (the firmware restarted).
pub fn gap(before: i64, after: i64) -> i64 {
    (after - before - 1).max(0)
}

/// The hour a reading counts in.
pub fn hour_of(ts: DateTime<Utc>) -> DateTime<Utc> {
    ts.duration_trunc(Duration::hours(1)).unwrap_or(ts)
}

/// Restarts in one hour beyond which seq tells nothing more worth keeping.
pub const MAX_STRETCHES: usize = 32;

/// One vehicle's hour.
#[derive(Debug, Clone, PartialEq)]
pub struct Hour {
    pub hour: DateTime<Utc>,
    /// In time order, disjoint; between two of them seq falls.
    pub stretches: Vec<Stretch>,
    pub missing: i64,
}

impl Hour {
    pub fn new(hour: DateTime<Utc>) -> Self {
        Hour {
            hour,
            stretches: Vec::new(),
            missing: 0,
        }
    }

    /// An hour as stored: its stretches are JSON.
    pub fn from_stored(
        hour: DateTime<Utc>,
        stretches: Value,
        missing: i64,
    ) -> Result<Self, serde_json::Error> {
        Ok(Hour {
            hour,
            stretches: serde_json::from_value(stretches)?,
            missing,
        })
    }

    /// The stretches, as stored.
    pub fn stretches_json(&self) -> Value {
        serde_json::to_value(&self.stretches).expect("stretches serialise")
    }

    pub fn received(&self) -> i64 {
        self.stretches.iter().map(|s| s.n).sum()
    }

    /// Share of the hour's readings missing, 0 when nothing is known.
    pub fn missing_share(&self) -> f64 {
        let all = self.received() + self.missing;
        if all == 0 {
            0.0
        } else {
            self.missing as f64 / all as f64
        }
    }

    /// Place a newly stored reading among the hour's stretches.
    pub fn add(&mut self, ts: DateTime<Utc>, seq: i64) {
        let st = &mut self.stretches;
        let i = st.partition_point(|s| s.t1 < ts);
        if let Some(s) = st.get_mut(i)
            && s.t0 <= ts
        {
            // Inside a stretch: it fills one of its holes. (A seq outside the stretch's span
            // here would mean two restarts within it; it is counted as received only.)
            s.n += 1;
            return;
        }
        // Between stretch i-1 and stretch i. Seq falls from one to the next, so it can
        // continue at most one of them.
        if i > 0 && seq >= st[i - 1].s1 {
            let s = &mut st[i - 1];
            s.t1 = ts;
            s.s1 = seq;
            s.n += 1;
        } else if let Some(s) = st.get_mut(i)
            && seq <= s.s0
        {
            s.t0 = ts;
            s.s0 = seq;
            s.n += 1;
        } else if st.len() >= MAX_STRETCHES {
            // Firmware whose seq jumps about (or a device sending noise) would grow the row
            // with every reading: past the cap a reading is counted as received only, next
            // to its time.
            let near = i.min(st.len() - 1);
            st[near].n += 1;
        } else {
            st.insert(
                i,
                Stretch {
                    t0: ts,
                    t1: ts,
                    s0: seq,
                    s1: seq,
                    n: 1,
                },
            );
        }
    }

    fn inner_missing(&self) -> i64 {
        self.stretches.iter().map(Stretch::missing).sum()
    }
}

/// Count what `hours` (in time order) miss, `prev` being the vehicle's hour with readings
/// before them.
pub fn recount(prev: Option<&Hour>, hours: &mut [Hour]) {
    let mut last = prev.and_then(|h| h.stretches.last()).map(|s| s.s1);
    for h in hours {
        let cross = match (last, h.stretches.first()) {
            (Some(a), Some(f)) => gap(a, f.s0),
            _ => 0,
        };
        h.missing = h.inner_missing() + cross;
        if let Some(l) = h.stretches.last() {
            last = Some(l.s1);
        }
    }
}

/// A vehicle's stored hours around a batch, and what the batch made of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// Every hour known from `from` on (recounted), in time order.
    pub hours: Vec<Hour>,
    /// Indexes into `hours` of those to store.
    pub changed: Vec<usize>,
    /// Net change of the vehicle's missing readings.
    pub delta: i64,
}

/// Pure: `known` is the vehicle's stored hours in time order: the last one before `from` (if
/// any), every one from `from` on up to past the batch, and the next after (if any);
/// `readings` the batch's new ones, `(ts, seq)`, each in an hour ≥ `from`.
pub fn merge(known: Vec<Hour>, from: DateTime<Utc>, readings: &[(DateTime<Utc>, i64)]) -> Merged {
    let mut prev = None;
    let mut hours: BTreeMap<DateTime<Utc>, Hour> = BTreeMap::new();
    for h in known {
        if h.hour < from {
            prev = Some(h);
        } else {
            hours.insert(h.hour, h);
        }
    }
    let before: HashMap<DateTime<Utc>, (usize, i64)> = hours
        .values()
        .map(|h| (h.hour, (h.stretches.len(), h.missing)))
        .collect();
    let old_missing: i64 = hours.values().map(|h| h.missing).sum();
    let mut touched = std::collections::HashSet::new();
    for &(ts, seq) in readings {
        let hour = hour_of(ts);
        hours
            .entry(hour)
            .or_insert_with(|| Hour::new(hour))
            .add(ts, seq);
        touched.insert(hour);
    }
    let mut hours: Vec<Hour> = hours.into_values().collect();
    recount(prev.as_ref(), &mut hours);
    let delta = hours.iter().map(|h| h.missing).sum::<i64>() - old_missing;
    let changed = hours
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            touched.contains(&h.hour)
                || before.get(&h.hour) != Some(&(h.stretches.len(), h.missing))
        })
        .map(|(i, _)| i)
        .collect();
    Merged {
        hours,
        changed,
        delta,
    }
}

/// What the rule makes of a vehicle's recent hours.
pub fn verdict(recent: &[&Hour], cfg: &TelemetryGapConfig) -> Verdict {
    let worst = recent
        .iter()
        .copied()
        .max_by(|a, b| a.missing_share().total_cmp(&b.missing_share()));
    let Some(w) = worst else {
        return Verdict::Clear;
    };
    let share = w.missing_share();
    if share > cfg.max_missing_share {
        let details = json!({
            "hour": w.hour,
            "received": w.received(),
            "missing": w.missing,
            "missing_share": (share * 1000.0).round() / 1000.0,
            "max_missing_share": cfg.max_missing_share,
        });
        Verdict::Active(Severity::Warning, details)
    } else if share > cfg.clear_missing_share {
        Verdict::Keep
    } else {
        Verdict::Clear
    }
}

/// The batch's newly stored readings that carry a `seq`, per vehicle database id: what
/// completeness accounts for. Pure; the caller reads and writes the hours.
#[derive(Debug)]
pub struct Batch {
    by_vehicle: BTreeMap<i32, Vec<(DateTime<Utc>, i64)>>,
    now: DateTime<Utc>,
}

/// The window of hours the rule looks at, around `now`.
fn recent(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        hour_of(now) - Duration::hours(1),
        hour_of(now) + Duration::hours(1),
    )
}

impl Batch {
    pub fn new<'a>(
        fresh: impl IntoIterator<Item = (i32, &'a Reading)>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut by_vehicle: BTreeMap<i32, Vec<(DateTime<Utc>, i64)>> = BTreeMap::new();
        for (id, r) in fresh {
            if let Some(seq) = r.seq {
                by_vehicle
                    .entry(id)
                    .or_default()
                    .push((r.ts, i64::from(seq)));
            }
        }
        for rs in by_vehicle.values_mut() {
            rs.sort_unstable();
            rs.dedup();
        }
        Batch { by_vehicle, now }
    }

    pub fn is_empty(&self) -> bool {
        self.by_vehicle.is_empty()
    }

    /// Per vehicle, the span of hours to read: those its readings fall in and the rule's
    /// recent ones (the store adds the nearest stored hour on either side).
    pub fn windows(&self) -> Vec<(i32, DateTime<Utc>, DateTime<Utc>)> {
        let (recent_from, recent_to) = recent(self.now);
        self.by_vehicle
            .iter()
            .map(|(id, rs)| {
                let first = rs.iter().map(|r| hour_of(r.0)).min().unwrap_or(recent_from);
                let last = rs.iter().map(|r| hour_of(r.0)).max().unwrap_or(recent_to);
                (*id, first.min(recent_from), last.max(recent_to))
            })
            .collect()
    }

    /// Merge the batch into the stored hours (per vehicle, in time order, as read for
    /// [`Batch::windows`]).
    pub fn merge(self, mut stored: HashMap<i32, Vec<Hour>>) -> Accounted {
        let mut accounted = Accounted {
            merged: HashMap::with_capacity(self.by_vehicle.len()),
            now: self.now,
            missing: 0,
            filled: 0,
        };
        for (id, from, _) in self.windows() {
            let m = merge(
                stored.remove(&id).unwrap_or_default(),
                from,
                &self.by_vehicle[&id],
            );
            if m.delta > 0 {
                accounted.missing += m.delta as u64;
            } else {
                accounted.filled += m.delta.unsigned_abs();
            }
            accounted.merged.insert(id, m);
        }
        accounted
    }
}

/// What a batch did to completeness.
#[derive(Debug)]
pub struct Accounted {
    merged: HashMap<i32, Merged>,
    now: DateTime<Utc>,
    /// Readings newly found missing...
    pub missing: u64,
    /// ...and missing ones that arrived after all (net, per vehicle).
    pub filled: u64,
}

impl Accounted {
    /// The hours to store, with their vehicle.
    pub fn changed(&self) -> impl Iterator<Item = (i32, &Hour)> {
        self.merged
            .iter()
            .flat_map(|(id, m)| m.changed.iter().map(move |&i| (*id, &m.hours[i])))
    }

    /// `telemetry_gap` for vehicle `id`, on its rule state (run before the other rules, which
    /// save the state). Nothing for a vehicle the batch brought no numbered reading of.
    pub fn on_vehicle(
        &self,
        engine: &Engine,
        id: i32,
        state: &mut VehicleRuleState,
    ) -> Vec<Output> {
        let Some(m) = self.merged.get(&id) else {
            return Vec::new();
        };
        let (recent_from, recent_to) = recent(self.now);
        let recent: Vec<&Hour> = m
            .hours
            .iter()
            .filter(|h| h.hour >= recent_from && h.hour < recent_to)
            .collect();
        on_completeness(
            engine,
            state,
            &recent,
            self.now,
            &engine.rules.telemetry_gap,
        )
    }
}

/// The rule's step for one vehicle, at `now` (hyfleet's clock, like `offline`): its time
/// only moves forward, so a backlog that fills a gap clears the alert now, never back then.
fn on_completeness(
    engine: &Engine,
    state: &mut VehicleRuleState,
    recent: &[&Hour],
    now: DateTime<Utc>,
    cfg: &TelemetryGapConfig,
) -> Vec<Output> {
    let mut out = Vec::new();
    let verdict = verdict(recent, cfg);
    let pending = state.alerts.contains_key(TELEMETRY_GAP);
    if !pending && !matches!(verdict, Verdict::Active(..)) {
        return out;
    }
    let m = Moment {
        at: now,
        pos: state.fix.map(|f| (f.lat, f.lon)),
    };
    engine.judge(state, &mut out, TELEMETRY_GAP, verdict, cfg.hold_secs, m);
    out
}

#[cfg(test)]
#[path = "completeness_tests.rs"]
mod tests;
