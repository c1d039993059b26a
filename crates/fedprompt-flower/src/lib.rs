//! fedprompt as a native [Flower](https://flower.ai) SuperNode.
//!
//! A Rust process that joins a federation run by a real Flower SuperLink (flwr 1.42), receives
//! `train` and `evaluate` messages from a Flower ServerApp, trains with fedprompt's PEFT
//! methods, and replies in Flower's own format, so that Flower's strategies (FedAvg, FedProx,
//! FedAdam, DP wrappers, ...) aggregate its updates beside those of Python SuperNodes.
//!
//! The layers, bottom up:
//! - [`proto`]: Flower's protobuf types, compiled by prost from the descriptors that the flwr
//!   wheel itself ships (`proto/flwr-1.42.0.fds.pb`, dumped by `interop/flower/dump_descriptors.py`).
//! - [`object`]: content-addressed objects (`sha256("<Class> <children> <len>\0" + body)`).
//! - [`npy`]: the `.npy` bytes in which arrays travel, byte for byte as `np.save` writes them.
//! - [`records`]: Message → RecordDict → ArrayRecord → Array → ArrayChunk, MetricRecord and
//!   ConfigRecord, deflated into objects and inflated (with every hash and structure checked).
//! - [`auth`]: the node's ECDSA P-384 identity and the signed headers of every Fleet call.
//! - [`fleet`]: the Fleet API as protobuf over HTTP(S) (`POST /v1/fleet/<rpc>`).
//! - [`node`]: the SuperNode lifecycle (register, activate, heartbeats, pull, reply, shut down).
//! - [`app`]: what a fedprompt node does with a `train`/`evaluate` message.
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod error;
pub mod fleet;
pub mod node;
pub mod npy;
pub mod object;
pub mod records;

/// Flower's protobuf types (package `flwr.proto`), generated at build time.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/flwr.proto.rs"));
}

pub use error::{FlowerError, Result};

/// The Flower release whose protocol this crate speaks (major.minor must match the SuperLink's).
pub const FLWR_VERSION: &str = "1.42.0";
