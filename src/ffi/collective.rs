//! Collectives over a process set: `cluster_allgather` (MPI_Allgather over
//! byte strings of any sizes, ClusterUtils' `swapmsgs` underneath).

use super::args::*;
use super::buffer::{buffer_from, cluster_buffer};
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::status::cluster_status;
use crate::prelude::*;

/// All-gather: every process of `pids[0..npids)` (which must hold this
/// one; the same set on each, in any order) calls it with the same `tag`
/// and its `data[0..len)`; each gets everyone's data into `*out`, in the
/// parts layout (`cluster_parts_next`), in the order of its own `pids`.
/// The k-th call with a (set, tag) on each process meets the k-th on the
/// others. A participant that leaves fails it on every other with
/// CLUSTER_ERR_PROCESS_EXITED naming it; `timeout_ms` (negative: none)
/// fails it with CLUSTER_ERR_TIMEOUT naming a process not heard from.
/// Between workers it needs the all_to_all topology (CLUSTER_ERR_TOPOLOGY).
/// Blocks under 64 KiB use recursive doubling or Bruck's algorithm,
/// larger ones the ring; a call with blocks on either side of 64 KiB runs
/// again round the ring (the first messages show it), as one call.
///
/// Ownership: `data` is copied before return; `*out` is the caller's
/// until `cluster_buffer_free`.
/// Blocking: yes, until every participant's data is here.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_allgather(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    tag: u64,
    data: *const u8,
    len: usize,
    timeout_ms: i64,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let f = c.node().allgather_async(&pid_list(pids, npids)?, tag, bytes(data, len, "data")?, timeout_arg(timeout_ms))?;
        put(out, "out", buffer_from(f.value()?)?)
    })
}

/// `cluster_allgather` as a future, returned at once: its value is the
/// parts layout.
///
/// Ownership: `data` is copied before return; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_allgather_async(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    tag: u64,
    data: *const u8,
    len: usize,
    timeout_ms: i64,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let f = c.node().allgather_async(&pid_list(pids, npids)?, tag, bytes(data, len, "data")?, timeout_arg(timeout_ms))?;
        put(out, "out", new_future_handle(f)?)
    })
}
