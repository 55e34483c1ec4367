//! Domain types shared by every stage of the pipeline. A value of one of these types has
//! passed validation: code that holds a `Reading` never re-checks its ranges.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `f64` that prints as `x` does: the shortest decimal that reads back as the same `f32`.
/// A value sent as `1.2` and kept as `real` is, widened bit for bit, `1.2000000476837158`;
/// every number the service emits from an `f32` goes through here (or [`tidy_numbers`]).
pub fn as_sent(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    // Rust prints a float as the shortest decimal that parses back to it.
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// [`as_sent`] over a JSON tree: a number that is exactly a widened `f32` and prints longer
/// than that `f32` does is replaced. A genuine `f64` (a position, a rounded figure) is almost
/// never exactly an `f32`, and one that is and prints short is left as it is.
pub fn tidy_numbers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let Some(x) = n.as_f64() else { return };
            let narrow = x as f32;
            if f64::from(narrow) == x {
                let y = as_sent(narrow);
                if y != x
                    && let Some(m) = serde_json::Number::from_f64(y)
                {
                    *n = m;
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy_numbers),
        Value::Object(map) => map.values_mut().for_each(tidy_numbers),
        _ => {}
    }
}

/// What sort of vehicle a topic or a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VehicleKind {
    Bike,
    Bus,
}

impl VehicleKind {
    pub const ALL: [VehicleKind; 2] = [VehicleKind::Bike, VehicleKind::Bus];

    pub fn as_str(self) -> &'static str {
        match self {
            VehicleKind::Bike => "bike",
            VehicleKind::Bus => "bus",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bike" => Some(VehicleKind::Bike),
            "bus" => Some(VehicleKind::Bus),
            _ => None,
        }
    }
}

impl fmt::Display for VehicleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A vehicle identifier as the fleet writes it (`XY-B0001`): `^[A-Za-z0-9_-]{1,32}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct VehicleId(String);

impl VehicleId {
    pub const MAX_LEN: usize = 32;

    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| VehicleId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VehicleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VehicleId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("vehicle id must match ^[A-Za-z0-9_-]{1,32}$"))
    }
}

/// One validated telemetry reading, positions already in WGS-84.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub vehicle: VehicleId,
    pub kind: VehicleKind,
    pub ts: DateTime<Utc>,
    pub seq: Option<u32>,
    pub lat: f64,
    pub lon: f64,
    pub hdop: Option<f32>,
    pub speed_kmh: f32,
    pub heading_deg: Option<f32>,
    pub h2_g: f32,
    pub h2_pressure_bar: Option<f32>,
    pub tank_temp_c: Option<f32>,
    pub fc_power_w: Option<f32>,
    pub fc_temp_c: Option<f32>,
    pub batt_v: Option<f32>,
    pub odo_km: Option<f64>,
    pub locked: Option<bool>,
    pub faults: Vec<String>,
    /// Fields the contract does not name, kept as the firmware sent them.
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Reading {
    /// A bike's reading with the required fields only (speed 10 km/h), for tests and tools to
    /// adjust. Panics on an invalid vehicle id.
    pub fn bare(vehicle: &str, ts: DateTime<Utc>, lat: f64, lon: f64, h2_g: f32) -> Self {
        Reading {
            vehicle: VehicleId::parse(vehicle).expect("a valid vehicle id"),
            kind: VehicleKind::Bike,
            ts,
            seq: None,
            lat,
            lon,
            hdop: None,
            speed_kmh: 10.0,
            heading_deg: None,
            h2_g,
            h2_pressure_bar: None,
            tank_temp_c: None,
            fc_power_w: None,
            fc_temp_c: None,
            batt_v: None,
            odo_km: None,
            locked: None,
            faults: Vec::new(),
            extra: None,
        }
    }
}

/// Event types of the MQTT contract (docs/mqtt.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    RideStart,
    RideEnd,
    Refuel,
    Tamper,
    Fault,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RideStart => "ride_start",
            EventType::RideEnd => "ride_end",
            EventType::Refuel => "refuel",
            EventType::Tamper => "tamper",
            EventType::Fault => "fault",
        }
    }
}

/// One validated vehicle event; `body` is the whole object as sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub vehicle: VehicleId,
    pub kind: VehicleKind,
    pub ts: DateTime<Utc>,
    pub event_type: EventType,
    pub body: serde_json::Value,
}

/// The retained `status` topic: the firmware's presence, with `offline` as its last will.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub vehicle: VehicleId,
    pub kind: VehicleKind,
    pub online: bool,
    pub received_at: DateTime<Utc>,
}

/// Why a message, or one record of a backlog, was refused (docs/rejects.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    MalformedJson,
    Schema,
    TooLarge,
    OutOfRange,
    ClockSkew,
    IdMismatch,
    BadTopic,
    /// The vehicle is not registered and `ingest.auto_register` is off.
    UnknownVehicle,
    /// Sent under a kind other than the one the vehicle was registered with.
    KindMismatch,
    /// The device is over its budget of messages or bytes per minute.
    RateLimited,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::MalformedJson,
        RejectReason::Schema,
        RejectReason::TooLarge,
        RejectReason::OutOfRange,
        RejectReason::ClockSkew,
        RejectReason::IdMismatch,
        RejectReason::BadTopic,
        RejectReason::UnknownVehicle,
        RejectReason::KindMismatch,
        RejectReason::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::Schema => "schema",
            RejectReason::TooLarge => "too_large",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::ClockSkew => "clock_skew",
            RejectReason::IdMismatch => "id_mismatch",
            RejectReason::BadTopic => "bad_topic",
            RejectReason::UnknownVehicle => "unknown_vehicle",
            RejectReason::KindMismatch => "kind_mismatch",
            RejectReason::RateLimited => "rate_limited",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message (or backlog record), kept for operators to inspect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reject {
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub vehicle: Option<String>,
    pub reason: RejectReason,
    pub detail: String,
    /// At most [`Reject::PAYLOAD_KEPT`] bytes of what was sent.
    pub payload: Vec<u8>,
}

impl Reject {
    pub const PAYLOAD_KEPT: usize = 4096;

    /// A refusal of `payload` (of which [`Reject::PAYLOAD_KEPT`] bytes are kept). Its text is
    /// made storable: PostgreSQL refuses U+0000 in text, and an error message may quote the
    /// very input that carried one.
    pub fn new(
        received_at: DateTime<Utc>,
        topic: &str,
        vehicle: Option<&str>,
        reason: RejectReason,
        detail: &str,
        payload: &[u8],
    ) -> Reject {
        Reject {
            received_at,
            topic: storable(topic),
            vehicle: vehicle.map(storable),
            reason,
            detail: storable(detail),
            payload: payload[..payload.len().min(Reject::PAYLOAD_KEPT)].to_vec(),
        }
    }
}

/// `s` with every U+0000 written as the visible `\u0000`.
fn storable(s: &str) -> String {
    s.replace('\0', "\\u0000")
}

/// Where an alert is in its lifecycle (docs/alerts.md). `Resolved` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Open,
    Acknowledged,
    Resolved,
}

impl AlertState {
    /// The stored name back; `None` for anything else. The one place states are parsed.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Acknowledged, Self::Resolved]
            .into_iter()
            .find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The stored name back; `None` for anything else. The one place severities are parsed.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Info, Self::Warning, Self::Critical]
            .into_iter()
            .find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What happened to an alert: the webhook event types of docs/alerts.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertEventType {
    #[serde(rename = "alert.opened")]
    Opened,
    #[serde(rename = "alert.escalated")]
    Escalated,
    /// Back to a lower severity, still open (a partial refuel).
    #[serde(rename = "alert.deescalated")]
    Deescalated,
    #[serde(rename = "alert.acknowledged")]
    Acknowledged,
    #[serde(rename = "alert.resolved")]
    Resolved,
}

impl AlertEventType {
    /// The stored name back; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub const ALL: [AlertEventType; 5] = [
        AlertEventType::Opened,
        AlertEventType::Escalated,
        AlertEventType::Deescalated,
        AlertEventType::Acknowledged,
        AlertEventType::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertEventType::Opened => "alert.opened",
            AlertEventType::Escalated => "alert.escalated",
            AlertEventType::Deescalated => "alert.deescalated",
            AlertEventType::Acknowledged => "alert.acknowledged",
            AlertEventType::Resolved => "alert.resolved",
        }
    }
}

/// An alert as the API shows it and webhooks carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: i64,
    pub vehicle_id: String,
    pub vehicle_kind: VehicleKind,
    pub rule: String,
    /// The zone the incident concerns, where it has one.
    pub zone: Option<String>,
    pub state: AlertState,
    pub severity: Severity,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Position of the vehicle when the alert last changed.
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// Rule-specific facts, e.g. `{"nearest_zone": "P-03", "distance_m": 41.2}`.
    pub details: serde_json::Value,
}

/// What the rules decided about one alert: an incident opens, changes severity or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertAction {
    Open(Severity),
    Escalate(Severity),
    /// The condition fell back to a lower severity without clearing.
    Deescalate(Severity),
    Resolve,
}

/// A change of one alert, keyed by `(vehicle, rule, zone)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChange {
    pub rule: String,
    pub zone: Option<String>,
    pub action: AlertAction,
    pub at: DateTime<Utc>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub details: serde_json::Value,
}

/// A finished ride.
#[derive(Debug, Clone, PartialEq)]
pub struct Ride {
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub start: Option<(f64, f64)>,
    pub end: Option<(f64, f64)>,
    pub distance_km: f64,
    pub h2_used_g: f32,
    pub ended_in_parking: bool,
    /// The parking area it ended in, when it did.
    pub parking_zone: Option<String>,
}

/// One transition of one alert, as stored and as emitted to webhooks. `id` is stable: the
/// outbox and every delivery attempt carry it, so receivers deduplicate by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub id: uuid::Uuid,
    pub event_type: AlertEventType,
    pub at: DateTime<Utc>,
    pub alert: Alert,
}

/// What the backend knows about a kind of vehicle, overridable per vehicle.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub tank_g: f32,
    pub range_km: f32,
    pub speed_cap_kmh: f32,
    /// The tank's nominal working pressure (rated at 15 °C), bar; absent: the kind's default
    /// ([`Profiles::nominal_pressure_bar`]). The pressure band of `tank_fault` tops out at the
    /// maximum operating pressure, 1.25 × this.
    #[serde(default)]
    pub nominal_pressure_bar: Option<f32>,
}

impl Profile {
    /// Nominal consumption ratio, used until a vehicle's own consumption is known.
    pub fn km_per_g(&self) -> f32 {
        self.range_km / self.tank_g
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profiles {
    pub bike: Profile,
    pub bus: Profile,
}

impl Default for Profiles {
    fn default() -> Self {
        Self {
            // Published facts of the Xiaoyi shared bikes.
            bike: Profile {
                tank_g: 50.0,
                range_km: 60.0,
                speed_cap_kmh: 23.0,
                nominal_pressure_bar: Some(30.0),
            },
            // Not published: assumed defaults for a 12 m fuel-cell coach, to be configured.
            bus: Profile {
                tank_g: 25_000.0,
                range_km: 350.0,
                speed_cap_kmh: 80.0,
                nominal_pressure_bar: Some(350.0),
            },
        }
    }
}

impl Profiles {
    pub fn get(&self, kind: VehicleKind) -> &Profile {
        match kind {
            VehicleKind::Bike => &self.bike,
            VehicleKind::Bus => &self.bus,
        }
    }

    /// Nominal working pressure of a kind's tank, bar: the profile's, else the kind's default.
    /// A bus carries 35 MPa (350 bar) type III/IV cylinders. A bike's metal-hydride canister
    /// is charged at low pressure: such stores work between about 1 and 25 bar and are charged
    /// at up to 30 bar, so 30 bar is its nominal pressure (a band up to 37.5 bar).
    pub fn nominal_pressure_bar(&self, kind: VehicleKind) -> f32 {
        self.get(kind).nominal_pressure_bar.unwrap_or(match kind {
            VehicleKind::Bike => 30.0,
            VehicleKind::Bus => 350.0,
        })
    }
}
