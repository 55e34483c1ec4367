#!/bin/sh
# A read-only login for Grafana that sees the schema `reporting` alone: views of hyfleet's
# tables without their secrets (webhook secrets and URLs, token digests; migration
# 0010_reporting.sql). Nothing in `public` is granted, so a dashboard (or whoever holds the
# Grafana database password) cannot read what only hyfleet may.
#
# Runs once when the database volume is first created (docker-entrypoint-initdb.d), in the
# database named by POSTGRES_DB, before hyfleet has made anything: default privileges make the
# views that hyfleet's migrations create later readable. Safe to run again on an existing
# database, which is how an installation whose Grafana role could read every table is fixed:
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/init-grafana.sh
# GRAFANA_DB_USER names the role (default grafana).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v pw="$GRAFANA_DB_PASSWORD" -v db="$POSTGRES_DB" -v owner="$POSTGRES_USER" \
    -v role="${GRAFANA_DB_USER:-grafana}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" LOGIN PASSWORD :'pw';
GRANT CONNECT ON DATABASE :"db" TO :"role";

-- Nothing of `public`: what earlier versions of this script granted is taken back.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public REVOKE SELECT ON TABLES FROM :"role";

-- The views of `reporting`, those there now and those migrations add later.
CREATE SCHEMA IF NOT EXISTS reporting;
GRANT USAGE ON SCHEMA reporting TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO :"role";
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA reporting TO :"role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA reporting GRANT SELECT ON TABLES TO :"role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA reporting
    GRANT EXECUTE ON FUNCTIONS TO :"role";

-- Dashboard SQL names `vehicles`, `alerts`...: they are the views. A query can neither write
-- nor hold the database for long.
ALTER ROLE :"role" SET search_path = reporting;
ALTER ROLE :"role" SET default_transaction_read_only = on;
ALTER ROLE :"role" SET statement_timeout = '30s';
SQL
