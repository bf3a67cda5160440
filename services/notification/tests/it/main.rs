//! End-to-end tests of the notification service against real Postgres and
//! RabbitMQ. Start them with
//! `PAYFLOW_STACK_RABBITMQ=1 PAYFLOW_PG_FAST=1 bash scripts/stack.sh start test`
//! and `eval "$(PAYFLOW_STACK_RABBITMQ=1 bash scripts/stack.sh env test)"`.

mod harness;
#[path = "../../../payflow/tests/support/proxy.rs"]
mod proxy;

mod api;
mod consuming;
mod correlation;
mod outages;
mod refusals;
mod run;
mod topology;
mod webhook;
