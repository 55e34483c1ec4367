#!/usr/bin/env bash
# The services the tests talk to, found or started before they run (nextest's setup script, see
# .config/nextest.toml): PostgreSQL and Mosquitto on loopback.
#
# - The system's own when they answer: PostgreSQL on 127.0.0.1:5432 accepting `postgres`
#   without a password, Mosquitto on 127.0.0.1:1883.
# - Otherwise throwaway ones, from the installed binaries, kept under target/test-services/ and
#   reused by the next run (stop them with `tests/services.sh stop`): PostgreSQL as an
#   unprivileged user when run as root (it refuses root), on port 55432 or the next free one;
#   Mosquitto on 51883 or the next free one.
# - What cannot be had fails the run with what to install: never a silent skip.
#
# The tests read the addresses from HYFLEET_TEST_PG and HYFLEET_TEST_MQTT, written to
# $NEXTEST_ENV. Run by hand, it prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
state="${CARGO_TARGET_DIR:-target}/test-services"
mkdir -p "$state"
state=$(cd "$state" && pwd)

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p=$1
    while answers "$p"; do p=$((p + 1)); done
    echo "$p"
}
fail() {
    echo "tests/services.sh: $*" >&2
    exit 1
}

pg_bin() {
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
        return
    fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# As root, PostgreSQL runs as the package's `postgres` user, or `nobody`.
db_user() {
    if id postgres >/dev/null 2>&1; then echo postgres; else echo nobody; fi
}
as_db_user() {
    if [ "$(id -u)" = 0 ]; then
        local u
        u=$(db_user)
        setpriv --reuid="$u" --regid="$(id -g "$u")" --clear-groups -- "$@"
    else
        "$@"
    fi
}

postgres_url() {
    if command -v psql >/dev/null &&
        PGCONNECT_TIMEOUT=3 psql -w -qAt "postgres://postgres@127.0.0.1:5432/postgres" \
            -c 'SELECT 1' >/dev/null 2>&1; then
        echo "postgres://postgres@127.0.0.1:5432"
        return
    fi
    local dir="$state/postgres" bin port
    if [ -f "$dir/port" ] && answers "$(cat "$dir/port")"; then
        echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")"
        return
    fi
    bin=$(pg_bin) || true
    [ -n "$bin" ] || fail "no PostgreSQL answers on 127.0.0.1:5432 and none is installed to start \
one: apt-get install postgresql (or start yours and let postgres@127.0.0.1 in without a password)"
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown "$(db_user)" "$dir"; fi
    as_db_user "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale -N \
        >"$state/initdb.log" 2>&1 || fail "initdb failed: $(cat "$state/initdb.log")"
    port=$(free_port 55432)
    as_db_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start -o \
        "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400" \
        >/dev/null || fail "PostgreSQL did not start: $(tail -5 "$dir/log")"
    echo "$port" >"$dir/port"
    echo "postgres://postgres@127.0.0.1:$port"
}

mqtt_url() {
    if answers 1883; then
        echo "mqtt://127.0.0.1:1883"
        return
    fi
    local dir="$state/mosquitto" port
    if [ -f "$dir/port" ] && answers "$(cat "$dir/port")"; then
        echo "mqtt://127.0.0.1:$(cat "$dir/port")"
        return
    fi
    command -v mosquitto >/dev/null || fail "no MQTT broker answers on 127.0.0.1:1883 and \
mosquitto is not installed: apt-get install mosquitto mosquitto-clients"
    mkdir -p "$dir"
    port=$(free_port 51883)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$dir/mosquitto.conf"
    mosquitto -d -c "$dir/mosquitto.conf"
    for _ in $(seq 50); do answers "$port" && break; sleep 0.1; done
    answers "$port" || fail "mosquitto did not start on port $port"
    echo "$port" >"$dir/port"
    echo "mqtt://127.0.0.1:$port"
}

if [ "${1:-}" = stop ]; then
    bin=$(pg_bin) || true
    [ -d "$state/postgres/data" ] && [ -n "$bin" ] &&
        as_db_user "$bin/pg_ctl" -D "$state/postgres/data" -m fast stop >/dev/null 2>&1 || true
    pkill -f "mosquitto -d -c $state/mosquitto/mosquitto.conf" 2>/dev/null || true
    rm -rf "$state"
    exit 0
fi

pg=$(postgres_url)
mqtt=$(mqtt_url)
for tool in mosquitto mosquitto_pub mosquitto_passwd; do
    command -v "$tool" >/dev/null ||
        fail "$tool is needed by the broker tests: apt-get install mosquitto mosquitto-clients"
done
command -v nats-server >/dev/null ||
    fail "nats-server is needed by the cluster tests (tests/it/cluster.rs): apt-get install nats-server"
out=${NEXTEST_ENV:-/dev/stdout}
{
    echo "HYFLEET_TEST_PG=$pg"
    echo "HYFLEET_TEST_MQTT=$mqtt"
} >>"$out"
