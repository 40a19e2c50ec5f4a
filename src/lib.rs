//! libcluster: a cluster of processes with remote calls and futures,
//! exported as a C ABI (see `include/cluster.h`).
//!
//! Layers, each depending only on those above it:
//!
//! - `error`, `log`, `sys`: errors, logging, the few syscalls std lacks;
//! - `savefile`: the save/load container (a versioned, checksummed file
//!   written atomically), on `error` and `sys` only;
//! - `wire`: frames and their encoding;
//! - `net`: the handshake and connections;
//! - `node`: the node core (identity, peers, messaging, futures, events,
//!   the service interface);
//! - `launch`: starting workers;
//! - `service`: one module per capability (control, rpc, refs, ...);
//! - `cluster`: a node with the standard services;
//! - `ffi`: the C ABI, the only layer that deals in C types.
//!
//! A `Cluster` owns all of its state: there are no process globals in the
//! core.

pub mod error;
pub mod log;
pub mod sys;
pub mod savefile;
pub mod wire;
pub mod net;
pub mod node;
pub mod launch;
pub mod service;
pub mod cluster;

pub mod ffi;

/// Fuzz targets and the services' decoders they drive (`fuzz/`, `tests/fuzz.rs`).
#[doc(hidden)]
pub mod fuzzing;

pub use cluster::Cluster;
pub use error::{Error, ErrorKind, Result};
pub use launch::{LaunchOptions, LaunchSpec, Launched, Launcher, LocalLauncher};
pub use node::{Config, DispatchMode, TlsMode, Event, Future, FutureRef, Lifecycle, Node, Topology, Value, HEAD_ID};
pub use service::channel::{Channel, ChannelRef, ChannelState};
pub use service::dict::{Dict, DictKind, Members, Spec};
pub use service::fork::{pfork, pfork_with, ForkChild, ForkOptions, Outcome as ForkOutcome};
pub use service::rpc::{Call, Handler, ANY_WORKER};
pub use service::shm::{Segment, ShmSpec};
pub use service::stasks::{task_of, ServerTasks};

/// The services' operations on a node: `use cluster::prelude::*`.
pub mod prelude {
    pub use crate::service::channel::ChannelExt;
    pub use crate::service::control::ControlExt;
    pub use crate::service::dict::DictExt;
    pub use crate::service::pool::PoolExt;
    pub use crate::service::refs::{FutureExt, RefsExt};
    pub use crate::service::rpc::RpcExt;
    pub use crate::service::shm::ShmExt;
    pub use crate::service::stasks::StasksExt;
    pub use crate::service::vars::VarsExt;
    pub use crate::service::collective::CollectiveExt;
    /// `savefile::save` / `savefile::load` (plain functions, no node needed).
    pub use crate::savefile;
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
        assert!(committed == super::GENERATED_HEADER, "include/cluster.h is stale: rebuild with CLUSTER_UPDATE_HEADER=1 cargo build and commit it");
    }

    #[test]
    fn header_version_matches_the_crate() {
        let v = env!("CARGO_PKG_VERSION");
        let want = format!("{}.{}.{}", crate::ffi::CLUSTER_VERSION_MAJOR, crate::ffi::CLUSTER_VERSION_MINOR, crate::ffi::CLUSTER_VERSION_PATCH);
        assert_eq!(v, want);
    }
}

#[cfg(test)]
mod layering_tests {
    //! The layers of lib.rs's doc, checked: a module never names a layer
    //! above its own, so there are no import cycles among them.
    const LAYERS: &[(&str, &[&str])] = &[
        ("wire", &["net", "node", "launch", "service", "cluster", "ffi"]),
        ("net", &["node", "launch", "service", "cluster", "ffi"]),
        ("node", &["launch", "service", "cluster", "ffi"]),
        ("launch", &["service", "cluster", "ffi"]),
        ("service", &["cluster", "ffi"]),
    ];

    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn no_module_names_a_layer_above_its_own() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut bad = Vec::new();
        for (layer, above) in LAYERS {
            let mut fs = Vec::new();
            files(&src.join(layer), &mut fs);
            assert!(!fs.is_empty(), "no files in src/{layer}");
            for f in fs {
                let text = std::fs::read_to_string(&f).unwrap();
                for up in *above {
                    if text.contains(&format!("crate::{up}::")) || text.contains(&format!("crate::{up};")) {
                        bad.push(format!("{} names crate::{up}", f.display()));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
    }
}
