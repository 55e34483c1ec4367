#!/bin/sh
# Creates the broker credentials of the fleet, each with a random password: one user per
# vehicle, named `{kind}/{vehicle_id}` (bike/XY-B0001..., bus/XY-H0001...: the ACL pins a
# device to its kind and id through that name), and per hyfleet instance two users, ingest's
# (`hyfleet.backend`, then `hyfleet.backend-2`...) and its command publisher's
# (`hyfleet.commands`, `hyfleet.commands-2`...), and `hyfleet.doctor` for `hyfleet doctor`'s
# probe. The broker pins client ids to user names, so each user is one session: instances never
# share a user.
#
#   $OUT_DIR/passwords      hashed (mosquitto_passwd), read by Mosquitto as password_file
#   $OUT_DIR/devices.csv    vehicle_id,kind,username,password in clear, to provision firmware:
#                           a secret, readable by its owner only
#   $OUT_DIR/instances.csv  instance,ingest_user,ingest_password,commands_user,commands_password
#                           in clear, for hyfleet's mqtt.url and mqtt.commands_url: a secret
#   $ENV_FILE               read by docker compose: HYFLEET_MQTT_PASSWORD and
#                           HYFLEET_MQTT_COMMANDS_PASSWORD (instance 1's MQTT_URL and
#                           commands URL), HYFLEET_DOCTOR_MQTT_PASSWORD (the doctor's probe),
#                           and, when missing, POSTGRES_PASSWORD,
#                           GRAFANA_DB_PASSWORD and GRAFANA_ADMIN_PASSWORD (kept once set: the
#                           database volume keeps the passwords it was created with)
#
# Usage: deploy/mosquitto/make-passwords.sh [BIKES [BUSES]]     (default: 500 bikes, 5 buses)
# INSTANCES (default 1, at most 4, the sections of the ACL) hyfleet instances. OUT_DIR defaults
# to this directory, ENV_FILE to .env beside docker-compose.yml. Existing files are kept unless
# FORCE=1: new passwords mean re-provisioning every vehicle.
set -eu
bikes=${1:-500}
buses=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT_DIR:-$here}
env_file=${ENV_FILE:-$here/../../.env}
instances=${INSTANCES:-1}
case $instances in
1 | 2 | 3 | 4) ;;
*)
    echo "INSTANCES must be 1 to 4 (the ACL's sections; add sections for more)" >&2
    exit 1
    ;;
esac

if [ -e "$out/passwords" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "$out/passwords exists; set FORCE=1 to replace every password" >&2
    exit 1
fi
command -v mosquitto_passwd >/dev/null || {
    echo "mosquitto_passwd not found (Debian: apt-get install mosquitto)" >&2
    exit 1
}

# Letters and digits only: no ':' (the password file's separator) and nothing that needs
# escaping in an mqtt:// URL. 24 of 62 symbols is about 143 bits.
secret() { tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24; }

umask 077
plain=$(mktemp)
trap 'rm -f "$plain"' EXIT
csv="$out/devices.csv"
echo "vehicle_id,kind,username,password" >"$csv"
add() { # id kind
    pw=$(secret)
    echo "$2/$1:$pw" >>"$plain"
    echo "$1,$2,$2/$1,$pw" >>"$csv"
}
i=1
while [ "$i" -le "$bikes" ]; do add "$(printf 'XY-B%04d' "$i")" bike; i=$((i + 1)); done
i=1
while [ "$i" -le "$buses" ]; do add "$(printf 'XY-H%04d' "$i")" bus; i=$((i + 1)); done
inst="$out/instances.csv"
echo "instance,ingest_user,ingest_password,commands_user,commands_password" >"$inst"
i=1
while [ "$i" -le "$instances" ]; do
    suffix=$([ "$i" = 1 ] || echo "-$i")
    ingest_pw=$(secret)
    commands_pw=$(secret)
    echo "hyfleet.backend$suffix:$ingest_pw" >>"$plain"
    echo "hyfleet.commands$suffix:$commands_pw" >>"$plain"
    echo "$i,hyfleet.backend$suffix,$ingest_pw,hyfleet.commands$suffix,$commands_pw" >>"$inst"
    [ "$i" = 1 ] && backend_pw=$ingest_pw && commands_pw1=$commands_pw
    i=$((i + 1))
done
# `hyfleet doctor`'s probe: users of its own, never a session of ingest's; its publisher
# `-pub` shares the password, so that one login URL names both.
doctor_pw=$(secret)
echo "hyfleet.doctor:$doctor_pw" >>"$plain"
echo "hyfleet.doctor-pub:$doctor_pw" >>"$plain"

# Hash all at once (-U rewrites a file of clear user:password lines), then move into place.
mosquitto_passwd -U "$plain"
# Mosquitto runs as its own user and must read the file; it holds salted PBKDF2 hashes only.
chmod 0644 "$plain"
mv "$plain" "$out/passwords"

touch "$env_file"
grep -v '^HYFLEET_MQTT_PASSWORD=\|^HYFLEET_MQTT_COMMANDS_PASSWORD=\|^HYFLEET_DOCTOR_MQTT_PASSWORD=' "$env_file" >"$env_file.tmp" || true
echo "HYFLEET_MQTT_PASSWORD=$backend_pw" >>"$env_file.tmp"
echo "HYFLEET_MQTT_COMMANDS_PASSWORD=$commands_pw1" >>"$env_file.tmp"
echo "HYFLEET_DOCTOR_MQTT_PASSWORD=$doctor_pw" >>"$env_file.tmp"
for name in POSTGRES_PASSWORD GRAFANA_DB_PASSWORD GRAFANA_ADMIN_PASSWORD; do
    grep -q "^$name=" "$env_file.tmp" || echo "$name=$(secret)" >>"$env_file.tmp"
done
mv "$env_file.tmp" "$env_file"

echo "wrote $out/passwords ($bikes bikes, $buses buses, $instances hyfleet instances), $csv, $inst, $env_file" >&2
