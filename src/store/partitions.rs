//! Daily partitions of `telemetry`: made ahead of time, dropped past the retention, and their
//! unique index rebuilt once the day is over (in the background: see [`compact`]). The decoder refuses readings outside
//! `[now - retention, now + skew]`, and partitions always cover one day more than that on each
//! side, so an accepted reading always has a partition to land in.

use anyhow::Context as _;
use chrono::{DateTime, Duration, NaiveDate, Utc};

const LOCK_KEY: i64 = 0x6879_666c_6565_7402;
/// Held while one instance rebuilds indexes, which may take minutes on a full day.
const COMPACT_LOCK_KEY: i64 = 0x6879_666c_6565_7403;

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

/// Rebuild the unique index of every partition of a day before today that was not rebuilt
/// yet; returns how many. Readings of many vehicles arrive interleaved, so each vehicle's part
/// of the index grows in the middle and its leaf pages split half-full; rebuilt, they are
/// packed to 90 % (about 40 bytes a reading instead of 58). `CONCURRENTLY`: late readings still
/// go in. One instance at a time; the others skip the round.
pub async fn compact(client: &tokio_postgres::Client, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&COMPACT_LOCK_KEY])
        .await?
        .get(0);
    if !locked {
        return Ok(0);
    }
    let result = compact_locked(client, now.date_naive()).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&COMPACT_LOCK_KEY])
        .await?;
    result
}

async fn compact_locked(
    client: &tokio_postgres::Client,
    today: NaiveDate,
) -> anyhow::Result<usize> {
    let rows = client
        .query(
            "SELECT c.relname::text, i.relname::text, pg_relation_size(i.oid)
             FROM pg_inherits h
             JOIN pg_class c ON c.oid = h.inhrelid
             JOIN pg_class p ON p.oid = h.inhparent AND p.relname = 'telemetry'
             JOIN pg_index x ON x.indrelid = c.oid AND x.indisunique
             JOIN pg_class i ON i.oid = x.indexrelid
             WHERE NOT EXISTS (SELECT 1 FROM telemetry_compacted d WHERE d.partition = c.relname)
             ORDER BY c.relname",
            &[],
        )
        .await
        .context("listing partitions to compact")?;
    let mut compacted = 0;
    for row in rows {
        let (partition, index, before): (String, String, i64) =
            (row.get(0), row.get(1), row.get(2));
        let Some(day) = partition
            .strip_prefix("telemetry_")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue;
        };
        // Today's fills on; an empty index (its meta page and a root) has nothing to pack.
        if day >= today || before <= 2 * 8192 {
            continue;
        }
        client
            .batch_execute(&format!("REINDEX INDEX CONCURRENTLY \"{index}\""))
            .await
            .with_context(|| format!("cannot rebuild index {index}"))?;
        let after: i64 = client
            .query_one(
                "INSERT INTO telemetry_compacted (partition, index_bytes_before, index_bytes_after)
                 VALUES ($1, $2, pg_relation_size($3::text::regclass))
                 ON CONFLICT (partition) DO UPDATE SET compacted_at = now()
                 RETURNING index_bytes_after",
                &[&partition, &before, &index],
            )
            .await?
            .get(0);
        tracing::info!(%partition, before, after, "closed partition's index rebuilt");
        compacted += 1;
    }
    Ok(compacted)
}
