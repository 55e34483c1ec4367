-- What read-only tools (Grafana) may see: the schema `reporting`, views of hyfleet's tables
-- without their secrets. Webhook secrets and URLs (a chat robot's URL is its credential) and
-- token digests stay in `public`, which a reporting role is granted nothing of;
-- `deploy/postgres/init-grafana.sh` grants the Grafana role this schema alone and makes it its
-- search path, so dashboard SQL names the views as it named the tables.
--
-- Views run with their owner's rights: a role that may read a view needs nothing on the table
-- behind it.

CREATE SCHEMA IF NOT EXISTS reporting;

CREATE OR REPLACE VIEW reporting.vehicles AS SELECT * FROM public.vehicles;
CREATE OR REPLACE VIEW reporting.telemetry AS SELECT * FROM public.telemetry_all;
CREATE OR REPLACE VIEW reporting.telemetry_1m AS SELECT * FROM public.telemetry_1m;
CREATE OR REPLACE VIEW reporting.telemetry_1d AS SELECT * FROM public.telemetry_1d;
CREATE OR REPLACE VIEW reporting.events AS SELECT * FROM public.events;
CREATE OR REPLACE VIEW reporting.rejects AS SELECT * FROM public.rejects;
CREATE OR REPLACE VIEW reporting.zones AS SELECT * FROM public.zones;
CREATE OR REPLACE VIEW reporting.alerts AS SELECT * FROM public.alerts;
CREATE OR REPLACE VIEW reporting.alert_transitions AS SELECT * FROM public.alert_transitions;
CREATE OR REPLACE VIEW reporting.rides AS SELECT * FROM public.rides;

-- Webhooks without `url` and `secret`.
CREATE OR REPLACE VIEW reporting.webhooks AS
    SELECT id, name, events, format, rate_per_minute, source, enabled, disabled_reason,
           paused_until, created_at, updated_at
    FROM public.webhooks;
-- Delivery errors are stored without the receiver's URL.
CREATE OR REPLACE VIEW reporting.webhook_deliveries AS SELECT * FROM public.webhook_deliveries;
CREATE OR REPLACE VIEW reporting.webhook_attempts AS SELECT * FROM public.webhook_attempts;
CREATE OR REPLACE VIEW reporting.webhook_events AS SELECT * FROM public.webhook_events;

-- Tokens without their digest.
CREATE OR REPLACE VIEW reporting.api_tokens AS
    SELECT id, name, role, created_at, created_by FROM public.api_tokens;

-- One vehicle's readings in [t0, t1), packed or not, as `public.telemetry_between` reads
-- them. It runs with its owner's rights (a reporting role cannot read the tables it reads),
-- and reads nothing but telemetry; the search path is fixed so that a caller's cannot steer it.
CREATE OR REPLACE FUNCTION reporting.telemetry_between(v integer, t0 timestamptz, t1 timestamptz)
RETURNS SETOF public.telemetry LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public AS $fn$
    SELECT * FROM public.telemetry_between(v, t0, t1)
$fn$;
REVOKE ALL ON FUNCTION reporting.telemetry_between(integer, timestamptz, timestamptz) FROM PUBLIC;
