//! `cluster_pool`: Distributed's `WorkerPool`, in the process that made it.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::buffer::{buffer_from, cluster_buffer};
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::handles::{self, Kind};
use super::status::cluster_status;
use crate::service::pool::WorkerPool;
use std::ffi::c_char;
use std::sync::Arc;

/// A pool of workers: take a free one, put it back, push new ones; calls
/// on a pool run on a free worker and give it back when they complete.
pub struct cluster_pool {
    _private: [u8; 0],
}

c_handle!(cluster_pool, Kind::Pool, WorkerPool);

pub(crate) fn new_pool_handle(p: Arc<WorkerPool>) -> Result<*mut cluster_pool, crate::Error> {
    Ok(handles::insert(Kind::Pool, p)? as *mut cluster_pool)
}

/// Distributed's `WorkerPool(pids)`: a pool of the processes
/// `pids[0..n)` (duplicates count once), all free. A member that dies
/// leaves the pool; a pool with no live member fails every take with
/// CLUSTER_ERR_NO_SUCH_PROCESS, "no active worker available in pool".
///
/// Ownership: `pids` is read during the call; `*out` is a new handle,
/// released with `cluster_pool_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_new(ctx: *mut cluster_ctx, pids: *const i32, n: usize, out: *mut *mut cluster_pool) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let pool = c.worker_pool(&pid_list(pids, n)?)?;
        put(out, "out", new_pool_handle(pool)?)
    })
}

/// Distributed's `default_worker_pool()`: every worker, following joins
/// and departures; the head itself while it has no worker (as
/// Distributed's default pool uses process 1 then). Each call gives a new
/// handle to the same pool.
///
/// Ownership: `*out` is a new handle, released with `cluster_pool_free`
/// (the default pool itself lives as long as the cluster).
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_default(ctx: *mut cluster_ctx, out: *mut *mut cluster_pool) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        put(out, "out", new_pool_handle(c.default_pool()?)?)
    })
}

/// Distributed's `push!(pool, pid)`: adds a live process to the pool, free.
/// Adding a member again does nothing.
///
/// Ownership: `pool` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_pool_push(pool: *mut cluster_pool, pid: i32) -> cluster_status {
    ffi!([pool => p] p.push(pid_arg(pid)?))
}

/// Distributed's `put!(pool, pid)`: returns a taken worker; the oldest
/// queued take gets it. A process that is not a member (or is free
/// already) is ignored.
///
/// Ownership: `pool` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_pool_put(pool: *mut cluster_pool, pid: i32) -> cluster_status {
    ffi!([pool => p] {
        p.put(pid_arg(pid)?);
        Ok(())
    })
}

/// Distributed's `take!(pool)` as a future, returned at once: its value is
/// the worker's id (an `int32_t`, 4 bytes little-endian), given once one is
/// free (takers are served in FIFO order); dead members are skipped. It
/// fails with CLUSTER_ERR_NO_SUCH_PROCESS when the pool has no live member.
/// The taker must `cluster_pool_put` the worker back.
///
/// Ownership: `*out` is a new future, released with `cluster_future_free`
/// (freeing it does not withdraw the take).
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_take_async(pool: *mut cluster_pool, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([pool => p] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(p.take_async()?)?)
    })
}

/// `take!(pool)`: waits up to `timeout_ms` for a free worker, takes it and
/// writes its id to `*pid`. CLUSTER_ERR_TIMEOUT withdraws the take.
///
/// Ownership: `pool` stays the caller's.
/// Blocking: up to `timeout_ms` (CLUSTER_FOREVER: no limit).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_take(pool: *mut cluster_pool, timeout_ms: i64, pid: *mut i32) -> cluster_status {
    ffi!([pool => p] {
        check_out(pid, "pid")?;
        let w = p.take(timeout_arg(timeout_ms))?;
        put(pid, "pid", w as i32)
    })
}

/// `*out` = Distributed's `length(pool)`: its live members, free or busy.
///
/// Ownership: `pool` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_length(pool: *mut cluster_pool, out: *mut usize) -> cluster_status {
    ffi!([pool => p] put(out, "out", p.len()))
}

/// `*out` = Distributed's `isready(pool)`: whether a take would not wait.
///
/// Ownership: `pool` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_isready(pool: *mut cluster_pool, out: *mut bool) -> cluster_status {
    ffi!([pool => p] put(out, "out", p.is_ready()))
}

/// Writes the pool's live members (in the order they joined it) to
/// `out[0..cap)` and their number to `*count` (also on
/// CLUSTER_ERR_BUFFER_TOO_SMALL).
///
/// Ownership: `out` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_workers(pool: *mut cluster_pool, out: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    ffi!([pool => p] put_ids(p.workers(), out, cap, count))
}

/// `remotecall(f, pool, ...)`: returns a future at once; the call goes to
/// a free worker (once one is free) and the worker goes back to the pool
/// when the call completes, failed or not. `cluster_future_pid` names the
/// worker when one was free at once, else gives 0.
///
/// Ownership: `args` is read during the call (copied when the call must
/// wait for a worker); `*out` is a new future, released with
/// `cluster_future_free`.
/// Blocking: only while a large argument is written.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_remotecall(
    pool: *mut cluster_pool,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([pool => p] {
        check_out(out, "out")?;
        let f = p.remotecall(cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// `remotecall_fetch(f, pool, ...)`: as `cluster_pool_remotecall`, then
/// waits for the value.
///
/// Ownership: `args` is never kept; `*out` is the caller's until
/// `cluster_buffer_free`.
/// Blocking: until a worker is free and the call completes.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_remotecall_fetch(
    pool: *mut cluster_pool,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([pool => p] {
        check_out(out, "out")?;
        let v = p.remotecall_fetch(cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", buffer_from(v)?)
    })
}

/// `remotecall_wait(f, pool, ...)`: as `cluster_pool_remotecall`, then
/// waits for completion; `*out` is the completed future (none on failure).
///
/// Ownership: `args` is never kept; `*out` is a new future, released with
/// `cluster_future_free`.
/// Blocking: until a worker is free and the call completes.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_remotecall_wait(
    pool: *mut cluster_pool,
    name: *const c_char,
    args: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([pool => p] {
        check_out(out, "out")?;
        let f = p.remotecall_wait(cstr(name, "name")?, bytes(args, len, "args")?)?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// `remote_do(f, pool, ...)`: returns at once; the call goes to a free
/// worker once one is, and the worker goes back when the call completes
/// (Distributed puts it back at once, oversubscribing it). A failure is
/// logged on this process.
///
/// Ownership: `args` is copied when the call must wait, never kept.
/// Blocking: only while a large argument is written.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pool_remote_do(pool: *mut cluster_pool, name: *const c_char, args: *const u8, len: usize) -> cluster_status {
    ffi!([pool => p] p.remote_do(cstr(name, "name")?, bytes(args, len, "args")?))
}

/// Releases a pool handle. NULL is accepted. Calls and maps under way on
/// the pool go on (they hold the pool); workers taken from it stay taken.
///
/// Ownership: the handle is gone after the call.
/// Blocking: no.
/// Threads: any, once per handle.
#[no_mangle]
pub extern "C" fn cluster_pool_free(pool: *mut cluster_pool) -> cluster_status {
    ffi!({
        if pool.is_null() {
            return Ok(());
        }
        pool.remove()
    })
}
