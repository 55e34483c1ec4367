use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hyfleet::config::Config;
use hyfleet::{app, demo, shutdown, sim, store};

/// hyfleet: telemetry backend for hydrogen vehicle fleets.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); also `HYFLEET_CONFIG`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingest, rules, webhooks and the HTTP API. SIGTERM or Ctrl-C stops it to come back
    /// (its MQTT session is kept); SIGUSR1 retires it (see `--retire`).
    Serve {
        /// Leave for good on any stop: leave the shared subscription, drain what the broker
        /// already handed over, end the MQTT session (as `mqtt.retire_on_shutdown`).
        #[arg(long)]
        retire: bool,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Run the fleet simulator against a broker.
    Simulate(Box<sim::SimArgs>),
    /// Run the whole system here: embedded broker, simulated fleet, API.
    Demo,
    /// Check PostgreSQL, the broker and the clock: one line per check, exit status 1 when one
    /// fails. The broker's backlog and inflight window are measured with a probe session.
    Doctor {
        /// The broker login of the probe, `mqtt://user:password@host:port`: a user of its own
        /// (`hyfleet.doctor` with the shipped broker). Without it, `mqtt.url` if that has no
        /// user; a login of ingest's is never used, since the probe would take its session.
        #[arg(long, env = "HYFLEET_DOCTOR_MQTT_URL")]
        mqtt_url: Option<String>,
    },
    /// Manage geofence zones.
    #[command(subcommand)]
    Zones(ZonesCommand),
    /// Operate on the broker side.
    #[command(subcommand)]
    Mqtt(MqttCommand),
}

#[derive(Subcommand)]
enum MqttCommand {
    /// Take what the broker holds for the persistent session of an instance that is gone for
    /// good (killed, never restarted) through the normal pipeline, then end that session.
    /// Prints how many messages it drained. Never use the client id of a running instance.
    DrainSession {
        /// The gone instance's session: its `mqtt.client_id`. On a broker that pins client ids
        /// to user names (the shipped Mosquitto) the session is its user's: log in as that
        /// user (its `mqtt.url`, or `MQTT_URL`) and give the user name here; logged in as a
        /// running instance's user, the command would take that instance's session instead.
        #[arg(long)]
        client_id: String,
    },
}

#[derive(Subcommand)]
enum ZonesCommand {
    /// Import a GeoJSON FeatureCollection of zones (converted from `geo.zones_crs`); zones
    /// with the same id are replaced. Says which coordinate system it assumed, warns about
    /// zones too narrow for the GPS tolerance, and refuses a file that lies outside the
    /// service areas. A running service picks them up within seconds.
    Import { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve { retire } => {
                let mut config = load(&cli.config)?;
                config.mqtt.retire_on_shutdown |= retire;
                serve(config).await
            }
            Command::Migrate => {
                let config = load(&cli.config)?;
                store::prepare_database(&config.database.url).await?;
                println!("database is at migration {}", store::migrate::latest());
                Ok(())
            }
            Command::Simulate(args) => {
                let (trigger, stop) = shutdown::channel();
                tokio::spawn(async move {
                    shutdown::signal().await;
                    trigger.fire();
                });
                let mut stop = stop;
                let report = sim::run(*args, async move { stop.wait().await }).await?;
                println!("{report}");
                Ok(())
            }
            Command::Demo => run_demo(&cli.config).await,
            Command::Doctor { mqtt_url } => {
                let checks = hyfleet::doctor::run(&load(&cli.config)?, mqtt_url.as_deref()).await;
                for check in &checks {
                    println!("{check}");
                }
                if checks
                    .iter()
                    .any(|c| c.verdict == hyfleet::doctor::Verdict::Fail)
                {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Mqtt(MqttCommand::DrainSession { client_id }) => {
                let mut config = load(&cli.config)?;
                config.mqtt.client_id = client_id;
                let n = app::drain_session(config.clone()).await?;
                println!(
                    "drained {n} messages from the session `{}`; the session is ended",
                    config.mqtt.client_id
                );
                Ok(())
            }
            Command::Zones(ZonesCommand::Import { file }) => {
                let config = load(&cli.config)?;
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                store::prepare_database(&config.database.url).await?;
                let client = store::connect(&config.database.url).await?;
                println!("{}", hyfleet::geo::crs_note(&config.geo));
                let zones = hyfleet::geo::parse_zones(&text, config.geo.zones_crs())
                    .with_context(|| format!("reading {}", file.display()))?;
                let known = hyfleet::store::zones::load(&client).await?;
                let placed = hyfleet::geo::check_place(&zones, known.zones(), &config.geo)
                    .map_err(|e| {
                        anyhow::anyhow!("{}: {e}; nothing was imported", file.display())
                    })?;
                let narrow = hyfleet::geo::narrow_zones(&zones, config.rules.gps_tolerance_m);
                for w in placed.warnings.iter().chain(&narrow) {
                    eprintln!("warning: {w}");
                }
                let n =
                    hyfleet::store::zones::import(&client, &text, config.geo.zones_crs()).await?;
                println!("imported {n} zones from {}", file.display());
                Ok(())
            }
        }
    })
}

/// Logs go to standard output: text, coloured only on a terminal (and not under `NO_COLOR`),
/// or one JSON object a line with `HYFLEET_LOG_FORMAT=json`, for log collectors.
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rumqttd=off,rumqttc=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    let format = std::env::var("HYFLEET_LOG_FORMAT").unwrap_or_default();
    match format.as_str() {
        "json" => logs.json().init(),
        _ => {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            logs.with_ansi(colour).init();
            if !matches!(format.as_str(), "" | "text") {
                tracing::warn!(
                    HYFLEET_LOG_FORMAT = %format,
                    "unknown log format: use `text` (the default) or `json`"
                );
            }
        }
    }
}

fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(path.as_deref())?)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    for check in hyfleet::doctor::quick(&config).await {
        if check.verdict != hyfleet::doctor::Verdict::Ok {
            tracing::warn!(check = check.name, "{}", check.detail);
        }
    }
    let listener = tokio::net::TcpListener::bind(&config.http.addr)
        .await
        .with_context(|| format!("cannot listen on http.addr = {}", config.http.addr))?;
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        match shutdown::signal().await {
            shutdown::Signal::Stop => {
                tracing::info!("stopping: finishing the batches in flight");
                trigger.fire();
            }
            shutdown::Signal::Retire => {
                tracing::info!("retiring: leaving the shared subscription for good");
                trigger.retire();
            }
        }
    });
    app::serve(config, listener, stop).await
}

async fn run_demo(path: &Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = load(path)?;
    if std::env::var_os("MQTT_URL").is_none() {
        config.mqtt.url = demo::start_embedded_broker()?;
    }
    // Kept until the demo ends: dropping it stops the throwaway server and removes its files.
    let mut _local_pg = None;
    if std::env::var_os("DATABASE_URL").is_none() && path.is_none() {
        // Keep the demo's simulated fleet out of a real `hyfleet` database, and start it
        // afresh: a fleet left over from an earlier run would all be `offline` at first.
        let (url, server) = demo::database(demo::DEFAULT_DATABASE).await?;
        config.database.url = url;
        _local_pg = server;
    }
    let inbox = demo::start_inbox().await?;
    config.notify.allow_private_networks = true;
    config.webhooks.push(demo::webhook_to(&inbox));
    // A token for this run, so the dashboard and the API can be used at once.
    let token = if config.api.tokens.is_empty() {
        let token = format!("demo-{}", uuid::Uuid::new_v4().simple());
        config.api.tokens.push(hyfleet::api::TokenConfig {
            name: "demo".into(),
            role: hyfleet::api::Role::Admin,
            token: Some(token.clone()),
            token_sha256: None,
        });
        token
    } else {
        "(from your configuration)".to_owned()
    };
    let listener = tokio::net::TcpListener::bind(&config.http.addr)
        .await
        .with_context(|| format!("cannot listen on http.addr = {}", config.http.addr))?;
    let http = listener.local_addr()?;
    let (trigger, stop) = shutdown::channel();
    let service = tokio::spawn(app::serve(config.clone(), listener, stop.clone()));
    let sim_args = sim::SimArgs::demo(&config.mqtt.url, &config.mqtt.topic_root);
    let mut sim_stop = stop.clone();
    let simulator =
        tokio::spawn(async move { sim::run(sim_args, async move { sim_stop.wait().await }).await });
    println!(
        "\nhyfleet demo is running\n  dashboard     http://{http}/   (API token: {token})\n  MQTT broker   {}\n  vehicles      curl -H 'Authorization: Bearer {token}' http://{http}/api/v1/vehicles\n  GBFS          http://{http}/gbfs/gbfs.json\n  metrics       http://{http}/metrics\n  readiness     http://{http}/readyz\n  webhook inbox {inbox} (alerts print below)\nCtrl-C stops everything.\n",
        config.mqtt.url
    );
    shutdown::signal().await;
    trigger.fire();
    let _ = simulator.await;
    service.await??;
    Ok(())
}
