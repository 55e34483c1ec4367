//! PostgreSQL: the database itself (creation, migrations, partitions), the batch writer that
//! ingest commits through, and the queries the API reads with.

mod copy;
pub mod migrate;
pub mod partitions;
pub mod queries;
mod registry;
pub mod rollup;
pub mod writer;

use std::str::FromStr;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

pub use registry::Registry;
pub use writer::{BatchWriter, WriteOutcome};

/// Parse a `postgres://` URL.
pub fn pg_config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url).with_context(|| format!("invalid database URL `{url}`"))
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

/// The API's pool (operators' requests, public GBFS feeds, token look-ups). A request waits at
/// most `wait` for a connection, and every statement on these connections is cancelled after
/// `statement_timeout`: however heavy the queries, they hold only this pool's connections, and
/// only for so long.
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

/// The URL with its password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
