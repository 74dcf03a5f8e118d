//! # recsys-bench
//!
//! The benchmarks behind `recsys offline bench`, `offline bench-quality`, `nearline bench`,
//! `online bench` and `online soak`: each runs recsys and its named peer (`implicit`, NumPy,
//! DuckDB, FAISS — driven by the scripts in `deploy/bench/`) in the same invocation, on the same data, and
//! prints figures and ratios. Nothing here asserts a speed.
//!
//! - [`training`]: iALS training speed and memory against `implicit`, accuracy on MovieLens.
//! - [`quality`]: tuned and default quality against `implicit` tuned the same way.
//! - [`features`]: the feature jobs against DuckDB.
//! - [`online`]: the scoring kernel against NumPy, and a gRPC (or REST, through [`http1`]) load
//!   generator; [`ann`]: the item index against FAISS; [`console`]: the console's pages timed
//!   and weighed on the same server; [`process`]: the port and readiness helpers of benches that
//!   start a server.
//! - [`soak`]: overload at twice saturation, the made-up-id flood and the cancel storm.
//! - [`nearline`]: fold-in throughput with one and two workers, and freshness.
//!
//! It depends on every tier and on `recsys-shared`'s `testkit` (real redis-server and Tansu
//! processes); no tier depends on it, so the libraries carry neither the test kit nor `clap`.

pub mod ann;
pub mod console;
pub mod features;
pub mod http1;
pub mod nearline;
pub mod online;
pub mod process;
pub mod quality;
pub mod soak;
mod swap;
pub mod training;
