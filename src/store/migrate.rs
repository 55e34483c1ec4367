//! Numbered SQL migrations from `schemas/migrations/`, applied once each, in order, under an
//! advisory lock so that several instances starting together do not race.

use anyhow::Context as _;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

const LOCK_KEY: i64 = 0x6879_666c_6565_7401; // "hyfleet" + 1

pub async fn apply(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .context("cannot create schema_migrations")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_locked(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    result
}

async fn apply_locked(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let applied: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let sql = format!(
            "BEGIN;\n{sql}\n;INSERT INTO schema_migrations (version, name) VALUES ({version}, '{name}');\nCOMMIT;"
        );
        if let Err(e) = client.batch_execute(&sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e).with_context(|| format!("migration {name} failed"));
        }
        tracing::info!(migration = name, "applied migration");
    }
    Ok(())
}

/// The newest migration this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}
