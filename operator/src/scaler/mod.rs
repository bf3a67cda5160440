//! Worker autoscaling on queue depth, with KEDA's RabbitMQ scaler and HPA semantics.

pub mod algorithm;
pub mod rabbitmq;
pub mod runner;
