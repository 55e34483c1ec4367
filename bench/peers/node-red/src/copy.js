// One COPY per joined batch, and the vehicles' latest state, in one transaction.
const pool = global.get("pool");
const copyFrom = global.get("copyFrom");
const rows = msg.payload;
const latest = new Map();
for (const r of rows) {
  const s = r.state, prev = latest.get(s[0]);
  if (!prev || prev[1] <= s[1]) latest.set(s[0], s);
}
const cols = [[], [], [], [], [], [], []];
for (const s of latest.values()) s.forEach((v, i) => cols[i].push(v));
const client = await pool.connect();
try {
  await client.query("BEGIN");
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
} catch (e) {
  await client.query("ROLLBACK").catch(() => {});
  node.error(e, msg);
} finally {
  client.release();
}
return null;
