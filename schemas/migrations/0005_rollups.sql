-- Per-vehicle rollups for dashboards (DESIGN §8): one row per vehicle and minute, and one per
-- vehicle and operator's day (Asia/Shanghai midnight to midnight). The batch writer adds each
-- newly stored reading in the same transaction that stores it, so a rollup counts a reading
-- exactly once and is never recomputed from raw rows. They outlive the raw data
-- (`store.minute_rollup_retention_days`, `store.day_rollup_retention_days`).
--
-- `distance_km` and `h2_used_g` are what the vehicle did since its previous reading (odometer
-- when both readings carry one, else the straight line; hydrogen drops only, so a refuel does
-- not count as negative use), booked to the bucket of the later reading. Averages are
-- `speed_sum / readings` and `h2_sum / readings`.

CREATE TABLE IF NOT EXISTS telemetry_1m (
    vehicle     integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    bucket      timestamptz NOT NULL,
    readings    integer NOT NULL,
    distance_km double precision NOT NULL,
    h2_used_g   double precision NOT NULL,
    speed_min   real NOT NULL,
    speed_max   real NOT NULL,
    speed_sum   double precision NOT NULL,
    h2_min      real NOT NULL,
    h2_max      real NOT NULL,
    h2_sum      double precision NOT NULL,
    -- the newest reading of the bucket: where the vehicle was at its end
    last_ts     timestamptz NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    odo_km      double precision,
    PRIMARY KEY (vehicle, bucket)
);

CREATE TABLE IF NOT EXISTS telemetry_1d (LIKE telemetry_1m INCLUDING ALL);
ALTER TABLE telemetry_1d
    ADD FOREIGN KEY (vehicle) REFERENCES vehicles (id) ON DELETE CASCADE;

CREATE INDEX IF NOT EXISTS telemetry_1m_bucket ON telemetry_1m USING brin (bucket);
