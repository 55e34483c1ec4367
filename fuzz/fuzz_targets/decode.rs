//! Any bytes on any of the contract's topics: the decoder never panics, every reading it
//! accepts is within the contract's ranges, and every refusal says why.

#![no_main]

use chrono::{TimeZone as _, Utc};
use hyfleet::config::Config;
use hyfleet::decode::{Decoded, Decoder};
use libfuzzer_sys::fuzz_target;

const TOPICS: [&str; 6] = [
    "hyfleet/v1/bike/XY-B0001/telemetry",
    "hyfleet/v1/bus/XY-H0001/telemetry",
    "hyfleet/v1/bike/XY-B0001/event",
    "hyfleet/v1/bike/XY-B0001/status",
    "hyfleet/v1/bike/XY-B0001/nope",
    "hyfleet/v1/car/XY-B0001/telemetry",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let decoder = Decoder::new(&Config::default());
    let now = Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap();
    let mut out = Decoded::default();
    decoder.decode(TOPICS[usize::from(pick) % TOPICS.len()], payload, now, &mut out);
    hyfleet::decode::assert_within_contract(&out, now);
});
