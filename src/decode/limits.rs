//! What the contract bounds beyond each field of a message: the retain flag (status only), the
//! vehicle behind a topic (for the per-device budget), and the size and shape of an event,
//! whose body is stored whole and so must not carry whatever a device likes.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{Channel, Decoded, Decoder, Refusal, refuse, topic};
use crate::domain::{EventType, Reject, RejectReason};

/// An event is at most this many bytes as sent (`schemas/event.schema.json`).
pub const MAX_EVENT_BYTES: usize = 4096;
/// Fields an event's type does not name may take at most this many bytes (as JSON) together.
pub const MAX_EVENT_EXTRA_BYTES: usize = 1024;
/// Text fields an event's type names are at most this many characters.
const MAX_EVENT_TEXT: usize = 256;
const MAX_EVENT_FAULTS: usize = 32;
/// Fields an event may have in all.
const MAX_EVENT_FIELDS: usize = 32;

#[derive(Clone, Copy)]
enum Field {
    Number,
    Bool,
    Text,
    Texts,
    /// Checked by the decoder itself (`ts`, `type`, `vehicle_id`).
    Checked,
}

/// The fields every event may carry.
const COMMON: &[(&str, Field)] = &[
    ("ts", Field::Checked),
    ("type", Field::Checked),
    ("vehicle_id", Field::Checked),
    ("lat", Field::Number),
    ("lon", Field::Number),
    ("hdop", Field::Number),
    ("fix", Field::Bool),
    ("h2_g", Field::Number),
    ("odo_km", Field::Number),
    ("speed_kmh", Field::Number),
];

/// The fields each type adds.
fn fields_of(t: EventType) -> &'static [(&'static str, Field)] {
    match t {
        EventType::RideStart => &[],
        EventType::RideEnd => &[("distance_km", Field::Number), ("h2_used_g", Field::Number)],
        EventType::Refuel => &[
            ("h2_g_before", Field::Number),
            ("h2_g_after", Field::Number),
            ("station_id", Field::Text),
        ],
        EventType::Tamper => &[("code", Field::Text), ("message", Field::Text)],
        EventType::Fault => &[
            ("code", Field::Text),
            ("message", Field::Text),
            ("faults", Field::Texts),
        ],
    }
}

impl Decoder {
    /// The vehicle id of a contract topic.
    pub fn vehicle_of(&self, topic: &str) -> Option<String> {
        topic::parse(&self.root, topic)
            .ok()
            .map(|t| t.vehicle.as_str().to_owned())
    }

    /// Refuse a telemetry or event message that carries the retain flag, and say so (true).
    /// A broker sets the flag towards a subscriber only when it replays a retained message on
    /// a new subscription, which hyfleet makes at every reconnect: such a reading would come
    /// back each time. The broker cannot refuse the flag per topic (Mosquitto's
    /// `retain_available` is global, and statuses must stay retained), so this is where the
    /// contract is kept.
    pub fn refuse_retained(
        &self,
        topic: &str,
        payload: &[u8],
        now: DateTime<Utc>,
        out: &mut Decoded,
    ) -> bool {
        let Ok(t) = topic::parse(&self.root, topic) else {
            return false;
        };
        let channel = match t.channel {
            Channel::Telemetry => "telemetry",
            Channel::Event => "an event",
            Channel::Status | Channel::Cmd => return false,
        };
        let detail = format!(
            "{channel} published with the retain flag, replayed by the broker: only status is \
             retained; clear it with an empty retained message on the same topic"
        );
        out.rejects.push(Reject::new(
            now,
            topic,
            Some(t.vehicle.as_str()),
            RejectReason::Schema,
            &detail,
            payload,
        ));
        true
    }
}

/// An event's size and, per type, its fields: those the type names have their type (and text
/// its length), and the rest is bounded in bytes.
pub(super) fn check_event(
    payload: &[u8],
    body: &Map<String, Value>,
    t: EventType,
) -> Result<(), Refusal> {
    if payload.len() > MAX_EVENT_BYTES {
        return refuse(
            RejectReason::TooLarge,
            format!(
                "an event is {} bytes, over the {MAX_EVENT_BYTES} an event may take",
                payload.len()
            ),
        );
    }
    if body.len() > MAX_EVENT_FIELDS {
        return refuse(
            RejectReason::Schema,
            format!(
                "an event has {} fields, over {MAX_EVENT_FIELDS}",
                body.len()
            ),
        );
    }
    let mut extra = 0usize;
    for (name, value) in body {
        let field = COMMON
            .iter()
            .chain(fields_of(t))
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f);
        let ok = match field {
            Some(Field::Checked) => true,
            Some(Field::Number) => value.as_f64().is_some_and(f64::is_finite),
            Some(Field::Bool) => value.is_boolean(),
            Some(Field::Text) => value
                .as_str()
                .is_some_and(|s| s.chars().count() <= MAX_EVENT_TEXT),
            Some(Field::Texts) => value.as_array().is_some_and(|a| {
                a.len() <= MAX_EVENT_FAULTS
                    && a.iter().all(|v| {
                        v.as_str()
                            .is_some_and(|s| s.chars().count() <= MAX_EVENT_TEXT)
                    })
            }),
            None => {
                extra += name.len() + value.to_string().len() + 4;
                true
            }
        };
        if !ok {
            let expected = match field {
                Some(Field::Number) => "a finite number".to_owned(),
                Some(Field::Bool) => "true or false".to_owned(),
                Some(Field::Text) => format!("text of at most {MAX_EVENT_TEXT} characters"),
                _ => format!(
                    "at most {MAX_EVENT_FAULTS} texts of at most {MAX_EVENT_TEXT} characters"
                ),
            };
            return refuse(
                RejectReason::Schema,
                format!("event field `{name}` must be {expected}"),
            );
        }
    }
    if extra > MAX_EVENT_EXTRA_BYTES {
        return refuse(
            RejectReason::Schema,
            format!(
                "fields a `{}` event does not name take {extra} bytes, over {MAX_EVENT_EXTRA_BYTES}",
                t.as_str()
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        serde_json::from_str(include_str!("../../schemas/event.schema.json")).unwrap()
    }

    const TYPES: [EventType; 5] = [
        EventType::RideStart,
        EventType::RideEnd,
        EventType::Refuel,
        EventType::Tamper,
        EventType::Fault,
    ];

    #[test]
    fn the_schema_names_the_fields_and_bounds_the_decoder_keeps() {
        let s = schema();
        assert_eq!(s["maxProperties"], MAX_EVENT_FIELDS);
        let props = s["properties"].as_object().unwrap();
        let known: Vec<&str> = COMMON
            .iter()
            .chain(TYPES.iter().flat_map(|t| fields_of(*t)))
            .map(|(n, _)| *n)
            .collect();
        for (name, p) in props {
            assert!(
                known.contains(&name.as_str()),
                "{name} is in the schema only"
            );
            if p["type"] == "string" && name != "vehicle_id" {
                assert_eq!(p["maxLength"], MAX_EVENT_TEXT, "{name}");
            }
        }
        for name in known {
            assert!(props.contains_key(name), "{name} is in the decoder only");
        }
        let text = s["description"].as_str().unwrap();
        assert!(text.contains(&format!("at most {MAX_EVENT_BYTES} bytes")));
        assert!(text.contains(&format!("at most {MAX_EVENT_EXTRA_BYTES} bytes together")));
    }

    fn check(t: EventType, body: Value) -> Result<(), RejectReason> {
        let payload = body.to_string();
        check_event(payload.as_bytes(), body.as_object().unwrap(), t).map_err(|Refusal(r, _)| r)
    }

    #[test]
    fn the_decoder_refuses_an_unbounded_event_and_keeps_a_bounded_one() {
        use serde_json::json;
        let d = Decoder::new(&crate::config::Config::default());
        let now = Utc::now();
        let topic = "hyfleet/v1/bike/XY-B0001/event";
        let mut out = Decoded::default();
        let ok = json!({"ts": now.timestamp_millis(), "type": "fault", "code": "E42"});
        d.decode(topic, ok.to_string().as_bytes(), now, &mut out);
        // Within the 64 KiB payload limit, but an event is stored whole: 60 KiB of it is not.
        let big =
            json!({"ts": now.timestamp_millis(), "type": "fault", "blob": "x".repeat(60_000)});
        d.decode(topic, big.to_string().as_bytes(), now, &mut out);
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.rejects.len(), 1);
        assert_eq!(out.rejects[0].reason, RejectReason::TooLarge);
    }

    #[test]
    fn events_are_bounded_per_type_and_in_size() {
        use serde_json::json;
        let ok = json!({"ts": 1, "type": "ride_end", "lat": 37.1, "lon": 111.7,
            "distance_km": 2.5, "h2_used_g": 2.1, "note": "short"});
        assert_eq!(check(EventType::RideEnd, ok), Ok(()));
        for (t, bad) in [
            (EventType::RideEnd, json!({"distance_km": "far"})),
            (EventType::Fault, json!({"code": "x".repeat(257)})),
            (EventType::Fault, json!({"faults": vec!["E1"; 33]})),
            (EventType::Tamper, json!({"fix": 1})),
            (EventType::RideStart, json!({"blob": "x".repeat(1100)})),
        ] {
            assert_eq!(check(t, bad.clone()), Err(RejectReason::Schema), "{bad}");
        }
        // A field of another type is the rest: kept within its bound, unchecked.
        assert_eq!(
            check(EventType::RideStart, json!({"distance_km": 1})),
            Ok(())
        );
        let many: Map<String, Value> = (0..33).map(|i| (format!("f{i}"), json!(1))).collect();
        assert_eq!(
            check(EventType::RideStart, Value::Object(many)),
            Err(RejectReason::Schema)
        );
        let big = json!({"faults": vec!["x".repeat(200); 30]});
        assert_eq!(check(EventType::Fault, big), Err(RejectReason::TooLarge));
    }
}
