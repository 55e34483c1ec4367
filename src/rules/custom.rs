//! Custom rules: CEL expressions over `reading`, `vehicle`, `zone` (the most specific zone
//! the vehicle is in, or null) and `zones` (every zone it is in).
//!
//! An expression is compiled and tried on a sample when the configuration loads, so that a
//! typo is refused with its position. At run time an expression that errs, or yields
//! something other than a boolean, says nothing (the alert stays as it is): it can never stop
//! ingest.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cel::{Context, Program, Value as Cel};
use chrono::TimeZone;

use super::builtin::Verdict;
use super::config::CustomRuleConfig;
use super::engine::VehicleInfo;
use super::state::{VehicleRuleState, split_key};
use crate::domain::Profiles;
use crate::domain::{Reading, VehicleId, VehicleKind};
use crate::geo::{ZoneHit, ZoneKind};

#[derive(Debug, Clone)]
pub(crate) struct CustomRule {
    config: CustomRuleConfig,
    when: Arc<Program>,
    clear_when: Option<Arc<Program>>,
}

impl CustomRule {
    pub fn new(config: CustomRuleConfig) -> Result<Self, (String, String)> {
        let when = Arc::new(compile(&config.when).map_err(|m| ("custom.when".to_owned(), m))?);
        let clear_when = match &config.clear_when {
            Some(src) => Some(Arc::new(
                compile(src).map_err(|m| ("custom.clear_when".to_owned(), m))?,
            )),
            None => None,
        };
        Ok(Self {
            config,
            when,
            clear_when,
        })
    }

    pub fn config(&self) -> &CustomRuleConfig {
        &self.config
    }

    pub fn applies_to(&self, kind: VehicleKind) -> bool {
        self.config.kinds.is_empty() || self.config.kinds.contains(&kind)
    }

    pub fn evaluate(
        &self,
        env: &Arc<cel::Env>,
        r: &Reading,
        vehicle: &Cel,
        zones: &[ZoneHit<'_>],
    ) -> Verdict {
        let Ok(reading) = cel::to_value(r) else {
            return Verdict::Unknown;
        };
        let zone_values: Vec<Cel> = zones.iter().map(zone_value).collect();
        let zone = most_specific(zones).map_or(Cel::Null, zone_value);
        let vars = Vars {
            reading,
            vehicle: vehicle.clone(),
            zone,
            zones: Cel::List(Arc::new(zone_values)),
        };
        match run(env, &self.when, &vars) {
            Some(true) => {
                let details = serde_json::json!({"expression": self.config.when});
                Verdict::Active(self.config.severity, details)
            }
            Some(false) => match &self.clear_when {
                None => Verdict::Clear,
                Some(p) => match run(env, p, &vars) {
                    Some(true) => Verdict::Clear,
                    Some(false) => Verdict::Keep,
                    None => Verdict::Unknown,
                },
            },
            None => Verdict::Unknown,
        }
    }
}

struct Vars {
    reading: Cel,
    vehicle: Cel,
    zone: Cel,
    zones: Cel,
}

fn run(env: &Arc<cel::Env>, program: &Program, vars: &Vars) -> Option<bool> {
    let mut ctx = Context::with_env(Arc::clone(env));
    ctx.add_variable_from_value("reading", vars.reading.clone());
    ctx.add_variable_from_value("vehicle", vars.vehicle.clone());
    ctx.add_variable_from_value("zone", vars.zone.clone());
    ctx.add_variable_from_value("zones", vars.zones.clone());
    // An interpreter bug must not take ingest down with it.
    match catch_unwind(AssertUnwindSafe(|| program.execute(&ctx))) {
        Ok(Ok(Cel::Bool(b))) => Some(b),
        _ => None,
    }
}

fn map(pairs: Vec<(&str, Cel)>) -> Cel {
    let m: HashMap<String, Cel> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Cel::from(m)
}

fn opt_f(v: Option<f32>) -> Cel {
    v.map_or(Cel::Null, |x| Cel::Float(x as f64))
}

/// `vehicle` as the expressions see it.
pub(crate) fn vehicle_value(
    state: &VehicleRuleState,
    info: &VehicleInfo,
    km_per_g: f32,
    profiles: &Profiles,
) -> Cel {
    let tank = if info.tank_g > 0.0 {
        info.tank_g
    } else {
        profiles.get(info.kind).tank_g
    };
    let open: Vec<Cel> = state
        .alerts
        .iter()
        .filter(|(_, s)| s.open.is_some())
        .map(|(k, _)| Cel::from(split_key(k).0.to_owned()))
        .collect();
    map(vec![
        ("kind", Cel::from(info.kind.as_str())),
        ("tank_g", Cel::Float(tank as f64)),
        ("h2_g", opt_f(state.h2_g)),
        ("h2_pct", opt_f(state.h2_g.map(|h| h / tank * 100.0))),
        ("km_per_g", Cel::Float(km_per_g as f64)),
        ("range_km", opt_f(state.h2_g.map(|h| h * km_per_g))),
        ("locked", state.locked.map_or(Cel::Null, Cel::Bool)),
        ("riding", Cel::Bool(state.ride.is_some())),
        ("open_alerts", Cel::List(Arc::new(open))),
    ])
}

fn zone_value(h: &ZoneHit<'_>) -> Cel {
    map(vec![
        ("id", Cel::from(h.zone.id.clone())),
        ("name", Cel::from(h.zone.name.clone())),
        ("kind", Cel::from(h.zone.kind.as_str())),
        ("max_speed_kmh", opt_f(h.zone.max_speed_kmh)),
        ("depth_m", Cel::Float(-h.signed_m)),
    ])
}

/// The zone that says most about where the vehicle is: a service area is the backdrop.
fn most_specific<'a, 'b>(zones: &'b [ZoneHit<'a>]) -> Option<&'b ZoneHit<'a>> {
    let rank = |k: ZoneKind| match k {
        ZoneKind::NoParking => 0,
        ZoneKind::Station => 1,
        ZoneKind::Parking => 2,
        ZoneKind::Slow => 3,
        ZoneKind::ServiceArea => 4,
    };
    zones
        .iter()
        .filter(|h| h.signed_m <= 0.0)
        .min_by_key(|h| rank(h.zone.kind))
}

/// Compile `src` and try it on a sample with every field present, so that a syntax error, an
/// unknown name or a non-boolean result is refused now rather than ignored forever later.
pub(crate) fn compile(src: &str) -> Result<Program, String> {
    if src.trim().is_empty() {
        return Err("the expression is empty".into());
    }
    let program = Program::compile(src).map_err(|errs| match errs.errors.first() {
        Some(e) => format!(
            "CEL syntax error at line {}, column {}: {} (in `{src}`)",
            e.pos.0, e.pos.1, e.msg
        ),
        None => format!("CEL syntax error in `{src}`"),
    })?;
    let env = Arc::new(cel::Env::stdlib());
    let vars = sample_vars();
    let mut ctx = Context::with_env(Arc::clone(&env));
    ctx.add_variable_from_value("reading", vars.reading);
    ctx.add_variable_from_value("vehicle", vars.vehicle);
    ctx.add_variable_from_value("zone", vars.zone);
    ctx.add_variable_from_value("zones", vars.zones);
    match catch_unwind(AssertUnwindSafe(|| program.execute(&ctx))) {
        Ok(Ok(Cel::Bool(_))) => Ok(program),
        Ok(Ok(other)) => Err(format!(
            "`{src}` must yield a boolean, it yields {:?} on a sample reading",
            other.type_of()
        )),
        Ok(Err(e)) => Err(format!(
            "`{src}` fails on a sample reading: {e} (names available: reading, vehicle, zone, zones)"
        )),
        Err(_) => Err(format!("`{src}` cannot be evaluated")),
    }
}

fn sample_vars() -> Vars {
    let r = Reading {
        vehicle: VehicleId::parse("XY-B0001").expect("valid sample id"),
        kind: VehicleKind::Bike,
        ts: chrono::Utc.with_ymd_and_hms(2024, 4, 29, 8, 0, 0).unwrap(),
        seq: Some(1),
        lat: 37.145,
        lon: 111.781,
        hdop: Some(0.9),
        speed_kmh: 12.0,
        heading_deg: Some(90.0),
        h2_g: 30.0,
        h2_pressure_bar: Some(12.0),
        tank_temp_c: Some(20.0),
        fc_power_w: Some(250.0),
        fc_temp_c: Some(45.0),
        batt_v: Some(12.6),
        odo_km: Some(100.0),
        locked: Some(false),
        faults: vec!["E01".into()],
        extra: Some(Default::default()),
    };
    let state = VehicleRuleState {
        h2_g: Some(30.0),
        locked: Some(false),
        ..Default::default()
    };
    let info = VehicleInfo {
        kind: VehicleKind::Bike,
        tank_g: 50.0,
        km_per_g: None,
    };
    let zone = map(vec![
        ("id", Cel::from("P-001")),
        ("name", Cel::from("sample")),
        ("kind", Cel::from("parking")),
        ("max_speed_kmh", Cel::Float(10.0)),
        ("depth_m", Cel::Float(5.0)),
    ]);
    Vars {
        reading: cel::to_value(&r).expect("a reading serializes"),
        vehicle: vehicle_value(&state, &info, 1.2, &Profiles::default()),
        zone: zone.clone(),
        zones: Cel::List(Arc::new(vec![zone])),
    }
}
