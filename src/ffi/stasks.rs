//! `cluster_stasks`, a set of server tasks (PTools' `start_stasks`,
//! `pmap_stasks`, `stop_stasks`, `count_stasks`): one long-lived task per
//! process, whose state the functions it runs keep from call to call.

use super::args::*;
use super::boundary::Handle;
use super::buffer::{buffer_from, buffer_from_vec, cluster_buffer};
use super::call::cluster_call;
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::handles::{self, Kind};
use super::pmap::cluster_bytes;
use super::status::cluster_status;
use crate::prelude::*;
use crate::service::stasks::ServerTasks;
use crate::{Error, ErrorKind};
use std::ffi::{c_char, c_void};
use std::sync::Arc;

/// A set of server tasks: task i runs on process `pids[i]`
/// (`cluster_stasks_pids`). Freeing the handle does not stop them.
pub struct cluster_stasks {
    _private: [u8; 0],
}

c_handle!(cluster_stasks, Kind::Stasks, ServerTasks);

/// A task's state slot as C sees it: a pointer the task's functions own.
struct Slot(*mut c_void);
// SAFETY: the pointer is the host's; the C contract makes it responsible
// for what it points to (the slot itself is behind the task's lock).
unsafe impl Send for Slot {}

/// `start_stasks`: a task on each of `pids[0..npids)` (`pids` NULL: every
/// worker, or this process when it has none); returns once every task
/// exists. Task i's functions run on `pids[i]`.
///
/// Ownership: `pids` is read during the call; `*out` receives a new
/// handle, released with `cluster_stasks_free`.
/// Blocking: yes, a round trip to each process.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_stasks_start(ctx: *mut cluster_ctx, pids: *const i32, npids: usize, out: *mut *mut cluster_stasks) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let pids = if pids.is_null() { None } else { Some(pid_list(pids, npids)?) };
        let h = c.start_stasks(pids.as_deref())?;
        put(out, "out", handles::insert(Kind::Stasks, Arc::new(h))? as *mut cluster_stasks)
    })
}

/// `cluster_stasks_start` as a future: `*out` is usable once `*started`
/// completes (if it fails, stop the set with `cluster_stasks_stop`).
///
/// Ownership: `pids` is read during the call; `*out` receives a new handle
/// (`cluster_stasks_free`), `*started` a new future (`cluster_future_free`).
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_stasks_start_async(
    ctx: *mut cluster_ctx,
    pids: *const i32,
    npids: usize,
    out: *mut *mut cluster_stasks,
    started: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        check_out(started, "started")?;
        let pids = if pids.is_null() { None } else { Some(pid_list(pids, npids)?) };
        let (h, f) = c.start_stasks_async(pids.as_deref())?;
        let fh = new_future_handle(f)?;
        put(out, "out", handles::insert(Kind::Stasks, Arc::new(h))? as *mut cluster_stasks)?;
        put(started, "started", fh)
    })
}

/// Frees the handle (the tasks run on until `cluster_stasks_stop`). NULL
/// is accepted.
///
/// Ownership: the handle is gone after the call.
/// Blocking: no.
/// Threads: any, once per handle.
#[no_mangle]
pub extern "C" fn cluster_stasks_free(h: *mut cluster_stasks) -> cluster_status {
    ffi!({
        if h.is_null() {
            return Ok(());
        }
        h.remove()
    })
}

/// `count_stasks(h)` into `*out`.
///
/// Ownership: `h` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_stasks_count(h: *mut cluster_stasks, out: *mut usize) -> cluster_status {
    ffi!([h => t] put(out, "out", t.count()))
}

/// Copies the tasks' processes, in task order, into `ids[0..cap)`;
/// `*count` = how many tasks there are.
///
/// Ownership: `ids` is written, never kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_stasks_pids(h: *mut cluster_stasks, ids: *mut i32, cap: usize, count: *mut usize) -> cluster_status {
    ffi!([h => t] put_ids(t.pids().to_vec(), ids, cap, count))
}

unsafe fn args_arg<'a>(args: *const cluster_bytes, n: usize) -> Result<Vec<&'a [u8]>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if args.is_null() {
        return Err(null_arg("args"));
    }
    std::slice::from_raw_parts(args, n).iter().map(|b| bytes(b.data, b.len, "args[i]")).collect()
}

/// `pmap_stasks(h, f, args)`: calls the function `fname` (registered with
/// `cluster_register` on the tasks' processes) on every task, task i with
/// `args[i]` (`n` must be the task count: CLUSTER_ERR_INVALID_ARGUMENT
/// otherwise); `futures[i]` receives task i's future (a task whose
/// process is gone gets a failed one). Inside the function,
/// `cluster_stask_state` gives the task and its arguments.
///
/// Ownership: `args` is written before return, never kept; each
/// `futures[i]` is a new future, released with `cluster_future_free`.
/// Blocking: no (only while large arguments are written).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_stasks_pmap_async(
    h: *mut cluster_stasks,
    fname: *const c_char,
    args: *const cluster_bytes,
    n: usize,
    futures: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([h => t] {
        let args = args_arg(args, n)?;
        if futures.is_null() {
            return Err(null_arg("futures"));
        }
        let fs = t.pmap_async(cstr(fname, "fname")?, &args)?;
        let mut handles = Vec::with_capacity(fs.len());
        for f in fs {
            match new_future_handle(f) {
                Ok(fh) => handles.push(fh),
                Err(e) => {
                    for fh in handles {
                        let _ = super::future::cluster_future_free(fh);
                    }
                    return Err(e);
                }
            }
        }
        for (i, fh) in handles.into_iter().enumerate() {
            *futures.add(i) = fh;
        }
        Ok(())
    })
}

/// `cluster_stasks_pmap_async`, waited for: `statuses[i]` = task i's
/// outcome and `results[i]` = its value (CLUSTER_OK) or its error's
/// message. Returns CLUSTER_OK once every task answered, whatever each
/// answered (read `statuses`).
///
/// Ownership: `args` is never kept; each `results[i]` is the caller's
/// until `cluster_buffer_free`.
/// Blocking: yes, until every task answers.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_stasks_pmap(
    h: *mut cluster_stasks,
    fname: *const c_char,
    args: *const cluster_bytes,
    n: usize,
    results: *mut cluster_buffer,
    statuses: *mut cluster_status,
) -> cluster_status {
    ffi!([h => t] {
        let args = args_arg(args, n)?;
        if results.is_null() || statuses.is_null() {
            return Err(null_arg(if results.is_null() { "results" } else { "statuses" }));
        }
        let fs = t.pmap_async(cstr(fname, "fname")?, &args)?;
        for (i, f) in fs.iter().enumerate() {
            let (st, buf) = match f.value() {
                Ok(v) => (cluster_status::CLUSTER_OK, buffer_from(v)?),
                Err(e) => (cluster_status::from_kind(e.kind), buffer_from_vec(e.message.into_bytes())?),
            };
            *statuses.add(i) = st;
            *results.add(i) = buf;
        }
        Ok(())
    })
}

/// `stop_stasks`: calls `fname` (if not NULL) on every task with empty
/// arguments, to free what its state holds, then drops the tasks; returns
/// the first failure of `fname` other than a task whose process is gone
/// (the tasks are dropped all the same).
///
/// Ownership: `h` stays the caller's (free it after).
/// Blocking: yes, until every task answered.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_stasks_stop(h: *mut cluster_stasks, fname: *const c_char) -> cluster_status {
    ffi!([h => t] t.stop(opt_cstr(fname, "fname")?))
}

/// `cluster_stasks_stop` as a future, returned at once.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_stasks_stop_async(h: *mut cluster_stasks, fname: *const c_char, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([h => t] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(t.stop_async(opt_cstr(fname, "fname")?)?)?)
    })
}

/// Inside a function a server task runs (`cluster_stasks_pmap`): `*task`
/// = the task's index, `*args`/`*len` = the arguments given to this task,
/// and `*state` = the task's state slot, a pointer the task's functions
/// keep from one call to the next (NULL at first; free what it points to
/// in the function given to `cluster_stasks_stop`). Any out pointer may be
/// NULL. CLUSTER_ERR_INVALID_ARGUMENT when `call` is not a server task's.
///
/// Ownership: `*args` is the call's, valid during the call; the slot stays
/// the library's (read and write it during the call only).
/// Blocking: no.
/// Threads: the handler's, during the call.
#[no_mangle]
pub unsafe extern "C" fn cluster_stask_state(
    call: *mut cluster_call,
    task: *mut usize,
    args: *mut *const u8,
    len: *mut usize,
    state: *mut *mut *mut c_void,
) -> cluster_status {
    ffi!({
        type Found = (usize, *const u8, usize, *mut *mut c_void);
        let found: Result<Found, Error> = super::call::with_call(call, |c| {
            let t =
                crate::task_of(c).ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "this call is not a server task's (cluster_stasks_pmap makes them)"))?;
            let mut g = t.task.state.lock();
            if g.as_ref().is_none_or(|b| !b.is::<Slot>()) {
                *g = Some(Box::new(Slot(std::ptr::null_mut())));
            }
            let slot = g.as_mut().and_then(|b| b.downcast_mut::<Slot>()).expect("a slot");
            // The slot lives in the task's record, which outlives the call.
            Ok((t.task.index, t.args.as_ptr(), t.args.len(), &mut slot.0 as *mut *mut c_void))
        })?;
        let (index, a, n, slot) = found?;
        if !task.is_null() {
            put(task, "task", index)?;
        }
        if !args.is_null() {
            put(args, "args", a)?;
        }
        if !len.is_null() {
            put(len, "len", n)?;
        }
        if !state.is_null() {
            put(state, "state", slot)?;
        }
        Ok(())
    })
}
