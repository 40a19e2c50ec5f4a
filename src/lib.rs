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

/// Fuzz targets and the services' decoders they drive (`fuzz/`, `tests/fuzz.rs`).
#[doc(hidden)]
pub mod fuzzing;

pub use cluster::{Cluster, Config, DispatchMode, Lifecycle, Node, Topology, HEAD_ID};
pub use error::{Error, ErrorKind, Result};
pub use host::Event;
pub use launch::{LaunchOptions, LaunchSpec, Launched, Launcher, LocalLauncher};
pub use rpc::{Call, Future, FutureRef, Handler, Value, ANY_WORKER};

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
