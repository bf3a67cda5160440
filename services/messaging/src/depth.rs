//! How many messages a queue holds, read with a passive declare (the broker's
//! `declare-ok` carries the count of ready messages; it creates nothing).
//!
//! A passive declare of a queue that does not exist is answered by closing the
//! channel with `404 NOT_FOUND`, so [`DepthProbe`] asks on a channel of its own,
//! never on one that publishes or consumes, and opens a new one after a failure.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

/// Why a depth could not be read (a queue that does not exist is not an error: `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum DepthError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("no answer from RabbitMQ within {0:?}")]
    Timeout(Duration),
}

/// Ready messages in `queue`, or `None` when it does not exist. After `None` or
/// an error the broker has closed `ch` (or the connection is gone): use another.
pub async fn queue_depth(ch: &Channel, queue: &str) -> lapin::Result<Option<u32>> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    match ch.queue_declare(queue, passive, FieldTable::default()).await {
        Ok(q) => Ok(Some(q.message_count())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e, lapin::Error::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Reads queue depths on a dedicated channel, opened on first use and again
/// after anything closed it (a missing queue, a timeout, a lost connection).
pub struct DepthProbe {
    channel: Option<Channel>,
    timeout: Duration,
}

impl DepthProbe {
    /// `timeout` bounds each read, opening the channel included.
    pub fn new(timeout: Duration) -> Self {
        Self { channel: None, timeout }
    }

    /// Ready messages in `queue` (`None`: no such queue), on a channel of `conn`.
    pub async fn depth(&mut self, conn: &Connection, queue: &str) -> Result<Option<u32>, DepthError> {
        let result = tokio::time::timeout(self.timeout, self.ask(conn, queue)).await;
        let result = result.unwrap_or(Err(DepthError::Timeout(self.timeout)));
        if !matches!(result, Ok(Some(_))) {
            // Closed by the broker (404), or a reply may still be on its way after a timeout:
            // dropping the channel closes it, so a late answer cannot be taken for the next one.
            self.channel = None;
        }
        result
    }

    async fn ask(&mut self, conn: &Connection, queue: &str) -> Result<Option<u32>, DepthError> {
        let ch = match self.channel.take() {
            Some(ch) if ch.status().connected() => ch,
            _ => conn.create_channel().await?,
        };
        let depth = queue_depth(&ch, queue).await?;
        self.channel = Some(ch);
        Ok(depth)
    }
}
