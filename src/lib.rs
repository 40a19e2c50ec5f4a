//! libcluster: a cluster of processes with remote calls and futures,
//! exported as a C ABI (see `include/cluster.h`).
//!
//! Layers, each depending only on those above it:
//!
//! - `error`, `log`, `sys`: errors, logging, the few syscalls std lacks;
//! - `wire`: frames and their encoding;
//! - `net`: the handshake and connections;
//! - `node`: the node core (identity, peers, messaging, futures, events,
//!   the service interface);
//! - `service`: one module per capability (control, rpc, refs, ...);
//! - `launch`: starting workers;
//! - `cluster`: a node with the standard services;
//! - `ffi`: the C ABI, the only layer that deals in C types.
//!
//! A `Cluster` owns all of its state: there are no process globals in the
//! core.

pub mod error;
pub mod log;
pub mod sys;
pub mod wire;
pub mod net;
pub mod node;
pub mod service;
pub mod launch;
pub mod cluster;

pub mod ffi;

/// Fuzz targets and the services' decoders they drive (`fuzz/`, `tests/fuzz.rs`).
#[doc(hidden)]
pub mod fuzzing;

pub use cluster::Cluster;
pub use error::{Error, ErrorKind, Result};
pub use launch::{LaunchOptions, LaunchSpec, Launched, Launcher, LocalLauncher};
pub use node::{Config, DispatchMode, Event, Future, FutureRef, Lifecycle, Node, Topology, Value, HEAD_ID};
pub use service::rpc::{Call, Handler, ANY_WORKER};

/// The services' operations on a node: `use cluster::prelude::*`.
pub mod prelude {
    pub use crate::service::control::ControlExt;
    pub use crate::service::refs::{FutureExt, RefsExt};
    pub use crate::service::rpc::RpcExt;
}

/// The header cbindgen generated in this build, to check the committed copy.
#[doc(hidden)]
pub const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/cluster.h"));

#[cfg(test)]
mod header_tests {
    #[test]
    fn committed_header_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/cluster.h");
        let committed = std::fs::read_to_string(path).expect("include/cluster.h exists");
        assert!(
            committed == super::GENERATED_HEADER,
            "include/cluster.h is stale: rebuild with CLUSTER_UPDATE_HEADER=1 cargo build and commit it"
        );
    }

    #[test]
    fn header_version_matches_the_crate() {
        let v = env!("CARGO_PKG_VERSION");
        let want = format!(
            "{}.{}.{}",
            crate::ffi::CLUSTER_VERSION_MAJOR,
            crate::ffi::CLUSTER_VERSION_MINOR,
            crate::ffi::CLUSTER_VERSION_PATCH
        );
        assert_eq!(v, want);
    }
}
