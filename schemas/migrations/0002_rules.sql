-- Zones, alerts with their transitions, and rides (DESIGN §6–§8).

CREATE TABLE IF NOT EXISTS zones (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    kind        text NOT NULL
                CHECK (kind IN ('parking', 'no_parking', 'service_area', 'slow', 'station')),
    -- The feature's properties as imported (max_speed_kmh, radius_m, anything else).
    properties  jsonb NOT NULL DEFAULT '{}',
    -- GeoJSON geometry, always WGS-84 (GCJ-02 input is converted on import).
    geometry    jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS alerts (
    id              bigserial PRIMARY KEY,
    vehicle_id      integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    rule            text NOT NULL,
    zone            text,
    state           text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    opened_at       timestamptz NOT NULL,
    acknowledged_at timestamptz,
    resolved_at     timestamptz,
    lat             double precision,
    lon             double precision,
    details         jsonb NOT NULL DEFAULT '{}'
);

-- At most one incident in progress per (vehicle, rule, zone); a vehicle-wide alert has no
-- zone, and NULLs must collide with each other here.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_active
    ON alerts (vehicle_id, rule, COALESCE(zone, ''))
    WHERE state <> 'resolved';
CREATE INDEX IF NOT EXISTS alerts_active_by_rule ON alerts (rule) WHERE state <> 'resolved';
CREATE INDEX IF NOT EXISTS alerts_vehicle_time ON alerts (vehicle_id, opened_at DESC);

-- Every transition of every alert; `id` is the event id that webhooks carry.
CREATE TABLE IF NOT EXISTS alert_transitions (
    id          uuid PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    event_type  text NOT NULL
                CHECK (event_type IN ('alert.opened', 'alert.escalated',
                                      'alert.acknowledged', 'alert.resolved')),
    at          timestamptz NOT NULL,
    severity    text NOT NULL,
    -- `rules` for the engine, else the operator who acted.
    actor       text NOT NULL,
    note        text,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS alert_transitions_alert ON alert_transitions (alert_id, at);

CREATE TABLE IF NOT EXISTS rides (
    id               bigserial PRIMARY KEY,
    vehicle_id       integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz NOT NULL,
    start_lat        double precision,
    start_lon        double precision,
    end_lat          double precision,
    end_lon          double precision,
    distance_km      double precision NOT NULL,
    h2_used_g        real NOT NULL,
    ended_in_parking boolean NOT NULL,
    parking_zone     text,
    UNIQUE (vehicle_id, started_at)
);
CREATE INDEX IF NOT EXISTS rides_ended ON rides (ended_at);
