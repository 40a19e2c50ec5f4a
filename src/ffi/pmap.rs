//! `cluster_pmap`: a parallel map in progress (or done) — Distributed's
//! `pmap` over an array of byte buffers, and `@distributed` over a range —
//! with its future, results and progress; `cluster_splitrange`.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::handles::{self, Kind};
use super::pool::cluster_pool;
use super::status::cluster_status;
use super::UserData;
use crate::service::pool::{split, BatchSize, Items, Pmap, PmapOptions, Progress, Retry};
use crate::{Error, ErrorKind};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;
use std::time::Duration;

/// A parallel map: running, or done with a result per element.
pub struct cluster_pmap {
    _private: [u8; 0],
}

/// A byte buffer lent to the library for the duration of a call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_bytes {
    pub data: *const u8,
    pub len: usize,
}

/// An inclusive range of integers, `first..=last`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct cluster_range {
    pub first: i64,
    pub last: i64,
}

/// `cluster_pmap_options.batch_size`: Distributed's `batch_size=:auto`,
/// batches sized from the number of elements and workers (at least three
/// batches per worker, at most 100 elements each).
pub const CLUSTER_BATCH_AUTO: usize = 0;

/// Told how many elements are done (`failed` of them with an error) out
/// of `total`; at most every `progress_interval_ms` and once at the end,
/// before the map's future completes. Threads mode: on the library thread
/// completing elements; host mode: inside `cluster_poll`, and the map then
/// completes in the `cluster_poll` that makes its last report (a host
/// waiting on such a map polls).
pub type cluster_progress_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, done: usize, failed: usize, total: usize)>;

/// Decides whether element `index` is retried after failing with
/// `status` (`message`, from process `pid`; borrowed for the call);
/// `attempt` retries were made before. Threads mode: on a library thread;
/// host mode: inside `cluster_poll`.
pub type cluster_retry_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, index: usize, attempt: u32, status: i32, pid: i32, message: *const c_char) -> bool>;

/// How `cluster_pmap_async` maps. Fill with `cluster_pmap_options_init`,
/// then change fields. Its callbacks never start once the map's future has
/// completed (its end, or `cluster_pmap_cancel` followed by a wait): their
/// `user_data` may then be freed.
#[repr(C)]
pub struct cluster_pmap_options {
    /// `sizeof(cluster_pmap_options)`, set by `cluster_pmap_options_init`.
    pub struct_size: u32,
    /// Elements per call. Default 1; CLUSTER_BATCH_AUTO: Distributed's `:auto`.
    pub batch_size: usize,
    /// Distributed's `on_error`: a failed element keeps its error as its
    /// result and the map goes on. Default false: the first failure (after
    /// its retries) fails the map.
    pub on_error: bool,
    /// Distributed's `retry_delays`: `retries` delays in milliseconds, one
    /// per retry, waited before it. A worker's death counts like any other
    /// error; only the lost elements are retried, on the workers left.
    pub retry_delays_ms: *const u32,
    pub retries: usize,
    /// Distributed's `retry_check` (NULL: retry every failure).
    pub retry_check: cluster_retry_fn,
    pub retry_user_data: *mut c_void,
    /// Progress reports (NULL: none).
    pub progress: cluster_progress_fn,
    pub progress_user_data: *mut c_void,
    /// Least time between progress reports. Default 100.
    pub progress_interval_ms: u32,
    /// The most calls in flight to one worker at once. Default 16. Up to it
    /// a map keeps 2 (the next element waits at the worker while it runs
    /// one), more for short elements: as many as keep about 250 us of
    /// work queued at the worker. 1 is Distributed's.
    pub max_in_flight: u32,
}

/// A map behind a handle, with room for its elements' error texts.
pub(crate) struct PmapObj {
    map: Pmap,
    err_text: Mutex<HashMap<usize, CString>>,
}

c_handle!(cluster_pmap, Kind::Pmap, PmapObj);

/// Fills `*opts` with the defaults.
///
/// Ownership: `*opts` is the caller's; nothing is allocated.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_options_init(opts: *mut cluster_pmap_options) -> cluster_status {
    ffi!({
        let d = PmapOptions::default();
        put(
            opts,
            "opts",
            cluster_pmap_options {
                struct_size: std::mem::size_of::<cluster_pmap_options>() as u32,
                batch_size: 1,
                on_error: false,
                retry_delays_ms: std::ptr::null(),
                retries: 0,
                retry_check: None,
                retry_user_data: std::ptr::null_mut(),
                progress: None,
                progress_user_data: std::ptr::null_mut(),
                progress_interval_ms: d.progress_interval.as_millis() as u32,
                max_in_flight: d.max_in_flight as u32,
            },
        )
    })
}

unsafe fn options_from(c: &super::ctx::CtxObj, o: *const cluster_pmap_options) -> Result<PmapOptions, Error> {
    let mut opts = PmapOptions::default();
    if o.is_null() {
        return Ok(opts);
    }
    let o = &*o;
    if o.struct_size as usize != std::mem::size_of::<cluster_pmap_options>() {
        return Err(invalid("opts was not filled by cluster_pmap_options_init"));
    }
    opts.batch_size = if o.batch_size == CLUSTER_BATCH_AUTO { BatchSize::Auto } else { BatchSize::Fixed(o.batch_size) };
    opts.on_error = o.on_error;
    if o.retries > 0 {
        if o.retry_delays_ms.is_null() {
            return Err(null_arg("retry_delays_ms"));
        }
        opts.retry_delays = std::slice::from_raw_parts(o.retry_delays_ms, o.retries).iter().map(|&ms| Duration::from_millis(ms as u64)).collect();
    }
    if let Some(cb) = o.retry_check {
        let ud = UserData(o.retry_user_data);
        let gate = c.gate().clone();
        opts.retry_check = Some(Arc::new(move |r: &Retry| {
            let ud = ud;
            let Some(_pass) = gate.enter() else { return false };
            let msg = CString::new(r.error.message.replace('\0', " ")).unwrap_or_default();
            let status = cluster_status::from_kind(r.error.kind) as i32;
            // SAFETY: the host registered `cb` with this user data.
            unsafe { cb(ud.0, r.index, r.attempt as u32, status, r.error.pid as i32, msg.as_ptr()) }
        }));
    }
    if let Some(cb) = o.progress {
        let ud = UserData(o.progress_user_data);
        let gate = c.gate().clone();
        opts.progress = Some(Arc::new(move |p: Progress| {
            let ud = ud;
            if let Some(_pass) = gate.enter() {
                // SAFETY: the host registered `cb` with this user data.
                unsafe { cb(ud.0, p.done, p.failed, p.total) }
            }
        }));
    }
    opts.progress_interval = Duration::from_millis(o.progress_interval_ms as u64);
    opts.max_in_flight = o.max_in_flight.max(1) as usize;
    Ok(opts)
}

unsafe fn items_from(items: *const cluster_bytes, n: usize) -> Result<Items, Error> {
    if n == 0 {
        return Ok(Items::new());
    }
    if items.is_null() {
        return Err(null_arg("items"));
    }
    let list = std::slice::from_raw_parts(items, n);
    let total = list.iter().map(|b| b.len).sum();
    let mut out = Items::with_capacity(n, total);
    for b in list {
        out.push(bytes(b.data, b.len, "items[i].data")?);
    }
    Ok(out)
}

unsafe fn pool_arg(pool: *mut cluster_pool) -> Result<Option<Arc<crate::service::pool::WorkerPool>>, Error> {
    if pool.is_null() {
        Ok(None)
    } else {
        pool.object().map(Some)
    }
}

fn new_pmap_handle(map: Pmap) -> Result<*mut cluster_pmap, Error> {
    Ok(handles::insert(Kind::Pmap, Arc::new(PmapObj { map, err_text: Mutex::new(HashMap::new()) }))? as *mut cluster_pmap)
}

/// Distributed's `pmap(f, pool, xs; ...)`, started and returned at once:
/// the function `name` (registered on the workers) is called on each
/// element of `items[0..n)`, on the workers of `pool` (NULL: the default
/// pool). Results come in input order (`cluster_pmap_result`). No thread
/// is made per element or per map: completions dispatch what follows.
///
/// Ownership: `items` (and the bytes they point to), `name` and `opts`
/// are copied before the call returns; `*out` is a new handle, released
/// with `cluster_pmap_free`.
/// Blocking: no (the first calls are written before it returns).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_async(
    ctx: *mut cluster_ctx,
    pool: *mut cluster_pool,
    name: *const c_char,
    items: *const cluster_bytes,
    n: usize,
    opts: *const cluster_pmap_options,
    out: *mut *mut cluster_pmap,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let name = cstr(name, "name")?;
        let pool = pool_arg(pool)?;
        let items = items_from(items, n)?;
        let opts = options_from(&c, opts)?;
        let m = c.pmap(pool.as_ref(), name, items, opts)?;
        put(out, "out", new_pmap_handle(m)?)
    })
}

/// `cluster_pmap_async`, then waits up to `timeout_ms` for the map to end.
/// Returns its outcome: CLUSTER_OK, the error that ended it (`*out` still
/// holds the results of the elements done), or CLUSTER_ERR_TIMEOUT (the
/// map goes on). `*out` is set whenever the map started.
///
/// Ownership: as `cluster_pmap_async`.
/// Blocking: up to `timeout_ms` (CLUSTER_FOREVER: no limit).
/// Threads: any; in host mode not when the map needs this process's own
/// handlers or callbacks.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_run(
    ctx: *mut cluster_ctx,
    pool: *mut cluster_pool,
    name: *const c_char,
    items: *const cluster_bytes,
    n: usize,
    opts: *const cluster_pmap_options,
    timeout_ms: i64,
    out: *mut *mut cluster_pmap,
) -> cluster_status {
    let st = cluster_pmap_async(ctx, pool, name, items, n, opts, out);
    if st != cluster_status::CLUSTER_OK {
        return st;
    }
    cluster_pmap_wait(*out, timeout_ms)
}

/// `@distributed` over `range`, started and returned at once: the function
/// `name` is called once per chunk with the chunk's bounds (`first`, then
/// `last`, as little-endian `int64_t`s) followed by `args[0..len)`; each
/// chunk's result (a partial reduction, for a reducer to combine on the
/// caller) is that chunk's element of the map, in range order. `chunk` 0:
/// Distributed's static split, one contiguous chunk per worker of the pool
/// (`cluster_splitrange`); otherwise chunks of `chunk` elements handed out
/// as workers finish (dynamic balancing). Without a reducer, do not wait:
/// Distributed returns at once too (waiting is `@sync`).
///
/// Ownership: `name`, `args` and `opts` are copied before return; `*out`
/// is a new handle, released with `cluster_pmap_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_distributed_async(
    ctx: *mut cluster_ctx,
    pool: *mut cluster_pool,
    name: *const c_char,
    range: cluster_range,
    chunk: usize,
    args: *const u8,
    len: usize,
    opts: *const cluster_pmap_options,
    out: *mut *mut cluster_pmap,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let name = cstr(name, "name")?;
        let pool = pool_arg(pool)?;
        let args = bytes(args, len, "args")?;
        let opts = options_from(&c, opts)?;
        let m = c.distributed(pool.as_ref(), name, range.first, range.last, chunk, args, opts)?;
        put(out, "out", new_pmap_handle(m)?)
    })
}

/// Distributed's `splitrange`: `range` cut into at most `np` contiguous
/// chunks whose lengths differ by at most one, the longer first (1:11
/// over 3 gives 1:4, 5:8, 9:11); fewer elements than `np` give one chunk
/// each, an empty range none. Writes them to `out[0..cap)` and their
/// number to `*count` (also on CLUSTER_ERR_BUFFER_TOO_SMALL).
///
/// Ownership: `out` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_splitrange(range: cluster_range, np: usize, out: *mut cluster_range, cap: usize, count: *mut usize) -> cluster_status {
    ffi!({
        if np == 0 {
            return Err(invalid("np must be at least 1"));
        }
        let chunks = split::splitrange(range.first, range.last, np);
        put(count, "count", chunks.len())?;
        if chunks.len() > cap {
            return Err(Error::new(ErrorKind::BufferTooSmall, format!("{} chunks do not fit in {cap}", chunks.len())));
        }
        if !chunks.is_empty() {
            check_out(out, "out")?;
            for (i, (a, b)) in chunks.into_iter().enumerate() {
                out.add(i).write(cluster_range { first: a, last: b });
            }
        }
        Ok(())
    })
}

/// A future completed when the map ends: with no value when every element
/// is done (with `on_error`, some may hold errors), else with the error
/// that ended it. Each call gives a new future of the same completion
/// (its `cluster_future_id` is the same, for host-mode events).
///
/// Ownership: `*out` is a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_future(pm: *mut cluster_pmap, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([pm => m] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(m.map.future())?)
    })
}

/// Waits up to `timeout_ms` for the map to end; returns CLUSTER_OK, the
/// error that ended it, or CLUSTER_ERR_TIMEOUT.
///
/// Ownership: `pm` stays the caller's.
/// Blocking: up to `timeout_ms` (CLUSTER_FOREVER: no limit; 0: just check).
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_pmap_wait(pm: *mut cluster_pmap, timeout_ms: i64) -> cluster_status {
    ffi!([pm => m] m.map.wait(timeout_arg(timeout_ms)))
}

/// `*out` = the number of elements.
///
/// Ownership: `pm` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_length(pm: *mut cluster_pmap, out: *mut usize) -> cluster_status {
    ffi!([pm => m] put(out, "out", m.map.len()))
}

/// `*out` = the batch size in use (the one CLUSTER_BATCH_AUTO chose).
///
/// Ownership: `pm` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_batch_size(pm: *mut cluster_pmap, out: *mut usize) -> cluster_status {
    ffi!([pm => m] put(out, "out", m.map.batch_size()))
}

/// Element `index`'s result. CLUSTER_OK: `*data`/`*len` point at its value.
/// An element that failed returns its error status, with
/// `cluster_last_error()` its message and `cluster_last_error_pid()` the
/// process (see also `cluster_pmap_error`); one not done (yet, or ever,
/// if the map ended first) returns CLUSTER_ERR_NOT_READY.
///
/// Ownership: the bytes belong to the map, valid until `cluster_pmap_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_result(pm: *mut cluster_pmap, index: usize, data: *mut *const u8, len: *mut usize) -> cluster_status {
    ffi!([pm => m] {
        check_out(data, "data")?;
        check_out(len, "len")?;
        if index >= m.map.len() {
            return Err(invalid(format!("index {index} is past the {} elements", m.map.len())));
        }
        match m.map.result(index) {
            None => Err(Error::new(ErrorKind::NotReady, format!("element {index} is not done"))),
            Some(Err(e)) => Err(e),
            Some(Ok(v)) => {
                // The value's bytes live in the map, at a fixed address.
                put(data, "data", v.as_ptr())?;
                put(len, "len", v.len())
            }
        }
    })
}

/// For a failed element: `*pid` = the process its error came from,
/// `*message` = its text. Either out pointer may be NULL. CLUSTER_OK with
/// pid 0 and "" for an element that succeeded; CLUSTER_ERR_NOT_READY for
/// one not done.
///
/// Ownership: `*message` belongs to the map, valid until it is freed.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_error(pm: *mut cluster_pmap, index: usize, pid: *mut i32, message: *mut *const c_char) -> cluster_status {
    ffi!([pm => m] {
        if index >= m.map.len() {
            return Err(invalid(format!("index {index} is past the {} elements", m.map.len())));
        }
        let (p, text) = match m.map.result(index) {
            None => return Err(Error::new(ErrorKind::NotReady, format!("element {index} is not done"))),
            Some(Ok(_)) => (0, c"".as_ptr()),
            Some(Err(e)) => {
                let mut t = m.err_text.lock();
                let s = t.entry(index).or_insert_with(|| CString::new(e.to_string().replace('\0', " ")).unwrap_or_default());
                (e.pid as i32, s.as_ptr())
            }
        };
        if !pid.is_null() {
            pid.write(p);
        }
        if !message.is_null() {
            message.write(text);
        }
        Ok(())
    })
}

/// `*done` = elements done so far (successfully or not), `*failed` = those
/// of them holding an error. Either may be NULL.
///
/// Ownership: `pm` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_pmap_progress(pm: *mut cluster_pmap, done: *mut usize, failed: *mut usize) -> cluster_status {
    ffi!([pm => m] {
        let p = m.map.progress();
        if !done.is_null() {
            done.write(p.done);
        }
        if !failed.is_null() {
            failed.write(p.failed);
        }
        Ok(())
    })
}

/// Stops the map: nothing more is sent, and it ends with
/// CLUSTER_ERR_INTERRUPTED (calls under way finish on their workers, which
/// then go back to the pool). Cancelling a map that ended does nothing.
///
/// Ownership: `pm` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_pmap_cancel(pm: *mut cluster_pmap) -> cluster_status {
    ffi!([pm => m] {
        m.map.cancel();
        Ok(())
    })
}

/// Releases a map. NULL is accepted. A map still running goes on to its
/// end (its workers go back to the pool), unobserved; cancel it first to
/// stop it.
///
/// Ownership: the handle, and bytes and messages read from it, are gone
/// after the call.
/// Blocking: no.
/// Threads: any, once per map.
#[no_mangle]
pub extern "C" fn cluster_pmap_free(pm: *mut cluster_pmap) -> cluster_status {
    ffi!({
        if pm.is_null() {
            return Ok(());
        }
        pm.remove()
    })
}
