#!/usr/bin/env python3
"""hyfleet benchmark harness: one invocation, one machine, one workload (the simulator's
readings at a set rate and fleet size), every phase:

  broker    ceiling: the broker's delivery rate to a subscriber that only counts (QoS 1, manual
            acks, the same simulator publishing)
  copy      ceiling: PostgreSQL's raw COPY rate for the rows hyfleet stored, into the same table
  hyfleet   `hyfleet serve` end to end at rising rates: zero loss, lag, publish-to-queryable,
            publish-to-webhook, CPU s / 1,000 readings, peak RSS, bytes per stored reading
  python    the Python peer (bench/peers/python) on the same workload
  nodered   the Node-RED peer (bench/peers/node-red) on the same workload
  api       the operator API's queries (fleet snapshot, a vehicle's day in 1-minute buckets, open
            alerts) on a store seeded with `--api-hours` of 1 Hz data for 505 vehicles, under
            ingest load; only when asked for (`--phases api`), once
  nats      the same workload (`--nats-rates`) on two paths: Mosquitto → hyfleet's MQTT source,
            and a 3-node nats-server cluster (deploy/nats/nats.conf) → hyfleet's `[nats]`
            JetStream source, at each of `--nats-replicas`; each path with its counting
            consumer as ceiling; only when asked for (`--phases nats`)

Writes bench/results/<UTC date-time>.json and prints a table of medians with the ratios to the
ceilings and to each peer. See BENCHMARKS.md. Never run by CI: nothing here is a test.
"""

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lib  # noqa: E402
from lib import ROOT  # noqa: E402

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def sim(args, broker, root, rate, duration):
    """Runs the simulator to the end; returns its JSON report."""
    out = subprocess.run(
        [str(args.bench_bin), "sim", "--mqtt-url", broker.url, "--topic-root", root,
         "--rate-per-sec", str(rate), "--vehicles", str(args.vehicles), "--duration-secs",
         str(duration), "--seed", str(args.seed), "--qos", "1", "--connections", str(args.connections)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def phase_broker(args, broker, source=None, rate=None, secs=None):
    """Counting subscriber, then the simulator as fast as asked (`--broker-rate` for
    `--broker-secs`; or `rate` for `secs`). `source`: the counter's arguments naming what it
    counts from (default: `--mqtt-url` of `broker`)."""
    root = f"bench/{uuid.uuid4().hex[:8]}"
    counter = subprocess.Popen(
        [str(args.bench_bin), "count", *(source or ["--mqtt-url", broker.url]), "--topic-root", root,
         "--idle-secs", "15"],
        stdout=subprocess.PIPE, text=True,
    )
    assert counter.stdout.readline().strip() == "ready"
    rep = sim(args, broker, root, rate or args.broker_rate, secs or args.broker_secs)
    res = json.loads(counter.stdout.readline())
    counter.wait(30)
    span = (res["last_unix_ms"] - rep["started_unix_ms"]) / 1000
    return {
        "published": rep["counts"]["readings"], "publish_rate": rep["readings_per_sec"],
        "delivered": res["messages"], "delivered_per_sec": res["messages"] / span if span > 0 else None,
    }


def phase_copy(args, source_db, hyfleet_bin):
    """The rows `source_db` holds, exported as binary COPY batches of `--copy-batch` rows, loaded
    into a fresh database's `telemetry` by `--copy-connections` connections, one commit a batch."""
    cols = ("ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop, heading_deg, h2_pressure_bar, "
            "tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults, extra")
    batches = []
    with source_db.connect() as c:
        c.execute(f"CREATE TEMP TABLE src AS SELECT row_number() OVER () AS rn, {cols} FROM telemetry")
        c.execute("CREATE INDEX ON src (rn)")
        n = c.execute("SELECT count(*) FROM src").fetchone()[0]
        for lo in range(0, n, args.copy_batch):
            buf = bytearray()
            with c.cursor().copy(
                f"COPY (SELECT {cols} FROM src WHERE rn > {lo} AND rn <= {lo + args.copy_batch}) "
                "TO STDOUT (FORMAT binary)"
            ) as cp:
                for chunk in cp:
                    buf += chunk
            batches.append(bytes(buf))
        vehicles = c.execute("SELECT id, code, kind, tank_g, speed_cap_kmh, km_per_g FROM vehicles").fetchall()
    dest = lib.Database(hyfleet_bin)
    try:
        with dest.connect() as c:
            with c.cursor().copy("COPY vehicles (id, code, kind, tank_g, speed_cap_kmh, km_per_g) FROM STDIN") as cp:
                for v in vehicles:
                    cp.write_row(v)
        todo = list(reversed(batches))
        lock = threading.Lock()

        def worker():
            with psycopg.connect(dest.url) as conn:
                while True:
                    with lock:
                        if not todo:
                            return
                        b = todo.pop()
                    with conn.transaction(), conn.cursor().copy(
                        f"COPY telemetry ({cols}) FROM STDIN (FORMAT binary)"
                    ) as cp:
                        cp.write(b)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.copy_connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - t0
        stored = lib.stored_count(dest)
        return {"rows": n, "stored": stored, "secs": secs, "rows_per_sec": n / secs,
                "batch_rows": args.copy_batch, "connections": args.copy_connections}
    finally:
        dest.drop()


# --- api: the operator API's queries over a day of data, under ingest load -------------------

API_TOKEN = "bench-api-viewer-token-0123456789abcdef"
# Profiles of data/xiaoyi/profiles.toml: tank, speed cap, nominal km per g (range ÷ tank).
API_FLEET = (("bike", "XY-B", 500, 50.0, 23.0, 60.0 / 50.0), ("bus", "XY-H", 5, 25000.0, 80.0, 350.0 / 25000.0))


def seed_api_store(db, hours, log=print):
    """`hours` of 1 Hz readings up to now for the simulator's 505 vehicles (its codes, so that the
    ingest load lands on them), written directly in SQL: `telemetry`, the minute and day rollups
    derived from those rows with the meaning the batch writer gives them (src/store/rollup.rs),
    each vehicle's latest state, and alerts (open ones and a day's resolved ones). Returns the
    first and the end instant of the seeded readings."""
    end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start = end - dt.timedelta(hours=hours)
    with db.connect() as c:
        for kind, prefix, n, tank, cap, kpg in API_FLEET:
            c.execute(
                "INSERT INTO vehicles (code, kind, registered_at, tank_g, speed_cap_kmh, km_per_g) "
                "SELECT %s || lpad(i::text, 4, '0'), %s, %s, %s, %s, %s FROM generate_series(1, %s) i",
                (prefix, kind, start, tank, cap, kpg, n),
            )
        # Readings: every vehicle every second; a loop around its own point, hydrogen from full
        # to 10 % and refuelled every hour, the odometer at a steady 14.4 km/h (bikes) or 36 (buses).
        total = round(hours * 3600)
        for h, lo in enumerate(range(0, total, 3600)):
            t0 = time.perf_counter()
            c.execute(
                "INSERT INTO telemetry (ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop, heading_deg, "
                "tank_temp_c, fc_power_w, batt_v, locked) "
                "SELECT %(start)s + k * interval '1 second', k + 1, "
                "37.146 + 0.01 * sin(k / 600.0 + v.id), 111.78 + 0.01 * cos(k / 600.0 + v.id), "
                "k * CASE v.kind WHEN 'bus' THEN 0.01 ELSE 0.004 END, v.id, "
                "(CASE v.kind WHEN 'bus' THEN 36 ELSE 14.4 END) * (1 + 0.3 * sin(k / 60.0 + v.id)), "
                "v.tank_g * (1 - 0.9 * (k %% 3600) / 3600.0), 0.8, (k + 7 * v.id) %% 360, 20, 300, 39, false "
                "FROM generate_series(%(lo)s::int, %(hi)s::int) k CROSS JOIN vehicles v",
                {"start": start, "lo": lo, "hi": min(lo + 3600, total) - 1},
            )
            log(f"  seeded hour {h + 1}/{-(-total // 3600)} in {time.perf_counter() - t0:.1f} s")
        # Minute rollups: each reading's step from its vehicle's previous one (odometer when both
        # carry one and it did not go back, else the straight line; hydrogen drops only), booked
        # to the later reading's minute; the bucket ends where its newest reading was.
        t0 = time.perf_counter()
        ids = [r[0] for r in c.execute("SELECT id FROM vehicles ORDER BY id").fetchall()]
        for i in range(0, len(ids), 50):
            c.execute(
                "INSERT INTO telemetry_1m (vehicle, bucket, readings, distance_km, h2_used_g, speed_min, speed_max, "
                "speed_sum, h2_min, h2_max, h2_sum, last_ts, lat, lon, odo_km) "
                "SELECT vehicle, to_timestamp(floor(extract(epoch FROM ts) / 60) * 60), count(*), sum(km), sum(h2), "
                "min(speed_kmh), max(speed_kmh), sum(speed_kmh), min(h2_g), max(h2_g), sum(h2_g), max(ts), "
                "(array_agg(lat ORDER BY ts DESC))[1], (array_agg(lon ORDER BY ts DESC))[1], max(odo_km) "
                "FROM (SELECT vehicle, ts, lat, lon, speed_kmh, h2_g, odo_km, "
                "  CASE WHEN p_ts IS NULL OR p_ts >= ts THEN 0 "
                "       WHEN p_odo IS NOT NULL AND odo_km IS NOT NULL AND odo_km >= p_odo THEN odo_km - p_odo "
                "       ELSE 2 * 6371.0088 * asin(sqrt(sin(radians(lat - p_lat) / 2) ^ 2 "
                "            + cos(radians(p_lat)) * cos(radians(lat)) * sin(radians(lon - p_lon) / 2) ^ 2)) END AS km, "
                "  CASE WHEN p_ts IS NULL OR p_ts >= ts THEN 0 ELSE greatest(p_h2 - h2_g, 0) END AS h2 "
                "  FROM (SELECT vehicle, ts, lat, lon, speed_kmh, h2_g, odo_km, lag(ts) OVER w AS p_ts, "
                "        lag(lat) OVER w AS p_lat, lag(lon) OVER w AS p_lon, lag(h2_g) OVER w AS p_h2, "
                "        lag(odo_km) OVER w AS p_odo FROM telemetry WHERE vehicle = ANY(%s) "
                "        WINDOW w AS (PARTITION BY vehicle ORDER BY ts, seq)) s) r "
                "GROUP BY 1, 2",
                (ids[i:i + 50],),
            )
        # Day rollups (operator's day: Asia/Shanghai midnight to midnight) from the minutes.
        c.execute(
            "INSERT INTO telemetry_1d (vehicle, bucket, readings, distance_km, h2_used_g, speed_min, speed_max, "
            "speed_sum, h2_min, h2_max, h2_sum, last_ts, lat, lon, odo_km) "
            "SELECT vehicle, to_timestamp(e - ((e + 28800) % 86400)), sum(readings), sum(distance_km), "
            "sum(h2_used_g), min(speed_min), max(speed_max), sum(speed_sum), min(h2_min), max(h2_max), sum(h2_sum), "
            "max(last_ts), (array_agg(lat ORDER BY last_ts DESC))[1], (array_agg(lon ORDER BY last_ts DESC))[1], "
            "max(odo_km) FROM (SELECT *, extract(epoch FROM bucket)::bigint AS e FROM telemetry_1m) m GROUP BY 1, 2"
        )
        log(f"  rollups in {time.perf_counter() - t0:.1f} s")
        # Latest state: each vehicle's newest reading.
        c.execute(
            "UPDATE vehicles v SET last_ts = t.ts, last_seen = t.ts, lat = t.lat, lon = t.lon, "
            "speed_kmh = t.speed_kmh, heading_deg = t.heading_deg, h2_g = t.h2_g, range_km = t.h2_g * v.km_per_g, "
            "locked = t.locked, odo_km = t.odo_km, online = true, status_at = t.ts "
            "FROM vehicles w CROSS JOIN LATERAL (SELECT * FROM telemetry x WHERE x.vehicle = w.id "
            "ORDER BY x.ts DESC, x.seq DESC LIMIT 1) t WHERE v.id = w.id"
        )
        # Alerts: 40 open (low hydrogen on 25 bikes, parking violations on 15), and over the day
        # 4 resolved ones per vehicle.
        c.execute(
            "INSERT INTO alerts (vehicle_id, rule, state, severity, opened_at, lat, lon, details) "
            "SELECT v.id, CASE WHEN v.id <= 25 THEN 'low_hydrogen' ELSE 'parking_violation' END, 'open', "
            "CASE WHEN v.id <= 10 THEN 'critical' ELSE 'warning' END, %s - v.id * interval '1 minute', "
            "v.lat, v.lon, '{}' FROM vehicles v WHERE v.kind = 'bike' AND v.id <= 40",
            (end,),
        )
        c.execute(
            "INSERT INTO alerts (vehicle_id, rule, state, severity, opened_at, acknowledged_at, resolved_at, "
            "lat, lon, details) "
            "SELECT v.id, CASE WHEN k %% 2 = 0 THEN 'low_hydrogen' ELSE 'parking_violation' END, 'resolved', "
            "'warning', o, o + interval '2 minutes', o + interval '10 minutes', v.lat, v.lon, '{}' "
            "FROM vehicles v CROSS JOIN generate_series(1, 4) k "
            "CROSS JOIN LATERAL (SELECT %s + (%s * k / 5) * interval '1 second' AS o) t",
            (start, total),
        )
        c.execute("ANALYZE")
    return start, end


def phase_api(args, broker, hook):
    """Operator-API latencies: a store seeded with `--api-hours` of 1 Hz data for 505 vehicles,
    hyfleet serving it while the simulator publishes `--api-rate` readings/s to it, and
    `--api-requests` timed requests of each query, one at a time, round robin."""
    import http.client
    import random
    import urllib.parse

    db = lib.Database(args.hyfleet_bin)
    proc = simp = None
    try:
        t0 = time.perf_counter()
        start, end = seed_api_store(db, args.api_hours, log=lambda m: print(m, flush=True))
        seed_secs = time.perf_counter() - t0
        with db.connect() as c:
            rows, size = c.execute(
                "SELECT (SELECT count(*) FROM telemetry), pg_database_size(current_database())"
            ).fetchone()
        print(f"  seeded {rows:,} readings in {seed_secs:.0f} s, database {size / 2**30:.2f} GiB", flush=True)
        raw_bytes = lib.bytes_per_reading(db)
        pack_secs = packed_bytes = None
        if args.api_pack:
            # As the hourly upkeep does once a day is old enough: every partition packed.
            t0 = time.perf_counter()
            with db.connect() as c:
                packed_bytes = lib.pack_all(c)
                c.execute("VACUUM ANALYZE telemetry_packed")
            pack_secs = time.perf_counter() - t0
            print(f"  packed in {pack_secs:.0f} s: {raw_bytes:.0f} → {packed_bytes:.0f} bytes a reading", flush=True)
        root = f"bench/{uuid.uuid4().hex[:8]}"
        extra = f'[[api.tokens]]\nname = "bench"\nrole = "viewer"\ntoken = "{API_TOKEN}"\n'
        cfg, http_port = hyfleet_config(args, broker, db, root, hook.url, extra)
        log = open(Path(tempfile.gettempdir()) / "hyfleet-bench-api.log", "w")
        # Soon after start hyfleet rebuilds, in the background, the index of each past day's
        # partition (src/store/partitions.rs; once a day in service): waited for, so that the
        # queries are timed without it.
        t0 = time.perf_counter()
        proc = start_hyfleet(args, cfg, http_port, log, ready_secs=3600)
        with db.connect() as c:
            deadline, quiet = time.time() + 3600, 0
            while time.time() < deadline and quiet < 3:
                busy = c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query ILIKE 'REINDEX%' AND state = 'active'"
                ).fetchone()[0]
                quiet = 0 if busy else quiet + 1
                time.sleep(1)
        start_secs = time.perf_counter() - t0
        simp = subprocess.Popen(
            [str(args.bench_bin), "sim", "--mqtt-url", broker.url, "--topic-root", root, "--rate-per-sec",
             str(args.api_rate), "--vehicles", "505", "--duration-secs", "3600", "--seed", str(args.seed),
             "--qos", "1", "--connections", str(args.connections)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        time.sleep(5)  # ingest settles at the asked rate
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        since = urllib.parse.quote(start.isoformat().replace("+00:00", "Z"))
        rng = random.Random(args.seed)
        codes = [f"XY-B{i:04d}" for i in range(1, 501)] + [f"XY-H{i:04d}" for i in range(1, 6)]
        queries = {
            "fleet_snapshot": lambda: "/api/v1/vehicles?limit=1000",
            "vehicle_series_1m": lambda: f"/api/v1/vehicles/{rng.choice(codes)}/telemetry?from={since}"
                                         "&every=1m&limit=1000",
            "open_alerts": lambda: "/api/v1/alerts?state=open",
            # A page of one vehicle's raw readings from a random minute of the seeded range.
            "vehicle_raw_page": lambda: f"/api/v1/vehicles/{rng.choice(codes)}/telemetry?from="
                                        + urllib.parse.quote(random_minute(rng, start, end)) + "&limit=1000",
        }
        times = {q: [] for q in queries}
        sizes = {q: 0 for q in queries}
        m0 = lib.scrape(metrics_url) or {}
        w0 = time.time()
        for _ in range(args.api_requests):
            for q, path in queries.items():
                p = path()
                t = time.perf_counter()
                conn.request("GET", p, headers=auth)
                r = conn.getresponse()
                body = r.read()
                times[q].append((time.perf_counter() - t) * 1000)
                if r.status != 200:
                    raise RuntimeError(f"GET {p}: {r.status} {body[:300]!r}")
                sizes[q] = len(body)
        window = time.time() - w0
        m1 = lib.scrape(metrics_url) or {}
        stored = m1.get("hyfleet_readings_stored_total", 0) - m0.get("hyfleet_readings_stored_total", 0)
        res = {
            "hours": args.api_hours, "vehicles": 505, "seeded_readings": rows, "seed_secs": seed_secs,
            "database_gib": size / 2**30, "hyfleet_start_secs": start_secs, "ingest_rate_asked": args.api_rate,
            "packed": args.api_pack, "pack_secs": pack_secs, "bytes_per_reading": raw_bytes,
            "packed_bytes_per_reading": packed_bytes,
            "ingest_stored_per_sec_while_timed": stored / window if window else None,
            "requests_per_query": args.api_requests, "timed_secs": window, "load_avg": os.getloadavg()[0],
        }
        for q, ts in times.items():
            res[q] = {"p50_ms": lib.percentile(ts, 50), "p99_ms": lib.percentile(ts, 99), "max_ms": max(ts),
                      "response_bytes": sizes[q]}
        return res
    finally:
        lib.stop(simp, signal.SIGINT, 30)
        lib.stop(proc)
        db.drop()


def random_minute(rng, start, end):
    """An RFC 3339 time at a whole minute in [start, end - 1 h)."""
    span = max(60, int((end - start).total_seconds()) - 3600)
    t = start + dt.timedelta(seconds=rng.randrange(0, span, 60))
    return t.isoformat().replace("+00:00", "Z")


def print_api(r):
    print(f"\noperator API: {r['hours']} h of 1 Hz data for {r['vehicles']} vehicles ({r['seeded_readings']:,} "
          f"readings), ingest {fmt(r['ingest_stored_per_sec_while_timed'])}/s stored while timed "
          f"({fmt(r['ingest_rate_asked'])}/s asked), {r['requests_per_query']} requests of each")
    print("query | p50 ms | p99 ms | max ms | response bytes")
    if r.get("packed"):
        print(f"store packed first ({fmt(r['pack_secs'])} s): {fmt(r['bytes_per_reading'])} → "
              f"{fmt(r['packed_bytes_per_reading'])} bytes a reading")
    for q in ("fleet_snapshot", "vehicle_series_1m", "open_alerts", "vehicle_raw_page"):
        x = r[q]
        print(f"{q} | {fmt(x['p50_ms'], 1)} | {fmt(x['p99_ms'], 1)} | {fmt(x['max_ms'], 1)} | {fmt(x['response_bytes'])}")


def hyfleet_config(args, broker, db, root, hook_url, extra=""):
    """hyfleet's configuration for a run; `extra` is TOML appended to it."""
    http_port = lib.free_port()
    text = f"""
[database]
url = "{db.url}"
pool_size = 4
[mqtt]
url = "{broker.url}"
client_id = "hyfleet-bench-{uuid.uuid4().hex[:6]}"
topic_root = "{root}"
[http]
addr = "127.0.0.1:{http_port}"
[notify]
allow_private_networks = true
[rules.bike]
low_h2_hold_secs = 0
[[webhooks]]
name = "bench"
url = "{hook_url}"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["alert.opened"]
rate_per_minute = 10000
""" + extra
    path = Path(tempfile.mkdtemp(prefix="hyfleet-bench-")) / "hyfleet.toml"
    path.write_text(text)
    return path, http_port


def start_hyfleet(args, cfg, http_port, log, ready_secs=30):
    """`hyfleet serve` with the configuration `cfg`; returns once it is ready (subscribed:
    readings published from then on are its to store)."""
    p = subprocess.Popen([str(args.hyfleet_bin), "--config", str(cfg), "serve"], stdout=log, stderr=log,
                         env={**os.environ, "RUST_LOG": "warn"})
    lib.wait_port(http_port, ready_secs)
    deadline = time.time() + 30
    import urllib.request
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    return p


def start_system(system, args, broker, db, root, hook_url, extra=""):
    """Starts one consumer; returns (process, pid to measure, its /metrics URL or None).
    `extra`: TOML appended to hyfleet's configuration."""
    log = open(Path(tempfile.gettempdir()) / f"hyfleet-bench-{system}.log", "w")
    if system == "hyfleet":
        cfg, http_port = hyfleet_config(args, broker, db, root, hook_url, extra)
        p = start_hyfleet(args, cfg, http_port, log)
        return p, p.pid, f"http://127.0.0.1:{http_port}/metrics"
    if system == "python":
        p = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/peers/python/consumer.py"), "--mqtt-port", str(broker.port),
             "--topic-root", root, "--client-id", f"py-peer-{uuid.uuid4().hex[:6]}", "--dsn", db.url,
             "--zones", str(ROOT / "data/xiaoyi/zones.geojson"), "--webhook-url", hook_url],
            stdout=log, stderr=log,
        )
        time.sleep(2)
        return p, p.pid, None
    if system == "nodered":
        nr = ROOT / "bench/peers/node-red"
        user_dir = tempfile.mkdtemp(prefix="hyfleet-bench-nr-")
        port = lib.free_port()
        env = {**os.environ, "MQTT_PORT": str(broker.port), "TOPIC": f"{root}/+/+/telemetry",
               "DATABASE_URL": db.url, "ZONES": str(ROOT / "data/xiaoyi/zones.geojson"),
               "WEBHOOK_URL": hook_url, "MQTT_CLIENT_ID": f"nr-peer-{uuid.uuid4().hex[:6]}"}
        shutil.copy(nr / "flows.json", Path(user_dir) / "flows.json")
        p = subprocess.Popen(
            ["node", str(nr / "node_modules/node-red/red.js"), "--userDir", user_dir, "--port", str(port),
             "--settings", str(nr / "settings.js")],
            stdout=log, stderr=log, env=env, cwd=str(nr),
        )
        lib.wait_port(port, 60)
        time.sleep(3)  # the flow connects and subscribes after the editor is up
        return p, p.pid, None
    raise ValueError(system)


def pg_cpu(db, since=None):
    """CPU seconds of the PostgreSQL backends connected to `db`: a {pid: secs} snapshot, or, with
    `since`, the seconds spent since that snapshot (by backends alive at both ends, plus those
    started since)."""
    with psycopg.connect(db.admin, autocommit=True) as c:
        pids = [r[0] for r in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (db.name,)).fetchall()]
    now = {}
    for p in pids:
        try:
            now[p] = lib.proc_usage(p)[0]
        except OSError:
            pass
    if since is None:
        return now
    return sum(v - since.get(p, 0.0) for p, v in now.items())


def write_phases(url):
    """hyfleet's time per step of its batch transactions, from its own /metrics."""
    import urllib.request
    out = {}
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("hyfleet_write_phase_seconds_total{"):
            name = line.split('"')[1]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def broker_cpu(broker):
    """CPU seconds so far of the broker's processes (every node of a cluster), summed."""
    return sum(lib.proc_usage(p)[0] for p in broker.pids)


def run_consumer(system, args, broker, rate, hook, extra=""):
    """One end-to-end run of `system` at `rate`. Keeps the database for the COPY ceiling when
    asked to; returns (result, db or None). `extra`: TOML appended to hyfleet's configuration."""
    db = lib.Database(args.hyfleet_bin)
    root = f"bench/{uuid.uuid4().hex[:8]}"
    proc = None
    try:
        proc, pid, metrics_url = start_system(system, args, broker, db, root, hook.url, extra)
        lib.wait_consuming(db, broker.port, root)
        hook.hits.clear()
        probe = lib.Probe(broker.port, root)
        probe.start(db)
        cpu0, _ = lib.proc_usage(pid)
        bcpu0 = broker_cpu(broker)
        pg0 = pg_cpu(db)
        sim0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        rep = sim(args, broker, root, rate, args.duration)
        sim1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        probe.finish()
        expected = rep["counts"]["readings"] + len(probe.sent)
        stored, done_ms = lib.wait_stored(db, expected)
        time.sleep(0.5)
        cpu1, rss = lib.proc_usage(pid)
        bcpu1 = broker_cpu(broker)
        # Peak RSS of the broker's processes, summed over a cluster's nodes.
        broker_rss = sum(lib.proc_usage(p)[1] or 0 for p in broker.pids)
        pg_secs = pg_cpu(db, pg0)
        loss = lib.loss_check(db, rep["last_seq"])
        lat = probe.latencies()
        third = max(1, len(lat) // 3)
        early = [l for _, l in lat[:third]]
        late = [l for _, l in lat[-third:]]
        e50, l50 = lib.percentile(early, 50), lib.percentile(late, 50)
        growing = e50 is None or l50 is None or l50 > max(2 * e50, e50 + 500)
        drain = (done_ms - rep["finished_unix_ms"]) / 1000 if done_ms else None
        hooks = hook.latencies(probe)
        res = {
            "system": system, "rate": rate, "duration_secs": args.duration, "vehicles": args.vehicles,
            "published": rep["counts"]["readings"], "publish_rate": rep["readings_per_sec"],
            "stored": stored, **loss,
            "stored_per_sec": (stored / ((done_ms - rep["started_unix_ms"]) / 1000)) if done_ms else None,
            "drain_secs_after_publishing": drain,
            "queryable_p50_ms": lib.percentile([l for _, l in lat], 50),
            "queryable_p99_ms": lib.percentile([l for _, l in lat], 99),
            "queryable_p50_first_third_ms": e50, "queryable_p50_last_third_ms": l50,
            # Where the tail is: p50 / p99 / max of each 10 s of the run, by publish time; and
            # the p99 once the first 10 s are past (a fleet seen for the first time registers
            # every vehicle then).
            "queryable_by_10s": by_window(lat, 10_000),
            "queryable_p99_after_10s_ms": lib.percentile([l for t, l in lat if t - lat[0][0] >= 10_000], 99),
            "lag_growing": growing,
            "webhook_samples": len(hooks), "webhook_cycles": len(probe.low_starts),
            "webhook_p50_ms": lib.percentile(hooks, 50), "webhook_p99_ms": lib.percentile(hooks, 99),
            "cpu_secs_per_1000": (cpu1 - cpu0) / stored * 1000 if stored else None,
            "peak_rss_mib": rss,
            # The broker's share: a subscriber that falls behind makes Mosquitto work harder.
            "broker_cpu_secs_per_1000": (bcpu1 - bcpu0) / stored * 1000 if stored else None,
            "broker_peak_rss_mib": broker_rss,
            # Where the machine's two cores went: PostgreSQL's backends serving this database
            # and the simulator publishing the load.
            "postgres_cpu_secs_per_1000": pg_secs / stored * 1000 if stored else None,
            "simulator_cpu_secs_per_1000": (sim1.ru_utime + sim1.ru_stime - sim0.ru_utime - sim0.ru_stime)
            / stored * 1000 if stored else None,
            "bytes_per_reading": lib.bytes_per_reading(db),
            "packed_bytes_per_reading": lib.packed_bytes_per_reading(db) if system == "hyfleet" else None,
            "load_avg": os.getloadavg()[0],
        }
        if metrics_url:
            res["write_phase_secs"] = write_phases(metrics_url)
        # The asked rate must also have been published: a broker slowing its publishers down
        # for a subscriber that falls behind would otherwise pass for a sustained load.
        res["sustained"] = bool(res["zero_loss"] and not growing and drain is not None and drain <= args.max_drain
                                and rep["readings_per_sec"] >= 0.95 * rate)
        return res, db
    except BaseException:
        db.drop()
        raise
    finally:
        lib.stop(proc)


def by_window(lat, window_ms):
    """[(seconds from the first publish, p50, p99, max)] of the latencies `lat` ([(publish unix
    ms, latency ms)]), per window of `window_ms` by publish time."""
    if not lat:
        return []
    t0 = lat[0][0]
    windows = {}
    for t, l in lat:
        windows.setdefault(int((t - t0) // window_ms), []).append(l)
    return [(w * window_ms / 1000, lib.percentile(ls, 50), lib.percentile(ls, 99), max(ls))
            for w, ls in sorted(windows.items())]


def median(rs, key):
    xs = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def summarise(results):
    """Per system: the highest rate sustained in every repeat it was tried, and the medians of
    the runs at that rate."""
    out = {}
    for system in ("hyfleet", "python", "nodered"):
        runs = [r for r in results["runs"] if r["system"] == system]
        if not runs:
            continue
        rates = sorted({r["rate"] for r in runs})
        best = None
        for rate in rates:
            at = [r for r in runs if r["rate"] == rate]
            if all(r["sustained"] for r in at):
                best = rate
        at = [r for r in runs if r["rate"] == best] if best else []
        keys = ("stored_per_sec", "queryable_p50_ms", "queryable_p99_ms", "webhook_p50_ms", "webhook_p99_ms",
                "cpu_secs_per_1000", "peak_rss_mib", "bytes_per_reading", "packed_bytes_per_reading")
        out[system] = {"sustained_rate": best, "runs_at_that_rate": len(at),
                       **{k: median(at, k) for k in keys}}
        # Also the most each one stored per second when pushed past its limit.
        out[system]["max_stored_per_sec"] = max((r["stored_per_sec"] or 0) for r in runs)
    b = [r["delivered_per_sec"] for r in results["broker"] if r.get("delivered_per_sec")]
    c = [r["rows_per_sec"] for r in results["copy"]]
    out["broker_ceiling_per_sec"] = statistics.median(b) if b else None
    out["copy_ceiling_rows_per_sec"] = statistics.median(c) if c else None
    return out


# --- burst: a neutral burst of JSON lines, hyfleet against the naive pipeline ----------------

# Shapes of the burst: publishers (one vehicle each) × readings each.
BURST_SHAPES = ((50, 2000), (500, 200))
# The ceiling is a consumer that acknowledges and counts: what the broker and the publishers
# leave of the machine to any consumer at all.
BURST_SYSTEMS = ("ceiling", "naive", "hyfleet")
NAIVE_TABLE = "naive_telemetry"


def burst_files(dirpath, publishers, per, end_unix):
    """One file of JSON lines per vehicle (`BURST-0001`…, bikes): `per` valid hyfleet readings
    of ~180 bytes each, seq 1..per, one a second ending at `end_unix`, riding small circles
    at 8 km/h inside the Xiaoyi service area, hydrogen well above the low mark. Returns
    [(code, path)] and the mean bytes of a reading."""
    import math
    out, total = [], 0
    for i in range(publishers):
        code = f"BURST-{i + 1:04d}"
        clat, clon = 37.135 + (i % 25) * 0.001, 111.765 + (i // 25) * 0.0012
        path = Path(dirpath) / f"{code}.jsonl"
        lines = []
        for k in range(per):
            a = 2 * math.pi * k / 100 + i
            t = end_unix - per + k + 1
            body = {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000Z", "seq": k + 1,
                "lat": round(clat + 0.0003 * math.sin(a), 6), "lon": round(clon + 0.00038 * math.cos(a), 6),
                "hdop": 0.9, "speed_kmh": 8.1, "heading_deg": round(math.degrees(a + math.pi / 2) % 360, 1),
                "h2_g": round(45 - 0.002 * k, 3), "batt_v": 39.1,
                "odo_km": round(1000 + i + 0.00225 * k, 3), "locked": False,
            }
            lines.append(json.dumps(body, separators=(",", ":")))
        text = "\n".join(lines) + "\n"
        total += len(text) - per
        path.write_text(text)
        out.append((code, path))
    return out, total / (publishers * per)


def build_naive(args):
    """Builds the naive peer (bench/peers/naive, a Cargo project of its own) unless told not to."""
    if not args.build_peers:
        return
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                    str(ROOT / "bench/peers/naive/Cargo.toml")],
                   check=True, env={**os.environ, "CARGO_TARGET_DIR": str(args.naive_bin.parent.parent)})


def hyfleet_batches(url):
    """(batches committed, readings in them) from hyfleet's /metrics."""
    m = lib.scrape(url) or {}
    return m.get("hyfleet_batch_rows_count"), m.get("hyfleet_batch_rows_sum")


def run_burst(system, args, cluster, shape, files, hook):
    """One measurement: a fresh broker without limits, a fresh database on the harness's own
    PostgreSQL, `system` subscribed, then every file published at once by its own
    `mosquitto_pub -l` (QoS 1); timed from the first publisher's start to the row count
    reaching what was published."""
    publishers, per = shape
    broker = lib.Broker(lib.UNLIMITED_BROKER_CONF, "UNLIMITED_BROKER_CONF of bench/lib.py")
    db = lib.Database(args.hyfleet_bin, admin=cluster.admin, migrate=system == "hyfleet")
    root = f"bench/{uuid.uuid4().hex[:8]}"
    proc, pubs, poller, metrics_url = None, [], None, None
    log = open(Path(tempfile.gettempdir()) / f"hyfleet-bench-burst-{system}.log", "w")
    try:
        load = lib.wait_load_below(args.load_below, args.load_wait_each)
        if system == "hyfleet":
            cfg, http_port = hyfleet_config(args, broker, db, root, hook.url)
            proc = start_hyfleet(args, cfg, http_port, log)
            metrics_url = f"http://127.0.0.1:{http_port}/metrics"
            count_sql, loss_sql = "SELECT count(*) FROM telemetry", lib.LOSS_QUERY
        else:
            mode = (["--count-only", str(publishers * per)] if system == "ceiling" else
                    ["--dsn", db.url, "--table", NAIVE_TABLE, "--batch", "5000", "--idle-ms", "50"])
            proc = subprocess.Popen(
                [str(args.naive_bin), "--mqtt", f"127.0.0.1:{broker.port}", "--topic", f"{root}/+/+/telemetry",
                 "--client-id", f"{system}-{uuid.uuid4().hex[:6]}", *mode],
                stdout=subprocess.PIPE, stderr=log, text=True)
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {system} peer did not subscribe (see its log)")
            count_sql = f"SELECT count(*) FROM {NAIVE_TABLE}"
            loss_sql = (f"SELECT vehicle, count(*), count(DISTINCT seq), min(seq), max(seq) "
                        f"FROM {NAIVE_TABLE} GROUP BY vehicle")
        if system == "ceiling":
            # The counting consumer stores nothing: it says `done` when it has had every message.
            counted = threading.Event()
            threading.Thread(target=lambda: proc.stdout.readline().strip() == "done" and counted.set(),
                             daemon=True).start()
        time.sleep(1)
        poller = psycopg.connect(db.url, autocommit=True)
        poller_pid = poller.execute("SELECT pg_backend_pid()").fetchone()[0]
        cluster.reset_statements()
        b_batches0 = hyfleet_batches(metrics_url) if metrics_url else (None, None)
        cpu0, _ = lib.proc_usage(proc.pid)
        bcpu0, _ = lib.proc_usage(broker.proc.pid)
        pg0, poll0 = cluster.cpu_secs(), lib.proc_usage(poller_pid)[0]
        # The publishers are the harness's only children that end (and are reaped) during a run.
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        expected = publishers * per
        t0 = time.time()
        for code, path in files:
            with open(path, "rb") as f:
                pubs.append(subprocess.Popen(
                    ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                     "-t", f"{root}/bike/{code}/telemetry", "-l"],
                    stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        spawned = time.time() - t0
        n, last, last_change, t_done, t_pub = 0, -1, time.time(), None, None
        while True:
            if system == "ceiling":
                n = expected if counted.is_set() else 0
            else:
                n = poller.execute(count_sql).fetchone()[0]
            t = time.time()
            if t_pub is None and all(p.poll() is not None for p in pubs):
                t_pub = t
            if n >= expected:
                t_done = t
                break
            if n != last:
                last, last_change = n, t
            elif t - last_change > args.burst_stall:
                break
            time.sleep(0.05)
        cpu1, rss = lib.proc_usage(proc.pid)
        bcpu1, _ = lib.proc_usage(broker.proc.pid)
        pg1, poll1 = cluster.cpu_secs(), lib.proc_usage(poller_pid)[0]
        for p in pubs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        pub_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        b_batches1 = hyfleet_batches(metrics_url) if metrics_url else (None, None)
        # The top 10 of the run (texts cut at 300 characters) keep the result file small.
        statements = [dict(s, query=s["query"][:300]) for s in cluster.statements(db.name, 20)
                      if s["query"] != count_sql and "pg_stat_statements" not in s["query"]
                      and "pg_backend_pid" not in s["query"]][:10]
        for s in statements:
            s["calls_per_1000"] = round(s["calls"] / n * 1000, 3) if n else None
            s["ms_per_1000"] = round(s["total_ms"] / n * 1000, 3) if n else None
        loss = ({"zero_loss": n == expected} if system == "ceiling" else
                lib.loss_check(db, {code: per for code, _ in files}, loss_sql))
        secs = t_done - t0 if t_done else None
        res = {
            "system": system, "publishers": publishers, "readings_each": per, "published": expected,
            "stored": n, **loss, "secs": secs, "readings_per_sec": n / secs if secs else None,
            "publishers_spawned_secs": spawned, "published_secs": (t_pub - t0) if t_pub else None,
            "cpu_secs_per_1000": (cpu1 - cpu0) / n * 1000 if n else None,
            # Every server process of the harness's PostgreSQL, less the row-count poller's backend.
            "postgres_cpu_secs_per_1000": ((pg1 - pg0) - (poll1 - poll0)) / n * 1000 if n else None,
            "poller_cpu_secs": poll1 - poll0,
            "broker_cpu_secs_per_1000": (bcpu1 - bcpu0) / n * 1000 if n else None,
            "publishers_cpu_secs_per_1000": pub_cpu / n * 1000 if n else None,
            "peak_rss_mib": rss, "load_avg_before": load, "load_avg_after": os.getloadavg()[0],
            "statements": statements,
        }
        if metrics_url and b_batches1[0] is not None:
            batches = b_batches1[0] - (b_batches0[0] or 0)
            res["batches"] = batches
            res["rows_per_batch"] = (b_batches1[1] - (b_batches0[1] or 0)) / batches if batches else None
            res["write_phase_secs"] = write_phases(metrics_url)
        return res
    finally:
        for p in pubs:
            lib.stop(p, signal.SIGKILL, 5)
        if poller:
            poller.close()
        lib.stop(proc)
        log.close()
        db.drop()
        broker.stop()


def summarise_burst(runs):
    """Per shape: medians per system, the ratios hyfleet ÷ naive, and how far each goal of
    issue 14 is (throughput ≥ 1.25×, consumer CPU per 1,000 readings ≤ 0.66×)."""
    out = {}
    keys = ("readings_per_sec", "secs", "cpu_secs_per_1000", "postgres_cpu_secs_per_1000",
            "broker_cpu_secs_per_1000", "publishers_cpu_secs_per_1000", "published_secs", "peak_rss_mib",
            "rows_per_batch")
    for publishers, per in BURST_SHAPES:
        shape = f"{publishers}x{per}"
        at = [r for r in runs if r["publishers"] == publishers and r["readings_each"] == per]
        if not at:
            continue
        s = {}
        for system in BURST_SYSTEMS:
            rs = [r for r in at if r["system"] == system]
            if rs:
                s[system] = {"runs": len(rs), "all_zero_loss": all(r["zero_loss"] for r in rs),
                             **{k: median(rs, k) for k in keys}}
        h, nv = s.get("hyfleet"), s.get("naive")
        if h and nv and h["readings_per_sec"] and nv["readings_per_sec"]:
            thr = h["readings_per_sec"] / nv["readings_per_sec"]
            cpu = h["cpu_secs_per_1000"] / nv["cpu_secs_per_1000"]
            s["ratios"] = {
                "throughput": thr, "cpu_per_1000": cpu,
                "postgres_cpu_per_1000": h["postgres_cpu_secs_per_1000"] / nv["postgres_cpu_secs_per_1000"],
                "throughput_goal": 1.25, "throughput_met": thr >= 1.25,
                "throughput_factor_to_goal": 1.25 / thr,
                "cpu_goal": 0.66, "cpu_met": cpu <= 0.66, "cpu_factor_to_goal": cpu / 0.66,
            }
            c = s.get("ceiling")
            if c and c["readings_per_sec"]:
                # 1.25 × the naive rate beyond the ceiling is beyond any consumer on this machine.
                s["ratios"].update({
                    "hyfleet_of_ceiling": h["readings_per_sec"] / c["readings_per_sec"],
                    "naive_of_ceiling": nv["readings_per_sec"] / c["readings_per_sec"],
                    "throughput_goal_of_ceiling": 1.25 * nv["readings_per_sec"] / c["readings_per_sec"],
                })
        # hyfleet's statements by total time per 1,000 readings, median over the repeats.
        by = {}
        for r in at:
            if r["system"] == "hyfleet":
                for st in r["statements"]:
                    by.setdefault(st["query"], []).append(st)
        top = [{"query": q, "runs": len(v),
                "calls_per_1000": statistics.median(x["calls_per_1000"] for x in v),
                "ms_per_1000": statistics.median(x["ms_per_1000"] for x in v)} for q, v in by.items()]
        s["hyfleet_statements"] = sorted(top, key=lambda x: -x["ms_per_1000"])[:12]
        out[shape] = s
    return out


def phase_burst(args, hook, log=print):
    """Both shapes × `--repeats`, hyfleet and the naive peer in turn (their order alternating
    between repeats), each on a fresh broker and a fresh database of one PostgreSQL cluster
    of the harness's own."""
    build_naive(args)
    cluster = lib.PgCluster()
    work = Path(tempfile.mkdtemp(prefix="hyfleet-bench-burst-"))
    res = {"postgres": {"version": cluster.version, "settings": cluster.settings},
           "broker_config": lib.UNLIMITED_BROKER_CONF, "shapes": {}, "runs": []}
    try:
        res["load_avg_at_start"] = lib.wait_load_below(args.load_below, args.load_wait)
        for publishers, per in BURST_SHAPES:
            if f"{publishers}x{per}" not in args.burst_shapes.split(","):
                continue
            d = work / f"{publishers}x{per}"
            d.mkdir()
            files, mean_bytes = burst_files(d, publishers, per, int(time.time()) - 60)
            res["shapes"][f"{publishers}x{per}"] = {"publishers": publishers, "readings_each": per,
                                                    "mean_reading_bytes": mean_bytes}
            for rep in range(args.repeats):
                systems = [x for x in BURST_SYSTEMS if x in args.burst_systems.split(",")]
                order = systems if rep % 2 == 0 else systems[::-1]
                for system in order:
                    r = run_burst(system, args, cluster, (publishers, per), files, hook)
                    r["repeat"] = rep
                    log(f"[{rep}] burst {publishers}x{per} {system}: {fmt(r['readings_per_sec'])}/s, "
                        f"zero loss {r['zero_loss']}, CPU {fmt(r['cpu_secs_per_1000'], 4)} s/1k, PostgreSQL "
                        f"{fmt(r['postgres_cpu_secs_per_1000'], 4)} s/1k, load {r['load_avg_before']:.2f}")
                    res["runs"].append(r)
                    res["summary"] = summarise_burst(res["runs"])
                    yield res
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def print_burst(b):
    print("\nburst (publish start → all committed; medians)")
    print("shape | system | readings/s | CPU ms/1k consumer | CPU ms/1k PostgreSQL | runs | zero loss")
    for shape, s in b.get("summary", {}).items():
        for system in BURST_SYSTEMS:
            r = s.get(system)
            if r:
                print(f"{shape} | {system} | {fmt(r['readings_per_sec'])} | {fmt(r['cpu_secs_per_1000'] * 1000, 1)} | "
                      f"{fmt(r['postgres_cpu_secs_per_1000'] * 1000, 1)} | {r['runs']} | {r['all_zero_loss']}")
        q = s.get("ratios")
        if q:
            print(f"{shape}: hyfleet ÷ naive throughput {q['throughput']:.2f} (goal ≥ 1.25), CPU/1k "
                  f"{q['cpu_per_1000']:.2f} (goal ≤ 0.66), PostgreSQL CPU/1k {q['postgres_cpu_per_1000']:.2f}")
            if "naive_of_ceiling" in q:
                print(f"{shape}: of the ceiling, naive {q['naive_of_ceiling']:.2f}, hyfleet {q['hyfleet_of_ceiling']:.2f}; "
                      f"1.25 × naive would be {q['throughput_goal_of_ceiling']:.2f} of it")


# --- overload and catch-up ---------------------------------------------------------------------

def phase_overload(args, sustained, fresh_broker, hook):
    """hyfleet asked for twice its highest sustained simulator rate: the stored rate ÷ that rate
    (issue 14: ≥ 0.9, degrade, never collapse)."""
    r, db = run_consumer("hyfleet", args, fresh_broker(), 2 * sustained, hook)
    db.drop()
    r["highest_sustained"] = sustained
    r["stored_over_sustained"] = r["stored_per_sec"] / sustained if r["stored_per_sec"] else None
    return r


def phase_catchup(args, hook):
    """Readings queued on a private broker with the shipped configuration while hyfleet is
    down (its persistent session created by a first start), then hyfleet started: the time
    from its start to all of them stored."""
    broker = lib.Broker()
    db = lib.Database(args.hyfleet_bin)
    root = f"bench/{uuid.uuid4().hex[:8]}"
    log = open(Path(tempfile.gettempdir()) / "hyfleet-bench-catchup.log", "w")
    proc = None
    try:
        cfg, http_port = hyfleet_config(args, broker, db, root, hook.url)
        proc = start_hyfleet(args, cfg, http_port, log)  # subscribes: the session exists from now on
        lib.stop(proc)
        rate = args.catchup_rate
        rep = sim_vehicles(args, broker, root, rate, args.catchup_readings / rate, 505)
        queued = rep["counts"]["readings"]
        broker_rss = lib.rss_mib(broker.proc.pid)
        pg0 = pg_cpu(db)
        bcpu0, _ = lib.proc_usage(broker.proc.pid)
        t0 = time.time()
        proc = start_hyfleet(args, cfg, http_port, log, ready_secs=120)
        ready = time.time() - t0
        stored, done_ms = lib.wait_stored(db, queued, stall_secs=60, max_secs=3600)
        cpu1, rss = lib.proc_usage(proc.pid)
        bcpu1, _ = lib.proc_usage(broker.proc.pid)
        secs = done_ms / 1000 - t0 if done_ms else None
        loss = lib.loss_check(db, rep["last_seq"])
        return {"queued": queued, "publish_rate": rep["readings_per_sec"], "broker_rss_mib_queued": broker_rss,
                "stored": stored, **loss, "drain_secs": secs, "ready_secs": ready,
                "readings_per_sec": stored / secs if secs else None,
                "cpu_secs_per_1000": cpu1 / stored * 1000 if stored else None, "peak_rss_mib": rss,
                "postgres_cpu_secs_per_1000": pg_cpu(db, pg0) / stored * 1000 if stored else None,
                "broker_cpu_secs_per_1000": (bcpu1 - bcpu0) / stored * 1000 if stored else None,
                "load_avg": os.getloadavg()[0], "broker_config_source": broker.source}
    finally:
        lib.stop(proc)
        log.close()
        db.drop()
        broker.stop()


# --- nats: the JetStream path beside the Mosquitto path (issue 13) -----------------------------

def nats_toml(cluster, stream, replicas):
    """hyfleet's `[nats]` section for `cluster`: every node's client URL, a stream of its own."""
    return (f'[nats]\nurl = "{cluster.nats_url}"\nstream = "{stream}"\nconsumer = "hyfleet-bench"\n'
            f"replicas = {replicas}\n")


def phase_nats(args, hook, rate, log=print):
    """The simulator at `rate` on each path, each measurement on a fresh broker or cluster:
    Mosquitto (shipped configuration) → hyfleet's MQTT source, and, for each of
    `--nats-replicas`, a 3-node nats-server cluster (deploy/nats/nats.conf), the simulator
    publishing to nats-1's MQTT listener, → hyfleet's `[nats]` source pulling from a stream with
    that many replicas. Each path's ceiling: `hyfleet-bench count` on it (over MQTT, or pulling
    from a stream of the same replicas) on the same workload (`rate` for `--duration`): what a
    consumer that does nothing but count and acknowledge gets on that path. (Not the simulator
    as fast as asked, as the broker phase does: it publishes rate × seconds readings, and the
    MQTT listener of nats-server takes them far slower than Mosquitto.)"""
    paths = [("mosquitto", None)] + [("nats", int(r)) for r in args.nats_replicas.split(",") if r]
    out = []
    for path, replicas in paths:
        fresh = lib.Broker if path == "mosquitto" else lib.NatsCluster
        e = {"path": path, "replicas": replicas, "rate": rate}
        b = fresh()
        try:
            e["broker_config_source"] = b.source
            e["server_version"] = getattr(b, "version", None)
            source = None if path == "mosquitto" else [
                "--nats-url", b.nats_url, "--stream", f"BENCH_COUNT_{uuid.uuid4().hex[:8]}",
                "--replicas", str(replicas)]
            e["ceiling"] = phase_broker(args, b, source, rate, args.duration)
        finally:
            b.stop()
        log(f"  {path} r{replicas or '-'} ceiling: {json.dumps(e['ceiling'])}")
        b = fresh()
        try:
            extra = "" if path == "mosquitto" else nats_toml(b, f"BENCH_{uuid.uuid4().hex[:8]}", replicas)
            r, db = run_consumer("hyfleet", args, b, rate, hook, extra)
            db.drop()
            if path == "nats":
                r["stream_leaders"] = b.stream_leaders()
                r["publishing_to"] = "nats-1's MQTT listener"
            e["hyfleet"] = r
        finally:
            b.stop()
        c = e["ceiling"]["delivered_per_sec"]
        e["stored_over_ceiling"] = r["stored_per_sec"] / c if r["stored_per_sec"] and c else None
        log(f"  {path} r{replicas or '-'} hyfleet @ {rate:.0f}/s: stored {r['stored']:,} of "
            f"{r['published']:,} published, {fmt(r['stored_per_sec'])}/s, sustained {r['sustained']}, "
            f"p99 {fmt(r['queryable_p99_ms'])} ms, load {r['load_avg']:.2f}")
        out.append(e)
    return out


def summarise_nats(runs, max_drain):
    """Medians per (rate, path, replicas) over the repeats, with the ratios."""
    groups = {}
    for e in runs:
        groups.setdefault((e["rate"], e["path"], e["replicas"]), []).append(e)
    rows = []
    for (rate, path, replicas), es in groups.items():
        hs = [e["hyfleet"] for e in es]
        cs = [e["ceiling"] for e in es]
        rows.append({
            "rate": rate, "path": path, "replicas": replicas, "runs": len(es),
            "ceiling_per_sec": median(cs, "delivered_per_sec"), "ceiling_published": median(cs, "published"),
            "ceiling_delivered": median(cs, "delivered"),
            **{k: median(hs, k) for k in (
                "published", "publish_rate", "stored", "stored_per_sec", "drain_secs_after_publishing",
                "queryable_p50_ms", "queryable_p99_ms", "cpu_secs_per_1000", "broker_cpu_secs_per_1000",
                "postgres_cpu_secs_per_1000", "peak_rss_mib", "broker_peak_rss_mib", "load_avg")},
            "all_sustained": all(h["sustained"] for h in hs), "all_zero_loss": all(h["zero_loss"] for h in hs),
            # Every reading stored, none twice, within `--max-drain` of the end of publishing
            # (sustained also asks that the simulator published 95 % of the asked rate).
            "all_stored_within_drain": all(
                h["zero_loss"] and h["drain_secs_after_publishing"] is not None
                and h["drain_secs_after_publishing"] <= max_drain for h in hs),
            "stored_over_ceiling": median(es, "stored_over_ceiling"),
        })
    for r in rows:
        m = next((x for x in rows if x["rate"] == r["rate"] and x["path"] == "mosquitto"), None)
        r["stored_over_mosquitto"] = (r["stored_per_sec"] / m["stored_per_sec"]
                                      if m and r["stored_per_sec"] and m["stored_per_sec"] else None)
        for k in ("cpu_secs_per_1000", "broker_cpu_secs_per_1000"):
            r[k.replace("secs_per_1000", "over_mosquitto")] = (r[k] / m[k] if m and r[k] and m[k] else None)
    return rows


def print_nats(rows):
    print("\nnats: the same workload on each path (medians; ceiling = hyfleet-bench count on that path)")
    hdr = ("rate/s", "path", "R", "ceiling/s", "published", "published/s", "stored", "stored/s",
           "all stored ≤ drain", "sustained", "p99 ms",
           "hyfleet CPU s/1k", "broker CPU s/1k", "broker RSS MiB", "÷ceiling", "÷mosquitto")
    print(" | ".join(hdr))
    for r in rows:
        print(" | ".join([
            fmt(r["rate"]), r["path"], str(r["replicas"] or "-"), fmt(r["ceiling_per_sec"]), fmt(r["published"]),
            fmt(r["publish_rate"]), fmt(r["stored"]), fmt(r["stored_per_sec"]), str(r["all_stored_within_drain"]),
            str(r["all_sustained"]), fmt(r["queryable_p99_ms"]),
            fmt(r["cpu_secs_per_1000"], 3), fmt(r["broker_cpu_secs_per_1000"], 3), fmt(r["broker_peak_rss_mib"]),
            fmt(r["stored_over_ceiling"], 2), fmt(r["stored_over_mosquitto"], 2),
        ]))


def sim_vehicles(args, broker, root, rate, duration, vehicles):
    """The simulator at `rate` for `duration` s over `vehicles` vehicles; its JSON report."""
    out = subprocess.run(
        [str(args.bench_bin), "sim", "--mqtt-url", broker.url, "--topic-root", root,
         "--rate-per-sec", str(rate), "--vehicles", str(vehicles), "--duration-secs",
         str(duration), "--seed", str(args.seed), "--qos", "1", "--connections", str(args.connections)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "n/a"


def fmt(x, d=0):
    return "n/a" if x is None else f"{x:,.{d}f}"


def print_table(s):
    bc, cc = s.get("broker_ceiling_per_sec"), s.get("copy_ceiling_rows_per_sec")
    print(f"\nbroker ceiling (counting subscriber): {fmt(bc)} readings/s")
    print(f"COPY ceiling (same rows, same table): {fmt(cc)} rows/s\n")
    hdr = ("system", "sustained/s", "max stored/s", "÷broker", "÷COPY", "q p50 ms", "q p99 ms",
           "hook p50", "hook p99", "CPU s/1k", "RSS MiB", "B/reading", "packed B/reading")
    print(" | ".join(hdr))
    for system in ("hyfleet", "python", "nodered"):
        r = s.get(system)
        if not r:
            continue
        print(" | ".join([
            system, fmt(r["sustained_rate"]), fmt(r["max_stored_per_sec"]), ratio(r["sustained_rate"], bc),
            ratio(r["sustained_rate"], cc), fmt(r["queryable_p50_ms"]), fmt(r["queryable_p99_ms"]),
            fmt(r["webhook_p50_ms"]), fmt(r["webhook_p99_ms"]), fmt(r["cpu_secs_per_1000"], 3),
            fmt(r["peak_rss_mib"]), fmt(r["bytes_per_reading"]), fmt(r["packed_bytes_per_reading"]),
        ]))
    h = s.get("hyfleet")
    for peer in ("python", "nodered"):
        p = s.get(peer)
        if h and p:
            print(f"hyfleet ÷ {peer}: sustained {ratio(h['sustained_rate'], p['sustained_rate'])}, "
                  f"max stored {ratio(h['max_stored_per_sec'], p['max_stored_per_sec'])}, "
                  f"CPU/1k {ratio(h['cpu_secs_per_1000'], p['cpu_secs_per_1000'])}, "
                  f"RSS {ratio(h['peak_rss_mib'], p['peak_rss_mib'])}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="broker,copy,hyfleet,python,nodered,burst,overload,catchup")
    ap.add_argument("--rates", default="5000,10000,20000,30000,40000",
                    help="rising readings/s; a system stops rising after its first unsustained rate")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of publishing per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vehicles", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-drain", type=float, default=5.0,
                    help="seconds after publishing ends within which all must be stored to count as sustained")
    ap.add_argument("--broker-rate", type=float, default=100000,
                    help="readings/s asked of the simulator for the broker ceiling (more than it can publish)")
    ap.add_argument("--broker-secs", type=float, default=10)
    ap.add_argument("--copy-batch", type=int, default=5000)
    ap.add_argument("--copy-connections", type=int, default=2)
    ap.add_argument("--api-hours", type=float, default=24, help="hours of 1 Hz data seeded for the api phase")
    ap.add_argument("--api-pack", action="store_true",
                    help="api phase: pack the seeded days (as the upkeep does once they are old) before timing")
    ap.add_argument("--api-rate", type=float, default=5000, help="readings/s published while the API is timed")
    ap.add_argument("--api-requests", type=int, default=200, help="timed requests of each API query")
    ap.add_argument("--nats-rates", default="5000", help="nats phase: readings/s asked on each path")
    ap.add_argument("--nats-replicas", default="3,1",
                    help="nats phase: the stream's replicas on the 3-node cluster, one NATS path each")
    ap.add_argument("--hyfleet-bin", type=Path, default=TARGET / "release/hyfleet")
    ap.add_argument("--bench-bin", type=Path, default=TARGET / "release/hyfleet-bench")
    ap.add_argument("--sustained", type=float,
                    help="overload phase: hyfleet's highest sustained rate (default: the hyfleet phase's, same run)")
    ap.add_argument("--catchup-readings", type=int, default=300000,
                    help="catchup phase: readings queued while hyfleet is down (an hour of the full fleet: 1818000)")
    ap.add_argument("--catchup-rate", type=float, default=20000, help="catchup phase: readings/s asked while queueing")
    ap.add_argument("--load-below", type=float, default=1.2,
                    help="burst phase: wait for the 1-minute load average to fall below this before measuring")
    ap.add_argument("--load-wait", type=float, default=600, help="burst phase: at most this long at its start (s)")
    ap.add_argument("--load-wait-each", type=float, default=60,
                    help="burst phase: at most this long before each measurement (s)")
    ap.add_argument("--burst-systems", default=",".join(BURST_SYSTEMS),
                    help="burst phase: which of ceiling, naive, hyfleet to measure")
    ap.add_argument("--burst-shapes", default=",".join(f"{p}x{n}" for p, n in BURST_SHAPES),
                    help="burst phase: which shapes (publishers x readings each)")
    ap.add_argument("--burst-stall", type=float, default=30,
                    help="burst phase: give up when the row count has not moved for this long (s)")
    ap.add_argument("--naive-bin", type=Path, default=TARGET / "bench-peers/release/hyfleet-naive-peer")
    ap.add_argument("--no-build-peers", dest="build_peers", action="store_false",
                    help="do not build bench/peers/naive (use --naive-bin as it is)")
    ap.add_argument("--plots", type=Path, default=ROOT / "docs/bench",
                    help="directory for the SVG plots made from the results ('' for none)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    phases = args.phases.split(",")
    rates = [float(r) for r in args.rates.split(",")]
    started = dt.datetime.now(dt.timezone.utc)
    broker = lib.Broker()
    hook = lib.WebhookReceiver()
    results = {
        "command": " ".join(sys.argv), "date": started.isoformat(timespec="seconds"),
        "machine": lib.machine(), "broker_config_source": broker.source, "broker_config": broker.conf,
        "git": subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip(),
        "args": {k: str(v) for k, v in vars(args).items()}, "broker": [], "copy": [], "runs": [],
    }
    out = args.out or ROOT / "bench/results" / f"{started:%Y-%m-%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        results["summary"] = summarise(results)
        if results.get("overload"):
            o = results["overload"]
            results["summary"]["overload"] = {
                "highest_sustained": o[0]["highest_sustained"], "asked": o[0]["rate"], "runs": len(o),
                "stored_per_sec": median(o, "stored_per_sec"),
                "stored_over_sustained": median(o, "stored_over_sustained"), "goal": 0.9}
        if results.get("catchup"):
            c = results["catchup"]
            results["summary"]["catchup"] = {
                "runs": len(c), "queued": median(c, "queued"), "drain_secs": median(c, "drain_secs"),
                "readings_per_sec": median(c, "readings_per_sec"),
                "broker_rss_mib_queued": median(c, "broker_rss_mib_queued"),
                "all_zero_loss": all(r["zero_loss"] for r in c)}
        out.write_text(json.dumps(results, indent=2))

    def fresh_broker():
        # Each measurement gets a broker of its own: sessions, queues and the persistence file
        # left by earlier runs (a peer killed with messages in flight, a gigabyte saved every
        # `autosave_interval`) must not weigh on the next one.
        nonlocal broker
        broker.stop()
        broker = lib.Broker()
        return broker

    try:
        for rep in range(args.repeats if set(phases) - {"api"} else 0):
            if "broker" in phases:
                r = phase_broker(args, fresh_broker())
                print(f"[{rep}] broker ceiling: {r}", flush=True)
                results["broker"].append(r)
                save()
            for system in ("hyfleet", "python", "nodered"):
                if system not in phases:
                    continue
                for rate in rates:
                    r, db = run_consumer(system, args, fresh_broker(), rate, hook)
                    print(f"[{rep}] {system} @ {rate:.0f}/s: {json.dumps(r)}", flush=True)
                    results["runs"].append(r)
                    save()
                    # The COPY ceiling loads the very rows hyfleet stored at its highest rate.
                    keep = system == "hyfleet" and "copy" in phases and (not r["sustained"] or rate == rates[-1])
                    if keep:
                        c = phase_copy(args, db, args.hyfleet_bin)
                        print(f"[{rep}] COPY ceiling: {c}", flush=True)
                        results["copy"].append(c)
                    db.drop()
                    if not r["sustained"]:
                        break
                save()
        if "burst" in phases:
            for b in phase_burst(args, hook, log=lambda m: print(m, flush=True)):
                results["burst"] = b
                save()
        if "overload" in phases:
            sustained = args.sustained or (summarise(results).get("hyfleet") or {}).get("sustained_rate")
            if not sustained:
                print("overload: no sustained rate: run the hyfleet phase first or give --sustained", flush=True)
            else:
                results["overload"] = []
                for rep in range(args.repeats):
                    r = phase_overload(args, sustained, fresh_broker, hook)
                    print(f"[{rep}] overload @ {r['rate']:.0f}/s: stored {fmt(r['stored_per_sec'])}/s = "
                          f"{r['stored_over_sustained'] or 0:.2f} of {sustained:.0f}/s", flush=True)
                    results["overload"].append(r)
                    save()
        if "catchup" in phases:
            results["catchup"] = []
            for rep in range(args.repeats):
                r = phase_catchup(args, hook)
                print(f"[{rep}] catch-up: {r['queued']:,} queued, stored in {fmt(r['drain_secs'], 1)} s "
                      f"({fmt(r['readings_per_sec'])}/s), zero loss {r['zero_loss']}", flush=True)
                results["catchup"].append(r)
                save()
        if "api" in phases:
            results["api"] = phase_api(args, broker, hook)
            save()
        if "nats" in phases:
            results["nats"] = []
            for rep in range(args.repeats):
                for rate in (float(r) for r in args.nats_rates.split(",")):
                    print(f"[{rep}] nats @ {rate:.0f}/s", flush=True)
                    for e in phase_nats(args, hook, rate, log=lambda m: print(m, flush=True)):
                        results["nats"].append(e)
                        results["nats_summary"] = summarise_nats(results["nats"], args.max_drain)
                        save()
    finally:
        hook.stop()
        broker.stop()
        results["machine"]["load_at_end"] = os.getloadavg()
        save()
        if results["runs"] or results["broker"] or results["copy"]:
            print_table(results["summary"])
        if results.get("api"):
            print_api(results["api"])
        if results.get("burst"):
            print_burst(results["burst"])
        if results.get("nats"):
            print_nats(results["nats_summary"])
        for k in ("overload", "catchup"):
            if results["summary"].get(k):
                print(f"\n{k}: {json.dumps(results['summary'][k])}")
        print(f"\nwritten to {out}")
        if str(args.plots) not in ("", "."):
            try:
                import plots
                for p in plots.make([results], args.plots):
                    print(f"plot: {p}")
            except ImportError as e:
                print(f"no plots ({e}): pip install -r bench/requirements.txt")


if __name__ == "__main__":
    main()
