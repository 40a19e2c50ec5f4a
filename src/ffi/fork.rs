//! `cluster_pfork` (PTools' `pfork`): n children forked from the caller,
//! each running a C function; `cluster_fork_results`, their outcomes;
//! `cluster_fork_child`, what a child's function returns its bytes
//! through. No `cluster_ctx` is needed: forking works with or without a
//! cluster, on a head or on a worker.
//!
//! **In a child** only the child-side functions (`cluster_fork_return`,
//! `cluster_fork_fail`) and the lock-free ones (`cluster_status_str`,
//! `cluster_last_error`, versions) may be used. Every libcluster handle is
//! refused there (CLUSTER_ERR_WRONG_MODE), before the handle table's lock
//! is taken: another thread of the parent may have held it at the fork,
//! and a child must never talk on the parent's connections. So is
//! `cluster_init` and a nested `cluster_pfork` (its results would need the
//! table). A `cluster_fork_child` is therefore not a table handle but the
//! address of the child's own slot, checked against the one this process
//! runs (a process-wide pointer, set only in the child).

use super::args::*;
use super::boundary::Handle;
use super::handles::{self, Kind};
use super::status::cluster_status;
use super::UserData;
use crate::service::fork::{self, ForkChild, ForkOptions, Outcome};
use crate::{Error, ErrorKind};
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The outcomes of a `cluster_pfork`, one per child in index order.
pub struct cluster_fork_results {
    _private: [u8; 0],
}

/// A child's way to return bytes (`cluster_fork_return`) or an error
/// (`cluster_fork_fail`); valid only in that child, during its function.
pub struct cluster_fork_child {
    _private: [u8; 0],
}

/// Child `index` (0-based) of a `cluster_pfork`, run in the child process
/// on a copy of the parent's memory. Return 0 for success: the child's
/// value is what it gave `cluster_fork_return` (none: empty). Any other
/// return, or a call of `cluster_fork_fail`, fails the child (the message
/// given there, or "the child function returned N"). The function may also
/// exit or crash: the parent reports that as the child's error.
pub type cluster_fork_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, index: i32, child: *mut cluster_fork_child) -> i32>;

/// How a child ended (`cluster_fork_results_child`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_fork_outcome {
    /// Its function returned 0 and it exited cleanly: its bytes are its value.
    CLUSTER_FORK_RETURNED = 0,
    /// Its function failed (`cluster_fork_fail`, a non-zero return).
    CLUSTER_FORK_FAILED = 1,
    /// It exited (`exit`, `_exit`) before returning; `code` is the status.
    CLUSTER_FORK_EXITED = 2,
    /// A signal ended it (a crash, `kill`); `code` is the signal number.
    CLUSTER_FORK_SIGNALED = 3,
    /// Still running at the timeout: killed with SIGKILL and reaped.
    CLUSTER_FORK_TIMED_OUT = 4,
    /// It exited with status 0 without a complete result (it wrote on its
    /// result pipe, or called `_exit(0)` in its function).
    CLUSTER_FORK_NO_RESULT = 5,
    /// It could not be forked (see its message).
    CLUSTER_FORK_NOT_STARTED = 6,
}

/// Set in a child of `cluster_pfork` before its function runs (never in
/// the parent): handles are refused from then on.
static IN_CHILD: AtomicBool = AtomicBool::new(false);
/// The address of the running child's slot (0: none).
static CURRENT_CHILD: AtomicUsize = AtomicUsize::new(0);

/// CLUSTER_ERR_WRONG_MODE in a pfork child (handles, cluster_init, pfork).
pub(crate) fn refuse_in_child(what: &str) -> Result<(), Error> {
    if IN_CHILD.load(Ordering::Relaxed) {
        return Err(Error::new(ErrorKind::WrongMode, format!("{what} cannot be used in a cluster_pfork child (only cluster_fork_return / cluster_fork_fail)")));
    }
    Ok(())
}

/// What a child's function gave.
struct ChildSlot {
    value: Vec<u8>,
    error: Option<String>,
}

/// The running child's slot, if `child` is it.
unsafe fn slot<'a>(child: *mut cluster_fork_child) -> Result<&'a mut ChildSlot, Error> {
    let current = CURRENT_CHILD.load(Ordering::Relaxed);
    if child.is_null() || current == 0 || child as usize != current {
        return Err(Error::new(ErrorKind::BadHandle, "invalid cluster_fork_child: valid only in a cluster_pfork child, during its function"));
    }
    Ok(&mut *(current as *mut ChildSlot))
}

/// The results behind a handle, with each child's message as C text.
pub(crate) struct ResultsObj {
    kids: Vec<ForkChild>,
    messages: Vec<CString>,
}

c_handle!(cluster_fork_results, Kind::ForkResults, ResultsObj);

/// PTools' `pfork(n, f)`: forks `n` children of the calling process;
/// child i runs `f(user_data, i, child)` on a copy of this process's
/// memory (shared mappings stay shared: children can write output arrays
/// the parent reads afterwards) and `_exit`s. Every child is reaped before
/// this returns, and children die with this thread (PR_SET_PDEATHSIG);
/// with `timeout_ms` (CLUSTER_FOREVER: none; 0 kills them at once) those
/// still running then are SIGKILLed. Results are read from all children at once, so large ones
/// never block. C stdio is flushed before forking (children do not repeat
/// buffered output) and in each child before it exits. Returns CLUSTER_OK
/// when every child returned a value, else the status of the first child
/// that did not (CLUSTER_ERR_REMOTE: its function failed;
/// CLUSTER_ERR_PROCESS_EXITED: it exited, crashed or was killed;
/// CLUSTER_ERR_TIMEOUT; CLUSTER_ERR_IO: not started), with
/// `cluster_last_error()` naming it and what happened; `*out` holds every
/// child's outcome in both cases. No cluster is needed; see the README
/// (*Fork*) for what a child may do in a multi-threaded process: in short,
/// only its own work, no libcluster object.
///
/// Ownership: `*out` is a new handle (NULL on an argument error),
/// released with `cluster_fork_results_free`; `user_data` is the caller's.
/// Blocking: until every child has ended and been reaped (at most about
/// `timeout_ms`).
/// Threads: any, several at once (each waits for its own children); not
/// in a pfork child (CLUSTER_ERR_WRONG_MODE).
#[no_mangle]
pub unsafe extern "C" fn cluster_pfork(
    n: i32,
    f: cluster_fork_fn,
    user_data: *mut c_void,
    timeout_ms: i64,
    out: *mut *mut cluster_fork_results,
) -> cluster_status {
    ffi!({
        put(out, "out", std::ptr::null_mut())?;
        refuse_in_child("cluster_pfork")?;
        let n = usize::try_from(n).map_err(|_| invalid(format!("n = {n} children is negative")))?;
        let f = f.ok_or_else(|| null_arg("f"))?;
        let ud = UserData(user_data);
        let opts = ForkOptions { timeout: timeout_arg(timeout_ms) };
        let kids = fork::pfork_with(n, &opts, |i| {
            IN_CHILD.store(true, Ordering::Relaxed);
            let mut s = ChildSlot { value: Vec::new(), error: None };
            CURRENT_CHILD.store(&mut s as *mut ChildSlot as usize, Ordering::Relaxed);
            // SAFETY: the host gave `f` with this user data; the slot lives
            // on this stack for the call.
            let rc = unsafe { f(ud.0, i as i32, &mut s as *mut ChildSlot as *mut cluster_fork_child) };
            CURRENT_CHILD.store(0, Ordering::Relaxed);
            match (rc, s.error) {
                (_, Some(m)) => Err(m),
                (0, None) => Ok(s.value),
                (rc, None) => Err(format!("the child function returned {rc}")),
            }
        });
        let first_error = kids.iter().find_map(ForkChild::error);
        let messages = kids.iter().map(|k| CString::new(k.error().map(|e| e.message).unwrap_or_default().replace('\0', " ")).unwrap_or_default()).collect();
        let h = handles::insert(Kind::ForkResults, Arc::new(ResultsObj { kids, messages }))?;
        put(out, "out", h as *mut cluster_fork_results)?;
        first_error.map_or(Ok(()), Err)
    })
}

/// Inside a child's `cluster_fork_fn`: its value is `data[0..len)`
/// (replacing what was given before).
///
/// Ownership: `data` is copied.
/// Blocking: no.
/// Threads: the child's function, during its call; elsewhere
/// CLUSTER_ERR_BAD_HANDLE.
#[no_mangle]
pub unsafe extern "C" fn cluster_fork_return(child: *mut cluster_fork_child, data: *const u8, len: usize) -> cluster_status {
    ffi!({
        let s = slot(child)?;
        let data = bytes(data, len, "data")?;
        s.value.clear();
        s.value.extend_from_slice(data);
        Ok(())
    })
}

/// Inside a child's `cluster_fork_fn`: the child fails with `message`
/// (whatever the function returns afterwards), which the parent reports
/// with the child's index and pid.
///
/// Ownership: `message` is copied.
/// Blocking: no.
/// Threads: the child's function, during its call; elsewhere
/// CLUSTER_ERR_BAD_HANDLE.
#[no_mangle]
pub unsafe extern "C" fn cluster_fork_fail(child: *mut cluster_fork_child, message: *const c_char) -> cluster_status {
    ffi!({
        let s = slot(child)?;
        s.error = Some(cstr(message, "message")?.to_string());
        Ok(())
    })
}

/// `*count` = the number of children.
///
/// Ownership: `r` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_fork_results_count(r: *mut cluster_fork_results, count: *mut usize) -> cluster_status {
    ffi!([r => o] put(count, "count", o.kids.len()))
}

fn child_of(o: &ResultsObj, index: usize) -> Result<&ForkChild, Error> {
    o.kids.get(index).ok_or_else(|| invalid(format!("index {index} is past the {} children", o.kids.len())))
}

/// Child `index`'s value: CLUSTER_OK with `*data`/`*len` its bytes, or the
/// child's error status (as `cluster_pfork` returns it) with
/// `cluster_last_error()` naming the child and what happened.
///
/// Ownership: the bytes belong to `r`, valid until `cluster_fork_results_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_fork_results_get(r: *mut cluster_fork_results, index: usize, data: *mut *const u8, len: *mut usize) -> cluster_status {
    ffi!([r => o] {
        check_out(data, "data")?;
        check_out(len, "len")?;
        let v = child_of(&o, index)?.result()?;
        put(data, "data", v.as_ptr())?;
        put(len, "len", v.len())
    })
}

/// How child `index` ended: `*outcome` (a `cluster_fork_outcome`),
/// `*code` (the exit status for CLUSTER_FORK_EXITED, the signal number for
/// CLUSTER_FORK_SIGNALED and CLUSTER_FORK_TIMED_OUT, else 0), `*os_pid`
/// (its process id; 0 when not started) and `*message` ("" for a value,
/// else its error, naming it and what happened). Any out pointer may be NULL.
///
/// Ownership: `*message` belongs to `r`, valid until it is freed.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_fork_results_child(
    r: *mut cluster_fork_results,
    index: usize,
    outcome: *mut i32,
    code: *mut i32,
    os_pid: *mut i32,
    message: *mut *const c_char,
) -> cluster_status {
    ffi!([r => o] {
        let k = child_of(&o, index)?;
        use cluster_fork_outcome::*;
        let (what, c) = match &k.outcome {
            Outcome::Returned(_) => (CLUSTER_FORK_RETURNED, 0),
            Outcome::Failed(_) => (CLUSTER_FORK_FAILED, 0),
            Outcome::Exited(s) => (CLUSTER_FORK_EXITED, *s),
            Outcome::Signaled { signal, .. } => (CLUSTER_FORK_SIGNALED, *signal),
            Outcome::TimedOut(_) => (CLUSTER_FORK_TIMED_OUT, libc::SIGKILL),
            Outcome::NoResult(_) => (CLUSTER_FORK_NO_RESULT, 0),
            Outcome::NotStarted(_) => (CLUSTER_FORK_NOT_STARTED, 0),
        };
        for (p, v) in [(outcome, what as i32), (code, c), (os_pid, k.os_pid as i32)] {
            if !p.is_null() {
                p.write(v);
            }
        }
        if !message.is_null() {
            message.write(o.messages[index].as_ptr());
        }
        Ok(())
    })
}

/// Releases the results. NULL is accepted.
///
/// Ownership: the handle, and bytes and messages read from it, are gone
/// after the call.
/// Blocking: no.
/// Threads: any, once per results.
#[no_mangle]
pub extern "C" fn cluster_fork_results_free(r: *mut cluster_fork_results) -> cluster_status {
    ffi!({
        if r.is_null() {
            return Ok(());
        }
        r.remove()
    })
}
