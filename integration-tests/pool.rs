//! Pool: warm-up caps, providers, drain/undrain, failover, state across restarts. Real binary.

mod common;
