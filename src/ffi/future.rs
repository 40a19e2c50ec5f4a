//! `cluster_future`, a pending or completed call result, and
//! `cluster_future_ref`, its copyable form for other processes.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::ctx::cluster_ctx;
use super::handles::{self, Kind};
use super::status::cluster_status;
use crate::{Error, ErrorKind, Future, FutureRef};
use std::ffi::{c_char, CString};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A pending or completed remote call result.
pub struct cluster_future {
    _private: [u8; 0],
}

/// The small, copyable form of a future that another process can import.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_future_ref {
    /// The process holding the value.
    pub owner: i32,
    pub id: u64,
}

/// A future behind a handle, with room for its error text.
pub(crate) struct FutureObj {
    fut: Future,
    err_text: OnceLock<CString>,
}

impl std::ops::Deref for FutureObj {
    type Target = Future;
    fn deref(&self) -> &Future {
        &self.fut
    }
}

impl FutureObj {
    /// The error text of a failed future, kept with its handle.
    fn error_text(&self, e: &Error) -> *const c_char {
        self.err_text.get_or_init(|| CString::new(e.to_string().replace('\0', " ")).unwrap_or_default()).as_ptr()
    }
}

c_handle!(cluster_future, Kind::Future, FutureObj);

/// A new handle owning `f`.
pub(crate) fn new_future_handle(f: Future) -> Result<*mut cluster_future, Error> {
    let obj = FutureObj { fut: f, err_text: OnceLock::new() };
    Ok(handles::insert(Kind::Future, Arc::new(obj))? as *mut cluster_future)
}

/// Reads the future's reply connection on the calling thread for up to
/// `spin_us` microseconds and sets `*ready`; never parks. A host runtime
/// (Julia) calls it before it waits on its own scheduler, so a fast reply
/// costs no thread wake-up. Incoming calls read meanwhile are queued for
/// `cluster_poll` in host mode.
///
/// Ownership: `f` stays the caller's.
/// Blocking: no; busy for at most `spin_us`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_drive(f: *mut cluster_future, spin_us: u32, ready: *mut bool) -> cluster_status {
    ffi!([f => fut] {
        check_out(ready, "ready")?;
        put(ready, "ready", fut.drive(Duration::from_micros(spin_us as u64)))
    })
}

/// Waits until the future completes or `timeout_ms` passes (CLUSTER_FOREVER:
/// no limit; 0: just check). Returns CLUSTER_OK, CLUSTER_ERR_TIMEOUT, or the
/// call's own error.
///
/// Ownership: `f` stays the caller's.
/// Blocking: yes, up to `timeout_ms` (the waiting thread may read the
/// reply from the connection itself).
/// Threads: any; several threads may wait on one future.
#[no_mangle]
pub extern "C" fn cluster_future_wait(f: *mut cluster_future, timeout_ms: i64) -> cluster_status {
    ffi!([f => fut] fut.wait(timeout_arg(timeout_ms)))
}

/// `*out` = whether the future has completed (successfully or not).
///
/// Ownership: `f` stays the caller's.
/// Blocking: no (an imported future may send its fetch request).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_isready(f: *mut cluster_future, out: *mut bool) -> cluster_status {
    ffi!([f => fut] {
        check_out(out, "out")?;
        put(out, "out", fut.is_ready())
    })
}

/// Waits as `cluster_future_wait`, then points `*data`/`*len` at the
/// value. The value is cached: fetching again costs nothing.
///
/// Ownership: the bytes belong to the future and stay valid until
/// `cluster_future_free`.
/// Blocking: yes, up to `timeout_ms`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_fetch(f: *mut cluster_future, timeout_ms: i64, data: *mut *const u8, len: *mut usize) -> cluster_status {
    ffi!([f => fut] {
        check_out(data, "data")?;
        check_out(len, "len")?;
        let v = fut.fetch(timeout_arg(timeout_ms))?;
        put(data, "data", v.as_ptr())?;
        put(len, "len", v.len())
    })
}

/// For a future that failed: `*pid` = the process the error came from,
/// `*message` = its text. Either out pointer may be NULL.
/// CLUSTER_ERR_NOT_READY if still pending; CLUSTER_OK with pid 0 and "" if
/// it succeeded.
///
/// Ownership: `*message` belongs to the future, valid until it is freed.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_error(f: *mut cluster_future, pid: *mut i32, message: *mut *const c_char) -> cluster_status {
    ffi!([f => fut] {
        if !fut.is_ready() {
            return Err(Error::new(ErrorKind::NotReady, "the future is still pending"));
        }
        let (p, m) = match fut.wait(Some(Duration::ZERO)) {
            Ok(()) => (0, c"".as_ptr()),
            Err(e) => (e.pid as i32, fut.error_text(&e)),
        };
        if !pid.is_null() {
            pid.write(p);
        }
        if !message.is_null() {
            message.write(m);
        }
        Ok(())
    })
}

/// `*out` = the future's id, unique in this process; host-mode
/// CLUSTER_EVENT_FUTURE_READY events name futures by it.
///
/// Ownership: `f` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_id(f: *mut cluster_future, out: *mut u64) -> cluster_status {
    ffi!([f => fut] {
        check_out(out, "out")?;
        put(out, "out", fut.id())
    })
}

/// `*out` = the process computing or holding the future's value.
///
/// Ownership: `f` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_pid(f: *mut cluster_future, out: *mut i32) -> cluster_status {
    ffi!([f => fut] {
        check_out(out, "out")?;
        put(out, "out", fut.pid() as i32)
    })
}

/// Makes a reference to send to another process (e.g. inside call
/// arguments), which imports it with `cluster_future_import`. The owner
/// keeps the value until every exported reference has been imported and
/// freed.
///
/// Ownership: `*out` is a plain value; it must be imported exactly once.
/// Blocking: a round trip to the owner (up to 30 s) when this future is
/// itself imported from another process; otherwise no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_export(f: *mut cluster_future, out: *mut cluster_future_ref) -> cluster_status {
    ffi!([f => fut] {
        check_out(out, "out")?;
        let r = fut.export()?;
        put(out, "out", cluster_future_ref { owner: r.owner as i32, id: r.id })
    })
}

/// `cluster_future_export` as a future, returned at once: its value is the
/// reference, 12 bytes (owner as a little-endian `int32_t`, then id as a
/// little-endian `uint64_t`), to copy into a `cluster_future_ref`.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_export_async(f: *mut cluster_future, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([f => fut] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(fut.export_async()?)?)
    })
}

/// Turns a reference from `cluster_future_export` into a future of this
/// process. Import each exported reference once: freeing the imported
/// future releases it.
///
/// Ownership: `*r` is read during the call; `*out` is a new future,
/// released with `cluster_future_free`.
/// Blocking: no (the owner is told in the background).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_future_import(ctx: *mut cluster_ctx, r: *const cluster_future_ref, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        if r.is_null() {
            return Err(null_arg("ref"));
        }
        let r = &*r;
        let f = c.import(FutureRef { owner: pid_arg(r.owner)?, id: r.id })?;
        put(out, "out", new_future_handle(f)?)
    })
}

/// Releases a future. NULL is accepted; a second free is
/// CLUSTER_ERR_BAD_HANDLE, not a crash.
///
/// Ownership: the handle, and bytes fetched from it, are gone after the call.
/// Blocking: no (safe from a garbage-collector finalizer; an imported
/// future's owner is told in the background).
/// Threads: any, once per future.
#[no_mangle]
pub extern "C" fn cluster_future_free(f: *mut cluster_future) -> cluster_status {
    ffi!({
        if f.is_null() {
            return Ok(());
        }
        f.remove()
    })
}
