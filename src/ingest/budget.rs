//! Per-device budget: messages and payload bytes a minute, as token buckets refilled evenly
//! that save up for `ingest.device_burst_minutes`. The savings are what lets the backlog of an
//! outage through: while hyfleet is away (or stalled) the buckets keep filling with wall time,
//! and what each device sent meanwhile arrives at once when it is back. A device over budget has its messages refused (`rate_limited`) without being decoded, and
//! its flood is recorded as one reject a minute, not one per message: the rejects table can no
//! more be flooded than the telemetry table. Every refused message is counted.
//!
//! Kept in the batcher's memory, per instance: with several instances sharing a subscription,
//! the broker spreads a device's messages over them, so a device gets up to the budget once per
//! instance. That bounds it still (instances × budget), and needs nothing shared.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use crate::config::IngestConfig;
use crate::domain::{Reject, RejectReason};

/// What to do with a message.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Within budget: decode it.
    Pass,
    /// Over budget, and this one is the flood's record of the minute.
    Record(Reject),
    /// Over budget, counted only.
    Drop,
}

#[derive(Debug)]
struct Bucket {
    messages: f64,
    bytes: f64,
    at: DateTime<Utc>,
    /// When the flood was last recorded as a reject, and what was dropped since.
    recorded: Option<DateTime<Utc>>,
    dropped: u64,
    dropped_bytes: u64,
}

pub struct Budget {
    /// Refill a minute.
    messages: f64,
    bytes: f64,
    /// Capacity: `burst` minutes of refill.
    burst: f64,
    devices: HashMap<String, Bucket>,
    pruned: Option<DateTime<Utc>>,
}

/// The device a topic belongs to: the vehicle id of `{root}/{kind}/{id}/{channel}`, whatever
/// kind it claims (the shipped ACL pins a login to its kind and id; elsewhere, claiming the
/// other kind must not double the budget).
fn device(topic: &str) -> &str {
    topic.rsplit('/').nth(1).unwrap_or(topic)
}

impl Budget {
    pub fn new(config: &IngestConfig) -> Budget {
        Budget {
            messages: f64::from(config.device_messages_per_minute),
            bytes: config.device_bytes_per_minute as f64,
            burst: f64::from(config.device_burst_minutes),
            devices: HashMap::new(),
            pruned: None,
        }
    }

    /// Charge a message of `len` bytes on `topic`, received at `now`, to its device.
    pub fn check(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: DateTime<Utc>,
        vehicle: impl FnOnce() -> Option<String>,
    ) -> Verdict {
        self.prune(now);
        let (rate_m, rate_b) = (self.messages, self.bytes);
        let (cap_m, cap_b) = (rate_m * self.burst, rate_b * self.burst);
        let id = device(topic);
        // Looked up by `&str` first: a known device costs no allocation per message.
        if !self.devices.contains_key(id) {
            let full = Bucket {
                messages: cap_m,
                bytes: cap_b,
                at: now,
                recorded: None,
                dropped: 0,
                dropped_bytes: 0,
            };
            self.devices.insert(id.to_owned(), full);
        }
        let b = self.devices.get_mut(id).expect("inserted above");
        refill(b, (rate_m, rate_b), (cap_m, cap_b), now);
        // A message larger than the whole byte budget could never pass: it costs the whole of
        // it (and the decoder refuses it as `too_large` anyway).
        let cost = (payload.len() as f64).min(cap_b);
        if b.messages >= 1.0 && b.bytes >= cost {
            b.messages -= 1.0;
            b.bytes -= cost;
            return Verdict::Pass;
        }
        b.dropped += 1;
        b.dropped_bytes += payload.len() as u64;
        if b.recorded.is_some_and(|at| now - at < Duration::minutes(1)) {
            return Verdict::Drop;
        }
        let detail = format!(
            "device over its budget of {} messages and {} bytes a minute \
             (ingest.device_messages_per_minute, ingest.device_bytes_per_minute): {} messages \
             ({} bytes) refused since the last record, this one included; its further \
             messages this minute are refused and counted, not recorded",
            rate_m, rate_b, b.dropped, b.dropped_bytes
        );
        b.recorded = Some(now);
        b.dropped = 0;
        b.dropped_bytes = 0;
        Verdict::Record(Reject::new(
            now,
            topic,
            vehicle().as_deref(),
            RejectReason::RateLimited,
            &detail,
            payload,
        ))
    }

    /// Forget devices whose buckets are full again (idle long enough): memory follows the
    /// devices heard from lately, not every id ever seen.
    fn prune(&mut self, now: DateTime<Utc>) {
        if self
            .pruned
            .is_some_and(|at| now - at < Duration::minutes(1))
        {
            return;
        }
        self.pruned = Some(now);
        let rate = (self.messages, self.bytes);
        let (cap_m, cap_b) = (rate.0 * self.burst, rate.1 * self.burst);
        self.devices.retain(|_, b| {
            refill(b, rate, (cap_m, cap_b), now);
            let idle = b.recorded.is_none_or(|at| now - at >= Duration::minutes(1));
            !(idle && b.messages >= cap_m && b.bytes >= cap_b)
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.devices.len()
    }
}

fn refill(b: &mut Bucket, rate: (f64, f64), cap: (f64, f64), now: DateTime<Utc>) {
    let secs = (now - b.at).num_milliseconds().max(0) as f64 / 1000.0;
    b.messages = (b.messages + secs * rate.0 / 60.0).min(cap.0);
    b.bytes = (b.bytes + secs * rate.1 / 60.0).min(cap.1);
    if now > b.at {
        b.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn budget(messages: u32, bytes: u64) -> Budget {
        Budget::new(&IngestConfig {
            device_messages_per_minute: messages,
            device_bytes_per_minute: bytes,
            device_burst_minutes: 1,
            ..IngestConfig::default()
        })
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap()
    }

    const A: &str = "hyfleet/v1/bike/XY-B0001/telemetry";
    const B: &str = "hyfleet/v1/bike/XY-B0002/telemetry";

    fn verdicts(
        b: &mut Budget,
        topic: &str,
        n: usize,
        len: usize,
        at: DateTime<Utc>,
    ) -> [usize; 3] {
        let mut out = [0; 3];
        for _ in 0..n {
            match b.check(topic, &vec![b'x'; len], at, || Some("XY-B0001".into())) {
                Verdict::Pass => out[0] += 1,
                Verdict::Record(_) => out[1] += 1,
                Verdict::Drop => out[2] += 1,
            }
        }
        out
    }

    #[test]
    fn the_device_is_the_vehicle_id_of_its_topic_whatever_the_kind() {
        assert_eq!(device(A), "XY-B0001");
        assert_eq!(device("hyfleet/v1/bus/XY-B0001/event"), "XY-B0001");
        assert_eq!(device("nothing"), "nothing");
    }

    #[test]
    fn a_flood_passes_its_budget_and_is_recorded_once_a_minute() {
        let mut b = budget(60, 1 << 20);
        assert_eq!(verdicts(&mut b, A, 1000, 100, t0()), [60, 1, 939]);
        // Another device is untouched by the first one's flood.
        assert_eq!(verdicts(&mut b, B, 60, 100, t0()), [60, 0, 0]);
        // Ten seconds refill ten messages; the record of this minute is already made.
        let later = t0() + Duration::seconds(10);
        assert_eq!(verdicts(&mut b, A, 100, 100, later), [10, 0, 90]);
        // A minute after the record, the flood is recorded again, with what it dropped.
        let next = t0() + Duration::seconds(60);
        let Verdict::Record(r) = ({
            let _ = verdicts(&mut b, A, 50, 100, next);
            b.check(A, b"x", next, || Some("XY-B0001".into()))
        }) else {
            // The 50 above took the 50 refilled tokens; this one is over budget.
            panic!("expected a record");
        };
        assert_eq!(r.reason, RejectReason::RateLimited);
        assert!(r.detail.contains("1030 messages"), "{}", r.detail);
        assert_eq!(r.vehicle.as_deref(), Some("XY-B0001"));
    }

    #[test]
    fn bytes_are_budgeted_too() {
        let mut b = budget(1000, 10_000);
        assert_eq!(verdicts(&mut b, A, 20, 1000, t0()), [10, 1, 9]);
        // Larger than the whole budget: costs all of it, passes only on a full bucket.
        let mut b = budget(1000, 10_000);
        assert_eq!(verdicts(&mut b, A, 2, 50_000, t0()), [1, 1, 0]);
    }

    #[test]
    fn an_outages_backlog_passes_on_what_the_budget_saved_meanwhile() {
        let mut b = Budget::new(&IngestConfig {
            device_messages_per_minute: 600,
            device_burst_minutes: 70,
            ..IngestConfig::default()
        });
        let t = |s| t0() + Duration::seconds(s);
        // A device heard at 1 Hz, then an hour of hyfleet away: 3600 readings at once.
        assert_eq!(verdicts(&mut b, A, 60, 200, t(0)), [60, 0, 0]);
        assert_eq!(verdicts(&mut b, A, 3600, 200, t(3600)), [3600, 0, 0]);
        // Live, the same device flooding is held to its budget once its savings are spent.
        let [passed, recorded, dropped] = verdicts(&mut b, A, 100_000, 10, t(3600));
        assert_eq!((passed, recorded), (42_000 - 3600, 1), "{dropped}");
    }

    #[test]
    fn idle_devices_are_forgotten() {
        let mut b = budget(60, 1 << 20);
        for n in 0..100 {
            let t = format!("hyfleet/v1/bike/XY-B{n:04}/telemetry");
            b.check(&t, b"x", t0(), || None);
        }
        assert_eq!(b.tracked(), 100);
        b.check(A, b"x", t0() + Duration::minutes(2), || None);
        assert_eq!(b.tracked(), 1);
    }
}
