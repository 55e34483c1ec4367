//! The route table: one list that both the router and the OpenAPI document are built from,
//! so that the document cannot forget an endpoint, nor the router a role.

use axum::routing::{MethodFilter, MethodRouter, on};

use super::auth::Role;
use super::{Api, alerts, commands, fleet, history, stream, tokens, vehicles, webhooks, zones};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }

    pub fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    Int,
    Bool,
    Time,
    Enum(&'static [&'static str]),
}

#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub in_path: bool,
    pub ty: Ty,
    pub desc: &'static str,
}

const fn path(name: &'static str, desc: &'static str) -> Param {
    Param {
        name,
        in_path: true,
        ty: Ty::Str,
        desc,
    }
}

const fn query(name: &'static str, ty: Ty, desc: &'static str) -> Param {
    Param {
        name,
        in_path: false,
        ty,
        desc,
    }
}

/// One operation. `ok` is the success status with the component schema of its body (None:
/// no body); `media` its content types.
pub struct Op {
    pub method: Method,
    pub path: &'static str,
    pub id: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    /// None: public, no token.
    pub role: Option<Role>,
    pub params: &'static [Param],
    pub body: Option<&'static str>,
    pub ok: (u16, Option<&'static str>),
    pub media: &'static [&'static str],
    /// Error statuses besides 401/403 (implied by a role) and 500/503.
    pub errors: &'static [u16],
    pub(crate) handler: fn(MethodFilter) -> MethodRouter<Api>,
}

const JSON: &[&str] = &["application/json"];
const VID: Param = path("id", "vehicle id, e.g. XY-B0001");
const LIMIT: Param = query("limit", Ty::Int, "page size, 1–1000");
const BEFORE: Param = query("before", Ty::Int, "cursor: `next` of the previous page");
const FROM: Param = query(
    "from",
    Ty::Time,
    "start, RFC 3339, inclusive (default: `to` − 1 h)",
);
const TO: Param = query(
    "to",
    Ty::Time,
    "end, RFC 3339, exclusive (default: now + 5 min)",
);

macro_rules! op {
    ($m:ident $path:literal, $id:literal, $tag:literal, $role:expr, $summary:literal,
     params: $params:expr, body: $body:expr, ok: $ok:expr, media: $media:expr,
     errors: $errors:expr, $h:expr) => {
        Op {
            method: Method::$m,
            path: $path,
            id: $id,
            summary: $summary,
            tag: $tag,
            role: $role,
            params: $params,
            body: $body,
            ok: $ok,
            media: $media,
            errors: $errors,
            handler: |m| on(m, $h),
        }
    };
}

const V: Option<Role> = Some(Role::Viewer);
const O: Option<Role> = Some(Role::Operator);
const A: Option<Role> = Some(Role::Admin);

pub static OPS: &[Op] = &[
    op!(Get "/healthz", "healthz", "service", None, "Liveness: the process answers",
        params: &[], body: None, ok: (200, None), media: &["text/plain"], errors: &[], super::healthz),
    op!(Get "/readyz", "readyz", "service", None, "Readiness: broker subscribed and store writable",
        params: &[], body: None, ok: (200, Some("Readiness")), media: JSON, errors: &[], super::readyz),
    op!(Get "/metrics", "metrics", "service", None, "Prometheus metrics",
        params: &[], body: None, ok: (200, None), media: &["text/plain"], errors: &[], super::metrics),
    op!(Get "/openapi.json", "openapi", "service", None, "This document",
        params: &[], body: None, ok: (200, None), media: JSON, errors: &[], super::openapi_json),
    op!(Get "/api/v1/vehicles", "listVehicles", "vehicles", V, "Vehicles and their latest state, by id",
        params: &[
            query("kind", Ty::Enum(&["bike", "bus"]), "only this kind"),
            query("status", Ty::Enum(&["online", "offline"]), "only online or offline vehicles"),
            query("low_h2", Ty::Bool, "only vehicles below (true) or above (false) the low-hydrogen warning level (the lower of tank share and range share, as the rule measures it)"),
            query("bbox", Ty::Str, "minLon,minLat,maxLon,maxLat (WGS-84)"),
            query("after", Ty::Str, "cursor: `next` of the previous page"),
            LIMIT,
        ], body: None, ok: (200, Some("VehiclePage")), media: JSON, errors: &[400], vehicles::list),
    op!(Get "/api/v1/vehicles/{id}", "getVehicle", "vehicles", V, "One vehicle and its latest state",
        params: &[VID], body: None, ok: (200, Some("Vehicle")), media: JSON, errors: &[404], vehicles::one),
    op!(Get "/api/v1/vehicles/{id}/telemetry", "getTelemetry", "vehicles", V,
        "Readings in [from, to): raw (a range of at most api.max_raw_range_hours, 24 h), or in buckets of `every` (min/avg/max, last position; at most api.max_buckets buckets); JSON or CSV",
        params: &[VID, FROM, TO,
            query("every", Ty::Str, "bucket width: 30s, 1m, 15m, 1h, 1d (1 s to 1 day); buckets align to local midnight"),
            query("format", Ty::Enum(&["json", "csv"]), "json (default) or csv; a CSV page's cursor is in the Hyfleet-Next header"),
            query("after", Ty::Str, "raw pages: cursor, `next` of the previous page (bucketed pages continue with from=next)"),
            LIMIT,
        ], body: None, ok: (200, Some("TelemetryPage")), media: &["application/json", "text/csv"],
        errors: &[400, 404], history::telemetry),
    op!(Get "/api/v1/vehicles/{id}/track", "getTrack", "vehicles", V,
        "The path driven in [from, to) as a GeoJSON LineString ([lon, lat], WGS-84); a range of at most api.max_raw_range_hours (24 h)",
        params: &[VID, FROM, TO], body: None, ok: (200, Some("Track")), media: JSON,
        errors: &[400, 404], history::track),
    op!(Get "/api/v1/vehicles/{id}/rides", "listRides", "vehicles", V, "Rides of a vehicle, newest first",
        params: &[VID, query("from", Ty::Time, "rides that ended at or after"),
            query("to", Ty::Time, "rides that started before"), BEFORE, LIMIT],
        body: None, ok: (200, Some("RidePage")), media: JSON, errors: &[400, 404], history::rides),
    op!(Post "/api/v1/vehicles/{id}/commands", "sendCommand", "vehicles", O,
        "Publish a command on the vehicle's cmd topic (QoS 1)",
        params: &[VID], body: Some("CommandRequest"), ok: (202, Some("Command")), media: JSON,
        errors: &[400, 404], commands::send),
    op!(Get "/api/v1/alerts", "listAlerts", "alerts", V, "Alerts, newest first",
        params: &[
            query("state", Ty::Enum(&["open", "acknowledged", "resolved", "active"]), "active: open or acknowledged"),
            query("rule", Ty::Str, "rule name, e.g. low_hydrogen"),
            query("vehicle", Ty::Str, "vehicle id"),
            query("severity", Ty::Enum(&["info", "warning", "critical"]), "severity"),
            BEFORE, LIMIT,
        ], body: None, ok: (200, Some("AlertPage")), media: JSON, errors: &[400], alerts::list),
    op!(Get "/api/v1/alerts/{id}", "getAlert", "alerts", V, "One alert with its transitions",
        params: &[path("id", "alert id")], body: None, ok: (200, Some("AlertDetail")), media: JSON,
        errors: &[400, 404], alerts::one),
    op!(Post "/api/v1/alerts/{id}/ack", "acknowledgeAlert", "alerts", O, "Acknowledge an open alert",
        params: &[path("id", "alert id")], body: Some("AlertAction"), ok: (200, Some("AlertEvent")),
        media: JSON, errors: &[400, 404, 409], alerts::ack),
    op!(Post "/api/v1/alerts/{id}/resolve", "resolveAlert", "alerts", O, "Resolve an alert",
        params: &[path("id", "alert id")], body: Some("AlertAction"), ok: (200, Some("AlertEvent")),
        media: JSON, errors: &[400, 404, 409], alerts::close),
    op!(Get "/api/v1/zones", "listZones", "zones", V, "Zones as a GeoJSON FeatureCollection (WGS-84)",
        params: &[query("kind", Ty::Enum(&["parking", "no_parking", "service_area", "slow", "station"]), "only this kind")],
        body: None, ok: (200, Some("FeatureCollection")), media: JSON, errors: &[400], zones::list),
    op!(Post "/api/v1/zones", "createZones", "zones", A,
        "Create a zone (Feature) or several (FeatureCollection, all or none), drawn in geo.zones_crs",
        params: &[], body: Some("ZoneInput"), ok: (201, Some("ZoneInput")), media: JSON,
        errors: &[400, 409], zones::create),
    op!(Get "/api/v1/zones/{id}", "getZone", "zones", V, "One zone as a GeoJSON Feature",
        params: &[path("id", "zone id")], body: None, ok: (200, Some("Feature")), media: JSON,
        errors: &[404], zones::one),
    op!(Put "/api/v1/zones/{id}", "putZone", "zones", A, "Create or replace a zone",
        params: &[path("id", "zone id")], body: Some("Feature"), ok: (200, Some("Feature")), media: JSON,
        errors: &[400], zones::put),
    op!(Delete "/api/v1/zones/{id}", "deleteZone", "zones", A, "Delete a zone",
        params: &[path("id", "zone id")], body: None, ok: (204, None), media: JSON,
        errors: &[404], zones::delete),
    op!(Get "/api/v1/fleet/summary", "fleetSummary", "fleet", V,
        "Online, riding, low hydrogen, open alerts by rule, and today's km and hydrogen (rides ended since local midnight)",
        params: &[], body: None, ok: (200, Some("FleetSummary")), media: JSON, errors: &[], fleet::summary),
    op!(Get "/api/v1/refuel-plan", "refuelPlan", "fleet", V,
        "Vehicles below the low-hydrogen warning share with their nearest station, critical first, then nearest first",
        params: &[], body: None, ok: (200, Some("RefuelPlan")), media: JSON, errors: &[], fleet::refuel_plan),
    op!(Get "/api/v1/webhooks", "listWebhooks", "webhooks", A, "Webhooks (secrets never shown)",
        params: &[], body: None, ok: (200, Some("WebhookList")), media: JSON, errors: &[], webhooks::list),
    op!(Post "/api/v1/webhooks", "createWebhook", "webhooks", A, "Add a webhook",
        params: &[], body: Some("WebhookRequest"), ok: (201, Some("Webhook")), media: JSON,
        errors: &[400, 409], webhooks::create),
    op!(Delete "/api/v1/webhooks/{id}", "deleteWebhook", "webhooks", A,
        "Delete a webhook added through the API (configured ones are changed in the configuration)",
        params: &[path("id", "webhook id")], body: None, ok: (204, None), media: JSON,
        errors: &[400, 404, 409], webhooks::delete),
    op!(Get "/api/v1/webhooks/{id}/deliveries", "listDeliveries", "webhooks", A, "Deliveries to a webhook, newest first",
        params: &[path("id", "webhook id"), BEFORE, LIMIT], body: None, ok: (200, Some("DeliveryPage")),
        media: JSON, errors: &[400, 404], webhooks::deliveries),
    op!(Get "/api/v1/rejects", "listRejects", "ingest", V, "Refused messages, newest first",
        params: &[query("reason", Ty::Str, "reject reason, e.g. clock_skew"), BEFORE, LIMIT],
        body: None, ok: (200, Some("RejectPage")), media: JSON, errors: &[400], vehicles::rejects),
    op!(Get "/api/v1/stream", "stream", "live", V,
        "Server-Sent Events: `alert` and `position` events as they commit; `lagged` tells a slow reader how many it missed",
        params: &[
            query("events", Ty::Str, "alert, position, or both comma-separated (default both)"),
            query("vehicle", Ty::Str, "only this vehicle"),
            query("access_token", Ty::Str, "the token, for EventSource clients that cannot set headers"),
        ], body: None, ok: (200, None), media: &["text/event-stream"], errors: &[400, 429], stream::stream),
    op!(Get "/api/v1/tokens", "listTokens", "tokens", A, "API tokens (never the tokens themselves)",
        params: &[], body: None, ok: (200, Some("TokenList")), media: JSON, errors: &[], tokens::list),
    op!(Post "/api/v1/tokens", "createToken", "tokens", A, "Create a token; the response is the only time it is shown",
        params: &[], body: Some("TokenRequest"), ok: (201, Some("CreatedToken")), media: JSON,
        errors: &[400, 409], tokens::create),
    op!(Delete "/api/v1/tokens/{id}", "deleteToken", "tokens", A, "Delete a token created through the API",
        params: &[path("id", "token id")], body: None, ok: (204, None), media: JSON,
        errors: &[400, 404], tokens::delete),
];
