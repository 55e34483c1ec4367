#!/bin/sh
# Runs once, when the database volume is first created (docker-entrypoint-initdb.d), in the
# database named by POSTGRES_DB: a read-only login for Grafana. hyfleet creates its tables later,
# as the postgres user (each new daily telemetry partition too); default privileges make every
# one of them readable by Grafana without granting anything more.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v pw="$GRAFANA_DB_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE grafana LOGIN PASSWORD :'pw';
GRANT CONNECT ON DATABASE :"db" TO grafana;
GRANT USAGE ON SCHEMA public TO grafana;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO grafana;
-- A dashboard query can neither write nor hold the database for long.
ALTER ROLE grafana SET default_transaction_read_only = on;
ALTER ROLE grafana SET statement_timeout = '30s';
SQL
