#!/usr/bin/env python3
"""hyfleet soak: the full fleet's rate for a long run with incidents and faults injected.

505 vehicles (500 bikes, 5 buses), each reporting every second (505 readings/s), for `--minutes`
(default 30), with the simulator's message faults on (malformed, out-of-range, duplicate and
backlog messages in small shares) and its scripted incidents; and two infrastructure faults:

  at 1/3  every PostgreSQL connection of hyfleet's database is terminated (pg_terminate_backend)
  at 2/3  hyfleet is stopped with SIGTERM and started again with the same configuration (the same
          persistent MQTT session: what arrives meanwhile waits in the broker)

Every `--fine-secs` (2 s) it reads hyfleet's RSS (/proc VmRSS) and /metrics; every
`--sample-secs` (30 s) it prints one line: RSS, ingest lag, unacked messages, write errors,
MQTT reconnects, rejects by reason, readings stored (metrics and a count in PostgreSQL) and
webhook deliveries received. At the end: the zero-loss check against the simulator's report and
a verdict on flatness. Writes bench/results/soak-<UTC date-time>.json.gz (every 2 s sample makes
thousands of lines: compressed, a run costs the repository ~17 KB instead of ~220 KB; read it
with `zcat` or `gzip.open`). See BENCHMARKS.md, "Soak".
Never run by CI: nothing here is a test.
"""

import argparse
import datetime as dt
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lib  # noqa: E402
import run  # noqa: E402
from lib import ROOT  # noqa: E402

# Counters summed over hyfleet's lives (a restart starts them from zero again).
COUNTERS = ("hyfleet_readings_stored_total", "hyfleet_write_errors_total", "hyfleet_mqtt_reconnects_total",
            "hyfleet_readings_duplicate_total", "hyfleet_alert_events_total", "hyfleet_mqtt_messages_total")
REJECT = "hyfleet_rejects_total{reason=\""
# Errors and reconnects count as caused by a fault when they fall within this many seconds after it.
FAULT_WINDOW_SECS = 120


class Counters:
    """Cumulative counters across restarts: the last values of an ended process are carried."""

    def __init__(self):
        self.base, self.last = {}, {}

    def update(self, m):
        self.last = {k: v for k, v in m.items() if k in COUNTERS or k.startswith(REJECT)}

    def restarted(self):
        for k, v in self.last.items():
            self.base[k] = self.base.get(k, 0) + v
        self.last = {}

    def get(self, k):
        return self.base.get(k, 0) + self.last.get(k, 0)

    def rejects(self):
        keys = {k for k in (*self.base, *self.last) if k.startswith(REJECT)}
        return {k[len(REJECT):-2]: int(self.get(k)) for k in sorted(keys) if self.get(k)}


def sim_command(args, broker, root):
    return [str(args.bench_bin), "sim", "--mqtt-url", broker.url, "--topic-root", root,
            "--vehicles", str(args.vehicles), "--rate-per-sec", str(args.rate), "--duration-secs",
            str(args.minutes * 60), "--seed", str(args.seed), "--qos", "1", "--connections", str(args.connections),
            "--malformed-share", str(args.malformed_share), "--out-of-range-share", str(args.out_of_range_share),
            "--duplicate-share", str(args.duplicate_share), "--backlog-share", str(args.backlog_share),
            "--incidents"]


def terminate_connections(db):
    with psycopg.connect(lib.PG_ADMIN, autocommit=True) as c:
        return c.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (db.name,),
        ).fetchone()[0]


def thirds(samples, t_end, key, skip=0.0):
    """Values of `key` in each third of [0, t_end), samples before `skip` left out."""
    out = [[], [], []]
    for s in samples:
        if s["t"] < skip or s.get(key) is None:
            continue
        out[min(2, int(3 * s["t"] / t_end))].append(s[key])
    return out


def slope_per_10min(points):
    """Least-squares slope of [(t s, y)] in y per 10 minutes."""
    if len(points) < 2:
        return None
    mt = statistics.fmean(t for t, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den * 600 if den else None


def verdict(res, fine, faults, args):
    T = args.minutes * 60
    warm = args.warmup_secs
    f = {}
    # RSS: per hyfleet life, after its warm-up (the restart at 2/3 starts a new process).
    lives = []
    for life in sorted({s["life"] for s in fine}):
        pts = [(s["t"], s["rss_mib"]) for s in fine if s["life"] == life and s["rss_mib"] is not None]
        start = pts[0][0] if pts else 0
        settled = [(t, y) for t, y in pts if t >= start + warm]
        if not settled:
            continue
        n = max(1, len(settled) // 5)
        first = statistics.median(y for _, y in settled[:n])
        last = statistics.median(y for _, y in settled[-n:])
        lives.append({"life": life, "from_secs": round(settled[0][0]), "to_secs": round(settled[-1][0]),
                      "rss_first_fifth_mib": round(first, 1), "rss_last_fifth_mib": round(last, 1),
                      "rss_max_mib": round(max(y for _, y in settled), 1),
                      "rss_slope_mib_per_10min": round(slope_per_10min(settled) or 0, 2)})
    f["rss_by_life"] = lives
    rss_flat = all(x["rss_last_fifth_mib"] <= x["rss_first_fifth_mib"] * 1.1 + 5 for x in lives)
    f["rss_median_by_third_mib"] = [round(statistics.median(x), 1) if x else None
                                    for x in thirds(fine, T, "rss_mib", warm)]
    # Lag: p99 and max per third of hyfleet's own wait (oldest message of the last batch).
    lag = thirds(fine, T, "lag_s", warm)
    f["lag_p99_by_third_s"] = [round(lib.percentile(x, 99), 3) if x else None for x in lag]
    f["lag_p50_by_third_s"] = [round(lib.percentile(x, 50), 3) if x else None for x in lag]
    f["lag_max_by_third_s"] = [round(max(x), 3) if x else None for x in lag]
    unacked = thirds(fine, T, "unacked", warm)
    f["unacked_p99_by_third"] = [round(lib.percentile(x, 99)) if x else None for x in unacked]
    # Lag away from the faults: the third's samples outside the fault windows.
    quiet = [s for s in fine if not any(0 <= s["t"] - ft["t"] <= FAULT_WINDOW_SECS for ft in faults)]
    ql = thirds(quiet, T, "lag_s", warm)
    f["lag_p99_by_third_outside_faults_s"] = [round(lib.percentile(x, 99), 3) if x else None for x in ql]
    p = [x for x in f["lag_p99_by_third_outside_faults_s"] if x is not None]
    lag_flat = len(p) == 3 and p[2] <= max(2 * p[0], p[0] + 1.0)
    # Errors and reconnects: every increase should follow an injected fault closely.
    stray = []
    for key in ("write_errors", "reconnects"):
        prev = 0
        for s in fine:
            v = s.get(key)
            if v is None:
                continue
            if v > prev and not any(-5 <= s["t"] - ft["t"] <= FAULT_WINDOW_SECS for ft in faults):
                stray.append({"what": key, "t": round(s["t"]), "increase": v - prev})
            prev = v
    f["errors_outside_fault_windows"] = stray
    f["rss_flat"], f["lag_flat"], f["errors_only_at_faults"] = rss_flat, lag_flat, not stray
    f["flat"] = rss_flat and lag_flat and not stray
    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--vehicles", type=int, default=505, help="500 bikes + 5 buses")
    ap.add_argument("--rate", type=float, default=505.0, help="readings/s in all (505 = every vehicle at 1 Hz)")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--malformed-share", type=float, default=0.001)
    ap.add_argument("--out-of-range-share", type=float, default=0.001)
    ap.add_argument("--duplicate-share", type=float, default=0.005)
    ap.add_argument("--backlog-share", type=float, default=0.0002)
    ap.add_argument("--sample-secs", type=float, default=30.0, help="interval of the printed samples")
    ap.add_argument("--fine-secs", type=float, default=2.0, help="interval of the RSS and /metrics readings")
    ap.add_argument("--warmup-secs", type=float, default=180.0,
                    help="left out of the flatness verdict at the start of each hyfleet process")
    ap.add_argument("--keep-db", action="store_true")
    ap.add_argument("--hyfleet-bin", type=Path, default=run.TARGET / "release/hyfleet")
    ap.add_argument("--bench-bin", type=Path, default=run.TARGET / "release/hyfleet-bench")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    started = dt.datetime.now(dt.timezone.utc)
    out = args.out or ROOT / "bench/results" / f"soak-{started:%Y-%m-%dT%H%M%SZ}.json.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    broker = lib.Broker()
    hook = lib.WebhookReceiver()
    db = lib.Database(args.hyfleet_bin)
    root = f"bench/{uuid.uuid4().hex[:8]}"
    cfg, http_port = run.hyfleet_config(args, broker, db, root, hook.url)
    metrics_url = f"http://127.0.0.1:{http_port}/metrics"
    log_path = Path(tempfile.gettempdir()) / f"hyfleet-soak-{started:%Y%m%dT%H%M%S}.log"
    log = open(log_path, "a")
    sim_err = open(Path(tempfile.gettempdir()) / f"hyfleet-soak-sim-{started:%Y%m%dT%H%M%S}.log", "w")
    results = {
        "command": " ".join(sys.argv), "date": started.isoformat(timespec="seconds"), "machine": lib.machine(),
        "broker_config_source": broker.source, "broker_config": broker.conf,
        "hyfleet_config": cfg.read_text(),
        "git": subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip(),
        "args": {k: str(v) for k, v in vars(args).items()}, "log": str(log_path),
    }
    proc, simp = None, None
    fine, samples, faults = [], [], []
    counters = Counters()
    life = 0

    def save():
        results.update(samples=samples, fine=fine, faults=faults)
        with (gzip.open if out.suffix == ".gz" else open)(out, "wt") as f:
            json.dump(results, f, indent=1)

    try:
        proc = run.start_hyfleet(args, cfg, http_port, log)
        warm = lib.wait_consuming(db, broker.port, root)
        hook.hits.clear()
        results["sim_command"] = " ".join(sim_command(args, broker, root))
        simp = subprocess.Popen(sim_command(args, broker, root), stdout=subprocess.PIPE, stderr=sim_err, text=True)
        t0 = time.time()
        T = args.minutes * 60
        todo = [(T / 3, "pg_terminate_backend"), (2 * T / 3, "restart")]
        next_fine, next_print = 0.0, args.sample_secs
        print(f"soak: {args.vehicles} vehicles at {args.rate:g}/s for {args.minutes:g} min, topic root {root}, "
              f"database {db.name}, hyfleet log {log_path}", flush=True)
        print("   t s | RSS MiB |  lag s | unacked | wr err | reconn | stored (metrics / PG) | hooks | rejects",
              flush=True)
        while True:
            t = time.time() - t0
            if todo and t >= todo[0][0]:
                _, what = todo.pop(0)
                if what == "pg_terminate_backend":
                    n = terminate_connections(db)
                    faults.append({"t": round(t, 1), "what": what, "connections": n})
                    print(f"  -- {t:.0f} s: terminated {n} PostgreSQL connections of {db.name}", flush=True)
                else:
                    m = lib.scrape(metrics_url)
                    if m:
                        counters.update(m)
                    counters.restarted()
                    ts = time.time()
                    proc.send_signal(signal.SIGTERM)
                    code = proc.wait(60)
                    stopped = time.time() - ts
                    life += 1
                    proc = run.start_hyfleet(args, cfg, http_port, log)
                    down = time.time() - ts
                    faults.append({"t": round(t, 1), "what": what, "exit_code": code,
                                   "stop_secs": round(stopped, 2), "down_secs": round(down, 2)})
                    print(f"  -- {t:.0f} s: hyfleet stopped by SIGTERM in {stopped:.1f} s (exit {code}), "
                          f"ready again after {down:.1f} s", flush=True)
                continue
            if t >= next_fine:
                next_fine += args.fine_secs
                m = lib.scrape(metrics_url) or {}
                if m:
                    counters.update(m)
                s = {"t": round(t, 1), "life": life, "rss_mib": lib.rss_mib(proc.pid),
                     "lag_s": m.get("hyfleet_ingest_lag_seconds"),
                     "reading_age_s": m.get("hyfleet_reading_age_seconds"),
                     "unacked": m.get("hyfleet_unacked_messages"),
                     "write_errors": int(counters.get("hyfleet_write_errors_total")),
                     "reconnects": int(counters.get("hyfleet_mqtt_reconnects_total")),
                     "stored_metric": int(counters.get("hyfleet_readings_stored_total")),
                     "hooks": len(hook.hits)}
                fine.append(s)
                if t >= next_print:
                    next_print += args.sample_secs
                    s = {**s, "stored_pg": lib.stored_count(db), "rejects": counters.rejects(),
                         "duplicates": int(counters.get("hyfleet_readings_duplicate_total")),
                         "alert_events": int(counters.get("hyfleet_alert_events_total")),
                         "broker_rss_mib": lib.rss_mib(broker.proc.pid), "load_avg": os.getloadavg()[0]}
                    samples.append(s)
                    rej = " ".join(f"{k}={v}" for k, v in s["rejects"].items())
                    print(f"{t:6.0f} | {s['rss_mib'] or 0:7.1f} | {s['lag_s'] or 0:6.3f} | {s['unacked'] or 0:7.0f} | "
                          f"{s['write_errors']:6d} | {s['reconnects']:6d} | {s['stored_metric']:>10,} / "
                          f"{s['stored_pg']:>10,} | {s['hooks']:5d} | {rej}", flush=True)
                    save()
            if simp.poll() is not None:
                break
            time.sleep(max(0.0, min(next_fine, todo[0][0] if todo else next_fine) - (time.time() - t0)))

        if simp.returncode != 0:
            raise RuntimeError(f"the simulator failed with exit code {simp.returncode}")
        rep = json.loads(simp.stdout.read().strip().splitlines()[-1])
        results["sim_report"] = {k: v for k, v in rep.items() if k != "last_seq"}
        expected = sum(rep["last_seq"].values())
        stored, done_ms = lib.wait_stored(db, expected)
        drain = (done_ms - rep["finished_unix_ms"]) / 1000 if done_ms and "finished_unix_ms" in rep else None
        m = lib.scrape(metrics_url) or {}
        counters.update(m)
        time.sleep(1)
        cpu, hwm = lib.proc_usage(proc.pid)
        loss = lib.loss_check(db, rep["last_seq"])
        results["end"] = {
            "expected": expected, "stored_simulated": stored, "drain_secs_after_publishing": drain,
            "warmup_readings": warm, **loss,
            "write_errors": int(counters.get("hyfleet_write_errors_total")),
            "reconnects": int(counters.get("hyfleet_mqtt_reconnects_total")),
            "rejects": counters.rejects(),
            "duplicates_skipped": int(counters.get("hyfleet_readings_duplicate_total")),
            "alert_events": int(counters.get("hyfleet_alert_events_total")),
            "webhook_deliveries": len(hook.hits),
            "last_life_cpu_secs": cpu, "last_life_peak_rss_mib": hwm,
            "bytes_per_reading": lib.bytes_per_reading(db),
            "load_at_end": os.getloadavg(),
        }
        results["flatness"] = verdict(results, fine, faults, args)
        save()
        e, f = results["end"], results["flatness"]
        c = rep["counts"]
        print(f"\npublished {c['readings']:,} readings ({rep['readings_per_sec']:.1f}/s), malformed "
              f"{c['malformed']}, out of range {c['out_of_range']}, duplicates {c['duplicates']}, "
              f"{c['backlog_readings']} in {c['backlogs']} backlogs")
        print(f"zero loss: {e['zero_loss']} (missing {e['missing']}, duplicated {e['duplicated']}, "
              f"vehicles with gaps {e['vehicles_with_gaps']}); drained {drain} s after publishing")
        print(f"write errors {e['write_errors']}, reconnects {e['reconnects']}, rejects {e['rejects']}, "
              f"duplicates skipped {e['duplicates_skipped']}, alert events {e['alert_events']}, "
              f"webhooks received {e['webhook_deliveries']}")
        for x in f["rss_by_life"]:
            print(f"RSS life {x['life']} ({x['from_secs']}-{x['to_secs']} s): first fifth {x['rss_first_fifth_mib']} "
                  f"MiB, last fifth {x['rss_last_fifth_mib']} MiB, max {x['rss_max_mib']} MiB, "
                  f"slope {x['rss_slope_mib_per_10min']} MiB/10 min")
        print(f"lag p50 by third {f['lag_p50_by_third_s']} s, p99 {f['lag_p99_by_third_s']} s, "
              f"p99 outside fault windows {f['lag_p99_by_third_outside_faults_s']} s, max {f['lag_max_by_third_s']} s")
        print(f"unacked p99 by third {f['unacked_p99_by_third']}")
        print(f"errors outside fault windows: {f['errors_outside_fault_windows'] or 'none'}")
        print(f"verdict: {'FLAT' if f['flat'] else 'NOT FLAT'} (rss {f['rss_flat']}, lag {f['lag_flat']}, "
              f"errors only at faults {f['errors_only_at_faults']}), "
              f"{'ZERO LOSS' if e['zero_loss'] else 'LOSS'}")
    finally:
        lib.stop(simp, signal.SIGTERM, 30)
        lib.stop(proc, signal.SIGTERM, 30)
        hook.stop()
        broker.stop()
        save()
        if not args.keep_db:
            db.drop()
        print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
