//! Confirmed publishing: a message counts as sent only after the broker's ack.

use futures::future::try_join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{Channel, Connection};

use crate::message::Message;

#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused the message")]
    Nacked,
}

impl Publisher {
    pub async fn new(conn: &Connection) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a batch and waits for every confirm; all or error. The
    /// messages are pipelined, so a batch costs about one round trip.
    pub async fn publish_all(&self, batch: &[(String, String, Message)]) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(batch.len());
        for (exchange, routing_key, msg) in batch {
            let confirm = self
                .channel
                .basic_publish(exchange, routing_key, BasicPublishOptions::default(), &msg.body, msg.properties())
                .await?;
            pending.push(confirm);
        }
        let confirms = try_join_all(pending).await?;
        if confirms.iter().all(|c| matches!(c, Confirmation::Ack(_))) {
            Ok(())
        } else {
            Err(PublishError::Nacked)
        }
    }

    pub async fn publish(&self, exchange: &str, routing_key: &str, msg: &Message) -> Result<(), PublishError> {
        self.publish_all(&[(exchange.to_string(), routing_key.to_string(), msg.clone())]).await
    }
}
