use chrono::{DateTime, Duration, TimeZone, Utc};

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap()
}

/// One reading a second from `t0()`: seq `s` at second `at`.
fn r(at: i64, s: i64) -> (DateTime<Utc>, i64) {
    (t0() + Duration::seconds(at), s)
}

fn total(m: &Merged) -> i64 {
    m.hours.iter().map(|h| h.missing).sum()
}

/// Every reading of `rs`, delivered in one batch to an empty store.
fn fresh(rs: &[(DateTime<Utc>, i64)]) -> Merged {
    merge(Vec::new(), hour_of(rs[0].0), rs)
}

/// The naive count over the readings in time order, to check the stretches against.
fn naive(rs: &[(DateTime<Utc>, i64)]) -> i64 {
    let mut v = rs.to_vec();
    v.sort();
    v.windows(2).map(|w| gap(w[0].1, w[1].1)).sum()
}

#[test]
fn a_gap_in_seq_is_missing_readings() {
    let rs: Vec<_> = (1..=10)
        .filter(|s| ![4, 5].contains(s))
        .map(|s| r(s, s))
        .collect();
    let m = fresh(&rs);
    assert_eq!(total(&m), 2);
    assert_eq!(m.delta, 2);
    assert_eq!(m.hours[0].received(), 8);
}

#[test]
fn a_fall_of_seq_is_a_restart_not_a_gap() {
    let mut rs: Vec<_> = (0..10).map(|i| r(i, 100 + i)).collect();
    rs.extend((0..5).map(|i| r(20 + i, i)));
    let m = fresh(&rs);
    assert_eq!(total(&m), 0);
    assert_eq!(m.hours[0].stretches.len(), 2);
}

#[test]
fn a_late_backlog_fills_its_gap_in_any_order() {
    let first: Vec<_> = [1, 2, 3, 8, 9, 10].iter().map(|&s| r(s, s)).collect();
    let m = fresh(&first);
    assert_eq!(total(&m), 4);
    // The backlog arrives backwards, in two batches.
    let m = merge(m.hours, hour_of(t0()), &[r(7, 7), r(6, 6)]);
    assert_eq!((total(&m), m.delta), (2, -2));
    let m = merge(m.hours, hour_of(t0()), &[r(5, 5), r(4, 4)]);
    assert_eq!((total(&m), m.delta), (0, -2));
    assert_eq!(m.hours[0].received(), 10);
}

#[test]
fn a_gap_across_hours_counts_in_the_hour_of_the_reading_after_it() {
    let a = r(3590, 1);
    let b = r(3600 + 600, 700);
    let m = fresh(&[a, b]);
    assert_eq!(m.hours.len(), 2);
    assert_eq!((m.hours[0].missing, m.hours[1].missing), (0, 698));
    // Readings of the hour in between, late: the gap is split around them.
    let mid = hour_of(t0());
    let m = merge(m.hours, mid, &[r(3600 + 60, 60), r(3600 + 61, 61)]);
    assert_eq!(m.hours[1].missing, 58 + 638);
    assert_eq!(total(&m), 696);
    assert_eq!(m.delta, -2);
}

#[test]
fn a_backlog_in_an_earlier_empty_hour_recounts_the_hour_after_it() {
    // Stored: hour 8 (seq 1..=10) and hour 10 (seq 7211..=7220); hour 9 is empty.
    let h8: Vec<_> = (1..=10).map(|s| r(s, s)).collect();
    let h10: Vec<_> = (7211..=7220).map(|s| r(s, s)).collect();
    let m = fresh(&h8);
    let m = merge(m.hours, hour_of(t0()), &h10);
    assert_eq!(total(&m), 7200);
    // The backlog of hour 9 comes: only `from` hour 9 on is read back (hour 8 is `prev`).
    let nine = hour_of(t0()) + Duration::hours(1);
    let backlog: Vec<_> = (11..=7210)
        .map(|s| r(s, s))
        .filter(|(t, _)| hour_of(*t) == nine)
        .collect();
    let m = merge(m.hours, nine, &backlog);
    assert_eq!(m.hours.len(), 2, "hours from 9 on");
    // Hour 9 misses what lies between hour 8's seq 10 and its own 3600; hour 10 what lies
    // between 7199 and 7211.
    assert_eq!((m.hours[0].missing, m.hours[1].missing), (3589, 11));
    assert_eq!(m.delta, -(backlog.len() as i64));
    assert!(
        m.changed.contains(&1),
        "hour 10 is stored again: {:?}",
        m.changed
    );
}

#[test]
fn stretches_match_the_naive_count_whatever_the_arrival_order() {
    // Two firmware runs with holes, delivered in a scrambled order, one reading per batch.
    let mut rs: Vec<_> = (0..300)
        .filter(|i| i % 7 != 3)
        .map(|i| r(i, 1000 + i))
        .collect();
    rs.extend((0..200).filter(|i| i % 11 != 5).map(|i| r(400 + i, i)));
    let want = naive(&rs);
    let mut order: Vec<usize> = (0..rs.len()).collect();
    let mut x = 17usize;
    for i in (1..order.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) % (i + 1));
    }
    let mut hours = Vec::new();
    let mut sum = 0;
    for i in order {
        let m = merge(hours, hour_of(t0()), &[rs[i]]);
        sum += m.delta;
        hours = m.hours;
    }
    let got: i64 = hours.iter().map(|h| h.missing).sum();
    assert_eq!(got, want);
    assert_eq!(sum, want);
}

#[test]
fn the_rule_opens_above_the_share_and_clears_below_the_lower_one() {
    let cfg = TelemetryGapConfig::default();
    let hour = |received: i64, missing: i64| {
        let mut h = Hour::new(t0());
        h.stretches.push(Stretch {
            t0: t0(),
            t1: t0(),
            s0: 0,
            s1: received + missing - 1,
            n: received,
        });
        h.missing = missing;
        h
    };
    let (bad, between, good) = (hour(90, 10), hour(96, 4), hour(98, 2));
    assert!(matches!(verdict(&[&good, &bad], &cfg), Verdict::Active(..)));
    assert_eq!(verdict(&[&good, &between], &cfg), Verdict::Keep);
    assert_eq!(verdict(&[&good], &cfg), Verdict::Clear);
    assert_eq!(verdict(&[], &cfg), Verdict::Clear);
    let Verdict::Active(_, d) = verdict(&[&bad], &cfg) else {
        unreachable!()
    };
    assert_eq!(
        (d["missing"].as_i64(), d["received"].as_i64()),
        (Some(10), Some(90))
    );
}

#[test]
fn shares_are_checked() {
    let mut c = TelemetryGapConfig::default();
    assert!(c.validate().is_ok());
    c.clear_missing_share = 0.2;
    assert_eq!(
        c.validate().unwrap_err().0,
        "telemetry_gap.clear_missing_share"
    );
    c = TelemetryGapConfig {
        max_missing_share: 1.5,
        ..Default::default()
    };
    assert_eq!(
        c.validate().unwrap_err().0,
        "telemetry_gap.max_missing_share"
    );
}

#[test]
fn seq_jumping_about_keeps_the_hour_small_and_counts_every_reading() {
    let mut h = Hour::new(t0());
    let mut x = 99u64;
    for i in 0..3600 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        h.add(t0() + Duration::seconds(i), (x >> 40) as i64);
    }
    assert!(h.stretches.len() <= 32, "{} stretches", h.stretches.len());
    assert_eq!(h.received(), 3600);
}
