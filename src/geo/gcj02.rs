//! GCJ-02, the obfuscated datum of Chinese map services. WGS-84 → GCJ-02 is the published
//! closed form; the inverse has none, so it is found by fixed-point iteration (to well under a
//! centimetre in a few steps). Outside mainland China the two systems coincide.

const A: f64 = 6_378_245.0;
const EE: f64 = 0.006_693_421_622_965_943;

fn outside_china(lat: f64, lon: f64) -> bool {
    !(72.004..=137.8347).contains(&lon) || !(0.8293..=55.8271).contains(&lat)
}

fn transform_lat(x: f64, y: f64) -> f64 {
    use std::f64::consts::PI;
    let mut r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * x.abs().sqrt();
    r += (20.0 * (6.0 * x * PI).sin() + 20.0 * (2.0 * x * PI).sin()) * 2.0 / 3.0;
    r += (20.0 * (y * PI).sin() + 40.0 * (y / 3.0 * PI).sin()) * 2.0 / 3.0;
    r += (160.0 * (y / 12.0 * PI).sin() + 320.0 * (y * PI / 30.0).sin()) * 2.0 / 3.0;
    r
}

fn transform_lon(x: f64, y: f64) -> f64 {
    use std::f64::consts::PI;
    let mut r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * x.abs().sqrt();
    r += (20.0 * (6.0 * x * PI).sin() + 20.0 * (2.0 * x * PI).sin()) * 2.0 / 3.0;
    r += (20.0 * (x * PI).sin() + 40.0 * (x / 3.0 * PI).sin()) * 2.0 / 3.0;
    r += (150.0 * (x / 12.0 * PI).sin() + 300.0 * (x / 30.0 * PI).sin()) * 2.0 / 3.0;
    r
}

/// WGS-84 → GCJ-02, `(lat, lon)` in degrees.
pub fn wgs84_to_gcj02(lat: f64, lon: f64) -> (f64, f64) {
    use std::f64::consts::PI;
    if outside_china(lat, lon) {
        return (lat, lon);
    }
    let d_lat = transform_lat(lon - 105.0, lat - 35.0);
    let d_lon = transform_lon(lon - 105.0, lat - 35.0);
    let rad_lat = lat / 180.0 * PI;
    let magic = 1.0 - EE * rad_lat.sin() * rad_lat.sin();
    let sqrt_magic = magic.sqrt();
    let d_lat = (d_lat * 180.0) / ((A * (1.0 - EE)) / (magic * sqrt_magic) * PI);
    let d_lon = (d_lon * 180.0) / (A / sqrt_magic * rad_lat.cos() * PI);
    (lat + d_lat, lon + d_lon)
}

/// GCJ-02 → WGS-84 by iteration: find `w` with `wgs84_to_gcj02(w) == g`.
pub fn gcj02_to_wgs84(lat: f64, lon: f64) -> (f64, f64) {
    if outside_china(lat, lon) {
        return (lat, lon);
    }
    let (mut w_lat, mut w_lon) = (lat, lon);
    for _ in 0..10 {
        let (g_lat, g_lon) = wgs84_to_gcj02(w_lat, w_lon);
        let (e_lat, e_lon) = (g_lat - lat, g_lon - lon);
        w_lat -= e_lat;
        w_lon -= e_lon;
        if e_lat.abs() < 1e-9 && e_lon.abs() < 1e-9 {
            break;
        }
    }
    (w_lat, w_lon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_in_xiaoyi_is_hundreds_of_metres() {
        let (lat, lon) = (37.145, 111.781);
        let (g_lat, g_lon) = wgs84_to_gcj02(lat, lon);
        let dy = (g_lat - lat) * 111_320.0;
        let dx = (g_lon - lon) * 111_320.0 * lat.to_radians().cos();
        let d = (dx * dx + dy * dy).sqrt();
        assert!((100.0..=700.0).contains(&d), "offset {d} m");
    }

    #[test]
    fn inverse_round_trips_to_a_centimetre() {
        for (lat, lon) in [
            (37.145, 111.781),
            (37.027, 111.913),
            (39.9, 116.4),
            (22.5, 114.0),
        ] {
            let (g_lat, g_lon) = wgs84_to_gcj02(lat, lon);
            let (w_lat, w_lon) = gcj02_to_wgs84(g_lat, g_lon);
            assert!((w_lat - lat).abs() < 1e-7 && (w_lon - lon).abs() < 1e-7);
        }
    }

    #[test]
    fn outside_china_is_unchanged() {
        assert_eq!(wgs84_to_gcj02(48.85, 2.35), (48.85, 2.35));
        assert_eq!(gcj02_to_wgs84(48.85, 2.35), (48.85, 2.35));
    }
}
