// Alerts into the `alerts` table, then a webhook POST for each opening.
const pool = global.get("pool");
const fetch = global.get("fetch");
const a = msg.payload;
try {
  if (a.action === "open") {
    await pool.query(
      "INSERT INTO alerts (vehicle_id, rule, state, severity, opened_at, lat, lon, details) " +
      "VALUES ($1, $2, 'open', $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
      [a.vid, a.rule, a.severity, a.ts, a.lat, a.lon, JSON.stringify({ vehicle: a.code, zone: a.zone ?? null })]);
    const url = env.get("WEBHOOK_URL");
    if (url) {
      await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ type: "alert.opened", rule: a.rule, severity: a.severity, vehicle: a.code, ts: a.ts }),
      }).catch((e) => node.warn(e));
    }
  } else {
    await pool.query(
      "UPDATE alerts SET state = 'resolved', resolved_at = $1 WHERE vehicle_id = $2 AND rule = $3 AND state <> 'resolved'",
      [a.ts, a.vid, a.rule]);
  }
} catch (e) {
  node.error(e, msg);
}
return null;
