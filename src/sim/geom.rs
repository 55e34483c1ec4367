//! Just enough geodesy for moving vehicles around a city: local flat-earth metres, which are
//! accurate to well under a metre over the few kilometres a ride spans.

const M_PER_DEG_LAT: f64 = 111_320.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

impl LatLon {
    pub fn new(lat: f64, lon: f64) -> Self {
        LatLon { lat, lon }
    }

    fn m_per_deg_lon(self) -> f64 {
        M_PER_DEG_LAT * self.lat.to_radians().cos()
    }

    /// `(east, north)` metres from `self` to `other`.
    pub fn delta_m(self, other: LatLon) -> (f64, f64) {
        (
            (other.lon - self.lon) * self.m_per_deg_lon(),
            (other.lat - self.lat) * M_PER_DEG_LAT,
        )
    }

    pub fn distance_m(self, other: LatLon) -> f64 {
        let (e, n) = self.delta_m(other);
        e.hypot(n)
    }

    /// Compass bearing towards `other`, 0–360.
    pub fn bearing_deg(self, other: LatLon) -> f64 {
        let (e, n) = self.delta_m(other);
        e.atan2(n).to_degrees().rem_euclid(360.0)
    }

    pub fn offset_m(self, east: f64, north: f64) -> LatLon {
        LatLon {
            lat: self.lat + north / M_PER_DEG_LAT,
            lon: self.lon + east / self.m_per_deg_lon(),
        }
    }

    /// The point `d` metres from `self` towards `other` (not beyond it).
    pub fn toward(self, other: LatLon, d: f64) -> LatLon {
        let total = self.distance_m(other);
        if total <= d || total == 0.0 {
            return other;
        }
        let f = d / total;
        LatLon::new(
            self.lat + (other.lat - self.lat) * f,
            self.lon + (other.lon - self.lon) * f,
        )
    }
}

/// A simple polygon (outer ring only, which is all the zone files use).
#[derive(Debug, Clone)]
pub struct Polygon {
    pub ring: Vec<LatLon>,
}

impl Polygon {
    pub fn contains(&self, p: LatLon) -> bool {
        let r = &self.ring;
        let mut inside = false;
        let mut j = r.len().wrapping_sub(1);
        for i in 0..r.len() {
            let (a, b) = (r[i], r[j]);
            if (a.lat > p.lat) != (b.lat > p.lat)
                && p.lon < (b.lon - a.lon) * (p.lat - a.lat) / (b.lat - a.lat) + a.lon
            {
                inside = !inside;
            }
            j = i;
        }
        inside
    }

    /// Vertex average: inside for the convex shapes that parking areas are.
    pub fn centre(&self) -> LatLon {
        let pts = match self.ring.split_last() {
            Some((last, rest)) if !rest.is_empty() && *last == rest[0] => rest,
            _ => &self.ring[..],
        };
        let n = pts.len().max(1) as f64;
        LatLon::new(
            pts.iter().map(|p| p.lat).sum::<f64>() / n,
            pts.iter().map(|p| p.lon).sum::<f64>() / n,
        )
    }

    /// Walking from the centre on a compass bearing, the first point `margin_m` beyond the edge.
    pub fn beyond_edge(&self, bearing_deg: f64, margin_m: f64) -> LatLon {
        let c = self.centre();
        let (s, co) = bearing_deg.to_radians().sin_cos();
        let mut d = 0.0;
        while self.contains(c.offset_m(s * d, co * d)) && d < 5_000.0 {
            d += 0.5;
        }
        c.offset_m(s * (d + margin_m), co * (d + margin_m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(c: LatLon, half: f64) -> Polygon {
        let ring = [(-1., -1.), (1., -1.), (1., 1.), (-1., 1.), (-1., -1.)]
            .iter()
            .map(|(e, n)| c.offset_m(e * half, n * half))
            .collect();
        Polygon { ring }
    }

    #[test]
    fn distances_and_bearings_match_the_flat_earth_at_city_scale() {
        let a = LatLon::new(37.145, 111.781);
        let b = a.offset_m(300.0, 400.0);
        assert!((a.distance_m(b) - 500.0).abs() < 0.01);
        assert!((a.bearing_deg(a.offset_m(0.0, 10.0)) - 0.0).abs() < 1e-6);
        assert!((a.bearing_deg(a.offset_m(10.0, 0.0)) - 90.0).abs() < 1e-6);
        assert!((a.bearing_deg(a.offset_m(-10.0, 0.0)) - 270.0).abs() < 1e-6);
        assert!((a.toward(b, 100.0).distance_m(a) - 100.0).abs() < 0.01);
        assert_eq!(a.toward(b, 900.0), b);
    }

    #[test]
    fn polygon_inside_outside_and_beyond_edge() {
        let c = LatLon::new(37.145, 111.781);
        let sq = square(c, 20.0);
        assert!(sq.contains(c));
        assert!(sq.contains(c.offset_m(19.0, -19.0)));
        assert!(!sq.contains(c.offset_m(21.0, 0.0)));
        assert!(sq.centre().distance_m(c) < 0.01);
        let p = sq.beyond_edge(90.0, 30.0);
        assert!(!sq.contains(p));
        assert!((p.distance_m(c) - 50.0).abs() < 1.0, "{}", p.distance_m(c));
    }
}
