//! Remote variables (ClusterUtils' `sow` / `reap` over bytes): named byte
//! values each process holds, set on, read from and transformed on a set
//! of processes. Results holding one value per process come in the parts
//! layout (`cluster_parts_next`), in the order of the `pids` given.

use super::args::*;
use super::buffer::{buffer_from, buffer_from_vec, cluster_buffer};
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::status::cluster_status;
use crate::prelude::*;
use std::ffi::c_char;

/// Sets variable `name` to `value[0..len)` on every process of
/// `pids[0..npids)` (this one included when listed).
///
/// Ownership: everything is copied or sent before return.
/// Blocking: yes, a round trip to each process (at once).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_set(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    name: *const c_char,
    value: *const u8,
    len: usize,
) -> cluster_status {
    ffi!([ctx => c] c.node().set_var(&pid_list(pids, npids)?, cstr(name, "name")?, bytes(value, len, "value")?))
}

/// `cluster_vars_set` as a future (no value), returned at once; a process
/// that cannot be reached fails it, naming the process.
///
/// Ownership: everything is copied or sent before return; `*out` receives
/// a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_set_async(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    name: *const c_char,
    value: *const u8,
    len: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let f = c.node().set_var_async(&pid_list(pids, npids)?, cstr(name, "name")?, bytes(value, len, "value")?)?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Variable `name` from every process of `pids[0..npids)` into `*out`, in
/// the parts layout, in the order of `pids`; a process without it fails
/// the call with CLUSTER_ERR_NOT_FOUND naming it (`cluster_last_error_pid`).
///
/// Ownership: `*out` is the caller's until `cluster_buffer_free`.
/// Blocking: yes, a round trip to each process (at once).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_get(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    name: *const c_char,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let v = c.node().get_var_async(&pid_list(pids, npids)?, cstr(name, "name")?)?.value()?;
        put(out, "out", buffer_from(v)?)
    })
}

/// `cluster_vars_get` as a future, returned at once: its value is the
/// parts layout.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_get_async(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    name: *const c_char,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.node().get_var_async(&pid_list(pids, npids)?, cstr(name, "name")?)?)?)
    })
}

/// Calls the function `fname` (registered with `cluster_register` on each
/// process) with variable `name`'s value as its arguments, on every
/// process of `pids[0..npids)`, where the variable lives. `keep_as` NULL:
/// the results into `*out` (parts layout, order of `pids`); else each
/// result is stored there as variable `keep_as` and the parts are empty.
///
/// Ownership: `*out` is the caller's until `cluster_buffer_free`.
/// Blocking: yes, until every call is done.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_apply(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    name: *const c_char,
    fname: *const c_char,
    keep_as: *const c_char,
    out: *mut cluster_buffer,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let f = c.node().apply_var_async(&pid_list(pids, npids)?, cstr(name, "name")?, cstr(fname, "fname")?, opt_cstr(keep_as, "keep_as")?)?;
        put(out, "out", buffer_from(f.value()?)?)
    })
}

/// `cluster_vars_apply` as a future, returned at once: its value is the
/// parts layout.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_apply_async(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    name: *const c_char,
    fname: *const c_char,
    keep_as: *const c_char,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let f = c.node().apply_var_async(&pid_list(pids, npids)?, cstr(name, "name")?, cstr(fname, "fname")?, opt_cstr(keep_as, "keep_as")?)?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Removes variable `name` from every process of `pids[0..npids)` (a
/// process without it is no error).
///
/// Ownership: nothing is kept.
/// Blocking: yes, a round trip to each process (at once).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_delete(ctx: *mut cluster_ctx, pids: *const i32, npids: usize, name: *const c_char) -> cluster_status {
    ffi!([ctx => c] c.node().delete_var(&pid_list(pids, npids)?, cstr(name, "name")?))
}

/// This process's variable `name` into `*out`, read here (no message);
/// CLUSTER_ERR_NOT_FOUND when it holds none.
///
/// Ownership: `*out` is the caller's until `cluster_buffer_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_local_get(ctx: *mut cluster_ctx, name: *const c_char, out: *mut cluster_buffer) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let v = c.node().local_var(cstr(name, "name")?)?;
        put(out, "out", buffer_from_vec(v.to_vec())?)
    })
}

/// Sets this process's variable `name` to `value[0..len)` (no message).
///
/// Ownership: `value` is copied.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_vars_local_set(ctx: *mut cluster_ctx, name: *const c_char, value: *const u8, len: usize) -> cluster_status {
    ffi!([ctx => c] c.node().set_local_var(cstr(name, "name")?, bytes(value, len, "value")?))
}
