//! `cluster_workerset`: PTools' `WorkerSet`, round robin or first free.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::buffer::{buffer_from, cluster_buffer};
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::handles::{self, Kind};
use super::status::cluster_status;
use crate::service::pool::{WorkerSet, WsMode};
use std::ffi::c_char;

/// A set of workers called in turn (PTools' `WorkerSet`).
pub struct cluster_workerset {
    _private: [u8; 0],
}

/// `cluster_workerset_new` modes, with PTools' values.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_ws_mode {
    /// PTools' `WS_MODE_RR`: call k goes to worker k mod n (2, 3, 4, 2, ...
    /// for [2, 3, 4]); dead workers are skipped.
    CLUSTER_WS_MODE_RR = 1,
    /// PTools' `WS_MODE_FF`: each call goes to an idle worker; when all are
    /// busy calls queue in FIFO order; a worker comes back when its call
    /// completes, failed or not; queued calls are never dropped.
    CLUSTER_WS_MODE_FF = 2,
}

c_handle!(cluster_workerset, Kind::WorkerSet, WorkerSet);

/// PTools' `WorkerSet(pids, mode)` over `pids[0..n)` (at least one;
/// duplicates count once), `mode` a `cluster_ws_mode`.
///
/// Ownership: `pids` is read during the call; `*out` is a new handle,
/// released with `cluster_workerset_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_workerset_new(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    n: usize,
    mode: i32,
    out: *mut *mut cluster_workerset,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let mode = match mode {
            1 => WsMode::RoundRobin,
            2 => WsMode::FirstFree,
            m => return Err(invalid(format!("unknown worker set mode {m}"))),
        };
        let ws = c.worker_set(&pid_list(pids, n)?, mode)?;
        put(out, "out", handles::insert(Kind::WorkerSet, ws)? as *mut cluster_workerset)
    })
}

/// `remotecall(ws, f, ...)`, returned at once: RR sends it to the next
/// worker; FF to an idle one, or queues it (FIFO) until one is. PTools
/// allows this only in RR mode; here FF works too (the completion frees the
/// worker). In FF mode `cluster_future_pid` names the worker when one was
/// idle at once, else gives 0.
///
/// Ownership: `args` is read during the call (copied if the call queues);
/// `*out` is a new future, released with `cluster_future_free`.
/// Blocking: only while a large argument is written.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_workerset_remotecall(
    ws: *mut cluster_workerset,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ws => w] {
        check_out(out, "out")?;
        let f = w.remotecall(cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// `remotecall_fetch(ws, f, ...)`: as `cluster_workerset_remotecall`, then
/// waits for the value.
///
/// Ownership: `args` is never kept; `*out` is the caller's until
/// `cluster_buffer_free`.
/// Blocking: until the call completes (queued first in FF mode while every
/// worker is busy).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_workerset_remotecall_fetch(
    ws: *mut cluster_workerset,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([ws => w] {
        check_out(out, "out")?;
        let v = w.remotecall_fetch(cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", buffer_from(v)?)
    })
}

/// `remotecall_wait(ws, f, ...)`: as `cluster_workerset_remotecall`, then
/// waits for completion; `*out` is the completed future (none on failure).
///
/// Ownership: `args` is never kept; `*out` is a new future, released with
/// `cluster_future_free`.
/// Blocking: until the call completes.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_workerset_remotecall_wait(
    ws: *mut cluster_workerset,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ws => w] {
        check_out(out, "out")?;
        let f = w.remotecall_wait(cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Releases a worker set. NULL is accepted. Calls under way and queued go
/// on.
///
/// Ownership: the handle is gone after the call.
/// Blocking: no.
/// Threads: any, once per handle.
#[no_mangle]
pub extern "C" fn cluster_workerset_free(ws: *mut cluster_workerset) -> cluster_status {
    ffi!({
        if ws.is_null() {
            return Ok(());
        }
        ws.remove()
    })
}
