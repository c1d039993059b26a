//! One module per subcommand: each has an `Args` struct and a `run` function.

pub mod data;
pub mod distance;
pub mod eval;
pub mod experiment;
pub mod federation;
pub mod fetch;
pub mod flower;
pub mod inspect;
pub mod predict;
pub mod report;
pub mod train;
