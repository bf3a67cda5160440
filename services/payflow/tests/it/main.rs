//! End-to-end tests: real Postgres and Redis, services on random ports.

mod harness;

mod broker;
mod crashes;
mod gateway;
mod payments;
#[path = "../support/proxy.rs"]
mod proxy;
mod registration;
mod reversal;
mod story;
mod tokens;
mod validation;
mod wallet;
