//! Topics of the MQTT contract: `{root}/{kind}/{vehicle_id}/{channel}`.

use crate::domain::{VehicleId, VehicleKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Telemetry,
    Event,
    Status,
    /// Commands go down to vehicles; the backend sees its own and ignores them.
    Cmd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub kind: VehicleKind,
    pub vehicle: VehicleId,
    pub channel: Channel,
}

/// Why a topic is outside the contract, for the reject's detail.
pub fn parse(root: &str, topic: &str) -> Result<Topic, String> {
    let rest = topic
        .strip_prefix(root)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| format!("topic is not under the root `{root}`"))?;
    let mut parts = rest.split('/');
    let (Some(kind), Some(id), Some(channel), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected {root}/{kind}/{vehicle_id}/{channel}".into());
    };
    let kind = VehicleKind::parse(kind)
        .ok_or_else(|| format!("unknown vehicle kind `{kind}` (bike or bus)"))?;
    let vehicle = VehicleId::parse(id)
        .ok_or_else(|| "vehicle id must match ^[A-Za-z0-9_-]{1,32}$".to_owned())?;
    let channel = match channel {
        "telemetry" => Channel::Telemetry,
        "event" => Channel::Event,
        "status" => Channel::Status,
        "cmd" => Channel::Cmd,
        other => return Err(format!("unknown channel `{other}`")),
    };
    Ok(Topic {
        kind,
        vehicle,
        channel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contract_topics() {
        let t = parse("hyfleet/v1", "hyfleet/v1/bike/XY-B0001/telemetry").unwrap();
        assert_eq!(t.kind, VehicleKind::Bike);
        assert_eq!(t.vehicle.as_str(), "XY-B0001");
        assert_eq!(t.channel, Channel::Telemetry);
        let t = parse("t/1", "t/1/bus/XY-H0001/status").unwrap();
        assert_eq!(t.channel, Channel::Status);
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "other/bike/XY-B0001/telemetry",
            "hyfleet/v1/car/XY-B0001/telemetry",
            "hyfleet/v1/bike/XY B0001/telemetry",
            "hyfleet/v1/bike/XY-B0001/telemetry/extra",
            "hyfleet/v1/bike/XY-B0001/gps",
            "hyfleet/v1/bike//telemetry",
            "hyfleet/v1/bike/XY-B0001",
            "hyfleet/v1x/bike/XY-B0001/telemetry",
            "hyfleet/v1/bike/0123456789012345678901234567890123/telemetry",
        ] {
            assert!(parse("hyfleet/v1", bad).is_err(), "{bad}");
        }
    }
}
