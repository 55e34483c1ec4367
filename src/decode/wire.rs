//! The JSON shapes firmware sends, parsed in one pass. Field names and types are checked
//! here; ranges and cross-field rules are checked by `decode`.

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// `ts` as sent: RFC 3339 text or integer milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timestamp(pub DateTime<Utc>);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp or integer milliseconds since the epoch")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Timestamp, E> {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| Timestamp(t.with_timezone(&Utc)))
                    .map_err(|e| E::custom(format_args!("`ts`: `{s}` is not RFC 3339 ({e})")))
            }
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<Timestamp, E> {
                Utc.timestamp_millis_opt(ms)
                    .single()
                    .map(Timestamp)
                    .ok_or_else(|| E::custom("`ts`: milliseconds out of range"))
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Timestamp, E> {
                let ms =
                    i64::try_from(ms).map_err(|_| E::custom("`ts`: milliseconds out of range"))?;
                self.visit_i64(ms)
            }
        }
        d.deserialize_any(V)
    }
}

/// A telemetry object with every contract field typed and the rest kept in `extra`.
#[derive(Debug, Default)]
pub struct WireTelemetry {
    pub vehicle_id: Option<String>,
    pub ts: Option<Timestamp>,
    pub seq: Option<u32>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub hdop: Option<f32>,
    pub speed_kmh: Option<f32>,
    pub heading_deg: Option<f32>,
    pub h2_g: Option<f32>,
    pub h2_pressure_bar: Option<f32>,
    pub tank_temp_c: Option<f32>,
    pub fc_power_w: Option<f32>,
    pub fc_temp_c: Option<f32>,
    pub batt_v: Option<f32>,
    pub odo_km: Option<f64>,
    pub locked: Option<bool>,
    pub faults: Option<Vec<String>>,
    pub extra: Option<Map<String, Value>>,
}

/// A number that may also be sent as `null` (treated as absent).
fn field<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    name: &'static str,
    slot: &mut Option<T>,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
    }
    *slot = map
        .next_value::<Option<T>>()
        .map_err(|e| de::Error::custom(format_args!("`{name}`: {e}")))?;
    Ok(())
}

impl<'de> Deserialize<'de> for WireTelemetry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireTelemetry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a telemetry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireTelemetry, A::Error> {
                let mut t = WireTelemetry::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "vehicle_id" => field(&mut map, "vehicle_id", &mut t.vehicle_id)?,
                        "ts" => field(&mut map, "ts", &mut t.ts)?,
                        "seq" => field(&mut map, "seq", &mut t.seq)?,
                        "lat" => field(&mut map, "lat", &mut t.lat)?,
                        "lon" => field(&mut map, "lon", &mut t.lon)?,
                        "hdop" => field(&mut map, "hdop", &mut t.hdop)?,
                        "speed_kmh" => field(&mut map, "speed_kmh", &mut t.speed_kmh)?,
                        "heading_deg" => field(&mut map, "heading_deg", &mut t.heading_deg)?,
                        "h2_g" => field(&mut map, "h2_g", &mut t.h2_g)?,
                        "h2_pressure_bar" => {
                            field(&mut map, "h2_pressure_bar", &mut t.h2_pressure_bar)?
                        }
                        "tank_temp_c" => field(&mut map, "tank_temp_c", &mut t.tank_temp_c)?,
                        "fc_power_w" => field(&mut map, "fc_power_w", &mut t.fc_power_w)?,
                        "fc_temp_c" => field(&mut map, "fc_temp_c", &mut t.fc_temp_c)?,
                        "batt_v" => field(&mut map, "batt_v", &mut t.batt_v)?,
                        "odo_km" => field(&mut map, "odo_km", &mut t.odo_km)?,
                        "locked" => field(&mut map, "locked", &mut t.locked)?,
                        "faults" => field(&mut map, "faults", &mut t.faults)?,
                        other => {
                            let value: Value = map.next_value()?;
                            t.extra
                                .get_or_insert_with(Map::new)
                                .insert(other.to_owned(), value);
                        }
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

/// The fields of an event the backend reads; the whole object is kept as its body.
#[derive(Debug, Deserialize)]
pub struct WireEvent {
    pub ts: Timestamp,
    #[serde(rename = "type")]
    pub event_type: crate::domain::EventType,
    pub vehicle_id: Option<String>,
}

/// The fields a `refuel` event must carry.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // read to be checked, kept in the event body
pub struct WireRefuel {
    pub h2_g_before: f64,
    pub h2_g_after: f64,
    pub station_id: String,
}
