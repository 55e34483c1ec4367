//! One fuel-cell bus on the Xiaoyi–Jiexiu line: back and forth between the terminals, calling
//! at the stops, refuelling at the Xiaoyi end when low. Its figures are the assumed bus profile.

use serde_json::json;

use super::bike::{Ctx, Tick};
use super::geom::LatLon;
use super::prng::Rng;
use super::wire::{Telemetry, round, ts};

/// Within this distance of either terminal the bus is in town and keeps to 40 km/h.
const URBAN_M: f64 = 2_500.0;
const REFUEL_BELOW_SHARE: f64 = 0.35;

/// The route as a polyline measured from the Xiaoyi terminal.
pub struct Line {
    pts: Vec<LatLon>,
    cum: Vec<f64>,
    /// Stop positions along the line, sorted, terminals included.
    pub stops: Vec<f64>,
}

impl Line {
    pub fn new(pts: &[LatLon], stops: &[LatLon]) -> Self {
        let mut cum = vec![0.0];
        for w in pts.windows(2) {
            cum.push(cum.last().unwrap() + w[0].distance_m(w[1]));
        }
        let len = *cum.last().unwrap();
        let mut s: Vec<f64> = stops
            .iter()
            .map(|st| {
                let i = (0..pts.len())
                    .min_by(|&a, &b| pts[a].distance_m(*st).total_cmp(&pts[b].distance_m(*st)))
                    .unwrap_or(0);
                cum[i]
            })
            .chain([0.0, len])
            .collect();
        s.sort_by(f64::total_cmp);
        s.dedup_by(|a, b| (*a - *b).abs() < 1.0);
        Line {
            pts: pts.to_vec(),
            cum,
            stops: s,
        }
    }

    pub fn len(&self) -> f64 {
        *self.cum.last().unwrap()
    }

    /// Position and bearing (towards Jiexiu) at `s` metres along the line.
    pub fn at(&self, s: f64) -> (LatLon, f64) {
        let s = s.clamp(0.0, self.len());
        let i = self
            .cum
            .partition_point(|&c| c <= s)
            .clamp(1, self.pts.len() - 1);
        let (a, b) = (self.pts[i - 1], self.pts[i]);
        (a.toward(b, s - self.cum[i - 1]), a.bearing_deg(b))
    }
}

enum Mode {
    Driving {
        cruise: f64,
    },
    Dwell {
        until: i64,
    },
    Refuelling {
        until: i64,
    },
    /// Out of service with the stack off, losing hydrogen (a scripted leak).
    Parked {
        leak_g_per_s: f64,
    },
}

pub struct Bus {
    pub id: String,
    pub s: f64,
    /// +1 towards Jiexiu, -1 towards Xiaoyi.
    dir: f64,
    speed: f64,
    pub h2: f64,
    pub odo: f64,
    tank: f64,
    cap: f64,
    burn: f64,
    fc_temp: f64,
    mode: Mode,
}

impl Bus {
    pub fn new(
        id: String,
        s: f64,
        towards_jiexiu: bool,
        h2: Option<f64>,
        ctx: &Ctx,
        rng: &mut Rng,
    ) -> Self {
        let p = &ctx.map.profiles.bus;
        let tank = f64::from(p.tank_g);
        Bus {
            id,
            s,
            dir: if towards_jiexiu { 1.0 } else { -1.0 },
            speed: 0.0,
            h2: h2.unwrap_or_else(|| rng.range(0.45 * tank, 0.95 * tank)),
            odo: rng.range(20_000.0, 60_000.0),
            tank,
            cap: f64::from(p.speed_cap_kmh),
            burn: f64::from(p.tank_g / p.range_km) * rng.range(0.97, 1.03),
            fc_temp: 55.0,
            mode: Mode::Dwell { until: 0 },
        }
    }

    /// Holds the bus where it is until `until` (used to stagger departures).
    pub fn dwell_until(&mut self, until: i64) {
        self.mode = Mode::Dwell { until };
    }

    /// Parks the bus for good with its stack off, losing `leak_g_per_s`.
    pub fn park_leaking(&mut self, leak_g_per_s: f64) {
        self.mode = Mode::Parked { leak_g_per_s };
    }

    pub fn tick(&mut self, now: i64, dt_s: f64, line: &Line, ctx: &Ctx, rng: &mut Rng) -> Tick {
        let mut events = vec![];
        // Stack and compressor draw while standing: about 0.02 g/s; a parked bus draws none.
        self.h2 -= match self.mode {
            Mode::Parked { leak_g_per_s } => leak_g_per_s * dt_s,
            _ => 0.02 * dt_s,
        };
        match self.mode {
            Mode::Driving { cruise } => self.drive(now, dt_s, cruise, line, ctx, rng),
            Mode::Dwell { until } if now >= until => {
                self.mode = Mode::Driving {
                    cruise: rng.range(60.0, 78.0).min(self.cap),
                };
            }
            Mode::Refuelling { until } if now >= until => {
                let before = self.h2;
                self.h2 = self.tank * rng.range(0.96, 0.99);
                let station = ctx.map.nearest_station(line.at(self.s).0);
                events.push(json!({
                    "ts": ts(now), "type": "refuel", "h2_g_before": round(before, 1),
                    "h2_g_after": round(self.h2, 1), "station_id": ctx.map.stations[station].id,
                }));
                self.mode = Mode::Dwell {
                    until: now + 60_000,
                };
            }
            Mode::Dwell { .. } | Mode::Refuelling { .. } | Mode::Parked { .. } => {}
        }
        self.h2 = self.h2.max(0.0);
        Tick {
            telemetry: self.telemetry(now, dt_s, line, rng),
            events,
            next_ms: now + ctx.riding_ms,
        }
    }

    fn drive(&mut self, now: i64, dt_s: f64, cruise: f64, line: &Line, ctx: &Ctx, rng: &mut Rng) {
        let next_stop = if self.dir > 0.0 {
            line.stops
                .iter()
                .copied()
                .find(|&x| x > self.s + 0.5)
                .unwrap_or(line.len())
        } else {
            line.stops
                .iter()
                .rev()
                .copied()
                .find(|&x| x < self.s - 0.5)
                .unwrap_or(0.0)
        };
        let to_stop = (next_stop - self.s).abs();
        let (here, _) = line.at(self.s);
        let mut target = cruise;
        if self.s < URBAN_M || line.len() - self.s < URBAN_M {
            target = target.min(40.0);
        }
        if let Some(cap) = ctx.map.slow_cap(here) {
            target = target.min(cap - 3.0);
        }
        // Brake at 0.8 m/s² for the stop.
        target = target.min((1.6 * to_stop).sqrt() * 3.6).max(4.0);
        let step = (target - self.speed).clamp(-4.3 * dt_s, 2.9 * dt_s);
        let new_speed = (self.speed + step + rng.normal() * 0.6).clamp(0.0, self.cap);
        let moved = ((self.speed + new_speed) / 2.0 / 3.6 * dt_s).min(to_stop);
        self.speed = new_speed;
        self.s += self.dir * moved;
        self.odo += moved / 1000.0;
        self.h2 -= moved / 1000.0 * self.burn * (1.0 + 0.03 * rng.normal());
        if moved >= to_stop - 0.01 {
            self.s = next_stop;
            self.speed = 0.0;
            let terminal = next_stop <= 0.0 || next_stop >= line.len();
            self.mode = if next_stop <= 0.0 && self.h2 < REFUEL_BELOW_SHARE * self.tank {
                Mode::Refuelling {
                    until: now + 600_000,
                }
            } else if terminal {
                Mode::Dwell {
                    until: now + 300_000,
                }
            } else {
                Mode::Dwell {
                    until: now + 30_000,
                }
            };
            if terminal {
                self.dir = -self.dir;
            }
        }
    }

    fn telemetry(&mut self, now: i64, dt_s: f64, line: &Line, rng: &mut Rng) -> Telemetry {
        let (pos, bearing) = line.at(self.s);
        let fix = pos.offset_m(rng.normal() * 2.0, rng.normal() * 2.0);
        let v = self.speed;
        let parked = matches!(self.mode, Mode::Parked { .. });
        let power_kw = if parked {
            0.0
        } else if v > 0.0 {
            (3.0 + 0.55 * v + 0.004 * v * v).min(80.0)
        } else {
            3.0
        };
        // The stack warms towards a power-dependent temperature with a two-minute lag.
        let k = (dt_s / 120.0).min(1.0);
        self.fc_temp += (55.0 + 0.25 * power_kw - self.fc_temp) * k;
        let tank_temp = 18.0 + rng.normal() * 0.3;
        let pressure = (350.0 * self.h2 / self.tank * (273.15 + tank_temp) / 288.15).max(5.0);
        Telemetry {
            vehicle_id: self.id.clone(),
            ts: ts(now),
            seq: None,
            lat: round(fix.lat, 6),
            lon: round(fix.lon, 6),
            hdop: round(rng.range(0.6, 1.2), 1),
            speed_kmh: round(v, 1),
            heading_deg: round(
                if self.dir > 0.0 {
                    bearing
                } else {
                    bearing + 180.0
                },
                0,
            )
            .rem_euclid(360.0),
            h2_g: round(self.h2, 1),
            h2_pressure_bar: Some(round(pressure, 1)),
            tank_temp_c: round(tank_temp, 1),
            fc_power_w: if parked {
                0.0
            } else {
                round(power_kw * 1000.0 + rng.normal() * 200.0, 0).max(0.0)
            },
            fc_temp_c: Some(round(self.fc_temp, 1)),
            batt_v: round(27.4 + rng.normal() * 0.1, 2),
            odo_km: round(self.odo, 3),
            locked: None,
        }
    }
}
