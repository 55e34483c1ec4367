-- Packed history: once a daily partition of `telemetry` is old enough
-- (`store.pack_after_days`), its readings move into one row per vehicle and hour whose
-- columns are arrays, in reading order (late readings merged in later are appended). A row of
-- `telemetry` costs a 24–32 byte header, a line pointer and an entry in the unique index on
-- top of its data (173-189 bytes a reading measured); a pack costs its data, which PostgreSQL
-- compresses once it passes 2 kB (17-40 bytes a reading measured: BENCHMARKS.md). Packed
-- readings are read through `telemetry_between` (one vehicle and a time range) or the
-- `telemetry_all` view; `telemetry` itself holds the unpacked ones.
--
-- A reading arriving late for a packed day goes to its (emptied) partition like any other;
-- the writer first checks that it is not in a pack already (under
-- `pg_advisory_xact_lock_shared` on the packing key, which the packer holds exclusively), and
-- the next packing round merges it into its hour's pack.

CREATE TABLE IF NOT EXISTS telemetry_packed (
    vehicle         integer NOT NULL,
    -- the hour the readings fall in (from 2000-01-01T00:00Z, so whole UTC hours)
    hour            timestamptz NOT NULL,
    readings        integer NOT NULL,
    ts              timestamptz[] NOT NULL,
    seq             bigint[] NOT NULL,
    lat             double precision[] NOT NULL,
    lon             double precision[] NOT NULL,
    odo_km          double precision[] NOT NULL,
    speed_kmh       real[] NOT NULL,
    h2_g            real[] NOT NULL,
    hdop            real[] NOT NULL,
    heading_deg     real[] NOT NULL,
    h2_pressure_bar real[] NOT NULL,
    tank_temp_c     real[] NOT NULL,
    fc_power_w      real[] NOT NULL,
    fc_temp_c       real[] NOT NULL,
    batt_v          real[] NOT NULL,
    locked          boolean[] NOT NULL,
    -- each reading's fault codes as a JSON array (arrays of arrays must be rectangular)
    faults          jsonb[] NOT NULL,
    extra           jsonb[] NOT NULL,
    PRIMARY KEY (vehicle, hour)
);
-- for deleting the packs past the retention
CREATE INDEX IF NOT EXISTS telemetry_packed_hour ON telemetry_packed (hour);

-- Move every reading of one partition into the packs (merged with a pack already there for
-- the same vehicle and hour), then empty the partition. Returns the readings moved. Writers
-- are kept out of the partition for the duration; readers see the readings in one place or
-- the other, never both and never neither.
CREATE OR REPLACE FUNCTION telemetry_pack(part regclass) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    moved bigint;
BEGIN
    EXECUTE format('LOCK TABLE %s IN EXCLUSIVE MODE', part);
    EXECUTE format('SELECT count(*) FROM %s', part) INTO moved;
    IF moved = 0 THEN
        RETURN 0;
    END IF;
    EXECUTE format($q$
        INSERT INTO telemetry_packed AS p
        SELECT vehicle, date_bin('1 hour', ts, timestamptz '2000-01-01T00:00:00Z'), count(*),
               array_agg(ts ORDER BY ts, seq), array_agg(seq ORDER BY ts, seq),
               array_agg(lat ORDER BY ts, seq), array_agg(lon ORDER BY ts, seq),
               array_agg(odo_km ORDER BY ts, seq), array_agg(speed_kmh ORDER BY ts, seq),
               array_agg(h2_g ORDER BY ts, seq), array_agg(hdop ORDER BY ts, seq),
               array_agg(heading_deg ORDER BY ts, seq),
               array_agg(h2_pressure_bar ORDER BY ts, seq),
               array_agg(tank_temp_c ORDER BY ts, seq), array_agg(fc_power_w ORDER BY ts, seq),
               array_agg(fc_temp_c ORDER BY ts, seq), array_agg(batt_v ORDER BY ts, seq),
               array_agg(locked ORDER BY ts, seq), array_agg(to_jsonb(faults) ORDER BY ts, seq),
               array_agg(extra ORDER BY ts, seq)
        FROM %s GROUP BY 1, 2
        ON CONFLICT (vehicle, hour) DO UPDATE SET
            readings = p.readings + EXCLUDED.readings,
            ts = p.ts || EXCLUDED.ts, seq = p.seq || EXCLUDED.seq,
            lat = p.lat || EXCLUDED.lat, lon = p.lon || EXCLUDED.lon,
            odo_km = p.odo_km || EXCLUDED.odo_km, speed_kmh = p.speed_kmh || EXCLUDED.speed_kmh,
            h2_g = p.h2_g || EXCLUDED.h2_g, hdop = p.hdop || EXCLUDED.hdop,
            heading_deg = p.heading_deg || EXCLUDED.heading_deg,
            h2_pressure_bar = p.h2_pressure_bar || EXCLUDED.h2_pressure_bar,
            tank_temp_c = p.tank_temp_c || EXCLUDED.tank_temp_c,
            fc_power_w = p.fc_power_w || EXCLUDED.fc_power_w,
            fc_temp_c = p.fc_temp_c || EXCLUDED.fc_temp_c, batt_v = p.batt_v || EXCLUDED.batt_v,
            locked = p.locked || EXCLUDED.locked, faults = p.faults || EXCLUDED.faults,
            extra = p.extra || EXCLUDED.extra
    $q$, part);
    EXECUTE format('TRUNCATE %s', part);
    RETURN moved;
END
$fn$;

-- Packed readings as rows, with the hour of their pack (to pick packs by).
CREATE OR REPLACE VIEW telemetry_unpacked AS
    SELECT p.hour AS pack_hour, u.ts, u.seq, u.lat, u.lon, u.odo_km, p.vehicle, u.speed_kmh,
           u.h2_g, u.hdop, u.heading_deg, u.h2_pressure_bar, u.tank_temp_c, u.fc_power_w,
           u.fc_temp_c, u.batt_v, u.locked,
           CASE WHEN u.faults IS NOT NULL
                THEN ARRAY(SELECT jsonb_array_elements_text(u.faults)) END AS faults,
           u.extra
    FROM telemetry_packed p
    CROSS JOIN LATERAL unnest(p.ts, p.seq, p.lat, p.lon, p.odo_km, p.speed_kmh, p.h2_g,
                              p.hdop, p.heading_deg, p.h2_pressure_bar, p.tank_temp_c,
                              p.fc_power_w, p.fc_temp_c, p.batt_v, p.locked, p.faults,
                              p.extra)
        AS u(ts, seq, lat, lon, odo_km, speed_kmh, h2_g, hdop, heading_deg, h2_pressure_bar,
             tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults, extra);

-- Every reading, packed or not, as rows of `telemetry`: for ad-hoc SQL over the fleet.
CREATE OR REPLACE VIEW telemetry_all AS
    SELECT * FROM telemetry
    UNION ALL
    SELECT ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop, heading_deg,
           h2_pressure_bar, tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults, extra
    FROM telemetry_unpacked;

-- The readings of one vehicle in [t0, t1), packed or not. Inlined by the planner, so the
-- range prunes partitions and picks packs by their hour.
CREATE OR REPLACE FUNCTION telemetry_between(v integer, t0 timestamptz, t1 timestamptz)
RETURNS SETOF telemetry LANGUAGE sql STABLE AS $fn$
    SELECT * FROM telemetry WHERE vehicle = v AND ts >= t0 AND ts < t1
    UNION ALL
    SELECT ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop, heading_deg,
           h2_pressure_bar, tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults, extra
    FROM telemetry_unpacked
    WHERE vehicle = v AND pack_hour > t0 - interval '1 hour' AND pack_hour < t1
      AND ts >= t0 AND ts < t1
$fn$;
