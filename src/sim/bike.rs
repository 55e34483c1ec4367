//! One hydrogen bike: parked in a parking area, ridden to another one (via a station when it
//! runs low), locked again. Its figures follow the published fleet facts (README).

use serde_json::{Value, json};

use super::data::MapData;
use super::geom::LatLon;
use super::prng::Rng;
use super::wire::{Telemetry, round, ts};

/// A bike goes to a station on its next ride once it has less than this.
pub const REFUEL_BELOW_G: f64 = 15.0;

/// Time and cadence settings shared by every vehicle.
pub struct Ctx<'a> {
    pub map: &'a MapData,
    pub riding_ms: i64,
    pub parked_ms: i64,
    pub mean_idle_s: f64,
}

/// What one report of a vehicle carries; the fleet adds the seq and the faults.
pub struct Tick {
    pub telemetry: Telemetry,
    pub events: Vec<Value>,
    pub next_ms: i64,
}

/// Scripted behaviour of an incident bike (see `incidents`).
#[derive(Debug, Clone, Default)]
pub struct BikeScript {
    pub first_ride_at_ms: Option<i64>,
    /// Where the first ride ends, instead of a parking area.
    pub first_ride_to: Option<LatLon>,
    pub first_ride_min_m: f64,
    pub cruise_kmh: Option<f64>,
    /// The first ride ignores the speed cap (a tampered controller).
    pub overspeed: bool,
    pub never_rides: bool,
    /// Hydrogen lost per parked report, with reports every `parked_every_ms`.
    pub leak_g_per_report: f64,
    pub parked_every_ms: Option<i64>,
    pub h2_g: Option<f64>,
}

enum Mode {
    Parked { ride_at: i64 },
    Riding(Ride),
    Refuelling { until: i64, station: usize },
}

struct Ride {
    path: Vec<LatLon>,
    leg: usize,
    cruise: f64,
    to_station: Option<usize>,
    start_odo: f64,
    start_h2: f64,
    overspeed: bool,
}

pub struct Bike {
    pub id: String,
    pub pos: LatLon,
    pub h2: f64,
    pub odo: f64,
    speed: f64,
    heading: f64,
    batt: f64,
    /// This bike's own consumption, g/km (the profile's ratio ± a few percent).
    burn: f64,
    tank: f64,
    cap: f64,
    mode: Mode,
    script: BikeScript,
}

impl Bike {
    pub fn new(
        id: String,
        area: usize,
        start_ms: i64,
        ctx: &Ctx,
        script: BikeScript,
        rng: &mut Rng,
    ) -> Self {
        let p = &ctx.map.profiles.bike;
        let tank = f64::from(p.tank_g);
        let a = &ctx.map.parking[area];
        let ride_at = match (script.never_rides, script.first_ride_at_ms) {
            (true, _) => i64::MAX,
            (_, Some(at)) => start_ms + at,
            _ => start_ms + (rng.exp(ctx.mean_idle_s) * 1000.0) as i64,
        };
        Bike {
            id,
            pos: a
                .centre
                .offset_m(rng.range(-4.0, 4.0), rng.range(-4.0, 4.0)),
            h2: script.h2_g.unwrap_or_else(|| rng.range(0.4 * tank, tank)),
            odo: rng.range(100.0, 3000.0),
            speed: 0.0,
            heading: rng.range(0.0, 360.0),
            batt: rng.range(38.5, 41.0),
            burn: f64::from(p.tank_g / p.range_km) * rng.range(0.96, 1.04),
            tank,
            cap: f64::from(p.speed_cap_kmh),
            mode: Mode::Parked { ride_at },
            script,
        }
    }

    pub fn is_riding(&self) -> bool {
        !matches!(self.mode, Mode::Parked { .. })
    }

    pub fn tick(&mut self, now: i64, dt_s: f64, ctx: &Ctx, rng: &mut Rng) -> Tick {
        let mut events = vec![];
        let riding_next = now + ctx.riding_ms;
        let next_ms = match &mut self.mode {
            Mode::Parked { ride_at } if now >= *ride_at => {
                self.start_ride(now, ctx, rng, &mut events);
                riding_next
            }
            Mode::Parked { ride_at } => {
                let ride_at = *ride_at;
                self.h2 = (self.h2 - self.script.leak_g_per_report).max(0.0);
                self.parked_next(now, ride_at, ctx, rng)
            }
            Mode::Riding(_) => {
                if let Some(end) = self.ride(dt_s, ctx, rng) {
                    self.end_ride(now, end, ctx, rng, &mut events)
                } else {
                    riding_next
                }
            }
            Mode::Refuelling { until, station } if now >= *until => {
                let station = *station;
                let before = self.h2;
                self.h2 = self.tank - rng.range(0.0, 1.0);
                events.push(json!({
                    "ts": ts(now), "type": "refuel", "h2_g_before": round(before, 2),
                    "h2_g_after": round(self.h2, 2), "station_id": ctx.map.stations[station].id,
                }));
                let dest = self.pick_parking(ctx, rng, 400.0);
                self.mode = Mode::Riding(self.plan(dest, None, ctx, rng, false));
                riding_next
            }
            Mode::Refuelling { .. } => riding_next,
        };
        Tick {
            telemetry: self.telemetry(now, rng),
            events,
            next_ms,
        }
    }

    fn parked_next(&self, now: i64, ride_at: i64, ctx: &Ctx, rng: &mut Rng) -> i64 {
        let every = self.script.parked_every_ms.unwrap_or(ctx.parked_ms) as f64;
        let jitter = if every >= 10_000.0 {
            rng.range(-0.05, 0.05) * every
        } else {
            0.0
        };
        (now + (every + jitter) as i64).min(ride_at).max(now + 1)
    }

    fn start_ride(&mut self, now: i64, ctx: &Ctx, rng: &mut Rng, events: &mut Vec<Value>) {
        let first = !self.script.never_rides && self.script.first_ride_at_ms.take().is_some();
        let spot = if first {
            self.script.first_ride_to.take()
        } else {
            None
        };
        let scripted_spot = spot.is_some();
        let (end, to_station) = if let Some(spot) = spot {
            (spot, None)
        } else if self.h2 < REFUEL_BELOW_G && !first {
            let st = ctx.map.nearest_station(self.pos);
            (ctx.map.stations[st].at, Some(st))
        } else {
            let min = if first {
                self.script.first_ride_min_m.max(400.0)
            } else {
                400.0
            };
            (self.pick_parking(ctx, rng, min), None)
        };
        let overspeed = first && self.script.overspeed;
        // A scripted spot is ridden to in a straight line, to keep the incident's timing.
        let mut ride = self.plan(end, to_station, ctx, rng, overspeed);
        if scripted_spot {
            ride.path = vec![end];
        }
        if first && let Some(c) = self.script.cruise_kmh {
            ride.cruise = c;
        }
        self.mode = Mode::Riding(ride);
        events.push(json!({
            "ts": ts(now), "type": "ride_start", "lat": round(self.pos.lat, 6),
            "lon": round(self.pos.lon, 6), "h2_g": round(self.h2, 2), "odo_km": round(self.odo, 3),
        }));
    }

    fn end_ride(
        &mut self,
        now: i64,
        end: (f64, f64, Option<usize>),
        ctx: &Ctx,
        rng: &mut Rng,
        events: &mut Vec<Value>,
    ) -> i64 {
        let (dist_km, used_g, station) = end;
        self.speed = 0.0;
        if let Some(station) = station {
            let until = now + (rng.range(120.0, 240.0) * 1000.0) as i64;
            self.mode = Mode::Refuelling { until, station };
            return now + ctx.riding_ms;
        }
        events.push(json!({
            "ts": ts(now), "type": "ride_end", "lat": round(self.pos.lat, 6),
            "lon": round(self.pos.lon, 6), "h2_g": round(self.h2, 2), "odo_km": round(self.odo, 3),
            "distance_km": round(dist_km, 3), "h2_used_g": round(used_g, 2),
        }));
        let ride_at = if self.script.never_rides {
            i64::MAX
        } else {
            now + ((rng.exp(ctx.mean_idle_s) + 10.0) * 1000.0) as i64
        };
        self.mode = Mode::Parked { ride_at };
        self.parked_next(now, ride_at, ctx, rng)
    }

    /// A parking spot between `min_m` and 3 km away (any other area if none is drawn).
    fn pick_parking(&self, ctx: &Ctx, rng: &mut Rng, min_m: f64) -> LatLon {
        let areas = &ctx.map.parking;
        let mut pick = rng.below(areas.len());
        for _ in 0..24 {
            let d = areas[pick].centre.distance_m(self.pos);
            if d >= min_m && d <= 3_000.0f64.max(min_m * 1.5) {
                break;
            }
            pick = rng.below(areas.len());
        }
        areas[pick]
            .centre
            .offset_m(rng.range(-4.0, 4.0), rng.range(-4.0, 4.0))
    }

    /// Streets run roughly on a grid: ride along one axis, then the other.
    fn plan(
        &self,
        end: LatLon,
        to_station: Option<usize>,
        ctx: &Ctx,
        rng: &mut Rng,
        overspeed: bool,
    ) -> Ride {
        let corner = if rng.chance(0.5) {
            LatLon::new(self.pos.lat, end.lon)
        } else {
            LatLon::new(end.lat, self.pos.lon)
        };
        let corner_ok = ctx.map.in_service_area(corner) && corner.distance_m(end) > 5.0;
        let path = if corner_ok {
            vec![corner, end]
        } else {
            vec![end]
        };
        Ride {
            path,
            leg: 0,
            cruise: if overspeed {
                rng.range(29.0, 32.0)
            } else {
                rng.range(12.0, 21.0)
            },
            to_station,
            start_odo: self.odo,
            start_h2: self.h2,
            overspeed,
        }
    }

    /// Moves along the ride for `dt_s`; on arrival returns (distance km, hydrogen used, station).
    fn ride(&mut self, dt_s: f64, ctx: &Ctx, rng: &mut Rng) -> Option<(f64, f64, Option<usize>)> {
        let Mode::Riding(r) = &mut self.mode else {
            return None;
        };
        let last_leg = r.leg + 1 == r.path.len();
        let to_leg_end = self.pos.distance_m(r.path[r.leg]);
        let mut target = r.cruise;
        if !r.overspeed
            && let Some(cap) = ctx.map.slow_cap(self.pos)
        {
            target = target.min(cap - 2.0);
        }
        // Slow down for the corner, stop at the end: v² = v_end² + 2·a·d, a = 1.5 m/s².
        let v_end: f64 = if last_leg { 0.0 } else { 8.0 / 3.6 };
        target = target
            .min((v_end * v_end + 3.0 * to_leg_end).sqrt() * 3.6)
            .max(5.0);
        let limit = if r.overspeed { 35.0 } else { self.cap };
        let step = (target - self.speed).clamp(-7.0 * dt_s, 4.3 * dt_s);
        let new_speed = (self.speed + step + rng.normal() * 0.4).clamp(0.0, limit);
        let mut left = (self.speed + new_speed) / 2.0 / 3.6 * dt_s;
        self.speed = new_speed;
        let from = self.pos;
        let mut arrived = false;
        while left > 0.0 {
            let d = self.pos.distance_m(r.path[r.leg]);
            if left >= d {
                self.pos = r.path[r.leg];
                left -= d;
                r.leg += 1;
                if r.leg == r.path.len() {
                    arrived = true;
                    break;
                }
            } else {
                self.pos = self.pos.toward(r.path[r.leg], left);
                left = 0.0;
            }
        }
        let moved_km = from.distance_m(self.pos) / 1000.0;
        if moved_km > 0.0005 {
            self.heading = from.bearing_deg(self.pos);
        }
        self.odo += moved_km;
        self.h2 = (self.h2 - moved_km * self.burn * (1.0 + 0.03 * rng.normal())).max(0.0);
        arrived.then_some((self.odo - r.start_odo, r.start_h2 - self.h2, r.to_station))
    }

    fn telemetry(&self, now: i64, rng: &mut Rng) -> Telemetry {
        let riding = self.is_riding();
        let noise = if riding { 1.5 } else { 0.8 };
        let fix = self
            .pos
            .offset_m(rng.normal() * noise, rng.normal() * noise);
        Telemetry {
            vehicle_id: self.id.clone(),
            ts: ts(now),
            seq: None,
            lat: round(fix.lat, 6),
            lon: round(fix.lon, 6),
            hdop: round(rng.range(0.7, 1.3), 1),
            speed_kmh: round(self.speed, 1),
            heading_deg: round(self.heading, 0).rem_euclid(360.0),
            h2_g: round(self.h2, 2),
            h2_pressure_bar: None,
            tank_temp_c: round(
                18.0 + if riding { 4.0 } else { 0.0 } + rng.normal() * 0.3,
                1,
            ),
            fc_power_w: if self.speed > 0.0 {
                round(60.0 + 9.0 * self.speed + rng.normal() * 5.0, 0)
            } else {
                0.0
            },
            fc_temp_c: None,
            batt_v: round(self.batt + rng.normal() * 0.05, 2),
            odo_km: round(self.odo, 3),
            locked: Some(!riding),
        }
    }
}
