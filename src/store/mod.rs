//! PostgreSQL: the database itself (creation, migrations, partitions, pools) and one
//! repository per concept, each owning its SQL and row mapping: `telemetry`, `vehicles`,
//! `rollup`, `records` (events, rejects), `completeness`, `alerts`, `rides`, `zones`, and
//! `queries` (the API's reads). Nothing here decides what data means: no rules, no webhooks,
//! no live feed; ingest's unit of work calls these in one transaction.

pub mod alerts;
pub mod completeness;
mod copy;
pub mod jsonb;
pub mod local_server;
pub mod migrate;
pub mod partitions;
pub mod queries;
pub mod records;
pub mod registry;
pub mod rides;
pub mod rollup;
pub mod telemetry;
pub mod vehicles;
pub mod zones;

use std::str::FromStr;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

pub use registry::Registry;

/// Parse a `postgres://` URL. The error names neither the URL nor the parser's complaint,
/// either of which could carry the password.
pub fn pg_config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url).map_err(|_| {
        anyhow::anyhow!(
            "invalid database URL (not shown, it may hold a password): expected \
             postgres://user[:password]@host[:port]/dbname"
        )
    })
}

/// One connection, its driver task spawned on the current runtime.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let config = pg_config(url)?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// A pool for background work (the webhook worker, the offline sweep, zone reload, partition
/// upkeep), sized by the caller to one connection per task, so that none of them ever waits
/// for another; ingest writers hold their own connections, and the API has its own pool.
pub fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    build_pool(pg_config(url)?, size, None)
}

/// A pool for the API (operators' requests and token look-ups) or the public feeds, each its
/// own. A request waits at most `wait` for a connection, and every statement on these
/// connections is cancelled after `statement_timeout`: however heavy the queries, they hold
/// only this pool's connections, and only for so long.
pub fn api_pool(
    url: &str,
    size: usize,
    wait: std::time::Duration,
    statement_timeout: std::time::Duration,
) -> anyhow::Result<Pool> {
    let mut config = pg_config(url)?;
    let timeout = format!("-c statement_timeout={}", statement_timeout.as_millis());
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {timeout}"),
        _ => timeout,
    };
    config.options(&options);
    build_pool(config, size, Some(wait))
}

fn build_pool(
    config: tokio_postgres::Config,
    size: usize,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(wait)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("cannot build the database pool")
}

/// Create the database named in `url` if it does not exist, then apply the migrations.
pub async fn prepare_database(url: &str) -> anyhow::Result<()> {
    create_database_if_missing(url).await?;
    let client = connect(url).await?;
    migrate::apply(&client).await
}

async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let config = pg_config(url)?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    match config.connect(NoTls).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)));
        }
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .context("cannot connect to the `postgres` database to create the hyfleet database")?;
    tokio::spawn(connection);
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create database `{name}`")),
    }
}

/// The URL without its password, for logs and errors: rebuilt from what it names (user,
/// hosts, ports, database), so that no spelling of a password (`user:pw@`, `?password=`,
/// characters a naive split gets wrong) can come through.
pub fn redact(url: &str) -> String {
    let Ok(c) = tokio_postgres::Config::from_str(url) else {
        return "(an invalid database URL, not shown)".to_owned();
    };
    let user = c.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let ports = c.get_ports();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect();
    let db = c.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

/// A PostgreSQL client error with its causes, on one line: tokio-postgres's own message names
/// only the kind ("error connecting to server"), the cause that says what to fix is its source.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An error with every cause, on one line.
pub fn error_chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords_however_written() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5433/db"),
            "postgres://u@h:5433/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h:5432/db");
        for url in [
            "postgres://u:s%40cret@h/db",
            "postgres://u@h/db?password=secret&sslmode=disable",
            "postgresql://:secret@h1:1,h2:2/db",
            "postgres://u:secret@h:notaport/db",
            "postgres://u:secret@h/db?bogus=1",
        ] {
            let shown = super::redact(url);
            assert!(
                !shown.contains("secret") && !shown.contains("cret"),
                "{shown}"
            );
            let e = match super::pg_config(url) {
                Ok(_) => continue,
                Err(e) => format!("{e:#}"),
            };
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
