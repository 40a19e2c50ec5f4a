//! The C ABI, one file per C object. This layer only validates, converts
//! and calls the core through its public API.
//!
//! - `boundary`: the `ffi!` macro every export's body goes through (panic
//!   boundary, handle lookup, last error) and the `Handle` trait.
//! - `handles`: the table behind the opaque handles. A handle is not a
//!   pointer to memory: it encodes (kind, generation, slot), so a freed,
//!   stale or wrong-kind handle is an error, never a dereference.
//! - `args`: checked conversions of C arguments (strings, byte ranges, out
//!   pointers, id lists, timeouts).
//! - `status`: `cluster_status`, its strings, the last error, the version.
//! - `types`: constants, enums and callback types shared by several objects.
//! - `config`: `cluster_config` and `cluster_launch_options`.
//! - `ctx`: `cluster_ctx`, the cluster (membership, launching, callbacks,
//!   registration, remote calls, host-mode polling).
//! - `future`: `cluster_future` and `cluster_future_ref`.
//! - `call`: `cluster_call`, an incoming call, and the handler trampoline.
//! - `buffer`: `cluster_buffer`.
//! - `channel`: `cluster_channel` (a RemoteChannel), `cluster_channel_ref`
//!   and `cluster_channel_state`.
//! - `pool`: `cluster_pool`, a worker pool (Distributed's `WorkerPool`).
//! - `pmap`: `cluster_pmap`, a parallel map or `@distributed` loop under
//!   way, `cluster_splitrange`.
//! - `workerset`: `cluster_workerset` (PTools' `WorkerSet`).
//! - `taskqueue`: `cluster_taskqueue` (PTools' queued tasks).
//! - `dict`: `cluster_dict` (ClusterDicts' GlobalDict and DistributedDict),
//!   `cluster_dict_spec`, `cluster_dict_entries`, `cluster_value`.
//! - `shm`: `cluster_shm`, a shared-memory segment (PTools' `ShmCfg`),
//!   `cluster_shm_spec`, the orphan cleaner.
//! - `stasks`: `cluster_stasks`, server tasks (PTools' `start_stasks`).
//! - `fork`: `cluster_pfork` (PTools' `pfork`), `cluster_fork_results`,
//!   `cluster_fork_child` (a child's way to return its bytes).
//! - `savefile`: `cluster_save` / `cluster_load`, the save/load container
//!   (ClusterUtils' `save` / `load` over bytes).
//! - `gate`: the callback gate of a cluster, behind `cluster_close`.
//!
//! cbindgen reads this module tree only (see build.rs): whatever is `pub`
//! here and reachable from an export is C API, nothing else is.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

#[macro_use]
mod boundary;
mod args;
mod gate;
mod handles;

// In this order in the header.
mod status;
mod types;
mod config;
mod ctx;
mod future;
mod call;
mod buffer;
mod channel;
mod pool;
mod pmap;
mod workerset;
mod taskqueue;
mod dict;
mod shm;
mod stasks;
mod fork;
mod vars;
mod collective;
mod ssh;
mod slurm;
mod savefile;

#[cfg(test)]
mod header_checks;

pub use buffer::*;
pub use call::*;
pub use channel::*;
pub use config::*;
pub use ctx::*;
pub use dict::*;
pub use shm::*;
pub use stasks::*;
pub use fork::*;
pub use vars::*;
pub use collective::*;
pub use ssh::*;
pub use slurm::*;
pub use savefile::*;
pub use future::*;
pub use pmap::*;
pub use pool::*;
pub use taskqueue::*;
pub use workerset::*;
pub use status::*;
pub use types::*;

/// A host pointer carried into closures that may run on other threads;
/// the C contract makes the host responsible for its thread-safety.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub *mut std::ffi::c_void);
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}
