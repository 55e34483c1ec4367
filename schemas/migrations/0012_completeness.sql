-- Telemetry completeness (DESIGN §14): per vehicle and hour, what arrived of the firmware's
-- numbered readings (`seq`) and how many are missing between them. Kept up to date inside
-- each batch's transaction, under the vehicle's row lock, so that every instance sees the
-- same figures and a redelivered reading (not newly stored) changes nothing.

CREATE TABLE IF NOT EXISTS telemetry_completeness (
    vehicle    integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    hour       timestamptz NOT NULL,
    -- The hour's readings in time order, as stretches over which seq never falls (a fall is a
    -- firmware restart): [{"t0", "t1", "s0", "s1", "n"}], first and last time and seq, and
    -- how many readings. A stretch misses (s1 - s0 + 1 - n) readings.
    stretches  jsonb NOT NULL,
    -- Readings with a seq stored for this hour.
    received   integer NOT NULL,
    -- Readings missing: inside the stretches, plus the gap from the vehicle's previous reading
    -- (in an earlier hour) to this hour's first, when seq did not fall.
    missing    bigint NOT NULL,
    PRIMARY KEY (vehicle, hour)
);
