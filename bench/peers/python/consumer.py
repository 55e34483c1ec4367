"""The Python peer of the benchmark: what a competent user would write to do hyfleet's core job
with paho-mqtt and psycopg.

- QoS 1 persistent session, manual acks: a message is acknowledged only after the batch that
  carried it is committed (the same delivery promise as hyfleet).
- Batches of up to --batch-rows readings or --batch-ms milliseconds, written with COPY into the
  same `telemetry` table as hyfleet (its migrations), vehicles registered on first sight, their
  latest state updated once per batch.
- Contract range checks (bad messages go to `rejects`), the low-hydrogen rule (warning below
  20 %, critical below 10 %, clears above 25 %) and the parking rule (a bike locked outside every
  parking area, or inside a no-parking zone) with alerts in `alerts`, and a webhook POST per
  opened alert after the commit.

Run: python consumer.py --mqtt-host 127.0.0.1 --mqtt-port 1883 --topic-root R --dsn DSN
     --zones data/xiaoyi/zones.geojson [--webhook-url URL]
"""

import argparse
import json
import math
import queue
import signal
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import psycopg

PROFILES = {"bike": (50.0, 23.0, 60.0 / 50.0), "bus": (25000.0, 80.0, 350.0 / 25000.0)}
COLUMNS = (
    "ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop, heading_deg, h2_pressure_bar, "
    "tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults"
)
WARN_PCT, CRIT_PCT, CLEAR_PCT = 20.0, 10.0, 25.0


def load_zones(path):
    """Parking and no-parking polygons (outer rings) with their bounding boxes."""
    with open(path, encoding="utf-8") as f:
        features = json.load(f)["features"]
    zones = {"parking": [], "no_parking": []}
    for feat in features:
        kind = feat["properties"].get("kind")
        geom = feat["geometry"]
        if kind not in zones or geom["type"] != "Polygon":
            continue
        ring = geom["coordinates"][0]
        xs = [p[0] for p in ring]
        ys = [p[1] for p in ring]
        zones[kind].append((feat["properties"].get("id"), min(xs), min(ys), max(xs), max(ys), ring))
    return zones


def inside(lon, lat, ring):
    hit = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            hit = not hit
        j = i
    return hit


def zone_at(zones, lon, lat):
    for zid, x0, y0, x1, y1, ring in zones:
        if x0 <= lon <= x1 and y0 <= lat <= y1 and inside(lon, lat, ring):
            return zid
    return None


def finite(*vals):
    return all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in vals)


class Peer:
    def __init__(self, args):
        self.args = args
        self.zones = load_zones(args.zones)
        self.inbox = queue.Queue()
        self.hooks = queue.Queue()
        self.vehicles = {}  # code -> (id, kind)
        self.low_h2 = {}  # code -> open?
        self.locked = {}  # code -> last lock state
        self.parking_open = {}  # code -> open?
        self.stop = threading.Event()
        self.conn = psycopg.connect(args.dsn)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            clean_session=False,
            manual_ack=True,
        )
        self.client.on_connect = self.on_connect
        self.client.on_message = lambda c, u, m: self.inbox.put(m)
        self.stored = 0

    def on_connect(self, client, userdata, flags, reason, props):
        client.subscribe(f"{self.args.topic_root}/+/+/telemetry", qos=1)

    def run(self):
        threading.Thread(target=self.deliver_hooks, daemon=True).start()
        self.client.connect(self.args.mqtt_host, self.args.mqtt_port, keepalive=30)
        self.client.loop_start()
        try:
            while not self.stop.is_set():
                batch = self.collect()
                if batch:
                    self.write(batch)
        finally:
            self.client.loop_stop()
            self.client.disconnect()

    def collect(self):
        batch = []
        deadline = None
        while len(batch) < self.args.batch_rows:
            timeout = 0.5 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                m = self.inbox.get(timeout=timeout)
            except queue.Empty:
                if deadline is None:
                    return batch
                break
            if deadline is None:
                deadline = time.monotonic() + self.args.batch_ms / 1000.0
            batch.append(m)
        return batch

    def vehicle(self, cur, code, kind):
        v = self.vehicles.get(code)
        if v is None:
            tank, cap, kpg = PROFILES[kind]
            cur.execute(
                "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g) "
                "VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (code) DO UPDATE SET code = EXCLUDED.code RETURNING id",
                (code, kind, tank, cap, kpg),
            )
            v = (cur.fetchone()[0], kind)
            self.vehicles[code] = v
        return v

    def write(self, batch):
        rows, rejects, latest, opened, resolved = [], [], {}, [], []
        with self.conn.transaction(), self.conn.cursor() as cur:
            for m in batch:
                parts = m.topic.split("/")
                if len(parts) < 4 or parts[-3] not in PROFILES:
                    rejects.append((m.topic, "bad_topic", m.payload[:4096]))
                    continue
                kind, code = parts[-3], parts[-2]
                try:
                    body = json.loads(m.payload)
                    readings = body if isinstance(body, list) else [body]
                except (ValueError, UnicodeDecodeError):
                    rejects.append((m.topic, "malformed_json", m.payload[:4096]))
                    continue
                vid, _ = self.vehicle(cur, code, kind)
                tank = PROFILES[kind][0]
                for r in readings:
                    reason = self.check(r, tank)
                    if reason:
                        rejects.append((m.topic, reason, m.payload[:4096]))
                        continue
                    rows.append(
                        (
                            r["ts"], r.get("seq"), r["lat"], r["lon"], r.get("odo_km"), vid,
                            r["speed_kmh"], r["h2_g"], r.get("hdop"), r.get("heading_deg"),
                            r.get("h2_pressure_bar"), r.get("tank_temp_c"), r.get("fc_power_w"),
                            r.get("fc_temp_c"), r.get("batt_v"), r.get("locked"), r.get("faults"),
                        )
                    )
                    prev = latest.get(vid)
                    if prev is None or prev[0] <= r["ts"]:
                        latest[vid] = (r["ts"], r["lat"], r["lon"], r["speed_kmh"], r["h2_g"], r.get("locked"))
                    self.rules(code, vid, kind, r, tank, opened, resolved)
            self.copy(cur, rows)
            if latest:
                cols = list(zip(*[(vid, *v) for vid, v in latest.items()]))
                cur.execute(
                    "UPDATE vehicles v SET last_ts = u.ts, last_seen = now(), lat = u.lat, "
                    "lon = u.lon, speed_kmh = u.speed, h2_g = u.h2, locked = u.locked "
                    "FROM unnest(%s::int[], %s::timestamptz[], %s::float8[], %s::float8[], "
                    "%s::real[], %s::real[], %s::bool[]) AS u(id, ts, lat, lon, speed, h2, locked) "
                    "WHERE v.id = u.id AND (v.last_ts IS NULL OR v.last_ts <= u.ts)",
                    [list(c) for c in cols],
                )
            for vid, rule, severity, ts, lat, lon, details in opened:
                cur.execute(
                    "INSERT INTO alerts (vehicle_id, rule, state, severity, opened_at, lat, lon, details) "
                    "VALUES (%s, %s, 'open', %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (vid, rule, severity, ts, lat, lon, json.dumps(details)),
                )
            for vid, rule, ts in resolved:
                cur.execute(
                    "UPDATE alerts SET state = 'resolved', resolved_at = %s "
                    "WHERE vehicle_id = %s AND rule = %s AND state <> 'resolved'",
                    (ts, vid, rule),
                )
            if rejects:
                cur.executemany(
                    "INSERT INTO rejects (received_at, topic, reason, detail, payload) "
                    "VALUES (now(), %s, %s, '', %s)",
                    rejects,
                )
        # Committed: only now may the broker forget these messages.
        for m in batch:
            self.client.ack(m.mid, m.qos)
        self.stored += len(rows)
        for o in opened:
            self.hooks.put(o)

    def copy(self, cur, rows):
        if not rows:
            return
        try:
            with self.conn.transaction(), cur.copy(f"COPY telemetry ({COLUMNS}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
        except psycopg.errors.UniqueViolation:
            # A redelivered batch: stage it and keep only what is new.
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS staging (LIKE telemetry) ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY staging ({COLUMNS}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
            cur.execute("INSERT INTO telemetry SELECT * FROM staging ON CONFLICT DO NOTHING")

    @staticmethod
    def check(r, tank):
        if not isinstance(r, dict):
            return "schema"
        try:
            lat, lon, speed, h2 = r["lat"], r["lon"], r["speed_kmh"], r["h2_g"]
            r["ts"]
        except KeyError:
            return "schema"
        if not finite(lat, lon, speed, h2):
            return "out_of_range"
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 <= speed <= 250 and 0 <= h2 <= 1.2 * tank):
            return "out_of_range"
        return None

    def rules(self, code, vid, kind, r, tank, opened, resolved):
        pct = r["h2_g"] / tank * 100.0
        if not self.low_h2.get(code) and pct < WARN_PCT:
            self.low_h2[code] = True
            sev = "critical" if pct < CRIT_PCT else "warning"
            opened.append((vid, "low_hydrogen", sev, r["ts"], r["lat"], r["lon"], {"vehicle": code, "h2_pct": pct}))
        elif self.low_h2.get(code) and pct > CLEAR_PCT:
            self.low_h2[code] = False
            resolved.append((vid, "low_hydrogen", r["ts"]))
        if kind != "bike":
            return
        locked, was = r.get("locked"), self.locked.get(code)
        self.locked[code] = locked
        if not (locked and was is False):
            return
        lon, lat = r["lon"], r["lat"]
        in_parking = zone_at(self.zones["parking"], lon, lat)
        no_parking = zone_at(self.zones["no_parking"], lon, lat)
        if in_parking is None or no_parking is not None:
            if not self.parking_open.get(code):
                self.parking_open[code] = True
                opened.append((vid, "parking_violation", "warning", r["ts"], lat, lon, {"vehicle": code, "zone": no_parking}))
        elif self.parking_open.get(code):
            self.parking_open[code] = False
            resolved.append((vid, "parking_violation", r["ts"]))

    def deliver_hooks(self):
        while True:
            vid, rule, sev, ts, lat, lon, details = self.hooks.get()
            if not self.args.webhook_url:
                continue
            body = json.dumps(
                {"type": "alert.opened", "rule": rule, "severity": sev, "vehicle": details["vehicle"], "ts": ts}
            ).encode()
            req = urllib.request.Request(
                self.args.webhook_url, data=body, headers={"content-type": "application/json"}
            )
            try:
                urllib.request.urlopen(req, timeout=5).read()
            except OSError:
                pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mqtt-host", default="127.0.0.1")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--topic-root", required=True)
    p.add_argument("--client-id", default="hyfleet-python-peer")
    p.add_argument("--dsn", required=True)
    p.add_argument("--zones", required=True)
    p.add_argument("--webhook-url")
    p.add_argument("--batch-rows", type=int, default=2000)
    p.add_argument("--batch-ms", type=int, default=200)
    args = p.parse_args()
    peer = Peer(args)
    signal.signal(signal.SIGTERM, lambda *_: peer.stop.set())
    signal.signal(signal.SIGINT, lambda *_: peer.stop.set())
    peer.run()


if __name__ == "__main__":
    main()
