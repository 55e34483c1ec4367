//! The service: everything `hyfleet serve` runs, built from a configuration and a listener so
//! that tests start the real thing on port 0 and stop it cleanly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{self, Registry};
use crate::{api, ingest};

/// Run until `shutdown` fires: migrations, partition upkeep, ingest and the HTTP server.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    store::prepare_database(&config.database.url)
        .await
        .context("cannot prepare the database")?;
    let pool = store::pool(&config.database.url, config.database.pool_size)?;
    maintain_partitions(&pool, &config).await?;

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    // The database just took the migrations: writable until a write says otherwise.
    health.set_store(true);
    let deps = ingest::IngestDeps {
        metrics: metrics.clone(),
        health: health.clone(),
        registry: Arc::new(Registry::new()),
        hooks: Arc::new(store::writer::Hooks::default()),
    };

    let upkeep = tokio::spawn(partition_upkeep(
        pool.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    let ingest = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { ingest::run(&config, deps, shutdown).await })
    };
    let router = api::router(api::AppState {
        pool,
        metrics,
        health,
        live: crate::live::Hub::default(),
        config: Arc::new(config.clone()),
    });
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    let mut stop = shutdown.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.wait().await })
        .await
        .context("HTTP server failed")?;
    ingest.await.context("ingest panicked")??;
    upkeep.abort();
    Ok(())
}

async fn maintain_partitions(
    pool: &deadpool_postgres::Pool,
    config: &Config,
) -> anyhow::Result<()> {
    let client = pool.get().await.context("no database connection")?;
    let (created, dropped) = store::partitions::maintain(
        &client,
        config.store.raw_retention_days,
        config.store.partitions_ahead_days,
        chrono::Utc::now(),
    )
    .await?;
    if created + dropped > 0 {
        tracing::info!(created, dropped, "telemetry partitions maintained");
    }
    Ok(())
}

async fn partition_upkeep(pool: deadpool_postgres::Pool, config: Config, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.wait() => return,
        }
        if let Err(e) = maintain_partitions(&pool, &config).await {
            tracing::error!(
                error = format!("{e:#}"),
                "partition upkeep failed; will retry in an hour"
            );
        }
    }
}
