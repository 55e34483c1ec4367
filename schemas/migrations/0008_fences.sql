-- Zones scoped by vehicle kind, and a vehicle's latest position kept apart from its latest
-- reading (DESIGN §14).

-- `properties.kinds` (["bike"], ["bus"]; absent: every kind) as a column, so that SQL and
-- Grafana can filter zones by the vehicles they bind. Derived, never written: the properties
-- stay the one source.
CREATE FUNCTION zone_kinds(p jsonb) RETURNS text[] LANGUAGE sql IMMUTABLE STRICT AS $fn$
    SELECT CASE WHEN jsonb_typeof(p -> 'kinds') = 'array'
                THEN ARRAY(SELECT jsonb_array_elements_text(p -> 'kinds')) END
$fn$;

ALTER TABLE zones ADD COLUMN kinds text[] GENERATED ALWAYS AS (zone_kinds(properties)) STORED
    CONSTRAINT zone_kinds_known CHECK (kinds <@ ARRAY['bike', 'bus']);

-- When `lat`/`lon` were measured. A reading without a usable fix ((0, 0), "fix": false, an
-- hdop above rules.max_hdop) updates the latest state but not the position, so the position
-- can be older than `last_ts`.
ALTER TABLE vehicles ADD COLUMN last_fix timestamptz;
UPDATE vehicles SET last_fix = last_ts WHERE lat IS NOT NULL;
