// Node-RED settings of the benchmark peer. The function nodes reach pg, pg-copy-streams, one
// connection pool and the zones through the global context, the usual way to give function
// nodes libraries without installing them at run time.
const fs = require("fs");
const pg = require("pg");
const { from: copyFrom } = require("pg-copy-streams");

function zones(path) {
  const out = { parking: [], no_parking: [] };
  for (const f of JSON.parse(fs.readFileSync(path, "utf8")).features) {
    const kind = f.properties.kind;
    if (!(kind in out) || f.geometry.type !== "Polygon") continue;
    const ring = f.geometry.coordinates[0];
    const xs = ring.map((p) => p[0]);
    const ys = ring.map((p) => p[1]);
    out[kind].push({
      id: f.properties.id,
      bbox: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)],
      ring,
    });
  }
  return out;
}

module.exports = {
  flowFile: "flows.json",
  credentialSecret: false,
  logging: { console: { level: "warn", metrics: false, audit: false } },
  functionGlobalContext: {
    copyFrom,
    fetch: globalThis.fetch,
    pool: new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 }),
    zones: zones(process.env.ZONES),
    // Per-vehicle memory of the checks, shared by reference between the function nodes.
    state: { vehicles: new Map(), pending: new Map(), lowH2: new Map(), locked: new Map(), parkingOpen: new Map() },
  },
};
