//! Bytes and a topic in, validated readings, events, statuses and rejects out (docs/mqtt.md).
//! Pure: no I/O, the clock is a parameter, so every rule here is tested exhaustively.

mod limits;
mod topic;
mod wire;

pub use limits::{MAX_EVENT_BYTES, MAX_EVENT_EXTRA_BYTES};

pub use topic::{Channel, Topic};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::value::RawValue;

use crate::config::{Config, Profiles};
use crate::domain::{Event, EventType, Reading, Reject, RejectReason, Status, VehicleKind};
use crate::geo::Crs;
use wire::{WireEvent, WireRefuel, WireTelemetry};

/// What one or more messages decoded to. `decode` appends, so one value can gather a batch.
#[derive(Debug, Default)]
pub struct Decoded {
    pub readings: Vec<Reading>,
    pub events: Vec<Event>,
    pub statuses: Vec<Status>,
    pub rejects: Vec<Reject>,
}

impl Decoded {
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
            && self.events.is_empty()
            && self.statuses.is_empty()
            && self.rejects.is_empty()
    }

    pub fn clear(&mut self) {
        self.readings.clear();
        self.events.clear();
        self.statuses.clear();
        self.rejects.clear();
    }
}

/// The decoder's view of the configuration.
#[derive(Debug, Clone)]
pub struct Decoder {
    root: String,
    max_payload_bytes: usize,
    max_batch: usize,
    max_future: Duration,
    max_age: Duration,
    profiles: Profiles,
    crs: Crs,
}

/// A record refused with a reason and an explanation.
/// Panics unless `out` keeps the contract: every accepted reading within the ranges of
/// docs/mqtt.md and not from the future, every refusal saying why and keeping no more of the
/// payload than it may. The decoder's fuzz test and `fuzz/` targets check each output with it.
#[doc(hidden)]
pub fn assert_within_contract(out: &Decoded, now: DateTime<Utc>) {
    for r in &out.readings {
        assert!((-90.0..=90.0).contains(&r.lat) && (-180.0..=180.0).contains(&r.lon));
        assert!(r.speed_kmh.is_finite() && (0.0..=MAX_SPEED_KMH).contains(&r.speed_kmh));
        assert!(r.h2_g.is_finite() && r.h2_g >= 0.0);
        assert!(r.ts <= now + Duration::minutes(5));
    }
    for rej in &out.rejects {
        assert!(!rej.detail.is_empty());
        assert!(rej.payload.len() <= crate::domain::Reject::PAYLOAD_KEPT);
    }
}

struct Refusal(RejectReason, String);

fn refuse<T>(reason: RejectReason, detail: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(reason, detail.into()))
}

const MAX_SPEED_KMH: f32 = 250.0;

impl Decoder {
    pub fn new(config: &Config) -> Self {
        Decoder {
            root: config.mqtt.topic_root.clone(),
            max_payload_bytes: config.ingest.max_payload_bytes,
            max_batch: config.ingest.max_batch,
            max_future: Duration::seconds(config.ingest.max_future_secs),
            max_age: Duration::days(config.store.raw_retention_days.into()),
            profiles: config.profiles.clone(),
            crs: config.geo.crs,
        }
    }

    /// The topic filter that covers the whole contract (bad topics under the root included,
    /// so that they are recorded rather than never seen).
    pub fn subscription(&self) -> String {
        format!("{}/#", self.root)
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// Decode one MQTT message received at `now`, appending what it held to `out`.
    pub fn decode(&self, topic: &str, payload: &[u8], now: DateTime<Utc>, out: &mut Decoded) {
        let reject = |out: &mut Decoded, vehicle: Option<&str>, r: RejectReason, detail: String| {
            out.rejects
                .push(Reject::new(now, topic, vehicle, r, &detail, payload))
        };
        let t = match topic::parse(&self.root, topic) {
            Ok(t) => t,
            Err(detail) => return reject(out, None, RejectReason::BadTopic, detail),
        };
        let vehicle = Some(t.vehicle.as_str());
        if payload.len() > self.max_payload_bytes {
            let detail = format!(
                "payload is {} bytes, over ingest.max_payload_bytes = {}",
                payload.len(),
                self.max_payload_bytes
            );
            return reject(out, vehicle, RejectReason::TooLarge, detail);
        }
        if t.channel != Channel::Cmd && std::str::from_utf8(payload).is_err() {
            return reject(
                out,
                vehicle,
                RejectReason::MalformedJson,
                "payload is not UTF-8".into(),
            );
        }
        match t.channel {
            Channel::Cmd => {}
            Channel::Status => match self.status(&t, payload, now) {
                Ok(Some(s)) => out.statuses.push(s),
                Ok(None) => {}
                Err(Refusal(r, d)) => reject(out, vehicle, r, d),
            },
            Channel::Event => match self.event(&t, payload, now) {
                Ok(e) => out.events.push(e),
                Err(Refusal(r, d)) => reject(out, vehicle, r, d),
            },
            Channel::Telemetry => self.telemetry(&t, topic, payload, now, out),
        }
    }

    fn telemetry(
        &self,
        t: &Topic,
        topic: &str,
        payload: &[u8],
        now: DateTime<Utc>,
        out: &mut Decoded,
    ) {
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        let vehicle = Some(t.vehicle.as_str());
        // A backlog's record is refused alone, keeping only its own bytes.
        let reject = |out: &mut Decoded, reason, detail: String, bytes: &[u8]| {
            out.rejects
                .push(Reject::new(now, topic, vehicle, reason, &detail, bytes))
        };
        if first != Some(&b'[') {
            match self.reading(t, payload, now) {
                Ok(r) => out.readings.push(r),
                Err(Refusal(reason, detail)) => reject(out, reason, detail, payload),
            }
            return;
        }
        // A backlog: each record stands or falls alone.
        let reject_whole = |out: &mut Decoded, reason, detail| reject(out, reason, detail, payload);
        let items: Vec<&RawValue> = match serde_json::from_slice(payload) {
            Ok(items) => items,
            Err(e) => {
                let Refusal(r, d) = json_refusal(e);
                return reject_whole(out, r, d);
            }
        };
        if items.is_empty() {
            return reject_whole(out, RejectReason::Schema, "empty backlog array".into());
        }
        if items.len() > self.max_batch {
            let detail = format!(
                "backlog of {} records, over ingest.max_batch = {}",
                items.len(),
                self.max_batch
            );
            return reject_whole(out, RejectReason::Schema, detail);
        }
        for (i, item) in items.iter().enumerate() {
            let bytes = item.get().as_bytes();
            match self.reading(t, bytes, now) {
                Ok(r) => out.readings.push(r),
                Err(Refusal(reason, detail)) => {
                    reject(out, reason, format!("backlog record {i}: {detail}"), bytes)
                }
            }
        }
    }

    fn reading(&self, t: &Topic, bytes: &[u8], now: DateTime<Utc>) -> Result<Reading, Refusal> {
        let w: WireTelemetry = serde_json::from_slice(bytes).map_err(|e| {
            // A syntax error met inside a field reaches us wrapped as a data error: tell the
            // two apart by checking the syntax alone.
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(syntax) => json_refusal(syntax),
                Ok(_) => json_refusal(e),
            }
        })?;
        if let Some(id) = &w.vehicle_id
            && id != t.vehicle.as_str()
        {
            return refuse(
                RejectReason::IdMismatch,
                format!(
                    "payload vehicle_id `{id}` differs from the topic's `{}`",
                    t.vehicle
                ),
            );
        }
        // PostgreSQL keeps microseconds: a reading is identified by what the store can hold.
        let ts = require(w.ts, "ts")?.0.trunc_subsecs(6);
        let lat = require(w.lat, "lat")?;
        let lon = require(w.lon, "lon")?;
        let speed_kmh = require(w.speed_kmh, "speed_kmh")?;
        let h2_g = require(w.h2_g, "h2_g")?;
        let tank = self.profiles.get(t.kind).tank_g;
        if let Some(detail) = out_of_range(&w, (lat, lon), speed_kmh, h2_g, tank) {
            return refuse(RejectReason::OutOfRange, detail);
        }
        let faults = w.faults.unwrap_or_default();
        if faults.iter().any(|f| f.contains('\0')) {
            return refuse(RejectReason::Schema, NUL_TEXT.replace("{}", "faults"));
        }
        if let Some(extra) = &w.extra
            && extra.iter().any(|(k, v)| k.contains('\0') || holds_nul(v))
        {
            return refuse(
                RejectReason::Schema,
                NUL_TEXT.replace("{}", "a field the contract does not name"),
            );
        }
        self.check_clock(ts, now)?;
        let (lat, lon) = self.crs.to_wgs84(lat, lon);
        Ok(Reading {
            vehicle: t.vehicle.clone(),
            kind: t.kind,
            ts,
            seq: w.seq,
            lat,
            lon,
            hdop: w.hdop,
            speed_kmh,
            heading_deg: w.heading_deg,
            h2_g,
            h2_pressure_bar: w.h2_pressure_bar,
            tank_temp_c: w.tank_temp_c,
            fc_power_w: w.fc_power_w,
            fc_temp_c: w.fc_temp_c,
            batt_v: w.batt_v,
            odo_km: w.odo_km,
            locked: w.locked,
            faults,
            extra: w.extra,
        })
    }

    fn check_clock(&self, ts: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Refusal> {
        if ts > now + self.max_future {
            return refuse(
                RejectReason::ClockSkew,
                format!(
                    "ts {} is more than {} s in the future",
                    ts.to_rfc3339(),
                    self.max_future.num_seconds()
                ),
            );
        }
        if ts < now - self.max_age {
            return refuse(
                RejectReason::ClockSkew,
                format!(
                    "ts {} is older than the raw retention of {} days",
                    ts.to_rfc3339(),
                    self.max_age.num_days()
                ),
            );
        }
        Ok(())
    }

    fn event(&self, t: &Topic, payload: &[u8], now: DateTime<Utc>) -> Result<Event, Refusal> {
        let body: serde_json::Value = serde_json::from_slice(payload).map_err(json_refusal)?;
        if !body.is_object() {
            return refuse(RejectReason::Schema, "an event must be a JSON object");
        }
        if holds_nul(&body) {
            return refuse(RejectReason::Schema, NUL_TEXT.replace("{}", "the event"));
        }
        let w = WireEvent::deserialize_value(&body)?;
        if let Some(map) = body.as_object() {
            limits::check_event(payload, map, w.event_type)?;
        }
        if let Some(id) = &w.vehicle_id
            && id != t.vehicle.as_str()
        {
            return refuse(
                RejectReason::IdMismatch,
                format!(
                    "payload vehicle_id `{id}` differs from the topic's `{}`",
                    t.vehicle
                ),
            );
        }
        if w.event_type == EventType::Refuel {
            let r: WireRefuel = serde_json::from_value(body.clone())
                .map_err(|e| Refusal(RejectReason::Schema, format!("refuel event: {e}")))?;
            let tank = f64::from(self.profiles.get(t.kind).tank_g);
            for (name, v) in [("h2_g_before", r.h2_g_before), ("h2_g_after", r.h2_g_after)] {
                if !(v.is_finite() && v >= 0.0 && v <= 1.2 * tank) {
                    return refuse(
                        RejectReason::OutOfRange,
                        format!("{name} {v} is not in [0, 1.2 × tank]"),
                    );
                }
            }
        }
        self.check_clock(w.ts.0, now)?;
        Ok(Event {
            vehicle: t.vehicle.clone(),
            kind: t.kind,
            ts: w.ts.0.trunc_subsecs(6),
            event_type: w.event_type,
            body,
        })
    }

    /// `Ok(None)`: an empty retained message, which only clears the broker's copy.
    fn status(
        &self,
        t: &Topic,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<Status>, Refusal> {
        let Ok(text) = std::str::from_utf8(payload) else {
            return refuse(RejectReason::MalformedJson, "status payload is not UTF-8");
        };
        let text = text.trim();
        let online = match text.trim_matches('"') {
            "" => return Ok(None),
            "online" => true,
            "offline" => false,
            other => {
                return refuse(
                    RejectReason::Schema,
                    format!(
                        "status must be `online` or `offline`, not `{}`",
                        truncate(other, 64)
                    ),
                );
            }
        };
        Ok(Some(Status {
            vehicle: t.vehicle.clone(),
            kind: t.kind,
            online,
            received_at: now,
        }))
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    pub fn kind_profile(&self, kind: VehicleKind) -> &crate::config::Profile {
        self.profiles.get(kind)
    }
}

impl WireEvent {
    fn deserialize_value(body: &serde_json::Value) -> Result<WireEvent, Refusal> {
        WireEvent::deserialize(body)
            .map_err(|e| Refusal(RejectReason::Schema, format!("event: {e}")))
    }
}

use serde::Deserialize as _;

/// PostgreSQL stores no U+0000 in text or jsonb: such a message is refused here, or it would
/// fail its batch on every retry.
const NUL_TEXT: &str = "text in {} contains U+0000, which the store cannot hold";

fn holds_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn require<T>(v: Option<T>, name: &str) -> Result<T, Refusal> {
    v.ok_or_else(|| {
        Refusal(
            RejectReason::Schema,
            format!("missing required field `{name}`"),
        )
    })
}

fn json_refusal(e: serde_json::Error) -> Refusal {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Refusal(RejectReason::Schema, e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => {
            Refusal(RejectReason::MalformedJson, e.to_string())
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests;

/// What is wrong with the first number of a reading outside its range, if one is.
fn out_of_range(
    w: &WireTelemetry,
    (lat, lon): (f64, f64),
    speed_kmh: f32,
    h2_g: f32,
    tank: f32,
) -> Option<String> {
    let within = |v: f64, lo: f64, hi: f64| v.is_finite() && (lo..=hi).contains(&v);
    if !within(lat, -90.0, 90.0) {
        return Some(format!("lat {lat} is not in [-90, 90]"));
    }
    if !within(lon, -180.0, 180.0) {
        return Some(format!("lon {lon} is not in [-180, 180]"));
    }
    if !within(speed_kmh.into(), 0.0, MAX_SPEED_KMH.into()) {
        return Some(format!(
            "speed_kmh {speed_kmh} is not in [0, {MAX_SPEED_KMH}]"
        ));
    }
    if !within(h2_g.into(), 0.0, f64::from(1.2 * tank)) {
        return Some(format!("h2_g {h2_g} is not in [0, 1.2 × tank of {tank} g]"));
    }
    if let Some(h) = w.heading_deg.filter(|h| !within((*h).into(), 0.0, 360.0)) {
        return Some(format!("heading_deg {h} is not in [0, 360]"));
    }
    if let Some(h) = w.hdop.filter(|h| !(h.is_finite() && *h >= 0.0)) {
        return Some(format!("hdop {h} is negative or not finite"));
    }
    if let Some(o) = w.odo_km.filter(|o| !(o.is_finite() && *o >= 0.0)) {
        return Some(format!("odo_km {o} is negative or not finite"));
    }
    [
        ("h2_pressure_bar", w.h2_pressure_bar),
        ("tank_temp_c", w.tank_temp_c),
        ("fc_power_w", w.fc_power_w),
        ("fc_temp_c", w.fc_temp_c),
        ("batt_v", w.batt_v),
    ]
    .into_iter()
    .find(|(_, v)| v.is_some_and(|v| !v.is_finite()))
    .map(|(name, _)| format!("{name} is not a finite number"))
}

#[cfg(test)]
mod fuzz_tests;
