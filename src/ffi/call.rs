//! `cluster_call`, an incoming call as a handler sees it, and the
//! trampoline that runs a C handler.
//!
//! The handle lives as long as the call can be used: until it is answered
//! (reply or fail), or, for a call the handler deferred, until
//! `cluster_call_free`. Answering a call that is not deferred removes its
//! handle under the call's lock, in the same step that takes the call, so
//! any use after the answer, from any thread, is CLUSTER_ERR_BAD_HANDLE.
//! A deferred call keeps its handle until freed: using it once answered is
//! CLUSTER_ERR_INVALID_ARGUMENT ("already answered").

use super::args::*;
use super::boundary::Handle;
use super::handles::{self, Kind};
use super::status::{cluster_status, cluster_status_str};
use super::gate::Gate;
use super::UserData;
use crate::{Call, Error};
use parking_lot::Mutex;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

/// An incoming call, passed to a handler.
pub struct cluster_call {
    _private: [u8; 0],
}

/// A call behind a handle.
pub(crate) struct CallObj {
    state: Mutex<CallState>,
}

struct CallState {
    /// The call until it is answered.
    call: Option<Call>,
    /// The host keeps the call past its handler (`cluster_call_defer`).
    deferred: bool,
}

c_handle!(cluster_call, Kind::Call, CallObj);

/// What using a call that was already answered gives: a deferred call's
/// handle is still valid (until freed), any other call's is not.
fn answered(deferred: bool) -> Error {
    if deferred {
        invalid("the call was already answered")
    } else {
        handles::bad(Kind::Call, "the call was already answered")
    }
}

thread_local! {
    /// The call whose C handler runs on this thread, with its handle: the
    /// handler's own uses of it (args, reply) skip the handle table. Valid
    /// as long as the table's entry is (the call's own state says whether
    /// it was answered since).
    static CURRENT: std::cell::RefCell<Option<(u64, Arc<CallObj>)>> = const { std::cell::RefCell::new(None) };
}

/// The object of call handle `c`: the running handler's without a table
/// lookup, any other through the table.
fn call_object(c: *mut cluster_call) -> Result<Arc<CallObj>, Error> {
    let mine = CURRENT.with(|cur| cur.borrow().as_ref().filter(|(h, _)| *h == c as u64).map(|(_, o)| o.clone()));
    match mine {
        Some(o) => Ok(o),
        None => c.object(),
    }
}

pub(crate) fn with_call<T>(c: *mut cluster_call, f: impl FnOnce(&Call) -> T) -> Result<T, Error> {
    let obj = call_object(c)?;
    let st = obj.state.lock();
    match st.call.as_ref() {
        Some(call) => Ok(f(call)),
        None => Err(answered(st.deferred)),
    }
}

/// Takes the call to answer it; a call not deferred loses its handle in
/// the same step.
fn take_call(c: *mut cluster_call) -> Result<Call, Error> {
    let obj = call_object(c)?;
    let mut st = obj.state.lock();
    let call = st.call.take().ok_or_else(|| answered(st.deferred))?;
    if !st.deferred {
        let _ = c.remove();
    }
    Ok(call)
}

/// Runs the C handler `h` on `call` with a fresh handle, and answers the
/// call from its status unless the handler answered or deferred it.
pub(crate) fn run_c_handler(h: unsafe extern "C" fn(*mut c_void, *mut cluster_call) -> i32, ud: UserData, gate: &Gate, call: Call) {
    let Some(_pass) = gate.enter() else {
        return call.fail("the cluster is closing");
    };
    let obj = Arc::new(CallObj { state: Mutex::new(CallState { call: Some(call), deferred: false }) });
    let handle = match handles::insert(Kind::Call, obj.clone()) {
        Ok(h) => h as *mut cluster_call,
        Err(e) => {
            if let Some(call) = obj.state.lock().call.take() {
                call.fail(&e.to_string());
            }
            return;
        }
    };
    // A handler may call into a handler of its own (a call to itself):
    // the outer one's entry comes back after.
    let outer = CURRENT.with(|cur| cur.replace(Some((handle as u64, obj.clone()))));
    // SAFETY: the host registered `h` with `ud`; the handle is valid for the call.
    let status = unsafe { h(ud.0, handle) };
    CURRENT.with(|cur| *cur.borrow_mut() = outer);
    let rest = {
        let mut st = obj.state.lock();
        if st.deferred {
            return; // the host owns the handle now
        }
        // Answered: `take_call` removed the handle already.
        if st.call.is_some() {
            let _ = handle.remove();
        }
        st.call.take()
    };
    if let Some(call) = rest {
        if status == cluster_status::CLUSTER_OK as i32 {
            call.reply(&[]);
        } else {
            // SAFETY: cluster_status_str returns a static string for any value.
            let what = unsafe { CStr::from_ptr(cluster_status_str(status)) }.to_string_lossy();
            call.fail(&format!("handler returned: {what}"));
        }
    }
}

/// Points `*data`/`*len` at the call's arguments.
///
/// Ownership: the bytes belong to the call and stay valid until it is
/// answered (or, for a deferred call, freed).
/// Blocking: no.
/// Threads: any, while the handle is valid.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_args(c: *mut cluster_call, data: *mut *const u8, len: *mut usize) -> cluster_status {
    ffi!({
        check_out(data, "data")?;
        check_out(len, "len")?;
        let (p, n) = with_call(c, |call| (call.args().as_ptr(), call.args().len()))?;
        put(data, "data", p)?;
        put(len, "len", n)
    })
}

/// `*out` = the id of the calling process.
///
/// Ownership: `c` stays the library's (or, deferred, the host's).
/// Blocking: no.
/// Threads: any, while the handle is valid.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_caller(c: *mut cluster_call, out: *mut i32) -> cluster_status {
    ffi!({
        check_out(out, "out")?;
        put(out, "out", with_call(c, |call| call.caller() as i32)?)
    })
}

/// Copies the called function's name, NUL-terminated, into `buf[0..cap)`;
/// `*len` gets its length (also on CLUSTER_ERR_BUFFER_TOO_SMALL).
///
/// Ownership: `buf` is the caller's; nothing is kept.
/// Blocking: no.
/// Threads: any, while the handle is valid.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_name(c: *mut cluster_call, buf: *mut c_char, cap: usize, len: *mut usize) -> cluster_status {
    ffi!({
        let name = with_call(c, |call| call.name().to_string())?;
        put_str(&name, buf, cap, len)
    })
}

/// `*out` = whether `cluster_interrupt` cancelled this call; a long
/// handler should check it and return early.
///
/// Ownership: `c` stays the library's (or, deferred, the host's).
/// Blocking: no.
/// Threads: any, while the handle is valid.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_cancelled(c: *mut cluster_call, out: *mut bool) -> cluster_status {
    ffi!({
        check_out(out, "out")?;
        put(out, "out", with_call(c, |call| call.is_cancelled())?)
    })
}

/// Answers the call with `data[0..len)`. A call is answered once: a call
/// that is not deferred is gone once answered (its handle then gives
/// CLUSTER_ERR_BAD_HANDLE); a deferred one stays until `cluster_call_free`.
///
/// Ownership: `data` is copied or sent before return, never kept.
/// Blocking: only while the reply is written to the caller's connection.
/// Threads: any, while the handle is valid.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_reply(c: *mut cluster_call, data: *const u8, len: usize) -> cluster_status {
    ffi!({
        let value = bytes(data, len, "data")?;
        take_call(c)?.reply(value);
        Ok(())
    })
}

/// Fails the call; the caller gets CLUSTER_ERR_REMOTE with `message` (NULL:
/// "failed") and this process's id. Answers the call as `cluster_call_reply`.
///
/// Ownership: `message` is copied, never kept.
/// Blocking: only while the answer is written to the caller's connection.
/// Threads: any, while the handle is valid.
#[no_mangle]
pub unsafe extern "C" fn cluster_call_fail(c: *mut cluster_call, message: *const c_char) -> cluster_status {
    ffi!({
        let msg = opt_cstr(message, "message")?.unwrap_or("failed");
        take_call(c)?.fail(msg);
        Ok(())
    })
}

/// From inside a handler, before answering: keep the call past the
/// handler's return. The host then answers it later and must release it
/// with `cluster_call_free`. The handler slot is freed when the handler
/// returns. Deferring again is a no-op.
///
/// Ownership: the handle becomes the host's, until `cluster_call_free`.
/// Blocking: no.
/// Threads: any, while the handle is valid (normally the handler's).
#[no_mangle]
pub extern "C" fn cluster_call_defer(c: *mut cluster_call) -> cluster_status {
    ffi!([c => obj] {
        let mut st = obj.state.lock();
        if st.call.is_none() && !st.deferred {
            return Err(answered(false));
        }
        st.deferred = true;
        Ok(())
    })
}

/// Releases a deferred call; if it was not answered, the caller gets an
/// error. NULL is accepted. A call that is not deferred is the library's:
/// freeing it is CLUSTER_ERR_INVALID_ARGUMENT.
///
/// Ownership: the handle, and the call's arguments, are gone after the call.
/// Blocking: only while the error for an unanswered call is written.
/// Threads: any, once per deferred call.
#[no_mangle]
pub extern "C" fn cluster_call_free(c: *mut cluster_call) -> cluster_status {
    ffi!({
        if c.is_null() {
            return Ok(());
        }
        let obj = c.object()?;
        let rest = {
            let mut st = obj.state.lock();
            if !st.deferred {
                return Err(match st.call {
                    Some(_) => invalid("only deferred calls are freed by the host"),
                    None => answered(false),
                });
            }
            c.remove()?;
            // Freed from inside its own handler: its later uses there are
            // stale handles too.
            CURRENT.with(|cur| {
                let mut cur = cur.borrow_mut();
                if cur.as_ref().is_some_and(|(h, _)| *h == c as u64) {
                    *cur = None;
                }
            });
            st.call.take()
        };
        drop(rest); // an unanswered call fails for its caller
        Ok(())
    })
}
