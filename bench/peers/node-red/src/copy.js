// One COPY per joined batch, and the vehicles' latest state, in one transaction. Batches run
// concurrently: each locks its vehicles in id order first (as two batches touching the same
// vehicles would otherwise deadlock), and a failed batch is tried again rather than dropped.
const pool = global.get("pool");
const copyFrom = global.get("copyFrom");
const rows = msg.payload;
const latest = new Map();
for (const r of rows) {
  const s = r.state, prev = latest.get(s[0]);
  if (!prev || prev[1] <= s[1]) latest.set(s[0], s);
}
const ordered = [...latest.values()].sort((a, b) => a[0] - b[0]);
const cols = [[], [], [], [], [], [], []];
for (const s of ordered) s.forEach((v, i) => cols[i].push(v));
for (let attempt = 1; ; attempt++) {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query("SELECT 1 FROM vehicles WHERE id = ANY($1) ORDER BY id FOR UPDATE", [cols[0]]);
    await new Promise((resolve, reject) => {
      const stream = client.query(copyFrom(
        "COPY telemetry (ts, seq, lat, lon, odo_km, vehicle, speed_kmh, h2_g, hdop, heading_deg, " +
        "h2_pressure_bar, tank_temp_c, fc_power_w, fc_temp_c, batt_v, locked, faults) FROM STDIN"));
      stream.on("finish", resolve);
      stream.on("error", reject);
      stream.end(rows.map((r) => r.line).join(""));
    });
    await client.query(
      "UPDATE vehicles v SET last_ts = u.ts, last_seen = now(), lat = u.lat, lon = u.lon, speed_kmh = u.speed, " +
      "h2_g = u.h2, locked = u.locked FROM unnest($1::int[], $2::timestamptz[], $3::float8[], $4::float8[], " +
      "$5::real[], $6::real[], $7::bool[]) AS u(id, ts, lat, lon, speed, h2, locked) " +
      "WHERE v.id = u.id AND (v.last_ts IS NULL OR v.last_ts <= u.ts)", cols);
    await client.query("COMMIT");
    return null;
  } catch (e) {
    await client.query("ROLLBACK").catch(() => {});
    if (attempt >= 5) {
      node.error(e, msg);
      return null;
    }
    node.warn(`batch failed (${e.message}); retry ${attempt}`);
    await new Promise((r) => setTimeout(r, 100 * attempt));
  } finally {
    client.release();
  }
}
