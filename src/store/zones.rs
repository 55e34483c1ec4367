//! The zones repository: the operator's parking areas, no-parking zones, service areas, slow
//! zones and stations, stored as GeoJSON in WGS-84, read by the rules, the API, GBFS and
//! `hyfleet zones import`.

use anyhow::Context as _;
use serde_json::Value;
use tokio_postgres::{Client, GenericClient};

use crate::geo::{Crs, Zone, ZoneIndex, parse_feature, parse_zones};

/// Import (insert or replace by id) the zones of a GeoJSON FeatureCollection drawn in `crs`.
/// All or nothing: a bad feature refuses the whole file.
pub async fn import(client: &Client, geojson: &str, crs: Crs) -> anyhow::Result<usize> {
    let zones = parse_zones(geojson, crs).context("reading the zone file")?;
    upsert(client, &zones).await?;
    Ok(zones.len())
}

/// Insert or replace `zones` by id.
pub async fn upsert(client: &impl GenericClient, zones: &[Zone]) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut props = Vec::new();
    let mut geoms = Vec::new();
    for z in zones {
        ids.push(z.id.clone());
        names.push(z.name.clone());
        kinds.push(z.kind.as_str().to_owned());
        props.push(Value::Object(z.properties.clone()));
        geoms.push(z.geometry_geojson());
    }
    client
        .execute(
            "INSERT INTO zones (id, name, kind, properties, geometry) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[]) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind, \
             properties = EXCLUDED.properties, geometry = EXCLUDED.geometry, updated_at = now()",
            &[&ids, &names, &kinds, &props, &geoms],
        )
        .await
        .context("storing zones")?;
    Ok(())
}

/// Changes whenever a zone is added, replaced or removed: cheap to ask every few seconds.
pub async fn fingerprint(client: &Client) -> anyhow::Result<String> {
    let row = client
        .query_one(
            "SELECT count(*)::text || ':' || coalesce(md5(string_agg(id || '@' || updated_at::text, ',' ORDER BY id)), '') FROM zones",
            &[],
        )
        .await
        .context("reading the zones' fingerprint")?;
    Ok(row.get(0))
}

/// Every stored zone, indexed.
pub async fn load(client: &Client) -> anyhow::Result<ZoneIndex> {
    let rows = client
        .query(
            "SELECT id, name, kind, properties, geometry FROM zones ORDER BY id",
            &[],
        )
        .await
        .context("loading zones")?;
    let mut zones = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get(0);
        let mut props: Value = row.get(3);
        if let Some(p) = props.as_object_mut() {
            p.insert("id".into(), Value::String(id.clone()));
            p.insert("name".into(), Value::String(row.get(1)));
            p.insert("kind".into(), Value::String(row.get(2)));
        }
        let feature = serde_json::json!({
            "type": "Feature",
            "properties": props,
            "geometry": row.get::<_, Value>(4),
        });
        zones.push(
            parse_feature(&feature, Crs::Wgs84).with_context(|| format!("stored zone `{id}`"))?,
        );
    }
    Ok(ZoneIndex::new(zones))
}
