-- Buses and vehicles without a lock: an alert going back to a lower severity is a transition
-- of its own, and the consumption learned between refuels is kept apart from the one set.

ALTER TABLE alert_transitions DROP CONSTRAINT IF EXISTS alert_transitions_event_type_check;
ALTER TABLE alert_transitions ADD CONSTRAINT alert_transitions_event_type_check
    CHECK (event_type IN ('alert.opened', 'alert.escalated', 'alert.deescalated',
                          'alert.acknowledged', 'alert.resolved'));

-- `km_per_g` is the configured ratio (the profile's at registration, or what an operator
-- set) and the rules never write it; what they learn goes here, NULL until enough distance
-- between refuels has been seen. Range predictions use the learned ratio when there is one.
ALTER TABLE vehicles ADD COLUMN IF NOT EXISTS learned_km_per_g real;

-- Before this, a learned ratio overwrote km_per_g: where the rules had learned one, it is
-- also the learned value (the configured one it replaced is not known any more).
UPDATE vehicles
   SET learned_km_per_g = km_per_g
 WHERE (rule_state->'consumption'->>'km')::float8 >= 5
   AND (rule_state->'consumption'->>'g')::float8 > 0;
