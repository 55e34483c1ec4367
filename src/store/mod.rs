//! PostgreSQL: the database itself (creation, migrations, partitions), the batch writer that
//! ingest commits through, and the queries the API reads with.

mod copy;
pub mod local_server;
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

/// A small pool for the API and maintenance; ingest writers hold their own connections.
pub fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        pg_config(url)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
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
    fn redact_hides_passwords_only() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
