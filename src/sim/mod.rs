//! The fleet simulator: a realistic Xiaoyi fleet publishing over MQTT, and the load generator.

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {}

pub async fn run(
    _args: SimArgs,
    _shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet")
}

impl SimArgs {
    pub fn demo(_mqtt_url: &str, _topic_root: &str) -> Self {
        SimArgs {}
    }
}
