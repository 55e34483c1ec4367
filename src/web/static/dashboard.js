// hyfleet dashboard: plain JavaScript, no external assets. Reads the operator API with the
// bearer token kept in localStorage, listens to the live stream, and polls as a fallback.
"use strict";

const TOKEN_KEY = "hyfleet.token";
const POLL_MS = 5000;       // without the live stream
const SLOW_POLL_MS = 20000; // with it: only to repair anything the lossy stream missed
const SVG = "http://www.w3.org/2000/svg";

const state = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  vehicles: new Map(), // id -> vehicle as the API gives it
  alerts: new Map(),   // id -> open alert
  zones: null,
  proj: null,
  view: null,          // current viewBox [x, y, w, h]
  selected: null,
  stream: null,
  live: false,
  timer: null,
  chartTimer: null,
};

const $ = (id) => document.getElementById(id);

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (cls || "");
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (state.token) opts.headers["Authorization"] = "Bearer " + state.token;
  const r = await fetch(path, opts);
  if (!r.ok) {
    let detail = r.statusText;
    try { const p = await r.json(); detail = p.detail || p.title || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, detail);
  }
  const type = r.headers.get("content-type") || "";
  return type.includes("json") ? r.json() : null;
}

function authFailed(e) {
  if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
    setStatus(state.token ? "token refused" : "token needed", "error");
    $("token").focus();
    return true;
  }
  return false;
}

// ---- map ----------------------------------------------------------------------------------

function ringsOf(geometry) {
  if (!geometry) return [];
  if (geometry.type === "Polygon") return [geometry.coordinates];
  if (geometry.type === "MultiPolygon") return geometry.coordinates;
  return [];
}

// Equirectangular projection fitted to the service area: x grows east, y grows south, and a
// degree of longitude is shortened by cos(latitude) so that shapes keep their proportions.
function makeProjection(features) {
  const fit = features.filter((f) => f.properties && f.properties.kind === "service_area");
  const use = fit.length ? fit : features;
  let minLon = Infinity, maxLon = -Infinity, minLat = Infinity, maxLat = -Infinity;
  const visit = (lon, lat) => {
    minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon);
    minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
  };
  for (const f of use) {
    const g = f.geometry || {};
    if (g.type === "Point") visit(g.coordinates[0], g.coordinates[1]);
    for (const poly of ringsOf(g)) for (const ring of poly) for (const p of ring) visit(p[0], p[1]);
  }
  if (!isFinite(minLon)) { minLon = 111.74; maxLon = 111.82; minLat = 37.11; maxLat = 37.18; }
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const scale = 100000; // map units per degree of latitude: roughly metres
  const project = (lon, lat) => [(lon - minLon) * k * scale, (maxLat - lat) * scale];
  const [w, h] = project(maxLon, minLat);
  const pad = Math.max(w, h) * 0.03;
  return { project, box: [-pad, -pad, w + 2 * pad, h + 2 * pad], unit: Math.max(w, h) / 700 };
}

function setView(v) {
  state.view = v;
  $("map").setAttribute("viewBox", v.join(" "));
  drawVehicles();
}

function drawZones() {
  const g = $("zones");
  g.replaceChildren();
  const features = (state.zones && state.zones.features) || [];
  state.proj = makeProjection(features);
  const { project } = state.proj;
  const order = { service_area: 0, slow: 1, parking: 2, no_parking: 3, station: 4 };
  const sorted = features.slice().sort((a, b) =>
    (order[(a.properties || {}).kind] ?? 5) - (order[(b.properties || {}).kind] ?? 5));
  for (const f of sorted) {
    const p = f.properties || {};
    const title = document.createElementNS(SVG, "title");
    // A zone scoped to some kinds of vehicle says so, and is drawn apart (dashed).
    const kinds = Array.isArray(p.kinds) ? p.kinds : null;
    title.textContent = `${p.name || p.id} (${p.kind}${kinds ? ", " + kinds.join(" and ") + " only" : ""})`;
    let el;
    if (f.geometry && f.geometry.type === "Point") {
      const [x, y] = project(f.geometry.coordinates[0], f.geometry.coordinates[1]);
      el = document.createElementNS(SVG, "circle");
      el.setAttribute("cx", x); el.setAttribute("cy", y);
      el.setAttribute("r", Math.max(p.radius_m || 40, state.proj.unit * 4));
    } else {
      let d = "";
      for (const poly of ringsOf(f.geometry)) for (const ring of poly) {
        d += ring.map((pt, i) => (i ? "L" : "M") + project(pt[0], pt[1]).map((n) => n.toFixed(1)).join(",")).join("") + "Z";
      }
      el = document.createElementNS(SVG, "path");
      el.setAttribute("d", d);
      el.setAttribute("fill-rule", "evenodd");
    }
    el.setAttribute("class", "zone " + p.kind + (kinds ? " scoped " + kinds.map((k) => "only-" + k).join(" ") : ""));
    el.dataset.zone = p.id || "";
    el.dataset.kinds = kinds ? kinds.join(" ") : "all";
    el.appendChild(title);
    g.appendChild(el);
  }
  setView(state.proj.box.slice());
}

function h2Colour(pct) {
  if (pct == null) return "#cccccc";
  if (pct < 10) return "#a50026";
  if (pct < 20) return "#f46d43";
  if (pct < 50) return "#fee08b";
  return "#1a9850";
}

function h2Percent(v) {
  if (v.h2_percent != null) return v.h2_percent;
  if (v.h2_g != null && v.tank_g) return (100 * v.h2_g) / v.tank_g;
  return null;
}

function drawVehicles() {
  if (!state.proj) return;
  const g = $("vehicles");
  const { project } = state.proj;
  // Dots keep their size on screen whatever the zoom.
  const r = (state.view ? state.view[2] : state.proj.box[2]) / 260;
  const frag = document.createDocumentFragment();
  let shown = 0;
  for (const v of state.vehicles.values()) {
    if (v.lat == null || v.lon == null) continue;
    const [x, y] = project(v.lon, v.lat);
    const c = document.createElementNS(SVG, "circle");
    c.setAttribute("cx", x.toFixed(1)); c.setAttribute("cy", y.toFixed(1));
    c.setAttribute("r", (v.kind === "bus" ? 1.8 : 1) * r);
    const offline = v.online === false;
    const riding = v.locked === false;
    c.setAttribute("fill", offline ? "#9e9e9e" : h2Colour(h2Percent(v)));
    c.setAttribute("class", "veh " + (v.kind || "") + (riding ? " riding" : "") +
      (offline ? " offline" : "") + (v.id === state.selected ? " selected" : ""));
    c.dataset.vehicle = v.id;
    const t = document.createElementNS(SVG, "title");
    const pct = h2Percent(v);
    t.textContent = `${v.id}: ${pct == null ? "?" : pct.toFixed(0)} % H₂, ` +
      `${v.speed_kmh == null ? "?" : v.speed_kmh.toFixed(0)} km/h` +
      (offline ? ", offline" : riding ? ", riding" : "");
    c.appendChild(t);
    frag.appendChild(c);
    shown++;
  }
  g.replaceChildren(frag);
  $("vehicle-count").textContent = `${shown} vehicles`;
}

function enableMapGestures() {
  const svg = $("map");
  const toMap = (ev) => {
    const rect = svg.getBoundingClientRect();
    const [x, y, w, h] = state.view;
    // preserveAspectRatio "xMidYMid meet": one scale, centred.
    const s = Math.max(w / rect.width, h / rect.height);
    const ox = x - (rect.width * s - w) / 2, oy = y - (rect.height * s - h) / 2;
    return [ox + (ev.clientX - rect.left) * s, oy + (ev.clientY - rect.top) * s, s];
  };
  svg.addEventListener("wheel", (ev) => {
    if (!state.view) return;
    ev.preventDefault();
    const [mx, my] = toMap(ev);
    const f = ev.deltaY < 0 ? 0.8 : 1.25;
    const [x, y, w, h] = state.view;
    setView([mx - (mx - x) * f, my - (my - y) * f, w * f, h * f]);
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    if (ev.target.dataset && ev.target.dataset.vehicle) return;
    drag = { x: ev.clientX, y: ev.clientY, view: state.view.slice(), s: toMap(ev)[2] };
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const [x, y, w, h] = drag.view;
    state.view = [x - (ev.clientX - drag.x) * drag.s, y - (ev.clientY - drag.y) * drag.s, w, h];
    svg.setAttribute("viewBox", state.view.join(" "));
  });
  svg.addEventListener("pointerup", () => { drag = null; });
  svg.addEventListener("click", (ev) => {
    const id = ev.target.dataset && ev.target.dataset.vehicle;
    if (id) selectVehicle(id);
  });
  $("map-fit").addEventListener("click", () => state.proj && setView(state.proj.box.slice()));
}

// ---- figures and alerts -------------------------------------------------------------------

function fmt(n, digits) {
  return n == null || Number.isNaN(Number(n)) ? "–" : Number(n).toLocaleString("en", { maximumFractionDigits: digits || 0 });
}

// Takes the flat shape (`online`, `open_alerts_by_rule`, `km_today`…) and the nested one
// (`total.online`, `open_alerts: {rule: n}`, `today.km`…); a missing figure shows as a dash.
function drawSummary(s) {
  const total = s.total || {};
  const today = s.today || {};
  const first = (...xs) => xs.find((x) => x != null);
  $("fig-online").textContent = fmt(first(s.online, total.online));
  $("fig-riding").textContent = fmt(first(s.riding, total.riding));
  $("fig-low").textContent = fmt(first(s.low_hydrogen, total.low_hydrogen));
  const byRule = s.open_alerts_by_rule ||
    (s.open_alerts && typeof s.open_alerts === "object" ? s.open_alerts : {});
  const sum = Object.values(byRule).reduce((a, b) => a + b, 0);
  $("fig-alerts").textContent = fmt(typeof s.open_alerts === "number" ? s.open_alerts : sum);
  const ul = $("fig-alerts-by-rule");
  ul.replaceChildren(...Object.entries(byRule).sort((a, b) => b[1] - a[1]).map(([rule, n]) => {
    const li = document.createElement("li");
    li.textContent = `${rule}: ${n}`;
    return li;
  }));
  $("fig-km").textContent = fmt(first(s.km_today, today.km), 1);
  const h2 = first(s.h2_used_g_today, today.h2_used_g);
  $("fig-h2").textContent = h2 == null ? "–" : h2 >= 1000 ? fmt(h2 / 1000, 2) + " kg" : fmt(h2, 0) + " g";
}

function timeOf(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString("en-GB", { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function drawAlerts() {
  const rows = Array.from(state.alerts.values())
    .sort((a, b) => (b.opened_at || "").localeCompare(a.opened_at || ""));
  const tbody = $("alerts").tBodies[0];
  tbody.replaceChildren(...rows.map((a) => {
    const tr = document.createElement("tr");
    tr.className = a.severity || "";
    tr.dataset.alert = a.id;
    const cells = [timeOf(a.opened_at), a.vehicle_id, a.rule, a.severity, a.zone || ""];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 1) { td.className = "vehicle"; td.addEventListener("click", () => selectVehicle(a.vehicle_id)); }
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "ack";
    b.textContent = "Acknowledge";
    b.addEventListener("click", () => acknowledge(a.id, b));
    td.appendChild(b);
    tr.appendChild(td);
    return tr;
  }));
  $("alert-count").textContent = rows.length ? `${rows.length}` : "";
  $("alerts-empty").hidden = rows.length > 0;
}

async function acknowledge(id, button) {
  button.disabled = true;
  button.textContent = "…";
  try {
    await api(`/api/v1/alerts/${encodeURIComponent(id)}/ack`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    state.alerts.delete(String(id));
    drawAlerts();
    loadSummary().catch(() => {});
  } catch (e) {
    button.disabled = false;
    button.textContent = "Acknowledge";
    if (!authFailed(e)) setStatus(`acknowledge failed: ${e.message}`, "error");
  }
}

// ---- vehicle chart ------------------------------------------------------------------------

function pick(o, names) {
  for (const n of names) if (o[n] != null) return o[n];
  return null;
}

async function loadChart() {
  const id = state.selected;
  const svg = $("chart");
  if (!id) { svg.replaceChildren(); return; }
  const hours = Number($("chart-hours").value);
  const to = new Date();
  const from = new Date(to.getTime() - hours * 3600 * 1000);
  // One-minute buckets (read from the rollups); a bucketed page continues from its `next`.
  const url = (start) => `/api/v1/vehicles/${encodeURIComponent(id)}/telemetry?from=${encodeURIComponent(start)}&to=${encodeURIComponent(to.toISOString())}&every=1m&limit=1000`;
  let points = [];
  let path = url(from.toISOString());
  for (let page = 0; path && page < 20; page++) {
    const r = await api(path);
    points = points.concat(r.items || []);
    path = r.next ? url(r.next) : null;
  }
  if (state.selected !== id) return;
  const series = points.map((p) => ({
    t: new Date(pick(p, ["ts", "bucket", "t", "time"])).getTime(),
    h2: pick(p, ["h2_g", "h2_avg", "h2_g_avg", "h2_min"]),
    speed: pick(p, ["speed_kmh", "speed_avg", "speed_kmh_avg", "speed_max"]),
  })).filter((p) => !Number.isNaN(p.t)).sort((a, b) => a.t - b.t);
  drawChart(series, from.getTime(), to.getTime());
}

function drawChart(series, t0, t1) {
  const svg = $("chart");
  const W = svg.clientWidth || 600, H = svg.clientHeight || 240;
  const m = { l: 42, r: 42, t: 10, b: 22 };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const el = (name, attrs, text) => {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  };
  const v = state.vehicles.get(state.selected) || {};
  const h2Max = Math.max(v.tank_g || 0, ...series.map((p) => p.h2 || 0), 1);
  const spMax = Math.max(10, ...series.map((p) => p.speed || 0)) * 1.1;
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  const yH = (g) => H - m.b - (g / h2Max) * (H - m.t - m.b);
  const yS = (s) => H - m.b - (s / spMax) * (H - m.t - m.b);
  const out = [];
  for (let i = 0; i <= 4; i++) {
    const y = m.t + (i * (H - m.t - m.b)) / 4;
    out.push(el("line", { class: "grid", x1: m.l, x2: W - m.r, y1: y, y2: y }));
    out.push(el("text", { x: m.l - 4, y: y + 3, "text-anchor": "end" }, fmt(h2Max * (1 - i / 4), h2Max < 100 ? 1 : 0)));
    out.push(el("text", { x: W - m.r + 4, y: y + 3 }, fmt(spMax * (1 - i / 4))));
  }
  for (let i = 0; i <= 6; i++) {
    const t = t0 + (i * (t1 - t0)) / 6;
    const label = new Date(t).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
    out.push(el("text", { x: x(t), y: H - 6, "text-anchor": "middle" }, label));
  }
  out.push(el("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
  const line = (key, y) => series.filter((p) => p[key] != null)
    .map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + "," + y(p[key]).toFixed(1)).join("");
  out.push(el("path", { class: "speed", d: line("speed", yS) || "M0,0" }));
  out.push(el("path", { class: "h2", d: line("h2", yH) || "M0,0" }));
  if (!series.length) out.push(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no readings in this period"));
  svg.replaceChildren(...out);
  svg.dataset.points = String(series.length);
}

function drawFacts() {
  const v = state.vehicles.get(state.selected);
  if (!v) { $("vehicle-facts").textContent = state.selected ? `${state.selected}: unknown` : "Pick a vehicle on the map."; return; }
  const pct = h2Percent(v);
  $("vehicle-facts").textContent = `${v.id} (${v.kind}) · ${v.online === false ? "offline" : "online"} · ` +
    `${v.locked === false ? "riding" : "parked"} · H₂ ${fmt(v.h2_g, 1)} g (${pct == null ? "?" : pct.toFixed(0)} %) · ` +
    `range ${fmt(v.range_km, 1)} km · last seen ${timeOf(v.last_seen || v.last_ts)}` +
    // Readings without a usable fix leave the position where the last good one put it.
    (v.last_fix && v.last_ts && v.last_fix < v.last_ts ? ` · position from ${timeOf(v.last_fix)} (no fix since)` : "") +
    (v.completeness_24h == null ? "" : ` · telemetry ${v.completeness_24h.toFixed(1)} % received (24 h)`);
}

function selectVehicle(id) {
  state.selected = id;
  $("vehicle-pick").value = id;
  history.replaceState(null, "", "#vehicle=" + encodeURIComponent(id));
  drawFacts();
  drawVehicles();
  loadChart().catch((e) => authFailed(e));
}

// ---- loading ------------------------------------------------------------------------------

async function loadZones() {
  state.zones = await api("/api/v1/zones");
  drawZones();
}

async function loadVehicles() {
  const all = new Map();
  let after = null;
  for (let page = 0; page < 20; page++) {
    const r = await api("/api/v1/vehicles?limit=1000" + (after ? "&after=" + encodeURIComponent(after) : ""));
    for (const v of r.items || []) all.set(v.id, v);
    after = r.next;
    if (!after) break;
  }
  state.vehicles = all;
  const list = $("vehicle-ids");
  list.replaceChildren(...Array.from(all.keys()).map((id) => { const o = document.createElement("option"); o.value = id; return o; }));
  if (!state.selected && all.size) {
    // Start on a vehicle that has something to show: the most recently heard.
    const newest = Array.from(all.values()).filter((v) => v.last_ts).sort((a, b) => b.last_ts.localeCompare(a.last_ts))[0];
    if (newest) selectVehicle(newest.id);
  }
  drawVehicles();
  drawFacts();
}

async function loadAlerts() {
  const open = new Map();
  let after = null;
  for (let page = 0; page < 10; page++) {
    const r = await api("/api/v1/alerts?state=open&limit=500" + (after ? "&after=" + encodeURIComponent(after) : ""));
    for (const a of r.items || []) open.set(String(a.id), a);
    after = r.next;
    if (!after) break;
  }
  state.alerts = open;
  drawAlerts();
}

async function loadSummary() {
  drawSummary(await api("/api/v1/fleet/summary"));
}

async function refresh() {
  clearTimeout(state.timer);
  try {
    const results = await Promise.allSettled([loadVehicles(), loadAlerts(), loadSummary()]);
    const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    if (failed.some(authFailed)) return;
    if (failed.length) setStatus(`partly loaded: ${failed[0].message}`, "error");
    else setStatus(state.live ? "live" : "polling", state.live ? "live" : "polling");
  } finally {
    state.timer = setTimeout(refresh, state.live ? SLOW_POLL_MS : POLL_MS);
  }
}

// ---- live stream --------------------------------------------------------------------------

function onPosition(p) {
  const v = state.vehicles.get(p.vehicle_id) || { id: p.vehicle_id, kind: p.kind };
  Object.assign(v, { lat: p.lat, lon: p.lon, speed_kmh: p.speed_kmh, h2_g: p.h2_g, last_ts: p.ts, online: true });
  if (p.locked != null) v.locked = p.locked;
  if (v.tank_g) v.h2_percent = (100 * p.h2_g) / v.tank_g;
  state.vehicles.set(v.id, v);
}

function onAlert(ev) {
  const a = ev.alert || ev;
  if (a.state === "open") state.alerts.set(String(a.id), a);
  else state.alerts.delete(String(a.id));
  drawAlerts();
}

function connectStream() {
  if (state.stream) state.stream.close();
  if (!window.EventSource) return;
  const url = "/api/v1/stream" + (state.token ? "?access_token=" + encodeURIComponent(state.token) : "");
  const es = new EventSource(url);
  state.stream = es;
  let dirty = false;
  // Positions arrive in bursts: redraw at most a few times a second.
  const redraw = setInterval(() => { if (dirty) { dirty = false; drawVehicles(); drawFacts(); } }, 500);
  es.addEventListener("open", () => { state.live = true; setStatus("live", "live"); });
  es.addEventListener("position", (m) => { try { onPosition(JSON.parse(m.data)); dirty = true; } catch (_) { /* skip */ } });
  es.addEventListener("alert", (m) => { try { onAlert(JSON.parse(m.data)); } catch (_) { /* skip */ } });
  es.addEventListener("error", () => {
    // EventSource retries by itself; until it is back, polling carries the page.
    state.live = false;
    if (es.readyState === EventSource.CLOSED) { clearInterval(redraw); state.stream = null; setTimeout(connectStream, 10000); }
    setStatus("polling", "polling");
  });
}

// ---- start --------------------------------------------------------------------------------

function start() {
  $("token").value = state.token;
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    setStatus("connecting", "");
    loadZones().catch(authFailed);
    if (state.selected) loadChart().catch(authFailed);
    refresh();
    connectStream();
  });
  $("vehicle-pick").addEventListener("change", () => {
    const id = $("vehicle-pick").value.trim();
    if (id) selectVehicle(id);
  });
  $("chart-hours").addEventListener("change", () => loadChart().catch(authFailed));
  enableMapGestures();
  const m = /vehicle=([^&]+)/.exec(location.hash);
  if (m) selectVehicle(decodeURIComponent(m[1]));
  setInterval(() => loadChart().catch(() => {}), 60000);
  setInterval(() => loadZones().catch(() => {}), 300000);
  loadZones().catch(authFailed);
  refresh();
  connectStream();
  if (!m) drawFacts();
}

start();
