//! One integration-test binary: configuration and end-to-end federation tests.

mod compression;
mod config;
mod federation;
mod mtls;
mod secagg;
mod tls_errors;
