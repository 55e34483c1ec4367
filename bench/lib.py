"""Plumbing of the benchmark harness: private broker, fresh databases, the probe vehicle, the
webhook receiver and the measurements taken from PostgreSQL and /proc."""

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432/postgres")
PROBE = "BENCH-PROBE"

# What the project's broker configuration must contain for the delivery promise (REFERENCE:
# Debian's defaults drop a slow subscriber's backlog; 20 in flight caps ack-after-commit).
ESSENTIAL_BROKER_CONF = """\
persistence true
max_inflight_messages 20000
max_queued_messages 2000000
max_queued_bytes 0
allow_anonymous true
"""
# A broker "without limits" for the burst workload: nothing queued is ever dropped, a large
# window of messages in flight to each subscriber (hyfleet's batches and the naive peer's
# 5,000-row COPY both fit four times over), persistence as shipped.
UNLIMITED_BROKER_CONF = """\
persistence true
max_inflight_messages 20000
max_inflight_bytes 0
max_queued_messages 0
max_queued_bytes 0
allow_anonymous true
"""
# Lines of the project's configuration that the harness replaces with its own.
_OWN = ("listener", "port", "persistence_location", "log_dest", "pid_file", "include_dir", "bind_address",
        # The workload's publishers have no device credentials: the harness measures delivery,
        # not authentication (the limits and persistence of the shipped file are kept). Client
        # ids pinned to user names refuse every client that has none ("not authorised").
        "password_file", "acl_file", "allow_anonymous", "use_username_as_clientid")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n):
    """`n` distinct free ports: each socket is held until all are taken, so that the system
    cannot hand the same port out twice."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def now_ms():
    return time.time_ns() // 1_000_000


class Broker:
    """A private Mosquitto on a free port with the project's configuration (or the essentials
    until `deploy/mosquitto/mosquitto.conf` exists), or with `conf` (text) when given."""

    def __init__(self, conf=None, source=None):
        self.dir = tempfile.mkdtemp(prefix="hyfleet-bench-mosq-")
        # Started as root, mosquitto drops to its own user and must still write its sessions.
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        project = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
        if conf is not None:
            base, self.source = conf, source or "given by the harness"
        elif project.exists():
            base = "".join(
                line for line in project.read_text().splitlines(keepends=True)
                if not line.strip().startswith(_OWN)
            )
            self.source = str(project.relative_to(ROOT)) + " (without its password and ACL files)"
        else:
            base, self.source = ESSENTIAL_BROKER_CONF, "essentials in bench/lib.py"
        self.conf = (
            f"listener {self.port} 127.0.0.1\npersistence_location {self.dir}/\n"
            f"log_dest file {self.dir}/mosquitto.log\nallow_anonymous true\n" + base.rstrip("\n") + "\n"
        )
        Path(self.dir, "mosquitto.conf").write_text(self.conf)
        self.proc = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", f"{self.dir}/mosquitto.conf"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 10)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    @property
    def pids(self):
        """The broker's processes, whose CPU and memory the measurements sum."""
        return [self.proc.pid]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


NATS_SERVER = os.environ.get("NATS_SERVER", shutil.which("nats-server") or "/usr/sbin/nats-server")


def nats_node_config(text, nodes, me, store):
    """`deploy/nats/nats.conf` for node `me` of `nodes` ([{client, mqtt, route, http}]): the
    ports of each block moved to loopback, the store into `store`, every other line as shipped
    (as tests/it/support/nats.rs rewrites it), but for the files make-passwords.sh writes: the
    routes are plain loopback routes, and the logins are left out. As with Mosquitto's password
    and ACL files (`_OWN`), the simulated devices connect anonymously: the harness measures
    delivery, not authentication. Each rewritten line must exist."""
    p = nodes[me]
    block, replaced, out = "", [], []
    for line in text.splitlines():
        t = line.strip()
        if t == 'include "logins.conf"':
            replaced.append("logins")
            continue
        if block == "cluster" and t == 'include "routes.conf"':
            replaced.append("cluster.routes")
            out.append("  routes: [" + ", ".join(f"nats-route://127.0.0.1:{n['route']}" for n in nodes) + "]")
            continue
        if t.endswith(" {"):
            block = t[:-2] if t[:-2] in ("jetstream", "mqtt", "cluster") else "other"
        elif t == "}":
            block = ""
        key = t.split(":")[0]
        new = {
            ("", "port"): f"host: 127.0.0.1\nport: {p['client']}",
            ("", "http_port"): f'http: "127.0.0.1:{p["http"]}"',
            ("jetstream", "store_dir"): f'  store_dir: "{store}"',
            ("mqtt", "port"): f"  host: 127.0.0.1\n  port: {p['mqtt']}",
            ("cluster", "port"): f"  host: 127.0.0.1\n  port: {p['route']}",
        }.get((block, key))
        if new is None:
            out.append(line)
        else:
            replaced.append(f"{block}.{key}")
            out.append(new)
    assert sorted(replaced) == [".http_port", ".port", "cluster.port", "cluster.routes", "jetstream.store_dir",
                                "logins", "mqtt.port"], f"nats.conf no longer sets each of these once: {replaced}"
    return "\n".join(out) + "\n"


class NatsCluster:
    """A cluster of `size` nats-server nodes on loopback with `deploy/nats/nats.conf` (ports,
    routes and store moved to loopback and a temporary directory, removed by `stop()`). Like
    `Broker` for the harness: `url` and `port` are node 1's MQTT listener, `pids` every node;
    `nats_url` lists every node's client URL, for `[nats] url`."""

    def __init__(self, size=3, ready_secs=60):
        shipped = ROOT / "deploy" / "nats" / "nats.conf"
        text = shipped.read_text()
        self.source = (f"{shipped.relative_to(ROOT)} (ports, routes and store_dir moved to loopback and a temp "
                       "dir; without the logins make-passwords.sh writes)")
        # A port found free can be taken by another process before a node binds it: that node
        # exits at once, and the whole cluster starts again on other ports (as the tests do).
        for _ in range(5):
            self._spawn(text, size)
            time.sleep(0.5)
            if all(p.poll() is None for p in self.procs):
                break
            self.stop()
        else:
            raise RuntimeError("no NATS cluster started in 5 tries on free ports")
        try:
            self._wait_ready(ready_secs)
        except BaseException:
            self.stop()
            raise
        self.port = self.nodes[0]["mqtt"]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.nats_url = ",".join(f"nats://127.0.0.1:{n['client']}" for n in self.nodes)
        self.version = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True).stdout.strip()

    def _spawn(self, text, size):
        self.dir = tempfile.mkdtemp(prefix="hyfleet-bench-nats-")
        ports = free_ports(4 * size)
        self.nodes = [dict(zip(("client", "mqtt", "route", "http"), ports[4 * n:4 * n + 4]))
                      for n in range(size)]
        self.procs = []
        try:
            for n, node in enumerate(self.nodes):
                d = Path(self.dir, f"nats-{n + 1}")
                d.mkdir()
                conf = nats_node_config(text, self.nodes, n, d / "store")
                (d / "nats.conf").write_text(conf)
                if n == 0:
                    self.conf = conf
                with open(d / "log", "w") as log:
                    self.procs.append(subprocess.Popen(
                        [NATS_SERVER, "-c", str(d / "nats.conf")], stdout=log, stderr=log,
                        env={**os.environ, "NATS_NAME": f"nats-{n + 1}"}))
        except BaseException:
            self.stop()
            raise

    @property
    def proc(self):
        return self.procs[0]

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def _wait_ready(self, secs):
        """Every node's JetStream with a meta leader, then node 1's MQTT listener accepting a
        session (it refuses clients until JetStream is ready)."""
        import urllib.request
        deadline = time.time() + secs
        for node in self.nodes:
            while True:
                try:
                    jsz = json.loads(urllib.request.urlopen(
                        f"http://127.0.0.1:{node['http']}/jsz", timeout=2).read())
                    if (jsz.get("meta_cluster") or {}).get("leader"):
                        break
                except (OSError, ValueError):
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"no JetStream meta leader seen from node {node} within {secs} s")
                time.sleep(0.2)
        while True:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-ready-{uuid.uuid4().hex[:6]}")
            try:
                if c.connect("127.0.0.1", self.nodes[0]["mqtt"]) == 0:
                    c.loop(timeout=2)
                    if c.is_connected():
                        c.disconnect()
                        return
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the MQTT listener of nats-1 refused sessions for {secs} s")
            time.sleep(0.5)

    def stream_leaders(self):
        """{stream: the node leading it} from nats-1's monitoring endpoint; None if it does not answer."""
        import urllib.request
        try:
            jsz = json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{self.nodes[0]['http']}/jsz?accounts=1&streams=1", timeout=5).read())
        except (OSError, ValueError):
            return None
        return {st["name"]: (st.get("cluster") or {}).get("leader")
                for acc in jsz.get("account_details") or [] for st in acc.get("stream_detail") or []}

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def stop(proc, sig=signal.SIGTERM, secs=20):
    """Ask a child process to stop with `sig`; kill it if it has not within `secs`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(secs)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_port(port, secs):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {secs} s")


class Database:
    """A fresh database with hyfleet's migrations (an empty one with `migrate=False`) on the
    server of `admin`, dropped by `drop()`."""

    def __init__(self, hyfleet_bin, admin=None, migrate=True):
        self.admin = admin or PG_ADMIN
        self.name = f"hyfleet_bench_{uuid.uuid4().hex[:10]}"
        self.url = self.admin.rsplit("/", 1)[0] + "/" + self.name
        if not migrate:
            with psycopg.connect(self.admin, autocommit=True) as c:
                c.execute(f"CREATE DATABASE {self.name}")
            return
        subprocess.run(
            [hyfleet_bin, "migrate"], check=True, stdout=subprocess.DEVNULL,
            env={**os.environ, "DATABASE_URL": self.url, "RUST_LOG": "warn"},
        )
        # The daily partitions `hyfleet serve` makes at start (30 days of retention + 1 behind,
        # 3 ahead), so that peers and the COPY ceiling write into the same table shape.
        today = dt.datetime.now(dt.timezone.utc).date()
        with self.connect() as c:
            for k in range(-31, 4):
                d = today + dt.timedelta(days=k)
                c.execute(
                    f"CREATE TABLE IF NOT EXISTS telemetry_{d:%Y%m%d} PARTITION OF telemetry "
                    f"FOR VALUES FROM ('{d}T00:00:00Z') TO ('{d + dt.timedelta(days=1)}T00:00:00Z')"
                )

    def connect(self):
        return psycopg.connect(self.url, autocommit=True)

    def drop(self):
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def _pg_bin(name):
    """A PostgreSQL server program: on the PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda d: int(d.parent.name))
    if not dirs:
        raise RuntimeError(f"{name} not found: install PostgreSQL's server package")
    return str(dirs[-1] / name)


class PgCluster:
    """A throwaway PostgreSQL cluster of the harness's own (initdb + pg_ctl) on a free port, so
    that every server process's CPU belongs to the measurement, with `pg_stat_statements`
    loaded. Settings are those of the system server the other phases use (Debian's defaults
    plus `autovacuum off`, as on the benchmark machine). As root, it runs as `postgres`."""

    SETTINGS = {
        "shared_buffers": "128MB", "max_wal_size": "1GB", "min_wal_size": "80MB", "max_connections": "100",
        "autovacuum": "off", "fsync": "on", "synchronous_commit": "on", "timezone": "'Etc/UTC'",
        "shared_preload_libraries": "'pg_stat_statements'", "pg_stat_statements.track": "top",
        "pg_stat_statements.max": "5000",
    }

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="hyfleet-bench-pg-"))
        self.port = free_port()
        data = self.dir / "data"
        as_user = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        self._as = as_user
        subprocess.run(as_user + [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                  "-E", "UTF8", "--no-sync"], check=True, stdout=subprocess.DEVNULL)
        conf = {**self.SETTINGS, "port": str(self.port), "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{self.dir}'"}
        with open(data / "postgresql.conf", "a") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in conf.items()))
        subprocess.run(as_user + [_pg_bin("pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "start"],
                       check=True, stdout=subprocess.DEVNULL)
        self.data = data
        self.pid = int((data / "postmaster.pid").read_text().split()[0])
        self.admin = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.version = c.execute("SHOW server_version").fetchone()[0]
        self.settings = conf

    def cpu_secs(self):
        """CPU seconds of every server process so far: the postmaster with the children it has
        reaped, plus its live children."""
        total = proc_usage(self.pid)[0]
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        return total

    def reset_statements(self):
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute("SELECT pg_stat_statements_reset()")

    def statements(self, dbname, limit=15):
        """The statements run in `dbname` since the last reset, by total execution time:
        [{query, calls, total_ms, rows}]."""
        with psycopg.connect(self.admin, autocommit=True) as c:
            rows = c.execute(
                # One line per text: the same statement prepared on several connections may
                # have several entries.
                "SELECT query, sum(calls), sum(total_exec_time), sum(rows) FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
                "GROUP BY query ORDER BY 3 DESC LIMIT %s", (dbname, limit)).fetchall()
        return [{"query": " ".join(q.split())[:400], "calls": int(n), "total_ms": round(t, 2), "rows": int(r)}
                for q, n, t, r in rows]

    def stop(self):
        subprocess.run(self._as + [_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_load_below(limit, max_secs, log=print):
    """Waits (at most `max_secs`) until the 1-minute load average is below `limit`; returns
    the load average then."""
    deadline = time.time() + max_secs
    first = True
    while os.getloadavg()[0] >= limit and time.time() < deadline:
        if first:
            log(f"  waiting for the load average ({os.getloadavg()[0]:.2f}) to fall below {limit}")
            first = False
        time.sleep(5)
    return os.getloadavg()[0]


def stored_count(db):
    with db.connect() as c:
        return c.execute("SELECT count(*) FROM telemetry").fetchone()[0]


def wait_stored(db, expected, stall_secs=20, max_secs=300):
    """Polls until `expected` readings (the warm-up ones aside) are stored; returns (count, unix ms when it got there)."""
    deadline = time.time() + max_secs
    last, last_change = -1, time.time()
    with db.connect() as c:
        while time.time() < deadline:
            n = c.execute(
                "SELECT count(*) FROM telemetry WHERE vehicle <> "
                "coalesce((SELECT id FROM vehicles WHERE code = 'BENCH-WARMUP'), -1)"
            ).fetchone()[0]
            t = now_ms()
            if n >= expected:
                return n, t
            if n != last:
                last, last_change = n, time.time()
            elif time.time() - last_change > stall_secs:
                break
            time.sleep(0.2)
    return last, None


LOSS_QUERY = ("SELECT v.code, count(*), count(DISTINCT t.seq), min(t.seq), max(t.seq) "
              "FROM telemetry t JOIN vehicles v ON v.id = t.vehicle GROUP BY v.code")


def loss_check(db, last_seq, query=LOSS_QUERY):
    """Zero loss: every simulated vehicle's seqs stored exactly once and contiguous 1..last.
    `query` gives (vehicle code, rows, distinct seqs, min seq, max seq) per vehicle."""
    with db.connect() as c:
        rows = c.execute(query).fetchall()
    got = {code: (n, d, lo, hi) for code, n, d, lo, hi in rows}
    missing, duplicated, bad = 0, 0, []
    for code, last in last_seq.items():
        n, d, lo, hi = got.get(code, (0, 0, None, None))
        missing += last - d
        duplicated += n - d
        if d != last or (last and (lo != 1 or hi != last)):
            bad.append(code)
    return {"missing": missing, "duplicated": duplicated, "vehicles_with_gaps": len(bad),
            "zero_loss": missing == 0 and duplicated == 0 and not bad}


def bytes_per_reading(db):
    with db.connect() as c:
        size, rows = c.execute(
            "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0), "
            "(SELECT count(*) FROM telemetry) "
            "FROM pg_inherits i WHERE i.inhparent = 'telemetry'::regclass "
            # Empty partitions hold only index metapages: not part of what a reading costs.
            "AND pg_relation_size(i.inhrelid) > 0"
        ).fetchone()
    return float(size) / rows if rows else None


def pack_all(c):
    """Pack every non-empty partition with hyfleet's `telemetry_pack` on connection `c`, as the
    upkeep packs old days; returns the packs' bytes (heap, TOAST, index) per reading packed."""
    parts = [r[0] for r in c.execute(
        "SELECT inhrelid::regclass::text FROM pg_inherits "
        "WHERE inhparent = 'telemetry'::regclass AND pg_relation_size(inhrelid) > 0").fetchall()]
    for p in parts:
        c.execute("SELECT telemetry_pack(%s::regclass)", (p,))
    size, rows = c.execute(
        "SELECT pg_total_relation_size('telemetry_packed'), "
        "(SELECT sum(readings) FROM telemetry_packed)").fetchone()
    return float(size) / rows if rows else None


def packed_bytes_per_reading(db):
    """What a reading costs once its day is packed, in a transaction that is rolled back: the
    store is left as it was."""
    with psycopg.connect(db.url) as c:  # not autocommit: rolled back below
        size = pack_all(c)
        c.rollback()
    return size


def wait_consuming(db, broker_port, topic_root, secs=60):
    """Publishes warm-up readings of a vehicle of their own until one is stored: from then on
    the consumer is subscribed and nothing published is lost to a race at start. Returns the
    readings stored so far (the warm-up ones)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-warmup-{uuid.uuid4().hex[:6]}")
    c.connect("127.0.0.1", broker_port)
    c.loop_start()
    deadline, seq = time.time() + secs, 0
    try:
        while time.time() < deadline:
            seq += 1
            t = now_ms()
            body = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000)) + f".{t % 1000:03d}Z",
                    "seq": seq, "lat": 37.146617, "lon": 111.781676, "speed_kmh": 0.0, "h2_g": 48.0,
                    "locked": True}
            c.publish(f"{topic_root}/bike/BENCH-WARMUP/telemetry", json.dumps(body), qos=1)
            time.sleep(0.2)
            n = stored_count(db)
            if n:
                time.sleep(0.5)
                return stored_count(db)
        raise RuntimeError("the consumer stored nothing within {secs} s")
    finally:
        c.loop_stop()
        c.disconnect()


class Probe:
    """A bike of its own publishing one reading every `every` seconds next to the load, QoS 1.
    Readings alternate between a full tank and 2 g (4 %, critical low hydrogen) every
    `cycle` seconds, so that each cycle should open one low_hydrogen alert.

    Publish-to-queryable: a poller asks PostgreSQL every 5 ms for the probe's newest stored
    seq; each seq's latency is the first poll that saw it minus its publish time."""

    def __init__(self, broker_port, topic_root, every=0.1, cycle=3.0):
        self.topic = f"{topic_root}/bike/{PROBE}/telemetry"
        self.every, self.cycle = every, cycle
        self.sent = {}  # seq -> publish unix ms
        self.low_starts = []  # unix ms of the first low reading of each cycle
        self.seen = {}  # seq -> unix ms first seen stored
        self.stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{uuid.uuid4().hex[:6]}")
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()

    def start(self, db):
        self.db = db
        self.t_pub = threading.Thread(target=self._publish, daemon=True)
        self.t_poll = threading.Thread(target=self._poll, daemon=True)
        self.t_pub.start()
        self.t_poll.start()

    def _publish(self):
        seq, low, next_toggle = 0, False, time.time() + self.cycle / 2
        while not self.stop.is_set():
            if time.time() >= next_toggle:
                low = not low
                next_toggle += self.cycle / 2
            seq += 1
            t = now_ms()
            if low and (not self.low_starts or self.low_starts[-1] < t - self.cycle * 500):
                self.low_starts.append(t)
            body = {
                "vehicle_id": PROBE, "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000))
                + f".{t % 1000:03d}Z", "seq": seq, "lat": 37.146617, "lon": 111.781676, "hdop": 0.8,
                "speed_kmh": 0.0, "heading_deg": 0.0, "h2_g": 2.0 if low else 48.0,
                "tank_temp_c": 20.0, "fc_power_w": 0.0, "batt_v": 39.0, "odo_km": 100.0, "locked": True,
            }
            self.sent[seq] = t
            self.client.publish(self.topic, json.dumps(body), qos=1)
            time.sleep(self.every)

    def _poll(self):
        with self.db.connect() as c:
            vid, top = None, 0
            while not (self.stop.is_set() and top >= len(self.sent)):
                if vid is None:
                    r = c.execute("SELECT id FROM vehicles WHERE code = %s", (PROBE,)).fetchone()
                    vid = r and r[0]
                else:
                    r = c.execute("SELECT max(seq) FROM telemetry WHERE vehicle = %s", (vid,)).fetchone()
                    t = now_ms()
                    for s in range(top + 1, (r[0] or 0) + 1):
                        self.seen[s] = t
                    top = max(top, r[0] or 0)
                if self.stop.is_set() and time.time() > self.stopped_at + 30:
                    break
                time.sleep(0.005)

    def finish(self):
        self.stopped_at = time.time()
        self.stop.set()
        self.t_pub.join()
        self.t_poll.join()
        self.client.loop_stop()
        self.client.disconnect()

    def latencies(self):
        """[(publish unix ms, latency ms)] of the seqs seen stored."""
        return [(self.sent[s], self.seen[s] - self.sent[s]) for s in sorted(self.seen) if s in self.sent]


class WebhookReceiver:
    """Records when each POST arrives; `latencies(probe)` pairs low_hydrogen openings of the probe
    with the cycle that caused them."""

    def __init__(self):
        self.hits = []
        hits = self.hits

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                hits.append((now_ms(), body.decode("utf-8", "replace")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def latencies(self, probe):
        out = []
        for t, body in self.hits:
            if PROBE not in body or "low_hydrogen" not in body or "opened" not in body:
                continue
            starts = [s for s in probe.low_starts if s <= t]
            if starts:
                out.append(t - starts[-1])
        return out

    def stop(self):
        self.server.shutdown()


def proc_usage(pid):
    """CPU seconds (user + system, with waited-for children) and peak RSS in MiB of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = sum(int(x) for x in fields[11:15]) / tick
    hwm = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return cpu, hwm


def scrape(url):
    """hyfleet's /metrics as {name or name{labels}: value}; None when it does not answer."""
    import urllib.request
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def rss_mib(pid):
    """Resident set size (VmRSS) of a process in MiB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine():
    mem = ""
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(), "memory_gib": round(int(mem) / 1024 / 1024, 1), "cpu": cpu,
        "kernel": os.uname().release, "load_at_start": os.getloadavg(),
        "mosquitto": subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0],
        "postgresql": subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip(),
    }
