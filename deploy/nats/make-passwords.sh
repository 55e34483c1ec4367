#!/bin/sh
# Creates the logins of the NATS cluster (docker-compose.nats.yml), each with a random password:
#
#   $OUT_DIR/logins.conf   included by nats.conf: the backend's login `hyfleet` (its password
#                          is HYFLEET_NATS_PASSWORD, from the environment) and one login per
#                          vehicle, named `{kind}/{vehicle_id}` as on the Mosquitto path
#                          (bike/XY-B0001..., bus/XY-H0001...), allowed MQTT only and pinned to
#                          its own subjects: it publishes its telemetry, events and status and
#                          subscribes to its commands, nothing else. A secret (clear passwords:
#                          nats-server reads bcrypt too, which neither sh nor openssl writes).
#   $OUT_DIR/routes.conf   included by nats.conf's cluster block: the login that nodes use to
#                          route to each other, and the routes to NATS_ROUTES (default
#                          `nats-1:6222 nats-2:6222 nats-3:6222`) with it. A node that does not
#                          have it cannot join the cluster. A secret.
#   $OUT_DIR/devices.csv   vehicle_id,kind,username,password in clear, to provision firmware
#                          (the same columns as the Mosquitto path's): a secret
#   $ENV_FILE              read by docker compose: HYFLEET_NATS_PASSWORD and
#                          POSTGRES_PASSWORD, each kept once set (the database volume keeps the
#                          password it was created with)
#
# Usage: deploy/nats/make-passwords.sh [BIKES [BUSES]]     (default: 500 bikes, 5 buses)
# OUT_DIR defaults to this directory, ENV_FILE to .env beside docker-compose.nats.yml. Existing
# logins are kept unless FORCE=1: new passwords mean re-provisioning every vehicle. The nodes
# read a new logins.conf on `nats-server --signal reload` (or SIGHUP): a vehicle is added
# without a restart.
set -eu
bikes=${1:-500}
buses=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT_DIR:-$here}
env_file=${ENV_FILE:-$here/../../.env}
routes=${NATS_ROUTES:-nats-1:6222 nats-2:6222 nats-3:6222}
# The subjects of `hyfleet/v1`, hyfleet's mqtt.topic_root (HYFLEET_TOPIC_ROOT): change both
# together.
root=hyfleet.v1

if [ -e "$out/logins.conf" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "$out/logins.conf exists; set FORCE=1 to replace every password" >&2
    exit 1
fi

# Letters and digits only: nothing that needs quoting in the configuration or escaping in a
# nats:// or mqtt:// URL. 24 of 62 symbols is about 143 bits.
secret() { tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24; }

umask 077
logins=$(mktemp "$out/logins.XXXXXX")
csv=$(mktemp "$out/devices.XXXXXX")
trap 'rm -f "$logins" "$csv"' EXIT
echo "vehicle_id,kind,username,password" >"$csv"
cat >"$logins" <<EOF
# Written by make-passwords.sh: the cluster's logins. A secret.
authorization {
  users: [
    # hyfleet: the stream, its consumer, and commands down to devices over MQTT.
    { user: hyfleet, password: \$HYFLEET_NATS_PASSWORD }
EOF
add() { # id kind
    pw=$(secret)
    s="$root.$2.$1"
    echo "    { user: \"$2/$1\", password: \"$pw\", allowed_connection_types: [\"MQTT\"], permissions: { publish: [\"$s.telemetry\", \"$s.event\", \"$s.status\"], subscribe: [\"$s.cmd\", \"\$MQTT.sub.>\"] } }" >>"$logins"
    echo "$1,$2,$2/$1,$pw" >>"$csv"
}
i=1
while [ "$i" -le "$bikes" ]; do add "$(printf 'XY-B%04d' "$i")" bike; i=$((i + 1)); done
i=1
while [ "$i" -le "$buses" ]; do add "$(printf 'XY-H%04d' "$i")" bus; i=$((i + 1)); done
printf '  ]\n}\n' >>"$logins"

route_pw=$(secret)
{
    echo "# Written by make-passwords.sh: how the nodes route to each other. A secret."
    echo "authorization { user: route, password: \"$route_pw\" }"
    printf 'routes: ['
    sep=""
    for r in $routes; do
        printf '%snats-route://route:%s@%s' "$sep" "$route_pw" "$r"
        sep=", "
    done
    printf ']\n'
} >"$out/routes.conf.tmp"

mv "$logins" "$out/logins.conf"
mv "$csv" "$out/devices.csv"
mv "$out/routes.conf.tmp" "$out/routes.conf"
trap - EXIT

touch "$env_file"
for name in HYFLEET_NATS_PASSWORD POSTGRES_PASSWORD; do
    grep -q "^$name=" "$env_file" || echo "$name=$(secret)" >>"$env_file"
done

echo "wrote $out/logins.conf ($bikes bikes, $buses buses), $out/routes.conf, $out/devices.csv, $env_file" >&2
