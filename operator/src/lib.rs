//! The PayFlow operator: one `PayFlow` resource in, the whole platform out.

pub mod controller;
pub mod crd;
pub mod credentials;
pub mod desired;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod scaler;
pub mod status;
