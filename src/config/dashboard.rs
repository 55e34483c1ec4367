//! The `[dashboard]` section: which map tiles the page draws under the fleet, and the time zone
//! of its dates. Served to the page as `/dashboard/config.json`.

use serde::Deserialize;
use serde_json::json;

/// Map tile services. Each draws in a coordinate system: the page moves positions and zones
/// (stored in WGS-84) into it, so that a vehicle on a street stands on that street.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tiles {
    /// OpenStreetMap: WGS-84.
    #[default]
    Osm,
    /// AMap (高德): GCJ-02.
    Amap,
    /// Tencent Maps (腾讯): GCJ-02.
    Tencent,
    /// Tianditu (天地图): CGCS2000, within a metre of WGS-84. Needs a key.
    Tianditu,
    /// No tiles: zones and vehicles on a plain background (offline sites).
    None,
}

/// The coordinate system tiles are drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TileCrs {
    Wgs84,
    Gcj02,
}

impl TileCrs {
    fn as_str(self) -> &'static str {
        match self {
            TileCrs::Wgs84 => "wgs84",
            TileCrs::Gcj02 => "gcj02",
        }
    }
}

struct Preset {
    url: &'static str,
    subdomains: &'static str,
    crs: TileCrs,
    attribution: &'static str,
    max_zoom: u8,
}

fn preset(t: Tiles) -> Option<Preset> {
    Some(match t {
        Tiles::Osm => Preset {
            url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
            subdomains: "",
            crs: TileCrs::Wgs84,
            attribution: "© OpenStreetMap contributors",
            max_zoom: 19,
        },
        Tiles::Amap => Preset {
            url: "https://webrd0{s}.is.autonavi.com/appmaptile?lang=zh_cn&size=1&scale=1&style=8&x={x}&y={y}&z={z}",
            subdomains: "1234",
            crs: TileCrs::Gcj02,
            attribution: "© 高德地图 AMap",
            max_zoom: 18,
        },
        Tiles::Tencent => Preset {
            // Tencent numbers rows from the south (TMS): Leaflet's `{-y}`.
            url: "https://rt{s}.map.gtimg.com/tile?z={z}&x={x}&y={-y}&type=vector&styleid=0",
            subdomains: "0123",
            crs: TileCrs::Gcj02,
            attribution: "© 腾讯地图 Tencent",
            max_zoom: 18,
        },
        Tiles::Tianditu => Preset {
            url: "https://t{s}.tianditu.gov.cn/DataServer?T=vec_w&x={x}&y={y}&l={z}&tk={key}",
            subdomains: "01234567",
            crs: TileCrs::Wgs84,
            attribution: "© 天地图 Tianditu",
            max_zoom: 18,
        },
        Tiles::None => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    pub tiles: Tiles,
    /// Replaces the preset's tile URL (`{z}`, `{x}`, `{y}`, `{s}`): a tile cache or a mirror.
    pub tile_url: Option<String>,
    /// The coordinate system of `tile_url`'s tiles; default that of the preset.
    pub tile_crs: Option<TileCrs>,
    /// Tianditu's browser key (`tk`): it travels to every browser that opens the dashboard,
    /// as Tianditu's browser keys do; restrict it to your domain in Tianditu's console.
    pub tianditu_key: Option<String>,
    /// IANA time zone of the dates on the page.
    pub time_zone: String,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            tiles: Tiles::Osm,
            tile_url: None,
            tile_crs: None,
            tianditu_key: None,
            time_zone: "Asia/Shanghai".into(),
        }
    }
}

/// The tile layer the page uses, resolved from the preset and the overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct TileLayer {
    pub url: String,
    pub subdomains: String,
    pub crs: TileCrs,
    pub attribution: String,
    pub max_zoom: u8,
}

impl DashboardConfig {
    /// `Err((option, message))` names the option below `dashboard.` that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |o: &str, m: &str| Err((o.to_owned(), m.to_owned()));
        if let Some(url) = &self.tile_url {
            match reqwest::Url::parse(&url.replace(['{', '}'], "")) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => return err("tile_url", "must be an http(s) URL template"),
            }
            if !url.contains("{z}") || !url.contains("{x}") {
                return err("tile_url", "must contain {z}, {x} and {y} (or {-y})");
            }
            if self.tiles == Tiles::None {
                return err("tile_url", "is set but tiles = \"none\"");
            }
        }
        if self.tiles == Tiles::Tianditu
            && self.tile_url.is_none()
            && self.tianditu_key.as_deref().unwrap_or("").is_empty()
        {
            return err("tianditu_key", "Tianditu tiles need a key (tk)");
        }
        if let Some(k) = &self.tianditu_key
            && !k.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return err("tianditu_key", "must be letters and digits");
        }
        let tz_ok = !self.time_zone.is_empty()
            && self
                .time_zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if !tz_ok {
            return err(
                "time_zone",
                "must be an IANA time zone such as Asia/Shanghai",
            );
        }
        Ok(())
    }

    pub fn tile_layer(&self) -> Option<TileLayer> {
        let p = preset(self.tiles)?;
        let key = self.tianditu_key.as_deref().unwrap_or("");
        let (url, subdomains) = match &self.tile_url {
            Some(u) => (u.clone(), p.subdomains.to_owned()),
            None => (p.url.replace("{key}", key), p.subdomains.to_owned()),
        };
        Some(TileLayer {
            url,
            subdomains,
            crs: self.tile_crs.unwrap_or(p.crs),
            attribution: p.attribution.to_owned(),
            max_zoom: p.max_zoom,
        })
    }

    /// Where the page may load images from besides itself: the tile host, with `{s}`
    /// widened to a wildcard label (`webrd0{s}.is.autonavi.com` → `*.is.autonavi.com`).
    pub fn tile_origin(&self) -> Option<String> {
        let layer = self.tile_layer()?;
        let (scheme, rest) = layer.url.split_once("://")?;
        let authority = rest.split(['/', '?']).next()?;
        let authority = match authority.split_once('.') {
            Some((first, domain)) if first.contains('{') => format!("*.{domain}"),
            _ => authority.to_owned(),
        };
        // Anything else than a host and port here would break the policy it is put in.
        let clean = authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:*[]".contains(c));
        clean.then(|| format!("{scheme}://{authority}"))
    }

    /// What the page reads at start.
    pub fn page_config(&self) -> serde_json::Value {
        use crate::notify::labels::{Language, catalogue};
        let tiles = self.tile_layer().map(|t| {
            json!({
                "url": t.url,
                "subdomains": t.subdomains,
                "crs": t.crs.as_str(),
                "attribution": t.attribution,
                "max_zoom": t.max_zoom,
            })
        });
        json!({
            "tiles": tiles,
            "time_zone": self.time_zone,
            "labels": {
                Language::ZhCn.as_str(): catalogue(Language::ZhCn),
                Language::En.as_str(): catalogue(Language::En),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> DashboardConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn presets_carry_their_coordinate_system() {
        let osm = DashboardConfig::default();
        assert_eq!(osm.tile_layer().unwrap().crs, TileCrs::Wgs84);
        assert_eq!(
            osm.tile_origin().as_deref(),
            Some("https://tile.openstreetmap.org")
        );
        let amap = parse("tiles = \"amap\"");
        assert_eq!(amap.tile_layer().unwrap().crs, TileCrs::Gcj02);
        assert_eq!(
            amap.tile_origin().as_deref(),
            Some("https://*.is.autonavi.com")
        );
        assert_eq!(
            parse("tiles = \"tencent\"").tile_layer().unwrap().crs,
            TileCrs::Gcj02
        );
        let tdt = parse("tiles = \"tianditu\"\ntianditu_key = \"abc123\"");
        assert!(tdt.validate().is_ok());
        let l = tdt.tile_layer().unwrap();
        assert_eq!(l.crs, TileCrs::Wgs84);
        assert!(l.url.contains("tk=abc123"), "{}", l.url);
        assert_eq!(
            tdt.tile_origin().as_deref(),
            Some("https://*.tianditu.gov.cn")
        );
        assert!(parse("tiles = \"none\"").tile_layer().is_none());
    }

    #[test]
    fn bad_options_are_named() {
        let e = |s: &str| parse(s).validate().unwrap_err().0;
        assert_eq!(e("tiles = \"tianditu\""), "tianditu_key");
        assert_eq!(e("tile_url = \"ftp://x/{z}/{x}/{y}\""), "tile_url");
        assert_eq!(e("tile_url = \"https://x.test/tiles\""), "tile_url");
        assert_eq!(
            e("time_zone = \"Asia/Shanghai; script-src *\""),
            "time_zone"
        );
        assert!(toml::from_str::<DashboardConfig>("tiles = \"google\"").is_err());
        let own = parse("tile_url = \"http://127.0.0.1:9/{z}/{x}/{y}.png\"\ntile_crs = \"gcj02\"");
        assert!(own.validate().is_ok());
        assert_eq!(own.tile_layer().unwrap().crs, TileCrs::Gcj02);
        assert_eq!(own.tile_origin().as_deref(), Some("http://127.0.0.1:9"));
    }
}
