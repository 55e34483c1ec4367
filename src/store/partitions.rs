//! Daily partitions of `telemetry`: made ahead of time, dropped past the retention, their
//! unique index rebuilt once the day is over (in the background: see [`compact`]), and their
//! readings packed per vehicle and hour once older still (see [`pack`]). The decoder refuses readings outside
//! `[now - retention, now + skew]`, and partitions always cover one day more than that on each
//! side, so an accepted reading always has a partition to land in.

use anyhow::Context as _;
use chrono::{DateTime, Duration, NaiveDate, Utc};

const LOCK_KEY: i64 = 0x6879_666c_6565_7402;
/// Held while one instance rebuilds indexes, which may take minutes on a full day.
const COMPACT_LOCK_KEY: i64 = 0x6879_666c_6565_7403;
/// Held exclusively (per transaction) while a partition is packed, and shared by a batch
/// writer storing readings older than [`unpacked_from`]: such a reading is checked against the
/// packs, which must not change under the check.
pub const PACK_LOCK_KEY: i64 = 0x6879_666c_6565_7404;

fn name(day: NaiveDate) -> String {
    format!("telemetry_{}", day.format("%Y%m%d"))
}

/// The day a partition named by [`name`] holds.
fn day_of(partition: &str) -> Option<NaiveDate> {
    partition
        .strip_prefix("telemetry_")
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
}

/// The partitions of `telemetry` by name, oldest day first.
async fn existing(client: &tokio_postgres::Client) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT c.relname::text FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'telemetry' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
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
    let existing = existing(client).await?;
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
        if day_of(n).is_some_and(|date| date < first) {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {n}"))
                .await
                .with_context(|| format!("cannot drop partition {n}"))?;
            tracing::info!(partition = %n, "dropped partition past retention");
            dropped += 1;
        }
    }
    let first_ts = first.and_time(chrono::NaiveTime::MIN).and_utc();
    client
        .execute("DELETE FROM telemetry_packed WHERE hour < $1", &[&first_ts])
        .await
        .context("cannot delete packs past retention")?;
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
        let Some(day) = day_of(&partition) else {
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

/// Readings from this time on (the start of yesterday) are never in a pack, so a batch writer
/// looks only older ones up in the packs, under [`PACK_LOCK_KEY`]: a backlog of the last day
/// or so never waits for a packer. See [`packable`] for why clocks a little apart do not matter.
pub fn unpacked_from(now: DateTime<Utc>) -> DateTime<Utc> {
    (now.date_naive() - Duration::days(1))
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
}

/// Whether the partition of `day` is old enough to pack: it ended `after_days` days (one at
/// least) and an hour before `now`. The hour is the margin for clocks apart: a packer an hour
/// ahead of a writer still packs nothing from that writer's [`unpacked_from`] on.
pub fn packable(day: NaiveDate, now: DateTime<Utc>, after_days: u32) -> bool {
    let end = (day + Duration::days(1))
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    end + Duration::days(i64::from(after_days.max(1))) + Duration::hours(1) <= now
}

/// Move the readings of every [`packable`] partition into `telemetry_packed` (one row per vehicle and hour, see migration 0007); returns how
/// many partitions and readings. Partitions already packed are empty and skipped, unless late
/// readings arrived since, which are merged into their packs. One transaction per partition.
pub async fn pack(
    client: &mut tokio_postgres::Client,
    now: DateTime<Utc>,
    after_days: u32,
) -> anyhow::Result<(usize, i64)> {
    let (mut partitions, mut readings) = (0, 0);
    for name in existing(client).await? {
        if !day_of(&name).is_some_and(|day| packable(day, now, after_days)) {
            continue;
        }
        let empty: bool = client
            .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {name})"), &[])
            .await?
            .get(0);
        if empty {
            continue;
        }
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PACK_LOCK_KEY])
            .await?;
        let moved: i64 = tx
            .query_one("SELECT telemetry_pack($1::text::regclass)", &[&name])
            .await
            .with_context(|| format!("cannot pack partition {name}"))?
            .get(0);
        tx.commit().await?;
        // Another instance may have packed it while this one waited for the lock.
        if moved > 0 {
            tracing::info!(partition = %name, readings = moved, "partition packed");
            partitions += 1;
            readings += moved;
        }
    }
    Ok((partitions, readings))
}

/// Delete the events and rejects past their retention, and each vehicle's rejects beyond
/// `rejects_max_per_vehicle` (the oldest); returns (events, rejects) deleted. Telemetry has
/// its partitions; these tables are what else a device fills, one row per message.
pub async fn expire_records(
    client: &tokio_postgres::Client,
    store: &crate::config::StoreConfig,
    now: DateTime<Utc>,
) -> anyhow::Result<(u64, u64)> {
    let events_before = now - Duration::days(store.event_retention_days.into());
    let events = client
        .execute("DELETE FROM events WHERE ts < $1", &[&events_before])
        .await
        .context("cannot delete events past retention")?;
    let rejects_before = now - Duration::days(store.reject_retention_days.into());
    let mut rejects = client
        .execute(
            "DELETE FROM rejects WHERE received_at < $1",
            &[&rejects_before],
        )
        .await
        .context("cannot delete rejects past retention")?;
    let cap = i64::from(store.rejects_max_per_vehicle);
    rejects += client
        .execute(
            "WITH over AS (
                 SELECT vehicle FROM rejects GROUP BY vehicle HAVING count(*) > $1),
             ranked AS (
                 SELECT r.id, row_number() OVER (
                     PARTITION BY r.vehicle ORDER BY r.received_at DESC, r.id DESC) AS n
                 FROM rejects r JOIN over o ON r.vehicle IS NOT DISTINCT FROM o.vehicle)
             DELETE FROM rejects WHERE id IN (SELECT id FROM ranked WHERE n > $1)",
            &[&cap],
        )
        .await
        .context("cannot delete rejects beyond the per-vehicle cap")?;
    Ok((events, rejects))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the time of day, a packer whose clock is up to an hour ahead of a writer's
    /// packs no day the writer stores without looking in the packs; and a day is packed at
    /// the latest `after_days` days and two hours after it ended.
    #[test]
    fn the_packer_never_reaches_what_writers_store_unchecked() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let mut writer = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
        let until = writer + Duration::days(6);
        while writer < until {
            for after_days in [1, 2, 7] {
                let packer = writer + Duration::minutes(59);
                for d in 0..10 {
                    let d = day - Duration::days(3) + Duration::days(d);
                    let end = (d + Duration::days(1))
                        .and_time(chrono::NaiveTime::MIN)
                        .and_utc();
                    if packable(d, packer, after_days) {
                        assert!(end <= unpacked_from(writer), "{d} at {writer}");
                    }
                    let due = end + Duration::days(i64::from(after_days)) + Duration::hours(2);
                    if writer >= due {
                        assert!(packable(d, writer, after_days), "{d} at {writer}");
                    }
                }
            }
            writer += Duration::minutes(7);
        }
        assert!(!packable(
            day,
            day.and_hms_opt(12, 0, 0).unwrap().and_utc(),
            0
        ));
    }
}
