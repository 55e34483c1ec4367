//! Per-vehicle rollups by minute and by operator's day (migration 0005), added to in the batch's
//! own transaction from the readings it newly stored: each reading counts once, and no query
//! ever recomputes them from raw rows. They outlive the raw data.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeZone as _, Utc};
use tokio_postgres::Transaction;

use crate::domain::Reading;
use crate::geo::metric::distance_m;

/// Daily buckets run from midnight to midnight in Xiaoyi (UTC+8), as the API's daily buckets do.
const DAY_OFFSET_SECS: i64 = 8 * 3600;

/// A vehicle's newest stored reading before the batch: where its first fresh reading moved from.
#[derive(Debug, Clone, Copy)]
pub struct Prior {
    pub ts: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub h2_g: f32,
    pub odo_km: Option<f64>,
}

impl Prior {
    fn of(r: &Reading) -> Prior {
        Prior {
            ts: r.ts,
            lat: r.lat,
            lon: r.lon,
            h2_g: r.h2_g,
            odo_km: r.odo_km,
        }
    }

    /// Kilometres and grams of hydrogen from `self` to the later reading `r`: the odometer when
    /// both carry one and it did not go back, else the straight line; a refuel is no negative use.
    /// A reading without a usable fix (`fixed` false) adds no straight-line distance.
    fn step_to(&self, r: &Reading, fixed: bool) -> (f64, f64) {
        let km = match (self.odo_km, r.odo_km) {
            (Some(a), Some(b)) if b >= a => b - a,
            _ if fixed && self.lat.is_finite() => {
                distance_m(self.lat, self.lon, r.lat, r.lon) / 1000.0
            }
            _ => 0.0,
        };
        (km, f64::from((self.h2_g - r.h2_g).max(0.0)))
    }

    /// The state after `r`: its figures, and its position only when it has a fix (else the
    /// last known one, or none).
    fn then(r: &Reading, fixed: bool, before: Option<&Prior>) -> Prior {
        let mut p = Prior::of(r);
        if !fixed {
            (p.lat, p.lon) = before.map_or((f64::NAN, f64::NAN), |b| (b.lat, b.lon));
        }
        p
    }
}

/// One bucket's sums, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub readings: i32,
    pub distance_km: f64,
    pub h2_used_g: f64,
    pub speed_min: f32,
    pub speed_max: f32,
    pub speed_sum: f64,
    pub h2_min: f32,
    pub h2_max: f32,
    pub h2_sum: f64,
    pub last_ts: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub odo_km: Option<f64>,
}

impl Bucket {
    fn new(r: &Reading) -> Bucket {
        Bucket {
            readings: 0,
            distance_km: 0.0,
            h2_used_g: 0.0,
            speed_min: r.speed_kmh,
            speed_max: r.speed_kmh,
            speed_sum: 0.0,
            h2_min: r.h2_g,
            h2_max: r.h2_g,
            h2_sum: 0.0,
            last_ts: r.ts,
            lat: r.lat,
            lon: r.lon,
            odo_km: None,
        }
    }

    fn add(&mut self, r: &Reading, (km, h2): (f64, f64)) {
        self.readings += 1;
        self.distance_km += km;
        self.h2_used_g += h2;
        self.speed_min = self.speed_min.min(r.speed_kmh);
        self.speed_max = self.speed_max.max(r.speed_kmh);
        self.speed_sum += f64::from(r.speed_kmh);
        self.h2_min = self.h2_min.min(r.h2_g);
        self.h2_max = self.h2_max.max(r.h2_g);
        self.h2_sum += f64::from(r.h2_g);
        if r.ts >= self.last_ts {
            (self.last_ts, self.lat, self.lon) = (r.ts, r.lat, r.lon);
        }
        self.odo_km = match (self.odo_km, r.odo_km) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Buckets keyed by vehicle and start time (seconds since the epoch).
pub type Buckets = BTreeMap<(i32, i64), Bucket>;

/// The minute and day buckets of a batch's fresh readings, sorted by vehicle then time.
/// `id` maps a reading to its vehicle's row id; `prior` holds each vehicle's newest reading
/// stored before the batch. A reading older than that (a late one) adds to its bucket's
/// figures but moves nothing: the step it belongs to was counted when the newer one came.
pub fn accumulate(
    fresh: &[&Reading],
    id: impl Fn(&Reading) -> i32,
    prior: &HashMap<i32, Prior>,
) -> (Buckets, Buckets) {
    accumulate_with(fresh, id, prior, |_| true)
}

/// [`accumulate`], where `has_fix` tells the readings whose position is of no value: they add
/// their figures but no distance, and do not become a bucket's last position.
pub fn accumulate_with(
    fresh: &[&Reading],
    id: impl Fn(&Reading) -> i32,
    prior: &HashMap<i32, Prior>,
    has_fix: impl Fn(&Reading) -> bool,
) -> (Buckets, Buckets) {
    let (mut minutes, mut days) = (Buckets::new(), Buckets::new());
    let mut current: Option<(i32, Option<Prior>)> = None;
    for r in fresh {
        let vehicle = id(r);
        let prev = match &mut current {
            Some((v, prev)) if *v == vehicle => prev,
            _ => &mut current.insert((vehicle, prior.get(&vehicle).copied())).1,
        };
        let fixed = has_fix(r);
        let step = match prev {
            Some(p) if p.ts < r.ts => {
                let step = p.step_to(r, fixed);
                *prev = Some(Prior::then(r, fixed, Some(p)));
                step
            }
            Some(_) => (0.0, 0.0),
            None => {
                *prev = Some(Prior::then(r, fixed, None));
                (0.0, 0.0)
            }
        };
        // A bucket's last position is the last known one, never a fix of no value.
        let at = match prev {
            Some(p) if !fixed && p.lat.is_finite() => Some((p.lat, p.lon)),
            _ => None,
        };
        let placed;
        let r = match at {
            Some((lat, lon)) => {
                placed = Reading {
                    lat,
                    lon,
                    ..(*r).clone()
                };
                &placed
            }
            None => *r,
        };
        let secs = r.ts.timestamp();
        let minute = secs - secs.rem_euclid(60);
        let day = secs - (secs + DAY_OFFSET_SECS).rem_euclid(86_400);
        minutes
            .entry((vehicle, minute))
            .or_insert_with(|| Bucket::new(r))
            .add(r, step);
        days.entry((vehicle, day))
            .or_insert_with(|| Bucket::new(r))
            .add(r, step);
    }
    (minutes, days)
}

/// Add `buckets` to `table` (`telemetry_1m` or `telemetry_1d`), merging with what is stored.
pub async fn upsert(
    tx: &Transaction<'_>,
    table: Table,
    buckets: &Buckets,
) -> Result<(), tokio_postgres::Error> {
    if buckets.is_empty() {
        return Ok(());
    }
    let n = buckets.len();
    let mut vehicle = Vec::with_capacity(n);
    let mut start = Vec::with_capacity(n);
    let mut b_cols: Vec<&Bucket> = Vec::with_capacity(n);
    for (&(v, s), b) in buckets {
        vehicle.push(v);
        start.push(Utc.timestamp_opt(s, 0).single().unwrap_or_default());
        b_cols.push(b);
    }
    let col = |f: fn(&Bucket) -> f64| b_cols.iter().map(|b| f(b)).collect::<Vec<f64>>();
    let col32 = |f: fn(&Bucket) -> f32| b_cols.iter().map(|b| f(b)).collect::<Vec<f32>>();
    let readings: Vec<i32> = b_cols.iter().map(|b| b.readings).collect();
    let last_ts: Vec<DateTime<Utc>> = b_cols.iter().map(|b| b.last_ts).collect();
    let odo: Vec<Option<f64>> = b_cols.iter().map(|b| b.odo_km).collect();
    tx.execute(
        table.upsert_sql(),
        &[
            &vehicle,
            &start,
            &readings,
            &col(|b| b.distance_km),
            &col(|b| b.h2_used_g),
            &col32(|b| b.speed_min),
            &col32(|b| b.speed_max),
            &col(|b| b.speed_sum),
            &col32(|b| b.h2_min),
            &col32(|b| b.h2_max),
            &col(|b| b.h2_sum),
            &last_ts,
            &col(|b| b.lat),
            &col(|b| b.lon),
            &odo,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Minute,
    Day,
}

macro_rules! upsert_sql {
    ($table:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " AS t (vehicle, bucket, readings, distance_km, h2_used_g, speed_min, speed_max,
                speed_sum, h2_min, h2_max, h2_sum, last_ts, lat, lon, odo_km)
             SELECT * FROM unnest($1::int4[], $2::timestamptz[], $3::int4[], $4::float8[],
                $5::float8[], $6::float4[], $7::float4[], $8::float8[], $9::float4[],
                $10::float4[], $11::float8[], $12::timestamptz[], $13::float8[], $14::float8[],
                $15::float8[])
             ON CONFLICT (vehicle, bucket) DO UPDATE SET
                readings = t.readings + excluded.readings,
                distance_km = t.distance_km + excluded.distance_km,
                h2_used_g = t.h2_used_g + excluded.h2_used_g,
                speed_min = least(t.speed_min, excluded.speed_min),
                speed_max = greatest(t.speed_max, excluded.speed_max),
                speed_sum = t.speed_sum + excluded.speed_sum,
                h2_min = least(t.h2_min, excluded.h2_min),
                h2_max = greatest(t.h2_max, excluded.h2_max),
                h2_sum = t.h2_sum + excluded.h2_sum,
                last_ts = greatest(t.last_ts, excluded.last_ts),
                lat = CASE WHEN excluded.last_ts >= t.last_ts THEN excluded.lat ELSE t.lat END,
                lon = CASE WHEN excluded.last_ts >= t.last_ts THEN excluded.lon ELSE t.lon END,
                odo_km = greatest(t.odo_km, excluded.odo_km)"
        )
    };
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Minute => "telemetry_1m",
            Table::Day => "telemetry_1d",
        }
    }

    fn upsert_sql(self) -> &'static str {
        match self {
            Table::Minute => upsert_sql!("telemetry_1m"),
            Table::Day => upsert_sql!("telemetry_1d"),
        }
    }
}

/// Drop minute buckets older than `minute_days` and day buckets older than `day_days`.
pub async fn expire(
    client: &tokio_postgres::Client,
    minute_days: u32,
    day_days: u32,
    now: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    let cut = |days: u32| now - chrono::Duration::days(i64::from(days));
    let m = client
        .execute(
            "DELETE FROM telemetry_1m WHERE bucket < $1",
            &[&cut(minute_days)],
        )
        .await?;
    let d = client
        .execute(
            "DELETE FROM telemetry_1d WHERE bucket < $1",
            &[&cut(day_days)],
        )
        .await?;
    Ok(m + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(secs: i64, lat: f64, h2: f32, odo: Option<f64>) -> Reading {
        let ts = Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap();
        Reading {
            speed_kmh: secs as f32,
            odo_km: odo,
            ..Reading::bare("XY-B0001", ts, lat, 111.78, h2)
        }
    }

    #[test]
    fn steps_are_booked_to_the_later_readings_bucket_and_refuels_are_not_use() {
        // 1_800_000_000 is 08:00:00 UTC: minute-aligned.
        let rs = [
            reading(50, 37.0, 10.0, Some(100.0)),
            reading(70, 37.0, 9.5, Some(100.4)),
            reading(80, 37.0, 40.0, Some(100.4)), // refuel
            reading(90, 37.001, 39.0, None),      // no odometer: the straight line
        ];
        let fresh: Vec<&Reading> = rs.iter().collect();
        let prior = HashMap::from([(
            7,
            Prior {
                ts: Utc.timestamp_opt(1_800_000_040, 0).unwrap(),
                lat: 37.0,
                lon: 111.78,
                h2_g: 10.5,
                odo_km: Some(99.9),
            },
        )]);
        let (minutes, days) = accumulate(&fresh, |_| 7, &prior);
        assert_eq!(minutes.len(), 2);
        let first = &minutes[&(7, 1_800_000_000)];
        assert_eq!(first.readings, 1);
        assert!(
            (first.distance_km - 0.1).abs() < 1e-9,
            "from the prior reading"
        );
        assert!((first.h2_used_g - 0.5).abs() < 1e-6);
        let second = &minutes[&(7, 1_800_000_060)];
        assert_eq!(second.readings, 3);
        let straight = distance_m(37.0, 111.78, 37.001, 111.78) / 1000.0;
        assert!((second.distance_km - (0.4 + straight)).abs() < 1e-6);
        assert!(
            (second.h2_used_g - 1.5).abs() < 1e-6,
            "0.5 + 1.0, not the refuel"
        );
        assert_eq!((second.speed_min, second.speed_max), (70.0, 90.0));
        assert_eq!(second.lat, 37.001, "the newest position");
        assert_eq!(second.odo_km, Some(100.4));
        // 08:00 UTC is 16:00 in Xiaoyi: one local day, starting 16:00 UTC the day before.
        assert_eq!(days.len(), 1);
        let (&(_, start), day) = days.iter().next().unwrap();
        assert_eq!((1_800_000_000 - start) % 86_400, 16 * 3600);
        assert_eq!(day.readings, 4);
        assert!((day.h2_used_g - 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_late_reading_counts_but_moves_nothing() {
        let rs = [reading(10, 37.5, 5.0, Some(50.0))];
        let fresh: Vec<&Reading> = rs.iter().collect();
        let prior = HashMap::from([(
            1,
            Prior {
                ts: Utc.timestamp_opt(1_800_000_100, 0).unwrap(),
                lat: 37.0,
                lon: 111.78,
                h2_g: 9.0,
                odo_km: Some(60.0),
            },
        )]);
        let (minutes, _) = accumulate(&fresh, |_| 1, &prior);
        let b = &minutes[&(1, 1_800_000_000)];
        assert_eq!(b.readings, 1);
        assert_eq!((b.distance_km, b.h2_used_g), (0.0, 0.0));
    }
}
