#!/bin/sh
# Measures what a queue of readings costs the broker with the shipped configuration: starts a
# private Mosquitto on a free port with deploy/mosquitto/mosquitto.conf (only the port and paths
# changed), creates the backend's persistent session, disconnects it, publishes N readings of
# ~180 B with QoS 1 and reports the broker's resident memory and its persistence file.
#
# Usage: deploy/mosquitto/measure-queue.sh [N]   (default 200000; needs mosquitto, the
# mosquitto clients and python3)
set -eu
n=${1:-200000}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
pid=
trap 'kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
# Started as root, Mosquitto drops to the `mosquitto` user, which must write here.
chmod 0777 "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

printf 'hyfleet.backend:backend-pw\nbike/XY-B0001:device-pw\n' >"$dir/passwords"
mosquitto_passwd -U "$dir/passwords"
chmod 0644 "$dir/passwords"
sed -e "s|^listener 1883\$|listener $port 127.0.0.1|" \
    -e "s|^persistence_location .*|persistence_location $dir/|" \
    -e "s|^password_file .*|password_file $dir/passwords|" \
    -e "s|^acl_file .*|acl_file $here/acl|" \
    -e "s|^log_dest .*|log_dest file $dir/mosquitto.log|" \
    "$here/mosquitto.conf" >"$dir/mosquitto.conf"
mosquitto -c "$dir/mosquitto.conf" &
pid=$!
sleep 1

rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
# The backend's session: subscribe once, then go away (clean session off keeps the queue).
mosquitto_sub -p "$port" -u hyfleet.backend -P backend-pw -i hyfleet-ingest -c -q 1 \
    -t 'hyfleet/v1/#' -W 1 >/dev/null 2>&1 || true
before=$(rss)
python3 - "$n" >"$dir/readings" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"ts": 1714363200000 + i * 1000, "seq": i, "lat": 37.14512, "lon": 111.78134,
        "speed_kmh": 14.5, "heading_deg": 91.5, "h2_g": 41.25, "h2_pressure_bar": 11.5,
        "tank_temp_c": 22.0, "batt_v": 12.7, "odo_km": 1523.25, "locked": False}))
PY
bytes=$(wc -c <"$dir/readings")
# mosquitto_pub -l was seen to lose the tail of long inputs at end of file: feed it in chunks.
split -l 10000 "$dir/readings" "$dir/chunk."
for chunk in "$dir"/chunk.*; do
    mosquitto_pub -p "$port" -u bike/XY-B0001 -P device-pw -q 1 \
        -t hyfleet/v1/bike/XY-B0001/telemetry -l <"$chunk"
done
after=$(rss)
kill -USR1 "$pid" # save the in-memory database now
sleep 2
db=$(stat -c %s "$dir/mosquitto.db")
# Resume the session and count what was kept for it.
got=$(mosquitto_sub -p "$port" -u hyfleet.backend -P backend-pw -i hyfleet-ingest -c -q 1 \
    -C "$n" -t 'hyfleet/v1/#' -W 300 2>/dev/null | wc -l || true)
echo "readings delivered after the outage: $got of $n"
echo "readings queued:      $n ($((bytes / n)) B each with newline)"
echo "broker RSS:           ${before} KiB -> ${after} KiB"
echo "memory per reading:   $(((after - before) * 1024 / n)) B"
echo "persistence file:     $((db / 1024)) KiB ($((db / n)) B per reading)"
