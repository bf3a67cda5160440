use clap::Args;

/// RabbitMQ settings shared by everything that publishes or consumes.
#[derive(Clone, Args)]
pub struct AmqpArgs {
    /// AMQP URL of RabbitMQ.
    #[arg(
        long = "amqp-url",
        env = "PAYFLOW_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name (lets several PayFlows share a broker).
    #[arg(long = "amqp-prefix", env = "PAYFLOW_AMQP_PREFIX", default_value = "payflow")]
    pub prefix: String,
    /// Deliveries of one message before it goes to the dead-letter queue.
    #[arg(long = "amqp-delivery-limit", env = "PAYFLOW_AMQP_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
}

impl std::fmt::Debug for AmqpArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpArgs")
            .field("prefix", &self.prefix)
            .field("delivery_limit", &self.delivery_limit)
            .finish_non_exhaustive()
    }
}

impl AmqpArgs {
    pub fn topology(&self) -> crate::Topology {
        crate::Topology::new(&self.prefix, self.delivery_limit)
    }
}
