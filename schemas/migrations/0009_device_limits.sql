-- Retention of what devices send besides telemetry: events past `store.event_retention_days`
-- and rejects past `store.reject_retention_days` are deleted by the hourly upkeep, and rejects
-- beyond `store.rejects_max_per_vehicle` per vehicle (oldest first), so that no device can
-- fill the disk through either table. These indexes let the upkeep find them without reading
-- the whole table.
CREATE INDEX events_ts ON events (ts);
CREATE INDEX rejects_vehicle ON rejects (vehicle, received_at);
