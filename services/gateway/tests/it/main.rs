//! The gateway with the real auth and wallet services in this process, on
//! random ports, against the real Postgres and Redis of the test stack.

mod harness;
#[path = "../../../payflow/tests/support/proxy.rs"]
mod proxy;

mod client_address;
mod paths;
mod revocation;
mod upstreams;
