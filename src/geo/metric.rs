//! Distances in metres at city scale: an equirectangular projection around the point asked
//! about. Over a few kilometres its error is far below GPS error, and it is cheap enough to
//! run for every candidate zone of every reading.

/// Mean Earth radius (IUGG), metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Metres per degree of latitude.
pub const M_PER_DEG_LAT: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// A flat frame centred on one point: `(lat, lon)` to `(x, y)` metres east and north of it.
#[derive(Debug, Clone, Copy)]
pub struct LocalFrame {
    lat0: f64,
    lon0: f64,
    m_per_deg_lon: f64,
}

impl LocalFrame {
    pub fn new(lat0: f64, lon0: f64) -> Self {
        Self {
            lat0,
            lon0,
            m_per_deg_lon: M_PER_DEG_LAT * lat0.to_radians().cos(),
        }
    }

    pub fn project(&self, lat: f64, lon: f64) -> (f64, f64) {
        let mut dlon = lon - self.lon0;
        // Zones never straddle the antimeridian in this fleet, but a wrong sign there would
        // put a point 40,000 km away rather than next door.
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon < -180.0 {
            dlon += 360.0;
        }
        (dlon * self.m_per_deg_lon, (lat - self.lat0) * M_PER_DEG_LAT)
    }
}

/// Distance between two WGS-84 points in metres (haversine: exact enough at any scale, so
/// that a GPS jump across the country is measured right too).
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Distance from the origin to the segment `a`–`b`, all in one local frame.
pub(crate) fn origin_to_segment(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (-(a.0 * dx + a.1 * dy) / len2).clamp(0.0, 1.0)
    };
    let (px, py) = (a.0 + t * dx, a.1 + t * dy);
    (px * px + py * py).sqrt()
}

/// Whether the origin is inside the closed ring (even-odd rule).
pub(crate) fn ring_contains_origin(ring: &[(f64, f64)]) -> bool {
    let mut inside = false;
    let n = ring.len();
    if n < 3 {
        return false;
    }
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = ring[i];
        let (xj, yj) = ring[j];
        if (yi > 0.0) != (yj > 0.0) {
            let x_cross = xi + (0.0 - yi) * (xj - xi) / (yj - yi);
            if x_cross > 0.0 {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// Distance from the origin to the ring's edges.
pub(crate) fn origin_to_ring(ring: &[(f64, f64)]) -> f64 {
    let mut best = f64::INFINITY;
    for w in ring.windows(2) {
        best = best.min(origin_to_segment(w[0], w[1]));
    }
    if let (Some(&first), Some(&last)) = (ring.first(), ring.last())
        && first != last
    {
        best = best.min(origin_to_segment(last, first));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_a_known_distance() {
        // Xiaoyi centre to Jiexiu centre: about 17.6 km.
        let d = distance_m(37.145, 111.781, 37.027, 111.913);
        assert!((17_000.0..18_500.0).contains(&d), "{d}");
    }

    #[test]
    fn local_frame_agrees_with_haversine_at_city_scale() {
        let f = LocalFrame::new(37.145, 111.781);
        let (x, y) = f.project(37.150, 111.790);
        let flat = (x * x + y * y).sqrt();
        let round = distance_m(37.145, 111.781, 37.150, 111.790);
        assert!((flat - round).abs() < 1.0, "{flat} vs {round}");
    }

    #[test]
    fn segment_distance_and_containment() {
        assert!((origin_to_segment((-1.0, 2.0), (1.0, 2.0)) - 2.0).abs() < 1e-9);
        assert!((origin_to_segment((3.0, 4.0), (6.0, 8.0)) - 5.0).abs() < 1e-9);
        let square = [
            (-1.0, -1.0),
            (1.0, -1.0),
            (1.0, 1.0),
            (-1.0, 1.0),
            (-1.0, -1.0),
        ];
        assert!(ring_contains_origin(&square));
        let away = [(2.0, 2.0), (3.0, 2.0), (3.0, 3.0), (2.0, 3.0)];
        assert!(!ring_contains_origin(&away));
        assert!((origin_to_ring(&away) - 8f64.sqrt()).abs() < 1e-9);
    }
}
