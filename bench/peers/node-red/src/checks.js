// Contract range checks, vehicle registration, the low-hydrogen and parking rules.
// Output 1: one row for the COPY batch; output 2: alert openings and resolutions.
const PROFILES = { bike: [50, 23, 1.2], bus: [25000, 80, 0.014] };
const WARN = 20, CRIT = 10, CLEAR = 25;
const pool = global.get("pool");
const zones = global.get("zones");
const st = global.get("state");

function inside(lon, lat, ring) {
  let hit = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i], [xj, yj] = ring[j];
    if ((yi > lat) !== (yj > lat) && lon < ((xj - xi) * (lat - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}
function zoneAt(list, lon, lat) {
  for (const z of list) {
    const b = z.bbox;
    if (lon >= b[0] && lon <= b[2] && lat >= b[1] && lat <= b[3] && inside(lon, lat, z.ring)) return z.id;
  }
  return null;
}
function reject(reason) {
  pool.query(
    "INSERT INTO rejects (received_at, topic, reason, detail, payload) VALUES (now(), $1, $2, '', $3)",
    [msg.topic, reason, Buffer.from(String(msg.payload)).subarray(0, 4096)],
  ).catch((e) => node.error(e));
}
const num = (v) => (v === undefined || v === null ? "\\N" : String(v));
const finite = (...v) => v.every((x) => typeof x === "number" && Number.isFinite(x));

const parts = msg.topic.split("/");
const kind = parts[parts.length - 3], code = parts[parts.length - 2];
const prof = PROFILES[kind];
if (!prof) { reject("bad_topic"); return null; }
let body;
try { body = JSON.parse(msg.payload); } catch (e) { reject("malformed_json"); return null; }
const readings = Array.isArray(body) ? body : [body];

function register() {
  let p = st.pending.get(code);
  if (!p) {
    p = pool.query(
      "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g) VALUES ($1, $2, $3, $4, $5) " +
        "ON CONFLICT (code) DO UPDATE SET code = EXCLUDED.code RETURNING id",
      [code, kind, prof[0], prof[1], prof[2]],
    ).then((r) => { st.vehicles.set(code, r.rows[0].id); return r.rows[0].id; });
    st.pending.set(code, p);
  }
  return p;
}

function emit(vid) {
  const rows = [], alerts = [];
  for (const r of readings) {
    if (!r || typeof r.ts !== "string" || !finite(r.lat, r.lon, r.speed_kmh, r.h2_g)) { reject("schema"); continue; }
    if (Math.abs(r.lat) > 90 || Math.abs(r.lon) > 180 || r.speed_kmh < 0 || r.speed_kmh > 250 || r.h2_g < 0 || r.h2_g > 1.2 * prof[0]) {
      reject("out_of_range"); continue;
    }
    const faults = Array.isArray(r.faults) ? "{" + r.faults.map((f) => '"' + String(f).replace(/["\\]/g, "\\$&") + '"').join(",").replace(/\\/g, "\\\\") + "}" : "\\N";
    const line = [r.ts, num(r.seq), r.lat, r.lon, num(r.odo_km), vid, r.speed_kmh, r.h2_g, num(r.hdop), num(r.heading_deg),
      num(r.h2_pressure_bar), num(r.tank_temp_c), num(r.fc_power_w), num(r.fc_temp_c), num(r.batt_v),
      r.locked === undefined || r.locked === null ? "\\N" : (r.locked ? "t" : "f"), faults].join("\t") + "\n";
    rows.push({ payload: { line, state: [vid, r.ts, r.lat, r.lon, r.speed_kmh, r.h2_g, r.locked ?? null] } });

    const pct = (r.h2_g / prof[0]) * 100;
    const base = { vid, code, ts: r.ts, lat: r.lat, lon: r.lon };
    if (!st.lowH2.get(code) && pct < WARN) {
      st.lowH2.set(code, true);
      alerts.push({ payload: { ...base, action: "open", rule: "low_hydrogen", severity: pct < CRIT ? "critical" : "warning" } });
    } else if (st.lowH2.get(code) && pct > CLEAR) {
      st.lowH2.set(code, false);
      alerts.push({ payload: { ...base, action: "resolve", rule: "low_hydrogen" } });
    }
    if (kind !== "bike") continue;
    const was = st.locked.get(code);
    st.locked.set(code, r.locked);
    if (!(r.locked && was === false)) continue;
    const inParking = zoneAt(zones.parking, r.lon, r.lat), noParking = zoneAt(zones.no_parking, r.lon, r.lat);
    if (inParking === null || noParking !== null) {
      if (!st.parkingOpen.get(code)) {
        st.parkingOpen.set(code, true);
        alerts.push({ payload: { ...base, action: "open", rule: "parking_violation", severity: "warning", zone: noParking } });
      }
    } else if (st.parkingOpen.get(code)) {
      st.parkingOpen.set(code, false);
      alerts.push({ payload: { ...base, action: "resolve", rule: "parking_violation" } });
    }
  }
  node.send([rows, alerts]);
}

const vid = st.vehicles.get(code);
if (vid !== undefined) emit(vid);
else register().then(emit).catch((e) => node.error(e, msg));
return null;
