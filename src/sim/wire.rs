//! The JSON the simulated firmware sends (docs/mqtt.md), and the broken variants it sends when
//! faults are injected.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::prng::Rng;

/// One telemetry object. `seq` is `None` only on injected out-of-range messages, which must
/// not take a place in the vehicle's sequence.
#[derive(Debug, Clone, Serialize)]
pub struct Telemetry {
    pub vehicle_id: String,
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    pub lat: f64,
    pub lon: f64,
    pub hdop: f64,
    pub speed_kmh: f64,
    pub heading_deg: f64,
    pub h2_g: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_pressure_bar: Option<f64>,
    pub tank_temp_c: f64,
    pub fc_power_w: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fc_temp_c: Option<f64>,
    pub batt_v: f64,
    pub odo_km: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
}

pub fn ts(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Rounds to `digits` decimals so that payloads carry what a sensor would, not float noise.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("simulator payloads always serialize")
}

/// A payload that is not valid JSON, in one of the ways real links break it.
pub fn malformed(good: &[u8], rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => good[..good.len() / 2].to_vec(),
        1 => {
            let mut v = good.to_vec();
            v[0] = 0xFF;
            v
        }
        2 => b"AT+ERR=17 modem reset".to_vec(),
        _ => {
            let mut v = good.to_vec();
            v.retain(|&b| b != b'"');
            v
        }
    }
}

/// A copy of `t` without a seq and with one value outside the contract's ranges.
pub fn out_of_range(t: &Telemetry, tank_g: f64, rng: &mut Rng) -> Telemetry {
    let mut t = t.clone();
    t.seq = None;
    match rng.below(5) {
        0 => t.lat = 91.5,
        1 => t.lon = -181.25,
        2 => t.speed_kmh = -3.0,
        3 => t.speed_kmh = 312.0,
        _ => t.h2_g = round(tank_g * 1.5, 2),
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(ts(1_714_348_800_123), "2024-04-29T00:00:00.123Z");
    }

    #[test]
    fn malformed_payloads_never_parse_and_out_of_range_has_no_seq() {
        let t = Telemetry {
            vehicle_id: "XY-B0001".into(),
            ts: ts(0),
            seq: Some(4),
            lat: 37.1,
            lon: 111.7,
            hdop: 0.9,
            speed_kmh: 12.0,
            heading_deg: 10.0,
            h2_g: 40.0,
            h2_pressure_bar: None,
            tank_temp_c: 20.0,
            fc_power_w: 150.0,
            fc_temp_c: None,
            batt_v: 39.0,
            odo_km: 100.0,
            locked: Some(false),
        };
        let good = to_json(&t);
        let mut rng = Rng::new(3);
        for _ in 0..40 {
            let bad = malformed(&good, &mut rng);
            assert!(serde_json::from_slice::<serde_json::Value>(&bad).is_err());
            let o = out_of_range(&t, 50.0, &mut rng);
            assert_eq!(o.seq, None);
            let bad_value = !(-90.0..=90.0).contains(&o.lat)
                || !(-180.0..=180.0).contains(&o.lon)
                || !(0.0..=250.0).contains(&o.speed_kmh)
                || o.h2_g > 60.0;
            assert!(bad_value, "{o:?}");
        }
    }
}
