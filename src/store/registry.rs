//! Vehicle ids to database ids, cached: telemetry rows carry the 4-byte database id, not the
//! fleet's text id. Unknown vehicles are registered with their kind's profile on first sight,
//! and that kind is theirs for good (ingest refuses what they send under another).

use std::collections::HashMap;
use std::sync::RwLock;

use crate::domain::Profiles;
use crate::domain::{VehicleId, VehicleKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VehicleRef {
    pub id: i32,
    pub kind: VehicleKind,
}

#[derive(Default)]
pub struct Registry {
    known: RwLock<HashMap<VehicleId, VehicleRef>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, id: &VehicleId) -> Option<VehicleRef> {
        self.known.read().expect("registry lock").get(id).copied()
    }

    /// Database ids of `wanted`, registering the missing ones when `register` is set. Vehicles
    /// that stay unknown are absent from the answer.
    pub async fn resolve(
        &self,
        client: &tokio_postgres::Client,
        wanted: &[(VehicleId, VehicleKind)],
        register: bool,
        profiles: &Profiles,
    ) -> Result<HashMap<VehicleId, VehicleRef>, tokio_postgres::Error> {
        let mut out = HashMap::with_capacity(wanted.len());
        let mut missing: Vec<&(VehicleId, VehicleKind)> = Vec::new();
        {
            let known = self.known.read().expect("registry lock");
            for w in wanted {
                match known.get(&w.0) {
                    Some(r) => {
                        out.insert(w.0.clone(), *r);
                    }
                    None => missing.push(w),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        missing.sort_by(|a, b| a.0.cmp(&b.0));
        missing.dedup_by(|a, b| a.0 == b.0);
        let codes: Vec<&str> = missing.iter().map(|m| m.0.as_str()).collect();
        if register {
            let kinds: Vec<&str> = missing.iter().map(|m| m.1.as_str()).collect();
            let tank: Vec<f32> = missing.iter().map(|m| profiles.get(m.1).tank_g).collect();
            let cap: Vec<f32> = missing
                .iter()
                .map(|m| profiles.get(m.1).speed_cap_kmh)
                .collect();
            let kpg: Vec<f32> = missing
                .iter()
                .map(|m| profiles.get(m.1).km_per_g())
                .collect();
            client
                .execute(
                    "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::real[], $4::real[], $5::real[])
                     ORDER BY 1
                     ON CONFLICT (code) DO NOTHING",
                    &[&codes, &kinds, &tank, &cap, &kpg],
                )
                .await?;
        }
        let rows = client
            .query(
                "SELECT id, code, kind FROM vehicles WHERE code = ANY($1)",
                &[&codes],
            )
            .await?;
        let mut known = self.known.write().expect("registry lock");
        for row in rows {
            let code: String = row.get(1);
            let kind: String = row.get(2);
            let (Some(vid), Some(kind)) = (VehicleId::parse(&code), VehicleKind::parse(&kind))
            else {
                continue;
            };
            let r = VehicleRef {
                id: row.get(0),
                kind,
            };
            known.insert(vid.clone(), r);
            out.insert(vid, r);
        }
        Ok(out)
    }
}
