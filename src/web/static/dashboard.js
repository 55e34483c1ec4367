// hyfleet dashboard: plain JavaScript over the vendored Leaflet, no outside assets but the
// configured map tiles. Reads the operator API with the bearer token kept in localStorage,
// listens to the live stream, and polls as a fallback. Every string comes from i18n.js; rule,
// severity and event names from the server's catalogue in /dashboard/config.json.
"use strict";

const TOKEN_KEY = "hyfleet.token";
const LANG_KEY = "hyfleet.lang";
const POLL_MS = 5000;       // without the live stream
const SLOW_POLL_MS = 20000; // with it: only to repair anything the lossy stream missed
const SVG = "http://www.w3.org/2000/svg";
// Below this zoom, vehicles close together on screen are drawn as one numbered circle: 505
// dots over a town at zoom 12 are a smear, and a smear cannot be clicked.
const CLUSTER_BELOW_ZOOM = 16;
const CLUSTER_CELL_PX = 40;
const CLUSTER_MIN = 3;

const state = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  lang: null,
  config: { tiles: null, time_zone: "Asia/Shanghai", labels: {} },
  vehicles: new Map(), // id -> vehicle as the API gives it
  alerts: new Map(),   // id -> open alert
  zones: null,
  map: null,
  zoneLayer: null,
  vehicleLayer: null,
  fitBounds: null,
  tileErrors: 0,
  tileLoads: 0,
  selected: null,
  stream: null,
  live: false,
  timer: null,
  series: null,
};

const $ = (id) => document.getElementById(id);

// ---- language -----------------------------------------------------------------------------

function pickLanguage() {
  const saved = localStorage.getItem(LANG_KEY);
  if (saved && window.hyfleetI18n[saved]) return saved;
  const wanted = navigator.languages || [navigator.language || "en"];
  return wanted.some((l) => /^zh\b/i.test(l)) ? "zh-CN" : "en";
}

function t(key, vars) {
  const cat = window.hyfleetI18n[state.lang] || window.hyfleetI18n.en;
  let s = cat[key] ?? window.hyfleetI18n.en[key] ?? key;
  for (const [k, v] of Object.entries(vars || {})) s = s.split("{" + k + "}").join(String(v));
  return s;
}

// A rule, severity, event or kind by its human name; a custom rule by its own.
function label(table, name) {
  const l = state.config.labels[state.lang] || {};
  return (l[table] && l[table][name]) || name;
}

function applyLanguage() {
  document.documentElement.lang = state.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of document.querySelectorAll("[data-i18n-aria-label]")) el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  for (const o of $("chart-hours").options) o.textContent = t("chart.hours_n", { n: o.value });
  $("lang").value = state.lang;
  makeFormats();
}

function setLanguage(lang) {
  state.lang = lang;
  localStorage.setItem(LANG_KEY, lang);
  applyLanguage();
  drawAll();
}

// Dates in the operator's time zone, numbers in the reader's language.
let dateFmt, clockFmt;
function makeFormats() {
  const opts = (o) => {
    try { return new Intl.DateTimeFormat(state.lang, Object.assign({ timeZone: state.config.time_zone, hour12: false }, o)); }
    catch (_) { return new Intl.DateTimeFormat(state.lang, Object.assign({ timeZone: "Asia/Shanghai", hour12: false }, o)); }
  };
  dateFmt = opts({ month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  clockFmt = opts({ hour: "2-digit", minute: "2-digit" });
}

function fmt(n, digits) {
  if (n == null || Number.isNaN(Number(n))) return "–";
  return new Intl.NumberFormat(state.lang, { maximumFractionDigits: digits || 0 }).format(Number(n));
}

function timeOf(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : dateFmt.format(d);
}

function setStatus(key, cls, vars) {
  const s = $("status");
  s.dataset.i18n = key;
  s.textContent = t(key, vars);
  s.className = "status " + (cls || "");
}

// ---- API ----------------------------------------------------------------------------------

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
    setStatus(state.token ? "status.token_refused" : "status.token_needed", "error");
    $("token").focus();
    return true;
  }
  return false;
}

// ---- map ----------------------------------------------------------------------------------

// Stored positions are WGS-84; GCJ-02 tiles (AMap, Tencent) need them moved to sit on their
// streets. Tianditu's CGCS2000 is within a metre of WGS-84.
function display(lat, lon) {
  const tiles = state.config.tiles;
  if (tiles && tiles.crs === "gcj02") return window.hyfleetGeo.wgs84ToGcj02(lat, lon);
  return [lat, lon];
}

function initMap() {
  const map = L.map("map", { zoomControl: true, attributionControl: true, preferCanvas: false });
  state.map = map;
  map.attributionControl.setPrefix(false);
  const tiles = state.config.tiles;
  if (tiles) {
    const layer = L.tileLayer(tiles.url, {
      subdomains: tiles.subdomains || "abc",
      maxZoom: tiles.max_zoom || 18,
      attribution: tiles.attribution,
      referrerPolicy: "no-referrer",
    });
    // Offline or blocked: keep drawing the fleet on the plain background, and say why.
    layer.on("tileerror", () => { state.tileErrors++; tilesNote(); });
    layer.on("tileload", () => { state.tileLoads++; tilesNote(); });
    layer.addTo(map);
  }
  map.getContainer().dataset.tiles = tiles ? tiles.crs : "none";
  // Vehicles above zones whatever is redrawn when: a pane of their own.
  map.createPane("vehicles").style.zIndex = 450;
  state.zoneLayer = L.layerGroup().addTo(map);
  state.vehicleLayer = L.layerGroup().addTo(map);
  map.setView(display(37.145, 111.781), 13);
  map.on("zoomend moveend", () => drawVehicles());
  $("map-fit").addEventListener("click", fitMap);
}

function tilesNote() {
  const failing = state.tileErrors > 0 && state.tileLoads === 0;
  $("tiles-note").hidden = !failing;
  $("map").classList.toggle("no-tiles", failing);
}

function fitMap() {
  if (state.fitBounds && state.fitBounds.isValid()) state.map.fitBounds(state.fitBounds, { padding: [8, 8] });
}

// Leaflet writes a tooltip's string as HTML; names come from people: give it text.
function tip(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span;
}

function zoneKinds(p) {
  return Array.isArray(p.kinds) ? p.kinds : null;
}

function drawZones() {
  const layer = state.zoneLayer;
  layer.clearLayers();
  const features = (state.zones && state.zones.features) || [];
  const order = { service_area: 0, slow: 1, parking: 2, no_parking: 3, station: 4 };
  const sorted = features.slice().sort((a, b) =>
    (order[(a.properties || {}).kind] ?? 5) - (order[(b.properties || {}).kind] ?? 5));
  let fit = null, any = null;
  for (const f of sorted) {
    const p = f.properties || {};
    // A zone scoped to some kinds of vehicle says so, and is drawn apart (dashed).
    const kinds = zoneKinds(p);
    const cls = "zone " + p.kind + (kinds ? " scoped " + kinds.map((k) => "only-" + k).join(" ") : "");
    const g = L.geoJSON(f, {
      coordsToLatLng: (c) => L.latLng(display(c[1], c[0])),
      style: () => ({ className: cls }),
      pointToLayer: (_, latlng) => L.circle(latlng, { radius: p.radius_m || 40, className: cls }),
    });
    const name = p.name || p.id;
    const kindText = kinds ? ", " + t("zone.only", { kinds: kinds.map((k) => label("kinds", k)).join("/") }) : "";
    const kindName = window.hyfleetI18n.en["legend." + p.kind] ? t("legend." + p.kind) : p.kind;
    g.bindTooltip(tip(`${name} (${kindName}${kindText})`), { sticky: true });
    g.addTo(layer);
    g.eachLayer((l) => {
      const el = l.getElement && l.getElement();
      if (el) { el.dataset.zone = p.id || ""; el.dataset.kinds = kinds ? kinds.join(" ") : "all"; }
    });
    const b = g.getBounds();
    if (b.isValid()) {
      any = any ? any.extend(b) : L.latLngBounds(b.getSouthWest(), b.getNorthEast());
      // Parking areas are where the bikes are: the town, not the bus line's whole corridor.
      if (p.kind === "parking") fit = fit ? fit.extend(b) : L.latLngBounds(b.getSouthWest(), b.getNorthEast());
    }
  }
  const first = !state.fitBounds;
  state.fitBounds = fit || any;
  if (first) fitMap();
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

function vehicleColour(v) {
  return v.online === false ? "#9e9e9e" : h2Colour(h2Percent(v));
}

// Grid clustering in screen space: cheap enough to redo on every zoom and position burst.
function clusters(list, zoom) {
  if (zoom >= CLUSTER_BELOW_ZOOM) return { singles: list, groups: [] };
  const cells = new Map();
  for (const v of list) {
    const p = state.map.project(v.at, zoom);
    const key = Math.floor(p.x / CLUSTER_CELL_PX) + ":" + Math.floor(p.y / CLUSTER_CELL_PX);
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(v);
  }
  const singles = [], groups = [];
  for (const members of cells.values()) {
    if (members.length < CLUSTER_MIN) singles.push(...members);
    else groups.push(members);
  }
  return { singles, groups };
}

function drawVehicles() {
  if (!state.map) return;
  const layer = state.vehicleLayer;
  layer.clearLayers();
  const list = [];
  for (const v of state.vehicles.values()) {
    if (v.lat == null || v.lon == null) continue;
    list.push({ v, at: L.latLng(display(v.lat, v.lon)) });
  }
  const { singles, groups } = clusters(list, state.map.getZoom());
  for (const { v, at } of singles) {
    const offline = v.online === false;
    const riding = v.locked === false;
    const m = L.circleMarker(at, {
      radius: v.kind === "bus" ? 8 : 5,
      fillColor: vehicleColour(v),
      fillOpacity: 0.95,
      vehicle: v.id,
      pane: "vehicles",
      className: "veh " + (v.kind || "") + (riding ? " riding" : "") + (offline ? " offline" : "") +
        (v.id === state.selected ? " selected" : ""),
    });
    const pct = h2Percent(v);
    m.bindTooltip(tip(t("tip.vehicle", { id: v.id, pct: pct == null ? "?" : fmt(pct), speed: v.speed_kmh == null ? "?" : fmt(v.speed_kmh) }) +
      (offline ? ", " + t("facts.offline") : riding ? ", " + t("facts.riding") : "")));
    m.on("click", () => selectVehicle(v.id));
    m.addTo(layer);
    const el = m.getElement();
    if (el) { el.dataset.vehicle = v.id; el.setAttribute("fill", vehicleColour(v)); }
  }
  for (const members of groups) {
    let lat = 0, lng = 0, worst = 100;
    for (const { v, at } of members) {
      lat += at.lat; lng += at.lng;
      const pct = h2Percent(v);
      if (pct != null && v.online !== false) worst = Math.min(worst, pct);
    }
    const centre = L.latLng(lat / members.length, lng / members.length);
    const n = members.length;
    const size = n < 10 ? 28 : n < 100 ? 34 : 40;
    const icon = L.divIcon({
      className: "cluster" + (worst < 10 ? " crit" : worst < 20 ? " low" : ""),
      html: "<span>" + n + "</span>",
      iconSize: [size, size],
    });
    const m = L.marker(centre, { icon, title: t("map.cluster", { n }) });
    m.on("click", () => state.map.setView(centre, Math.min(state.map.getZoom() + 2, CLUSTER_BELOW_ZOOM)));
    m.addTo(layer);
    const el = m.getElement();
    if (el) el.dataset.count = String(n);
  }
  $("vehicle-count").textContent = t("map.vehicles", { n: fmt(list.length) });
}

// ---- figures and alerts -------------------------------------------------------------------

let lastSummary = null;

// Takes the flat shape (`online`, `open_alerts_by_rule`, `km_today`…) and the nested one
// (`total.online`, `open_alerts: {rule: n}`, `today.km`…); a missing figure shows as a dash.
function drawSummary(s) {
  lastSummary = s;
  if (!s) return;
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
  $("fig-alerts-by-rule").replaceChildren(...Object.entries(byRule).sort((a, b) => b[1] - a[1]).map(([rule, n]) => {
    const li = document.createElement("li");
    li.textContent = `${label("rules", rule)}: ${fmt(n)}`;
    return li;
  }));
  $("fig-km").textContent = fmt(first(s.km_today, today.km), 1);
  const h2 = first(s.h2_used_g_today, today.h2_used_g);
  $("fig-h2").textContent = h2 == null ? "–" : h2 >= 1000 ? fmt(h2 / 1000, 2) + " kg" : fmt(h2, 0) + " g";
}

// The place an alert concerns: the no-parking zone a ride ended in, or the nearest parking
// area and how far it was, or the alert's own zone.
function zoneText(a) {
  const d = a.details || {};
  if (d.no_parking_zone) return t("alerts.in_no_parking", { zone: d.no_parking_zone_name || d.no_parking_zone });
  if (d.nearest_zone) {
    const zone = d.nearest_zone_name || d.nearest_zone;
    return d.distance_m == null ? zone : t("alerts.nearest", { zone, m: fmt(d.distance_m) });
  }
  return a.zone || "";
}

function drawAlerts() {
  const rows = Array.from(state.alerts.values())
    .sort((a, b) => (b.opened_at || "").localeCompare(a.opened_at || ""));
  const tbody = $("alerts").tBodies[0];
  tbody.replaceChildren(...rows.map((a) => {
    const tr = document.createElement("tr");
    tr.className = a.severity || "";
    tr.dataset.alert = a.id;
    const cells = [timeOf(a.opened_at), a.vehicle_id, label("rules", a.rule), label("severities", a.severity), zoneText(a)];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 1) { td.className = "vehicle"; td.addEventListener("click", () => selectVehicle(a.vehicle_id, true)); }
      if (i === 2) td.title = a.rule;
      if (i === 4) td.className = "zone-cell";
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "ack";
    b.textContent = t("alerts.ack");
    b.addEventListener("click", () => acknowledge(a.id, b));
    td.appendChild(b);
    tr.appendChild(td);
    return tr;
  }));
  $("alert-count").textContent = rows.length ? fmt(rows.length) : "";
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
    button.textContent = t("alerts.ack");
    if (!authFailed(e)) setStatus("status.ack_failed", "error", { error: e.message });
  }
}

// ---- vehicle chart ------------------------------------------------------------------------

function pick(o, names) {
  for (const n of names) if (o[n] != null) return o[n];
  return null;
}

async function loadChart() {
  const id = state.selected;
  if (!id) { $("chart").replaceChildren(); return; }
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
  state.series = points.map((p) => ({
    t: new Date(pick(p, ["ts", "bucket", "t", "time"])).getTime(),
    h2: pick(p, ["h2_g", "h2_avg", "h2_g_avg", "h2_min"]),
    speed: pick(p, ["speed_kmh", "speed_avg", "speed_kmh_avg", "speed_max"]),
  })).filter((p) => !Number.isNaN(p.t)).sort((a, b) => a.t - b.t);
  drawChart();
}

// Nice steps for a time axis, in minutes.
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360];

// The time axis spans the readings that exist (a vehicle heard for a minute fills the chart
// with that minute), not the window asked for.
function drawChart() {
  const svg = $("chart");
  const series = state.series || [];
  const W = svg.clientWidth || 600, H = svg.clientHeight || 240;
  const m = { l: 42, r: 42, t: 10, b: 22 };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const el = (name, attrs, text) => {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  };
  svg.dataset.points = String(series.length);
  if (!series.length) {
    svg.replaceChildren(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, t("chart.none")));
    $("chart-span").textContent = "";
    delete svg.dataset.from; delete svg.dataset.to;
    return;
  }
  let t0 = series[0].t, t1 = series[series.length - 1].t;
  if (t1 - t0 < 60000) { t0 -= 30000; t1 += 30000; } // one bucket still gets a width
  svg.dataset.from = String(t0);
  svg.dataset.to = String(t1);
  const v = state.vehicles.get(state.selected) || {};
  const h2Max = Math.max(v.tank_g || 0, ...series.map((p) => p.h2 || 0), 1);
  const spMax = Math.max(10, ...series.map((p) => p.speed || 0)) * 1.1;
  const x = (tm) => m.l + ((tm - t0) / (t1 - t0)) * (W - m.l - m.r);
  const yH = (g) => H - m.b - (g / h2Max) * (H - m.t - m.b);
  const yS = (s) => H - m.b - (s / spMax) * (H - m.t - m.b);
  const out = [];
  for (let i = 0; i <= 4; i++) {
    const y = m.t + (i * (H - m.t - m.b)) / 4;
    out.push(el("line", { class: "grid", x1: m.l, x2: W - m.r, y1: y, y2: y }));
    out.push(el("text", { x: m.l - 4, y: y + 3, "text-anchor": "end" }, fmt(h2Max * (1 - i / 4), h2Max < 100 ? 1 : 0)));
    out.push(el("text", { x: W - m.r + 4, y: y + 3 }, fmt(spMax * (1 - i / 4))));
  }
  const spanMin = (t1 - t0) / 60000;
  const step = (TIME_STEPS.find((s) => spanMin / s <= 7) || 360) * 60000;
  for (let tick = Math.ceil(t0 / step) * step; tick <= t1; tick += step) {
    out.push(el("line", { class: "grid", x1: x(tick), x2: x(tick), y1: m.t, y2: H - m.b }));
    out.push(el("text", { x: x(tick), y: H - 6, "text-anchor": "middle" }, clockFmt.format(new Date(tick))));
  }
  out.push(el("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
  // A gap of more than five minutes is not drawn across: the vehicle was silent.
  const line = (key, y) => {
    let d = "", prev = null;
    for (const p of series) {
      if (p[key] == null) continue;
      d += (prev == null || p.t - prev > 300000 ? "M" : "L") + x(p.t).toFixed(1) + "," + y(p[key]).toFixed(1);
      prev = p.t;
    }
    return d || "M0,0";
  };
  out.push(el("path", { class: "speed", d: line("speed", yS) }));
  out.push(el("path", { class: "h2", d: line("h2", yH) }));
  if (series.length === 1) {
    const p = series[0];
    if (p.h2 != null) out.push(el("circle", { class: "h2 pt", cx: x(p.t), cy: yH(p.h2), r: 3 }));
    if (p.speed != null) out.push(el("circle", { class: "speed pt", cx: x(p.t), cy: yS(p.speed), r: 3 }));
  }
  svg.replaceChildren(...out);
  $("chart-span").textContent = t("chart.span", { from: timeOf(new Date(series[0].t)), to: timeOf(new Date(series[series.length - 1].t)) });
}

function drawFacts() {
  const v = state.vehicles.get(state.selected);
  if (!v) { $("vehicle-facts").textContent = state.selected ? t("facts.unknown", { id: state.selected }) : t("facts.pick"); return; }
  const pct = h2Percent(v);
  const parts = [
    `${v.id} (${label("kinds", v.kind)})`,
    v.online === false ? t("facts.offline") : t("facts.online"),
    v.locked === false ? t("facts.riding") : t("facts.parked"),
    t("facts.h2", { g: fmt(v.h2_g, 1), pct: pct == null ? "?" : fmt(pct) }),
    t("facts.range", { km: fmt(v.range_km, 1) }),
    t("facts.last_seen", { time: timeOf(v.last_seen || v.last_ts) }),
  ];
  if (v.completeness_24h != null) parts.push(t("facts.completeness", { pct: fmt(v.completeness_24h, 1) }));
  // Readings without a usable fix leave the position where the last good one put it.
  if (v.last_fix && v.last_ts && v.last_fix < v.last_ts) parts.push(t("facts.no_fix", { time: timeOf(v.last_fix) }));
  $("vehicle-facts").textContent = parts.join(" · ");
}

function selectVehicle(id, pan) {
  state.selected = id;
  $("vehicle-pick").value = id;
  history.replaceState(null, "", "#vehicle=" + encodeURIComponent(id));
  state.series = null;
  drawFacts();
  drawVehicles();
  const v = state.vehicles.get(id);
  if (pan && v && v.lat != null && state.map) state.map.setView(display(v.lat, v.lon), Math.max(state.map.getZoom(), CLUSTER_BELOW_ZOOM));
  loadChart().catch((e) => authFailed(e));
}

function drawAll() {
  drawSummary(lastSummary);
  drawAlerts();
  drawVehicles();
  drawFacts();
  if (state.series) drawChart();
  if (state.zones) drawZones();
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
    if (failed.length) setStatus("status.partly", "error", { error: failed[0].message });
    else setStatus(state.live ? "status.live" : "status.polling", state.live ? "live" : "polling");
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
  es.addEventListener("open", () => { state.live = true; setStatus("status.live", "live"); });
  es.addEventListener("position", (m) => { try { onPosition(JSON.parse(m.data)); dirty = true; } catch (_) { /* skip */ } });
  es.addEventListener("alert", (m) => { try { onAlert(JSON.parse(m.data)); } catch (_) { /* skip */ } });
  es.addEventListener("error", () => {
    // EventSource retries by itself; until it is back, polling carries the page.
    state.live = false;
    if (es.readyState === EventSource.CLOSED) { clearInterval(redraw); state.stream = null; setTimeout(connectStream, 10000); }
    setStatus("status.polling", "polling");
  });
}

// ---- start --------------------------------------------------------------------------------

async function loadConfig() {
  try {
    const r = await fetch("/dashboard/config.json");
    if (r.ok) state.config = Object.assign(state.config, await r.json());
  } catch (_) { /* the defaults draw the fleet without tiles */ }
}

async function start() {
  state.lang = pickLanguage();
  await loadConfig();
  applyLanguage();
  initMap();
  // For tests and the curious: the map and the conversion the page uses.
  window.hyfleetMap = {
    map: state.map,
    display,
    // Where a vehicle's dot stands, as [lat, lng] of the map, or null when it is clustered.
    dotOf(id) {
      let at = null;
      state.vehicleLayer.eachLayer((l) => { if (l.options.vehicle === id) at = [l.getLatLng().lat, l.getLatLng().lng]; });
      return at;
    },
  };
  $("lang").addEventListener("change", () => setLanguage($("lang").value));
  $("token").value = state.token;
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    setStatus("status.connecting", "");
    loadZones().catch(authFailed);
    if (state.selected) loadChart().catch(authFailed);
    refresh();
    connectStream();
  });
  $("vehicle-pick").addEventListener("change", () => {
    const id = $("vehicle-pick").value.trim();
    if (id) selectVehicle(id, true);
  });
  $("chart-hours").addEventListener("change", () => loadChart().catch(authFailed));
  window.addEventListener("resize", () => { if (state.series) drawChart(); });
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
