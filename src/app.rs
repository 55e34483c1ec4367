//! The service: everything `hyfleet serve` runs, built from a configuration and a listener so
//! that tests start the real thing on port 0 and stop it cleanly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::health::Health;
use crate::ingest::Services;
use crate::metrics::Metrics;
use crate::rules::SharedEngine;
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
    // Two pools, so that no query of the API can hold up alerts or webhooks: the API's own
    // (bounded wait, statement timeout), and one for background work with a connection per
    // task (the webhook worker's loops, the offline sweep, zone reload, partition upkeep).
    // Ingest writers hold their own connections.
    let api_pool = store::api_pool(
        &config.database.url,
        config.database.pool_size,
        config.database.pool_wait(),
        config.database.statement_timeout(),
    )?;
    let public_pool = store::api_pool(
        &config.database.url,
        config.database.public_pool_size,
        config.database.pool_wait(),
        config.database.statement_timeout(),
    )?;
    let pool = store::pool(&config.database.url, config.notify.concurrency + 3)?;
    maintain_partitions(&pool, &config).await?;

    let engine = build_engine(&pool, &config).await?;
    {
        let mut client = pool.get().await.context("no database connection")?;
        crate::notify::sync_config_webhooks(&mut client, &config.webhooks, &config.notify)
            .await
            .context("cannot register the configured webhooks")?;
    }
    let services = services(engine);
    let zones_changed = Arc::new(tokio::sync::Notify::new());

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    // The database just took the migrations: writable until a write says otherwise.
    health.set_store(true);
    let deps = ingest::IngestDeps {
        metrics: metrics.clone(),
        health: health.clone(),
        services: services.clone(),
    };

    let upkeep = tokio::spawn(partition_upkeep(
        pool.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    let sweeper = tokio::spawn(ingest::sweep::run(
        pool.clone(),
        services.rules.clone(),
        services.alerts.clone(),
        shutdown.clone(),
    ));
    let zone_reload = tokio::spawn(zone_reload(
        pool.clone(),
        services.rules.clone(),
        zones_changed.clone(),
        shutdown.clone(),
    ));
    let notifier = crate::notify::spawn_worker_with_wake(
        pool.clone(),
        config.notify.clone(),
        Arc::new(crate::notify::SystemClock),
        services.alerts.wake_handle(),
        shutdown.clone(),
    )?;
    let ingest = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { ingest::run(&config, deps, shutdown).await })
    };
    let router = api::router(
        api::AppState {
            pool: api_pool,
            public_pool,
            metrics,
            health,
            config: Arc::new(config.clone()),
            rules: services.rules.clone(),
            alerts: services.alerts.clone(),
            live: services.live.clone(),
            zones_changed,
            shutdown: shutdown.clone(),
        },
        crate::gbfs::routes().merge(crate::web::routes()),
    );
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    crate::http::serve(
        listener,
        router,
        config.http.header_read_timeout(),
        shutdown.clone(),
    )
    .await;
    let ingested = ingest.await.context("ingest panicked");
    // Each task watches `shutdown` and ends at its next step; a delivery under way finishes.
    for (task, handle) in [
        ("webhook worker", notifier),
        ("partition upkeep", upkeep),
        ("offline sweep", sweeper),
        ("zone reload", zone_reload),
    ] {
        if let Err(e) = handle.await {
            tracing::error!(task, error = %e, "background task failed");
        }
    }
    ingested?
}

/// `hyfleet mqtt drain-session`: take what the broker holds for `config.mqtt.client_id` (an
/// instance gone for good) through the same pipeline as `serve`, then end that session. The
/// alerts it opens wait in the webhook outbox for the running instances' workers.
pub async fn drain_session(config: Config) -> anyhow::Result<u64> {
    if config.nats.url.is_some() {
        anyhow::bail!(
            "ingest takes from the JetStream consumer `{}` ([nats]), which holds nothing for an \
             instance that is gone: what it had not acknowledged goes to another after \
             nats.ack_wait_secs; there is no MQTT session to drain",
            config.nats.consumer
        );
    }
    store::prepare_database(&config.database.url)
        .await
        .context("cannot prepare the database")?;
    let pool = store::pool(&config.database.url, 1)?;
    let engine = build_engine(&pool, &config).await?;
    let health = Arc::new(Health::default());
    health.set_store(true);
    let deps = ingest::IngestDeps {
        metrics: Arc::new(Metrics::default()),
        health,
        services: services(engine),
    };
    ingest::drain_session(&config, deps).await
}

/// What ingest, the sweep and the API share: the vehicle id cache, the rules engine, the one
/// way alert transitions are published, and the live feed.
fn services(engine: crate::rules::Engine) -> Services {
    let live = crate::live::Hub::default();
    Services {
        registry: Arc::new(Registry::new()),
        rules: Arc::new(SharedEngine::new(engine)),
        alerts: crate::notify::AlertPublisher::new(live.clone()),
        live,
    }
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
    let expired = store::rollup::expire(
        &client,
        config.store.minute_rollup_retention_days,
        config.store.day_rollup_retention_days,
        chrono::Utc::now(),
    )
    .await?;
    if expired > 0 {
        tracing::info!(rows = expired, "expired rollups deleted");
    }
    let (events, rejects) =
        store::partitions::expire_records(&client, &config.store, chrono::Utc::now()).await?;
    if events + rejects > 0 {
        tracing::info!(events, rejects, "expired events and rejects deleted");
    }
    store::completeness::expire(&client, config.store.raw_retention_days, chrono::Utc::now())
        .await?;
    Ok(())
}

/// Hourly: partitions and rollup retention (done once already before serving), the index
/// rebuild of closed days and the packing of older ones, which may take minutes and so never
/// delay the start.
async fn partition_upkeep(pool: deadpool_postgres::Pool, config: Config, mut shutdown: Shutdown) {
    let mut first = true;
    loop {
        if !first {
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
        first = false;
        let compacted = async {
            let client = pool.get().await.context("no database connection")?;
            store::partitions::compact(&client, chrono::Utc::now()).await
        };
        tokio::select! {
            r = compacted => if let Err(e) = r {
                tracing::error!(error = format!("{e:#}"), "index rebuild failed; will retry in an hour");
            },
            _ = shutdown.wait() => return,
        }
        let packed = async {
            let mut client = store::connect(&config.database.url).await?;
            store::partitions::pack(
                &mut client,
                chrono::Utc::now(),
                config.store.pack_after_days,
            )
            .await
        };
        tokio::select! {
            r = packed => if let Err(e) = r {
                tracing::error!(error = format!("{e:#}"), "packing failed; will retry in an hour");
            },
            _ = shutdown.wait() => return,
        }
    }
}

/// The rules engine over the zones in the database; an empty `zones` table is first filled
/// from `geo.zones_file` (the Xiaoyi sample data by default, embedded in the binary).
async fn build_engine(
    pool: &deadpool_postgres::Pool,
    config: &Config,
) -> anyhow::Result<crate::rules::Engine> {
    let client = pool.get().await.context("no database connection")?;
    let empty = client
        .query_one("SELECT count(*) = 0 FROM zones", &[])
        .await?
        .get::<_, bool>(0);
    if empty {
        let path = &config.geo.zones_file;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(_) if *path == crate::geo::GeoConfig::default().zones_file => {
                crate::sample::ZONES_GEOJSON.to_owned()
            }
            Err(e) => return Err(e).with_context(|| format!("geo.zones_file {}", path.display())),
        };
        let parsed = crate::geo::parse_zones(&text, config.geo.zones_crs())
            .with_context(|| format!("cannot import zones from {}", path.display()))?;
        crate::geo::check_place(&parsed, &[], &config.geo)
            .map_err(|e| anyhow::anyhow!("geo.zones_file {}: {e}", path.display()))?;
        let n = store::zones::import(&client, &text, config.geo.zones_crs())
            .await
            .with_context(|| format!("cannot import zones from {}", path.display()))?;
        let crs = crate::geo::crs_note(&config.geo);
        tracing::info!(zones = n, file = %path.display(), crs, "imported zones");
    }
    let zones = store::zones::load(&client).await?;
    for w in crate::geo::narrow_zones(zones.zones(), config.rules.gps_tolerance_m) {
        tracing::warn!("{w}");
    }
    Ok(crate::rules::Engine::new(
        &config.rules,
        &config.profiles,
        config.geo.crs,
        Arc::new(zones),
    )?)
}

/// Keep the rules' zones equal to the table: at once when this instance's API changed them,
/// and every few seconds for changes made by another instance or `hyfleet zones import`.
async fn zone_reload(
    pool: deadpool_postgres::Pool,
    rules: Arc<SharedEngine>,
    changed: Arc<tokio::sync::Notify>,
    mut shutdown: Shutdown,
) {
    let mut seen: Option<String> = None;
    loop {
        let result: anyhow::Result<()> = async {
            let client = pool.get().await?;
            let now = store::zones::fingerprint(&client).await?;
            if seen.as_ref() != Some(&now) {
                let zones = store::zones::load(&client).await?;
                if seen.is_some() {
                    tracing::info!(zones = zones.len(), "zones changed; rules use them now");
                }
                rules.set_zones(Arc::new(zones));
                seen = Some(now);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = format!("{e:#}"), "zone reload failed; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = changed.notified() => {}
            _ = shutdown.wait() => return,
        }
    }
}
