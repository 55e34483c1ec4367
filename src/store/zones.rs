//! The zones repository: the operator's parking areas, no-parking zones, service areas, slow
//! zones and stations, stored as GeoJSON in WGS-84, read by the rules, the API, GBFS and
//! `hyfleet zones import`.

use anyhow::Context as _;
use serde_json::Value;
use tokio_postgres::{Client, GenericClient, Row, Transaction};

use crate::geo::{Crs, Zone, ZoneIndex, ZoneKind, parse_feature, parse_zones};

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

/// A zone as stored: its own columns, and the rest of its GeoJSON properties.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredZone {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub properties: Value,
    /// GeoJSON geometry, WGS-84.
    pub geometry: Value,
}

impl StoredZone {
    fn from_row(row: &Row) -> Self {
        StoredZone {
            id: row.get(0),
            name: row.get(1),
            kind: row.get(2),
            properties: row.get(3),
            geometry: row.get(4),
        }
    }

    /// The GeoJSON Feature, with `id`, `name` and `kind` among its properties.
    pub fn feature(&self) -> Value {
        let mut props = self.properties.clone();
        if let Some(p) = props.as_object_mut() {
            p.insert("id".into(), Value::String(self.id.clone()));
            p.insert("name".into(), Value::String(self.name.clone()));
            p.insert("kind".into(), Value::String(self.kind.clone()));
        }
        serde_json::json!({
            "type": "Feature",
            "id": self.id,
            "properties": props,
            "geometry": self.geometry,
        })
    }
}

const SELECT: &str = "SELECT id, name, kind, properties, geometry FROM zones";

/// Every stored zone (of one kind, if given), by id.
pub async fn all(client: &Client, kind: Option<ZoneKind>) -> anyhow::Result<Vec<StoredZone>> {
    let rows = client
        .query(
            &format!("{SELECT} WHERE ($1::text IS NULL OR kind = $1) ORDER BY id"),
            &[&kind.map(ZoneKind::as_str)],
        )
        .await
        .context("reading zones")?;
    Ok(rows.iter().map(StoredZone::from_row).collect())
}

pub async fn get(client: &Client, id: &str) -> anyhow::Result<Option<StoredZone>> {
    let row = client
        .query_opt(&format!("{SELECT} WHERE id = $1"), &[&id])
        .await
        .context("reading a zone")?;
    Ok(row.as_ref().map(StoredZone::from_row))
}

/// Insert `zones`, all or none: `Err` names the first id that exists already.
pub async fn insert_new(
    tx: &Transaction<'_>,
    zones: &[Zone],
) -> anyhow::Result<Result<(), String>> {
    for z in zones {
        let (props, geometry) = columns(z);
        let n = tx
            .execute(
                "INSERT INTO zones (id, name, kind, properties, geometry)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&z.id, &z.name, &z.kind.as_str(), &props, &geometry],
            )
            .await
            .context("storing a zone")?;
        if n == 0 {
            return Ok(Err(z.id.clone()));
        }
    }
    Ok(Ok(()))
}

/// Insert or replace one zone; true when it is new.
pub async fn put(client: &Client, z: &Zone) -> anyhow::Result<bool> {
    let (props, geometry) = columns(z);
    let created = client
        .query_one(
            "INSERT INTO zones (id, name, kind, properties, geometry) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,
                 properties = EXCLUDED.properties, geometry = EXCLUDED.geometry, updated_at = now()
             RETURNING (xmax = 0)",
            &[&z.id, &z.name, &z.kind.as_str(), &props, &geometry],
        )
        .await
        .context("storing a zone")?
        .get(0);
    Ok(created)
}

/// A zone's `properties` and `geometry` columns.
fn columns(z: &Zone) -> (Value, Value) {
    (Value::Object(z.properties.clone()), z.geometry_geojson())
}

/// Remove one zone; false when there was none.
pub async fn delete(client: &Client, id: &str) -> anyhow::Result<bool> {
    let n = client
        .execute("DELETE FROM zones WHERE id = $1", &[&id])
        .await
        .context("deleting a zone")?;
    Ok(n > 0)
}

/// Every stored zone, indexed.
pub async fn load(client: &Client) -> anyhow::Result<ZoneIndex> {
    let mut zones = Vec::new();
    for z in all(client, None).await? {
        zones.push(
            parse_feature(&z.feature(), Crs::Wgs84)
                .with_context(|| format!("stored zone `{}`", z.id))?,
        );
    }
    Ok(ZoneIndex::new(zones))
}
