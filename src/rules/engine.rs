//! The engine: one message and one vehicle's state in, alert changes and rides out.
//!
//! Time only moves forward for alerts: `state.last_ts` is the newest measurement acted on,
//! and a reading older than it (a backlog published after newer data) changes no alert.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::builtin::{self, Verdict};
use super::config::RulesConfig;
use super::consumption::{self, Learning};
use super::custom::{self, CustomRule};
use super::ride;
use super::state::{Slot, VehicleRuleState, slot_key, split_key};
use crate::domain::Profiles;
pub use crate::domain::{AlertAction, AlertChange, Ride};
use crate::domain::{Event, EventType, Reading, Severity, VehicleKind, tidy_numbers};
use crate::geo::{Crs, ZoneHit, ZoneIndex};

/// What the engine needs to know about a vehicle beyond its state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VehicleInfo {
    pub kind: VehicleKind,
    /// The vehicle's own tank size (its profile's unless overridden).
    pub tank_g: f32,
    /// An operator-set consumption ratio, used until the vehicle's own is learned.
    pub km_per_g: Option<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Alert(AlertChange),
    Ride(Ride),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("configuration option `rules.{option}`: {message}")]
    Config { option: String, message: String },
}

#[derive(Clone)]
pub struct Engine {
    pub(crate) rules: RulesConfig,
    pub(crate) profiles: Profiles,
    pub(crate) crs: Crs,
    pub(crate) zones: Arc<ZoneIndex>,
    custom: Vec<CustomRule>,
    cel_env: Arc<cel::Env>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules)
            .field("zones", &self.zones.len())
            .field("custom", &self.custom.len())
            .finish_non_exhaustive()
    }
}

/// Where and when a decision is taken.
/// What one reading tells the rules that judge it, besides the reading itself.
#[derive(Clone, Copy)]
struct Seen<'z> {
    /// Its fix, when plausible.
    geo: Option<GeoFix>,
    /// The zones within the fix's tolerance of it, nearest first, looked up once for every
    /// rule that asks (none without a plausible fix).
    around: &'z [ZoneHit<'z>],
    /// The GPS tolerance of its fix, metres.
    tol: f64,
    has_fix: bool,
    refuelled: bool,
    here: Moment,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Moment {
    pub at: DateTime<Utc>,
    pub pos: Option<(f64, f64)>,
}

/// A position good enough for geofences, and how far it may be off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GeoFix {
    pub lat: f64,
    pub lon: f64,
    pub tol_m: f64,
}

impl Engine {
    /// The rules of `rules` for vehicles of `profiles` over `zones`; positions are sent in
    /// `crs`.
    pub fn new(
        rules: &RulesConfig,
        profiles: &Profiles,
        crs: Crs,
        zones: Arc<ZoneIndex>,
    ) -> Result<Self, EngineError> {
        rules
            .validate()
            .map_err(|(option, message)| EngineError::Config { option, message })?;
        let custom = rules
            .custom
            .iter()
            .map(|c| CustomRule::new(c.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(option, message)| EngineError::Config { option, message })?;
        Ok(Self {
            rules: rules.clone(),
            profiles: profiles.clone(),
            crs,
            zones,
            custom,
            cel_env: Arc::new(cel::Env::stdlib()),
        })
    }

    pub fn zones(&self) -> &Arc<ZoneIndex> {
        &self.zones
    }

    /// The same rules over another set of zones (after the API changed them).
    pub fn with_zones(&self, zones: Arc<ZoneIndex>) -> Self {
        Self {
            zones,
            ..self.clone()
        }
    }

    pub fn rules(&self) -> &RulesConfig {
        &self.rules
    }

    /// GPS error to allow at a fence for a fix of this quality, capped: a poor fix must not
    /// excuse any parking place.
    pub fn tolerance_m(&self, hdop: Option<f32>) -> f64 {
        let extra = hdop.map_or(0.0, |h| (h as f64 - 1.0).max(0.0));
        let tol = self.rules.gps_tolerance_m + self.rules.hdop_tolerance_m * extra;
        tol.min(
            self.rules
                .max_gps_tolerance_m
                .max(self.rules.gps_tolerance_m),
        )
    }

    /// Whether a reading's position may be used at all (DESIGN §14).
    pub fn has_fix(&self, r: &Reading) -> bool {
        crate::geo::fix::no_value_fix(r, self.rules.max_hdop).is_none()
    }

    /// Kilometres per gram to predict range with: learned, else set, else nominal.
    pub fn km_per_g(&self, state: &VehicleRuleState, info: &VehicleInfo) -> f32 {
        state
            .learned_km_per_g()
            .or(info.km_per_g)
            .unwrap_or_else(|| self.profiles.get(info.kind).km_per_g())
    }

    /// How consumption samples of this vehicle are judged.
    fn learning(&self, info: &VehicleInfo) -> Learning {
        let profile = self.profiles.get(info.kind);
        let t = self.rules.thresholds(info.kind);
        Learning {
            expected_km_per_g: info.km_per_g.unwrap_or_else(|| profile.km_per_g()),
            // Recent driving: about two tanks' worth of kilometres.
            window_km: 2.0 * profile.range_km as f64,
            refuel_min_g: t.leak_tolerance_g.max(info.tank_g * 0.02),
        }
    }

    pub fn on_reading(
        &self,
        state: &mut VehicleRuleState,
        r: &Reading,
        info: &VehicleInfo,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        // A backlog older than what the alerts have seen cannot be placed in their history
        // without rewriting it: it is stored by the caller and left alone here.
        if state.last_ts.is_some_and(|t| r.ts < t) {
            return out;
        }
        state.last_ts = Some(r.ts);
        let t = self.rules.thresholds(info.kind);
        // A position of no value says nothing about where the vehicle is: the rules keep to
        // the last good fix, and it does not count towards (or against) plausibility.
        let has_fix = self.has_fix(r);
        let here = Moment {
            at: r.ts,
            pos: if has_fix {
                Some((r.lat, r.lon))
            } else {
                self.fix_pos(state)
            },
        };
        let tol = self.tolerance_m(r.hdop);
        let gps = match has_fix {
            true => builtin::gps_check(state, r, tol, t),
            false => builtin::GpsCheck::NO_FIX,
        };
        self.judge(
            state,
            &mut out,
            builtin::GPS_IMPLAUSIBLE,
            gps.verdict,
            0,
            here,
        );
        let geo = gps.plausible.then_some(GeoFix {
            lat: r.lat,
            lon: r.lon,
            tol_m: tol,
        });
        let refuelled = self.track_hydrogen(state, r, gps.plausible.then_some(gps.step_m), info);
        self.on_lock(state, &mut out, r, geo, info);
        let around = geo
            .map(|g| self.zones.near(g.lat, g.lon, g.tol_m))
            .unwrap_or_default();
        let seen = Seen {
            geo,
            around: &around,
            tol,
            has_fix,
            refuelled,
            here,
        };
        self.judge_builtin(state, &mut out, r, info, &seen);
        self.judge_custom(state, &mut out, r, info, &seen);
        out
    }

    /// Hydrogen and distance (`step_m` from the last plausible fix, when this one is
    /// plausible): the consumption learned, a refuel noticed (returned), the ride in progress
    /// advanced.
    fn track_hydrogen(
        &self,
        state: &mut VehicleRuleState,
        r: &Reading,
        step_m: Option<f64>,
        info: &VehicleInfo,
    ) -> bool {
        let learning = self.learning(info);
        consumption::observe(state, r, step_m, learning);
        let prev_h2 = state.h2_g.replace(r.h2_g);
        let refuelled = prev_h2.is_some_and(|p| r.h2_g > p + learning.refuel_min_g);
        if let Some(ride) = &mut state.ride {
            if refuelled {
                ride.refuelled_g += r.h2_g - prev_h2.unwrap_or(r.h2_g);
            }
            if let Some(step) = step_m {
                ride::advance(ride, step, r.odo_km);
            }
        }
        refuelled
    }

    /// The built-in rules' verdicts on one reading. Each concerns its own rule's slot only:
    /// all are judged, then stepped in turn.
    fn judge_builtin(
        &self,
        state: &mut VehicleRuleState,
        out: &mut Vec<Output>,
        r: &Reading,
        info: &VehicleInfo,
        seen: &Seen,
    ) {
        let t = self.rules.thresholds(info.kind);
        let Seen {
            geo,
            around,
            tol,
            has_fix,
            refuelled,
            here,
        } = *seen;
        let level = builtin::low_h2(
            r.h2_g,
            self.km_per_g(state, info),
            info,
            &self.profiles,
            t,
            state.open_severity(builtin::LOW_HYDROGEN),
        );
        let slow = geo.and_then(|g| builtin::slow_zone(around, g, info.kind));
        let speed = builtin::overspeed(r.speed_kmh, self.profiles.get(info.kind), slow, t);
        let service = builtin::service_area(&self.zones, geo, around, info.kind);
        let top = t.pressure_top_bar(self.profiles.nominal_pressure_bar(info.kind));
        let tank = builtin::tank_fault(r, t, top);
        let leak = builtin::leak(state, &Self::placed(r, has_fix, state), refuelled, tol, t);
        let verdicts = [
            (builtin::LOW_HYDROGEN, level, t.low_h2_hold_secs),
            (builtin::OVERSPEED, speed, t.overspeed_hold_secs),
            (
                builtin::OUT_OF_SERVICE_AREA,
                service,
                t.out_of_service_hold_secs,
            ),
            (builtin::TANK_FAULT, tank, t.tank_fault_hold_secs),
            (builtin::H2_LEAK_SUSPECTED, leak, t.leak_hold_secs),
        ];
        for (rule, verdict, hold) in verdicts {
            self.judge(state, out, rule, verdict, hold, here);
        }
    }

    /// The operator's CEL rules that apply to the vehicle's kind.
    fn judge_custom(
        &self,
        state: &mut VehicleRuleState,
        out: &mut Vec<Output>,
        r: &Reading,
        info: &VehicleInfo,
        seen: &Seen,
    ) {
        if self.custom.is_empty() {
            return;
        }
        let vehicle =
            custom::vehicle_value(state, info, self.km_per_g(state, info), &self.profiles);
        // The zones the fix is in (the rules' `zones`), nearest boundary first.
        let zones: Vec<ZoneHit<'_>> = seen
            .around
            .iter()
            .filter(|h| h.signed_m <= 0.0)
            .copied()
            .collect();
        for rule in self.custom.iter().filter(|c| c.applies_to(info.kind)) {
            let verdict = rule.evaluate(&self.cel_env, r, &vehicle, &zones);
            let hold = rule.config().hold_secs;
            self.judge(state, out, &rule.config().name, verdict, hold, seen.here);
        }
    }

    /// An unlock starts a ride, a lock ends the one in progress (where it ended: the reading's
    /// plausible fix, else the last good one).
    fn on_lock(
        &self,
        state: &mut VehicleRuleState,
        out: &mut Vec<Output>,
        r: &Reading,
        geo: Option<GeoFix>,
        info: &VehicleInfo,
    ) {
        match (r.locked, state.ride.is_some()) {
            (Some(false), false) => {
                let pos = self.fix_pos(state);
                ride::start(state, r.ts, pos, r.odo_km);
            }
            (Some(true), true) => {
                let end = geo.or_else(|| self.last_geo_fix(state));
                self.finish_ride(state, out, r.ts, end, r.odo_km, info);
            }
            _ => {}
        }
        if r.locked.is_some() {
            state.locked = r.locked;
        }
    }

    /// `r` where the vehicle is: at the last good fix when `r`'s own is of no value. The leak
    /// rule measures rest from the position, and a fix of no value must not look like a move
    /// away that restarts it.
    fn placed<'r>(r: &'r Reading, has_fix: bool, state: &VehicleRuleState) -> Cow<'r, Reading> {
        match (has_fix, state.fix) {
            (false, Some(f)) => Cow::Owned(Reading {
                lat: f.lat,
                lon: f.lon,
                ..r.clone()
            }),
            _ => Cow::Borrowed(r),
        }
    }

    pub fn on_event(
        &self,
        state: &mut VehicleRuleState,
        ev: &Event,
        info: &VehicleInfo,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let late = state.last_ts.is_some_and(|t| ev.ts < t);
        let body_pos = self.body_geo_fix(&ev.body);
        let odo = ev.body.get("odo_km").and_then(Value::as_f64);
        match ev.event_type {
            EventType::RideStart if !late && state.ride.is_none() => {
                let pos = body_pos
                    .map(|g| (g.lat, g.lon))
                    .or_else(|| self.fix_pos(state));
                ride::start(state, ev.ts, pos, odo);
                state.locked = Some(false);
            }
            // Events and readings travel on different topics, so a ride's end may arrive
            // after a newer reading: the ride still ends at its own time.
            EventType::RideEnd if state.ride.as_ref().is_some_and(|r| ev.ts >= r.started_at) => {
                let end = body_pos.or_else(|| self.last_geo_fix(state));
                self.finish_ride(state, &mut out, ev.ts, end, odo, info);
                if !late {
                    state.locked = Some(true);
                }
            }
            EventType::Refuel if !late => {
                let after = ev.body.get("h2_g_after").and_then(Value::as_f64);
                if let Some(after) = after.map(|a| a as f32) {
                    let before = state.h2_g.or_else(|| {
                        ev.body
                            .get("h2_g_before")
                            .and_then(Value::as_f64)
                            .map(|b| b as f32)
                    });
                    if let (Some(ride), Some(b)) = (&mut state.ride, before) {
                        ride.refuelled_g += (after - b).max(0.0);
                    }
                    consumption::refuelled(state, before, after, odo, self.learning(info));
                    state.h2_g = Some(after);
                    let t = self.rules.thresholds(info.kind);
                    let at = Moment {
                        at: ev.ts,
                        pos: self.fix_pos(state),
                    };
                    let level = builtin::low_h2(
                        after,
                        self.km_per_g(state, info),
                        info,
                        &self.profiles,
                        t,
                        state.open_severity(builtin::LOW_HYDROGEN),
                    );
                    self.judge(
                        state,
                        &mut out,
                        builtin::LOW_HYDROGEN,
                        level,
                        t.low_h2_hold_secs,
                        at,
                    );
                }
                state.rest = None;
                let at = Moment {
                    at: ev.ts,
                    pos: self.fix_pos(state),
                };
                self.judge(
                    state,
                    &mut out,
                    builtin::H2_LEAK_SUSPECTED,
                    Verdict::Clear,
                    0,
                    at,
                );
            }
            _ => {}
        }
        if !late {
            state.last_ts = Some(ev.ts);
        }
        out
    }

    /// What the rules need to know of a vehicle of `kind`, from its stored overrides.
    pub fn vehicle_info(
        &self,
        kind: VehicleKind,
        tank_g: Option<f32>,
        km_per_g: Option<f32>,
    ) -> VehicleInfo {
        VehicleInfo {
            kind,
            tank_g: tank_g.unwrap_or_else(|| self.profiles.get(kind).tank_g),
            km_per_g,
        }
    }

    /// A batch's newly stored readings and events of one vehicle, arrived at `now`: the
    /// vehicle is not offline, and each message goes through the rules in measurement order
    /// (an event lands among the readings by its time; equal times keep readings first).
    pub fn on_batch(
        &self,
        state: &mut VehicleRuleState,
        info: &VehicleInfo,
        readings: &[&Reading],
        events: &[&Event],
        now: DateTime<Utc>,
    ) -> Vec<Output> {
        enum Item<'a> {
            Reading(&'a Reading),
            Event(&'a Event),
        }
        let mut items: Vec<(DateTime<Utc>, Item<'_>)> = readings
            .iter()
            .map(|r| (r.ts, Item::Reading(r)))
            .chain(events.iter().map(|e| (e.ts, Item::Event(e))))
            .collect();
        // Stable: readings keep their order.
        items.sort_by_key(|i| i.0);
        let mut out = self.on_seen(state, now);
        for (_, item) in items {
            out.extend(match item {
                Item::Reading(r) => self.on_reading(state, r, info),
                Item::Event(e) => self.on_event(state, e, info),
            });
        }
        out
    }

    /// A message from the vehicle arrived at `now` (arrival time): it is not offline.
    pub fn on_seen(&self, state: &mut VehicleRuleState, now: DateTime<Utc>) -> Vec<Output> {
        let mut out = Vec::new();
        state.seen_at = Some(state.seen_at.map_or(now, |s| s.max(now)));
        let at = Moment {
            at: now,
            pos: self.fix_pos(state),
        };
        self.judge(state, &mut out, builtin::OFFLINE, Verdict::Clear, 0, at);
        out
    }

    /// The periodic check: `offline` opens once nothing has arrived for `offline_after`.
    pub fn on_tick(
        &self,
        state: &mut VehicleRuleState,
        info: &VehicleInfo,
        now: DateTime<Utc>,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let after = self.rules.thresholds(info.kind).offline_after_secs;
        let Some(seen) = state.seen_at else {
            return out;
        };
        if (now - seen).num_seconds() >= i64::from(after) {
            let at = Moment {
                at: now,
                pos: self.fix_pos(state),
            };
            let details = json!({"last_seen": seen, "offline_after_secs": after});
            let v = Verdict::Active(Severity::Warning, details);
            self.judge(state, &mut out, builtin::OFFLINE, v, 0, at);
        }
        out
    }

    /// The earliest time at which [`Engine::on_tick`] could open `offline` for this vehicle.
    pub fn offline_due(
        &self,
        state: &VehicleRuleState,
        kind: VehicleKind,
    ) -> Option<DateTime<Utc>> {
        if state.is_open(builtin::OFFLINE) {
            return None;
        }
        let after = self.rules.thresholds(kind).offline_after_secs;
        state
            .seen_at
            .map(|s| s + chrono::Duration::seconds(i64::from(after)))
    }

    fn fix_pos(&self, state: &VehicleRuleState) -> Option<(f64, f64)> {
        state.fix.map(|f| (f.lat, f.lon))
    }

    fn last_geo_fix(&self, state: &VehicleRuleState) -> Option<GeoFix> {
        state.fix.map(|f| GeoFix {
            lat: f.lat,
            lon: f.lon,
            tol_m: self.tolerance_m(f.hdop),
        })
    }

    fn body_geo_fix(&self, body: &Value) -> Option<GeoFix> {
        let lat = body.get("lat").and_then(Value::as_f64)?;
        let lon = body.get("lon").and_then(Value::as_f64)?;
        if !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)) {
            return None;
        }
        let hdop = body.get("hdop").and_then(Value::as_f64).map(|h| h as f32);
        let no_fix = (lat == 0.0 && lon == 0.0)
            || body.get("fix") == Some(&Value::Bool(false))
            || hdop.is_some_and(|h| h.is_nan() || h > self.rules.max_hdop);
        if no_fix {
            return None;
        }
        let (lat, lon) = self.crs.to_wgs84(lat, lon);
        Some(GeoFix {
            lat,
            lon,
            tol_m: self.tolerance_m(hdop),
        })
    }

    fn finish_ride(
        &self,
        state: &mut VehicleRuleState,
        out: &mut Vec<Output>,
        ended_at: DateTime<Utc>,
        end: Option<GeoFix>,
        odo_km: Option<f64>,
        info: &VehicleInfo,
    ) {
        let Some(mut track) = state.ride.take() else {
            return;
        };
        if odo_km.is_some() {
            track.last_odo_km = odo_km;
        }
        let distance_km = ride::distance_km(&track);
        let h2_used_g = ride::h2_used_g(&track, state.h2_g);
        let t = self.rules.thresholds(info.kind);
        let check = end.map(|g| builtin::parking(&self.zones, g, info.kind));
        let moment = Moment {
            at: state.last_ts.map_or(ended_at, |t| t.max(ended_at)),
            pos: end.map(|g| (g.lat, g.lon)),
        };
        if let Some(check) = &check
            && t.parking_required
            && self.zones.has_parking_for(info.kind)
        {
            self.parking_outcome(state, out, check, moment);
        }
        let start = (!track.start_lat.is_nan()).then_some((track.start_lat, track.start_lon));
        out.push(Output::Ride(Ride {
            started_at: track.started_at,
            ended_at,
            start,
            end: end.map(|g| (g.lat, g.lon)),
            distance_km,
            h2_used_g,
            ended_in_parking: check.as_ref().is_some_and(|c| c.allowed()),
            parking_zone: check.and_then(|c| c.parking.map(|(id, _)| id)),
        }));
    }

    fn parking_outcome(
        &self,
        state: &mut VehicleRuleState,
        out: &mut Vec<Output>,
        check: &builtin::ParkingCheck,
        at: Moment,
    ) {
        let rule = builtin::PARKING_VIOLATION;
        if check.allowed() {
            let keys: Vec<String> = state
                .alerts
                .keys()
                .filter(|k| split_key(k).0 == rule)
                .cloned()
                .collect();
            for key in keys {
                let zone = split_key(&key).1.map(str::to_owned);
                self.step(state, out, (rule, zone.as_deref()), Verdict::Clear, 0, at);
            }
            return;
        }
        // Each ride's end is its own judgement: report it even when the rules believe an
        // alert is open, since an operator may have resolved that one. The store opens
        // nothing (and notifies no one) when one is in fact still open.
        let zone = check.no_parking.as_ref().map(|(id, _, _)| id.clone());
        let slot = state
            .alerts
            .entry(slot_key(rule, zone.as_deref()))
            .or_default();
        slot.open = Some(Severity::Warning);
        slot.since.clear();
        let mut details = check.details();
        tidy_numbers(&mut details);
        out.push(Output::Alert(AlertChange {
            rule: rule.to_owned(),
            zone,
            action: AlertAction::Open(Severity::Warning),
            at: at.at,
            lat: at.pos.map(|p| p.0),
            lon: at.pos.map(|p| p.1),
            details,
        }));
    }

    /// [`Engine::step`] for a rule without zones.
    pub(crate) fn judge(
        &self,
        state: &mut VehicleRuleState,
        out: &mut Vec<Output>,
        rule: &str,
        verdict: Verdict,
        hold_secs: u32,
        m: Moment,
    ) {
        self.step(state, out, (rule, None), verdict, hold_secs, m);
    }

    /// Advance one `(rule, zone)` slot by a verdict: hold times on the way up, hysteresis
    /// (the `Keep` band) on the way down, escalation while open.
    pub(crate) fn step(
        &self,
        state: &mut VehicleRuleState,
        out: &mut Vec<Output>,
        (rule, zone): (&str, Option<&str>),
        verdict: Verdict,
        hold_secs: u32,
        m: Moment,
    ) {
        let key = slot_key(rule, zone);
        let slot = state.alerts.entry(key.clone()).or_default();
        let change = advance_slot(slot, verdict, hold_secs, m.at);
        if slot.is_idle() {
            state.alerts.remove(&key);
        }
        if let Some((action, mut details)) = change {
            // Rules put f32 readings and thresholds into their details: print them as sent.
            tidy_numbers(&mut details);
            out.push(Output::Alert(AlertChange {
                rule: rule.to_owned(),
                zone: zone.map(str::to_owned),
                action,
                at: m.at,
                lat: m.pos.map(|p| p.0),
                lon: m.pos.map(|p| p.1),
                details,
            }));
        }
    }
}

fn advance_slot(
    slot: &mut Slot,
    verdict: Verdict,
    hold_secs: u32,
    at: DateTime<Utc>,
) -> Option<(AlertAction, Value)> {
    match verdict {
        Verdict::Unknown => None,
        Verdict::Keep => {
            slot.since.clear();
            None
        }
        Verdict::Clear => {
            slot.since.clear();
            slot.open
                .take()
                .map(|_| (AlertAction::Resolve, Value::Object(Default::default())))
        }
        Verdict::Active(sev, details) => {
            for s in [Severity::Info, Severity::Warning, Severity::Critical] {
                if s <= sev {
                    slot.since.entry(s).or_insert(at);
                } else {
                    slot.since.remove(&s);
                }
            }
            let hold = chrono::Duration::seconds(i64::from(hold_secs));
            let held = slot
                .since
                .iter()
                .filter(|(_, since)| at - **since >= hold)
                .map(|(s, _)| *s)
                .max()?;
            match slot.open {
                None => {
                    slot.open = Some(held);
                    Some((AlertAction::Open(held), details))
                }
                Some(open) if held > open => {
                    slot.open = Some(held);
                    Some((AlertAction::Escalate(held), details))
                }
                // The higher severity's condition is gone (it is not in `since` any more) and
                // the lower one has held: the alert stays open, at the lower severity.
                Some(open) if held < open => {
                    slot.open = Some(held);
                    Some((AlertAction::Deescalate(held), details))
                }
                Some(_) => None,
            }
        }
    }
}
