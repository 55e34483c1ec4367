//! Hostile input: 100,000 random and mutated payloads through the decoder. None may panic;
//! each must end as valid readings or as rejects with a reason; every accepted reading must
//! satisfy the contract's ranges.

use super::*;
use chrono::TimeZone;

/// SplitMix64: small, seeded, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"{"ts":"2026-11-29T09:59:58Z","seq":7,"lat":37.145,"lon":111.781,"speed_kmh":12.5,"h2_g":31.2,"locked":false}"#,
    r#"[{"ts":1795946398000,"lat":37.1,"lon":111.7,"speed_kmh":0,"h2_g":5,"faults":["E1"]},{"ts":"2026-11-29T09:59:00+08:00","lat":37.2,"lon":111.8,"speed_kmh":3.5,"h2_g":9.75,"hdop":1.2}]"#,
    r#"{"vehicle_id":"XY-B0001","ts":"2026-11-29T09:00:00.5Z","lat":-0.0,"lon":180,"speed_kmh":250,"h2_g":60,"extra":{"a":[1,{"b":null}]}}"#,
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "-1",
    "1e400",
    "NaN",
    "\"ts\"",
    "\"lat\"",
    "\"h2_g\"",
    "9999999999999999999999",
    "\u{0}",
    "\\u0000",
    "\\ud800",
    "0.0000001",
    "[[[[[[",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut p = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] = rng.next() as u8;
            }
            1 if !p.is_empty() => {
                let i = rng.below(p.len());
                p.truncate(i);
            }
            2 => {
                let i = rng.below(p.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                p.splice(i..i, t.bytes());
            }
            3 if p.len() > 2 => {
                let a = rng.below(p.len());
                let b = (a + rng.below(16)).min(p.len());
                p.drain(a..b);
            }
            4 => {
                let n = rng.below(64);
                p = (0..n).map(|_| rng.next() as u8).collect();
            }
            _ => {
                let depth = rng.below(200);
                p = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
            }
        }
    }
    p
}

#[test]
fn hundred_thousand_hostile_payloads() {
    let d = Decoder::new(&Config::default());
    let now = Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap();
    let topics = [
        "hyfleet/v1/bike/XY-B0001/telemetry",
        "hyfleet/v1/bus/XY-H0001/telemetry",
        "hyfleet/v1/bike/XY-B0001/event",
        "hyfleet/v1/bike/XY-B0001/status",
        "hyfleet/v1/bike/XY-B0001/nope",
    ];
    let mut rng = Rng(0x6879_666c_6565_7421);
    let (mut accepted, mut rejected) = (0usize, 0usize);
    for _ in 0..100_000 {
        let seed = SEEDS[rng.below(SEEDS.len())].as_bytes();
        let payload = mutate(&mut rng, seed);
        let topic = topics[rng.below(topics.len())];
        let mut out = Decoded::default();
        d.decode(topic, &payload, now, &mut out);
        super::assert_within_contract(&out, now);
        accepted += out.readings.len() + out.events.len() + out.statuses.len();
        rejected += out.rejects.len();
    }
    // The mutations must exercise both outcomes, or this test proves nothing.
    assert!(accepted > 500, "accepted {accepted}");
    assert!(rejected > 50_000, "rejected {rejected}");
}
