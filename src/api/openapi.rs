//! The OpenAPI 3.1 document, assembled from the route table ([`super::routes::OPS`]) and the
//! schemas below. `schemas/openapi.json` is this document, committed; a test fails when the
//! two differ (`UPDATE_OPENAPI=1` rewrites the file).

use serde_json::{Map, Value, json};

use super::routes::{OPS, Op, Ty};

pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPS {
        let entry = paths
            .entry(op.path)
            .or_insert_with(|| Value::Object(Map::new()));
        entry[op.method.as_str()] = operation(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hyfleet operator API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Vehicles, telemetry, alerts, zones, webhooks and the live stream of a hydrogen vehicle fleet. Errors are RFC 9457 problem details; times are RFC 3339 UTC; lists are pages `{items, next}` where `next` is the cursor of the following page, absent on the last one.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "roles: viewer reads; operator also acknowledges and resolves alerts and sends commands; admin also manages zones, webhooks and tokens",
                },
            },
            "schemas": schemas(),
        },
    })
}

fn param_schema(t: Ty) -> Value {
    match t {
        Ty::Str => json!({"type": "string"}),
        Ty::Int => json!({"type": "integer", "format": "int64"}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Time => json!({"type": "string", "format": "date-time"}),
        Ty::Enum(v) => json!({"type": "string", "enum": v}),
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn problem(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/problem+json": {"schema": reference("Problem")}}})
}

fn operation(op: &Op) -> Value {
    let params: Vec<Value> = op
        .params
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "in": if p.in_path { "path" } else { "query" },
                "required": p.in_path,
                "description": p.desc,
                "schema": param_schema(p.ty),
            })
        })
        .collect();
    let mut responses = Map::new();
    let (status, schema) = op.ok;
    let mut ok = json!({"description": "success"});
    if status != 204 {
        let content: Map<String, Value> = op
            .media
            .iter()
            .map(|m| {
                let s = match (*m, schema) {
                    ("application/json", Some(s)) => reference(s),
                    _ => json!({"type": "string"}),
                };
                (m.to_string(), json!({"schema": s}))
            })
            .collect();
        ok["content"] = Value::Object(content);
    }
    responses.insert(status.to_string(), ok);
    for e in op.errors {
        let desc = match e {
            400 => "bad parameters or body",
            404 => "not found",
            409 => "conflicts with the current state",
            _ => "error",
        };
        responses.insert(e.to_string(), problem(desc));
    }
    let mut o = json!({
        "operationId": op.id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": params,
    });
    if let Some(role) = op.role {
        responses.insert("401".into(), problem("no token, or not a valid one"));
        responses.insert(
            "403".into(),
            problem(&format!("the token's role is below {}", role.as_str())),
        );
        o["security"] = json!([{"bearer": []}]);
        o["x-role"] = json!(role.as_str());
    }
    if op.path.starts_with("/api/") {
        responses.insert("503".into(), problem("the database is not reachable"));
    }
    if op.body.is_some() {
        responses.insert(
            "413".into(),
            problem("the body is larger than http.max_body_bytes"),
        );
    }
    o["responses"] = Value::Object(responses);
    if let Some(body) = op.body {
        o["requestBody"] = json!({
            "required": body != "AlertAction",
            "content": {"application/json": {"schema": reference(body)}},
        });
    }
    o
}

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

fn page(item: &str, cursor: &str) -> Value {
    json!({
        "type": "object", "required": ["items"],
        "properties": {"items": {"type": "array", "items": reference(item)}, "next": {"type": cursor}},
    })
}

/// Every named schema of the document, by resource.
fn schemas() -> Value {
    let mut all = Map::new();
    for part in [
        vehicles(),
        telemetry(),
        rides_and_commands(),
        alerts(),
        alert_events_and_zones(),
        fleet_and_webhook_input(),
        webhooks(),
        rejects_and_tokens(),
        token_input(),
    ] {
        all.extend(part.as_object().cloned().unwrap_or_default());
    }
    Value::Object(all)
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn ntime() -> Value {
    json!({"type": ["string", "null"], "format": "date-time"})
}

/// Problems, readiness and vehicles.
fn vehicles() -> Value {
    let time = time();
    let ntime = ntime();
    json!({
        "Problem": {
            "type": "object", "description": "RFC 9457 problem details",
            "required": ["type", "title", "status"],
            "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"}},
        },
        "Readiness": {"type": "object", "properties": {"mqtt": {"type": "boolean"},
            "database": {"type": "boolean"}, "ingest_writing": {"type": "boolean"}}},
        "Vehicle": {
            "type": "object", "required": ["id", "kind", "registered_at", "tank_g", "km_per_g"],
            "properties": {
                "id": {"type": "string"}, "kind": {"type": "string", "enum": ["bike", "bus"]},
                "registered_at": time, "online": nullable("boolean"), "last_seen": ntime,
                "last_ts": ntime, "lat": nullable("number"), "lon": nullable("number"),
                "speed_kmh": nullable("number"), "heading_deg": nullable("number"),
                "h2_g": nullable("number"), "h2_percent": nullable("number"),
                "range_km": nullable("number"), "locked": nullable("boolean"),
                "odo_km": nullable("number"), "tank_g": {"type": "number"},
                "km_per_g": {"type": "number", "description": "configured consumption (the profile's, or set by an operator); never overwritten by learning"},
                "learned_km_per_g": {"type": ["number", "null"], "description": "consumption learned between refuels; range predictions use it when present"},
                "last_fix": ntime,
                "completeness_24h": {"type": ["number", "null"],
                    "description": "percent of the last 24 h's numbered readings (seq) that arrived; null when none carried a seq"},
            },
        },
        "VehiclePage": page("Vehicle", "string"),
    })
}

/// Readings, buckets and tracks.
fn telemetry() -> Value {
    let time = time();
    json!({
        "Reading": {
            "type": "object", "required": ["ts", "lat", "lon", "speed_kmh", "h2_g"],
            "description": "a stored reading; optional fields are absent when not sent",
            "properties": {
                "ts": time, "seq": {"type": "integer"}, "lat": {"type": "number"},
                "lon": {"type": "number"}, "speed_kmh": {"type": "number"}, "h2_g": {"type": "number"},
                "hdop": {"type": "number"}, "heading_deg": {"type": "number"},
                "h2_pressure_bar": {"type": "number"}, "tank_temp_c": {"type": "number"},
                "fc_power_w": {"type": "number"}, "fc_temp_c": {"type": "number"},
                "batt_v": {"type": "number"}, "odo_km": {"type": "number"},
                "locked": {"type": "boolean"}, "faults": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object"},
            },
        },
        "Bucket": {
            "type": "object",
            "required": ["ts", "readings", "speed_min", "speed_avg", "speed_max", "h2_min", "h2_avg", "h2_max", "lat", "lon"],
            "properties": {
                "ts": time, "readings": {"type": "integer"},
                "speed_min": {"type": "number"}, "speed_avg": {"type": "number"}, "speed_max": {"type": "number"},
                "h2_min": {"type": "number"}, "h2_avg": {"type": "number"}, "h2_max": {"type": "number"},
                "lat": {"type": "number", "description": "last position in the bucket"},
                "lon": {"type": "number"}, "odo_km": nullable("number"),
                "distance_km": {"type": "number", "description": "km moved since the previous reading, summed; buckets of whole minutes only"},
                "h2_used_g": {"type": "number", "description": "hydrogen used since the previous reading (refuels excluded), summed; buckets of whole minutes only"},
            },
        },
        "TelemetryPage": {
            "type": "object", "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": {"oneOf": [reference("Reading"), reference("Bucket")]}},
                "next": {"type": "string"},
            },
        },
        "Track": {
            "type": "object", "description": "GeoJSON Feature; geometry is null with fewer than two points",
            "required": ["type", "geometry", "properties"],
            "properties": {
                "type": {"const": "Feature"},
                "geometry": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
                    "type": {"const": "LineString"},
                    "coordinates": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}]},
                "properties": {"type": "object", "properties": {
                    "vehicle_id": {"type": "string"}, "from": time, "to": time,
                    "points": {"type": "integer"}, "truncated": {"type": "boolean"},
                    "times": {"type": "array", "items": time}}},
            },
        },
    })
}

/// Rides and commands.
fn rides_and_commands() -> Value {
    let time = time();
    json!({
        "Ride": {
            "type": "object",
            "required": ["id", "started_at", "ended_at", "distance_km", "h2_used_g", "ended_in_parking"],
            "properties": {
                "id": {"type": "integer"}, "started_at": time, "ended_at": time,
                "start_lat": nullable("number"), "start_lon": nullable("number"),
                "end_lat": nullable("number"), "end_lon": nullable("number"),
                "distance_km": {"type": "number"}, "h2_used_g": {"type": "number"},
                "ended_in_parking": {"type": "boolean"}, "parking_zone": nullable("string"),
            },
        },
        "RidePage": page("Ride", "integer"),
        "CommandRequest": {
            "type": "object", "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["lock", "unlock", "locate", "set_speed_cap"]},
                "args": {"type": "object", "description": "set_speed_cap: {\"speed_cap_kmh\": n}, 0 < n ≤ the profile's cap; others: none"},
            },
        },
        "Command": {
            "type": "object", "required": ["id", "ts", "type", "args"],
            "description": "as published on {root}/{kind}/{vehicle_id}/cmd",
            "properties": {"id": {"type": "string", "format": "uuid"}, "ts": time,
                "type": {"type": "string"}, "args": {"type": "object"}},
        },
    })
}

/// Alerts and operators' actions on them.
fn alerts() -> Value {
    let time = time();
    let ntime = ntime();
    json!({
        "Alert": {
            "type": "object",
            "required": ["id", "vehicle_id", "vehicle_kind", "rule", "state", "severity", "opened_at", "details"],
            "properties": {
                "id": {"type": "integer"}, "vehicle_id": {"type": "string"},
                "vehicle_kind": {"type": "string", "enum": ["bike", "bus"]}, "rule": {"type": "string"},
                "zone": nullable("string"),
                "state": {"type": "string", "enum": ["open", "acknowledged", "resolved"]},
                "severity": {"type": "string", "enum": ["info", "warning", "critical"]},
                "opened_at": time, "acknowledged_at": ntime, "resolved_at": ntime,
                "lat": nullable("number"), "lon": nullable("number"), "details": {"type": "object"},
            },
        },
        "AlertPage": page("Alert", "integer"),
        "AlertDetail": {
            "allOf": [reference("Alert"), {"type": "object", "properties": {"transitions": {
                "type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string", "format": "uuid"}, "event_type": {"type": "string"},
                    "at": time, "severity": {"type": "string"}, "actor": {"type": "string"},
                    "note": nullable("string")}}}}}],
        },
        "AlertAction": {"type": "object", "properties": {"note": {"type": "string", "maxLength": 2000}}},
    })
}

/// Alert events (as webhooks receive them) and zones.
fn alert_events_and_zones() -> Value {
    let time = time();
    json!({
        "AlertEvent": {
            "type": "object", "required": ["id", "event_type", "at", "alert"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "event_type": {"type": "string", "enum": ["alert.opened", "alert.escalated", "alert.deescalated", "alert.acknowledged", "alert.resolved"]},
                "at": time, "alert": reference("Alert"),
            },
        },
        "Feature": {
            "type": "object", "required": ["type", "properties", "geometry"],
            "description": "a zone: properties.id, properties.kind (parking, no_parking, service_area, slow, station), optional name, max_speed_kmh (slow), radius_m (Point)",
            "properties": {"type": {"const": "Feature"}, "properties": {"type": "object"}, "geometry": {"type": "object"}},
        },
        "FeatureCollection": {
            "type": "object", "required": ["type", "features"],
            "properties": {"type": {"const": "FeatureCollection"},
                "features": {"type": "array", "items": reference("Feature")}},
        },
        "ZoneInput": {"oneOf": [reference("Feature"), reference("FeatureCollection")]},
    })
}

/// The fleet summary, refuel plans and a new webhook.
fn fleet_and_webhook_input() -> Value {
    let time = time();
    json!({
        "FleetSummary": {
            "type": "object",
            "properties": {
                "at": time,
                "total": reference("KindSummary"),
                "by_kind": {"type": "object", "additionalProperties": reference("KindSummary")},
                "open_alerts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "today": {"type": "object", "description": "rides that ended since local (Asia/Shanghai) midnight",
                    "properties": {"since": time, "rides": {"type": "integer"},
                        "km": {"type": "number"}, "h2_used_g": {"type": "number"}}},
            },
        },
        "KindSummary": {"type": "object", "properties": {"vehicles": {"type": "integer"},
            "online": {"type": "integer"}, "riding": {"type": "integer"}, "low_hydrogen": {"type": "integer"}}},
        "RefuelPlan": {
            "type": "object",
            "properties": {"at": time, "items": {"type": "array", "items": {"type": "object", "properties": {
                "vehicle_id": {"type": "string"}, "kind": {"type": "string"},
                "urgency": {"type": "string", "enum": ["critical", "warning"]},
                "h2_g": {"type": "number"}, "h2_percent": {"type": "number"},
                "range_km": nullable("number"), "level_percent": {"type": "number"},
                "online": nullable("boolean"),
                "lat": {"type": "number"}, "lon": {"type": "number"},
                "station_id": nullable("string"), "station_name": nullable("string"),
                "distance_m": nullable("number"), "reaches_station": nullable("boolean")}}}},
        },
        "WebhookRequest": {
            "type": "object", "required": ["name", "url"],
            "properties": {
                "name": {"type": "string"}, "url": {"type": "string", "format": "uri"},
                "secret": {"type": "string", "description": "whsec_<base64> or the robot's signing secret; never returned"},
                "events": {"type": "array", "items": {"type": "string", "enum": ["alert.opened", "alert.escalated", "alert.deescalated", "alert.acknowledged", "alert.resolved"]}},
                "format": {"type": "string", "enum": ["generic", "dingtalk", "wecom", "feishu", "slack"]},
                "rate_per_minute": {"type": "integer", "minimum": 1},
            },
        },
    })
}

/// Webhooks and their deliveries.
fn webhooks() -> Value {
    let time = time();
    let ntime = ntime();
    json!({
        "Webhook": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"},
                "url": {"type": "string", "description": "tokens in the URL masked"},
                "has_secret": {"type": "boolean"}, "events": {"type": "array", "items": {"type": "string"}},
                "format": {"type": "string"}, "rate_per_minute": nullable("integer"),
                "source": {"type": "string", "enum": ["config", "api"]}, "enabled": {"type": "boolean"},
                "disabled_reason": nullable("string"), "paused_until": ntime, "created_at": time,
            },
        },
        "WebhookList": {"type": "object", "properties": {"items": {"type": "array", "items": reference("Webhook")}}},
        "Delivery": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"}, "event_id": {"type": "string", "format": "uuid"},
                "event_type": {"type": "string"}, "alert_id": {"type": "integer"},
                "state": {"type": "string", "enum": ["pending", "delivered", "failed", "cancelled"]},
                "attempts": {"type": "integer"}, "next_attempt_at": ntime, "first_attempt_at": ntime,
                "delivered_at": ntime, "last_status": nullable("integer"), "last_error": nullable("string"),
                "created_at": time,
            },
        },
        "DeliveryPage": page("Delivery", "integer"),
    })
}

/// Rejects and tokens.
fn rejects_and_tokens() -> Value {
    let time = time();
    let ntime = ntime();
    json!({
        "Reject": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"}, "received_at": time, "topic": {"type": "string"},
                "vehicle": nullable("string"), "reason": {"type": "string"}, "detail": {"type": "string"},
                "payload": {"type": "string"}, "payload_encoding": {"type": "string", "enum": ["utf-8", "base64"]},
            },
        },
        "RejectPage": page("Reject", "integer"),
        "Token": {
            "type": "object",
            "properties": {
                "id": nullable("integer"), "name": {"type": "string"},
                "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
                "source": {"type": "string", "enum": ["config", "api"]},
                "created_at": ntime, "created_by": nullable("string"),
            },
        },
        "TokenList": {"type": "object", "properties": {"items": {"type": "array", "items": reference("Token")}}},
    })
}

/// A new token.
fn token_input() -> Value {
    json!({
        "TokenRequest": {
            "type": "object", "required": ["name", "role"],
            "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]}},
        },
        "CreatedToken": {
            "allOf": [reference("Token"), {"type": "object", "required": ["token"],
                "properties": {"token": {"type": "string", "description": "shown once"}}}],
        },
    })
}
