//! The PayFlow operator: one `PayFlow` resource in, the whole platform out.

pub mod crd;
pub mod desired;
pub mod scaler;
