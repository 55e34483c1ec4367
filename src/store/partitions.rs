//! Daily partitions of `telemetry`: made ahead of time, dropped past the retention. The decoder
//! refuses readings outside `[now - retention, now + skew]`, and partitions always cover one day
//! more than that on each side, so an accepted reading always has a partition to land in.

use anyhow::Context as _;
use chrono::{DateTime, Duration, NaiveDate, Utc};

const LOCK_KEY: i64 = 0x6879_666c_6565_7402;

fn name(day: NaiveDate) -> String {
    format!("telemetry_{}", day.format("%Y%m%d"))
}

/// Create the missing partitions of `[today - retention - 1, today + ahead]` and drop the ones
/// wholly older than that. Returns (created, dropped).
pub async fn maintain(
    client: &tokio_postgres::Client,
    retention_days: u32,
    ahead_days: u32,
    now: DateTime<Utc>,
) -> anyhow::Result<(usize, usize)> {
    let today = now.date_naive();
    let first = today - Duration::days(i64::from(retention_days) + 1);
    let last = today + Duration::days(i64::from(ahead_days.max(1)));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = maintain_locked(client, first, last).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    result
}

async fn maintain_locked(
    client: &tokio_postgres::Client,
    first: NaiveDate,
    last: NaiveDate,
) -> anyhow::Result<(usize, usize)> {
    let existing: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'telemetry'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut created = 0;
    let mut day = first;
    while day <= last {
        let n = name(day);
        if !existing.contains(&n) {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {n} PARTITION OF telemetry
                 FOR VALUES FROM ('{day}T00:00:00Z') TO ('{next}T00:00:00Z')",
                next = day + Duration::days(1)
            );
            client
                .batch_execute(&sql)
                .await
                .with_context(|| format!("cannot create partition {n}"))?;
            created += 1;
        }
        day += Duration::days(1);
    }
    let mut dropped = 0;
    for n in &existing {
        let Some(date) = n
            .strip_prefix("telemetry_")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue;
        };
        if date < first {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {n}"))
                .await
                .with_context(|| format!("cannot drop partition {n}"))?;
            tracing::info!(partition = %n, "dropped partition past retention");
            dropped += 1;
        }
    }
    Ok((created, dropped))
}
