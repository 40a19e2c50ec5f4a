//! libcluster: a cluster of processes with remote calls and futures,
//! exported as a C ABI (see `include/cluster.h`).
//!
//! The core is safe Rust, one module per concern; `ffi` is the only
//! layer that deals in C types. A `Cluster` owns all of its state: there
//! are no process globals in the core.

pub mod auth;
pub mod cluster;
pub mod error;
pub mod future;
pub mod host;
pub mod launch;
pub mod log;
pub mod rpc;
pub mod sys;
pub mod transport;
pub mod wire;

pub mod ffi;

pub use cluster::{Cluster, Config, DispatchMode, Lifecycle, Node, Topology, HEAD_ID};
pub use error::{Error, ErrorKind, Result};
pub use host::Event;
pub use launch::{LaunchOptions, LaunchSpec, Launched, Launcher, LocalLauncher};
pub use rpc::{Call, Future, FutureRef, Handler, Value, ANY_WORKER};

pub const VERSION_MAJOR: u32 = 0;
pub const VERSION_MINOR: u32 = 1;
pub const VERSION_PATCH: u32 = 0;
