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

Writes bench/results/<UTC date-time>.json and prints a table of medians with the ratios to the
ceilings and to each peer. See BENCHMARKS.md. Never run by CI: nothing here is a test.
"""

import argparse
import datetime as dt
import json
import os
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


def phase_broker(args, broker):
    """Counting subscriber, then the simulator as fast as asked (`--broker-rate`)."""
    root = f"bench/{uuid.uuid4().hex[:8]}"
    counter = subprocess.Popen(
        [str(args.bench_bin), "count", "--mqtt-url", broker.url, "--topic-root", root, "--idle-secs", "15"],
        stdout=subprocess.PIPE, text=True,
    )
    assert counter.stdout.readline().strip() == "ready"
    rep = sim(args, broker, root, args.broker_rate, args.broker_secs)
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


def hyfleet_config(args, broker, db, root, hook_url):
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
rate_per_minute = 100000
"""
    path = Path(tempfile.mkdtemp(prefix="hyfleet-bench-")) / "hyfleet.toml"
    path.write_text(text)
    return path, http_port


def start_hyfleet(args, cfg, http_port, log):
    """`hyfleet serve` with the configuration `cfg`; returns once it is ready (subscribed:
    readings published from then on are its to store)."""
    p = subprocess.Popen([str(args.hyfleet_bin), "--config", str(cfg), "serve"], stdout=log, stderr=log,
                         env={**os.environ, "RUST_LOG": "warn"})
    lib.wait_port(http_port, 30)
    deadline = time.time() + 30
    import urllib.request
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    return p


def start_system(system, args, broker, db, root, hook_url):
    """Starts one consumer; returns (process, pid to measure, its /metrics URL or None)."""
    log = open(Path(tempfile.gettempdir()) / f"hyfleet-bench-{system}.log", "w")
    if system == "hyfleet":
        cfg, http_port = hyfleet_config(args, broker, db, root, hook_url)
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


def run_consumer(system, args, broker, rate, hook):
    """One end-to-end run of `system` at `rate`. Keeps the database for the COPY ceiling when
    asked to; returns (result, db or None)."""
    db = lib.Database(args.hyfleet_bin)
    root = f"bench/{uuid.uuid4().hex[:8]}"
    proc = None
    try:
        proc, pid, metrics_url = start_system(system, args, broker, db, root, hook.url)
        lib.wait_consuming(db, broker.port, root)
        hook.hits.clear()
        probe = lib.Probe(broker.port, root)
        probe.start(db)
        cpu0, _ = lib.proc_usage(pid)
        bcpu0, _ = lib.proc_usage(broker.proc.pid)
        rep = sim(args, broker, root, rate, args.duration)
        probe.finish()
        expected = rep["counts"]["readings"] + len(probe.sent)
        stored, done_ms = lib.wait_stored(db, expected)
        time.sleep(0.5)
        cpu1, rss = lib.proc_usage(pid)
        bcpu1, _ = lib.proc_usage(broker.proc.pid)
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
            "lag_growing": growing,
            "webhook_samples": len(hooks), "webhook_cycles": len(probe.low_starts),
            "webhook_p50_ms": lib.percentile(hooks, 50), "webhook_p99_ms": lib.percentile(hooks, 99),
            "cpu_secs_per_1000": (cpu1 - cpu0) / stored * 1000 if stored else None,
            "peak_rss_mib": rss,
            # The broker's share: a subscriber that falls behind makes Mosquitto work harder.
            "broker_cpu_secs_per_1000": (bcpu1 - bcpu0) / stored * 1000 if stored else None,
            "bytes_per_reading": lib.bytes_per_reading(db),
            "load_avg": os.getloadavg()[0],
        }
        if metrics_url:
            res["write_phase_secs"] = write_phases(metrics_url)
        res["sustained"] = bool(res["zero_loss"] and not growing and drain is not None and drain <= args.max_drain)
        return res, db
    except BaseException:
        db.drop()
        raise
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
                "cpu_secs_per_1000", "peak_rss_mib", "bytes_per_reading")
        out[system] = {"sustained_rate": best, "runs_at_that_rate": len(at),
                       **{k: median(at, k) for k in keys}}
        # Also the most each one stored per second when pushed past its limit.
        out[system]["max_stored_per_sec"] = max((r["stored_per_sec"] or 0) for r in runs)
    b = [r["delivered_per_sec"] for r in results["broker"] if r.get("delivered_per_sec")]
    c = [r["rows_per_sec"] for r in results["copy"]]
    out["broker_ceiling_per_sec"] = statistics.median(b) if b else None
    out["copy_ceiling_rows_per_sec"] = statistics.median(c) if c else None
    return out


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "n/a"


def fmt(x, d=0):
    return "n/a" if x is None else f"{x:,.{d}f}"


def print_table(s):
    bc, cc = s.get("broker_ceiling_per_sec"), s.get("copy_ceiling_rows_per_sec")
    print(f"\nbroker ceiling (counting subscriber): {fmt(bc)} readings/s")
    print(f"COPY ceiling (same rows, same table): {fmt(cc)} rows/s\n")
    hdr = ("system", "sustained/s", "max stored/s", "÷broker", "÷COPY", "q p50 ms", "q p99 ms",
           "hook p50", "hook p99", "CPU s/1k", "RSS MiB", "B/reading")
    print(" | ".join(hdr))
    for system in ("hyfleet", "python", "nodered"):
        r = s.get(system)
        if not r:
            continue
        print(" | ".join([
            system, fmt(r["sustained_rate"]), fmt(r["max_stored_per_sec"]), ratio(r["sustained_rate"], bc),
            ratio(r["sustained_rate"], cc), fmt(r["queryable_p50_ms"]), fmt(r["queryable_p99_ms"]),
            fmt(r["webhook_p50_ms"]), fmt(r["webhook_p99_ms"]), fmt(r["cpu_secs_per_1000"], 3),
            fmt(r["peak_rss_mib"]), fmt(r["bytes_per_reading"]),
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
    ap.add_argument("--phases", default="broker,copy,hyfleet,python,nodered")
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
    ap.add_argument("--hyfleet-bin", type=Path, default=TARGET / "release/hyfleet")
    ap.add_argument("--bench-bin", type=Path, default=TARGET / "release/hyfleet-bench")
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
        out.write_text(json.dumps(results, indent=2))

    try:
        for rep in range(args.repeats):
            if "broker" in phases:
                r = phase_broker(args, broker)
                print(f"[{rep}] broker ceiling: {r}", flush=True)
                results["broker"].append(r)
                save()
            for system in ("hyfleet", "python", "nodered"):
                if system not in phases:
                    continue
                for rate in rates:
                    r, db = run_consumer(system, args, broker, rate, hook)
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
    finally:
        hook.stop()
        broker.stop()
        results["machine"]["load_at_end"] = os.getloadavg()
        save()
        print_table(results["summary"])
        print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
