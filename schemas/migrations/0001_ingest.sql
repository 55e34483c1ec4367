-- Vehicles with their latest state, raw telemetry partitioned by day, events and rejects.

CREATE TABLE vehicles (
    id            serial PRIMARY KEY,
    code          text NOT NULL UNIQUE,            -- the fleet's id, e.g. XY-B0001
    kind          text NOT NULL CHECK (kind IN ('bike', 'bus')),
    registered_at timestamptz NOT NULL DEFAULT now(),
    -- profile, copied from the kind's profile at registration and overridable per vehicle
    tank_g        real NOT NULL,
    speed_cap_kmh real NOT NULL,
    km_per_g      real NOT NULL,                   -- nominal, then learned from consumption
    -- latest state (from the reading with the newest ts)
    last_ts       timestamptz,
    last_seen     timestamptz,                     -- when the backend last heard from it
    lat           double precision,
    lon           double precision,
    speed_kmh     real,
    heading_deg   real,
    h2_g          real,
    range_km      real,
    locked        boolean,
    odo_km        double precision,
    online        boolean,
    status_at     timestamptz,
    -- what the rules engine remembers about this vehicle, shared by every ingest instance
    rule_state    jsonb NOT NULL DEFAULT '{}'
);

-- Raw readings. A reading is identified by (vehicle, ts, seq); NULL seq counts as one value.
CREATE TABLE telemetry (
    ts              timestamptz NOT NULL,
    seq             bigint,
    lat             double precision NOT NULL,
    lon             double precision NOT NULL,
    odo_km          double precision,
    vehicle         integer NOT NULL,
    speed_kmh       real NOT NULL,
    h2_g            real NOT NULL,
    hdop            real,
    heading_deg     real,
    h2_pressure_bar real,
    tank_temp_c     real,
    fc_power_w      real,
    fc_temp_c       real,
    batt_v          real,
    locked          boolean,
    faults          text[],
    extra           jsonb,
    CONSTRAINT telemetry_reading UNIQUE NULLS NOT DISTINCT (vehicle, ts, seq)
) PARTITION BY RANGE (ts);

CREATE TABLE events (
    id       bigserial,
    vehicle  integer NOT NULL REFERENCES vehicles (id),
    ts       timestamptz NOT NULL,
    type     text NOT NULL,
    body     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id),
    UNIQUE (vehicle, ts, type)
);

CREATE TABLE rejects (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL,
    topic       text NOT NULL,
    vehicle     text,
    reason      text NOT NULL,
    detail      text NOT NULL,
    payload     bytea NOT NULL
);
CREATE INDEX rejects_received_at ON rejects (received_at);
CREATE INDEX rejects_reason ON rejects (reason, received_at);
