#!/bin/sh
# Measures what one device can take of hyfleet's queue at the broker while hyfleet is away:
# starts a private Mosquitto on a free port with deploy/mosquitto/mosquitto.conf (only the
# port and paths changed, and with QUEUE_BYTES set, max_queued_bytes, to measure at a smaller
# scale), creates the backend's persistent session and leaves it, lets device 1 publish N
# backlog arrays of the largest packet the broker accepts as fast as it can, then device 2
# publishes 100 readings, and resumes the session to count what was kept of each.
#
# Usage: deploy/mosquitto/measure-flood.sh [N]   (default 200; QUEUE_BYTES=33554432 to fill a
# 32 MiB queue instead of the shipped 1 GiB; needs mosquitto, its clients and python3)
set -eu
n=${1:-200}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
pid=
trap 'kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
chmod 0777 "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'hyfleet.backend:b\nbike/XY-B0001:d1\nbike/XY-B0002:d2\n' >"$dir/passwords"
mosquitto_passwd -U "$dir/passwords"
chmod 0644 "$dir/passwords"
queue=${QUEUE_BYTES:-}
sed -e "s|^listener 1883\$|listener $port 127.0.0.1|" \
    -e "s|^persistence_location .*|persistence_location $dir/|" \
    -e "s|^password_file .*|password_file $dir/passwords|" \
    -e "s|^acl_file .*|acl_file $here/acl|" \
    -e "s|^log_dest .*|log_dest file $dir/mosquitto.log|" \
    -e "${queue:+s|^max_queued_bytes .*|max_queued_bytes $queue|}" \
    "$here/mosquitto.conf" >"$dir/mosquitto.conf"
packet=$(awk '/^max_packet_size/ {print $2}' "$dir/mosquitto.conf")
queued=$(awk '/^max_queued_bytes/ {print $2}' "$dir/mosquitto.conf")
mosquitto -c "$dir/mosquitto.conf" &
pid=$!
sleep 1
mosquitto_sub -p "$port" -u hyfleet.backend -P b -i hyfleet-ingest -c -q 1 \
    -t 'hyfleet/v1/#' -W 1 >/dev/null 2>&1 || true

# A backlog array just under the packet limit (topic and header take the rest).
python3 - "$packet" >"$dir/backlog" <<'PY'
import json, sys
limit = int(sys.argv[1]) - 200
r = {"ts": 1714363200000, "seq": 0, "lat": 37.14512, "lon": 111.78134, "speed_kmh": 14.5,
     "heading_deg": 91.5, "h2_g": 41.25, "h2_pressure_bar": 11.5, "tank_temp_c": 22.0,
     "batt_v": 12.7, "odo_km": 1523.25, "locked": False}
out, size = [], 2
while True:
    r = dict(r, ts=r["ts"] + 1000, seq=r["seq"] + 1)
    s = len(json.dumps(r)) + 2
    if size + s > limit:
        break
    out.append(r)
    size += s
sys.stdout.write(json.dumps(out))
PY
size=$(wc -c <"$dir/backlog")
start=$(date +%s.%N)
i=0
while [ "$i" -lt "$n" ]; do
    mosquitto_pub -p "$port" -u bike/XY-B0001 -P d1 -q 1 \
        -t hyfleet/v1/bike/XY-B0001/telemetry -f "$dir/backlog"
    i=$((i + 1))
done
end=$(date +%s.%N)
python3 -c 'import json
for i in range(100):
    print(json.dumps({"ts": 1714363200000 + i * 1000, "seq": i, "lat": 37.1, "lon": 111.7,
        "speed_kmh": 10.0, "h2_g": 30.0}))' >"$dir/readings"
mosquitto_pub -p "$port" -u bike/XY-B0002 -P d2 -q 1 \
    -t hyfleet/v1/bike/XY-B0002/telemetry -l <"$dir/readings"
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
mosquitto_sub -p "$port" -u hyfleet.backend -P b -i hyfleet-ingest -c -q 1 \
    -t 'hyfleet/v1/#' -W 20 -F '%t' >"$dir/got" 2>/dev/null || true
kept1=$(grep -c XY-B0001 "$dir/got" || true)
kept2=$(grep -c XY-B0002 "$dir/got" || true)
echo "max_packet_size $packet, max_queued_bytes $queued"
echo "device 1: $n backlogs of $size B in $(python3 -c "print(round($end - $start, 1))") s" \
    "($(python3 -c "print(round($n * $size / ($end - $start) / 1048576, 1))") MiB/s); kept: $kept1"
echo "device 2 afterwards: 100 readings; kept: $kept2"
echo "broker RSS: $rss KiB"
